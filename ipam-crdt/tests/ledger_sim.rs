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
//! Every live honest router signs a checkpoint each minute, of the time
//! `CHECKPOINT_LAG_MS` before; liars send checkpoints of their own making
//! (every block theirs, signed by them and their sybils), which no honest
//! router may take. A block an honest router held may also go where a
//! checkpoint decided the race a dispute would have (its signers had
//! applied the twin of the step that gave it), counted as
//! `lost_to_checkpoints`.
//!
//! At the end the crashed routers are removed, the network heals and the
//! honest routers' views must agree (and be what a whole fold of their
//! steps makes), every liar's double gift whose two steps both spread is
//! disputed everywhere, and forgeries, unlinkable steps and forged
//! checkpoints sent were counted by their receivers. Then they sign one
//! checkpoint of that time: every honest router must take it, keep its
//! view, and hold no step it covers. Checkpoints must also have been taken
//! during the run. (With this churn, crashed routers not yet removed often
//! hold half of the blocks, so few pass during the run: the steps held
//! then are bounded only by how fast crashed routers are removed.)
//!
//! `WEFT_LEDGER_SIM_OPS` sets the operations per seed (default 5 000 x 3
//! seeds, about 3 minutes with checkpoints),
//! `WEFT_SIM_SEED` one seed. A failure prints its seed.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::Rng;
use weft_ipam_crdt::block_alloc::BlockAllocator;
use weft_ipam_crdt::ledger::{
    Block, Certified, Checkpoint, Ledger, LedgerMerge, MAX_AHEAD_MS, Step, StepBody, StepKind,
    View, Vote,
};
use weft_ipam_crdt::{AddrRange, PeerName};
use weft_peer_proto::codec::{decode_ledger, encode_ledger};
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
/// How often each live honest router signs a checkpoint, of the time
/// `CHECKPOINT_LAG_MS` before: long enough for what was made before it to
/// have spread (here gossip reaches a router about every ten seconds).
const CHECKPOINT_EVERY_MS: u64 = 60_000;
const CHECKPOINT_LAG_MS: u64 = 150_000;

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
    /// When each block we own became ours in our view, and the step that
    /// made it ours (None: the seed layout, or a checkpoint's base).
    since: BTreeMap<u32, (u64, Option<StepBody>)>,
    /// Blocks we gave away (so losing them is no loss).
    gave: BTreeSet<u32>,
    /// Pods' addresses, allocated from the blocks we hold.
    alloc: BlockAllocator,
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
        self.alloc.sync(&self.ledger, now);
        let v = self.ledger.view();
        let mine: BTreeSet<u32> = v.blocks_of(me).into_iter().collect();
        self.since.retain(|b, _| mine.contains(b));
        for b in mine {
            self.since.entry(b).or_insert_with(|| {
                let by = v
                    .applied
                    .iter()
                    .rev()
                    .find(|s| (s.first..s.first + s.count).contains(&b))
                    .copied();
                (now, by)
            });
        }
    }

    fn held(&self, now: u64) -> impl Iterator<Item = u32> + '_ {
        self.since
            .iter()
            .filter(move |(_, (t, _))| now.saturating_sub(*t) >= SETTLE_MS)
            .map(|(b, _)| *b)
    }

    /// The step that made block `b` ours.
    fn got_by(&self, b: u32) -> Option<StepBody> {
        self.since.get(&b).and_then(|(_, s)| *s)
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
    /// Blocks lost where a checkpoint took the twin of the step that gave
    /// them (a liar's double gift, or a removed router's last gift raced
    /// by its heir, decided by the checkpoint instead of a dispute).
    lost_to_checkpoints: u64,
    checkpoints_adopted: u64,
    /// A liar's checkpoints (all blocks its own, signed by it and its
    /// sybils) sent, and refused by their receivers.
    forged_checkpoints_sent: u64,
    forged_checkpoints_refused: u64,
    /// A liar's steps stamped an hour ahead, and those refused.
    ahead_sent: u64,
    ahead_dropped: u64,
    removals: u64,
    joins: u64,
    gifts: u64,
    /// Pods given an address, and addresses honest routers lost with a
    /// block (a liar's double gift disputed after they allocated).
    pods: u64,
    addresses_lost: u64,
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
    /// Every step made, by (from, from_version): to tell a step that lost
    /// to its twin.
    made: BTreeMap<(PeerName, u32), Vec<StepBody>>,
    /// The last checkpoint time signed.
    checkpoint_at: u64,
    /// The most steps an honest router held before the last checkpoint.
    held_at_end: usize,
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
                let alloc = BlockAllocator::new(key.name(), &ledger, 0);
                let mut r = Router {
                    id,
                    key,
                    ledger,
                    live: true,
                    liar: i >= HONEST,
                    since: BTreeMap::new(),
                    gave: BTreeSet::new(),
                    alloc,
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
            made: BTreeMap::new(),
            checkpoint_at: 0,
            held_at_end: 0,
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
            // Over the wire, as meshd will send it.
            let bytes = encode_ledger(&sent.ledger.to_wire())
                .unwrap_or_else(|e| panic!("a ledger a receiver refuses: {e}; seed {seed}"));
            let wire = decode_ledger(&bytes).expect("what is sent decodes");
            let sent = Ledger::from_wire(&wire).expect("what is sent has its shape");
            r.ledger.merge(&sent, now)
        } else {
            LedgerMerge::default()
        };
        if !extra.is_empty() {
            let none: [(PeerName, Vec<&weft_peer_proto::sign::Sig>); 0] = [];
            let o = r.ledger.receive(extra.iter().copied(), none, now);
            out.forged += o.forged;
            out.ahead += o.ahead;
            out.unlinked += o.unlinked;
            out.added += o.added;
        }
        if !r.liar {
            self.tally.forged_dropped += u64::from(out.forged);
            self.tally.ahead_dropped += u64::from(out.ahead);
            self.tally.unlinked_dropped += u64::from(out.unlinked);
            self.tally.checkpoints_adopted += u64::from(out.votes.adopted);
        }
        let r = &mut self.routers[to];
        r.refresh(now);
        if !r.liar {
            for s in r.ledger.steps() {
                assert!(
                    s.body.at_ms <= now + MAX_AHEAD_MS,
                    "{} keeps a step stamped ahead {:?} at {now}; seed {seed}",
                    r.name(),
                    s.body
                );
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
        self.record(&extra);
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
        match self.rng.below(8) {
            // A checkpoint of its own making: every block the liar's,
            // signed by it and its sybils, as a base ahead of everyone's.
            5 => {
                let mut forged: Checkpoint = self.routers[l].ledger.prefix(self.now);
                for x in &mut forged.blocks {
                    x.owner = me;
                }
                let signers = std::iter::once(&lk).chain(&self.sybils);
                let votes: Vec<Vote> = signers
                    .map(|k| Vote::sign(k, CLUSTER, forged.at_ms, forged.digest()))
                    .collect();
                let cert = Certified {
                    checkpoint: forged,
                    votes,
                };
                self.tally.forged_checkpoints_sent += 1;
                if self.reachable(l, to) {
                    let r = &mut self.routers[to];
                    let out = r.ledger.receive_certified(&cert);
                    assert!(
                        !out.adopted,
                        "{} took a liar's checkpoint; seed {}",
                        r.name(),
                        self.seed
                    );
                    self.tally.forged_checkpoints_refused += u64::from(out.refused_checkpoints);
                }
                Vec::new()
            }
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
                self.record(&[a, c]);
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
            // A gift of its own block stamped an hour ahead, which would
            // drag the clocks of every later step past the checkpoints.
            6 => {
                let Some(&first) = view.blocks_of(me).first() else {
                    return Vec::new();
                };
                let at = view.blocks[first as usize];
                let s = Step::sign(
                    &lk,
                    CLUSTER,
                    StepBody {
                        at_ms: self.now + 3_600_000,
                        kind: StepKind::Give,
                        first,
                        count: 1,
                        from: me,
                        from_version: at.version,
                        to: to_name,
                    },
                );
                self.tally.ahead_sent += 1;
                vec![s]
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
        // Never a block a pod's address is in (what `BlockAllocator::donate`
        // keeps to): a gift of the blocks in the run that hold none.
        let layout = r.ledger.layout();
        let used: BTreeSet<u32> = r
            .alloc
            .allocations()
            .filter_map(|(_, a)| layout.block_of(a))
            .collect();
        let mut steps = Vec::new();
        let mut b = first;
        while b < first + len {
            let end = (b..first + len)
                .find(|x| used.contains(x))
                .unwrap_or(first + len);
            if end > b {
                steps.extend(r.ledger.give(&key, b..end, to, now));
            }
            b = end + 1;
        }
        for s in &steps {
            r.gave.extend(s.body.first..s.body.first + s.body.count);
        }
        r.refresh(now);
        self.tally.gifts += steps.len() as u64;
        self.record(&steps);
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
        // Checkpoints and removals need the owners of more than half of
        // the space up (ring-signing.md, the weighted majority): the churn
        // leaves three fifths of it on live honest routers. (A crash every
        // ten seconds with a two-minute reclaim otherwise left less than
        // half there for a whole run of seed 1.)
        let up: BTreeSet<PeerName> = self
            .routers
            .iter()
            .enumerate()
            .filter(|(i, r)| *i != c && r.live && !r.liar)
            .map(|(_, r)| r.name())
            .collect();
        let v = self.routers[c].view();
        let held = v.blocks.iter().filter(|b| up.contains(&b.owner)).count();
        if 5 * held < 3 * v.blocks.len() {
            return;
        }
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
        let steps = r.ledger.inherit(&k, now);
        if !steps.is_empty() {
            r.refresh(now);
        }
        self.record(&steps);
    }

    /// Every live honest router signs the checkpoint of the time a settle
    /// time ago, once per `CHECKPOINT_EVERY_MS` (each at its own timer in
    /// meshd; at once here). Votes spread with the ledgers.
    fn checkpoint(&mut self) {
        let at = (self.now.saturating_sub(CHECKPOINT_LAG_MS) / CHECKPOINT_EVERY_MS)
            * CHECKPOINT_EVERY_MS;
        if at == 0 || at <= self.checkpoint_at {
            return;
        }
        self.checkpoint_at = at;
        let now = self.now;
        for r in self.routers.iter_mut().filter(|r| r.live && !r.liar) {
            let k = key(r.id);
            let base = r.ledger.base_at_ms();
            r.ledger.sign_checkpoint(&k, at);
            if r.ledger.base_at_ms() != base {
                self.tally.checkpoints_adopted += 1;
            }
            r.refresh(now);
        }
    }

    /// A pod starts (or, one time in three, one ends) on a live honest
    /// router: its address comes from the blocks it has held for the
    /// settle time (`BlockAllocator`).
    fn pod(&mut self) {
        let Some(i) = self.pick(|r| r.live && !r.liar) else {
            return;
        };
        let now = self.now;
        let end = self.rng.below(3) == 0;
        let n = self.tally.pods;
        let r = &mut self.routers[i];
        if end {
            let keys: Vec<String> = r.alloc.allocations().map(|(k, _)| k.to_owned()).collect();
            if let Some(k) = keys.first() {
                r.alloc.release(k);
            }
            return;
        }
        if r.alloc.allocate(&r.ledger, &format!("pod{n}"), now).is_ok() {
            self.tally.pods += 1;
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
        ledger.merge(&self.routers[first].ledger, self.now);
        let side = self.routers[first].side;
        let id = self.next_key - 1;
        let alloc = BlockAllocator::new(k.name(), &ledger, self.now);
        self.routers.push(Router {
            id,
            key: k,
            ledger,
            live: true,
            liar: false,
            since: BTreeMap::new(),
            gave: BTreeSet::new(),
            alloc,
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
        let mut address: BTreeMap<u32, usize> = BTreeMap::new();
        for (i, r) in self.routers.iter().enumerate() {
            if r.liar || !r.live {
                continue;
            }
            if let Err(e) = r.alloc.check(&r.ledger) {
                panic!("{}: {e}; seed {}", r.name(), self.seed);
            }
            for (_, a) in r.alloc.allocations() {
                if let Some(&j) = address.get(&a) {
                    // Only where both hold its block: the check below says
                    // when that may be.
                    let b = r.ledger.layout().block_of(a).unwrap_or(u32::MAX);
                    assert!(
                        r.held(now).any(|x| x == b) && self.routers[j].held(now).any(|x| x == b),
                        "address {a:#x} allocated by {} and {} outside a block both hold; seed {}",
                        r.name(),
                        self.routers[j].name(),
                        self.seed
                    );
                } else {
                    address.insert(a, i);
                }
            }
            for b in r.held(now) {
                if let Some(&j) = holder.get(&b) {
                    let a = r.got_by(b);
                    let c = self.routers[j].got_by(b);
                    // Two gifts by a liar from one state of the block (one
                    // double gift, or two: a liar that never hears the
                    // first gift's block move gives it again).
                    let liars_double = match (a, c) {
                        (Some(x), Some(y)) => {
                            x != y
                                && (x.from, x.from_version) == (y.from, y.from_version)
                                && self.is_liar(x.signer())
                                && self.is_liar(y.signer())
                        }
                        _ => false,
                    };
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

    /// Whether `s`, which gave block `b`, has a twin that may take it: a
    /// step from the same state over `b` by a liar as well (a double gift),
    /// or of the other kind (a removed router's last gift and its heir's
    /// inheritance).
    fn lost_to_twin(&self, s: &StepBody, b: u32) -> bool {
        self.made.get(&(s.from, s.from_version)).is_some_and(|ts| {
            ts.iter().any(|t| {
                t != s
                    && (t.first..t.first + t.count).contains(&b)
                    && ((self.is_liar(t.signer()) && self.is_liar(s.signer())) || t.kind != s.kind)
            })
        })
    }

    fn record(&mut self, steps: &[Step]) {
        for s in steps {
            let e = self
                .made
                .entry((s.body.from, s.body.from_version))
                .or_default();
            if !e.contains(&s.body) {
                e.push(s.body);
            }
        }
    }

    /// A live honest router never loses a block it held and did not give.
    fn check_losses(&mut self, before: &[BTreeMap<u32, Option<StepBody>>]) {
        let mut lost_to_disputes = 0;
        let mut lost_to_checkpoints = 0;
        for (r, had) in self.routers.iter().zip(before) {
            if r.liar || !r.live {
                continue;
            }
            for (b, by) in had {
                if r.gave.contains(b) || r.since.contains_key(b) {
                    continue;
                }
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
                if disputed {
                    lost_to_disputes += 1;
                    continue;
                }
                // The same race decided by a checkpoint: its signers had
                // applied the twin of the step that gave it us.
                if by.is_some_and(|s| self.lost_to_twin(&s, *b)) {
                    lost_to_checkpoints += 1;
                    continue;
                }
                panic!(
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
        self.tally.lost_to_checkpoints += lost_to_checkpoints;
    }

    fn step(&mut self) {
        self.now += TICK_MS;
        // What each router holds (owns for the settle time, so allocates
        // from): space it only just gained may still be lost to what it
        // had not heard yet, with nothing allocated from it.
        let now = self.now;
        let before: Vec<BTreeMap<u32, Option<StepBody>>> = self
            .routers
            .iter()
            .map(|r| r.held(now).map(|b| (b, r.got_by(b))).collect())
            .collect();
        self.checkpoint();
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
            91..=94 => self.pod(),
            _ => self.gossip(),
        }
        self.check_losses(&before);
        self.check();
    }

    fn heal(&mut self) {
        self.partitioned = false;
        // The crashed routers are removed (the operator, or the reclaim
        // delay passing).
        self.now += RECLAIM_AFTER_MS;
        self.reclaim();
        let honest: Vec<usize> = (0..self.routers.len())
            .filter(|i| self.routers[*i].live && !self.routers[*i].liar)
            .collect();
        for _ in 0..6 {
            for &a in &honest {
                for &b in &honest {
                    if a != b {
                        let now = self.now;
                        let (sent, r) = pair(&mut self.routers, a, b);
                        r.ledger.merge(&sent.ledger, now);
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
            if (&v.blocks, &v.disputed) != (&first.blocks, &first.disputed) {
                let o = &self.routers[honest[0]];
                let diff: Vec<(usize, Block, Block, bool, bool)> = (0..v.blocks.len())
                    .filter(|b| {
                        v.blocks[*b] != first.blocks[*b]
                            || v.disputed.contains(&(*b as u32))
                                != first.disputed.contains(&(*b as u32))
                    })
                    .map(|b| {
                        (
                            b,
                            v.blocks[b],
                            first.blocks[b],
                            v.disputed.contains(&(b as u32)),
                            first.disputed.contains(&(b as u32)),
                        )
                    })
                    .take(6)
                    .collect();
                let covering = |l: &Ledger, b: usize| -> Vec<StepBody> {
                    l.steps()
                        .map(|s| s.body)
                        .filter(|s| (s.first..s.first + s.count).contains(&(b as u32)))
                        .collect()
                };
                let b0 = diff.first().map_or(0, |d| d.0);
                eprintln!(
                    "DIFF bases {} / {}, removed {:?} / {:?}, first diffs {diff:?}\n steps here {:?}\n steps there {:?}",
                    self.routers[i].ledger.base_at_ms(),
                    o.ledger.base_at_ms(),
                    v.removed.len(),
                    first.removed.len(),
                    covering(&self.routers[i].ledger, b0),
                    covering(&o.ledger, b0),
                );
            }
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
        // Healed, the honest routers sign one checkpoint of now and it
        // becomes everyone's base: the steps stay bounded, and the view
        // does not change. (Routers that crashed and are not removed yet
        // hold their blocks and sign nothing: with half of the blocks
        // theirs, no checkpoint passes, so the operator removes them first.)
        let held_before: usize = honest
            .iter()
            .map(|&i| self.routers[i].ledger.len())
            .max()
            .unwrap_or(0);
        let at = self.now;
        for &i in &honest {
            let r = &mut self.routers[i];
            let k = key(r.id);
            r.ledger.sign_checkpoint(&k, at);
        }
        for _ in 0..2 {
            for &a in &honest {
                for &b in &honest {
                    if a != b {
                        let now = self.now;
                        let (sent, r) = pair(&mut self.routers, a, b);
                        r.ledger.merge(&sent.ledger, now);
                    }
                }
            }
        }
        for &i in &honest {
            let r = &self.routers[i];
            if r.ledger.base_at_ms() != at {
                let mine = r.view().blocks_of(r.name()).len();
                let votes: Vec<(u64, [u8; 4])> = r
                    .ledger
                    .votes()
                    .map(|v| {
                        (
                            v.at_ms,
                            [v.digest[0], v.digest[1], v.digest[2], v.digest[3]],
                        )
                    })
                    .collect();
                let d = r.ledger.prefix(at).digest();
                eprintln!(
                    "DEBUG {} id {} owns {mine}, base {}, removed {:?}, own prefix digest {:?}, votes {votes:?}",
                    r.name(),
                    r.id,
                    r.ledger.base_at_ms(),
                    r.view().removed.len(),
                    &d[..4]
                );
                let o = &self.routers[honest[0]];
                eprintln!(
                    "DEBUG first {} base {} removed {} prefix {:?}",
                    o.name(),
                    o.ledger.base_at_ms(),
                    o.view().removed.len(),
                    &o.ledger.prefix(at).digest()[..4]
                );
            }
            assert_eq!(
                r.ledger.base_at_ms(),
                at,
                "{} did not take the checkpoint of the healed mesh; seed {}",
                r.name(),
                self.seed
            );
            let v = r.view();
            assert_eq!(
                (&v.blocks, &v.disputed),
                (&first.blocks, &first.disputed),
                "{}'s view changed with the checkpoint; seed {}",
                r.name(),
                self.seed
            );
            let old = r.ledger.steps().filter(|s| s.body.at_ms <= at).count();
            assert_eq!(
                old,
                0,
                "{} kept steps the checkpoint covers; seed {}",
                r.name(),
                self.seed
            );
        }
        self.held_at_end = held_before;
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
    sim.tally.addresses_lost = sim
        .routers
        .iter()
        .filter(|r| !r.liar)
        .map(|r| r.alloc.lost().len() as u64)
        .sum();
    let t = &sim.tally;
    let made: usize = sim.made.values().map(Vec::len).sum();
    println!(
        "seed {seed}: {t:?}; steps made {made}, held by an honest router before the last checkpoint at most {}",
        sim.held_at_end
    );
    assert!(
        t.checkpoints_adopted > 0,
        "no checkpoint was ever taken during the run; seed {seed}"
    );
    // Every kind of lie that was sent was counted by some receiver.
    for (sent, counted, what) in [
        (
            t.forged_checkpoints_sent,
            t.forged_checkpoints_refused,
            "forged checkpoints",
        ),
        (t.ahead_sent, t.ahead_dropped, "steps stamped ahead"),
        (t.forged_sent, t.forged_dropped, "forgeries"),
        (t.unlinked_sent, t.unlinked_dropped, "unlinkable steps"),
    ] {
        assert!(
            sent == 0 || counted > 0,
            "{what} sent but none counted; seed {seed}"
        );
    }
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
