//! The gossip and topology core of a router, sans I/O.
//!
//! [`Mesh`] never touches a socket, a clock or a thread: the driver (the tokio
//! shell in `daemon`, or the simulation in `tests/`) feeds it inputs, each
//! with the current `now`, and drains what it asks for. Call order, after
//! every input:
//!
//! 1. inputs: [`Mesh::connection_up`], [`Mesh::connection_down`],
//!    [`Mesh::dial_failed`], [`Mesh::handle_frame`], [`Mesh::handle_timeout`]
//!    (when [`Mesh::poll_timeout`] is due), and the operator's
//!    [`Mesh::add_target`] / [`Mesh::forget_target`];
//! 2. drain [`Mesh::poll_transmit`] (frames to send on a session), then
//!    [`Mesh::poll_action`] (dials to start, sessions to close), then
//!    [`Mesh::poll_event`] (things worth a log line);
//! 3. arm a timer for [`Mesh::poll_timeout`].
//!
//! Randomness comes from the seed in [`Config`], so a simulation that feeds
//! the same inputs gets the same outputs.

mod channel;
mod connector;
pub mod routes;
pub mod topology;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use weft_peer_proto::limits::MAX_ADDRS_PER_PEER;
use weft_peer_proto::topology::{PeerEntry, TopologyMsg};
use weft_peer_proto::{
    ChannelName, Features, Frame, GoodbyeReason, GossipMsg, Hello, PROTOCOL_MAX, PROTOCOL_MIN,
    PeerName, Verb, VersionRange,
};

pub use self::channel::{ChannelError, GossipChannel};
use self::connector::{Connector, TargetState};
use self::routes::Routes;
use self::topology::Topology;
use weft_api::{
    ConnectionState, ConnectionStatus, Direction, MeshStatus, PeerRef, PeerStatus, RouteStatus,
    TargetStatus,
};

/// How often unreachable peers are looked for.
fn gc_period(cfg: &Config) -> Duration {
    (cfg.peer_gc_after / 4).max(cfg.gossip_interval)
}

/// The driver's handle for one peer session.
pub type ConnId = u64;

#[derive(Debug, Clone)]
pub struct Config {
    pub name: PeerName,
    pub nickname: String,
    /// Random per process start.
    pub uid: u64,
    pub listen_port: u16,
    /// Dial discovered peers only while we hold fewer sessions than this;
    /// accept inbound sessions up to twice this. Explicit targets are always dialed.
    pub conn_limit: usize,
    /// Dial peers learned from the topology.
    pub discovery: bool,
    /// Period of anti-entropy (topology hash check with one random neighbour)
    /// and of housekeeping.
    pub gossip_interval: Duration,
    /// How long news waits to be batched before it is relayed.
    pub flush_interval: Duration,
    /// Shortest time between two versions of our own entry: while sessions
    /// come and go (a mesh starting up), changes are batched into one version
    /// instead of flooding the mesh with one version per session.
    pub own_interval: Duration,
    /// Neighbours that news is relayed to.
    pub fanout: usize,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How long an unreachable peer stays in the topology.
    pub peer_gc_after: Duration,
    pub max_concurrent_dials: usize,
    /// Most peers kept in the topology (a bound on memory whatever peers send).
    pub max_peers: usize,
    pub seed: u64,
}

impl Config {
    pub fn new(name: PeerName, nickname: String, uid: u64, seed: u64) -> Self {
        Config {
            name,
            nickname,
            uid,
            listen_port: weft_peer_proto::DEFAULT_PORT,
            conn_limit: 32,
            discovery: true,
            gossip_interval: Duration::from_secs(2),
            flush_interval: Duration::from_millis(100),
            own_interval: Duration::from_millis(1000),
            fanout: 4,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            peer_gc_after: Duration::from_secs(60),
            max_concurrent_dials: 16,
            max_peers: 20_000,
            seed,
        }
    }
}

/// A frame for the driver to send on a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub conn: ConnId,
    pub frame: Frame,
}

/// Something the driver must do besides sending frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a session to this address; report with `connection_up` or `dial_failed`.
    Dial(SocketAddr),
    /// Send any queued transmits, then a goodbye, then close the session.
    /// Report the close with `connection_down`.
    Close {
        conn: ConnId,
        reason: GoodbyeReason,
        message: String,
    },
}

/// Worth a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeshEvent {
    Connected {
        peer: PeerName,
        nickname: String,
        addr: SocketAddr,
        outbound: bool,
    },
    Disconnected {
        peer: PeerName,
        nickname: String,
        reason: String,
    },
    Rejected {
        addr: SocketAddr,
        peer: PeerName,
        reason: GoodbyeReason,
    },
    PeerRemoved {
        peer: PeerName,
        nickname: String,
    },
    ChannelError {
        channel: String,
        src: PeerName,
        error: String,
    },
}

/// The answer to a session that finished its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Accept,
    /// Send queued transmits, then a goodbye with this reason, then close.
    Reject(GoodbyeReason),
}

/// A channel message could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("no route to peer {0}")]
    Unreachable(PeerName),
}

/// A peer broke the protocol on a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("unexpected hello after the session started")]
    UnexpectedHello,
}

/// Counters the driver exports as metrics.
#[derive(Debug, Clone, Default)]
pub struct MeshCounters {
    pub topology_news: u64,
    pub unroutable: u64,
    pub unknown_channel: u64,
    pub channel_errors: u64,
    pub rejected_conn_limit: u64,
    pub rejected_duplicate: u64,
    /// New peers refused because the topology is full.
    pub peers_refused: u64,
    /// Broadcasts from sources not in our topology (dropped).
    pub unknown_source: u64,
    /// Anti-entropy requests answered too often by one session (skipped).
    pub throttled: u64,
}

#[derive(Debug, Clone)]
struct Conn {
    peer: PeerName,
    nickname: String,
    /// An address the peer can be dialed at.
    addr: SocketAddr,
    outbound: bool,
    since: Instant,
    /// The peer's incarnation, and the dialer's random nonce for this session.
    uid: u64,
    nonce: u64,
    /// When we last answered a digest with updates, and a summary with a digest.
    updates_at: Option<Instant>,
    digest_at: Option<Instant>,
}

pub struct Mesh {
    cfg: Config,
    rng: StdRng,
    topology: Topology,
    routes: Routes,
    routes_dirty: bool,
    conns: HashMap<ConnId, Conn>,
    by_peer: HashMap<PeerName, ConnId>,
    connector: Connector,
    own_addrs: Vec<SocketAddr>,
    own_dirty: bool,
    /// When our own entry may next get a new version.
    own_next: Instant,
    /// The topology or our sessions changed since discovery last looked.
    discovery_dirty: bool,
    /// News waiting to be relayed: entry and the session it came from.
    pending_news: BTreeMap<PeerName, (PeerEntry, Option<ConnId>)>,
    flush_at: Option<Instant>,
    next_tick: Instant,
    /// Next look for unreachable peers to forget (needs routes, so not every tick).
    next_gc: Instant,
    unreachable_since: HashMap<PeerName, Instant>,
    channels: BTreeMap<ChannelName, Box<dyn GossipChannel>>,
    transmits: VecDeque<Transmit>,
    actions: VecDeque<Action>,
    events: VecDeque<MeshEvent>,
    pub counters: MeshCounters,
}

impl Mesh {
    pub fn new(cfg: Config, now: Instant) -> Self {
        let own = PeerEntry {
            name: cfg.name,
            nickname: cfg.nickname.clone(),
            uid: cfg.uid,
            version: 1,
            addrs: vec![],
            conns: vec![],
        };
        let topology = Topology::with_limits(own, cfg.peer_gc_after, cfg.max_peers);
        let routes = Routes::compute(&topology);
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let first_tick = now + cfg.gossip_interval.mul_f64(rng.random_range(0.5..1.0));
        let next_gc = now + gc_period(&cfg);
        Mesh {
            connector: Connector::new(cfg.backoff_base, cfg.backoff_max),
            cfg,
            rng,
            topology,
            routes,
            routes_dirty: false,
            conns: HashMap::new(),
            by_peer: HashMap::new(),
            own_addrs: vec![],
            own_dirty: false,
            own_next: now,
            discovery_dirty: true,
            pending_news: BTreeMap::new(),
            flush_at: None,
            next_tick: first_tick,
            next_gc,
            unreachable_since: HashMap::new(),
            channels: BTreeMap::new(),
            transmits: VecDeque::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            counters: MeshCounters::default(),
        }
    }

    pub fn name(&self) -> PeerName {
        self.cfg.name
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Current routes (recomputed if the topology changed).
    pub fn routes(&mut self) -> &mut Routes {
        if self.routes_dirty {
            self.routes = Routes::compute(&self.topology);
            self.routes_dirty = false;
        }
        &mut self.routes
    }

    /// Every peer in the topology: name, reachable, nickname.
    pub fn peers_reachability(&mut self) -> Vec<(PeerName, bool, String)> {
        self.routes();
        let r = &self.routes;
        self.topology
            .entries()
            .map(|e| (e.name, r.is_reachable(e.name), e.nickname.clone()))
            .collect()
    }

    /// Established sessions: (session, peer).
    pub fn established(&self) -> impl Iterator<Item = (ConnId, PeerName)> + '_ {
        self.conns.iter().map(|(id, c)| (*id, c.peer))
    }

    /// The hello we send on a new session.
    pub fn hello(&self, your_addr: Option<SocketAddr>) -> Hello {
        Hello {
            versions: VersionRange {
                min: PROTOCOL_MIN,
                max: PROTOCOL_MAX,
            },
            name: self.cfg.name,
            nickname: self.cfg.nickname.clone(),
            uid: self.cfg.uid,
            listen_port: self.cfg.listen_port,
            features: Features::default(),
            your_addr,
            nonce: 0,
        }
    }

    pub fn register_channel(&mut self, name: ChannelName, channel: Box<dyn GossipChannel>) {
        self.channels.insert(name, channel);
    }

    pub fn channel_mut(
        &mut self,
        name: &ChannelName,
    ) -> Option<&mut (dyn GossipChannel + 'static)> {
        self.channels.get_mut(name).map(|b| b.as_mut())
    }

    // ---- operator inputs ----

    pub fn add_target(&mut self, addr: SocketAddr, now: Instant) {
        self.connector.add(addr, true, None, now);
    }

    /// An address worth trying (say, a peer from before a restart), dialed
    /// like a discovered one: within the connection limit, dropped once the
    /// limit is reached.
    pub fn add_hint(&mut self, addr: SocketAddr, now: Instant) {
        self.connector.hint(addr, now);
    }

    /// The dialable addresses of the peers we hold sessions with.
    pub fn session_addrs(&self) -> Vec<SocketAddr> {
        self.conns.values().map(|c| c.addr).collect()
    }

    /// Stops dialing `addr`; a session to it stays up (as `weave forget`).
    pub fn forget_target(&mut self, addr: SocketAddr) -> bool {
        self.connector.remove(&addr).is_some()
    }

    pub fn explicit_targets(&self) -> Vec<SocketAddr> {
        self.connector
            .targets
            .iter()
            .filter(|(_, t)| t.explicit)
            .map(|(a, _)| *a)
            .collect()
    }

    // ---- driver inputs ----

    pub fn dial_failed(&mut self, now: Instant, addr: SocketAddr, error: String) {
        self.connector.failed(addr, error, now, &mut self.rng);
    }

    /// A session finished its TLS handshake and hello exchange. `addr` is where
    /// the peer can be dialed: the address we dialed, or for inbound sessions
    /// its source IP with its `listen_port`.
    pub fn connection_up(
        &mut self,
        now: Instant,
        conn: ConnId,
        hello: &Hello,
        addr: SocketAddr,
        outbound: bool,
    ) -> Admit {
        let peer = hello.name;
        if peer == self.cfg.name {
            if outbound {
                self.connector.ourself(addr);
            }
            return self.reject(addr, peer, GoodbyeReason::SelfConnection);
        }
        if hello
            .versions
            .negotiate(VersionRange {
                min: PROTOCOL_MIN,
                max: PROTOCOL_MAX,
            })
            .is_none()
        {
            if outbound {
                self.connector.failed(
                    addr,
                    "no common protocol version".into(),
                    now,
                    &mut self.rng,
                );
            }
            return self.reject(addr, peer, GoodbyeReason::IncompatibleVersion);
        }
        if let Some(&old_id) = self.by_peer.get(&peer) {
            let old = &self.conns[&old_id];
            let lower = self.cfg.name.min(peer);
            let initiator = |outbound: bool| if outbound { self.cfg.name } else { peer };
            let (old_init, new_init) = (initiator(old.outbound), initiator(outbound));
            // A session from an earlier incarnation of the peer is dead.
            // Otherwise sessions started by the lower name win, and between
            // two started by the same side, the higher nonce (both ends see
            // the same nonces, whatever order the sessions came up in).
            let new_wins = if old.uid != hello.uid {
                true
            } else if old_init != new_init {
                new_init == lower
            } else {
                hello.nonce > old.nonce
            };
            if !new_wins {
                self.counters.rejected_duplicate += 1;
                if outbound {
                    self.connector.connected(addr, peer);
                }
                return self.reject(addr, peer, GoodbyeReason::Duplicate);
            }
            self.actions.push_back(Action::Close {
                conn: old_id,
                reason: GoodbyeReason::Duplicate,
                message: "replaced by a newer session".into(),
            });
            self.drop_conn(old_id);
        } else if !outbound && self.conns.len() >= self.cfg.conn_limit.saturating_mul(2) {
            // Tell the peer about some of our neighbours (with the addresses
            // they were reached at), so that it can dial someone else.
            self.counters.rejected_conn_limit += 1;
            let mut names: Vec<PeerName> = self.by_peer.keys().copied().collect();
            names.sort_unstable();
            names.shuffle(&mut self.rng);
            let mut entries = vec![self.topology.me().clone()];
            entries.extend(
                names
                    .iter()
                    .take(32)
                    .filter_map(|n| self.topology.get(n).cloned()),
            );
            for chunk in topology::chunk_entries(entries) {
                self.transmits.push_back(Transmit {
                    conn,
                    frame: Frame::Topology(TopologyMsg::Update { entries: chunk }),
                });
            }
            return self.reject(addr, peer, GoodbyeReason::ConnLimit);
        }
        if let Some(a) = hello.your_addr {
            self.learn_own_addr(a);
        }
        self.conns.insert(
            conn,
            Conn {
                peer,
                nickname: hello.nickname.clone(),
                addr,
                outbound,
                since: now,
                uid: hello.uid,
                nonce: hello.nonce,
                updates_at: None,
                digest_at: None,
            },
        );
        self.by_peer.insert(peer, conn);
        if outbound {
            self.connector.connected(addr, peer);
        }
        self.events.push_back(MeshEvent::Connected {
            peer,
            nickname: hello.nickname.clone(),
            addr,
            outbound,
        });
        // Bring each other up to date, and tell everyone about the new link.
        self.transmits.push_back(Transmit {
            conn,
            frame: Frame::Topology(TopologyMsg::Digest {
                entries: self.topology.digest(),
                reply: false,
            }),
        });
        let states: Vec<(ChannelName, Vec<u8>)> = self
            .channels
            .iter_mut()
            .filter_map(|(n, c)| c.full_state().map(|s| (n.clone(), s)))
            .collect();
        for (channel, payload) in states {
            self.transmits.push_back(Transmit {
                conn,
                frame: Frame::Gossip(GossipMsg {
                    channel,
                    verb: Verb::Gossip,
                    payload,
                }),
            });
        }
        self.mark_own_dirty(now);
        Admit::Accept
    }

    fn reject(&mut self, addr: SocketAddr, peer: PeerName, reason: GoodbyeReason) -> Admit {
        self.events
            .push_back(MeshEvent::Rejected { addr, peer, reason });
        Admit::Reject(reason)
    }

    fn learn_own_addr(&mut self, a: SocketAddr) {
        if a.ip().is_unspecified() || a.port() == 0 {
            return;
        }
        if self.own_addrs.first() == Some(&a) {
            return;
        }
        self.own_addrs.retain(|x| *x != a);
        self.own_addrs.insert(0, a);
        self.own_addrs.truncate(MAX_ADDRS_PER_PEER);
    }

    fn drop_conn(&mut self, conn: ConnId) -> Option<Conn> {
        let c = self.conns.remove(&conn)?;
        if self.by_peer.get(&c.peer) == Some(&conn) {
            self.by_peer.remove(&c.peer);
        }
        Some(c)
    }

    /// A session ended (either side closed it, it timed out, or we were told
    /// to close it). Unknown ids are ignored.
    pub fn connection_down(&mut self, now: Instant, conn: ConnId, reason: String) {
        let Some(c) = self.drop_conn(conn) else {
            return;
        };
        self.events.push_back(MeshEvent::Disconnected {
            peer: c.peer,
            nickname: c.nickname.clone(),
            reason: reason.clone(),
        });
        let lasted = now.saturating_duration_since(c.since);
        if self.connector.targets.contains_key(&c.addr) {
            self.connector
                .disconnected(c.addr, lasted, reason, now, &mut self.rng);
        } else if self.cfg.discovery {
            // Try to get it back, as a discovered target.
            self.connector
                .add(c.addr, false, Some(c.peer), now + self.cfg.backoff_base);
        }
        self.mark_own_dirty(now);
    }

    fn mark_own_dirty(&mut self, now: Instant) {
        self.own_dirty = true;
        self.discovery_dirty = true;
        let at = (now + self.cfg.flush_interval).max(self.own_next);
        self.flush_at = Some(self.flush_at.map_or(at, |f| f.min(at)));
    }

    fn schedule_flush(&mut self, now: Instant) {
        if self.flush_at.is_none() {
            self.flush_at = Some(now + self.cfg.flush_interval);
        }
    }

    /// A frame arrived on an established session.
    pub fn handle_frame(
        &mut self,
        now: Instant,
        conn: ConnId,
        frame: Frame,
    ) -> Result<(), ProtocolError> {
        let Some(from) = self.conns.get(&conn).map(|c| c.peer) else {
            return Ok(());
        };
        match frame {
            Frame::Hello(_) => return Err(ProtocolError::UnexpectedHello),
            // The driver closes the session on a goodbye, and hands data
            // offers to the data plane before they get here.
            Frame::Goodbye(_) | Frame::DataOffer(_) => {}
            Frame::Topology(TopologyMsg::Summary { hash, .. }) => {
                if hash != self.topology.hash() && self.may_answer(now, conn, false) {
                    let entries = self.topology.digest();
                    self.transmits.push_back(Transmit {
                        conn,
                        frame: Frame::Topology(TopologyMsg::Digest {
                            entries,
                            reply: true,
                        }),
                    });
                }
            }
            Frame::Topology(TopologyMsg::Digest { entries, reply }) => {
                if !self.may_answer(now, conn, true) {
                    return Ok(());
                }
                for chunk in self.topology.newer_than(&entries) {
                    self.transmits.push_back(Transmit {
                        conn,
                        frame: Frame::Topology(TopologyMsg::Update { entries: chunk }),
                    });
                }
                if reply && self.topology.lacks_any(&entries) {
                    let entries = self.topology.digest();
                    self.transmits.push_back(Transmit {
                        conn,
                        frame: Frame::Topology(TopologyMsg::Digest {
                            entries,
                            reply: false,
                        }),
                    });
                }
            }
            Frame::Topology(TopologyMsg::Update { entries }) => {
                self.merge_topology(now, conn, entries)
            }
            Frame::Gossip(msg) => self.handle_gossip(conn, from, msg),
        }
        Ok(())
    }

    /// At most one answer of each kind per session per half gossip interval:
    /// answering costs us far more than asking costs the peer.
    fn may_answer(&mut self, now: Instant, conn: ConnId, updates: bool) -> bool {
        let min_gap = self.cfg.gossip_interval / 2;
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        let at = if updates {
            &mut c.updates_at
        } else {
            &mut c.digest_at
        };
        if at.is_some_and(|t| now.saturating_duration_since(t) < min_gap) {
            self.counters.throttled += 1;
            return false;
        }
        *at = Some(now);
        true
    }

    fn merge_topology(&mut self, now: Instant, conn: ConnId, entries: Vec<PeerEntry>) {
        let out = self.topology.merge(entries, now);
        self.counters.peers_refused += out.refused as u64;
        if out.news.is_empty() && !out.own_bumped {
            return;
        }
        self.routes_dirty = true;
        self.discovery_dirty = true;
        self.counters.topology_news += out.news.len() as u64;
        for e in out.news {
            self.pending_news.insert(e.name, (e, Some(conn)));
        }
        if out.own_bumped {
            let me = self.topology.me().clone();
            self.pending_news.insert(me.name, (me, None));
        }
        self.schedule_flush(now);
    }

    fn handle_gossip(&mut self, conn: ConnId, from: PeerName, msg: GossipMsg) {
        match msg.verb {
            Verb::Unicast { src, dst } => {
                if dst == self.cfg.name {
                    self.deliver(&msg.channel, src, |c| {
                        c.on_unicast(src, &msg.payload).map(|_| None)
                    });
                } else if let Some(hop) = self.routes().next_hop(dst) {
                    self.send_to_peer(hop, Frame::Gossip(msg));
                } else {
                    self.counters.unroutable += 1;
                }
            }
            Verb::Broadcast { src } if self.topology.get(&src).is_none() => {
                // Trees are per source: an unknown one would only grow our cache.
                self.counters.unknown_source += 1;
            }
            Verb::Broadcast { src } => {
                self.deliver(&msg.channel, src, |c| {
                    c.on_broadcast(src, &msg.payload).map(|_| None)
                });
                for child in self.routes().broadcast_children(src) {
                    if child != from {
                        self.send_to_peer(child, Frame::Gossip(msg.clone()));
                    }
                }
            }
            Verb::Gossip => {
                let news = self.deliver(&msg.channel, from, |c| c.on_gossip(&msg.payload));
                if let Some(delta) = news {
                    let out = GossipMsg {
                        channel: msg.channel,
                        verb: Verb::Gossip,
                        payload: delta,
                    };
                    self.relay(Frame::Gossip(out), Some(conn));
                }
            }
        }
    }

    fn deliver(
        &mut self,
        channel: &ChannelName,
        src: PeerName,
        f: impl FnOnce(&mut dyn GossipChannel) -> Result<Option<Vec<u8>>, ChannelError>,
    ) -> Option<Vec<u8>> {
        let Some(c) = self.channels.get_mut(channel) else {
            self.counters.unknown_channel += 1;
            return None;
        };
        match f(c.as_mut()) {
            Ok(news) => news,
            Err(e) => {
                self.counters.channel_errors += 1;
                self.events.push_back(MeshEvent::ChannelError {
                    channel: channel.as_str().to_owned(),
                    src,
                    error: e.to_string(),
                });
                None
            }
        }
    }

    fn send_to_peer(&mut self, peer: PeerName, frame: Frame) {
        if let Some(&conn) = self.by_peer.get(&peer) {
            self.transmits.push_back(Transmit { conn, frame });
        }
    }

    /// Sends `frame` to `fanout` random neighbours other than `except`.
    fn relay(&mut self, frame: Frame, except: Option<ConnId>) {
        let mut ids: Vec<ConnId> = self
            .conns
            .keys()
            .copied()
            .filter(|c| Some(*c) != except)
            .collect();
        ids.sort_unstable();
        ids.shuffle(&mut self.rng);
        for conn in ids.into_iter().take(self.cfg.fanout) {
            self.transmits.push_back(Transmit {
                conn,
                frame: frame.clone(),
            });
        }
    }

    // ---- channel verbs ----

    /// Sends `payload` hop by hop to `dst`'s instance of `channel`.
    pub fn unicast(
        &mut self,
        channel: ChannelName,
        dst: PeerName,
        payload: Vec<u8>,
    ) -> Result<(), SendError> {
        let src = self.cfg.name;
        let msg = GossipMsg {
            channel,
            verb: Verb::Unicast { src, dst },
            payload,
        };
        if dst == src {
            let ch = msg.channel.clone();
            self.deliver(&ch, src, |c| c.on_unicast(src, &msg.payload).map(|_| None));
            return Ok(());
        }
        let hop = self
            .routes()
            .next_hop(dst)
            .ok_or(SendError::Unreachable(dst))?;
        self.send_to_peer(hop, Frame::Gossip(msg));
        Ok(())
    }

    /// Sends `payload` to every reachable peer's instance of `channel`.
    pub fn broadcast(&mut self, channel: ChannelName, payload: Vec<u8>) {
        let src = self.cfg.name;
        let msg = GossipMsg {
            channel,
            verb: Verb::Broadcast { src },
            payload,
        };
        for child in self.routes().broadcast_children(src) {
            self.send_to_peer(child, Frame::Gossip(msg.clone()));
        }
    }

    /// Gossips `payload` (news of ours) to a few neighbours.
    pub fn gossip(&mut self, channel: ChannelName, payload: Vec<u8>) {
        self.relay(
            Frame::Gossip(GossipMsg {
                channel,
                verb: Verb::Gossip,
                payload,
            }),
            None,
        );
    }

    // ---- time ----

    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.next_tick;
        if let Some(f) = self.flush_at {
            t = t.min(f);
        }
        if let Some(d) = self.connector.next_due() {
            t = t.min(d);
        }
        Some(t)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.flush_at.is_some_and(|f| f <= now) {
            self.flush_at = None;
            self.flush(now);
        }
        if self.next_tick <= now {
            self.next_tick = now
                + self
                    .cfg
                    .gossip_interval
                    .mul_f64(self.rng.random_range(0.75..1.25));
            self.tick(now);
        }
        self.make_connections(now);
    }

    fn flush(&mut self, now: Instant) {
        if self.own_dirty && now < self.own_next {
            self.flush_at = Some(self.own_next);
        } else if std::mem::take(&mut self.own_dirty) {
            self.own_next = now + self.cfg.own_interval;
            let conns: Vec<PeerName> = self.conns.values().map(|c| c.peer).collect();
            let addrs = self.own_addrs.clone();
            if self.topology.set_own(conns, &addrs) {
                self.routes_dirty = true;
                // Our own news goes to every neighbour: they need it to route to us.
                let me = self.topology.me().clone();
                let ids: Vec<ConnId> = self.conns.keys().copied().collect();
                for conn in ids {
                    self.transmits.push_back(Transmit {
                        conn,
                        frame: Frame::Topology(TopologyMsg::Update {
                            entries: vec![me.clone()],
                        }),
                    });
                }
                self.pending_news.remove(&me.name);
            }
        }
        if self.pending_news.is_empty() {
            return;
        }
        let news = std::mem::take(&mut self.pending_news);
        let mut ids: Vec<ConnId> = self.conns.keys().copied().collect();
        ids.sort_unstable();
        ids.shuffle(&mut self.rng);
        for conn in ids.into_iter().take(self.cfg.fanout) {
            let entries: Vec<PeerEntry> = news
                .values()
                .filter(|(_, src)| *src != Some(conn))
                .map(|(e, _)| e.clone())
                .collect();
            for chunk in topology::chunk_entries(entries) {
                self.transmits.push_back(Transmit {
                    conn,
                    frame: Frame::Topology(TopologyMsg::Update { entries: chunk }),
                });
            }
        }
    }

    fn tick(&mut self, now: Instant) {
        // Anti-entropy with one random neighbour.
        let mut ids: Vec<ConnId> = self.conns.keys().copied().collect();
        ids.sort_unstable();
        if let Some(&conn) = ids.choose(&mut self.rng) {
            let (hash, peers) = (self.topology.hash(), self.topology.len() as u32);
            self.transmits.push_back(Transmit {
                conn,
                frame: Frame::Topology(TopologyMsg::Summary { hash, peers }),
            });
            let states: Vec<(ChannelName, Vec<u8>)> = self
                .channels
                .iter_mut()
                .filter_map(|(n, c)| c.full_state().map(|s| (n.clone(), s)))
                .collect();
            for (channel, payload) in states {
                self.transmits.push_back(Transmit {
                    conn,
                    frame: Frame::Gossip(GossipMsg {
                        channel,
                        verb: Verb::Gossip,
                        payload,
                    }),
                });
            }
        }
        if now >= self.next_gc {
            self.next_gc = now + gc_period(&self.cfg);
            self.collect_garbage(now);
        }
    }

    /// Forgets peers that stayed unreachable for `peer_gc_after`.
    fn collect_garbage(&mut self, now: Instant) {
        let gc_after = self.cfg.peer_gc_after;
        let names: Vec<PeerName> = self.topology.entries().map(|e| e.name).collect();
        let routes = self.routes();
        let unreachable: std::collections::HashSet<PeerName> = names
            .into_iter()
            .filter(|n| !routes.is_reachable(*n))
            .collect();
        self.unreachable_since
            .retain(|n, _| unreachable.contains(n));
        let mut removed = false;
        for n in unreachable {
            let since = *self.unreachable_since.entry(n).or_insert(now);
            if now.saturating_duration_since(since) >= gc_after {
                let nickname = self
                    .topology
                    .get(&n)
                    .map(|e| e.nickname.clone())
                    .unwrap_or_default();
                // Remember where it was: after a long partition these may be
                // the only addresses left to heal through.
                let addrs = self
                    .topology
                    .get(&n)
                    .map(|e| e.addrs.clone())
                    .unwrap_or_default();
                if self.cfg.discovery && self.connector.targets.len() < 4 * self.cfg.conn_limit {
                    for a in addrs {
                        self.connector.hint(a, now + self.cfg.backoff_base);
                    }
                }
                self.topology.remove(n, now);
                self.unreachable_since.remove(&n);
                self.events
                    .push_back(MeshEvent::PeerRemoved { peer: n, nickname });
                removed = true;
            }
        }
        if removed {
            self.routes_dirty = true;
        }
    }

    fn make_connections(&mut self, now: Instant) {
        // A target marked connected whose peer has no session any more (the
        // session came from another address, or was replaced) is due again.
        for t in self.connector.targets.values_mut() {
            if let TargetState::Connected { peer } = t.state
                && !self.by_peer.contains_key(&peer)
            {
                t.state = TargetState::Idle;
                t.next_try = t.next_try.max(now);
            }
        }
        if self.cfg.discovery {
            let connecting = self
                .connector
                .targets
                .values()
                .filter(|t| matches!(t.state, TargetState::Connecting { .. }))
                .count();
            // Discovery only runs while we want more sessions; at the limit the
            // discovered targets are dropped and derived again when needed.
            let need = self.conns.len() + connecting < self.cfg.conn_limit;
            if need && std::mem::take(&mut self.discovery_dirty) {
                // Every address others reached a peer at that we are not connected to.
                let mut found: Vec<(SocketAddr, PeerName)> = Vec::new();
                for e in self.topology.entries() {
                    if e.name != self.cfg.name && !self.by_peer.contains_key(&e.name) {
                        found.extend(e.addrs.iter().map(|a| (*a, e.name)));
                    }
                }
                for (addr, peer) in found {
                    self.connector.add(addr, false, Some(peer), now);
                }
            }
            let by_peer = &self.by_peer;
            let topology = &self.topology;
            self.connector.targets.retain(|_, t| {
                t.explicit
                    || matches!(t.state, TargetState::Connecting { .. })
                    || (need
                        && t.peer.is_none_or(|p| {
                            topology.get(&p).is_some() && !by_peer.contains_key(&p)
                        }))
            });
        }
        let mut in_flight: Vec<Option<PeerName>> = self
            .connector
            .targets
            .values()
            .filter(|t| matches!(t.state, TargetState::Connecting { .. }))
            .map(|t| t.peer)
            .collect();
        let connected_addrs: Vec<SocketAddr> = self.conns.values().map(|c| c.addr).collect();
        let mut due: Vec<(bool, SocketAddr, Option<PeerName>)> = self
            .connector
            .targets
            .iter()
            .filter(|(_, t)| t.state == TargetState::Idle && t.next_try <= now)
            .map(|(a, t)| (t.explicit, *a, t.peer))
            .collect();
        due.shuffle(&mut self.rng);
        due.sort_by_key(|(explicit, _, _)| !explicit);
        for (explicit, addr, peer) in due {
            if in_flight.len() >= self.cfg.max_concurrent_dials {
                self.connector.postpone(addr, now + self.cfg.backoff_base);
                continue;
            }
            let have_peer = peer.is_some_and(|p| self.by_peer.contains_key(&p));
            if have_peer || connected_addrs.contains(&addr) {
                if let Some(p) =
                    peer.or_else(|| self.conns.values().find(|c| c.addr == addr).map(|c| c.peer))
                {
                    self.connector.connected(addr, p);
                }
                continue;
            }
            let over_limit = self.conns.len() + in_flight.len() >= self.cfg.conn_limit;
            if !explicit && (over_limit || (peer.is_some() && in_flight.contains(&peer))) {
                // Not now; look again later rather than at every wake-up.
                self.connector
                    .postpone(addr, now + self.cfg.gossip_interval);
                continue;
            }
            self.connector.dialing(addr, now);
            in_flight.push(peer);
            self.actions.push_back(Action::Dial(addr));
        }
    }

    // ---- outputs ----

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<MeshEvent> {
        self.events.pop_front()
    }

    // ---- status ----

    pub fn status(&mut self, now: Instant) -> MeshStatus {
        let nick =
            |t: &Topology, n: &PeerName| t.get(n).map(|e| e.nickname.clone()).unwrap_or_default();
        self.routes();
        let topology = &self.topology;
        let routes = &self.routes;
        let me = self.cfg.name;
        let peers = topology
            .entries()
            .map(|e| PeerStatus {
                name: e.name,
                nickname: e.nickname.clone(),
                uid: e.uid,
                version: e.version,
                is_self: e.name == me,
                reachable: routes.is_reachable(e.name),
                hops: if e.name == me {
                    Some(0)
                } else {
                    routes.hops(e.name)
                },
                connections: e
                    .conns
                    .iter()
                    .map(|c| PeerRef {
                        name: *c,
                        nickname: nick(topology, c),
                    })
                    .collect(),
                addrs: e.addrs.clone(),
            })
            .collect();
        let mut connections: Vec<ConnectionStatus> = self
            .conns
            .values()
            .map(|c| ConnectionStatus {
                addr: c.addr,
                direction: if c.outbound {
                    Direction::Outbound
                } else {
                    Direction::Inbound
                },
                state: ConnectionState::Established,
                peer: Some(c.peer),
                nickname: Some(c.nickname.clone()),
                age_secs: now.saturating_duration_since(c.since).as_secs(),
                retry_in_secs: None,
                last_error: None,
            })
            .collect();
        for (addr, t) in &self.connector.targets {
            let (state, age, retry) = match t.state {
                TargetState::Connecting { since } => (
                    ConnectionState::Connecting,
                    now.saturating_duration_since(since).as_secs(),
                    None,
                ),
                TargetState::Idle => (
                    ConnectionState::Retrying,
                    0,
                    Some(t.next_try.saturating_duration_since(now).as_secs()),
                ),
                TargetState::Connected { .. } | TargetState::Ourself => continue,
            };
            if t.peer.is_some_and(|p| self.by_peer.contains_key(&p)) {
                continue;
            }
            connections.push(ConnectionStatus {
                addr: *addr,
                direction: Direction::Outbound,
                state,
                peer: t.peer,
                nickname: t.peer.map(|p| nick(topology, &p)),
                age_secs: age,
                retry_in_secs: retry,
                last_error: t.last_error.clone(),
            });
        }
        connections.sort_by_key(|c| (c.state.as_str(), c.addr));
        let targets = self
            .connector
            .targets
            .iter()
            .filter(|(_, t)| t.explicit)
            .map(|(addr, t)| TargetStatus {
                addr: *addr,
                state: match t.state {
                    TargetState::Idle => weft_api::TargetState::Retrying,
                    TargetState::Connecting { .. } => weft_api::TargetState::Connecting,
                    TargetState::Connected { .. } => weft_api::TargetState::Connected,
                    TargetState::Ourself => weft_api::TargetState::Ourself,
                },
                peer: t.peer,
                last_error: t.last_error.clone(),
            })
            .collect();
        let routes = routes
            .table()
            .into_iter()
            .map(|(dst, via, hops)| RouteStatus {
                dst,
                dst_nickname: nick(topology, &dst),
                via,
                via_nickname: nick(topology, &via),
                hops,
            })
            .collect();
        MeshStatus {
            peers,
            connections,
            targets,
            routes,
            topology_hash: format!("{:016x}", topology.hash()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh(name: u64) -> Mesh {
        Mesh::new(
            Config::new(PeerName(name), format!("n{name}"), name, name),
            Instant::now(),
        )
    }

    fn closed(m: &mut Mesh) -> Vec<ConnId> {
        std::iter::from_fn(|| m.poll_action())
            .filter_map(|a| match a {
                Action::Close { conn, .. } => Some(conn),
                Action::Dial(_) => None,
            })
            .collect()
    }

    /// A (lower name) and B dial each other at once: session X is A->B, Y is
    /// B->A. Whatever order each side learns of them, both keep X.
    #[test]
    fn simultaneous_dials_resolve_to_the_same_session_on_both_ends() {
        let addr_a: SocketAddr = "192.0.2.1:6783".parse().expect("addr");
        let addr_b: SocketAddr = "192.0.2.2:6783".parse().expect("addr");
        for a_first in [true, false] {
            for b_first in [true, false] {
                let now = Instant::now();
                let (mut a, mut b) = (mesh(1), mesh(2));
                let (ha, hb) = (a.hello(None), b.hello(None));
                // At A: X is outbound (id 10), Y inbound (id 11).
                let a_order = if a_first {
                    [(10, true), (11, false)]
                } else {
                    [(11, false), (10, true)]
                };
                let mut a_kept = Vec::new();
                for (id, out) in a_order {
                    if a.connection_up(now, id, &hb, addr_b, out) == Admit::Accept {
                        a_kept.push(id);
                    }
                }
                let a_closed = closed(&mut a);
                a_kept.retain(|id| !a_closed.contains(id));
                // At B: X is inbound (id 20), Y outbound (id 21).
                let b_order = if b_first {
                    [(20, false), (21, true)]
                } else {
                    [(21, true), (20, false)]
                };
                let mut b_kept = Vec::new();
                for (id, out) in b_order {
                    if b.connection_up(now, id, &ha, addr_a, out) == Admit::Accept {
                        b_kept.push(id);
                    }
                }
                let b_closed = closed(&mut b);
                b_kept.retain(|id| !b_closed.contains(id));
                assert_eq!(a_kept, vec![10], "A keeps X ({a_first}, {b_first})");
                assert_eq!(b_kept, vec![20], "B keeps X ({a_first}, {b_first})");
            }
        }
    }

    /// Two sessions dialed by the same side (B reached A at two addresses):
    /// both ends keep the one with the higher nonce, in any arrival order.
    #[test]
    fn same_side_duplicates_are_resolved_by_nonce_alike() {
        let addr: SocketAddr = "192.0.2.2:6783".parse().expect("addr");
        for first in [0usize, 1] {
            let now = Instant::now();
            let (mut a, b) = (mesh(1), mesh(2));
            let mut hb = b.hello(None);
            let nonces = [7u64, 99];
            let order = if first == 0 { [0, 1] } else { [1, 0] };
            let mut kept = Vec::new();
            for i in order {
                hb.nonce = nonces[i];
                if a.connection_up(now, i as u64, &hb, addr, false) == Admit::Accept {
                    kept.push(i as u64);
                }
            }
            let gone = closed(&mut a);
            kept.retain(|id| !gone.contains(id));
            assert_eq!(kept, vec![1], "arrival order {order:?}");
        }
    }

    #[test]
    fn connecting_to_ourselves_is_refused_and_not_retried() {
        let now = Instant::now();
        let mut a = mesh(1);
        let addr: SocketAddr = "192.0.2.1:6783".parse().expect("addr");
        a.add_target(addr, now);
        a.handle_timeout(now);
        assert_eq!(a.poll_action(), Some(Action::Dial(addr)));
        let me = a.hello(None);
        assert_eq!(
            a.connection_up(now, 1, &me, addr, true),
            Admit::Reject(GoodbyeReason::SelfConnection)
        );
        a.handle_timeout(now + Duration::from_secs(3600));
        assert!(std::iter::from_fn(|| a.poll_action()).all(|x| x != Action::Dial(addr)));
    }

    #[test]
    fn incompatible_versions_are_refused() {
        let now = Instant::now();
        let mut a = mesh(1);
        let mut h = mesh(2).hello(None);
        h.versions = VersionRange {
            min: PROTOCOL_MAX + 1,
            max: PROTOCOL_MAX + 3,
        };
        let addr: SocketAddr = "192.0.2.2:6783".parse().expect("addr");
        assert_eq!(
            a.connection_up(now, 1, &h, addr, false),
            Admit::Reject(GoodbyeReason::IncompatibleVersion)
        );
        assert_eq!(a.established().count(), 0);
    }
}
