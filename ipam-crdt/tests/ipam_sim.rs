//! Seeded simulation of many allocators exchanging rings over a lossy,
//! duplicating, reordering network with partitions, crashes, restarts from
//! snapshots, joins and removals. After every operation: no address is held
//! by two containers, and every allocator's invariants hold. After healing:
//! every ring agrees and every address is free, held or reserved.
//!
//! `WEFT_IPAM_SIM_OPS` sets the operations per seed (default 10 000 x 3
//! seeds in CI; the long run is `WEFT_IPAM_SIM_OPS=100000`), `WEFT_SIM_SEED`
//! one seed.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

mod common;
use common::Rng;
use weft_ipam_crdt::{AddrRange, AllocError, Allocator, PeerName, Ring, Snapshot};
use weft_peer_proto::sign::{KeyPair, Signer};

/// Router `i`'s identity key; its name is the key's.
fn key_of(i: usize) -> KeyPair {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
    KeyPair::from_seed(seed)
}

/// The compaction horizon, in steps: long against a partition (about 100
/// steps) or a message's delay (30), short against a run.
const HORIZON: u64 = 2_000;

#[derive(Clone)]
enum Msg {
    Ring(Ring),
    Ask(PeerName),
}

struct Node {
    name: PeerName,
    alloc: Option<Allocator>,
    snap: Snapshot,
    removed: bool,
    crashed_at: u64,
    next_key: u64,
}

impl Node {
    /// A router starting with `ring` (the seed ring, or an empty one to join).
    fn start(name: PeerName, ring: Ring) -> Self {
        let a = Allocator::new(name, ring);
        let snap = a.snapshot();
        Node {
            name,
            alloc: Some(a),
            snap,
            removed: false,
            crashed_at: 0,
            next_key: 0,
        }
    }
}

struct World {
    rng: Rng,
    seed: u64,
    now: u64,
    nodes: Vec<Node>,
    keys: Vec<KeyPair>,
    index: HashMap<PeerName, usize>,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    msgs: HashMap<u64, (usize, Msg)>,
    seq: u64,
    group: Option<Vec<u8>>,
    range: AddrRange,
    /// Routers changed since the last check (each checked in full).
    touched: Vec<usize>,
    stats: BTreeMap<&'static str, u64>,
}

impl World {
    fn bump(&mut self, k: &'static str) {
        *self.stats.entry(k).or_default() += 1;
    }

    fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].alloc.is_some())
            .collect()
    }

    fn send(&mut self, from: usize, to: usize, m: Msg) {
        if from == to
            || self.group.as_ref().is_some_and(|g| g[from] != g[to])
            || self.rng.chance(0.10)
        {
            self.bump("lost");
            return;
        }
        let copies = if self.rng.chance(0.05) { 2 } else { 1 };
        for _ in 0..copies {
            self.seq += 1;
            let at = self.now + 1 + self.rng.below(30);
            self.queue.push(Reverse((at, self.seq)));
            self.msgs.insert(self.seq, (to, m.clone()));
        }
    }

    fn persist(&mut self, i: usize) {
        self.touched.push(i);
        if let Some(a) = &self.nodes[i].alloc {
            self.nodes[i].snap = a.snapshot();
        }
    }

    fn gossip(&mut self, i: usize, fanout: usize) {
        let Some(ring) = self.nodes[i].alloc.as_ref().map(|a| a.ring().clone()) else {
            return;
        };
        for _ in 0..fanout {
            let to = self.rng.below(self.nodes.len() as u64) as usize;
            self.send(i, to, Msg::Ring(ring.clone()));
        }
    }

    fn deliver(&mut self) {
        while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
            if at > self.now {
                break;
            }
            self.queue.pop();
            let Some((to, m)) = self.msgs.remove(&seq) else {
                continue;
            };
            if self.group.as_ref().is_some_and(|g| g.get(to).is_none()) {
                continue;
            }
            let Some(a) = self.nodes[to].alloc.as_mut() else {
                continue;
            };
            match m {
                Msg::Ring(r) => match a.clone().merge(&r) {
                    Ok(out) if out.conflicts > 0 => {
                        let ours: BTreeMap<u32, _> = a.ring().entries().collect();
                        let clash: Vec<_> = r
                            .entries()
                            .filter_map(|(t, e)| {
                                ours.get(&t)
                                    .filter(|o| o.version == e.version && o.owner != e.owner)
                                    .map(|o| (t, *o, e))
                            })
                            .collect();
                        let removed = a.ring().removed().clone();
                        panic!(
                            "ring conflict at node {to} (t={}): {clash:?}; removed {removed:?}; seed {}",
                            self.now, self.seed
                        );
                    }
                    Err(e) => panic!("merge refused at node {to}: {e}; seed {}", self.seed),
                    Ok(_) => match a.merge(&r) {
                        Ok(out) => {
                            self.persist(to);
                            if out.changed {
                                self.gossip(to, 1);
                            }
                        }
                        Err(e) => panic!("merge refused at node {to}: {e}; seed {}", self.seed),
                    },
                },
                Msg::Ask(from) => {
                    if a.donate(from).is_some() {
                        let ring = a.ring().clone();
                        self.bump("donations");
                        self.persist(to);
                        let from_idx = self.index[&from];
                        self.send(to, from_idx, Msg::Ring(ring));
                        self.gossip(to, 1);
                    }
                }
            }
        }
    }

    /// No address held by two containers, anywhere (live nodes, and the
    /// persisted allocations of crashed ones, whose containers still run).
    fn check(&self, full: bool) {
        let mut holders: HashMap<u32, String> = HashMap::new();
        for n in self.nodes.iter().filter(|n| !n.removed) {
            let allocs: Vec<(String, u32)> = match &n.alloc {
                Some(a) => {
                    if full {
                        a.check()
                            .unwrap_or_else(|e| panic!("{}: {e}; seed {}", n.name, self.seed));
                    }
                    assert!(
                        a.lost().is_empty(),
                        "{} lost allocations {:?}; seed {}",
                        n.name,
                        a.lost(),
                        self.seed
                    );
                    a.allocations().map(|(k, v)| (k.to_owned(), v)).collect()
                }
                None => n.snap.allocs.clone(),
            };
            for (k, addr) in allocs {
                if let Some(other) = holders.insert(addr, k.clone()) {
                    panic!("address {addr} held by {other} and {k}; seed {}", self.seed);
                }
            }
        }
    }

    fn step(&mut self) {
        self.now += 1;
        self.deliver();
        let live = self.live();
        let pick = |rng: &mut Rng, v: &[usize]| v[rng.below(v.len() as u64) as usize];
        let roll = self.rng.below(1000);
        match roll {
            0..=399 if !live.is_empty() => {
                let i = pick(&mut self.rng, &live);
                let key = format!("{}-c{}", self.nodes[i].name, self.nodes[i].next_key);
                self.nodes[i].next_key += 1;
                let Some(a) = self.nodes[i].alloc.as_mut() else {
                    return;
                };
                match a.allocate(&key) {
                    Ok(_) => self.bump("allocated"),
                    Err(AllocError::NoSpace) | Err(AllocError::NotReady) => {
                        // Ask the peer that owns the most, as far as we know.
                        let own = a.ring().ownership();
                        let me = a.me();
                        self.bump("no_space");
                        if let Some((donor, _)) = own
                            .iter()
                            .filter(|(p, _)| **p != me)
                            .max_by_key(|(_, n)| **n)
                        {
                            let d = self.index[donor];
                            self.send(i, d, Msg::Ask(me));
                        } else {
                            // Not even a ring yet: ask anyone.
                            let d = self.rng.below(self.nodes.len() as u64) as usize;
                            self.send(i, d, Msg::Ask(me));
                        }
                    }
                    Err(e) => panic!("allocate at {i}: {e}; seed {}", self.seed),
                }
                self.persist(i);
            }
            400..=649 if !live.is_empty() => {
                let i = pick(&mut self.rng, &live);
                let Some(a) = self.nodes[i].alloc.as_mut() else {
                    return;
                };
                let keys: Vec<String> = a.allocations().map(|(k, _)| k.to_owned()).collect();
                if !keys.is_empty() {
                    let k = &keys[self.rng.below(keys.len() as u64) as usize];
                    a.release(k);
                    self.bump("released");
                    self.persist(i);
                }
            }
            650..=899 if !live.is_empty() => {
                let i = pick(&mut self.rng, &live);
                self.gossip(i, 2);
            }
            900..=929 if live.len() > self.nodes.len() / 2 => {
                let i = pick(&mut self.rng, &live);
                self.persist(i);
                self.nodes[i].alloc = None;
                self.nodes[i].crashed_at = self.now;
                self.bump("crashes");
            }
            930..=959 => {
                let crashed: Vec<usize> = (0..self.nodes.len())
                    .filter(|i| self.nodes[*i].alloc.is_none() && !self.nodes[*i].removed)
                    .collect();
                // A router down for longer than the compaction horizon
                // does not come back with its old ring (docs/trust.md, "The
                // horizon's one assumption"): it stays down, for rmpeer.
                let crashed: Vec<usize> = crashed
                    .into_iter()
                    .filter(|i| self.now - self.nodes[*i].crashed_at < HORIZON)
                    .collect();
                if !crashed.is_empty() {
                    let i = pick(&mut self.rng, &crashed);
                    let n = &mut self.nodes[i];
                    n.alloc = Some(Allocator::restore(n.name, n.snap.clone()));
                    self.bump("restarts");
                    self.gossip(i, 2);
                }
            }
            960..=969 if self.nodes.len() < 80 => {
                self.join();
                if let Some(g) = self.group.as_mut() {
                    g.push(0);
                }
                self.bump("joins");
            }
            970..=979 => self.remove_quiescent(),
            980..=989 => {
                if self.group.is_some() {
                    self.group = None;
                    self.bump("heals");
                } else {
                    let g: Vec<u8> = (0..self.nodes.len())
                        .map(|_| self.rng.below(2) as u8)
                        .collect();
                    self.group = Some(g);
                    self.bump("partitions");
                }
            }
            990..=999 if !live.is_empty() => {
                // Compaction, as the channel runs it on every tick: our
                // tokens, tombstones past the horizon, certificates.
                let i = pick(&mut self.rng, &live);
                let now = self.now;
                if let Some(a) = self.nodes[i].alloc.as_mut()
                    && a.compact(now, now, HORIZON)
                {
                    self.bump("compactions");
                    self.persist(i);
                }
            }
            _ => {}
        }
    }

    /// `rmpeer` of a crashed peer that is gone for good: only once everything
    /// it ever said has reached every live router (as when a deleted node
    /// died long before), which is the operator contract of rmpeer.
    fn remove_quiescent(&mut self) {
        let live = self.live();
        let candidates: Vec<usize> = (0..self.nodes.len())
            .filter(|i| {
                let n = &self.nodes[*i];
                n.alloc.is_none() && !n.removed && self.now - n.crashed_at > 100
            })
            .filter(|i| {
                live.iter().all(|l| {
                    let Some(a) = &self.nodes[*l].alloc else {
                        return true;
                    };
                    let mut r = a.ring().clone();
                    r.merge(&self.nodes[*i].snap.ring)
                        .map(|o| !o.changed)
                        .unwrap_or(false)
                })
            })
            .collect();
        if candidates.is_empty() || live.is_empty() {
            return;
        }
        let x = candidates[self.rng.below(candidates.len() as u64) as usize];
        self.nodes[x].removed = true;
        let name = self.nodes[x].name;
        // The operator asks every router; each live one that owns space
        // signs, and the signatures gather by gossip into a certificate.
        for by in live {
            let key = &self.keys[by];
            if let Some(a) = self.nodes[by].alloc.as_mut()
                && a.sign_removal(key, name).is_ok()
            {
                self.persist(by);
                self.gossip(by, 3);
            }
        }
        self.bump("removals");
    }

    /// A router with nothing joins.
    fn join(&mut self) {
        let i = self.nodes.len();
        let key = key_of(i);
        let name = key.name();
        self.keys.push(key);
        self.index.insert(name, i);
        self.nodes.push(Node::start(name, Ring::new(self.range)));
    }
}

fn run(seed: u64, ops: u64) {
    let range: AddrRange = "10.32.0.0/22".parse().expect("range");
    let seeds: Vec<PeerName> = (0..10).map(|i| key_of(i).name()).collect();
    let ring = Ring::seeded(range, &seeds, 42);
    let mut w = World {
        rng: Rng::new(seed),
        seed,
        now: 0,
        nodes: Vec::new(),
        keys: Vec::new(),
        index: HashMap::new(),
        queue: BinaryHeap::new(),
        msgs: HashMap::new(),
        seq: 0,
        group: None,
        range,
        stats: BTreeMap::new(),
        touched: Vec::new(),
    };
    for i in 0..50 {
        // Ten seed routers start with the ring; forty join with nothing.
        w.join();
        if i < 10 {
            w.nodes[i] = Node::start(w.nodes[i].name, ring.clone());
        }
    }
    for op in 0..ops {
        w.step();
        // After every operation: no address held twice anywhere, and every
        // router the operation (or a delivered message) changed passes its
        // own invariants; everyone in full every 100 operations too.
        w.check(op % 100 == 0);
        let touched = std::mem::take(&mut w.touched);
        for i in touched {
            if let Some(a) = &w.nodes[i].alloc {
                a.check().unwrap_or_else(|e| {
                    panic!("{} after op {op}: {e}; seed {seed}", w.nodes[i].name)
                });
            }
        }
    } // Heal: reconnect, restart every crashed router, gossip until quiet.
    w.group = None;
    for i in 0..w.nodes.len() {
        if w.nodes[i].alloc.is_none() && !w.nodes[i].removed {
            let n = &mut w.nodes[i];
            n.alloc = Some(Allocator::restore(n.name, n.snap.clone()));
        }
    }
    for round in 0..200 {
        w.now += 40;
        w.deliver();
        let live = w.live();
        // Full exchange without loss: everyone sends its ring to everyone.
        let rings: Vec<(usize, Ring)> = live
            .iter()
            .filter_map(|i| w.nodes[*i].alloc.as_ref().map(|a| (*i, a.ring().clone())))
            .collect();
        let mut changed = false;
        for l in &live {
            for (_, r) in &rings {
                if let Some(a) = w.nodes[*l].alloc.as_mut() {
                    changed |= a.merge(r).expect("same cluster").changed;
                }
            }
        }
        w.check(true);
        if !changed && round > 0 {
            break;
        }
    }
    let live = w.live();
    let first = w.nodes[live[0]]
        .alloc
        .as_ref()
        .map(|a| a.ring().clone())
        .expect("live");
    for l in &live {
        let a = w.nodes[*l].alloc.as_ref().expect("live");
        // Who owns what agrees. Removed sets may differ only in peers that
        // own nothing (a certificate that reached some routers after the
        // heir's entries); compaction forgets those after the horizon.
        let entries = |r: &Ring| r.entries().collect::<Vec<_>>();
        assert!(
            entries(a.ring()) == entries(&first),
            "ring of {} differs after healing; seed {seed}",
            a.me()
        );
        let own = first.ownership();
        let differ: Vec<_> = a
            .ring()
            .removed()
            .symmetric_difference(first.removed())
            .filter(|p| own.contains_key(p))
            .collect();
        assert!(
            differ.is_empty(),
            "{} and {} disagree on the removal of owners {differ:?}; seed {seed}",
            a.me(),
            live[0]
        );
    }
    // Nothing leaked: every address is owned by a live router (removed ones'
    // space was inherited) and is free, held or reserved there (check()).
    let own = first.ownership();
    for p in own.keys() {
        let n = &w.nodes[w.index[p]];
        assert!(
            !n.removed,
            "removed peer {p} still owns space after healing; seed {seed}"
        );
    }
    assert_eq!(own.values().sum::<u64>(), range.len(), "seed {seed}");
    println!(
        "seed {seed}: {ops} ops, {} routers at the end, {:?}",
        w.nodes.len(),
        w.stats
    );
}

#[test]
fn no_address_is_ever_held_twice() {
    let ops: u64 = std::env::var("WEFT_IPAM_SIM_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let seeds: Vec<u64> = match std::env::var("WEFT_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("WEFT_SIM_SEED is a number")],
        Err(_) => vec![1, 2, 3],
    };
    for seed in seeds {
        run(seed, ops);
    }
}
