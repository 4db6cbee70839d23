//! The tokio shell around the mesh core: one loop owns the [`Mesh`], feeds it
//! session events, operator commands and timer expiries, and carries out what
//! it asks for (frames to send, dials, closes).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};
use weft_peer_proto::GoodbyeReason;

mod cni;
mod ipam;

pub use self::ipam::{ALLOC_WAIT, IpamFailure};
use crate::mesh::{Action, Admit, ConnId, Mesh, MeshEvent};
use crate::metrics::{Metrics, ReasonLabel, StateLabel};
use crate::session::{self, Outgoing, SessionCtx, SessionEvent};
use crate::store;
use crate::tls::{Admission, TlsSetup};
use weft_api::{Cidr, IpamStatus, NetworkStatus, NotReady, PodNetwork, Status};

/// Everything `meshd` is started with, already parsed.
pub struct DaemonConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub api_socket: PathBuf,
    pub metrics_addr: SocketAddr,
    pub peers: Vec<SocketAddr>,
    pub admission: Admission,
    pub nickname: String,
    pub conn_limit: usize,
    pub discovery: bool,
    /// A session with no traffic for this long is dead (QUIC idle timeout).
    pub peer_timeout: Duration,
    pub gossip_interval: Duration,
    pub handshake_timeout: Duration,
    pub ipalloc_range: weft_ipam_crdt::AddrRange,
    pub ipalloc_init: weft_ipam_crdt::Init,
    /// None: control plane only.
    pub dataplane: Option<crate::dataplane::DataPlaneConfig>,
    /// The CNI plugin's state directory, drained of pending releases.
    pub cni_state_dir: Option<PathBuf>,
    /// Kubernetes integration (`--kube`).
    pub kube: Option<crate::kube::KubeConfig>,
}

/// Operator requests, answered by the loop.
pub enum Command {
    Status(oneshot::Sender<Status>),
    Connect(Vec<SocketAddr>, oneshot::Sender<Result<(), String>>),
    Forget(Vec<SocketAddr>, oneshot::Sender<Result<(), String>>),
    /// Allocate for a key, or claim `addr` for it; may wait up to ALLOC_WAIT.
    Allocate {
        key: String,
        addr: Option<u32>,
        reply: oneshot::Sender<Result<u32, IpamFailure>>,
    },
    /// Release a key's address (None if it had none).
    Release {
        key: String,
        reply: oneshot::Sender<Result<Option<u32>, String>>,
    },
    Lookup {
        key: String,
        reply: oneshot::Sender<Option<u32>>,
    },
    ListIps(oneshot::Sender<Vec<(String, u32)>>),
    IpamStatus(oneshot::Sender<Option<IpamStatus>>),
    RmPeer {
        peer: String,
        reply: oneshot::Sender<Result<weft_peer_proto::PeerName, String>>,
    },
    /// The host's overlay address, once it has one.
    Expose(oneshot::Sender<Result<Cidr, String>>),
    /// How pods are wired here, and whether meshd can take them now.
    Network(oneshot::Sender<NetworkStatus>),
}

/// A handle to the running loop, for the API servers.
#[derive(Clone)]
pub struct Handle {
    pub commands: mpsc::Sender<Command>,
    pub metrics: Arc<Metrics>,
    /// Prefix length of the pod range, for answers like 10.32.0.5/12.
    pub ipam_prefix: u32,
}

impl Handle {
    /// Sends a command to the loop and waits for its answer, for at most
    /// `within` if given. Errs when the loop is gone or does not answer.
    pub async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
        within: Option<Duration>,
    ) -> Result<T, &'static str> {
        const GONE: &str = "router loop not answering";
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| GONE)?;
        match within {
            Some(d) => tokio::time::timeout(d, rx).await.map_err(|_| GONE)?,
            None => rx.await,
        }
        .map_err(|_| GONE)
    }

    pub async fn status(&self) -> Option<Status> {
        self.ask(Command::Status, Some(Duration::from_secs(2)))
            .await
            .ok()
    }
}

/// Resolves once `shutdown` flips (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

#[derive(Serialize, Deserialize, Default)]
struct PersistedTargets {
    targets: Vec<SocketAddr>,
    /// Addresses of peers we last held sessions with: hints after a restart.
    known: Vec<SocketAddr>,
}

/// The loop's handle on one session.
struct Session {
    out: mpsc::Sender<Outgoing>,
    conn: quinn::Connection,
}

impl Session {
    /// Queues a goodbye; if the queue is full, closes the connection at once.
    fn close(&self, reason: GoodbyeReason, message: String) {
        if self.out.try_send(Outgoing::Close(reason, message)).is_err() {
            self.conn
                .close(0u32.into(), format!("{reason:?}").as_bytes());
        }
    }
}

struct Loop {
    mesh: Mesh,
    sessions: HashMap<ConnId, Session>,
    endpoint: quinn::Endpoint,
    ctx: Arc<SessionCtx>,
    metrics: Arc<Metrics>,
    targets_path: PathBuf,
    saved_known: Vec<SocketAddr>,
    status_base: Status,
    pending: Vec<ipam::Pending>,
    space_asked: Option<Instant>,
    donors_asked: HashMap<weft_peer_proto::PeerName, Instant>,
    dp: Option<crate::dataplane::DataPlane>,
    ipam_prefix: u32,
    offers_repeated: Instant,
    /// The host's overlay address being allocated.
    gateway_rx: Option<oneshot::Receiver<Result<u32, IpamFailure>>>,
    cni_state_dir: Option<PathBuf>,
    range: Cidr,
}

/// The IPAM key of the host's own overlay address (the bridge gateway).
pub const GATEWAY_KEY: &str = "weft:host-gateway";
fn transport_config(peer_timeout: Duration) -> Result<Arc<quinn::TransportConfig>> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(quinn::IdleTimeout::try_from(peer_timeout)?));
    t.keep_alive_interval(Some(peer_timeout / 4));
    // One bidirectional stream per session, opened by the dialer; nothing else
    // may be opened, and what a peer can make us buffer is bounded.
    t.max_concurrent_bidi_streams(1u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.stream_receive_window((8u32 << 20).into());
    t.receive_window((16u32 << 20).into());
    Ok(Arc::new(t))
}

/// Builds the endpoint and the loop, then runs until `shutdown` flips.
pub async fn run(cfg: DaemonConfig, shutdown: watch::Receiver<bool>) -> Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let identity = crate::identity::Identity::load_or_create(&cfg.data_dir)?;
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
    // With --kube the API decides how IPAM starts, before it starts. A
    // router with IPAM state restores its ring whatever the init, so it
    // does not wait for the API (it registers from the background task).
    let mut ipalloc_init = cfg.ipalloc_init.clone();
    let kube = match &cfg.kube {
        Some(k) => {
            let kube = crate::kube::Kube::connect(
                k.clone(),
                identity.name,
                cfg.nickname.clone(),
                cfg.data_dir.clone(),
            )
            .await?;
            if k.decide_bootstrap && !crate::ipam::IpamService::has_state(&cfg.data_dir) {
                ipalloc_init = kube.bootstrap(&shutdown, &metrics).await?;
            } else if kube.reclaimed().await == Some(true) {
                // Before IPAM opens: not one address from the old ranges.
                anyhow::bail!(
                    "this router ({}) was removed from the ring after its Node was deleted; {}",
                    identity.name,
                    crate::kube::step_aside(&cfg.data_dir)
                );
            }
            Some(kube)
        }
        None => None,
    };
    let TlsSetup {
        identity,
        server,
        client,
    } = crate::tls::setup(&cfg.admission, identity)?;
    let transport = transport_config(cfg.peer_timeout)?;
    let mut server_cfg = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(server).context("QUIC server config")?,
    ));
    server_cfg.transport_config(transport.clone());
    let mut client_cfg = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(client).context("QUIC client config")?,
    ));
    client_cfg.transport_config(transport);
    let mut endpoint = quinn::Endpoint::server(server_cfg, cfg.listen)
        .with_context(|| format!("binding UDP {}", cfg.listen))?;
    endpoint.set_default_client_config(client_cfg);
    let listen = endpoint.local_addr()?;

    let uid: u64 = rand::random();
    let mut mc = crate::mesh::Config::new(identity.name, cfg.nickname.clone(), uid, rand::random());
    mc.listen_port = listen.port();
    mc.conn_limit = cfg.conn_limit;
    mc.discovery = cfg.discovery;
    mc.gossip_interval = cfg.gossip_interval;
    let now = Instant::now();
    let mut mesh = Mesh::new(mc, now);
    let svc = crate::ipam::IpamService::open(
        identity.name,
        cfg.ipalloc_range,
        ipalloc_init,
        &cfg.data_dir,
    )?;
    if svc.is_removed() && cfg.kube.is_some() {
        // Our Node was deleted and our space reclaimed while this host
        // lived on (a re-registered Node keeps /var/lib/weft). Start over as
        // a new router: the restart (kubelet, systemd) comes back with a new name.
        anyhow::bail!(
            "this router ({}) was removed from the ring after its Node was deleted; {}",
            identity.name,
            crate::kube::step_aside(&cfg.data_dir)
        );
    }
    mesh.register_channel(
        weft_peer_proto::ChannelName::new(crate::ipam::CHANNEL)?,
        Box::new(svc),
    );

    let targets_path = cfg.data_dir.join("targets.json");
    let persisted: PersistedTargets = store::read_json(&targets_path)
        .unwrap_or_else(|e| {
            warn!(error = %e, "ignoring unreadable targets file");
            None
        })
        .unwrap_or_default();
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
            crate::dataplane::DataPlane::start(identity.name, d.clone())
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

    info!(name = %identity.name, nickname = %cfg.nickname, %listen, encryption = cfg.admission.label(), "meshd starting");
    let status_base = Status {
        version: env!("CARGO_PKG_VERSION").into(),
        name: identity.name,
        nickname: cfg.nickname.clone(),
        uid,
        encryption: cfg.admission.encryption(),
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
    let mut lp = Loop {
        mesh,
        sessions: HashMap::new(),
        endpoint: endpoint.clone(),
        ctx: ctx.clone(),
        metrics,
        targets_path,
        saved_known: persisted.known,
        status_base,
        pending: Vec::new(),
        space_asked: None,
        donors_asked: HashMap::new(),
        dp,
        ipam_prefix: crate::ipam::prefix_len(cfg.ipalloc_range),
        offers_repeated: Instant::now(),
        gateway_rx: None,
        cni_state_dir: cfg.cni_state_dir.clone(),
        range: crate::ipam::cidr(cfg.ipalloc_range),
    };
    lp.save_targets();

    let handle_kube = handle.clone();
    let api = crate::api::serve_api(&cfg.api_socket, handle.clone(), shutdown.clone()).await?;

    let acceptor = {
        let endpoint = endpoint.clone();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                tokio::spawn(session::accept(ctx.clone(), incoming));
            }
        })
    };
    let kube_task = kube.map(|k| tokio::spawn(k.run(handle_kube, shutdown.clone())));
    lp.run(ev_rx, cmd_rx, shutdown).await;
    if let Some(t) = kube_task {
        t.abort();
    }
    acceptor.abort();
    endpoint.close(0u32.into(), b"shutdown");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    let _ = api.await;
    let _ = http.await;
    let _ = std::fs::remove_file(&cfg.api_socket);
    info!("meshd stopped");
    Ok(())
}

impl Loop {
    async fn run(
        &mut self,
        mut events: mpsc::Receiver<SessionEvent>,
        mut commands: mpsc::Receiver<Command>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut save_every = tokio::time::interval(Duration::from_secs(10));
        let mut ipam_tick = tokio::time::interval(Duration::from_millis(500));
        let mut dp_tick = tokio::time::interval(Duration::from_millis(200));
        let mut cni_tick = tokio::time::interval(Duration::from_secs(3));
        loop {
            self.retry_pending();
            self.drain();
            let deadline = self
                .mesh
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => self.on_session(ev),
                    None => break,
                },
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline.into()) => self.mesh.handle_timeout(Instant::now()),
                _ = save_every.tick() => self.save_known(),
                _ = ipam_tick.tick() => {
                    let jitter = rand::random();
                    if let Some(svc) = self.ipam() {
                        svc.tick(jitter);
                    }
                }
                _ = dp_tick.tick(), if self.dp.is_some() => self.dataplane_tick(),
                _ = cni_tick.tick() => self.drain_cni_releases(),
                _ = shutdown.changed() => break,
            }
        }
        for (_, s) in self.sessions.drain() {
            s.close(GoodbyeReason::Shutdown, "router shutting down".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    fn on_session(&mut self, ev: SessionEvent) {
        let now = Instant::now();
        match ev {
            SessionEvent::Up {
                conn,
                hello,
                addr,
                outbound,
                out,
                handle,
            } => {
                let admit = self.mesh.connection_up(now, conn, &hello, addr, outbound);
                if admit == Admit::Accept
                    && let Some(dp) = &mut self.dp
                {
                    let mut secret = [0u8; 32];
                    match handle.export_keying_material(
                        &mut secret,
                        crate::dataplane::EXPORTER_LABEL,
                        b"",
                    ) {
                        Ok(()) => {
                            let role = if outbound {
                                crate::dataplane::SessionRole::Dialer
                            } else {
                                crate::dataplane::SessionRole::Acceptor
                            };
                            let offer = dp.session_up(
                                conn,
                                hello.name,
                                hello.nickname.clone(),
                                role,
                                secret,
                                addr.ip(),
                            );
                            if out
                                .try_send(Outgoing::Frame(weft_peer_proto::Frame::DataOffer(offer)))
                                .is_err()
                            {
                                self.metrics.frames_dropped.inc();
                            }
                        }
                        Err(e) => {
                            warn!(peer = %hello.name, error = ?e, "no data keys for this session")
                        }
                    }
                }
                self.sessions.insert(conn, Session { out, conn: handle });
                if let Admit::Reject(reason) = admit {
                    self.metrics
                        .rejected
                        .get_or_create(&ReasonLabel {
                            reason: format!("{reason:?}"),
                        })
                        .inc();
                    // What the core queued for this session (peer hints) goes first.
                    self.drain();
                    if let Some(s) = self.sessions.remove(&conn) {
                        s.close(reason, format!("{reason:?}"));
                    }
                }
            }
            SessionEvent::Frame {
                conn,
                frame: weft_peer_proto::Frame::DataOffer(offer),
            } => {
                if let Some(dp) = &mut self.dp {
                    dp.offer_received(conn, offer);
                }
            }
            SessionEvent::Frame { conn, frame } => {
                if let Err(e) = self.mesh.handle_frame(now, conn, frame) {
                    self.metrics.bad_frame("protocol");
                    if let Some(s) = self.sessions.remove(&conn) {
                        s.close(GoodbyeReason::ProtocolError, e.to_string());
                    }
                }
            }
            SessionEvent::Down { conn, reason } => {
                self.sessions.remove(&conn);
                if let Some(dp) = &mut self.dp {
                    dp.session_down(conn);
                }
                self.mesh.connection_down(now, conn, reason);
            }
            SessionEvent::DialFailed { addr, error } => self.mesh.dial_failed(now, addr, error),
        }
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
            Command::Allocate { key, addr, reply } => self.allocate(key, addr, reply),
            Command::Release { key, reply } => {
                self.cancel_pending(&key);
                let r = match self.ipam() {
                    Some(svc) => svc.release(&key).map_err(|e| format!("{e:#}")),
                    None => Err("IPAM not running".into()),
                };
                let _ = reply.send(r);
            }
            Command::Lookup { key, reply } => {
                let _ = reply.send(self.ipam().and_then(|s| s.bootstrap().alloc().lookup(&key)));
            }
            Command::ListIps(reply) => {
                let list = self
                    .ipam()
                    .map(|s| {
                        s.bootstrap()
                            .alloc()
                            .allocations()
                            .map(|(k, a)| (k.to_owned(), a))
                            .collect()
                    })
                    .unwrap_or_default();
                let _ = reply.send(list);
            }
            Command::IpamStatus(reply) => {
                let _ = reply.send(self.ipam_status());
            }
            Command::RmPeer { peer, reply } => {
                let _ = reply.send(self.rmpeer(&peer));
            }
            Command::Expose(reply) => {
                let r = match &self.dp {
                    None => Err(NotReady::NoDataPlane.to_string()),
                    Some(dp) => dp
                        .gateway()
                        .map(|addr| Cidr {
                            addr,
                            prefix: self.ipam_prefix as u8,
                        })
                        .ok_or_else(|| "no overlay address yet: IPAM is not ready".into()),
                };
                let _ = reply.send(r);
            }
            Command::Network(reply) => {
                let _ = reply.send(self.network_status());
            }
        }
    }

    fn network_status(&mut self) -> NetworkStatus {
        let ipam_waiting = self.ipam().and_then(|s| s.not_ready());
        let network = self.dp.as_ref().map(|dp| PodNetwork {
            bridge: dp.bridge().to_owned(),
            mtu: dp.mtu(),
            gateway: dp.gateway(),
            cni_state_dir: self
                .cni_state_dir
                .as_ref()
                .map(|d| d.to_string_lossy().into_owned()),
        });
        let not_ready = match (&network, ipam_waiting) {
            (_, Some(why)) => Some(why),
            (None, None) => Some(NotReady::NoDataPlane),
            (Some(n), None) if n.gateway.is_none() => Some(NotReady::NoGateway),
            _ => None,
        };
        NetworkStatus {
            ready: not_ready.is_none(),
            reason: not_ready.as_ref().map(ToString::to_string),
            not_ready,
            range: self.range,
            network,
        }
    }

    fn status(&mut self, now: Instant) -> Status {
        let mesh = self.mesh.status(now);
        let mut s = self.status_base.clone();
        s.mesh = mesh;
        s.dataplane = self.dp.as_ref().map(|d| d.status());
        if let Some(dp) = &mut self.dp {
            dp.export_metrics(&self.metrics);
        }
        // Refresh the gauges while we have the numbers.
        let m = &self.metrics;
        for state in weft_api::ConnectionState::ALL {
            m.connections
                .get_or_create(&StateLabel {
                    state: state.as_str().into(),
                })
                .set(s.mesh.count(state) as i64);
        }
        let reachable = s
            .mesh
            .peers
            .iter()
            .filter(|p| p.reachable && !p.is_self)
            .count();
        let unreachable = s.mesh.peers.iter().filter(|p| !p.reachable).count();
        m.peers
            .get_or_create(&StateLabel {
                state: "reachable".into(),
            })
            .set(reachable as i64);
        m.peers
            .get_or_create(&StateLabel {
                state: "unreachable".into(),
            })
            .set(unreachable as i64);
        if let Some(ip) = self.ipam_status() {
            let m = &self.metrics;
            for (state, n) in [
                ("allocated", ip.allocated as i64),
                ("free", ip.free as i64),
                ("owned", ip.owned() as i64),
            ] {
                m.ipam_addresses
                    .get_or_create(&StateLabel {
                        state: state.into(),
                    })
                    .set(n);
            }
            m.ipam_unreachable.set(
                ip.peers
                    .iter()
                    .filter(|p| !p.reachable)
                    .map(|p| p.owned as i64)
                    .sum(),
            );
            m.ipam_pending.set(ip.pending as i64);
        }
        let m = &self.metrics;
        let c = &self.mesh.counters;
        m.topology_news
            .inc_by(c.topology_news.saturating_sub(m.topology_news.get()));
        m.channel_errors
            .inc_by(c.channel_errors.saturating_sub(m.channel_errors.get()));
        s
    }

    /// Carries out everything the core asked for.
    fn drain(&mut self) {
        self.flush_ipam();
        while let Some(t) = self.mesh.poll_transmit() {
            if let Some(s) = self.sessions.get(&t.conn)
                && s.out.try_send(Outgoing::Frame(t.frame)).is_err()
            {
                // The session is gone or far behind; anti-entropy repairs what is lost.
                self.metrics.frames_dropped.inc();
            }
        }
        while let Some(a) = self.mesh.poll_action() {
            match a {
                Action::Dial(addr) => {
                    tokio::spawn(session::dial(self.ctx.clone(), self.endpoint.clone(), addr));
                }
                Action::Close {
                    conn,
                    reason,
                    message,
                } => {
                    if let Some(s) = self.sessions.remove(&conn) {
                        s.close(reason, message);
                    }
                }
            }
        }
        while let Some(e) = self.mesh.poll_event() {
            match e {
                MeshEvent::Connected {
                    peer,
                    nickname,
                    addr,
                    outbound,
                } => {
                    info!(%peer, %nickname, %addr, outbound, "session established")
                }
                MeshEvent::Disconnected {
                    peer,
                    nickname,
                    reason,
                } => {
                    info!(%peer, %nickname, %reason, "session ended")
                }
                MeshEvent::Rejected { addr, peer, reason } => {
                    info!(%peer, %addr, ?reason, "session refused")
                }
                MeshEvent::PeerRemoved { peer, nickname } => {
                    info!(%peer, %nickname, "forgot unreachable peer")
                }
                MeshEvent::ChannelError {
                    channel,
                    src,
                    error,
                } => {
                    warn!(%channel, %src, %error, "channel rejected a message")
                }
            }
        }
    }

    /// Feeds the data plane the ring and the routes, keeps the host's
    /// overlay address allocated, sends keep-alives.
    fn dataplane_tick(&mut self) {
        let me = self.mesh.name();
        let ring = self.ipam().map(|s| {
            let ring = s.bootstrap().alloc().ring();
            let tokens: Vec<_> = ring.entries().map(|(t, e)| (t, e.owner)).collect();
            (tokens, ring.ranges_of(me))
        });
        let hops: Vec<_> = self
            .mesh
            .routes()
            .table()
            .into_iter()
            .map(|(dst, via, _)| (dst, via))
            .collect();
        let Some(dp) = &mut self.dp else { return };
        if let Some((tokens, local)) = ring {
            dp.set_ring(tokens, local);
        }
        dp.set_hops(hops);
        let now = Instant::now();
        dp.tick(now);
        if now.duration_since(self.offers_repeated) >= Duration::from_secs(1) {
            self.offers_repeated = now;
            for (conn, offer) in dp.offers_to_repeat() {
                if let Some(s) = self.sessions.get(&conn) {
                    let _ = s
                        .out
                        .try_send(Outgoing::Frame(weft_peer_proto::Frame::DataOffer(offer)));
                }
            }
        }
        if dp.gateway().is_some() {
            return;
        }
        if let Some(rx) = &mut self.gateway_rx {
            match rx.try_recv() {
                Ok(Ok(a)) => {
                    let gw = std::net::Ipv4Addr::from(a);
                    info!(%gw, "host overlay address");
                    dp.set_gateway(gw);
                    self.gateway_rx = None;
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
                // Not ready yet (or no space): ask again on the next tick.
                Ok(Err(_)) | Err(_) => self.gateway_rx = None,
            }
            return;
        }
        let (tx, rx) = oneshot::channel();
        self.gateway_rx = Some(rx);
        self.allocate(GATEWAY_KEY.into(), None, tx);
    }

    fn persisted(&self) -> PersistedTargets {
        let mut known: Vec<SocketAddr> = self.mesh.session_addrs();
        known.sort_unstable();
        PersistedTargets {
            targets: self.mesh.explicit_targets(),
            known,
        }
    }

    fn save_targets(&mut self) {
        let p = self.persisted();
        if let Err(e) = store::write_json(&self.targets_path, &p) {
            warn!(error = %e, "could not persist targets");
        }
        self.saved_known = p.known;
    }

    fn save_known(&mut self) {
        if self.persisted().known != self.saved_known {
            self.save_targets();
        }
    }
}
