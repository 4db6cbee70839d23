//! The topology CRDT: one entry per peer, written only by that peer.
//!
//! Merge keeps, per name, the entry with the highest `(version, uid)`; it is
//! commutative, associative and idempotent. Two additions keep it honest
//! across restarts and departures:
//! - an entry about ourselves that beats ours (a previous incarnation's) makes
//!   us bump our version past it, so our current entry wins everywhere;
//! - entries removed by garbage collection leave a tombstone, so that a stale
//!   copy gossiped back by a slower peer does not resurrect them. A new
//!   incarnation (different uid) or a newer version passes the tombstone.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use weft_peer_proto::PeerName;
use weft_peer_proto::limits::{MAX_ADDRS_PER_PEER, MAX_ENTRIES_PER_UPDATE};
use weft_peer_proto::topology::{DigestEntry, PeerEntry};

/// Bytes of payload per update frame we aim for: well under the 4 MiB frame
/// limit whatever the entries hold.
const UPDATE_BUDGET: usize = 512 * 1024;

/// Upper bound of one entry's encoded size (varints at their widest).
pub fn entry_size(e: &PeerEntry) -> usize {
    32 + e.nickname.len() + 10 * e.conns.len() + 24 * e.addrs.len()
}

/// Splits entries into update-sized chunks (by count and by bytes).
pub fn chunk_entries(entries: Vec<PeerEntry>) -> Vec<Vec<PeerEntry>> {
    let mut chunks = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 0;
    for e in entries {
        let n = entry_size(&e);
        if !cur.is_empty() && (cur.len() == MAX_ENTRIES_PER_UPDATE || bytes + n > UPDATE_BUDGET) {
            chunks.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += n;
        cur.push(e);
    }
    if !cur.is_empty() {
        chunks.push(cur);
    }
    chunks
}

#[derive(Debug, Clone)]
pub struct Topology {
    me: PeerName,
    peers: BTreeMap<PeerName, PeerEntry>,
    /// XOR of [`entry_hash`] over all entries: equal topologies hash equal,
    /// and it updates in O(1) per merged entry.
    hash: u64,
    tombstones: HashMap<PeerName, (DigestEntry, Instant)>,
    /// How long a tombstone outlives the entry it replaced.
    tombstone_ttl: Duration,
    /// Most entries kept; further new peers are refused (and counted), so a
    /// peer cannot grow our memory without bound.
    max_peers: usize,
}

/// What a merge changed.
#[derive(Debug, Default)]
pub struct MergeOutcome {
    /// Entries that replaced or added to ours (what to relay).
    pub news: Vec<PeerEntry>,
    /// An older incarnation of ourselves was seen; our version was bumped.
    pub own_bumped: bool,
    /// New peers refused because the topology is full.
    pub refused: usize,
}

fn mix(mut z: u64) -> u64 {
    // splitmix64 finaliser
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn entry_hash(d: &DigestEntry) -> u64 {
    mix(d.name.0 ^ mix(d.version ^ mix(d.uid.wrapping_add(0x9e37_79b9_7f4a_7c15))))
}

impl Topology {
    pub fn new(own: PeerEntry) -> Self {
        Self::with_limits(own, Duration::from_secs(60), 100_000)
    }

    pub fn with_limits(own: PeerEntry, tombstone_ttl: Duration, max_peers: usize) -> Self {
        let mut t = Topology {
            me: own.name,
            peers: BTreeMap::new(),
            hash: 0,
            tombstones: HashMap::new(),
            tombstone_ttl,
            max_peers: max_peers.max(1),
        };
        t.insert(own);
        t
    }

    fn insert(&mut self, e: PeerEntry) {
        self.hash ^= entry_hash(&e.digest());
        if let Some(old) = self.peers.insert(e.name, e) {
            self.hash ^= entry_hash(&old.digest());
        }
    }

    pub fn me(&self) -> &PeerEntry {
        // Our own entry is inserted at construction and never removed.
        self.peers
            .get(&self.me)
            .unwrap_or_else(|| unreachable!("own entry is never removed"))
    }

    pub fn name(&self) -> PeerName {
        self.me
    }

    pub fn get(&self, name: &PeerName) -> Option<&PeerEntry> {
        self.peers.get(name)
    }

    pub fn entries(&self) -> impl Iterator<Item = &PeerEntry> {
        self.peers.values()
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// Replaces our own connections and addresses; bumps the version if
    /// anything changed. Returns whether it did.
    pub fn set_own(&mut self, mut conns: Vec<PeerName>, addrs: &[SocketAddr]) -> bool {
        conns.sort_unstable();
        conns.dedup();
        let addrs: Vec<SocketAddr> = addrs.iter().copied().take(MAX_ADDRS_PER_PEER).collect();
        let me = self.me();
        if me.conns == conns && me.addrs == addrs {
            return false;
        }
        let mut e = me.clone();
        e.conns = conns;
        e.addrs = addrs;
        // A version at the top of u64 cannot be outbid; stay there rather than wrap.
        e.version = e.version.saturating_add(1);
        self.insert(e);
        true
    }

    /// Every entry as `(name, uid, version)`.
    pub fn digest(&self) -> Vec<DigestEntry> {
        self.peers.values().map(PeerEntry::digest).collect()
    }

    /// Merges `entries` in. See the module docs for the rules.
    pub fn merge(&mut self, entries: Vec<PeerEntry>, now: Instant) -> MergeOutcome {
        let mut out = MergeOutcome::default();
        for mut e in entries {
            // Normalise what peers send, so that routes can binary-search.
            e.conns.sort_unstable();
            e.conns.dedup();
            e.addrs.truncate(MAX_ADDRS_PER_PEER);
            if e.name == self.me {
                let mine = self.me();
                if e.order_key() > mine.order_key() {
                    let mut bumped = mine.clone();
                    bumped.version = e.version.saturating_add(1);
                    self.insert(bumped);
                    out.own_bumped = true;
                }
                continue;
            }
            if let Some((t, _)) = self.tombstones.get(&e.name)
                && t.uid == e.uid
                && t.version >= e.version
            {
                continue;
            }
            let newer = match self.peers.get(&e.name) {
                None if self.peers.len() >= self.max_peers => {
                    out.refused += 1;
                    false
                }
                None => true,
                Some(old) => e.order_key() > old.order_key(),
            };
            if newer {
                self.tombstones.remove(&e.name);
                out.news.push(e.clone());
                self.insert(e);
            }
        }
        let ttl = self.tombstone_ttl;
        self.tombstones
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < ttl);
        out
    }

    /// Entries that the holder of `digest` lacks or holds in an older version,
    /// in chunks that fit one update frame.
    pub fn newer_than(&self, digest: &[DigestEntry]) -> Vec<Vec<PeerEntry>> {
        let theirs: HashMap<PeerName, (u64, u64)> =
            digest.iter().map(|d| (d.name, d.order_key())).collect();
        let newer: Vec<PeerEntry> = self
            .peers
            .values()
            .filter(|e| theirs.get(&e.name).is_none_or(|k| e.order_key() > *k))
            .cloned()
            .collect();
        chunk_entries(newer)
    }

    /// Whether `digest` names an entry we lack or hold in an older version.
    pub fn lacks_any(&self, digest: &[DigestEntry]) -> bool {
        digest.iter().any(|d| {
            if let Some((t, _)) = self.tombstones.get(&d.name)
                && t.uid == d.uid
                && t.version >= d.version
            {
                return false;
            }
            self.peers
                .get(&d.name)
                .is_none_or(|e| d.order_key() > e.order_key())
        })
    }

    /// Removes a peer's entry (never our own), leaving a tombstone.
    pub fn remove(&mut self, name: PeerName, now: Instant) {
        if name == self.me {
            return;
        }
        if let Some(old) = self.peers.remove(&name) {
            self.hash ^= entry_hash(&old.digest());
            self.tombstones.insert(name, (old.digest(), now));
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn entry(name: u64, uid: u64, version: u64, conns: &[u64]) -> PeerEntry {
        PeerEntry {
            name: PeerName(name),
            nickname: format!("n{name}"),
            uid,
            version,
            addrs: vec![],
            conns: conns.iter().map(|c| PeerName(*c)).collect(),
        }
    }

    fn random_entries(rng: &mut StdRng) -> Vec<PeerEntry> {
        (0..rng.random_range(0..12))
            .map(|_| {
                let name = rng.random_range(1..6);
                let uid = rng.random_range(0..2);
                let version = rng.random_range(0..5);
                // Content is a function of (name, uid, version): one writer per entry.
                entry(name, uid, version, &[(name + uid + version) % 6])
            })
            .collect()
    }

    fn state(t: &Topology) -> Vec<PeerEntry> {
        t.entries().cloned().collect()
    }

    /// Merge laws, seeded: commutative, associative, idempotent; the hash is a
    /// function of the state.
    #[test]
    fn merge_laws() {
        for seed in 0..500u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let now = Instant::now();
            let me = entry(100, 0, 1, &[]);
            let (a, b, c) = (
                random_entries(&mut rng),
                random_entries(&mut rng),
                random_entries(&mut rng),
            );
            let apply = |parts: &[&Vec<PeerEntry>]| {
                let mut t = Topology::new(me.clone());
                for p in parts {
                    t.merge((*p).clone(), now);
                }
                t
            };
            // States are topologies; join(s, t) merges all of t into s.
            let join = |s: &Topology, t: &Topology| {
                let mut r = s.clone();
                r.merge(state(t), now);
                r
            };
            let (x, y, z) = (apply(&[&a]), apply(&[&b]), apply(&[&c]));
            let xy = join(&x, &y);
            assert_eq!(state(&xy), state(&join(&y, &x)), "commutative, seed {seed}");
            assert_eq!(xy.hash(), join(&y, &x).hash(), "hash, seed {seed}");
            assert_eq!(
                state(&join(&xy, &z)),
                state(&join(&x, &join(&y, &z))),
                "associative, seed {seed}"
            );
            assert_eq!(state(&join(&x, &x)), state(&x), "idempotent, seed {seed}");
            let abc = apply(&[&a, &b, &c]);
            assert_eq!(
                state(&abc),
                state(&join(&xy, &z)),
                "ops = join of states, seed {seed}"
            );
            // Merging what newer_than offers makes the other side equal.
            let mut other = apply(&[&c]);
            for chunk in abc.newer_than(&other.digest()) {
                other.merge(chunk, now);
            }
            let mut back = abc.clone();
            for chunk in other.newer_than(&abc.digest()) {
                back.merge(chunk, now);
            }
            assert_eq!(state(&back), state(&other), "anti-entropy, seed {seed}");
            assert_eq!(
                back.hash(),
                other.hash(),
                "hash after anti-entropy, seed {seed}"
            );
        }
    }

    #[test]
    fn older_incarnation_of_self_bumps_version() {
        let now = Instant::now();
        let mut t = Topology::new(entry(1, 7, 1, &[]));
        let out = t.merge(vec![entry(1, 3, 40, &[2])], now);
        assert!(out.own_bumped && out.news.is_empty());
        assert_eq!(t.me().version, 41);
        assert_eq!(t.me().uid, 7);
    }

    #[test]
    fn versions_at_the_top_of_u64_do_not_overflow() {
        let now = Instant::now();
        let mut t = Topology::new(entry(1, 7, 1, &[]));
        t.merge(vec![entry(1, 3, u64::MAX, &[2])], now);
        assert_eq!(t.me().version, u64::MAX);
        assert!(t.set_own(vec![PeerName(5)], &[]));
        assert_eq!(t.me().version, u64::MAX);
        t.merge(vec![entry(2, 1, u64::MAX, &[])], now);
        assert!(t.merge(vec![entry(2, 2, u64::MAX, &[])], now).news.len() == 1);
    }

    #[test]
    fn the_topology_holds_at_most_max_peers() {
        let now = Instant::now();
        let mut t = Topology::with_limits(entry(1, 0, 1, &[]), Duration::from_secs(60), 10);
        let out = t.merge((2..100).map(|n| entry(n, 0, 1, &[])).collect(), now);
        assert_eq!(t.len(), 10);
        assert_eq!(out.refused, 89);
        // Known peers still update.
        assert_eq!(t.merge(vec![entry(2, 0, 2, &[])], now).news.len(), 1);
    }

    #[test]
    fn updates_are_split_to_fit_frames() {
        let big: Vec<PeerEntry> = (0..300)
            .map(|n| entry(n, 0, 1, &(0..2000).collect::<Vec<u64>>()))
            .collect();
        for chunk in chunk_entries(big) {
            let f =
                weft_peer_proto::Frame::Topology(weft_peer_proto::topology::TopologyMsg::Update {
                    entries: chunk,
                });
            let n = weft_peer_proto::codec::encode_frame(&f)
                .expect("fits in a frame")
                .len();
            assert!(n <= weft_peer_proto::limits::MAX_FRAME_LEN / 4, "{n}");
        }
    }

    #[test]
    fn tombstone_blocks_stale_copy_but_not_news() {
        let now = Instant::now();
        let mut t = Topology::new(entry(1, 0, 1, &[]));
        t.merge(vec![entry(2, 5, 3, &[])], now);
        t.remove(PeerName(2), now);
        assert!(t.merge(vec![entry(2, 5, 3, &[])], now).news.is_empty());
        assert!(!t.lacks_any(&[entry(2, 5, 3, &[]).digest()]));
        assert_eq!(t.merge(vec![entry(2, 5, 4, &[])], now).news.len(), 1);
        t.remove(PeerName(2), now);
        assert_eq!(
            t.merge(vec![entry(2, 6, 1, &[])], now).news.len(),
            1,
            "new incarnation"
        );
    }
}
