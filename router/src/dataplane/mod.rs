//! The data plane: pod packets from a TUN device, sealed per hop with keys
//! from the peer session, carried over UDP.
//!
//! The daemon loop owns a [`DataPlane`] and tells it what changes: a session
//! came up (its exported secret), the peer's [`DataOffer`] arrived, a
//! session went down, the ring or the routes changed. The data plane turns
//! that into an immutable forwarding [`Table`] that its two packet threads
//! read ([`engine`]), and into kernel state (bridge, routes, masquerade) that
//! a wiring task keeps in sync ([`host`]).

pub mod crypto;
pub mod engine;
pub mod host;
pub mod packet;
pub mod stats;
pub mod table;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use arc_swap::ArcSwap;
use tokio::sync::watch;
use tracing::{info, warn};
use weft_ipam_crdt::AddrRange;
use weft_peer_proto::data::MAX_OVERHEAD;
use weft_peer_proto::{DataOffer, PeerName};

use self::crypto::{DhSecret, DirectionKeys, Opener, OriginKeys, Role, Sealer};
use self::engine::{Hop, Shared, TxBatch};
use self::host::{Host, WantRoute};
use self::table::{Link, Table, cidrs};
use weft_api::{DataPlaneStatus, LinkStatus};
use weft_mesh::SessionId;

pub use self::crypto::{EXPORTER_LABEL, Role as SessionRole};

/// Outer IPv4 and UDP headers.
const UDP_IPV4_OVERHEAD: usize = 20 + 8;
/// Keep-alives on an idle link, so that both ends know the path works.
pub const KEEPALIVE: Duration = Duration::from_secs(5);
/// A link with nothing heard for this long is shown as down.
const LINK_DEAD: Duration = Duration::from_secs(16);
/// Metric of the overlay route into the TUN.
const TUN_METRIC: u32 = 100;
/// The transport shown in status.
pub const TRANSPORT: &str = "udp/aes-256-gcm";

/// How the data plane is set up.
#[derive(Debug, Clone)]
pub struct DataPlaneConfig {
    pub tun: String,
    pub bridge: String,
    pub port: u16,
    /// Overrides the MTU derived from the underlay.
    pub mtu: Option<u16>,
    pub range: AddrRange,
    pub masquerade: bool,
    /// Test only: forge the origin of relayed packets (see meshd's hidden
    /// `--test-forge-relay-origin`).
    pub forge_relay_origin: bool,
}

/// A session whose peer has not sent its offer yet.
struct AwaitingOffer {
    peer: PeerName,
    nickname: String,
    role: Role,
    secret: [u8; 32],
    ip: IpAddr,
    recv_index: u32,
}

/// What the wiring task keeps in the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct HostWant {
    gateway: Option<Ipv4Addr>,
    local: Vec<AddrRange>,
}

pub struct DataPlane {
    me: PeerName,
    cfg: DataPlaneConfig,
    mtu: u16,
    shared: Arc<Shared>,
    pending: HashMap<SessionId, AwaitingOffer>,
    links: HashMap<SessionId, Arc<Link>>,
    ring: Vec<(u32, PeerName)>,
    hops: Vec<(PeerName, PeerName)>,
    /// Our origin key pair, drawn at this start.
    dh: DhSecret,
    /// Origin keys by peer. Kept while the peer's public key stays the
    /// same, also when its entry leaves the topology for a while: made
    /// again, a pair's counters would start over and the peer's replay
    /// window refuse them.
    /// None: the peer's public key gives no secret.
    origins: HashMap<PeerName, ([u8; 32], Option<Arc<OriginKeys>>)>,
    gateway: Option<Ipv4Addr>,
    want: watch::Sender<HostWant>,
    keepalive: TxBatch,
    last_keepalive: Instant,
    last_probe: Instant,
    offload: bool,
    /// What /metrics has already been told, per session, so that counters
    /// only grow across reconnects.
    reported: HashMap<SessionId, Reported>,
    reported_global: BTreeMap<&'static str, u64>,
}

#[derive(Default, Clone)]
struct Reported {
    tx_bytes: u64,
    rx_bytes: u64,
    tx_packets: u64,
    rx_packets: u64,
    drops: BTreeMap<&'static str, u64>,
}

impl DataPlane {
    /// Creates the TUN and the bridge, binds the data socket, starts the
    /// packet threads and the wiring task.
    /// `dh`: our origin key pair, whose public half our topology entry
    /// carries.
    pub async fn start(me: PeerName, dh: DhSecret, cfg: DataPlaneConfig) -> Result<Self> {
        let host = Host::connect()?;
        let mtu = match cfg.mtu {
            Some(m) => m,
            None => derive_mtu(&host, &cfg).await?,
        };
        if mtu < weft_peer_proto::MIN_DATA_MTU {
            return Err(anyhow!(
                "overlay MTU {mtu} is below {}",
                weft_peer_proto::MIN_DATA_MTU
            ));
        }
        let tun = tun_rs::DeviceBuilder::new()
            .name(&cfg.tun)
            .mtu(mtu)
            .offload(true)
            .build_sync()
            .map_err(|e| {
                // EPERM: no CAP_NET_ADMIN, or (in a container) the runtime's
                // device cgroup denying the open of /dev/net/tun.
                let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                    " (meshd needs CAP_NET_ADMIN; in a container, the runtime must also \
                     allow /dev/net/tun: see docs/install-kubernetes.md, \"The TUN device\")"
                } else {
                    " (is another meshd running? is /dev/net/tun there?)"
                };
                anyhow!("creating TUN {}: {e}{hint}", cfg.tun)
            })?;
        let offload = tun.tcp_gso();
        let tun_index = host
            .link_index(&cfg.tun)
            .await?
            .ok_or_else(|| anyhow!("TUN {} not found after creation", cfg.tun))?;
        // The overlay is IPv4: no IPv6 chatter on the TUN (set before it is up).
        let _ = weft_kernel::sysctl(&format!("net/ipv6/conf/{}/disable_ipv6", cfg.tun), "1");
        host.set_up(tun_index, u32::from(mtu))
            .await
            .context("bringing up the TUN")?;
        let bridge_index = host
            .ensure_bridge(&cfg.bridge, u32::from(mtu), bridge_mac(me))
            .await?;
        weft_kernel::sysctl("net/ipv4/ip_forward", "1")?;
        // Pods have the whole range on-link: the bridge answers ARP for
        // remote pods (their route is the TUN), at once.
        weft_kernel::sysctl(&format!("net/ipv4/conf/{}/proxy_arp", cfg.bridge), "1")?;
        weft_kernel::sysctl(&format!("net/ipv4/neigh/{}/proxy_delay", cfg.bridge), "0")?;
        let range_str = format!(
            "{}/{}",
            Ipv4Addr::from(cfg.range.start),
            crate::ipam::prefix_len(cfg.range)
        );
        host::apply_nft(&range_str, &cfg.bridge, &cfg.tun, cfg.masquerade)
            .context("masquerade rules")?;
        host::apply_pod_guard().context("per-pod source check (nftables bridge table)")?;

        let udp = UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, cfg.port)))
            .with_context(|| format!("binding data port UDP {}", cfg.port))?;
        let udp_state = quinn_udp::UdpSocketState::new((&udp).into()).context("data socket")?;
        // quinn-udp makes the socket non-blocking; our threads block on it,
        // but a send never blocks for long (the daemon loop sends keep-alives
        // on it too): a full buffer for 50 ms drops the batch, counted.
        udp.set_nonblocking(false)?;
        udp.set_write_timeout(Some(Duration::from_millis(50)))?;
        for bytes in [8 << 20, 4 << 20, 1 << 20] {
            if udp_state.set_recv_buffer_size((&udp).into(), bytes).is_ok() {
                break;
            }
        }
        let _ = udp_state.set_send_buffer_size((&udp).into(), 4 << 20);
        let port = udp.local_addr()?.port();
        let shared = Arc::new(Shared {
            table: ArcSwap::from_pointee(Table::new(me)),
            drops: Default::default(),
            tun,
            udp,
            udp_state,
            started: Instant::now(),
            forge_relay_origin: cfg.forge_relay_origin,
        });
        if cfg.forge_relay_origin {
            warn!("--test-forge-relay-origin: this router forges the origin of relayed packets");
        }
        {
            let sh = shared.clone();
            let mtu = usize::from(mtu);
            std::thread::Builder::new()
                .name("weft-tun-rx".into())
                .spawn(move || engine::tun_loop(sh, mtu))?;
            let sh = shared.clone();
            std::thread::Builder::new()
                .name("weft-udp-rx".into())
                .spawn(move || engine::udp_loop(sh))?;
        }
        let (want, want_rx) = watch::channel(HostWant::default());
        tokio::spawn(wire_host(
            host,
            cfg.clone(),
            tun_index,
            bridge_index,
            want_rx,
        ));
        info!(tun = %cfg.tun, bridge = %cfg.bridge, mtu, port, offload, gso = shared.udp_state.max_gso_segments(), "data plane up");
        let mut cfg = cfg;
        cfg.port = port;
        Ok(DataPlane {
            me,
            cfg,
            mtu,
            shared,
            pending: HashMap::new(),
            links: HashMap::new(),
            ring: Vec::new(),
            hops: Vec::new(),
            dh,
            origins: HashMap::new(),
            gateway: None,
            want,
            keepalive: TxBatch::new(),
            last_keepalive: Instant::now(),
            last_probe: Instant::now(),
            offload,
            reported: HashMap::new(),
            reported_global: BTreeMap::new(),
        })
    }

    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.gateway
    }

    pub fn bridge(&self) -> &str {
        &self.cfg.bridge
    }

    fn fresh_index(&self) -> u32 {
        loop {
            let i: u32 = rand::random();
            let used = self.pending.values().any(|p| p.recv_index == i)
                || self.links.values().any(|l| l.recv_index == i);
            if i != 0 && !used {
                return i;
            }
        }
    }

    /// A session came up: remember its secret and return the offer to send.
    pub fn session_up(
        &mut self,
        conn: SessionId,
        peer: PeerName,
        nickname: String,
        role: Role,
        secret: [u8; 32],
        ip: IpAddr,
    ) -> DataOffer {
        let recv_index = self.fresh_index();
        self.pending.insert(
            conn,
            AwaitingOffer {
                peer,
                nickname,
                role,
                secret,
                ip,
                recv_index,
            },
        );
        DataOffer {
            port: self.cfg.port,
            index: recv_index,
            mtu: self.mtu,
        }
    }

    /// The peer's offer on `conn`: the link is complete.
    pub fn offer_received(&mut self, conn: SessionId, offer: DataOffer) {
        let Some(mut p) = self.pending.remove(&conn) else {
            // Offers are repeated until the peer's packets arrive; a changed
            // one (new port or MTU) takes effect when the session reconnects.
            if let Some(old) = self.links.get(&conn)
                && (old.send_index != offer.index || old.remote.port() != offer.port)
            {
                warn!(peer = %old.peer, "peer changed its data offer; ignoring until it reconnects");
            }
            return;
        };
        if let IpAddr::V6(v6) = p.ip {
            match v6.to_ipv4_mapped() {
                Some(v4) => p.ip = IpAddr::V4(v4),
                None => {
                    // The data socket is IPv4; routes relay around this peer.
                    warn!(peer = %p.peer, ip = %p.ip, "no data link over an IPv6 underlay yet");
                    return;
                }
            }
        }
        let link = Arc::new(Link {
            peer: p.peer,
            nickname: p.nickname,
            conn,
            remote: SocketAddr::new(p.ip, offer.port),
            send_index: offer.index,
            recv_index: p.recv_index,
            mtu: self.mtu.min(offer.mtu),
            sealer: Mutex::new(Sealer::new(DirectionKeys::new(&p.secret, p.role))),
            opener: Mutex::new(Opener::new(DirectionKeys::new(&p.secret, p.role.other()))),
            stats: Default::default(),
        });
        info!(peer = %link.peer, remote = %link.remote, mtu = link.mtu, "data link ready");
        self.keepalive
            .push(&self.shared, &link, Hop::KeepAlive, &[]);
        self.keepalive.flush(&self.shared);
        self.links.insert(conn, link);
        self.publish();
    }

    pub fn session_down(&mut self, conn: SessionId) {
        self.pending.remove(&conn);
        if self.links.remove(&conn).is_some() {
            self.publish();
        }
    }

    /// The ring's tokens and the ranges we own in it; republishes (and
    /// re-routes the local ranges) when they changed.
    pub fn set_ring(&mut self, tokens: Vec<(u32, PeerName)>, local: Vec<AddrRange>) {
        if tokens != self.ring {
            self.ring = tokens;
            self.publish();
            self.want.send_if_modified(|w| {
                let changed = w.local != local;
                w.local = local;
                changed
            });
        }
    }

    /// (destination, next hop) pairs; republishes when they changed.
    pub fn set_hops(&mut self, mut hops: Vec<(PeerName, PeerName)>) {
        hops.sort_unstable();
        if hops != self.hops {
            self.hops = hops;
            self.publish();
        }
    }

    /// Every other router's origin public key, as its signed topology
    /// entry gives it; republishes when a key came, changed or went.
    pub fn set_origin_keys(&mut self, peers: impl Iterator<Item = (PeerName, [u8; 32])>) {
        let mut changed = false;
        let mut present = 0usize;
        let mut seen = std::collections::HashSet::new();
        for (peer, public) in peers {
            present += 1;
            seen.insert(peer);
            if self.origins.get(&peer).is_some_and(|(p, _)| *p == public) {
                continue;
            }
            changed = true;
            let keys = OriginKeys::derive(self.me, &self.dh, peer, public).map(Arc::new);
            self.origins.insert(peer, (public, keys));
        }
        // Keys of routers gone from the topology are kept (see `origins`),
        // within a bound.
        if self.origins.len() > 2 * present + 64 {
            self.origins.retain(|p, _| seen.contains(p));
            changed = true;
        }
        if changed {
            self.publish();
        }
    }

    pub fn set_gateway(&mut self, gw: Ipv4Addr) {
        if self.gateway != Some(gw) {
            self.gateway = Some(gw);
            self.publish();
            self.want.send_modify(|w| w.gateway = Some(gw));
        }
    }

    fn publish(&self) {
        // One link per peer: the newest session wins until the old one closes.
        let mut by_peer: HashMap<PeerName, &Arc<Link>> = HashMap::new();
        for l in self.links.values() {
            match by_peer.get(&l.peer) {
                Some(o) if o.conn > l.conn => {}
                _ => {
                    by_peer.insert(l.peer, l);
                }
            }
        }
        let mut t = Table::new(self.me)
            .with_ring(self.cfg.range, self.ring.iter().copied())
            .with_hops(self.hops.iter().copied())
            .with_links(by_peer.into_values().cloned())
            .with_origins(
                self.origins
                    .iter()
                    .filter_map(|(p, (_, k))| Some((*p, k.clone()?))),
            );
        // Old sessions' links still receive until they close.
        t.add_receivers(self.links.values().cloned());
        t.gateway = self.gateway;
        self.shared.table.store(Arc::new(t));
    }

    /// Our offer on every session whose peer has not shown it has it (no
    /// packet from it authenticated yet): offers can be lost on a full
    /// session queue. Called about once a second.
    pub fn offers_to_repeat(&self) -> Vec<(SessionId, DataOffer)> {
        let offer = |index| DataOffer {
            port: self.cfg.port,
            index,
            mtu: self.mtu,
        };
        let silent = self.links.iter().filter(|(_, l)| {
            l.stats
                .last_rx_ms
                .load(std::sync::atomic::Ordering::Relaxed)
                == 0
        });
        self.pending
            .iter()
            .map(|(c, p)| (*c, offer(p.recv_index)))
            .chain(silent.map(|(c, l)| (*c, offer(l.recv_index))))
            .collect()
    }

    /// Keep-alives on every link every [`KEEPALIVE`], and every second on
    /// links the peer has not answered yet (its side may have come up after
    /// our first keep-alive).
    pub fn tick(&mut self, now: Instant) {
        use std::sync::atomic::Ordering::Relaxed;
        if now.duration_since(self.last_probe) >= Duration::from_secs(1) {
            self.last_probe = now;
            for l in self.links.values() {
                if l.stats.last_rx_ms.load(Relaxed) == 0 {
                    self.keepalive.push(&self.shared, l, Hop::KeepAlive, &[]);
                    self.keepalive.flush(&self.shared);
                }
            }
        }
        if now.duration_since(self.last_keepalive) < KEEPALIVE {
            return;
        }
        self.last_keepalive = now;
        for l in self.links.values() {
            self.keepalive.push(&self.shared, l, Hop::KeepAlive, &[]);
            self.keepalive.flush(&self.shared);
        }
    }

    /// Adds what happened since the last call to the Prometheus counters.
    pub fn export_metrics(&mut self, m: &crate::metrics::Metrics) {
        use crate::metrics::{PeerDirLabel, StateLabel};
        use std::sync::atomic::Ordering::Relaxed;
        let label = |peer: &str, dir: &str| PeerDirLabel {
            peer: peer.to_string(),
            direction: dir.to_string(),
        };
        let now_ms = self.shared.now_ms();
        let mut up = 0;
        for (conn, l) in &self.links {
            let r = self.reported.entry(*conn).or_default();
            let s = &l.stats;
            let peer = if l.nickname.is_empty() {
                l.peer.to_string()
            } else {
                l.nickname.clone()
            };
            for (now, last, fam, dir) in [
                (
                    s.tx_bytes.load(Relaxed),
                    &mut r.tx_bytes,
                    &m.data_bytes,
                    "tx",
                ),
                (
                    s.rx_bytes.load(Relaxed),
                    &mut r.rx_bytes,
                    &m.data_bytes,
                    "rx",
                ),
                (
                    s.tx_packets.load(Relaxed),
                    &mut r.tx_packets,
                    &m.data_packets,
                    "tx",
                ),
                (
                    s.rx_packets.load(Relaxed),
                    &mut r.rx_packets,
                    &m.data_packets,
                    "rx",
                ),
            ] {
                fam.get_or_create(&label(&peer, dir))
                    .inc_by(now.saturating_sub(*last));
                *last = now;
            }
            report_drops(&s.drops, &mut r.drops, m);
            let last = s.last_rx_ms.load(Relaxed);
            if last > 0 && Duration::from_millis(now_ms.saturating_sub(last)) < LINK_DEAD {
                up += 1;
            }
        }
        self.reported.retain(|c, _| self.links.contains_key(c));
        report_drops(&self.shared.drops, &mut self.reported_global, m);
        m.data_links
            .get_or_create(&StateLabel { state: "up".into() })
            .set(up);
        m.data_links
            .get_or_create(&StateLabel {
                state: "down".into(),
            })
            .set(self.links.len() as i64 - up);
    }

    pub fn status(&self) -> DataPlaneStatus {
        let now_ms = self.shared.now_ms();
        let mut links: Vec<LinkStatus> = self
            .links
            .values()
            .map(|l| {
                use std::sync::atomic::Ordering::Relaxed;
                let s = &l.stats;
                let last = s.last_rx_ms.load(Relaxed);
                let ago = (last > 0).then(|| now_ms.saturating_sub(last) as f64 / 1000.0);
                LinkStatus {
                    peer: l.peer,
                    nickname: l.nickname.clone(),
                    remote: l.remote,
                    transport: TRANSPORT.into(),
                    encrypted: true,
                    mtu: l.mtu,
                    up: ago.is_some_and(|a| a < LINK_DEAD.as_secs_f64()),
                    last_rx_secs: ago,
                    tx_packets: s.tx_packets.load(Relaxed),
                    tx_bytes: s.tx_bytes.load(Relaxed),
                    rx_packets: s.rx_packets.load(Relaxed),
                    rx_bytes: s.rx_bytes.load(Relaxed),
                    drops: s
                        .drops
                        .nonzero()
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                }
            })
            .collect();
        links.sort_by(|a, b| a.nickname.cmp(&b.nickname).then(a.peer.cmp(&b.peer)));
        DataPlaneStatus {
            tun: self.cfg.tun.clone(),
            bridge: self.cfg.bridge.clone(),
            port: self.cfg.port,
            mtu: self.mtu,
            gateway: self.gateway,
            offload: self.offload,
            gso_segments: self.shared.udp_state.max_gso_segments(),
            links,
            drops: self
                .shared
                .drops
                .nonzero()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect::<BTreeMap<_, _>>(),
        }
    }
}

/// Adds the drops since `last` to the Prometheus counter.
fn report_drops(
    drops: &stats::Drops,
    last: &mut BTreeMap<&'static str, u64>,
    m: &crate::metrics::Metrics,
) {
    for why in stats::DropReason::ALL {
        let n = drops.get(why);
        let seen = last.entry(why.label()).or_default();
        if n > *seen {
            m.data_drops
                .get_or_create(&crate::metrics::ReasonLabel {
                    reason: why.label().into(),
                })
                .inc_by(n - *seen);
            *seen = n;
        }
    }
}

/// Underlay MTU minus what a data packet adds.
/// The bridge's MAC, fixed and derived from our name (locally
/// administered, unicast). A bridge left to itself takes the lowest MAC of
/// its ports and changes it as pods come and go; pods that cached the
/// gateway's (and every proxy-ARPed address's) MAC would then send into
/// the void until their neighbour entries expire.
fn bridge_mac(me: PeerName) -> [u8; 6] {
    let b = me.0.to_be_bytes();
    [(b[2] & 0xfe) | 0x02, b[3], b[4], b[5], b[6], b[7]]
}

async fn derive_mtu(host: &Host, cfg: &DataPlaneConfig) -> Result<u16> {
    let underlay = match host.default_route_link().await? {
        Some(i) => host.link_mtu(i).await?,
        None => None,
    };
    let underlay = match underlay {
        Some(m) => m,
        None => host
            .link_mtus()
            .await?
            .into_iter()
            .filter(|(n, _)| *n != cfg.tun && *n != cfg.bridge)
            .map(|(_, m)| m)
            .max()
            .unwrap_or(1500),
    };
    let mtu = (underlay as usize).saturating_sub(UDP_IPV4_OVERHEAD + MAX_OVERHEAD);
    Ok(mtu.min(65_000) as u16)
}

/// Keeps the kernel in line with what the data plane wants: the gateway on
/// the bridge, the overlay range into the TUN (fail-closed underneath), the
/// local ranges onto the bridge.
async fn wire_host(
    host: Host,
    cfg: DataPlaneConfig,
    tun: u32,
    bridge: u32,
    mut want: watch::Receiver<HostWant>,
) {
    let prefix = cidrs(cfg.range);
    loop {
        let w = want.borrow_and_update().clone();
        let mut routes: Vec<WantRoute> = Vec::new();
        for (a, p) in &prefix {
            // Metric 100: a local range with the same prefix (one router owning
            // everything) goes to the bridge.
            routes.push(WantRoute::via(*a, *p, tun, w.gateway, TUN_METRIC));
            routes.push(WantRoute::unreachable(*a, *p));
        }
        for r in &w.local {
            for (a, p) in cidrs(*r) {
                routes.push(WantRoute::via(a, p, bridge, w.gateway, 0));
            }
        }
        let result = async {
            if let Some(gw) = w.gateway {
                host.ensure_addr(bridge, gw).await?;
                // On the TUN too: what is masqueraded out of it (see
                // apply_nft) then leaves as this node's overlay address.
                host.ensure_addr(tun, gw).await?;
            }
            host.sync_routes(&routes).await
        }
        .await;
        if let Err(e) = result {
            warn!(error = %format!("{e:#}"), "host wiring failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        if want.changed().await.is_err() {
            return;
        }
    }
}

/// Removes what meshd put in the kernel; returns what it did, line by line.
pub async fn reset(tun: &str, bridge: &str) -> Result<Vec<String>> {
    let host = Host::connect()?;
    let mut done = Vec::new();
    host.sync_routes(&[]).await?;
    done.push("removed weft routes (proto 119)".to_string());
    for name in [tun, bridge] {
        if host.delete_link(name).await? {
            done.push(format!("deleted link {name}"));
        }
    }
    host::remove_nft()?;
    done.push(format!(
        "removed nftables tables ip {0} and bridge {0}",
        host::NFT_TABLE
    ));
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_macs_are_unicast_locally_administered_and_per_router() {
        for n in [0u64, u64::MAX, 0x0123_4567_89ab_cdef] {
            let m = bridge_mac(PeerName(n));
            assert_eq!(m[0] & 0x01, 0, "unicast");
            assert_eq!(m[0] & 0x02, 0x02, "locally administered");
        }
        assert_ne!(bridge_mac(PeerName(1)), bridge_mac(PeerName(2)));
    }
}
