//! The tokio shell around the pure cores: one `Router` owns the
//! [`Mesh`] (with the IPAM channel riding on it), feeds it session events,
//! operator commands and timer expiries, saves what changed, and then
//! carries out what it asks for (frames to send, dials, closes).
//!
//! - `sessions`: QUIC sessions in and out of the core;
//! - `admission`: the node certificate renewed and the password file
//!   reloaded while running;
//! - `ipam` and `allocations`: the local API's address requests, the
//!   ones that wait, and whom to ask for space;
//! - `status`: what `GET /status`, `/ipam` and `/network` answer, and
//!   the metrics refreshed from them;
//! - `persist`: targets and known peers on disk (IPAM saves in
//!   [`crate::ipam`]);
//! - `dataplane`: the ring and routes fed to the data plane;
//! - `cni`: releases the plugin left while meshd was down.

mod admission;
mod allocations;
mod cni;
mod dataplane;
mod ipam;
mod persist;
mod sessions;
mod status;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};
use weft_api::{Cidr, NotReady, Status};
use weft_ipam_crdt::IpamChannel;
use weft_mesh::{Mesh, SessionId};
use weft_peer_proto::GoodbyeReason;

pub use self::allocations::ALLOC_WAIT;
use self::allocations::AllocationQueue;
use self::sessions::Session;
pub use crate::config::{AdmissionSource, DaemonConfig};
use crate::handle::{Command, Handle, IpamFailure};
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::session::{self, SessionCtx, SessionEvent};
use crate::tls::{Admission, TlsSetup};

/// The IPAM key of the host's own overlay address (the bridge gateway).
pub const GATEWAY_KEY: &str = "weft:host-gateway";

/// The router loop's state.
struct Router {
    mesh: Mesh<IpamChannel>,
    data_dir: PathBuf,
    sessions: HashMap<SessionId, Session>,
    endpoint: quinn::Endpoint,
    ctx: Arc<SessionCtx>,
    metrics: Arc<Metrics>,
    saved_known: Vec<std::net::SocketAddr>,
    status_base: Status,
    allocations: AllocationQueue,
    dp: Option<crate::dataplane::DataPlane>,
    offers_repeated: Instant,
    pod_guard: dataplane::PodGuard,
    /// Since when each peer with a pending removal certificate has been
    /// unreachable here (see `cosign_removals`).
    unreachable_since: std::collections::BTreeMap<weft_peer_proto::PeerName, Instant>,
    /// Peers whose removal this router was asked for itself: the
    /// operator's `rmpeer` here, or (`--kube`) their Node gone as this
    /// router's API view says. Only these are co-signed after
    /// `COSIGN_AFTER`; others after `cosign_unasked_after`, if at all.
    removal_asked: std::collections::BTreeSet<weft_peer_proto::PeerName>,
    cosign_unasked_after: Option<std::time::Duration>,
    /// The host's overlay address being allocated.
    gateway_rx: Option<oneshot::Receiver<Result<u32, IpamFailure>>>,
    cni_state_dir: Option<PathBuf>,
    range: Cidr,
    /// Why allocations are refused now ([`Command::HoldAllocations`]).
    alloc_hold: Option<String>,
    /// The IPAM state was stale at the last tick (logged when it is not).
    ipam_stale: bool,
}

/// Builds the endpoint and the router, then runs until `shutdown` flips,
/// or until the Kubernetes task says this router must step aside.
pub async fn run(cfg: DaemonConfig, shutdown: watch::Receiver<bool>) -> Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let identity = Identity::load_or_create(&cfg.data_dir)?;
    // /healthz answers from here on, also while meshd waits for the
    // Kubernetes API below; /readyz and the API wait for the loop.
    let metrics = Arc::new(Metrics::new());
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let handle = Handle {
        commands: cmd_tx,
        metrics: metrics.clone(),
        ipam_prefix: crate::ipam::prefix_len(cfg.ipalloc_range),
    };
    let http =
        crate::api::serve_metrics(cfg.metrics_addr, handle.clone(), shutdown.clone()).await?;
    let KubeStart {
        kube,
        init: ipalloc_init,
        admission,
        held,
    } = connect_kube(&cfg, &identity, &metrics, &shutdown).await?;
    let TlsSetup {
        identity,
        server,
        client,
        cert,
    } = crate::tls::setup(&admission, identity, std::time::SystemTime::now())?;
    let key_der = identity.key.serialize_der();
    let endpoint = sessions::endpoint(&cfg, server, client)?;
    let listen = endpoint.local_addr()?;

    let now = Instant::now();
    let mut ipam = crate::ipam::open(
        identity.signer()?,
        cfg.ipalloc_range,
        ipalloc_init,
        &cfg.data_dir,
        now,
    )?;
    if cfg.trust_stale_ipam && ipam.stale().is_some() {
        warn!(
            "--trust-stale-ipam: taking the IPAM state as it is, though it is older than the removal horizon"
        );
        ipam.trust_stale();
    }
    if ipam.is_removed() && cfg.kube.is_some() {
        // Our Node was deleted and our space reclaimed while this host
        // lived on (a re-registered Node keeps /var/lib/weft). Start over as
        // a new router: the restart (kubelet, systemd) comes back with a new name.
        return Err(crate::kube::removed(identity.name, &cfg.data_dir));
    }
    let uid: u64 = rand::random();
    let signer = std::sync::Arc::new(identity.signer()?);
    let mut mc = weft_mesh::Config::new(signer, cfg.nickname.clone(), uid, rand::random());
    // Drawn at each start: origin keys change with every restart, so their
    // counters never repeat under one key.
    let dh = weft_peer_proto::origin::DhSecret::from_bytes(rand::random());
    mc.dh_public = dh.public();
    mc.listen_port = listen.port();
    mc.conn_limit = cfg.conn_limit;
    mc.discovery = cfg.discovery;
    mc.gossip_interval = cfg.gossip_interval;
    let mut mesh = Mesh::new(mc, ipam, now);
    let persisted = persist::load_targets(&cfg.data_dir);
    for a in cfg.peers.iter().chain(persisted.targets.iter()) {
        mesh.add_target(*a, now);
    }
    if cfg.discovery {
        for a in &persisted.known {
            mesh.add_hint(*a, now);
        }
    }

    let dp = match &cfg.dataplane {
        Some(d) => Some(
            crate::dataplane::DataPlane::start(identity.name, dh, d.clone())
                .await
                .context("starting the data plane")?,
        ),
        None => None,
    };
    let (ev_tx, ev_rx) = mpsc::channel(2048);
    let ctx = Arc::new(SessionCtx::new(
        ev_tx,
        metrics.clone(),
        mesh.hello(None),
        cfg.handshake_timeout,
    ));

    let secrets = match &admission {
        Admission::Password { secrets, .. } => secrets.clone(),
        _ => Vec::new(),
    };
    let renewal = tokio::spawn(
        admission::AdmissionKeeper {
            cert,
            reload: cfg.password_reload.clone(),
            secrets,
            key_der,
            endpoint: endpoint.clone(),
            ctx: ctx.clone(),
            peer_timeout: cfg.peer_timeout,
            metrics: metrics.clone(),
        }
        .run(),
    );
    info!(name = %identity.name, nickname = %cfg.nickname, %listen, encryption = admission.label(), "meshd starting");
    let status_base = Status {
        version: env!("CARGO_PKG_VERSION").into(),
        name: identity.name,
        nickname: cfg.nickname.clone(),
        uid,
        encryption: admission.encryption(),
        protocol: format!(
            "weft {}..{}",
            weft_peer_proto::PROTOCOL_MIN,
            weft_peer_proto::PROTOCOL_MAX
        ),
        listen,
        conn_limit: cfg.conn_limit,
        discovery: cfg.discovery,
        ready: true,
        mesh: Default::default(),
        dataplane: None,
    };
    let mut router = Router {
        mesh,
        data_dir: cfg.data_dir.clone(),
        sessions: HashMap::new(),
        endpoint: endpoint.clone(),
        ctx: ctx.clone(),
        metrics,
        saved_known: persisted.known,
        status_base,
        allocations: AllocationQueue::default(),
        dp,
        offers_repeated: now,
        pod_guard: dataplane::PodGuard::default(),
        unreachable_since: std::collections::BTreeMap::new(),
        removal_asked: std::collections::BTreeSet::new(),
        cosign_unasked_after: cfg.cosign_unasked_after,
        gateway_rx: None,
        cni_state_dir: cfg.cni_state_dir.clone(),
        range: crate::ipam::cidr(cfg.ipalloc_range),
        alloc_hold: held.then(|| crate::kube::UNCONFIRMED_REMOVAL.to_owned()),
        ipam_stale: false,
    };
    router.save_targets();

    let api = crate::api::serve_api(&cfg.api_socket, handle.clone(), shutdown.clone()).await?;
    let acceptor = {
        let endpoint = endpoint.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let gate = crate::incoming::Gate::new(ctx.metrics.half_open.clone());
            while let Some(incoming) = endpoint.accept().await {
                if let Some((incoming, permit)) = gate.triage(incoming, &ctx.metrics) {
                    tokio::spawn(session::accept(ctx.clone(), incoming, permit));
                }
            }
        })
    };
    let kube_task = kube.map(|k| tokio::spawn(k.run(handle.clone(), shutdown.clone())));
    let outcome = router.run(ev_rx, cmd_rx, shutdown, kube_task).await;
    acceptor.abort();
    renewal.abort();
    endpoint.close(0u32.into(), b"shutdown");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    // The servers finish what they serve once shutdown flips; when the
    // router stopped for another reason (it was removed), they are ended.
    for server in [api, http] {
        let abort = server.abort_handle();
        if tokio::time::timeout(Duration::from_secs(1), server)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    let _ = std::fs::remove_file(&cfg.api_socket);
    info!("meshd stopped");
    // The loop has stopped saving: now the state can be moved aside.
    match outcome {
        Err(e) if e.is::<crate::kube::MustStepAside>() => {
            Err(crate::kube::removed(identity.name, &cfg.data_dir))
        }
        other => other,
    }
}

/// What meshd starts with once the Kubernetes API (if any) was asked.
struct KubeStart {
    kube: Option<crate::kube::Kube>,
    init: weft_ipam_crdt::Init,
    admission: Admission,
    /// The peer list says this router was removed: allocations are held
    /// until the ring confirms it (step aside) or the list stops saying so.
    held: bool,
}

/// With `--kube`, connects to the API, takes the mesh password from the
/// Secret if meshd was given none, and lets the API decide how IPAM starts,
/// before it starts. A router with IPAM state restores its ring whatever the
/// init, so it does not wait for the API (it registers from the task).
async fn connect_kube(
    cfg: &DaemonConfig,
    identity: &Identity,
    metrics: &Metrics,
    shutdown: &watch::Receiver<bool>,
) -> Result<KubeStart> {
    let Some(k) = &cfg.kube else {
        let AdmissionSource::Given(admission) = &cfg.admission else {
            bail!("the mesh password can come from a Secret only with --kube");
        };
        return Ok(KubeStart {
            held: false,
            kube: None,
            init: cfg.ipalloc_init.clone(),
            admission: admission.clone(),
        });
    };
    let kube = crate::kube::Kube::connect(
        k.clone(),
        identity.name,
        cfg.nickname.clone(),
        cfg.data_dir.clone(),
    )
    .await?;
    // Before anything is written for us: a router without the password
    // must not register.
    let admission = match &cfg.admission {
        AdmissionSource::Given(a) => a.clone(),
        AdmissionSource::KubeSecret {
            allow_weak,
            mesh_id,
        } => {
            let secrets = kube.mesh_password(shutdown, metrics).await?;
            crate::config::check_secrets(&secrets, *allow_weak, mesh_id).with_context(|| {
                format!("Secret {}/{}", k.namespace, crate::kube::password::SECRET)
            })?;
            Admission::Password {
                secrets,
                mesh_id: mesh_id.clone(),
            }
        }
    };
    let mut init = cfg.ipalloc_init.clone();
    let mut held = false;
    if k.decide_bootstrap && !crate::ipam::has_state(&cfg.data_dir) {
        init = kube.bootstrap(shutdown, metrics).await?;
    } else if kube.reclaimed().await == Some(true) {
        // Not one address from the old ranges, but no stepping aside on
        // the list's word either (anyone who may write the ConfigMap could
        // evict a live router): held until the ring confirms it with a
        // valid removal certificate, or the list stops saying so.
        warn!(
            "the peer list says this router ({}) was removed; allocations are held until the ring confirms it",
            identity.name
        );
        held = true;
    }
    Ok(KubeStart {
        held,
        kube: Some(kube),
        init,
        admission,
    })
}

/// Waits for the Kubernetes task, if there is one (forever, if not).
async fn kube_outcome(task: &mut Option<JoinHandle<Result<()>>>) -> Result<()> {
    match task {
        Some(t) => {
            let r = t.await;
            *task = None;
            r.unwrap_or_else(|e| Err(anyhow::anyhow!("the Kubernetes task failed: {e}")))
        }
        None => std::future::pending().await,
    }
}

impl Router {
    async fn run(
        &mut self,
        mut events: mpsc::Receiver<SessionEvent>,
        mut commands: mpsc::Receiver<Command>,
        mut shutdown: watch::Receiver<bool>,
        mut kube: Option<JoinHandle<Result<()>>>,
    ) -> Result<()> {
        let mut save_every = tokio::time::interval(Duration::from_secs(10));
        let mut ipam_tick = tokio::time::interval(Duration::from_millis(500));
        let mut dp_tick = tokio::time::interval(Duration::from_millis(200));
        let mut cni_tick = tokio::time::interval(Duration::from_secs(3));
        let outcome = loop {
            self.retry_waiting(Instant::now());
            self.drain();
            let deadline = self
                .mesh
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => self.on_session(ev),
                    None => break Ok(()),
                },
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break Ok(()),
                },
                _ = tokio::time::sleep_until(deadline.into()) => self.mesh.handle_timeout(Instant::now()),
                _ = save_every.tick() => self.save_known(),
                _ = ipam_tick.tick() => {
                    let now = Instant::now();
                    self.mesh.channels_mut().tick(now, rand::random());
                    self.hold_for_a_clone(now);
                    self.cosign_removals(now);
                }
                _ = dp_tick.tick(), if self.dp.is_some() => self.dataplane_tick(),
                _ = cni_tick.tick() => self.drain_cni_releases(),
                r = kube_outcome(&mut kube) => match r {
                    // The task ends on its own only when it must stop us.
                    Ok(()) => {}
                    Err(e) => break Err(e),
                },
                _ = shutdown.changed() => break Ok(()),
            }
        };
        if let Some(t) = kube {
            t.abort();
        }
        for (_, s) in self.sessions.drain() {
            s.close(GoodbyeReason::Shutdown, "router shutting down".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        outcome
    }

    fn on_command(&mut self, cmd: Command) {
        let now = Instant::now();
        match cmd {
            Command::Status(reply) => {
                let _ = reply.send(self.status(now));
            }
            Command::Connect(addrs, reply) => {
                for a in addrs {
                    self.mesh.add_target(a, now);
                }
                self.save_targets();
                let _ = reply.send(Ok(()));
            }
            Command::Forget(addrs, reply) => {
                let unknown: Vec<String> = addrs
                    .into_iter()
                    .filter(|a| !self.mesh.forget_target(*a))
                    .map(|a| a.to_string())
                    .collect();
                self.save_targets();
                let _ = reply.send(if unknown.is_empty() {
                    Ok(())
                } else {
                    Err(format!("not a target: {}", unknown.join(", ")))
                });
            }
            Command::Allocate { key, addr, reply } => self.allocate(key, addr, reply, now),
            Command::Release { key, reply } => {
                let _ = reply.send(self.release(&key, now));
            }
            Command::Lookup { key, reply } => {
                let ipam = self.mesh.channels();
                let _ = reply.send(ipam.ipam().alloc().lookup(&key));
            }
            Command::ListIps(reply) => {
                let alloc = self.mesh.channels().ipam().alloc();
                let list = alloc.allocations().map(|(k, a)| (k.to_owned(), a));
                let _ = reply.send(list.collect());
            }
            Command::IpamStatus(reply) => {
                let _ = reply.send(self.ipam_status(now));
            }
            Command::RmPeer { peer, reply } => {
                let _ = reply.send(self.rmpeer(&peer, now));
            }
            Command::RemovalEvidence { peer, reply } => {
                if peer != self.mesh.name() {
                    self.removal_asked.insert(peer);
                }
                let _ = reply.send(());
            }
            Command::Expose(reply) => {
                let r = match &self.dp {
                    None => Err(NotReady::NoDataPlane),
                    Some(dp) => match dp.gateway() {
                        Some(addr) => Ok(Cidr {
                            addr,
                            prefix: self.range.prefix,
                        }),
                        None => Err(crate::ipam::not_ready(self.mesh.channels(), now)
                            .unwrap_or(NotReady::NoGateway)),
                    },
                };
                let _ = reply.send(r);
            }
            Command::Network(reply) => {
                let _ = reply.send(self.network_status(now));
            }
            Command::HoldAllocations(hold, reply) => {
                self.alloc_hold = hold;
                let _ = reply.send(());
            }
        }
    }

    /// Saves what the IPAM channel changed. A failed write stops IPAM
    /// (logged here, shown in status and `/network`).
    fn save_ipam(&mut self, now: Instant) -> Result<(), String> {
        crate::ipam::save(self.mesh.channels_mut(), &self.data_dir, now).map_err(|e| {
            warn!("{e:#}; IPAM stopped");
            format!("{e:#}")
        })
    }
}
