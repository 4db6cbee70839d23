//! A seeded simulation of signed block ownership (`ledger.rs`) with lying
//! routers: honest routers give blocks to each other, crash, are removed by
//! a majority and inherited, join, and gossip their ledgers over a network
//! that loses messages and splits in two; liars forge gifts of others'
//! blocks, inheritances without a removal, steps at versions nobody
//! reached, give their own blocks twice, sign removals of live routers with
//! their own keys and with sybil keys they gave blocks to, and send
//! different routers different parts of what they hold.
//!
//! Checked after every operation:
//! - no block is held (owned in one's own view for the settle time, so
//!   allocated from) by two honest routers, but where both got it from a
//!   liar's double gift that has not met its twin yet (the documented
//!   limit: a lying owner can give its own space twice until the two steps
//!   meet; ring-signing.md), counted as `double_gifts_in_flight` (per
//!   operation and block);
//! - no live honest router is removed in any honest router's view, and a
//!   live honest router never loses a block it held, but to a dispute (a
//!   liar's double gift meeting its twin, or a removed router's last gift
//!   meeting its heir's inheritance: the block is then held by nobody);
//! - no forged step is ever kept by an honest router, and no step a liar
//!   made about a state that never was is ever applied.
//!
//! At the end the network heals and the honest routers' views must agree
//! (and be what a whole fold of their steps makes), every liar's double
//! gift whose two steps both spread is disputed everywhere, and forgeries
//! and unlinkable steps sent were counted by their receivers. Folding old
//! steps into the base is not simulated: it is not sound yet (ledger.rs).
//!
//! `WEFT_LEDGER_SIM_OPS` sets the operations per seed (default 5 000 x 3
//! seeds, about 45 s; 20 000 for seed 1 takes about 2 minutes),
//! `WEFT_SIM_SEED` one seed. A failure prints its seed.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::Rng;
use weft_ipam_crdt::ledger::{Ledger, LedgerMerge, Step, StepBody, StepKind, View};
use weft_ipam_crdt::{AddrRange, PeerName};
use weft_peer_proto::sign::{KeyPair, Signer};

const HONEST: usize = 46;
const LIARS: usize = 4;
const RANGE: AddrRange = AddrRange {
    start: 0x0a20_0000,
    end: 0x0a20_0000 + 2048,
};
const CLUSTER: u64 = 42;
/// Virtual ms per operation.
const TICK_MS: u64 = 100;
/// How long a router owns a block before it allocates from it.
const SETTLE_MS: u64 = 30_000;
/// How long after a crash the live routers remove the crashed one.
const RECLAIM_AFTER_MS: u64 = 120_000;
/// Steps older than this are folded into the base, where folding is on.
const HORIZON_MS: u64 = 600_000;
const FOLD: bool = false;

fn key(i: u64) -> KeyPair {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&(i + 1).to_le_bytes());
    seed[8] = 0x1e;
    KeyPair::from_seed(seed)
}

struct Router {
    id: u64,
    key: KeyPair,
    ledger: Ledger,
    live: bool,
    liar: bool,
    /// When each block we own became ours in our view.
    since: BTreeMap<u32, u64>,
    /// Blocks we gave away (so losing them is no loss).
    gave: BTreeSet<u32>,
    side: bool,
}

impl Router {
    fn name(&self) -> PeerName {
        self.key.name()
    }

    fn view(&self) -> &View {
        self.ledger.view()
    }

    fn refresh(&mut self, now: u64) {
        let me = self.name();
        let mine: BTreeSet<u32> = self.ledger.view().blocks_of(me).into_iter().collect();
        self.since.retain(|b, _| mine.contains(b));
        for b in mine {
            self.since.entry(b).or_insert(now);
        }
    }

    fn held(&self, now: u64) -> impl Iterator<Item = u32> + '_ {
        self.since
            .iter()
            .filter(move |(_, t)| now.saturating_sub(**t) >= SETTLE_MS)
            .map(|(b, _)| *b)
    }
}

#[derive(Default, Debug)]
struct Tally {
    forged_sent: u64,
    forged_dropped: u64,
    unlinked_sent: u64,
    unlinked_dropped: u64,
    double_gifts: u64,
    double_gifts_in_flight: u64,
    lost_to_disputes: u64,
    removals: u64,
    joins: u64,
    gifts: u64,
}

struct Sim {
    seed: u64,
    rng: Rng,
    now: u64,
    routers: Vec<Router>,
    sybils: Vec<KeyPair>,
    next_key: u64,
    partitioned: bool,
    /// Crashed routers not removed yet, and when they crashed.
    crashed: Vec<(PeerName, u64)>,
    /// Bodies of forged steps (bad signer) and of steps about states that
    /// never were: none may be kept, resp. applied, by an honest router.
    forged: BTreeSet<StepBody>,
    unlinkable: BTreeSet<StepBody>,
    /// The liars' double gifts, as pairs of bodies.
    doubles: Vec<(StepBody, StepBody)>,
    tally: Tally,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let keys: Vec<KeyPair> = (0..(HONEST + LIARS) as u64).map(key).collect();
        let names: Vec<PeerName> = keys.iter().map(|k| k.name()).collect();
        let routers = keys
            .into_iter()
            .enumerate()
            .map(|(i, key)| {
                let id = i as u64;
                let ledger = Ledger::seeded(RANGE, &names, CLUSTER);
                let mut r = Router {
                    id,
                    key,
                    ledger,
                    live: true,
                    liar: i >= HONEST,
                    since: BTreeMap::new(),
                    gave: BTreeSet::new(),
                    side: false,
                };
                // Seed blocks are settled: the mesh starts from them.
                r.refresh(0);
                r
            })
            .collect();
        Sim {
            seed,
            rng: Rng::new(seed),
            now: SETTLE_MS,
            routers,
            sybils: Vec::new(),
            next_key: (HONEST + LIARS) as u64,
            partitioned: false,
            crashed: Vec::new(),
            forged: BTreeSet::new(),
            unlinkable: BTreeSet::new(),
            doubles: Vec::new(),
            tally: Tally::default(),
        }
    }

    fn pick(&mut self, f: impl Fn(&Router) -> bool) -> Option<usize> {
        let c: Vec<usize> = (0..self.routers.len())
            .filter(|i| f(&self.routers[*i]))
            .collect();
        (!c.is_empty()).then(|| c[self.rng.below(c.len() as u64) as usize])
    }

    fn reachable(&mut self, a: usize, b: usize) -> bool {
        let (ra, rb) = (&self.routers[a], &self.routers[b]);
        ra.live
            && rb.live
            && a != b
            && !(self.partitioned && ra.side != rb.side)
            && !self.rng.chance(0.05)
    }

    /// `from` sends `to` its ledger (or, where `whole` is false, only
    /// `extra`: a liar leaving out what it holds) and a liar's `extra` steps.
    fn deliver(&mut self, from: usize, to: usize, whole: bool, extra: &[Step]) {
        if !self.reachable(from, to) {
            return;
        }
        let (now, seed) = (self.now, self.seed);
        let (sent, r) = pair(&mut self.routers, from, to);
        let mut out = if whole {
            r.ledger.merge(&sent.ledger)
        } else {
            LedgerMerge::default()
        };
        if !extra.is_empty() {
            let none: [(PeerName, Vec<&weft_peer_proto::sign::Sig>); 0] = [];
            let o = r.ledger.receive(extra.iter().copied(), none);
            out.forged += o.forged;
            out.unlinked += o.unlinked;
            out.added += o.added;
        }
        if !r.liar {
            self.tally.forged_dropped += u64::from(out.forged);
            self.tally.unlinked_dropped += u64::from(out.unlinked);
        }
        let r = &mut self.routers[to];
        r.refresh(now);
        if !r.liar {
            for s in r.ledger.steps() {
                assert!(
                    !self.forged.contains(&s.body),
                    "{} keeps a forged step {:?}; seed {seed}",
                    r.name(),
                    s.body
                );
            }
            for s in &r.view().applied {
                assert!(
                    !self.unlinkable.contains(s),
                    "{} applied a step about a state that never was {s:?}; seed {seed}",
                    r.name()
                );
            }
        }
    }

    fn gossip(&mut self) {
        let Some(from) = self.pick(|r| r.live) else {
            return;
        };
        let Some(to) = self.pick(|r| r.live && !r.liar) else {
            return;
        };
        if !self.routers[from].liar {
            self.deliver(from, to, true, &[]);
            return;
        }
        // A liar sends what it holds or only its lies (what it left out
        // stays out), and lies.
        let extra = self.lie(from, to);
        let whole = self.rng.below(3) > 0;
        self.deliver(from, to, whole, &extra);
    }

    /// What liar `l` tells `to` besides its ledger.
    fn lie(&mut self, l: usize, to: usize) -> Vec<Step> {
        let lk = key(self.routers[l].id);
        let me = lk.name();
        let view = self.routers[l].view().clone();
        let n = view.blocks.len() as u32;
        let b = self.rng.below(u64::from(n)) as u32;
        let at = view.blocks[b as usize];
        let to_name = self.routers[to].name();
        let count = (1 + self.rng.below(4) as u32).min(n - b);
        let body = |kind, from, from_version, to, at_ms| StepBody {
            at_ms,
            kind,
            first: b,
            count,
            from,
            from_version,
            to,
        };
        match self.rng.below(6) {
            // Another's block given away, signed by the liar.
            0 if at.owner != me => {
                let s = Step::sign(
                    &lk,
                    CLUSTER,
                    body(StepKind::Give, at.owner, at.version, to_name, self.now),
                );
                // Signed by the wrong router: check() refuses it.
                self.forged.insert(s.body);
                self.tally.forged_sent += 1;
                vec![s]
            }
            // An inheritance of a live router's blocks.
            1 if at.owner != me => {
                let s = Step::sign(
                    &lk,
                    CLUSTER,
                    body(StepKind::Inherit, at.owner, at.version, me, self.now),
                );
                if !view.removed.contains(&at.owner) && self.routers_live(at.owner) {
                    self.unlinkable.insert(s.body);
                    self.tally.unlinked_sent += 1;
                }
                vec![s]
            }
            // A gift from a version nobody reached.
            2 => {
                let v = at
                    .version
                    .saturating_add(1 + (self.rng.next() % 1000) as u32);
                let v = if self.rng.chance(0.3) {
                    u32::MAX - 1
                } else {
                    v
                };
                let s = Step::sign(&lk, CLUSTER, body(StepKind::Give, me, v, to_name, self.now));
                self.unlinkable.insert(s.body);
                self.tally.unlinked_sent += 1;
                vec![s]
            }
            // A double gift of its own blocks to two honest routers.
            3 => {
                let mine = view.blocks_of(me);
                let Some(&first) = mine.first() else {
                    return Vec::new();
                };
                let at = view.blocks[first as usize];
                let Some(other) = self.pick(|r| r.live && !r.liar && r.name() != to_name) else {
                    return Vec::new();
                };
                let other_name = self.routers[other].name();
                let mk = |to| StepBody {
                    at_ms: self.now,
                    kind: StepKind::Give,
                    first,
                    count: 1,
                    from: me,
                    from_version: at.version,
                    to,
                };
                let a = Step::sign(&lk, CLUSTER, mk(to_name));
                let c = Step::sign(&lk, CLUSTER, mk(other_name));
                self.doubles.push((a.body, c.body));
                self.tally.double_gifts += 1;
                // The liar forgets both (so it can lie again), and tells
                // each recipient of its own gift only.
                let extra = [c];
                self.deliver(l, other, true, &extra);
                vec![a]
            }
            // Removal signatures for a live honest router, by the liar and
            // by a sybil it gave a block to.
            4 => {
                let Some(v) = self.pick(|r| r.live && !r.liar) else {
                    return Vec::new();
                };
                let victim = self.routers[v].name();
                self.routers[l].ledger.sign_removal(&lk, victim);
                if self.rng.chance(0.3) {
                    let s = key(self.next_key);
                    self.next_key += 1;
                    let mine = view.blocks_of(me);
                    if mine.len() > 1 {
                        let last = mine[mine.len() - 1];
                        self.routers[l]
                            .ledger
                            .give(&lk, last..last + 1, s.name(), self.now);
                    }
                    self.sybils.push(s);
                }
                for s in &self.sybils {
                    self.routers[l].ledger.sign_removal(s, victim);
                }
                let now = self.now;
                self.routers[l].refresh(now);
                Vec::new()
            }
            // Nothing but leaving things out.
            _ => Vec::new(),
        }
    }

    fn is_liar(&self, name: PeerName) -> bool {
        self.routers.iter().any(|r| r.liar && r.name() == name)
    }

    fn routers_live(&self, name: PeerName) -> bool {
        self.routers.iter().any(|r| r.name() == name && r.live)
    }

    fn give(&mut self) {
        let Some(i) = self.pick(|r| r.live && !r.liar && r.since.len() > 1) else {
            return;
        };
        let Some(j) = self.pick(|r| r.live && !r.liar) else {
            return;
        };
        if i == j {
            return;
        }
        let mine: Vec<u32> = self.routers[i].since.keys().copied().collect();
        let k = self.rng.below(mine.len() as u64 - 1) as usize;
        let first = mine[k];
        let len = 1 + self.rng.below(4) as u32;
        let to = self.routers[j].name();
        let now = self.now;
        let r = &mut self.routers[i];
        let key = key(r.id);
        let steps = r.ledger.give(&key, first..first + len, to, now);
        for s in &steps {
            r.gave.extend(s.body.first..s.body.first + s.body.count);
        }
        r.refresh(now);
        self.tally.gifts += steps.len() as u64;
        // The recipient hears of it from the donor now (a donation).
        self.deliver(i, j, true, &[]);
    }

    /// An honest router crashes. The live ones sign its removal only after
    /// `RECLAIM_AFTER_MS` (the operator's rmpeer once its Node is gone, or
    /// `--kube-reclaim-after`), by when what it said has spread.
    fn crash(&mut self) {
        let live = self.routers.iter().filter(|r| r.live && !r.liar).count();
        if live < HONEST * 2 / 3 {
            return;
        }
        let Some(c) = self.pick(|r| r.live && !r.liar) else {
            return;
        };
        self.routers[c].live = false;
        self.crashed.push((self.routers[c].name(), self.now));
    }

    fn reclaim(&mut self) {
        let now = self.now;
        let due: Vec<PeerName> = self
            .crashed
            .iter()
            .filter(|(_, t)| now.saturating_sub(*t) >= RECLAIM_AFTER_MS)
            .map(|(p, _)| *p)
            .collect();
        self.crashed
            .retain(|(_, t)| now.saturating_sub(*t) < RECLAIM_AFTER_MS);
        for victim in due {
            for r in self.routers.iter_mut().filter(|r| r.live && !r.liar) {
                let Router { key, ledger, .. } = r;
                ledger.sign_removal(key, victim);
                r.refresh(now);
            }
            self.tally.removals += 1;
        }
    }

    fn inherit(&mut self) {
        let Some(i) = self.pick(|r| r.live && !r.liar) else {
            return;
        };
        let now = self.now;
        let r = &mut self.routers[i];
        let k = key(r.id);
        if !r.ledger.inherit(&k, now).is_empty() {
            r.refresh(now);
        }
    }

    fn join(&mut self) {
        let k = key(self.next_key);
        self.next_key += 1;
        let Some(first) = self.pick(|r| r.live && !r.liar) else {
            return;
        };
        let mut ledger = Ledger::new(RANGE);
        // A joiner's first contact is honest (the joiner limit).
        ledger.merge(&self.routers[first].ledger);
        let side = self.routers[first].side;
        let id = self.next_key - 1;
        self.routers.push(Router {
            id,
            key: k,
            ledger,
            live: true,
            liar: false,
            since: BTreeMap::new(),
            gave: BTreeSet::new(),
            side,
        });
        self.tally.joins += 1;
    }

    fn check(&mut self) {
        let now = self.now;
        let live: BTreeSet<PeerName> = self
            .routers
            .iter()
            .filter(|r| r.live && !r.liar)
            .map(|r| r.name())
            .collect();
        for r in self.routers.iter().filter(|r| r.live && !r.liar) {
            let v = r.view();
            if let Some(p) = v.removed.iter().find(|p| live.contains(*p)) {
                let sg = r.ledger.removal_signers(*p);
                let mut w: BTreeMap<PeerName, u64> = BTreeMap::new();
                for x in &v.blocks {
                    *w.entry(x.owner).or_default() += 1;
                }
                let live_w: u64 = w
                    .iter()
                    .filter(|(o, _)| live.contains(*o))
                    .map(|(_, n)| n)
                    .sum();
                let removed_w: u64 = w
                    .iter()
                    .filter(|(o, _)| v.removed.contains(*o))
                    .map(|(_, n)| n)
                    .sum();
                let signed_w: u64 = w
                    .iter()
                    .filter(|(o, _)| sg.contains(*o))
                    .map(|(_, n)| n)
                    .sum();
                panic!(
                    "{} (id {}) holds live {p} removed: signers {} ({} liars), signed weight {signed_w}, live honest weight {live_w}, removed owners' weight {removed_w}; seed {}",
                    r.name(),
                    r.id,
                    sg.len(),
                    sg.iter().filter(|s| !live.contains(*s)).count(),
                    self.seed
                );
            }
        }
        let mut holder: BTreeMap<u32, usize> = BTreeMap::new();
        for (i, r) in self.routers.iter().enumerate() {
            if r.liar || !r.live {
                continue;
            }
            for b in r.held(now) {
                if let Some(&j) = holder.get(&b) {
                    let a = self.last_step(i, b);
                    let c = self.last_step(j, b);
                    let liars_double = self.doubles.iter().any(|(x, y)| {
                        (Some(*x) == a && Some(*y) == c) || (Some(*y) == a && Some(*x) == c)
                    });
                    assert!(
                        liars_double,
                        "block {b} held by {} and {} (last steps {a:?} / {c:?}); seed {}",
                        r.name(),
                        self.routers[j].name(),
                        self.seed
                    );
                    self.tally.double_gifts_in_flight += 1;
                } else {
                    holder.insert(b, i);
                }
            }
        }
    }

    /// The step that gave router `i` block `b` in its view.
    fn last_step(&self, i: usize, b: u32) -> Option<StepBody> {
        self.routers[i]
            .view()
            .applied
            .iter()
            .rev()
            .find(|s| (s.first..s.first + s.count).contains(&b))
            .copied()
    }

    /// A live honest router never loses a block it held and did not give.
    fn check_losses(&mut self, before: &[BTreeSet<u32>]) {
        let mut lost_to_disputes = 0;
        for (r, had) in self.routers.iter().zip(before) {
            if r.liar || !r.live {
                continue;
            }
            for b in had {
                // A dispute over the block takes it from us, held by
                // nobody since: a liar's double gift meeting its twin (its
                // own space), or a removed router's last gift meeting its
                // heir's inheritance (the heir did not have it when it
                // inherited: a partition outlasted the reclaim delay).
                let disputed = r.view().disputed.contains(b)
                    && r.view().conflicts.iter().any(|(x, y)| {
                        let covers = |s: &StepBody| (s.first..s.first + s.count).contains(b);
                        (covers(x) || covers(y))
                            && ((self.is_liar(x.signer()) && self.is_liar(y.signer()))
                                || x.kind != y.kind)
                    });
                if disputed && !r.gave.contains(b) && !r.since.contains_key(b) {
                    lost_to_disputes += 1;
                }
                let liars_dispute = disputed;
                assert!(
                    r.gave.contains(b) || r.since.contains_key(b) || liars_dispute,
                    "{} lost block {b} (now {:?}, disputed {}, voided {:?}); removed {:?}; seed {}",
                    r.name(),
                    r.view().blocks[*b as usize],
                    r.view().disputed.contains(b),
                    r.view().voided,
                    r.view().removed.contains(&r.name()),
                    self.seed
                );
            }
        }
        self.tally.lost_to_disputes += lost_to_disputes;
    }

    fn step(&mut self) {
        self.now += TICK_MS;
        // What each router holds (owns for the settle time, so allocates
        // from): space it only just gained may still be lost to what it
        // had not heard yet, with nothing allocated from it.
        let now = self.now;
        let before: Vec<BTreeSet<u32>> =
            self.routers.iter().map(|r| r.held(now).collect()).collect();
        match self.rng.below(100) {
            0..=54 => self.gossip(),
            55..=69 => self.give(),
            70..=84 => self.inherit(),
            85..=86 => {
                self.partitioned = !self.partitioned;
                if self.partitioned {
                    for i in 0..self.routers.len() {
                        self.routers[i].side = self.rng.chance(0.5);
                    }
                }
            }
            87 => self.crash(),
            90 => self.reclaim(),
            88 => self.join(),
            // Folding old steps into the base is not simulated: it is only
            // sound once every router's view of those steps is final, and
            // a router that folds a step it applied on a lagging view locks
            // that view in (found here, seed 1: an heir's inheritance that a
            // late gift made wrong was folded by one router and taught to a
            // joiner). Bounding the steps needs checkpoints
            // (ring-signing.md).
            89 if FOLD => {
                let now = self.now;
                if let Some(i) = self.pick(|r| r.live) {
                    let r = &mut self.routers[i];
                    r.ledger.fold_old(now, HORIZON_MS);
                    r.refresh(now);
                }
            }
            _ => self.gossip(),
        }
        self.check_losses(&before);
        self.check();
    }

    fn heal(&mut self) {
        self.partitioned = false;
        let honest: Vec<usize> = (0..self.routers.len())
            .filter(|i| self.routers[*i].live && !self.routers[*i].liar)
            .collect();
        for _ in 0..6 {
            for &a in &honest {
                for &b in &honest {
                    if a != b {
                        let now = self.now;
                        let (sent, r) = pair(&mut self.routers, a, b);
                        r.ledger.merge(&sent.ledger);
                        r.refresh(now);
                    }
                }
            }
            for &a in &honest {
                let now = self.now;
                let r = &mut self.routers[a];
                let k = key(r.id);
                r.ledger.inherit(&k, now);
                r.refresh(now);
            }
        }
        let first = self.routers[honest[0]].view().clone();
        for &i in &honest {
            assert!(
                self.routers[i].ledger.view_is_a_fold(),
                "{}'s view, built step by step, is not the fold of its steps; seed {}",
                self.routers[i].name(),
                self.seed
            );
            let v = self.routers[i].view();
            assert_eq!(
                (&v.blocks, &v.disputed),
                (&first.blocks, &first.disputed),
                "{} and {} disagree after healing; seed {}",
                self.routers[i].name(),
                self.routers[honest[0]].name(),
                self.seed
            );
        }
        // Every double gift whose two steps are both still held is a dispute.
        let steps: BTreeSet<StepBody> = self.routers[honest[0]]
            .ledger
            .steps()
            .map(|s| s.body)
            .collect();
        for (a, b) in &self.doubles {
            if steps.contains(a) && steps.contains(b) {
                assert!(
                    first.disputed.contains(&a.first),
                    "a double gift {a:?} / {b:?} is not a dispute; seed {}",
                    self.seed
                );
            }
        }
    }
}

/// Router `a` to read and router `b` to change (`a != b`).
fn pair(rs: &mut [Router], a: usize, b: usize) -> (&Router, &mut Router) {
    if a < b {
        let (x, y) = rs.split_at_mut(b);
        (&x[a], &mut y[0])
    } else {
        let (x, y) = rs.split_at_mut(a);
        (&y[0], &mut x[b])
    }
}

fn run(seed: u64, ops: u64) {
    let mut sim = Sim::new(seed);
    for _ in 0..ops {
        sim.step();
    }
    sim.heal();
    let t = &sim.tally;
    println!("seed {seed}: {t:?}");
    assert!(
        t.forged_sent == 0 || t.forged_dropped > 0,
        "forgeries sent but none counted; seed {seed}"
    );
    assert!(
        t.unlinked_sent == 0 || t.unlinked_dropped > 0,
        "unlinkable steps sent but none counted; seed {seed}"
    );
}

#[test]
fn liars_take_nothing_and_honest_routers_agree() {
    let ops = std::env::var("WEFT_LEDGER_SIM_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5_000);
    let seeds: Vec<u64> = match std::env::var("WEFT_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("WEFT_SIM_SEED is a number")],
        Err(_) => vec![1, 2, 3],
    };
    for seed in seeds {
        run(seed, ops);
    }
}
