//! The real IPAM channel over the real mesh core: 50 simulated routers in
//! virtual time, with loss and duplication, a partition, crashes and
//! restarts from what each router saved, donations of space on request,
//! and rmpeer of routers that are gone for good. Five routers bootstrap the
//! ring by consensus; the other 45 are observers that own nothing until a
//! peer donates to them.
//!
//! Checked all along: no address is held by two keys anywhere (live
//! routers, and what crashed ones saved), no two routers claim the same
//! range, and no allocation falls outside its router's ranges. Checked at
//! the end: after healing, every ring agrees. Every assertion names its
//! seed; rerun one with `WEFT_SIM_SEED=<seed>`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use rand::Rng;
use weft_ipam_crdt::channel::{CHANNEL, SPACE_DOMAIN};
use weft_ipam_crdt::wire::sign_claims;
use weft_ipam_crdt::{
    AddrRange, AllocError, Init, IpamChannel, IpamError, Persisted, Refused, Removal, Ring,
};
use weft_mesh::MeshCounters;
use weft_peer_proto::codec::{decode_ipam, encode_ipam};
use weft_peer_proto::ipam::{
    BallotWire, ClaimsWire, FREE_DOMAIN, FreeHint, IpamMsg, RemovalWire, SpaceRequestWire,
};
use weft_peer_proto::sign::{KeyPair, Sig, Signer};
use weft_peer_proto::topology::PeerEntry;
use weft_peer_proto::{ChannelName, Frame, GossipMsg, PeerName, Verb};
use weft_tests::byzantine::{Lies, lie};
use weft_tests::sim::{Sim, SimConfig, addr_of};

const ROUTERS: usize = 50;
const VOTERS: usize = 5;
const RANGE: &str = "10.32.0.0/20";

fn seeds(default: &[u64]) -> Vec<u64> {
    match std::env::var("WEFT_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("WEFT_SIM_SEED is a number")],
        Err(_) => default.to_vec(),
    }
}

fn range() -> AddrRange {
    RANGE.parse().expect("range")
}

fn init(i: usize) -> Init {
    if i < VOTERS {
        Init::Consensus(VOTERS)
    } else {
        Init::Observer
    }
}

/// A simulated wall clock: far from zero, like the real one.
const WALL_MS: u64 = 1_800_000_000_000;

/// Router `i`'s identity key (its name is the key's).
fn key_of(i: usize) -> KeyPair {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    KeyPair::from_seed(seed)
}

fn make_sim(seed: u64, liars: &[usize]) -> Sim<IpamChannel> {
    let mut cfg = SimConfig::new(seed);
    cfg.key_of = Some(key_of);
    cfg.loss = 0.02;
    cfg.duplicate = 0.01;
    let mut base = weft_tests::sim::base_config();
    base.conn_limit = 8;
    // The wall clock moves with virtual time (free-space hints must count
    // up across restarts).
    let mut t0 = None;
    let start = move |i: usize, name: PeerName, disk: Option<&[u8]>, now: Instant| {
        let t0 = *t0.get_or_insert(now);
        let wall_ms = WALL_MS + now.duration_since(t0).as_millis() as u64;
        assert_eq!(name, key_of(i).name(), "the mesh's name is the key's");
        match disk {
            None => IpamChannel::new(key_of(i), range(), init(i), now, wall_ms),
            Some(bytes) => {
                let saved: Persisted = serde_json::from_slice(bytes)
                    .unwrap_or_else(|e| panic!("router {i}'s saved state: {e}; seed {seed}"));
                IpamChannel::restore(key_of(i), range(), init(i), &saved, now, wall_ms)
                    .unwrap_or_else(|e| panic!("router {i} restores: {e}; seed {seed}"))
            }
        }
    };
    // As meshd does after every input: write what changed, then let the
    // channel send what waited for the write.
    let save = |ch: &mut IpamChannel, now: Instant| {
        let p = ch.unsaved()?;
        let bytes = serde_json::to_vec(&p).ok()?;
        ch.saved(now);
        Some(bytes)
    };
    let mut sim = Sim::with_channels(cfg, base, Box::new(start), Box::new(save));
    // What a liar puts on the wire past its core is anything but saved.
    let liars = liars.to_vec();
    sim.inspect_sends(Box::new(move |i, name, frame, disk| {
        if !liars.contains(&i) {
            sent_is_saved(seed, i, name, frame, disk)
        }
    }));
    sim
}

/// Every IPAM state a router sends of its own is already on its disk: the
/// ring it sends, merged into the ring it saved, changes nothing.
fn sent_is_saved(seed: u64, i: usize, name: PeerName, frame: &Frame, disk: Option<&[u8]>) {
    let Frame::Gossip(msg) = frame else { return };
    let own = match msg.verb {
        Verb::Gossip => true,
        Verb::Unicast { src, .. } | Verb::Broadcast { src } => src == name,
    };
    if msg.channel.as_str() != weft_ipam_crdt::channel::CHANNEL || !own {
        return;
    }
    let Ok(IpamMsg::State { ring, .. }) = decode_ipam(&msg.payload) else {
        return;
    };
    let sent = Ring::from_wire(&ring, range())
        .unwrap_or_else(|e| panic!("router {i} sent a bad ring: {e}; seed {seed}"));
    let disk =
        disk.unwrap_or_else(|| panic!("router {i} sent IPAM state before saving any; seed {seed}"));
    let saved: Persisted = serde_json::from_slice(disk).expect("saved state");
    let mut on_disk = Ring::from_saved(&saved.ring, range()).expect("saved ring");
    let merged = on_disk.merge(&sent);
    assert!(
        merged.as_ref().is_ok_and(|o| !o.changed),
        "router {i} sent a ring that is not on its disk ({merged:?}); seed {seed}"
    );
}

fn saved(sim: &Sim<IpamChannel>, i: usize, seed: u64) -> Option<Persisted> {
    let bytes = sim.nodes[i].disk.as_ref()?;
    Some(
        serde_json::from_slice(bytes)
            .unwrap_or_else(|e| panic!("router {i}'s saved state: {e}; seed {seed}")),
    )
}

/// A router's ring and allocations: from memory if it runs, else from disk.
fn state_of(sim: &Sim<IpamChannel>, i: usize, seed: u64) -> Option<(Ring, Vec<(String, u32)>)> {
    if sim.nodes[i].alive {
        let a = sim.nodes[i].mesh.channels().ipam().alloc();
        let allocs = a.allocations().map(|(k, v)| (k.to_owned(), v)).collect();
        return Some((a.ring().clone(), allocs));
    }
    let p = saved(sim, i, seed)?;
    let ring = Ring::from_wire(&p.ring, range())
        .unwrap_or_else(|e| panic!("router {i}'s saved ring: {e}; seed {seed}"));
    Some((ring, p.allocs))
}

struct World {
    seed: u64,
    sim: Sim<IpamChannel>,
    /// Routers removed with rmpeer (crashed for good).
    removed: BTreeSet<usize>,
    /// Keys each router's workload holds, and a counter for new ones.
    keys: Vec<Vec<String>>,
    next_key: u64,
    asked_at: Vec<Option<Instant>>,
    stats: BTreeMap<&'static str, u64>,
    /// The routers that lie (they run the honest channel too), and the rest.
    liars: Vec<usize>,
    honest: Vec<usize>,
    /// Whether the liars lie now, and when their next round is due.
    lying: bool,
    next_lie: Instant,
    /// Per router, the routers that asked it for space: the only ones an
    /// honest router may lose space to (a donation).
    askers: Vec<BTreeSet<PeerName>>,
    /// Per router, what it owned in its own ring at the last step.
    owned: Vec<Vec<AddrRange>>,
    index: HashMap<PeerName, usize>,
    /// Topology stuffing: entries of peers signed by made-up keys.
    fakes: Vec<PeerEntry>,
    lies: Lies,
    ipam_lies: IpamLies,
    /// Counters of routers' earlier lives (a restart starts them afresh).
    retired: Vec<(usize, MeshCounters, Refused)>,
}

/// IPAM lies delivered to honest routers (a duplicate counts once: the mesh
/// drops it before the channel sees it).
#[derive(Debug, Default)]
struct IpamLies {
    /// States carrying removal certificates for an honest router, each
    /// with a signature that does not verify (a made-up key's, under the
    /// victim's own public key, and a bit-flipped one) and one by a
    /// made-up key that owns nothing.
    removals: u64,
    /// Of those, the ones also signed by the liar itself (valid, but a
    /// minority).
    minority_signed: u64,
    /// Consensus claims in an honest voter's name, signed by the liar or
    /// unsigned (two per state).
    claims: u64,
    /// The receiver's own ring with all its ranges given to the liar.
    ranges: u64,
    /// Space requests under an honest router's name, signed by a made-up
    /// key, stale, or for another cluster.
    space: u64,
    /// Payloads that do not decode.
    garbage: u64,
    /// Free-space hints for an honest owner, signed by the liar (carried
    /// by the removals' states).
    hints: u64,
}

impl IpamLies {
    fn total(&self) -> u64 {
        // Two claims per state, counted with the removals' states.
        self.claims / 2 + self.ranges + self.space + self.garbage
    }
}

/// `a` minus `b`, both sets of disjoint ranges.
fn minus(a: &[AddrRange], b: &[AddrRange]) -> Vec<AddrRange> {
    let mut b = b.to_vec();
    b.sort_by_key(|r| r.start);
    let mut out = Vec::new();
    for r in a {
        let mut start = u64::from(r.start);
        for s in &b {
            if s.end <= start || u64::from(s.start) >= r.end {
                continue;
            }
            if u64::from(s.start) > start {
                out.push(AddrRange::new(start as u32, u64::from(s.start)));
            }
            start = start.max(s.end);
        }
        if start < r.end {
            out.push(AddrRange::new(start as u32, r.end));
        }
    }
    out
}

impl World {
    fn new(seed: u64, liars: &[usize]) -> Self {
        let mut sim = make_sim(seed, liars);
        sim.add_node(vec![]);
        for i in 1..ROUTERS {
            // Each knows the first router and one other it heard of.
            let j = sim.rng().random_range(0..i);
            sim.add_node(vec![addr_of(0), addr_of(j)]);
        }
        let index = (0..ROUTERS).map(|i| (sim.nodes[i].name, i)).collect();
        // 200 fake peers in a chain, each signed by its own made-up key,
        // each claiming a link to an honest router too.
        let honest: Vec<usize> = (0..ROUTERS).filter(|i| !liars.contains(i)).collect();
        let keys: Vec<KeyPair> = (0..200u64)
            .map(|k| {
                let mut s = [0u8; 32];
                s[..8].copy_from_slice(&(seed * 1_000_000 + k).to_be_bytes());
                s[8] = 0xfa;
                KeyPair::from_seed(s)
            })
            .collect();
        let fake_names: Vec<PeerName> = keys.iter().map(|k| k.name()).collect();
        let n = keys.len();
        let fakes = keys
            .iter()
            .enumerate()
            .map(|(k, key)| {
                let mut conns = vec![fake_names[(k + 1) % n], fake_names[(k + n - 1) % n]];
                conns.push(sim.nodes[honest[k % honest.len()]].name);
                PeerEntry::signed(key, format!("fake{k}"), 1, 1, vec![], conns, [0; 32])
            })
            .collect();
        let now = sim.now;
        World {
            seed,
            sim,
            removed: BTreeSet::new(),
            keys: vec![Vec::new(); ROUTERS],
            next_key: 0,
            asked_at: vec![None; ROUTERS],
            stats: BTreeMap::new(),
            liars: liars.to_vec(),
            honest,
            lying: !liars.is_empty(),
            next_lie: now,
            askers: vec![BTreeSet::new(); ROUTERS],
            owned: vec![Vec::new(); ROUTERS],
            index,
            fakes,
            lies: Lies::default(),
            ipam_lies: IpamLies::default(),
            retired: Vec::new(),
        }
    }

    /// Restarts router `i` from its disk, keeping the counts of its
    /// earlier life.
    fn restart(&mut self, i: usize) {
        let node = &self.sim.nodes[i];
        let refused = node.mesh.channels().refused();
        self.retired.push((i, node.mesh.counters.clone(), refused));
        self.sim.restart(i);
    }

    fn bump(&mut self, k: &'static str) {
        *self.stats.entry(k).or_default() += 1;
    }

    fn live(&self) -> Vec<usize> {
        (0..ROUTERS).filter(|i| self.sim.nodes[*i].alive).collect()
    }

    /// Pods come and go: each live router allocates or releases now and
    /// then, and asks a reachable peer for space when it has none.
    fn workload(&mut self) {
        for i in self.live() {
            // Time passing, as meshd's IPAM tick (consensus proposals).
            let jitter: u64 = self.sim.rng().random();
            self.sim
                .with_node(i, |m, now| m.channels_mut().tick(now, jitter));
            let roll: f64 = self.sim.rng().random();
            if roll < 0.15 {
                self.next_key += 1;
                let key = format!("pod-{}", self.next_key);
                let now = self.sim.now;
                let asked = self.asked_at[i];
                let (r, ask) = self.sim.with_node(i, |m, now_| {
                    let r = m.channels_mut().allocate(&key, None);
                    let mut ask = None;
                    let due =
                        asked.is_none_or(|t| now_.duration_since(t) >= Duration::from_secs(1));
                    if matches!(r, Err(IpamError::Alloc(AllocError::NoSpace))) && due {
                        let reachable: BTreeSet<PeerName> = m
                            .peers_reachability()
                            .into_iter()
                            .filter(|(_, ok, _)| *ok)
                            .map(|(n, _, _)| n)
                            .collect();
                        ask = m.channels().donor(|p| reachable.contains(&p));
                        if let Some(d) = ask {
                            m.channels_mut().ask_for_space(d, now_);
                        }
                    }
                    (r, ask)
                });
                if let Some(d) = ask {
                    self.asked_at[i] = Some(now);
                    self.bump("space requests");
                    let me = self.sim.nodes[i].name;
                    self.askers[self.index[&d]].insert(me);
                }
                match r {
                    Ok(_) => {
                        self.keys[i].push(key);
                        self.bump("allocations");
                    }
                    Err(IpamError::Alloc(AllocError::NoSpace | AllocError::NotReady)) => {
                        self.bump("allocations waiting")
                    }
                    Err(e) => panic!("router {i}: {e}; seed {}", self.seed),
                }
            } else if roll < 0.20 && !self.keys[i].is_empty() {
                let k = self.sim.rng().random_range(0..self.keys[i].len());
                let key = self.keys[i].swap_remove(k);
                let r = self.sim.with_node(i, |m, _| m.channels_mut().release(&key));
                assert!(
                    matches!(r, Ok(Some(_))),
                    "router {i} releases {key}: {r:?}; seed {}",
                    self.seed
                );
                self.bump("releases");
            }
        }
    }

    /// The safety invariants, over every router not removed.
    fn check(&self) {
        let seed = self.seed;
        let mut holders: HashMap<u32, String> = HashMap::new();
        let mut claims: Vec<(AddrRange, usize)> = Vec::new();
        for i in (0..ROUTERS).filter(|i| !self.removed.contains(i)) {
            let Some((ring, allocs)) = state_of(&self.sim, i, seed) else {
                continue;
            };
            let me = self.sim.nodes[i].name;
            let mine = ring.ranges_of(me);
            if self.sim.nodes[i].alive {
                let a = self.sim.nodes[i].mesh.channels().ipam().alloc();
                assert!(
                    a.lost().is_empty(),
                    "router {i} lost allocations {:?}; seed {seed}",
                    a.lost()
                );
                a.check()
                    .unwrap_or_else(|e| panic!("router {i}: {e}; seed {seed}"));
            }
            for (k, addr) in allocs {
                assert!(
                    mine.iter()
                        .any(|r| r.start <= addr && u64::from(addr) < r.end),
                    "router {i} holds {k} at {addr} outside its ranges; seed {seed}"
                );
                if let Some(other) = holders.insert(addr, format!("{i}/{k}")) {
                    panic!("address {addr} held by {other} and {i}/{k}; seed {seed}");
                }
            }
            claims.extend(mine.into_iter().map(|r| (r, i)));
        }
        // No honest router is removed anywhere but those rmpeer removed.
        let honest: BTreeSet<PeerName> = self
            .honest
            .iter()
            .filter(|i| !self.removed.contains(i))
            .map(|i| self.sim.nodes[*i].name)
            .collect();
        for &j in &self.honest {
            if !self.sim.nodes[j].alive {
                continue;
            }
            let ring = self.sim.nodes[j].mesh.channels().ipam().alloc().ring();
            if let Some(v) = ring.removed().iter().find(|v| honest.contains(v)) {
                panic!(
                    "router {j} holds honest router {} as removed (owners {}, liars owning {}); seed {seed}",
                    self.index[v],
                    ring.ownership().len(),
                    self.liars
                        .iter()
                        .filter(|l| ring.ownership().contains_key(&self.sim.nodes[**l].name))
                        .count()
                );
            }
        }
        claims.sort_by_key(|(r, _)| r.start);
        for w in claims.windows(2) {
            let ((a, i), (b, j)) = (w[0], w[1]);
            assert!(
                a.end <= u64::from(b.start),
                "routers {i} and {j} both claim addresses at {}; seed {seed}",
                b.start
            );
        }
    }

    /// An honest router loses space only by a donation to a router that
    /// asked it for space: whatever left its ranges since the last step
    /// is now, in its own ring, owned by such a router.
    fn check_space(&mut self) {
        let seed = self.seed;
        for &i in &self.honest {
            if self.removed.contains(&i) || !self.sim.nodes[i].alive {
                continue;
            }
            let ring = self.sim.nodes[i].mesh.channels().ipam().alloc().ring();
            let now = ring.ranges_of(self.sim.nodes[i].name);
            for lost in minus(&self.owned[i], &now) {
                let mut to: BTreeSet<PeerName> = ring
                    .entries_in(lost)
                    .into_iter()
                    .map(|(_, e)| e.owner)
                    .collect();
                to.extend(ring.owner_of(lost.start));
                for t in to {
                    assert!(
                        self.askers[i].contains(&t),
                        "router {i} lost {lost:?} to {:?}, which never asked it for space; seed {seed}",
                        self.index.get(&t)
                    );
                }
            }
            self.owned[i] = now;
        }
    }

    fn run_for(&mut self, d: Duration) {
        let until = self.sim.now + d;
        while self.sim.now < until {
            // Lies go out at the start of a step: all of them arrive within
            // it, before any crash (which would drop some uncounted).
            if self.lying && self.sim.now >= self.next_lie {
                self.lie_round();
                self.next_lie = self.sim.now + Duration::from_secs(1);
            }
            let step = self.sim.now + Duration::from_millis(250);
            self.sim.run_until(step);
            self.workload();
            self.check();
            self.check_space();
        }
    }

    /// One round of lies by every liar that runs.
    fn lie_round(&mut self) {
        let honest: Vec<usize> = self
            .honest
            .iter()
            .copied()
            .filter(|i| !self.removed.contains(i))
            .collect();
        for l in self.liars.clone() {
            if !self.sim.nodes[l].alive {
                continue;
            }
            lie(&mut self.sim, l, &honest, &self.fakes, &mut self.lies);
            self.ipam_lie(l, &honest);
        }
    }

    /// Liar `l`'s IPAM lies, to each honest neighbour.
    fn ipam_lie(&mut self, l: usize, honest: &[usize]) {
        let key = self.sim.nodes[l].key.clone();
        let me = self.sim.nodes[l].name;
        let chan = ChannelName::new(CHANNEL).expect("name");
        let ring = self.sim.nodes[l]
            .mesh
            .channels()
            .ipam()
            .alloc()
            .ring()
            .clone();
        let cluster = ring.cluster();
        let owners = ring.ownership();
        let liars_owning = self
            .liars
            .iter()
            .filter(|x| owners.contains_key(&self.sim.nodes[**x].name))
            .count();
        // All the liars' signatures together stay a minority of the owners
        // (a majority of owners may remove anyone: that is the rule).
        let minority = 2 * liars_owning < owners.len().saturating_sub(1);
        let wall = WALL_MS + self.sim.elapsed().as_millis() as u64;
        let names: Vec<PeerName> = self.sim.nodes.iter().map(|n| n.name).collect();
        for conn in self.sim.sessions_of(l) {
            let Some(n) = self.sim.peer_of(l, conn) else {
                continue;
            };
            if self.liars.contains(&n) || !self.sim.nodes[n].alive {
                continue;
            }
            let send = |sim: &mut Sim<IpamChannel>, verb: Verb, msg: &IpamMsg| -> u64 {
                let payload = encode_ipam(msg).expect("encode");
                let seq = sim.rng().random();
                let m = GossipMsg::signed(&*key, chan.clone(), verb, seq, 8, payload);
                sim.send_as(l, conn, Frame::Gossip(m)).min(1) as u64
            };
            let to_n = Verb::Unicast {
                src: me,
                dst: names[n],
            };
            // (a) Forged removals of an honest router, and consensus claims
            // in an honest voter's name.
            let voter = self.sim.rng().random_range(0..VOTERS);
            let ballot = BallotWire {
                round: u64::MAX,
                proposer: me,
            };
            let unsigned = ClaimsWire {
                voter: names[voter],
                promise: Some(ballot),
                accepted: Some((ballot, vec![me])),
                sig: None,
            };
            let by_liar = sign_claims(&*key, range(), unsigned.clone());
            let mut wire = ring.to_wire();
            let mut minority_signed = false;
            if let Some(c) = cluster {
                let v = honest[self.sim.rng().random_range(0..honest.len())];
                let victim = names[v];
                let mut sigs = Vec::new();
                if minority {
                    sigs.push(Removal::sign(&*key, c, victim));
                    minority_signed = true;
                }
                let stranger = KeyPair::from_seed(self.sim.rng().random());
                // "The victim leaves", signed by a made-up key.
                sigs.push(Sig {
                    key: key_of(v).public_key(),
                    ..Removal::sign(&stranger, c, victim)
                });
                // Good, but by a key that owns nothing.
                sigs.push(Removal::sign(&stranger, c, victim));
                let other = KeyPair::from_seed(self.sim.rng().random());
                let mut flipped = Removal::sign(&other, c, victim);
                flipped.sig.0[0] ^= 1;
                sigs.push(flipped);
                wire.removals.push(RemovalWire { peer: victim, sigs });
                wire.removed.push(victim);
            }
            // A free-space hint for an honest owner (not the receiver),
            // signed by the liar: "it is full", or "it has all the space".
            let theirs = self.sim.nodes[n].mesh.channels().ipam().alloc().ring();
            let at = theirs.cluster();
            let described: Vec<PeerName> = theirs
                .ownership()
                .into_keys()
                .filter(|p| *p != names[n] && !self.liars.iter().any(|x| names[*x] == *p))
                .collect();
            let mut free = Vec::new();
            if !described.is_empty() {
                let peer = described[self.sim.rng().random_range(0..described.len())];
                let n_free = if self.sim.rng().random() { 0 } else { u64::MAX };
                let seq = u64::MAX;
                free.push(FreeHint {
                    peer,
                    seq,
                    free: n_free,
                    sig: key.sign(FREE_DOMAIN, &(peer, at, seq, n_free)),
                });
            }
            let hints = free.len() as u64;
            let state = IpamMsg::State {
                ring: wire,
                consensus: vec![by_liar, unsigned],
                free,
                at_ms: wall,
            };
            let d = send(&mut self.sim, Verb::Gossip, &state);
            self.ipam_lies.claims += 2 * d;
            self.ipam_lies.hints += hints * d;
            if cluster.is_some() {
                self.ipam_lies.removals += d;
                if minority_signed {
                    self.ipam_lies.minority_signed += d;
                }
            }
            // (b) Its own ring with its ranges given to the liar, to it
            // alone (to a third party that would be taken: docs/ring-signing.md).
            let theirs = self.sim.nodes[n]
                .mesh
                .channels()
                .ipam()
                .alloc()
                .ring()
                .clone();
            let ranges = theirs.ranges_of(names[n]);
            if theirs.is_seeded() && !ranges.is_empty() {
                let mut forged = theirs;
                for r in ranges {
                    forged.transfer(names[n], r, me).expect("n owns its ranges");
                }
                let state = IpamMsg::State {
                    ring: forged.to_wire(),
                    consensus: Vec::new(),
                    free: Vec::new(),
                    at_ms: wall,
                };
                self.ipam_lies.ranges += send(&mut self.sim, to_n, &state);
            }
            // (c) Space requests: under an honest router's name, signed by
            // a made-up key, stale, and for another cluster.
            let cl = cluster.unwrap_or(1);
            let h = names[honest[self.sim.rng().random_range(0..honest.len())]];
            let stranger = KeyPair::from_seed(self.sim.rng().random());
            let stale = wall - 10 * 60 * 1000;
            let requests = [
                (h, cl, wall, key.sign(SPACE_DOMAIN, &(h, cl, wall))),
                (me, cl, wall, stranger.sign(SPACE_DOMAIN, &(me, cl, wall))),
                (me, cl, stale, key.sign(SPACE_DOMAIN, &(me, cl, stale))),
                (
                    me,
                    cl ^ 1,
                    wall,
                    key.sign(SPACE_DOMAIN, &(me, cl ^ 1, wall)),
                ),
            ];
            for (requester, cluster, at_ms, sig) in requests {
                let req = IpamMsg::SpaceRequest(SpaceRequestWire {
                    requester,
                    cluster,
                    at_ms,
                    sig,
                });
                self.ipam_lies.space += send(&mut self.sim, to_n, &req);
            }
            // (d) Garbage on the channel.
            let seq = self.sim.rng().random();
            let m = GossipMsg::signed(&*key, chan.clone(), Verb::Gossip, seq, 8, vec![0xff; 7]);
            self.ipam_lies.garbage += self.sim.send_as(l, conn, Frame::Gossip(m)).min(1) as u64;
        }
    }

    /// Operations so far: the workload's, and the lies that arrived.
    fn ops(&self) -> u64 {
        let honest: u64 = ["allocations", "releases", "space requests"]
            .iter()
            .map(|k| self.stats.get(k).copied().unwrap_or(0))
            .sum();
        let l = &self.lies;
        let mesh =
            l.entry_signature + l.entry_form + l.channel_signature + l.channel_source + l.genuine;
        honest + mesh as u64 + self.ipam_lies.total()
    }

    /// The honest routers' IPAM counts, over all their lives.
    fn refused(&self) -> BTreeMap<&'static str, u64> {
        let mut sum = BTreeMap::new();
        let now = self
            .honest
            .iter()
            .map(|i| (*i, self.sim.nodes[*i].mesh.channels().refused()));
        let old = self.retired.iter().map(|(i, _, r)| (*i, *r));
        for (_, r) in now.chain(old).filter(|(i, _)| self.honest.contains(i)) {
            for (k, n) in r.by_kind() {
                *sum.entry(k).or_default() += n;
            }
        }
        sum
    }

    /// A mesh count over every router (the liars' cores are honest) and
    /// all their lives.
    fn mesh_sum(&self, f: impl Fn(&MeshCounters) -> u64) -> u64 {
        let now: u64 = self.sim.nodes.iter().map(|n| f(&n.mesh.counters)).sum();
        now + self.retired.iter().map(|(_, c, _)| f(c)).sum::<u64>()
    }

    /// rmpeer, by one live router, of a crashed router that is gone for
    /// good, once every live router has heard all it said (the operator
    /// contract of rmpeer) and none can reach it.
    fn rmpeer(&mut self, dead: usize) {
        let seed = self.seed;
        let (dead_ring, _) = state_of(&self.sim, dead, seed).expect("the dead router saved state");
        let live = self.live();
        let heard = live.iter().all(|l| {
            let mut r = self.sim.nodes[*l]
                .mesh
                .channels()
                .ipam()
                .alloc()
                .ring()
                .clone();
            r.merge(&dead_ring).is_ok_and(|o| !o.changed)
        });
        if !heard {
            return;
        }
        // The operator asks every router (as a deleted Node does); every
        // live router that owns space signs, and the signatures gather by
        // gossip until more than half of the owners signed.
        let name = self.sim.nodes[dead].name;
        let mut signed = 0;
        for by in live {
            let r = self.sim.with_node(by, |m, _| {
                assert!(
                    !m.is_reachable(name),
                    "rmpeer of a reachable router; seed {seed}"
                );
                m.channels_mut().sign_removal(name)
            });
            signed += usize::from(r.is_ok());
        }
        assert!(
            signed > 0,
            "nobody could sign the removal of {dead}; seed {seed}"
        );
        self.removed.insert(dead);
        self.bump("rmpeers");
    }

    /// Whether every live honest router holds the same ring.
    fn rings_agree(&self) -> bool {
        let rings: BTreeSet<Vec<(u32, PeerName, u32)>> = self
            .live()
            .into_iter()
            .filter(|i| self.honest.contains(i))
            .map(|i| {
                let ring = self.sim.nodes[i].mesh.channels().ipam().alloc().ring();
                ring.entries()
                    .map(|(t, e)| (t, e.owner, e.version))
                    .collect()
            })
            .collect();
        rings.len() == 1
    }
}

/// The story both simulations tell, with `liars` lying all along until
/// the last healing. Returns the world at the end for the caller's checks.
fn scenario(seed: u64, liars: &[usize]) -> World {
    let mut w = World::new(seed, liars);
    // Consensus among the five voters, then pods everywhere: the observers
    // get their space by donation.
    w.run_for(Duration::from_secs(40));
    assert!(
        w.sim.nodes[0]
            .mesh
            .channels()
            .ipam()
            .alloc()
            .ring()
            .is_seeded(),
        "the voters agreed on a ring; seed {seed}"
    );

    // A partition into two halves; pods keep coming on both sides.
    let group: Vec<usize> = (0..ROUTERS).map(|i| usize::from(i % 2 == 1)).collect();
    w.sim.partition(group);
    w.run_for(Duration::from_secs(30));
    w.sim.heal();
    w.run_for(Duration::from_secs(20));

    // Crashes: five routers, among them a voter; three come back from
    // what they saved, two are gone for good.
    let crashed = [3usize, 11, 24, 37, 48];
    let mut before: BTreeMap<usize, BTreeMap<String, u32>> = BTreeMap::new();
    for &i in &crashed {
        // Its pods keep running: their addresses stay held (on disk).
        let (_, allocs) = state_of(&w.sim, i, seed).expect("a running router");
        before.insert(i, allocs.into_iter().collect());
        w.sim.crash(i);
    }
    w.run_for(Duration::from_secs(15));
    for &i in &crashed[..3] {
        w.restart(i);
        let ch = w.sim.nodes[i].mesh.channels();
        let after: BTreeMap<String, u32> = ch
            .ipam()
            .alloc()
            .allocations()
            .map(|(k, a)| (k.to_owned(), a))
            .collect();
        assert_eq!(
            after, before[&i],
            "router {i} restarts with every allocation it had; seed {seed}"
        );
    }
    for &i in &crashed[3..] {
        w.keys[i].clear();
    }
    w.run_for(Duration::from_secs(20));

    // The two gone for good are removed once all they said is known.
    for &dead in &crashed[3..] {
        for _ in 0..60 {
            w.rmpeer(dead);
            if w.removed.contains(&dead) {
                break;
            }
            w.run_for(Duration::from_secs(1));
        }
        assert!(
            w.removed.contains(&dead),
            "router {dead} could be removed; seed {seed}"
        );
    }
    // Another partition while the heirs take over, then healing for good.
    let group: Vec<usize> = (0..ROUTERS).map(|i| usize::from(i < ROUTERS / 3)).collect();
    w.sim.partition(group);
    w.run_for(Duration::from_secs(20));
    // The liars stop (and keep running honestly); the network heals.
    w.lying = false;
    w.sim.heal();
    let mut agreed = false;
    for _ in 0..120 {
        w.run_for(Duration::from_secs(1));
        if w.rings_agree() {
            agreed = true;
            break;
        }
    }
    assert!(
        agreed,
        "rings still differ 120 s after healing; seed {seed}"
    );

    // The removed routers own nothing any more; donations really happened.
    let ring = w.sim.nodes[0].mesh.channels().ipam().alloc().ring().clone();
    let owners = ring.ownership();
    for &dead in &crashed[3..] {
        let name = w.sim.nodes[dead].name;
        assert!(
            !owners.contains_key(&name),
            "removed router {dead} still owns {:?}; seed {seed}",
            owners.get(&name)
        );
    }
    let observers_with_space = (VOTERS..ROUTERS)
        .filter(|i| owners.contains_key(&w.sim.nodes[*i].name))
        .count();
    assert!(
        observers_with_space >= 10,
        "only {observers_with_space} observers got space by donation; seed {seed}"
    );
    let total: u64 = owners.values().sum();
    assert_eq!(
        total,
        range().len(),
        "the whole range is owned; seed {seed}"
    );
    // Every honest router that ever owned space still does.
    for &i in &w.honest {
        if w.removed.contains(&i) {
            continue;
        }
        let name = w.sim.nodes[i].name;
        assert!(
            w.askers[i].is_empty() || owners.contains_key(&name) || w.owned[i].is_empty(),
            "honest router {i} owns nothing at the end; seed {seed}"
        );
    }
    println!(
        "seed {seed}: {:?}, {observers_with_space} observers own space, {} s virtual",
        w.stats,
        w.sim.elapsed().as_secs()
    );
    w
}

#[test]
fn fifty_routers_share_the_range_through_loss_partitions_crashes_and_rmpeer() {
    for seed in seeds(&[101, 102, 103]) {
        scenario(seed, &[]);
    }
}

/// Five of the fifty lie, all along the story above (loss, duplication,
/// two partitions, crashes, restarts, rmpeer), and stop before the last
/// healing. Each is an admitted observer that runs the honest channel
/// (asks for space, gets it, donates it) and besides, every virtual second,
/// on every session:
///
/// - the mesh lies of `weft_tests::byzantine::lie` (forged topology
///   entries, `u64::MAX` versions, equivocation, stuffing with 200 fake
///   peers, channel messages under others' names, storms, looped unicasts);
/// - forged removals of an honest router: certificates with its own valid
///   signature (a minority: all the liars together stay fewer than half of
///   the owners), a made-up key's signature under the victim's public key
///   ("it leaves"), a bit-flipped one, and a valid one by a key that owns
///   nothing; the victim is listed in `removed` too (ignored on the wire);
/// - consensus claims in an honest voter's name, signed by the liar or not
///   at all, from the start (before the ring is seeded) on;
/// - the neighbour's own ring with all its ranges given to the liar, to
///   that neighbour alone;
/// - space requests under an honest router's name, signed by a made-up
///   key, ten minutes stale, or for another cluster;
/// - free-space hints for an honest owner signed by the liar (full, or
///   with all the space: which would steer who asks whom);
/// - payloads that do not decode.
///
/// Checked all along, besides the honest simulation's invariants: no
/// honest router is removed anywhere, and an honest router's space leaves
/// it only for a router that asked it for space. At the end: the honest
/// rings agree, every honest router that owned space still does, and every
/// forgery that arrived was counted where it arrived (exactly, where one
/// message makes one count).
///
/// Not covered, by design or not yet:
/// - forged ranges sent to a third party: ring entries are not signed, so
///   a liar can give away anyone's range to routers other than its owner
///   (docs/ring-signing.md);
/// - a lying voter: the seeding consensus is crash-fault tolerant Paxos,
///   which a lying voter can break (the liars are observers);
/// - a majority of owners may remove anyone (that is the rule).
#[test]
fn byzantine_routers_cannot_remove_take_or_ask_in_anothers_name() {
    for seed in seeds(&[141]) {
        let started = Instant::now();
        let liars = [8, 17, 26, 33, 42];
        let w = scenario(seed, &liars);
        let ops = w.ops();
        let r = w.refused();
        let (l, il) = (&w.lies, &w.ipam_lies);
        let report = format!("{l:?}, {il:?}, refused {r:?}");
        let forged = |f: fn(&weft_mesh::Forged) -> u64| w.mesh_sum(|c| f(&c.forged));
        assert_eq!(
            forged(|f| f.topology_signature),
            l.entry_signature as u64,
            "{report}; seed {seed}"
        );
        assert_eq!(
            forged(|f| f.topology_form),
            l.entry_form as u64,
            "{report}; seed {seed}"
        );
        assert_eq!(
            forged(|f| f.channel_signature),
            l.channel_signature as u64,
            "{report}; seed {seed}"
        );
        assert_eq!(
            forged(|f| f.channel_source),
            l.channel_source as u64,
            "{report}; seed {seed}"
        );
        assert!(
            w.mesh_sum(|c| c.equivocations) > 0,
            "no equivocation noticed; seed {seed}"
        );
        assert!(
            w.mesh_sum(|c| c.channel_errors) >= il.garbage,
            "{report}; seed {seed}"
        );
        assert_eq!(
            r["ipam_ring_takes_ours"], il.ranges,
            "{report}; seed {seed}"
        );
        assert_eq!(r["ipam_space_request"], il.space, "{report}; seed {seed}");
        assert_eq!(r["ipam_free_hint"], il.hints, "{report}; seed {seed}");
        assert!(il.hints > 0, "{report}; seed {seed}");
        let removal = r["ipam_removal_sig"] + r["ipam_removal_signer"] + r["ipam_removal_target"];
        assert!(removal >= il.removals, "{report}; seed {seed}");
        assert!(
            r["ipam_removal_sig"] > 0 && r["ipam_removal_signer"] > 0,
            "{report}; seed {seed}"
        );
        // Before seeding they count as `claims`, after it as `late_claims`
        // (with honest routers' late ones): whether any arrive before the
        // voters seed depends on the seed.
        assert!(
            r["ipam_claims"] + r["ipam_late_claims"] >= il.claims,
            "{report}; seed {seed}"
        );
        assert!(il.minority_signed > 0, "{report}; seed {seed}");
        assert!(
            ops >= 100_000,
            "only {ops} operations ({:?}, {report}); seed {seed}",
            w.stats
        );
        println!(
            "seed {seed}: {ops} operations in {:.1} s: {report}",
            started.elapsed().as_secs_f64()
        );
    }
}
