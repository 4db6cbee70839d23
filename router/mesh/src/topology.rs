//! The topology CRDT: one entry per peer, written and signed only by that
//! peer.
//!
//! Merge keeps, per name, the entry with the highest `(version, uid)`, and
//! between two different entries with the same pair (an equivocation: only
//! the router itself can sign both) the one with the higher content hash;
//! it is commutative, associative and idempotent. An entry is checked
//! (its key hashes to its name, its signature holds, its version is at most
//! [`MAX_ENTRY_VERSION`]) only when it would change something; what fails
//! is dropped and counted, never merged. Three additions keep it honest
//! across restarts, departures and liars:
//! - an entry about ourselves that beats ours (a previous incarnation's:
//!   only our key signs one) makes us bump our version past it, so our
//!   current entry wins everywhere (by [`OWN_BUMP_MARGIN`], so that only a
//!   live clone beats it again: [`crate::duplicates`]); no accepted version
//!   is beyond reach;
//! - entries removed by garbage collection leave a tombstone, so that a stale
//!   copy gossiped back by a slower peer does not resurrect them. A new
//!   incarnation (different uid) or a newer version passes the tombstone;
//! - the topology holds at most `max_peers` entries. When it is full, a
//!   newcomer takes the place of the entry farthest from us (unreachable
//!   over links both ends confirm, first), if it is nearer itself: forged
//!   peers nobody real links to cannot lock a real newcomer out.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_peer_proto::PeerName;
use weft_peer_proto::limits::{MAX_ADDRS_PER_PEER, MAX_ENTRIES_PER_UPDATE, MAX_ENTRY_VERSION};
use weft_peer_proto::sign::KeyPair;
use weft_peer_proto::topology::{DigestEntry, EntryError, PeerEntry, hash_of_digest};

use crate::duplicates::OWN_BUMP_MARGIN;
use crate::verify::SigCache;

/// Bytes of payload per update frame we aim for: well under the 4 MiB frame
/// limit whatever the entries hold.
const UPDATE_BUDGET: usize = 512 * 1024;

/// The largest entry a peer may send, as [`entry_size`] counts it.
pub const MAX_ENTRY_SIZE: usize = 32
    + 128
    + weft_peer_proto::limits::MAX_NICKNAME_LEN
    + 10 * weft_peer_proto::limits::MAX_CONNS_PER_PEER
    + 24 * MAX_ADDRS_PER_PEER;

/// Upper bound of one entry's encoded size (varints at their widest; the
/// fixed part is the name, uid, version, origin key and signature).
pub fn entry_size(e: &PeerEntry) -> usize {
    32 + 128 + e.nickname.len() + 10 * e.conns.len() + 24 * e.addrs.len()
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

/// An entry with its content hash, computed once.
#[derive(Debug, Clone)]
struct Held {
    entry: PeerEntry,
    hash: u64,
}

impl Held {
    fn new(entry: PeerEntry) -> Self {
        let hash = entry.content_hash();
        Held { entry, hash }
    }

    fn with_digest(entry: PeerEntry, digest: &[u8; 32]) -> Self {
        Held {
            entry,
            hash: hash_of_digest(digest),
        }
    }

    fn digest(&self) -> DigestEntry {
        self.entry.digest_with(self.hash)
    }
}

#[derive(Debug, Clone)]
pub struct Topology {
    me: PeerName,
    signer: Arc<KeyPair>,
    peers: BTreeMap<PeerName, Held>,
    /// XOR of [`entry_hash`] over all entries (content included): equal
    /// topologies hash equal, and it updates in O(1) per merged entry.
    hash: u64,
    tombstones: HashMap<PeerName, (DigestEntry, Instant)>,
    /// How long a tombstone outlives the entry it replaced.
    tombstone_ttl: Duration,
    /// Most entries kept (see the module docs for who makes room).
    max_peers: usize,
    /// [`entry_size`] summed over the entries, and the most a newcomer may
    /// bring it to.
    bytes: usize,
    max_bytes: usize,
    cache: Arc<SigCache>,
}

/// What a merge changed.
#[derive(Debug, Default)]
pub struct MergeOutcome {
    /// Entries that replaced or added to ours (what to relay).
    pub news: Vec<PeerEntry>,
    /// An older incarnation of ourselves was seen; our version was bumped.
    pub own_bumped: bool,
    /// New peers refused because the topology is full of nearer ones.
    pub refused: usize,
    /// Entries dropped as forged: a bad signature, or a key that does not
    /// hash to the entry's name.
    pub forged_signature: usize,
    /// Entries dropped as forged: a version beyond [`MAX_ENTRY_VERSION`], or
    /// connections not in normal form.
    pub forged_form: usize,
    /// Two different signed entries with the same `(version, uid)`.
    pub equivocations: usize,
    /// Entries evicted to make room for nearer newcomers.
    pub evicted: usize,
    /// Held entries of other routers replaced by one with another uid:
    /// `(name, old uid, new uid)`; old is `None` for a newcomer.
    pub uid_changes: Vec<(PeerName, Option<u64>, u64)>,
    /// Uids of entries under our own name that beat ours (signed by our
    /// key: an earlier incarnation, or a clone).
    pub own_beaten_by: Vec<u64>,
}

impl MergeOutcome {
    fn forged(&mut self, e: EntryError) {
        match e {
            EntryError::Version | EntryError::Unsorted => self.forged_form += 1,
            _ => self.forged_signature += 1,
        }
    }
}

fn mix(mut z: u64) -> u64 {
    // splitmix64 finaliser
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn entry_hash(d: &DigestEntry) -> u64 {
    mix(d.name.0 ^ mix(d.version ^ mix(d.uid.wrapping_add(0x9e37_79b9_7f4a_7c15) ^ mix(d.hash))))
}

/// Who goes first when the topology is full: farther (in hops over
/// confirmed links; unreachable is farthest) ranks higher, ties by a hash of
/// the name. The highest rank is evicted first.
type Rank = (u32, u64);

fn rank(hops: Option<u32>, name: PeerName) -> Rank {
    (hops.unwrap_or(u32::MAX), mix(name.0))
}

impl Topology {
    /// A topology whose own entry publishes no origin key (tests).
    pub fn new(signer: Arc<KeyPair>, nickname: String, uid: u64) -> Self {
        Self::with_limits(
            signer,
            nickname,
            uid,
            [0; 32],
            Duration::from_secs(60),
            100_000,
            Arc::new(SigCache::new(1024)),
        )
    }

    /// `dh`: our origin key's public half, published in our entry.
    pub fn with_limits(
        signer: Arc<KeyPair>,
        nickname: String,
        uid: u64,
        dh: [u8; 32],
        tombstone_ttl: Duration,
        max_peers: usize,
        cache: Arc<SigCache>,
    ) -> Self {
        let own = PeerEntry::signed(&*signer, nickname, uid, 1, vec![], vec![], dh);
        let mut t = Topology {
            me: own.name,
            signer,
            peers: BTreeMap::new(),
            hash: 0,
            tombstones: HashMap::new(),
            tombstone_ttl,
            max_peers: max_peers.max(1),
            bytes: 0,
            max_bytes: usize::MAX,
            cache,
        };
        t.insert(Held::new(own));
        t
    }

    /// Bounds the entries' total size (as [`entry_size`] counts it): a
    /// newcomer that would pass it must make room like one beyond
    /// `max_peers`. Updates of entries we hold are never refused, so the
    /// total may pass the bound by what known peers grow.
    pub fn set_max_bytes(&mut self, max_bytes: usize) {
        self.max_bytes = max_bytes;
    }

    /// The entries' total size, as [`entry_size`] counts it.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn insert(&mut self, h: Held) {
        self.hash ^= entry_hash(&h.digest());
        self.bytes += entry_size(&h.entry);
        if let Some(old) = self.peers.insert(h.entry.name, h) {
            self.hash ^= entry_hash(&old.digest());
            self.bytes -= entry_size(&old.entry);
        }
    }

    fn evict(&mut self, name: PeerName) {
        if let Some(old) = self.peers.remove(&name) {
            self.hash ^= entry_hash(&old.digest());
            self.bytes -= entry_size(&old.entry);
        }
    }

    pub fn me(&self) -> &PeerEntry {
        // Our own entry is inserted at construction and never removed.
        &self
            .peers
            .get(&self.me)
            .unwrap_or_else(|| unreachable!("own entry is never removed"))
            .entry
    }

    pub fn name(&self) -> PeerName {
        self.me
    }

    pub fn get(&self, name: &PeerName) -> Option<&PeerEntry> {
        self.peers.get(name).map(|h| &h.entry)
    }

    pub fn entries(&self) -> impl Iterator<Item = &PeerEntry> {
        self.peers.values().map(|h| &h.entry)
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Tombstones of removed entries not yet expired.
    pub fn tombstones(&self) -> usize {
        self.tombstones.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Whether a newcomer (of any size) might have to make room.
    pub fn is_full(&self) -> bool {
        !self.fits(MAX_ENTRY_SIZE)
    }

    /// Whether a newcomer of `size` bytes fits without making room.
    fn fits(&self, size: usize) -> bool {
        self.peers.len() < self.max_peers && self.bytes.saturating_add(size) <= self.max_bytes
    }

    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// Signs and keeps a new version of our own entry.
    fn set_own_entry(&mut self, version: u64, conns: Vec<PeerName>, addrs: Vec<SocketAddr>) {
        let me = self.me();
        let e = PeerEntry::signed(
            &*self.signer,
            me.nickname.clone(),
            me.uid,
            version.min(MAX_ENTRY_VERSION),
            addrs,
            conns,
            me.dh,
        );
        self.insert(Held::new(e));
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
        let version = me.version.saturating_add(1);
        self.set_own_entry(version, conns, addrs);
        true
    }

    /// Every entry as `(name, uid, version, content hash)`.
    pub fn digest(&self) -> Vec<DigestEntry> {
        self.peers.values().map(Held::digest).collect()
    }

    /// Checks `e`; returns its content digest.
    fn check(&self, e: &PeerEntry) -> Result<[u8; 32], EntryError> {
        let digest = e.content_digest();
        self.cache.check_entry(e, digest)?;
        Ok(digest)
    }

    /// Merges `entries` in. See the module docs for the rules. `hops` is
    /// how far each held peer is from us over confirmed links (asked only
    /// when the topology is full).
    pub fn merge(
        &mut self,
        entries: Vec<PeerEntry>,
        now: Instant,
        hops: &dyn Fn(PeerName) -> Option<u32>,
    ) -> MergeOutcome {
        let mut out = MergeOutcome::default();
        // Held entries, best first, so that the worst is at the end; made
        // when a newcomer first finds the topology full.
        let mut evictable: Option<Vec<(Rank, PeerName)>> = None;
        for e in entries {
            if let Err(err) = e.check_form() {
                out.forged(err);
                continue;
            }
            if e.name == self.me {
                let mine = self.me();
                let mine_uid = mine.uid;
                if e.order_key() > mine.order_key() {
                    match self.check(&e) {
                        Ok(_) => {
                            let (conns, addrs) = (mine.conns.clone(), mine.addrs.clone());
                            // Far past it: an honest earlier incarnation
                            // has nothing this far ahead in flight, so only
                            // a live clone beats us again (duplicates.rs).
                            self.set_own_entry(
                                e.version.saturating_add(OWN_BUMP_MARGIN),
                                conns,
                                addrs,
                            );
                            out.own_bumped = true;
                            if e.uid != mine_uid {
                                out.own_beaten_by.push(e.uid);
                            }
                        }
                        Err(err) => out.forged(err),
                    }
                }
                continue;
            }
            if let Some((t, _)) = self.tombstones.get(&e.name)
                && t.uid == e.uid
                && t.version >= e.version
            {
                continue;
            }
            // How many of the worst entries make room for this one.
            let mut room_of = None;
            match self.peers.get(&e.name) {
                Some(old) if e.order_key() < old.entry.order_key() => continue,
                Some(old) if e.order_key() == old.entry.order_key() => {
                    // Ed25519 signatures are deterministic: the same signature
                    // is the same entry (the common case, cheaper than a hash).
                    if e.sig == old.entry.sig {
                        continue;
                    }
                    let hash = match self.check(&e) {
                        Ok(d) => hash_of_digest(&d),
                        Err(err) => {
                            out.forged(err);
                            continue;
                        }
                    };
                    if hash == old.hash {
                        continue;
                    }
                    // Both are signed by the router itself: it lied. Everyone
                    // keeps the same one of the two.
                    out.equivocations += 1;
                    if hash < old.hash {
                        continue;
                    }
                }
                Some(_) => {}
                None if !self.fits(entry_size(&e)) => {
                    let mine = self.newcomer_rank(&e, hops);
                    let list = evictable.get_or_insert_with(|| self.evictable(hops));
                    // The worst entries, as many as it takes, while they rank
                    // below the newcomer.
                    let size = entry_size(&e);
                    let (mut len, mut bytes, mut take) = (self.peers.len(), self.bytes, 0);
                    while len >= self.max_peers || bytes.saturating_add(size) > self.max_bytes {
                        let Some(&(r, victim)) = list.iter().rev().nth(take) else {
                            break;
                        };
                        if r <= mine {
                            break;
                        }
                        len -= 1;
                        bytes -= self.get(&victim).map_or(0, entry_size);
                        take += 1;
                    }
                    let room = len < self.max_peers && bytes.saturating_add(size) <= self.max_bytes;
                    if !room {
                        // Checked all the same, so that every forgery that
                        // is not stale is counted (real ones are cached).
                        match self.check(&e) {
                            Ok(_) => out.refused += 1,
                            Err(err) => out.forged(err),
                        }
                        continue;
                    }
                    room_of = Some(take);
                }
                None => {}
            }
            let digest = match self.check(&e) {
                Ok(d) => d,
                Err(err) => {
                    out.forged(err);
                    continue;
                }
            };
            for _ in 0..room_of.unwrap_or(0) {
                if let Some((_, victim)) = evictable.as_mut().and_then(Vec::pop) {
                    self.evict(victim);
                    out.evicted += 1;
                }
            }
            self.tombstones.remove(&e.name);
            let old_uid = self.peers.get(&e.name).map(|h| h.entry.uid);
            if old_uid != Some(e.uid) {
                out.uid_changes.push((e.name, old_uid, e.uid));
            }
            out.news.push(e.clone());
            self.insert(Held::with_digest(e, &digest));
        }
        let ttl = self.tombstone_ttl;
        self.tombstones
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < ttl);
        out
    }

    /// How near a peer we do not hold would be: one hop past the nearest
    /// held peer that lists it and that it lists.
    fn newcomer_rank(&self, e: &PeerEntry, hops: &dyn Fn(PeerName) -> Option<u32>) -> Rank {
        let near = e
            .conns
            .iter()
            .filter(|c| {
                self.get(c)
                    .is_some_and(|back| back.conns.binary_search(&e.name).is_ok())
            })
            .filter_map(|c| hops(*c))
            .min()
            .map(|h| h.saturating_add(1));
        rank(near, e.name)
    }

    /// Every held entry but ours, best first.
    fn evictable(&self, hops: &dyn Fn(PeerName) -> Option<u32>) -> Vec<(Rank, PeerName)> {
        let mut v: Vec<(Rank, PeerName)> = self
            .peers
            .keys()
            .filter(|n| **n != self.me)
            .map(|n| (rank(hops(*n), *n), *n))
            .collect();
        v.sort_unstable();
        v
    }

    /// Entries that the holder of `digest` lacks or holds in an older version,
    /// in chunks that fit one update frame.
    pub fn newer_than(&self, digest: &[DigestEntry]) -> Vec<Vec<PeerEntry>> {
        let theirs: HashMap<PeerName, (u64, u64, u64)> =
            digest.iter().map(|d| (d.name, d.merge_key())).collect();
        let newer: Vec<PeerEntry> = self
            .peers
            .values()
            .filter(|h| {
                theirs
                    .get(&h.entry.name)
                    .is_none_or(|k| h.digest().merge_key() > *k)
            })
            .map(|h| h.entry.clone())
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
                .is_none_or(|h| d.merge_key() > h.digest().merge_key())
        })
    }

    /// Removes a peer's entry (never our own), leaving a tombstone.
    pub fn remove(&mut self, name: PeerName, now: Instant) {
        if name == self.me {
            return;
        }
        if let Some(old) = self.peers.remove(&name) {
            self.hash ^= entry_hash(&old.digest());
            self.bytes -= entry_size(&old.entry);
            self.tombstones.insert(name, (old.digest(), now));
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use weft_peer_proto::sign::Signer as _;

    use super::*;

    /// Keys 0..=255, made once (key generation is the slow part).
    fn key(n: u8) -> Arc<KeyPair> {
        static KEYS: std::sync::OnceLock<Vec<Arc<KeyPair>>> = std::sync::OnceLock::new();
        KEYS.get_or_init(|| {
            (0..=255u8)
                .map(|i| Arc::new(KeyPair::from_seed([i; 32])))
                .collect()
        })[n as usize]
            .clone()
    }

    fn name(n: u8) -> PeerName {
        key(n).name()
    }

    fn entry(n: u8, uid: u64, version: u64, conns: &[u8]) -> PeerEntry {
        let conns = conns.iter().map(|c| name(*c)).collect();
        PeerEntry::signed(
            &*key(n),
            format!("n{n}"),
            uid,
            version,
            vec![],
            conns,
            [n; 32],
        )
    }

    fn topo(n: u8, uid: u64) -> Topology {
        Topology::new(key(n), format!("n{n}"), uid)
    }

    fn with_max(n: u8, max: usize) -> Topology {
        let cache = Arc::new(SigCache::new(1024));
        Topology::with_limits(
            key(n),
            format!("n{n}"),
            0,
            [n; 32],
            Duration::from_secs(60),
            max,
            cache,
        )
    }

    const FAR: &dyn Fn(PeerName) -> Option<u32> = &|_| None;

    fn random_entries(rng: &mut StdRng) -> Vec<PeerEntry> {
        (0..rng.random_range(0..12))
            .map(|_| {
                let n = rng.random_range(1..6);
                let uid = rng.random_range(0..2);
                let version = rng.random_range(0..5);
                // Content varies at one (version, uid) now and then: an equivocation.
                let c = rng.random_range(0..8) as u8;
                entry(n, uid, version, &[c])
            })
            .collect()
    }

    fn state(t: &Topology) -> Vec<PeerEntry> {
        t.entries().cloned().collect()
    }

    /// Merge laws, seeded: commutative, associative, idempotent, also with
    /// equivocating entries; the hash is a function of the state.
    #[test]
    fn merge_laws() {
        for seed in 0..300u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let now = Instant::now();
            let (a, b, c) = (
                random_entries(&mut rng),
                random_entries(&mut rng),
                random_entries(&mut rng),
            );
            let apply = |parts: &[&Vec<PeerEntry>]| {
                let mut t = topo(100, 0);
                for p in parts {
                    t.merge((*p).clone(), now, FAR);
                }
                t
            };
            // States are topologies; join(s, t) merges all of t into s.
            let join = |s: &Topology, t: &Topology| {
                let mut r = s.clone();
                r.merge(state(t), now, FAR);
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
                other.merge(chunk, now, FAR);
            }
            let mut back = abc.clone();
            for chunk in other.newer_than(&abc.digest()) {
                back.merge(chunk, now, FAR);
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
        let mut t = topo(1, 7);
        let out = t.merge(vec![entry(1, 3, 40, &[2])], now, FAR);
        assert!(out.own_bumped && out.news.is_empty());
        assert_eq!(out.own_beaten_by, vec![3]);
        assert_eq!(t.me().version, 40 + OWN_BUMP_MARGIN);
        assert_eq!(t.me().uid, 7);
        assert_eq!(t.me().verify(), Ok(()), "the bumped entry is signed");
    }

    /// A restart: copies of the old process' entries at several versions
    /// are still in flight. Only the first beats the new entry; the margin
    /// puts it past the rest, so they never look like a live clone.
    #[test]
    fn stale_copies_of_an_earlier_incarnation_win_only_once() {
        let now = Instant::now();
        let mut t = topo(1, 7);
        let out = t.merge(vec![entry(1, 3, 40, &[2])], now, FAR);
        assert_eq!(out.own_beaten_by, vec![3]);
        for v in [41, 45, 40 + 1000, 40 + OWN_BUMP_MARGIN - 1] {
            let out = t.merge(vec![entry(1, 3, v, &[2])], now, FAR);
            assert!(
                !out.own_bumped && out.own_beaten_by.is_empty(),
                "version {v}"
            );
        }
        // A live clone (uid 3) signing past us beats us again.
        let out = t.merge(vec![entry(1, 3, t.me().version + 1, &[2])], now, FAR);
        assert_eq!(out.own_beaten_by, vec![3]);
    }

    /// Anyone could once send an entry for another router at u64::MAX and
    /// freeze it: now only the router signs its entry, and no version it
    /// signs is out of its own reach.
    #[test]
    fn forged_and_unreachable_versions_are_refused() {
        let now = Instant::now();
        let mut t = topo(1, 7);
        t.merge(vec![entry(2, 1, 5, &[])], now, FAR);
        // Router 3 signs an entry under router 2's name.
        let mut forged = entry(3, 1, 6, &[]);
        forged.name = name(2);
        let out = t.merge(vec![forged], now, FAR);
        assert_eq!((out.forged_signature, out.news.len()), (1, 0));
        // A signature of 2's over content it did not sign.
        let mut altered = entry(2, 1, 6, &[]);
        altered.version = 7;
        assert_eq!(t.merge(vec![altered], now, FAR).forged_signature, 1);
        // Even 2 itself cannot sign a version beyond the limit.
        let out = t.merge(vec![entry(2, 1, u64::MAX, &[])], now, FAR);
        assert_eq!(out.forged_form, 1);
        assert_eq!(t.get(&name(2)).map(|e| e.version), Some(5));
        // And 2's next real version still wins.
        assert_eq!(t.merge(vec![entry(2, 1, 6, &[])], now, FAR).news.len(), 1);
        // Our own entry: a forged one changes nothing.
        let mut me = entry(3, 9, 1000, &[]);
        me.name = name(1);
        let out = t.merge(vec![me], now, FAR);
        assert!(!out.own_bumped && out.forged_signature == 1);
        assert_eq!(t.me().version, 1);
    }

    #[test]
    fn own_version_can_always_supersede() {
        let now = Instant::now();
        let mut t = topo(1, 7);
        t.merge(vec![entry(1, 9, MAX_ENTRY_VERSION, &[2])], now, FAR);
        assert_eq!(t.me().version, MAX_ENTRY_VERSION);
        assert!(t.set_own(vec![name(5)], &[]));
        assert_eq!(t.me().version, MAX_ENTRY_VERSION);
        assert_eq!(t.me().verify(), Ok(()));
    }

    /// The topology hash once ignored content: two routers holding different
    /// entries at one version thought they agreed.
    #[test]
    fn equivocation_is_detected_and_resolved_alike() {
        let now = Instant::now();
        let (e1, e2) = (entry(2, 1, 3, &[4]), entry(2, 1, 3, &[5]));
        let (mut a, mut b) = (topo(1, 0), topo(1, 0));
        a.merge(vec![e1.clone()], now, FAR);
        b.merge(vec![e2.clone()], now, FAR);
        assert_ne!(a.hash(), b.hash(), "different content, different hash");
        assert!(a.lacks_any(&b.digest()) || b.lacks_any(&a.digest()));
        let oa = a.merge(vec![e2], now, FAR);
        let ob = b.merge(vec![e1], now, FAR);
        assert_eq!((oa.equivocations, ob.equivocations), (1, 1));
        assert_eq!(state(&a), state(&b));
        assert_eq!(a.hash(), b.hash());
    }

    #[test]
    fn the_topology_holds_at_most_max_peers() {
        let now = Instant::now();
        let mut t = with_max(1, 10);
        let out = t.merge((2..100).map(|n| entry(n, 0, 1, &[])).collect(), now, FAR);
        assert_eq!(t.len(), 10);
        // All unreachable: some take others' places by name hash, none beyond the bound.
        assert_eq!(out.refused + out.evicted, 89);
        // Known peers still update.
        let held = t.entries().map(|e| e.name).find(|n| *n != name(1));
        let n = (2..100u8).find(|n| Some(name(*n)) == held).expect("held");
        assert_eq!(t.merge(vec![entry(n, 0, 2, &[])], now, FAR).news.len(), 1);
    }

    /// A full topology of forged peers nobody links to does not lock out a
    /// newcomer with a session to a router we reach.
    #[test]
    fn a_reachable_newcomer_evicts_an_unreachable_entry() {
        let now = Instant::now();
        let mut t = with_max(1, 20);
        // 2 is our neighbour and lists 3; 3 lists 2.
        t.set_own(vec![name(2)], &[]);
        t.merge(vec![entry(2, 0, 1, &[1, 3])], now, FAR);
        let hops = |n: PeerName| {
            if n == name(1) {
                Some(0)
            } else if n == name(2) {
                Some(1)
            } else {
                None
            }
        };
        let fakes: Vec<PeerEntry> = (100..200).map(|n| entry(n, 0, 1, &[n + 1])).collect();
        t.merge(fakes, now, &hops);
        assert_eq!(t.len(), 20);
        let out = t.merge(vec![entry(3, 0, 1, &[2])], now, &hops);
        assert_eq!((out.news.len(), out.evicted), (1, 1));
        assert!(t.get(&name(3)).is_some() && t.get(&name(2)).is_some());
        assert_eq!(t.len(), 20);
    }

    /// Forged peers with the most connections an entry may list would cost
    /// ~20 KiB each; the byte bound holds them, and a reachable newcomer
    /// still gets in.
    #[test]
    fn the_topology_holds_at_most_max_bytes() {
        let now = Instant::now();
        let mut t = with_max(1, 1000);
        let budget = 200 * 1024;
        t.set_max_bytes(budget);
        t.set_own(vec![name(2)], &[]);
        let hops = |n: PeerName| match n {
            n if n == name(1) => Some(0),
            n if n == name(2) => Some(1),
            _ => None,
        };
        t.merge(vec![entry(2, 0, 1, &[1, 3])], now, &hops);
        let wide: Vec<u8> = (100..=255).collect();
        let fakes: Vec<PeerEntry> = (100..=255).map(|n| entry(n, 0, 1, &wide)).collect();
        let out = t.merge(fakes, now, &hops);
        assert!(t.bytes() <= budget, "{} > {budget}", t.bytes());
        assert!(out.refused + out.evicted > 0);
        let out = t.merge(vec![entry(3, 0, 1, &[2])], now, &hops);
        assert_eq!(out.news.len(), 1);
        assert!(t.get(&name(3)).is_some() && t.get(&name(2)).is_some());
        assert!(t.bytes() <= budget);
    }

    /// Found by the `mesh_core` fuzz target: peers forgotten by garbage
    /// collection kept their bytes counted, so after enough churn the byte
    /// bound refused every newcomer (here the first one after a removal).
    #[test]
    fn a_removed_entry_gives_its_bytes_back() {
        let now = Instant::now();
        let mut t = with_max(1, 1000);
        let one = entry(2, 0, 1, &[]);
        t.set_max_bytes(t.bytes() + entry_size(&one));
        assert_eq!(t.merge(vec![one], now, FAR).news.len(), 1);
        t.remove(name(2), now);
        assert_eq!(t.bytes(), entry_size(t.me()));
        let out = t.merge(vec![entry(3, 0, 1, &[])], now, FAR);
        assert_eq!(
            (out.news.len(), out.refused),
            (1, 0),
            "room after a removal"
        );
        assert_eq!(t.bytes(), t.entries().map(entry_size).sum::<usize>());
    }

    #[test]
    fn updates_are_split_to_fit_frames() {
        let conns: Vec<u8> = (0..=255).collect();
        let big: Vec<PeerEntry> = (0..300)
            .map(|n| entry((n % 256) as u8, n, 1, &conns))
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
        let mut t = topo(1, 0);
        t.merge(vec![entry(2, 5, 3, &[])], now, FAR);
        t.remove(name(2), now);
        assert!(t.merge(vec![entry(2, 5, 3, &[])], now, FAR).news.is_empty());
        assert!(!t.lacks_any(&[entry(2, 5, 3, &[]).digest()]));
        assert_eq!(t.merge(vec![entry(2, 5, 4, &[])], now, FAR).news.len(), 1);
        t.remove(name(2), now);
        assert_eq!(
            t.merge(vec![entry(2, 6, 1, &[])], now, FAR).news.len(),
            1,
            "new incarnation"
        );
    }
}
