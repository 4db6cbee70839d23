//! How a router's mesh core behaves: its identity, limits, periods, fan-out,
//! and the seed of its randomness.

use std::sync::Arc;
use std::time::Duration;

use weft_peer_proto::PeerName;
use weft_peer_proto::limits::MAX_HOPS;
use weft_peer_proto::sign::{KeyPair, Signer as _};

use crate::verify::SigCache;

pub(crate) fn gc_period(cfg: &Config) -> Duration {
    (cfg.peer_gc_after / 4).max(cfg.gossip_interval)
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The router's identity key: it signs our topology entry and the
    /// source of our channel messages.
    pub signer: Arc<KeyPair>,
    /// Our peer name: the hash of `signer`'s public key (set by
    /// [`Config::new`]; [`crate::Mesh::new`] derives it again).
    pub name: PeerName,
    pub nickname: String,
    /// Random per process start.
    pub uid: u64,
    /// The public half of our origin key pair (drawn at each start; see
    /// `weft_peer_proto::origin`), published in our topology entry. All
    /// zeros ([`Config::new`]'s default): none, and relayed data packets to
    /// and from us are dropped.
    pub dh_public: [u8; 32],
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
    /// Most peers kept in the topology (a bound on memory whatever peers
    /// send). When full, the entry farthest from us (unreachable ones
    /// first) makes room for a nearer newcomer.
    pub max_peers: usize,
    /// Most bytes the topology's entries may take (as
    /// [`crate::topology::entry_size`] counts them): with `max_peers`, what
    /// bounds the topology's memory whatever peers send. A newcomer that
    /// would pass it makes room like one beyond `max_peers`.
    pub max_topology_bytes: usize,
    /// Relays a channel message we originate may make (at most
    /// [`MAX_HOPS`]).
    pub hop_limit: u8,
    /// Channel messages remembered by `(source, seq)`, to drop copies that
    /// loop back or arrive twice.
    pub dedup_window: usize,
    /// Signatures already checked. Cores in one process (a simulation) may
    /// share one: bytes checked once need not be checked again.
    pub sig_cache: Arc<SigCache>,
    pub seed: u64,
}

impl Config {
    pub fn new(signer: Arc<KeyPair>, nickname: String, uid: u64, seed: u64) -> Self {
        Config {
            name: signer.name(),
            signer,
            nickname,
            uid,
            dh_public: [0; 32],
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
            max_topology_bytes: 64 << 20,
            hop_limit: MAX_HOPS,
            dedup_window: 16_384,
            sig_cache: Arc::new(SigCache::new(65_536)),
            seed,
        }
    }
}
