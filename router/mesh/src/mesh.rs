//! The [`Mesh`] itself: one router's sessions, topology, routes and dial
//! targets, with the inputs of time and the queues its driver drains. The
//! other modules each add one concern to it: [`crate::admission`],
//! [`crate::anti_entropy`], [`crate::gossip`], [`crate::dial`],
//! [`crate::snapshot`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use weft_peer_proto::PeerName;
use weft_peer_proto::topology::PeerEntry;

use weft_peer_proto::limits::MAX_HOPS;
use weft_peer_proto::sign::Signer as _;

use crate::channel::Channels;
use crate::config::{Config, gc_period};
use crate::connector::Connector;
use crate::duplicates::{DuplicateReport, Duplicates};
use crate::gossip::Seen;
use crate::outbox::{Action, MeshEvent, Outbox, SessionId, Transmit};
use crate::routes::Routes;
use crate::topology::Topology;

/// What the core counts, for the driver to export: news that was merged,
/// and what was refused, dropped or throttled. (Sessions refused are
/// [`crate::Admit::Reject`]s, which the driver counts by reason.)
#[derive(Debug, Clone, Default)]
pub struct MeshCounters {
    /// Topology entries that were news.
    pub topology_news: u64,
    /// Unicasts with no route to their destination (dropped).
    pub unroutable: u64,
    /// Gossip on a channel this router does not run (dropped).
    pub unknown_channel: u64,
    /// Channel messages the channel refused.
    pub channel_errors: u64,
    /// New peers refused because the topology is full.
    pub peers_refused: u64,
    /// Broadcasts from sources not in our topology (dropped).
    pub unknown_source: u64,
    /// Anti-entropy requests answered too often by one session (skipped).
    pub throttled: u64,
    /// Statements dropped because they were forged (never delivered, merged
    /// or relayed; the session that carried them stays up).
    pub forged: Forged,
    /// Routers that signed two different topology entries with the same
    /// `(version, uid)`.
    pub equivocations: u64,
    /// Topology entries evicted to make room for nearer newcomers.
    pub evicted: u64,
    /// Channel messages not relayed further: their hop limit ran out.
    pub hop_limit: u64,
    /// Channel messages seen before (by source and sequence), dropped.
    pub duplicates: u64,
    /// Reports of two routers running with one identity (at most one per
    /// name per [`crate::duplicates::REPORT_INTERVAL`]).
    pub duplicate_identities: u64,
}

/// Forged statements, by kind.
#[derive(Debug, Clone, Default)]
pub struct Forged {
    /// Topology entries with a bad signature, or signed by another key
    /// than the one their name is the hash of.
    pub topology_signature: u64,
    /// Topology entries with a version beyond the limit, or connections
    /// not in normal form.
    pub topology_form: u64,
    /// Channel messages whose source did not sign them.
    pub channel_signature: u64,
    /// Gossip whose signer was not the neighbour that sent it.
    pub channel_source: u64,
}

impl Forged {
    /// Each kind with its metric label.
    pub fn by_kind(&self) -> [(&'static str, u64); 4] {
        [
            ("topology_signature", self.topology_signature),
            ("topology_form", self.topology_form),
            ("channel_signature", self.channel_signature),
            ("channel_source", self.channel_source),
        ]
    }
}

/// The router at the other end of one established session, as the core
/// sees it.
#[derive(Debug, Clone)]
pub(crate) struct Neighbour {
    pub(crate) peer: PeerName,
    pub(crate) nickname: String,
    /// An address the peer can be dialed at.
    pub(crate) addr: SocketAddr,
    pub(crate) outbound: bool,
    pub(crate) since: Instant,
    /// The peer's incarnation, and the dialer's random nonce for this session.
    pub(crate) uid: u64,
    pub(crate) nonce: u64,
    /// When we last answered a digest with updates, and a summary with a digest.
    pub(crate) updates_at: Option<Instant>,
    pub(crate) digest_at: Option<Instant>,
}

/// One router's gossip and topology core, with the channels `C` that ride
/// on it. See the crate documentation for the call order.
pub struct Mesh<C> {
    pub(crate) cfg: Config,
    pub(crate) rng: StdRng,
    pub(crate) topology: Topology,
    pub(crate) routes: Routes,
    pub(crate) routes_dirty: bool,
    pub(crate) sessions: HashMap<SessionId, Neighbour>,
    pub(crate) by_peer: HashMap<PeerName, SessionId>,
    pub(crate) connector: Connector,
    pub(crate) own_addrs: Vec<SocketAddr>,
    pub(crate) own_dirty: bool,
    /// When our own entry may next get a new version.
    pub(crate) own_next: Instant,
    /// The topology or our sessions changed since discovery last looked.
    pub(crate) discovery_dirty: bool,
    /// News waiting to be relayed: entry and the session it came from.
    pub(crate) pending_news: BTreeMap<PeerName, (PeerEntry, Option<SessionId>)>,
    pub(crate) flush_at: Option<Instant>,
    pub(crate) next_tick: Instant,
    /// Next look for unreachable peers to forget (needs routes, so not every tick).
    pub(crate) next_gc: Instant,
    pub(crate) unreachable_since: HashMap<PeerName, Instant>,
    /// The latest `now` an input brought (for a channel's unicasts to
    /// ourselves, delivered when the driver drains).
    pub(crate) now: Instant,
    pub(crate) channels: C,
    pub(crate) out: Outbox,
    /// Sequence number of the next channel message we originate.
    pub(crate) next_seq: u64,
    /// Channel messages seen, by (source, seq).
    pub(crate) seen: Seen,
    /// Uids seen taking turns under one name.
    pub(crate) dups: Duplicates,
    pub counters: MeshCounters,
}

impl<C: Channels> Mesh<C> {
    pub fn new(mut cfg: Config, channels: C, now: Instant) -> Self {
        cfg.name = cfg.signer.name();
        cfg.hop_limit = cfg.hop_limit.min(MAX_HOPS);
        let mut topology = Topology::with_limits(
            cfg.signer.clone(),
            cfg.nickname.clone(),
            cfg.uid,
            cfg.dh_public,
            cfg.peer_gc_after,
            cfg.max_peers,
            cfg.sig_cache.clone(),
        );
        topology.set_max_bytes(cfg.max_topology_bytes);
        let routes = Routes::compute(&topology);
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let next_seq = rng.random();
        let seen = Seen::new(cfg.dedup_window);
        let first_tick = now + cfg.gossip_interval.mul_f64(rng.random_range(0.5..1.0));
        let next_gc = now + gc_period(&cfg);
        let (cfg_name, cfg_uid) = (cfg.name, cfg.uid);
        Mesh {
            connector: Connector::new(cfg.backoff_base, cfg.backoff_max),
            cfg,
            rng,
            topology,
            routes,
            routes_dirty: false,
            sessions: HashMap::new(),
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
            now,
            channels,
            out: Outbox::default(),
            next_seq,
            seen,
            dups: Duplicates::new(cfg_name, cfg_uid),
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

    /// The channels riding on this mesh. What a channel queues on its
    /// [`GossipSender`](crate::GossipSender) leaves with the next
    /// [`Mesh::poll_transmit`].
    pub fn channels(&self) -> &C {
        &self.channels
    }

    pub fn channels_mut(&mut self) -> &mut C {
        &mut self.channels
    }

    /// Another router running with our identity, while it is reported
    /// ([`crate::duplicates`]): what the driver holds new addresses for.
    pub fn own_duplicate(&self, now: Instant) -> Option<crate::DuplicateView> {
        self.dups.active(now).into_iter().find(|d| d.own)
    }

    /// Current routes (recomputed if the topology changed).
    pub fn routes(&mut self) -> &mut Routes {
        if self.routes_dirty {
            self.routes = Routes::compute(&self.topology);
            self.routes_dirty = false;
        }
        &mut self.routes
    }

    /// Whether `peer` is reachable along established links.
    pub fn is_reachable(&mut self, peer: PeerName) -> bool {
        self.routes().is_reachable(peer)
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
    pub fn established(&self) -> impl Iterator<Item = (SessionId, PeerName)> + '_ {
        self.sessions.iter().map(|(id, c)| (*id, c.peer))
    }

    /// The dialable addresses of the peers we hold sessions with.
    pub fn session_addrs(&self) -> Vec<SocketAddr> {
        self.sessions.values().map(|c| c.addr).collect()
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
        self.now = now;
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

    // ---- outputs ----

    /// The next frame to send. Channels' queued messages join the queue
    /// here, so a driver that persists channel state before it drains
    /// sends nothing that is not on disk.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if self.out.transmits.is_empty() {
            self.drain_channels();
        }
        self.out.transmits.pop_front()
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.out.actions.pop_front()
    }

    /// Counts and queues a report of a duplicate identity.
    pub(crate) fn duplicate(&mut self, r: Option<DuplicateReport>) {
        let Some(r) = r else { return };
        self.counters.duplicate_identities += 1;
        let nickname = self
            .topology
            .get(&r.peer)
            .map(|e| e.nickname.clone())
            .unwrap_or_default();
        self.out.event(MeshEvent::DuplicateIdentity {
            peer: r.peer,
            nickname,
            uids: r.uids,
            own: r.own,
            returns: r.returns,
        });
    }

    pub fn poll_event(&mut self) -> Option<MeshEvent> {
        self.out.events.pop_front()
    }
}
