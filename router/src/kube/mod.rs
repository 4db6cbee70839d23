//! Kubernetes integration (`meshd --kube`), built on the kube crate.
//!
//! - **Bootstrap through the API**: before IPAM starts, the router reads the
//!   ConfigMap `weft-peers`; the first router to write it becomes the seed
//!   and owns the whole range at once, every later one joins that seed's
//!   ring and gets space by donation. No pod waits for a quorum guess.
//! - **Peers from Nodes**: a watch on Nodes feeds a reflector store; every
//!   reconcile works from its full state (so a missed event heals at the next
//!   pass), dials each Node's InternalIP (else ExternalIP) and forgets the
//!   addresses of Nodes that left.
//! - **Reclaim**: a router recorded on a Node that no longer exists (asked
//!   again with a GET, since a watch can lag) and unreachable, or retired by
//!   a new identity on its Node, has its space removed by exactly one live
//!   router: the one whose claim in the ConfigMap won the
//!   resourceVersion-guarded write. The CRDT gives the space to one heir.
//!   The same pass runs at start-up, so Nodes deleted while meshd was down
//!   are reclaimed too.
//! - **`NetworkUnavailable=False`** on our Node once pods can be wired.
//! - **The mesh password** from the Secret `weft-password` when the router
//!   has none of its own, filled with a random one by the first router
//!   ([`password`]).
//!
//! What it needs from the API (and the DaemonSet's RBAC grants nothing
//! more): Nodes get/list/watch, nodes/status patch, and get/update of the one
//! ConfigMap and the one Secret.

pub mod password;
pub mod peers;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use tokio::sync::{Notify, oneshot, watch};
use tracing::{debug, info, warn};
use weft_ipam_crdt::{Init, PeerName};

use self::peers::{ClaimOutcome, PeerList};
use crate::handle::{Command, Handle, stopped};
use crate::store;

/// `--kube` settings.
#[derive(Debug, Clone)]
pub struct KubeConfig {
    /// The Node this router runs on (downward API).
    pub node_name: String,
    pub namespace: String,
    pub configmap: String,
    /// None: in-cluster service account (or the usual kubeconfig search).
    pub kubeconfig: Option<PathBuf>,
    /// Decide `--ipalloc-init` through the API (it was not given).
    pub decide_bootstrap: bool,
    /// UDP port peers listen on (ours; the DaemonSet runs one port everywhere).
    pub peer_port: u16,
    /// Full reconcile period.
    pub resync: Duration,
    /// A Node must stay gone this long before its router's space is reclaimed.
    pub reclaim_after: Duration,
}

pub struct Kube {
    client: kube::Client,
    cfg: KubeConfig,
    me: String,
    me_name: PeerName,
    nickname: String,
    data_dir: PathBuf,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

impl Kube {
    /// Connects with the in-cluster service account, or `KUBECONFIG`.
    pub async fn connect(
        cfg: KubeConfig,
        me: PeerName,
        nickname: String,
        data_dir: PathBuf,
    ) -> Result<Self> {
        let client = match &cfg.kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path)
                    .with_context(|| format!("reading kubeconfig {}", path.display()))?;
                let c = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                    .await
                    .with_context(|| format!("kubeconfig {}", path.display()))?;
                kube::Client::try_from(c).context("Kubernetes client")?
            }
            None => kube::Client::try_default()
                .await
                .context("no Kubernetes API: not in a pod and no usable KUBECONFIG")?,
        };
        Ok(Kube {
            client,
            cfg,
            me: me.to_string(),
            me_name: me,
            nickname,
            data_dir,
        })
    }

    fn configmaps(&self) -> Api<ConfigMap> {
        Api::namespaced(self.client.clone(), &self.cfg.namespace)
    }

    /// Read-modify-write of the peer list, retried on conflicts. `f` returns
    /// whether it changed the list; an unchanged list is not written.
    /// Returns the list as stored afterwards and whether our write landed.
    async fn update<F>(
        &self,
        metrics: Option<&crate::metrics::Metrics>,
        mut f: F,
    ) -> Result<(PeerList, bool)>
    where
        F: FnMut(&mut PeerList) -> bool,
    {
        let api = self.configmaps();
        let name = &self.cfg.configmap;
        for _ in 0..16 {
            let cm = match api.get(name).await {
                Ok(cm) => cm,
                Err(e) if is_status(&e, 404) => bail!(
                    "ConfigMap {}/{name} does not exist: apply deploy/kubernetes/weft.yaml, which creates it",
                    self.cfg.namespace
                ),
                Err(e) => return Err(e).context(format!("reading ConfigMap {name}")),
            };
            // A list we cannot read is never overwritten: that would lose
            // the record of who owns what.
            let mut list = peer_list(&cm)
                .map_err(|e| anyhow!("ConfigMap {}/{name}: {e}", self.cfg.namespace))?;
            if !f(&mut list) {
                return Ok((list, false));
            }
            let mut new = cm;
            new.data
                .get_or_insert_with(BTreeMap::new)
                .insert(peers::KEY.to_owned(), list.to_json());
            // replace() sends the resourceVersion we read: a concurrent
            // writer makes it fail with 409 and we start over.
            match api.replace(name, &PostParams::default(), &new).await {
                Ok(_) => return Ok((list, true)),
                Err(e) if is_status(&e, 409) => {
                    if let Some(m) = metrics {
                        m.kube_conflicts.inc();
                    }
                    debug!("peer list changed under us; retrying");
                    tokio::time::sleep(Duration::from_millis(50 + rand::random::<u64>() % 200))
                        .await;
                }
                Err(e) => return Err(e).context(format!("writing ConfigMap {name}")),
            }
        }
        bail!("the peer list kept changing under us (16 conflicts in a row)")
    }

    /// Decides how IPAM starts: the seed recorded in the ConfigMap, or us if
    /// there is none yet. Registers us on our Node. Retries until the API
    /// answers or `shutdown` flips.
    pub async fn bootstrap(
        &self,
        shutdown: &watch::Receiver<bool>,
        metrics: &crate::metrics::Metrics,
    ) -> Result<Init> {
        let (me, node, nick) = (&self.me, &self.cfg.node_name, &self.nickname);
        let decide = self.cfg.decide_bootstrap;
        retry_api(shutdown, metrics, "decide the IPAM bootstrap", || async move {
            let (list, _) = self
                .update(Some(metrics), |l| {
                    let a = decide && l.seed_if_empty(me);
                    let b = l.register(me, node, nick);
                    a || b
                })
                .await
                .map_err(Failure::Transient)?;
            let seeds: Vec<PeerName> = list
                .seed
                .iter()
                .map(|s| s.parse::<PeerName>())
                .collect::<Result<_, _>>()
                .map_err(|e| Failure::Fatal(anyhow!("the recorded seed is not a peer name: {e}")))?;
            info!(seed = ?list.seed, node = %self.cfg.node_name, "IPAM bootstrap decided through the Kubernetes API");
            Ok(Init::Seed(seeds))
        })
        .await
    }

    /// Whether the peer list says our space was reclaimed (None: the API
    /// did not answer in time; the ring will tell us later).
    pub async fn reclaimed(&self) -> Option<bool> {
        let api = self.configmaps();
        let cm = tokio::time::timeout(Duration::from_secs(5), api.get_opt(&self.cfg.configmap))
            .await
            .ok()?
            .ok()??;
        Some(peer_list(&cm).ok()?.removed.contains(&self.me))
    }

    /// Runs the Node watch and the reconcile loop until `shutdown`. It ends
    /// early only with [`MustStepAside`]: this router must stop.
    pub async fn run(self, handle: Handle, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let (store, writer) = reflector::store::<Node>();
        let wake = Arc::new(Notify::new());
        let watch_task = {
            let wake = wake.clone();
            let metrics = handle.metrics.clone();
            let stream = reflector(writer, watcher(nodes.clone(), watcher::Config::default()))
                .default_backoff();
            tokio::spawn(async move {
                let mut stream = std::pin::pin!(stream);
                while let Some(ev) = stream.next().await {
                    match ev {
                        Ok(_) => wake.notify_one(),
                        Err(e) => {
                            metrics.kube_errors.inc();
                            warn!("watching Nodes: {e}");
                        }
                    }
                }
            })
        };
        let mut st = ReconcileState {
            managed: store::read_json(&self.managed_path())
                .ok()
                .flatten()
                .unwrap_or_default(),
            ..Default::default()
        };
        tokio::select! {
            r = store.wait_until_ready() => if r.is_err() { return Ok(()); },
            _ = stopped(&mut shutdown) => { watch_task.abort(); return Ok(()); }
        }
        let mut last_pass = std::time::Instant::now();
        let mut last_seen = None;
        let mut pending = true;
        loop {
            let all = store.state();
            let seen = fingerprint(&all);
            // Node heartbeats wake us constantly: a pass costs API calls on
            // every node, so only a change of Nodes or addresses, pending
            // work or the resync period makes one.
            let due = pending
                || last_seen.as_ref() != Some(&seen)
                || last_pass.elapsed() >= self.cfg.resync;
            if due {
                pending = match self.reconcile(&all, &nodes, &handle, &mut st).await {
                    Ok(p) => p,
                    Err(e) if e.is::<MustStepAside>() => {
                        watch_task.abort();
                        return Err(e);
                    }
                    Err(e) => {
                        handle.metrics.kube_errors.inc();
                        warn!("Kubernetes reconcile: {e:#}");
                        true
                    }
                };
                last_pass = std::time::Instant::now();
                last_seen = Some(seen);
            }
            let next = if pending {
                Duration::from_secs(2)
            } else {
                self.cfg.resync.saturating_sub(last_pass.elapsed())
            };
            tokio::select! {
                _ = wake.notified() => {
                    // Let a burst of events settle into one look.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                _ = tokio::time::sleep(next) => {}
                _ = stopped(&mut shutdown) => break,
            }
        }
        watch_task.abort();
        Ok(())
    }

    fn managed_path(&self) -> PathBuf {
        self.data_dir.join("kube-targets.json")
    }

    /// One pass from full state. Returns whether work is pending (a reclaim
    /// waiting for its peer to become unreachable, or readiness to report).
    async fn reconcile(
        &self,
        all: &[Arc<Node>],
        nodes: &Api<Node>,
        handle: &Handle,
        st: &mut ReconcileState,
    ) -> Result<bool> {
        let mut pending = false;
        // 1. Peers from Nodes.
        let mut names = BTreeSet::new();
        let mut want = BTreeSet::new();
        for n in all {
            let Some(name) = n.metadata.name.clone() else {
                continue;
            };
            if name != self.cfg.node_name
                && let Some(ip) = peers::node_address(&node_addresses(n))
            {
                want.insert(SocketAddr::new(ip, self.cfg.peer_port));
            }
            names.insert(name);
        }
        let add: Vec<SocketAddr> = want.difference(&st.managed).copied().collect();
        let drop: Vec<SocketAddr> = st.managed.difference(&want).copied().collect();
        if !add.is_empty() {
            info!(?add, "dialing the addresses of new Nodes");
            ask(handle, |r| Command::Connect(add.clone(), r))
                .await?
                .map_err(|e| anyhow!(e))?;
        }
        if !drop.is_empty() {
            info!(?drop, "forgetting the addresses of Nodes that left");
            // Unknown addresses (forgotten by hand) are fine.
            let _ = ask(handle, |r| Command::Forget(drop.clone(), r)).await?;
        }
        if !add.is_empty() || !drop.is_empty() {
            st.managed = want;
            if let Err(e) = store::write_json(&self.managed_path(), &st.managed) {
                warn!("saving the Node addresses: {e:#}");
            }
        }

        // 2. Our record, and the reclaims.
        let (me, node, nick) = (&self.me, &self.cfg.node_name, &self.nickname);
        // Our own space reclaimed (the Node was deleted while this host
        // lived on)? Never register again under this name: step aside.
        let reclaimed = |l: &PeerList| l.removed.contains(me);
        let removed_here = ask(handle, Command::IpamStatus)
            .await?
            .removed
            .contains(&self.me_name);
        let (list, _) = self
            .update(Some(&handle.metrics), |l| {
                !reclaimed(l) && !removed_here && l.register(me, node, nick)
            })
            .await?;
        // Only the ring (a removal certificate valid in our own view) makes
        // us step aside. The list's word alone holds allocations (so that a
        // router cut off from the mesh hands out nothing its heir may own)
        // and is counted: anyone who may write the ConfigMap could forge it.
        match own_removal(reclaimed(&list), removed_here) {
            OwnRemoval::Confirmed => return Err(MustStepAside(self.me_name).into()),
            OwnRemoval::Unconfirmed => {
                handle.metrics.kube_unconfirmed_removals.inc();
                if st.hold.is_none() {
                    warn!(
                        "the peer list says this router was removed, but the ring holds no valid removal for it: allocations held, nothing stepped aside"
                    );
                }
            }
            OwnRemoval::No => {}
        }
        let hold = (reclaimed(&list) && !removed_here).then(|| UNCONFIRMED_REMOVAL.to_owned());
        if st.hold != hold || !st.hold_sent {
            ask(handle, |r| Command::HoldAllocations(hold.clone(), r)).await?;
            st.hold = hold;
            st.hold_sent = true;
        }
        let candidates = list.candidates(me, &names);
        st.missing_since.retain(|p, _| candidates.contains(p));
        for peer in candidates {
            let rec = &list.peers[&peer];
            if peer.parse::<PeerName>().is_err() {
                // Never fall back to a nickname match: skip what is not a name.
                warn!(key = %peer, "the peer list holds a key that is not a peer name; ignored");
                continue;
            }
            if !rec.retired {
                // The watch may lag behind a Node just created: ask.
                if nodes.get_opt(&rec.node).await?.is_some() {
                    st.missing_since.remove(&peer);
                    continue;
                }
            }
            // Its pods live on for a while after the Node object goes
            // (until pod GC): their addresses must not be handed out yet.
            let since = *st
                .missing_since
                .entry(peer.clone())
                .or_insert_with(std::time::Instant::now);
            if since.elapsed() < self.cfg.reclaim_after {
                pending = true;
                continue;
            }
            let status = handle.status().await.context("meshd did not answer")?;
            if status
                .mesh
                .peers
                .iter()
                .any(|p| p.reachable && p.name.to_string() == peer)
            {
                debug!(%peer, node = %rec.node, "Node gone but its router still answers; waiting");
                pending = true;
                continue;
            }
            // "Unreachable" means something only if we can reach anyone: a
            // router cut off (or just started) waits, unless no other
            // registered router is left to reach.
            let connected = status.mesh.peers.iter().any(|p| !p.is_self && p.reachable);
            let others_alive = list.peers.iter().any(|(name, r)| {
                name != me && *name != peer && !r.retired && names.contains(&r.node)
            });
            if !connected && others_alive {
                debug!(%peer, "not connected to any live router; reclaim waits");
                pending = true;
                continue;
            }
            // Our own evidence, whoever reclaims: without it this router
            // co-signs no removal another router started.
            if let Ok(name) = peer.parse::<PeerName>() {
                ask(handle, |r| Command::RemovalEvidence {
                    peer: name,
                    reply: r,
                })
                .await?;
            }
            let now = now_secs();
            let mut outcome = ClaimOutcome::Gone;
            let (_, wrote) = self
                .update(Some(&handle.metrics), |l| {
                    outcome = l.claim(&peer, me, now);
                    outcome == ClaimOutcome::Taken
                })
                .await?;
            match (&outcome, wrote) {
                (ClaimOutcome::Taken, true) | (ClaimOutcome::Held, _) => {}
                (ClaimOutcome::Busy(by), _) => {
                    debug!(%peer, %by, "another router is reclaiming");
                    pending = true;
                    continue;
                }
                _ => continue,
            }
            // A router that owns nothing (it never got space, or gave it
            // all away) has nothing to reclaim, and no removal can be
            // signed for it: asking again would retry for ever. Take it
            // off the list without marking it removed, so that a router
            // coming back under this name registers as any other.
            let ipam = ask(handle, Command::IpamStatus).await?;
            let owns = ipam.peers.iter().any(|p| p.name.to_string() == peer);
            let in_ring_removed = ipam.removed.iter().any(|p| p.to_string() == peer);
            if reclaim_action(ipam.cluster.is_some(), owns, in_ring_removed) == Reclaim::Forget {
                let (_, done) = self
                    .update(Some(&handle.metrics), |l| l.forget(&peer, me))
                    .await?;
                if done {
                    info!(%peer, node = %rec.node, "its Node is gone and it owns no address space: off the peer list, nothing to reclaim");
                }
                continue;
            }
            info!(%peer, node = %rec.node, retired = rec.retired, "reclaiming the address space of a router whose Node is gone");
            match ask(handle, |r| Command::RmPeer {
                peer: peer.clone(),
                reply: r,
            })
            .await?
            {
                Ok(_) => {}
                Err(e) => {
                    warn!(%peer, "reclaim postponed: {e}");
                    pending = true;
                    continue;
                }
            }
            // Our signature alone is not the removal: the other routers
            // co-sign with their own evidence (they see the Node gone too).
            // Keep the claim, and the peer on the list where they find it,
            // until the certificate is valid here.
            let ipam = ask(handle, Command::IpamStatus).await?;
            if !ipam.removed.iter().any(|p| p.to_string() == peer) {
                debug!(%peer, "signed; the removal applies once more than half of the owners signed");
                pending = true;
                continue;
            }
            handle.metrics.kube_reclaims.inc();
            let (_, done) = self
                .update(Some(&handle.metrics), |l| l.finish(&peer, me))
                .await?;
            if done {
                info!(%peer, node = %rec.node, "reclaimed; the router is off the peer list");
            }
        }

        // 3. Tell Kubernetes our Node's network is up (once: only a change
        //    of the condition is written, so lastTransitionTime means it).
        let net = ask(handle, Command::Network).await?;
        let ours = all
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(&self.cfg.node_name));
        if !net.ready {
            pending = true;
        } else if ours.is_some_and(|n| !network_available(n)) {
            self.report_ready(nodes).await?;
        }
        Ok(pending)
    }

    async fn report_ready(&self, nodes: &Api<Node>) -> Result<()> {
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let patch = serde_json::json!({
            "status": { "conditions": [{
                "type": "NetworkUnavailable",
                "status": "False",
                "reason": "WeftIsUp",
                "message": "Weft meshd is running on this node",
                "lastTransitionTime": now,
                "lastHeartbeatTime": now,
            }]}
        });
        nodes
            .patch_status(
                &self.cfg.node_name,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
            .with_context(|| {
                format!(
                    "setting NetworkUnavailable=False on Node {}",
                    self.cfg.node_name
                )
            })?;
        info!(node = %self.cfg.node_name, "Node condition NetworkUnavailable=False set");
        Ok(())
    }
}

#[derive(Default)]
struct ReconcileState {
    /// Peer addresses we added from Nodes (persisted, so that the addresses
    /// of Nodes deleted while meshd was down are forgotten too).
    managed: BTreeSet<SocketAddr>,
    /// Reclaim candidates, since when we have seen their Node gone.
    missing_since: BTreeMap<String, std::time::Instant>,
    /// Allocations held: the list says we were removed, the ring does not.
    hold: Option<String>,
    /// Whether the router was told `hold` (it may start held).
    hold_sent: bool,
}

/// Why allocations are refused while the peer list alone says this router
/// was removed.
pub const UNCONFIRMED_REMOVAL: &str = "the weft-peers ConfigMap lists this router as removed, but the ring holds no valid removal certificate for it: allocations are held until the ring confirms it (meshd then steps aside) or the entry is taken off the list";

/// What this router does about its own removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnRemoval {
    No,
    /// The ring holds a valid certificate: step aside.
    Confirmed,
    /// Only the peer list says so: hold allocations, count it, stay.
    Unconfirmed,
}

/// What a reclaim of a gone router does, by our ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reclaim {
    /// Sign (or complete) its removal: it owns space here, or its removal
    /// applied and only the list entry is left.
    RmPeer,
    /// It owns nothing in a seeded ring and is not removed: forget it.
    Forget,
}

/// `seeded`: our ring is seeded; `owns`: the peer owns space in it;
/// `removed`: its removal applied here.
pub fn reclaim_action(seeded: bool, owns: bool, removed: bool) -> Reclaim {
    if seeded && !owns && !removed {
        Reclaim::Forget
    } else {
        Reclaim::RmPeer
    }
}

/// `listed`: the peer list names us as removed; `in_ring`: our ring
/// applied a removal certificate for us (valid in our own view).
pub fn own_removal(listed: bool, in_ring: bool) -> OwnRemoval {
    match (listed, in_ring) {
        (_, true) => OwnRemoval::Confirmed,
        (true, false) => OwnRemoval::Unconfirmed,
        (false, false) => OwnRemoval::No,
    }
}

/// What the Kubernetes task ends with when this router was removed from the
/// ring (its Node was deleted while the host lived on): the router loop
/// stops, and only then is its state stepped aside with [`removed`], so
/// that no save of the loop's can write `ipam.json` back.
#[derive(Debug, thiserror::Error)]
#[error("this router ({0}) was removed from the ring after its Node was deleted")]
pub struct MustStepAside(pub weft_peer_proto::PeerName);

/// Steps aside (see [`step_aside`]) and says so: the error meshd stops with.
/// Call it only when nothing can save IPAM state any more.
pub fn removed(me: weft_peer_proto::PeerName, data_dir: &std::path::Path) -> anyhow::Error {
    anyhow::anyhow!(
        "this router ({me}) was removed from the ring after its Node was deleted; {}",
        step_aside(data_dir)
    )
}

/// Moves the identity and IPAM state of a removed router aside, so that the
/// next start is a new router. Returns what it did, for the log.
pub fn step_aside(data_dir: &std::path::Path) -> String {
    let stamp = now_secs();
    for f in ["identity.key", "ipam.json"] {
        let p = data_dir.join(f);
        let _ = std::fs::rename(&p, data_dir.join(format!("{f}.removed-{stamp}")));
    }
    format!(
        "its identity and IPAM state were moved aside (*.removed-{stamp}): restart to join as a new router"
    )
}

/// The peer list a ConfigMap holds (empty if it has none yet).
fn peer_list(cm: &ConfigMap) -> Result<PeerList, String> {
    PeerList::parse(
        cm.data
            .as_ref()
            .and_then(|d| d.get(peers::KEY))
            .map(String::as_str),
    )
}

/// A Node's `(type, address)` pairs.
fn node_addresses(n: &Node) -> Vec<(String, String)> {
    n.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|a| {
            a.iter()
                .map(|a| (a.type_.clone(), a.address.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// What a pass depends on: Node names and addresses (not heartbeats).
fn fingerprint(all: &[Arc<Node>]) -> BTreeMap<String, Vec<(String, String)>> {
    all.iter()
        .map(|n| {
            (
                n.metadata.name.clone().unwrap_or_default(),
                node_addresses(n),
            )
        })
        .collect()
}

/// Whether a Node already says NetworkUnavailable=False.
fn network_available(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| {
            c.iter()
                .any(|c| c.type_ == "NetworkUnavailable" && c.status == "False")
        })
}

/// Sends a command to the router loop and waits (up to 10 s) for its answer.
async fn ask<T>(handle: &Handle, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
    handle
        .ask(make, Some(Duration::from_secs(10)))
        .await
        .map_err(|e| anyhow!("meshd: {e}"))
}

/// Why one attempt failed.
pub(crate) enum Failure {
    /// Retrying will not help: stop meshd with this.
    Fatal(anyhow::Error),
    /// The API did not answer as it should; try again in a while.
    Transient(anyhow::Error),
}

/// Runs `attempt` until it succeeds or fails for good, every 2 s while the
/// API does not answer as it should (counted in `weft_kube_errors`, warned
/// about every fifth time), until `shutdown` flips. `what` completes
/// "waiting for the Kubernetes API to ...".
async fn retry_api<T, F, Fut>(
    shutdown: &watch::Receiver<bool>,
    metrics: &crate::metrics::Metrics,
    what: &str,
    mut attempt: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let mut shutdown = shutdown.clone();
    let mut warned = 0u32;
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Transient(e)) => {
                metrics.kube_errors.inc();
                if warned.is_multiple_of(5) {
                    warn!("waiting for the Kubernetes API to {what}: {e:#}");
                }
                warned += 1;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stopped(&mut shutdown) => bail!("stopped while waiting for the Kubernetes API to {what}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gone router that owns nothing is forgotten, not retried for ever;
    /// an unseeded ring knows nothing yet, so the reclaim waits for it.
    #[test]
    fn a_gone_router_that_owns_nothing_is_forgotten() {
        assert_eq!(reclaim_action(true, false, false), Reclaim::Forget);
        assert_eq!(reclaim_action(true, true, false), Reclaim::RmPeer);
        assert_eq!(reclaim_action(true, false, true), Reclaim::RmPeer);
        assert_eq!(reclaim_action(false, false, false), Reclaim::RmPeer);
    }

    /// The peer list's word alone never makes a router step aside.
    #[test]
    fn only_the_ring_confirms_our_removal() {
        assert_eq!(own_removal(true, false), OwnRemoval::Unconfirmed);
        assert_eq!(own_removal(true, true), OwnRemoval::Confirmed);
        assert_eq!(own_removal(false, true), OwnRemoval::Confirmed);
        assert_eq!(own_removal(false, false), OwnRemoval::No);
    }
}
