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
use weft_ipam_crdt::{AddrRange, AllocError, Init, IpamChannel, IpamError, Persisted, Ring};
use weft_peer_proto::codec::decode_ipam;
use weft_peer_proto::ipam::IpamMsg;
use weft_peer_proto::sign::{KeyPair, Signer};
use weft_peer_proto::{Frame, PeerName, Verb};
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

fn make_sim(seed: u64) -> Sim<IpamChannel> {
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
    sim.inspect_sends(Box::new(move |i, name, frame, disk| {
        sent_is_saved(seed, i, name, frame, disk)
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
}

impl World {
    fn new(seed: u64) -> Self {
        let mut sim = make_sim(seed);
        sim.add_node(vec![]);
        for i in 1..ROUTERS {
            // Each knows the first router and one other it heard of.
            let j = sim.rng().random_range(0..i);
            sim.add_node(vec![addr_of(0), addr_of(j)]);
        }
        World {
            seed,
            sim,
            removed: BTreeSet::new(),
            keys: vec![Vec::new(); ROUTERS],
            next_key: 0,
            asked_at: vec![None; ROUTERS],
            stats: BTreeMap::new(),
        }
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
                if ask.is_some() {
                    self.asked_at[i] = Some(now);
                    self.bump("space requests");
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

    fn run_for(&mut self, d: Duration) {
        let until = self.sim.now + d;
        while self.sim.now < until {
            let step = self.sim.now + Duration::from_millis(250);
            self.sim.run_until(step);
            self.workload();
            self.check();
        }
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

    /// Whether every live router holds the same ring.
    fn rings_agree(&self) -> bool {
        let rings: BTreeSet<Vec<(u32, PeerName, u32)>> = self
            .live()
            .into_iter()
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

fn scenario(seed: u64) {
    let mut w = World::new(seed);
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
        w.sim.restart(i);
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
    println!(
        "seed {seed}: {:?}, {observers_with_space} observers own space, {} s virtual",
        w.stats,
        w.sim.elapsed().as_secs()
    );
}

#[test]
fn fifty_routers_share_the_range_through_loss_partitions_crashes_and_rmpeer() {
    for seed in seeds(&[101, 102, 103]) {
        scenario(seed);
    }
}
