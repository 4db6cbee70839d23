//! Signed ownership on fixed blocks: the design of `docs/ring-signing.md`
//! ("Fixed blocks"), built and simulated beside the ring, not yet used by
//! the allocator.
//!
//! The range is cut into fixed blocks. Who owns a block is not something a
//! peer tells us: it is what follows from the seed layout (every router
//! computes it from the seed list) and the **steps** we hold, each signed by
//! the router whose it is to make:
//! - a gift ([`StepKind::Give`]): the owner of a run of blocks at a version
//!   gives them to another router; signed by that owner;
//! - an inheritance ([`StepKind::Inherit`]): a router takes a run of blocks
//!   of a removed owner whose heir it is (it owns the block just before the
//!   run); signed by the heir, and applied only where the removal
//!   certificate is valid, against owners weighted by the blocks they own.
//!
//! Merge is the union of steps (and of removal signatures); a step whose
//! signature does not verify, or that its signer may not make, is dropped and
//! counted. The view is a function of the set ([`Ledger::view`]): the steps
//! are replayed once, in the order of their makers' clocks (a router stamps
//! a step later than every step it holds, so a step comes after what it
//! follows); a step applies where it links (its blocks are at the state it
//! names, and its signer may make it there), and one that does not link is
//! pending, never taken on trust, so no forged version can freeze a block. A
//! step that links nowhere is not even kept: gossip brings it again once
//! what it follows has come. Two steps that apply at one state of one block
//! are a **dispute**: neither applies, and the blocks they share are held by
//! nobody (the owner of that state gave them twice, or a removed owner's
//! last gift raced its heir). Routers holding the same steps hold the same
//! view, so views converge as steps spread.
//!
//! Removals have a place in that order too: a removal takes effect at the
//! first inheritance where its signers (any router's signature is kept) hold
//! more than half of all the blocks but the removed router's, as the blocks
//! stand there, or at the end. What was valid then stays valid when later
//! steps move the signers' blocks or remove the signers themselves; counting
//! at the end instead let a lagging router or a joiner undo an heir's
//! inheritance, and counting only owners not removed let a liar whose
//! sybils held an eighth of the blocks remove a live router (both found by
//! `tests/ledger_sim.rs`).
//!
//! What this does not do (ring-signing.md): a joiner takes its first base on
//! trust; a lying owner that gives one run twice makes a duplicate until
//! the two steps meet (the allocator must wait a settle time before using
//! gained space, and across a partition even that is not enough).
//!
//! Steps are bounded by **checkpoints**: an owner signs the digest of the
//! prefix of the order up to a time a settle time past
//! ([`Ledger::sign_checkpoint`]), and a checkpoint whose signers hold more
//! than half of all the blocks, in our view and in the checkpoint,
//! becomes the base: the steps it covers go, and so do the certificates of
//! removed routers that own nothing there. A ledger that is behind takes it from a merge
//! with its votes ([`Certified`]). A step made before its time that its
//! signers had not heard of still applies where it links on it (folding
//! steps by age alone, tried first, locked a lagging view in and taught it
//! to joiners: found by the simulation).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use std::sync::LazyLock;
use weft_peer_proto::PeerName;

use weft_mesh::SigCache;
use weft_peer_proto::ipam::{
    BlockRunWire, CheckpointWire, LedgerWire, MAX_LEDGER_STEPS, StepKindWire, StepWire, VoteWire,
};
use weft_peer_proto::sign::{Sig, Signer, signing_bytes, statement_digest};

use crate::range::AddrRange;
use crate::removal::{Removal, SigOutcome};

/// The domain of step signatures.
pub const DOMAIN: &str = "weft/step/1";

/// Step signatures that passed, for every ledger of the process (as
/// removal signatures are): a step that links nowhere yet is dropped and
/// comes again with the next gossip, and each copy then costs a hash.
static CHECKED: LazyLock<SigCache> = LazyLock::new(|| SigCache::new(1 << 16));

/// How far ahead of the receiver's wall clock a step may be stamped. A
/// router stamps its steps later than every step it holds (so that the
/// fold judges them after what they follow), so one step stamped far ahead
/// would drag every later step of every router that took it into the
/// future, beyond the checkpoints that bound the steps. Nodes keep their
/// clocks within seconds of each other (NTP); a step refused for being
/// ahead comes again with the next gossip, and is taken once it is not.
pub const MAX_AHEAD_MS: u64 = 60_000;

/// At most this many blocks: a /12 in blocks of 64 addresses.
pub const MAX_BLOCKS: u32 = 1 << 14;

/// How a range is cut into blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    range: AddrRange,
    blocks: u32,
}

impl Layout {
    /// `range` in as many blocks as it has addresses, at most
    /// [`MAX_BLOCKS`].
    pub fn new(range: AddrRange) -> Self {
        let blocks = range.len().clamp(1, u64::from(MAX_BLOCKS)) as u32;
        Layout { range, blocks }
    }

    pub fn blocks(&self) -> u32 {
        self.blocks
    }

    /// The addresses of block `b`.
    pub fn block(&self, b: u32) -> AddrRange {
        let len = self.range.len();
        let n = u64::from(self.blocks);
        let at = |i: u64| u64::from(self.range.start) + len * i / n;
        AddrRange {
            start: at(u64::from(b)) as u32,
            end: at(u64::from(b) + 1),
        }
    }

    /// The block holding `addr`.
    pub fn block_of(&self, addr: u32) -> Option<u32> {
        if !self.range.contains(addr) {
            return None;
        }
        let off = u64::from(addr) - u64::from(self.range.start);
        let n = u64::from(self.blocks);
        // The largest b with b * len / n <= off.
        let mut b = (off * n / self.range.len()) as u32;
        while b + 1 < self.blocks && self.block(b + 1).start <= addr {
            b += 1;
        }
        while self.block(b).start > addr {
            b -= 1;
        }
        Some(b)
    }
}

/// One block's owner and version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Block {
    pub owner: PeerName,
    pub version: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum StepKind {
    Give,
    Inherit,
}

/// A change of the blocks `first .. first + count`, all at `(from,
/// from_version)`, to `to` at `from_version + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct StepBody {
    /// The signer's wall clock, ms since the Unix epoch: when the step may
    /// be folded into the base. First, so that a fold applies older steps
    /// first.
    pub at_ms: u64,
    pub kind: StepKind,
    pub first: u32,
    pub count: u32,
    pub from: PeerName,
    pub from_version: u32,
    pub to: PeerName,
}

impl StepBody {
    /// Who must sign it.
    pub fn signer(&self) -> PeerName {
        match self.kind {
            StepKind::Give => self.from,
            StepKind::Inherit => self.to,
        }
    }

    fn blocks(&self) -> std::ops::Range<u32> {
        self.first..self.first.saturating_add(self.count)
    }

    /// Whether `other` leaves the same state of a block this one does: the
    /// two cannot both apply.
    fn twin_of(&self, other: &StepBody) -> bool {
        self.from == other.from
            && self.from_version == other.from_version
            && self.first < other.first.saturating_add(other.count)
            && other.first < self.first.saturating_add(self.count)
    }
}

#[derive(Serialize)]
struct Statement<'a> {
    cluster: u64,
    step: &'a StepBody,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub body: StepBody,
    pub sig: Sig,
}

impl Step {
    pub fn sign(key: &impl Signer, cluster: u64, body: StepBody) -> Step {
        Step {
            body,
            sig: key.sign(
                DOMAIN,
                &Statement {
                    cluster,
                    step: &body,
                },
            ),
        }
    }

    /// Why this step cannot be taken in, before any view: a bad signature,
    /// the wrong signer, or blocks outside the layout.
    pub fn check(&self, cluster: u64, layout: Layout) -> Result<(), StepError> {
        let b = &self.body;
        if b.count == 0 || u64::from(b.first) + u64::from(b.count) > u64::from(layout.blocks) {
            return Err(StepError::OutOfRange);
        }
        if b.from == b.to || b.from_version == u32::MAX {
            return Err(StepError::Malformed);
        }
        let msg = signing_bytes(DOMAIN, &Statement { cluster, step: b })
            .map_err(|_| StepError::Malformed)?;
        CHECKED
            .check(b.signer(), &msg, &self.sig)
            .map_err(|_| StepError::Forged)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StepError {
    #[error("the step names blocks outside the range")]
    OutOfRange,
    #[error("the step gives blocks to their own owner, or past the last version")]
    Malformed,
    #[error("the step is not signed by the router whose it is to make")]
    Forged,
    #[error("the step is stamped more than {MAX_AHEAD_MS} ms ahead of our clock")]
    Ahead,
}

/// The domain of checkpoint signatures.
pub const CHECKPOINT_DOMAIN: &str = "weft/checkpoint/1";

/// The share of all the blocks a checkpoint's signers must hold, in our
/// view and in the checkpoint, for it to become our base: more than half,
/// as for a removal, so liars alone need more than half of the blocks.
/// Two thirds would make two contents for one time impossible while liars
/// hold less than a third, but crashed routers hold their blocks (and sign
/// nothing) until they are removed, and in the simulation's churn a third
/// of the blocks was often theirs: no checkpoint passed. With half, two
/// contents of one time can pass (liars signing both, honest routers split
/// between two prefixes); each is an honest prefix, and the next checkpoint
/// a ledger takes (a newer one is always taken, from its votes and
/// content) brings the two groups together again.
const QUORUM: (u64, u64) = (1, 2);

/// At most this many checkpoints offered are kept while their votes come.
pub const MAX_OFFERED: usize = 4;

/// What the steps made up to `at_ms` leave (the prefix of the order, on
/// the base it had): what owners sign, and what a ledger takes as its base
/// once owners of more than half of the blocks signed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Checkpoint {
    pub at_ms: u64,
    pub blocks: Vec<Block>,
    pub disputed: BTreeSet<u32>,
}

impl Checkpoint {
    /// What a vote signs: the whole of it would be too much to sign, and
    /// to send with every vote.
    pub fn digest(&self) -> [u8; 32] {
        statement_digest(CHECKPOINT_DOMAIN, self).unwrap_or([0; 32])
    }

    /// How many of all the blocks `signers` hold here.
    fn weight(&self, signers: &BTreeSet<PeerName>) -> u64 {
        weight(&self.blocks, &self.disputed, &BTreeSet::new(), signers)
    }
}

/// How many blocks of `blocks` routers of `signers` hold (not disputed,
/// not removed).
fn weight(
    blocks: &[Block],
    disputed: &BTreeSet<u32>,
    removed: &BTreeSet<PeerName>,
    signers: &BTreeSet<PeerName>,
) -> u64 {
    blocks
        .iter()
        .enumerate()
        .filter(|(b, x)| {
            signers.contains(&x.owner)
                && !removed.contains(&x.owner)
                && !disputed.contains(&(*b as u32))
        })
        .count() as u64
}

fn is_quorum(signed: u64, total: u64) -> bool {
    signed * QUORUM.1 > total * QUORUM.0
}

#[derive(Serialize)]
struct VoteStatement {
    cluster: u64,
    at_ms: u64,
    digest: [u8; 32],
}

/// An owner's signature on the checkpoint of `at_ms` with `digest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vote {
    pub at_ms: u64,
    pub digest: [u8; 32],
    pub sig: Sig,
}

impl Vote {
    pub fn signer(&self) -> PeerName {
        self.sig.signer()
    }

    /// `key`'s vote for the checkpoint of `at_ms` with `digest`.
    pub fn sign(key: &impl Signer, cluster: u64, at_ms: u64, digest: [u8; 32]) -> Vote {
        let sig = key.sign(
            CHECKPOINT_DOMAIN,
            &VoteStatement {
                cluster,
                at_ms,
                digest,
            },
        );
        Vote { at_ms, digest, sig }
    }

    fn verifies(&self, cluster: u64) -> bool {
        let st = VoteStatement {
            cluster,
            at_ms: self.at_ms,
            digest: self.digest,
        };
        signing_bytes(CHECKPOINT_DOMAIN, &st)
            .is_ok_and(|msg| CHECKED.check(self.signer(), &msg, &self.sig).is_ok())
    }
}

/// A checkpoint with the votes that made it a base: what a ledger sends
/// one that is behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certified {
    pub checkpoint: Checkpoint,
    pub votes: Vec<Vote>,
}

/// What votes and checkpoints a ledger took in.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VoteOutcome {
    /// Votes kept.
    pub added: u32,
    /// Votes whose signature did not verify.
    pub forged: u32,
    /// Good votes by routers that own no block in our view (may not vote).
    pub refused: u32,
    /// Checkpoints offered whose signers do not hold more than half of the
    /// blocks in our view and in the checkpoint (a liar's, or one we are
    /// too far behind to judge).
    pub refused_checkpoints: u32,
    /// Whether a checkpoint became our base.
    pub adopted: bool,
}

/// What merging another ledger did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LedgerMerge {
    pub added: u32,
    /// Steps dropped: not signed by their maker, or malformed.
    pub forged: u32,
    /// Steps stamped more than [`MAX_AHEAD_MS`] ahead of our clock (not
    /// kept; taken when they come again and are not).
    pub ahead: u32,
    /// Steps signed by their maker that link nowhere in our view (not
    /// kept: a lagging peer's, or a lie about a state that never was).
    pub unlinked: u32,
    pub removals: SigOutcome,
    pub votes: VoteOutcome,
}

/// What a ledger's steps make of its base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub blocks: Vec<Block>,
    /// Blocks held by nobody: two steps left one state of theirs.
    pub disputed: BTreeSet<u32>,
    pub removed: BTreeSet<PeerName>,
    /// Steps applied, in order.
    pub applied: Vec<StepBody>,
    /// Steps that link nowhere yet.
    pub pending: usize,
    /// Steps that applied at a state where another step applied too: both
    /// are void, and the blocks they share are disputed.
    pub voided: BTreeSet<StepBody>,
    /// The pairs of such steps: the evidence.
    pub conflicts: Vec<(StepBody, StepBody)>,
}

/// Consecutive blocks of one owner: `(owner, how many)`.
fn runs(blocks: &[Block]) -> Vec<(PeerName, u64)> {
    let mut out: Vec<(PeerName, u64)> = Vec::new();
    for b in blocks {
        match out.last_mut() {
            Some((o, n)) if *o == b.owner => *n += 1,
            _ => out.push((b.owner, 1)),
        }
    }
    out
}

impl View {
    /// The block before `b`, wrapping.
    fn before(&self, b: u32) -> u32 {
        let n = self.blocks.len() as u32;
        (b + n - 1) % n
    }

    /// Applies `s`, which links: its blocks go to its recipient.
    fn apply(&mut self, s: &StepBody) {
        let to = Block {
            owner: s.to,
            version: s.from_version + 1,
        };
        for b in s.blocks() {
            self.blocks[b as usize] = to;
        }
        self.applied.push(*s);
    }

    pub fn owner(&self, b: u32) -> Option<PeerName> {
        if self.disputed.contains(&b) {
            return None;
        }
        self.blocks.get(b as usize).map(|x| x.owner)
    }

    /// The blocks `peer` holds (disputed ones left out).
    pub fn blocks_of(&self, peer: PeerName) -> Vec<u32> {
        (0..self.blocks.len() as u32)
            .filter(|b| self.owner(*b) == Some(peer))
            .collect()
    }

    /// Whether `peer` holds a block (a disputed one left out).
    pub fn holds_any(&self, peer: PeerName) -> bool {
        (0..self.blocks.len() as u32).any(|b| self.owner(b) == Some(peer))
    }

    /// Who inherits block `b` of a removed owner: the owner of the block
    /// before it (wrapping), if that is not a removed owner's (then nobody
    /// yet: its own heir takes that block first, and then this one).
    pub fn heir(&self, b: u32) -> Option<PeerName> {
        let before = self.before(b);
        let owner = self.blocks[before as usize].owner;
        (before != b && !self.disputed.contains(&before) && !self.removed.contains(&owner))
            .then_some(owner)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    layout: Layout,
    cluster: Option<u64>,
    base: Vec<Block>,
    /// Blocks disputed before the base was last folded.
    base_disputed: BTreeSet<u32>,
    /// The checkpoint the base is, with its votes (None: the seed layout).
    base_cert: Option<Certified>,
    /// Each owner's newest vote for a checkpoint newer than the base.
    votes: BTreeMap<PeerName, Vote>,
    /// Checkpoints offered that had not passed, by digest, to judge again
    /// as votes come: only those some held vote signs, at most
    /// [`MAX_OFFERED`] (those most voted for).
    offered: BTreeMap<[u8; 32], Checkpoint>,
    steps: BTreeMap<StepBody, Sig>,
    removals: BTreeMap<PeerName, Removal>,
    /// The view of what is above, made when first asked for after a change.
    cache: std::sync::OnceLock<View>,
    /// Prefixes of the order judged for checkpoints, by time: votes are
    /// judged again on every merge, and a prefix changes only when a step
    /// made up to its time, a removal or the base does.
    prefixes: Prefixes,
}

/// At most this many prefixes are kept (votes name a few times at once).
const MAX_PREFIXES: usize = 8;

/// The prefixes judged, with their digests. A cache: ledgers that differ
/// only in it are equal.
#[derive(Debug, Clone, Default)]
struct Prefixes(BTreeMap<u64, (Checkpoint, [u8; 32])>);

impl PartialEq for Prefixes {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Prefixes {}

impl Ledger {
    /// An unseeded ledger over `range` (a joiner's).
    pub fn new(range: AddrRange) -> Self {
        Ledger {
            layout: Layout::new(range),
            cluster: None,
            base: Vec::new(),
            base_disputed: BTreeSet::new(),
            base_cert: None,
            votes: BTreeMap::new(),
            offered: BTreeMap::new(),
            steps: BTreeMap::new(),
            removals: BTreeMap::new(),
            cache: std::sync::OnceLock::new(),
            prefixes: Prefixes::default(),
        }
    }

    /// The base every one of `peers` computes alike: the blocks split into
    /// equal consecutive runs in name order, all at version 1.
    pub fn seeded(range: AddrRange, peers: &[PeerName], cluster: u64) -> Self {
        let mut names = peers.to_vec();
        names.sort_unstable();
        names.dedup();
        let mut l = Ledger::new(range);
        if names.is_empty() {
            return l;
        }
        let n = u64::from(l.layout.blocks);
        l.base = (0..n)
            .map(|b| Block {
                owner: names[(b * names.len() as u64 / n) as usize],
                version: 1,
            })
            .collect();
        l.cluster = Some(cluster);
        l
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn cluster(&self) -> Option<u64> {
        self.cluster
    }

    /// Whether the view held (built step by step where steps came in
    /// order) is what a whole fold of the steps makes: for simulations.
    pub fn view_is_a_fold(&self) -> bool {
        let v = self.view();
        let f = self.judge();
        (&v.blocks, &v.disputed, &v.removed, v.pending)
            == (&f.blocks, &f.disputed, &f.removed, f.pending)
    }

    /// Who signed the removal of `peer`.
    pub fn removal_signers(&self, peer: PeerName) -> Vec<PeerName> {
        self.removals
            .get(&peer)
            .map(|c| c.signers().collect())
            .unwrap_or_default()
    }

    pub fn steps(&self) -> impl Iterator<Item = Step> + '_ {
        self.steps.iter().map(|(body, sig)| Step {
            body: *body,
            sig: *sig,
        })
    }

    /// What the base and the steps held make: see the module's text.
    pub fn view(&self) -> &View {
        self.cache.get_or_init(|| self.judge())
    }

    fn changed(&mut self) {
        self.cache = std::sync::OnceLock::new();
    }

    /// A step made at `at_ms` came or went: prefixes from then on change.
    fn step_changed(&mut self, at_ms: u64) {
        self.prefixes.0.retain(|t, _| *t < at_ms);
    }

    /// The removals or the base changed: every prefix may.
    fn all_changed(&mut self) {
        self.prefixes.0.clear();
        self.changed();
    }

    /// Judges `s`, just added, on top of the view we hold, where that gives
    /// what a whole fold would: `s` is the newest step, so it stands last in
    /// the order, and it is no twin of a step that applied (it links and no
    /// other step from its state does, or it does not link and names a
    /// state its blocks never left). Returns false where a whole fold is
    /// needed. Most steps arrive in order, so most merges cost a step, not a
    /// fold.
    fn extend_view(&mut self, s: &StepBody) -> bool {
        // Steps are ordered by their clocks first: the newest is last.
        let newest = self
            .steps
            .keys()
            .rev()
            .find(|t| *t != s)
            .is_none_or(|t| t.at_ms < s.at_ms);
        if !newest || self.cache.get().is_none() {
            return false;
        }
        let has_twin = self.steps.keys().any(|t| t != s && t.twin_of(s));
        let Some(mut v) = self.cache.take() else {
            return false;
        };
        if s.kind == StepKind::Inherit {
            self.apply_removals(&mut v);
        }
        let ok = if self.links(&v, s) {
            if has_twin {
                false
            } else {
                v.apply(s);
                self.apply_removals(&mut v);
                true
            }
        } else {
            // A state none of its blocks has reached yet: only pending.
            let unreached = s.blocks().all(|b| {
                v.blocks
                    .get(b as usize)
                    .is_some_and(|x| x.version <= s.from_version)
            });
            if unreached {
                v.pending += 1;
            }
            unreached
        };
        if ok {
            let _ = self.cache.set(v);
        }
        ok
    }

    /// Drops `s`, a step that is pending in the view we hold.
    fn drop_pending(&mut self, s: &StepBody) {
        self.steps.remove(s);
        self.step_changed(s.at_ms);
        match self.cache.get_mut() {
            Some(v) if v.pending > 0 && !v.applied.contains(s) && !v.voided.contains(s) => {
                v.pending -= 1;
            }
            _ => self.changed(),
        }
    }

    fn judge(&self) -> View {
        self.judge_upto(u64::MAX)
    }

    /// The view of the base and the steps made up to `upto` (by their
    /// clocks): the prefix of the order, which a checkpoint signs.
    fn judge_upto(&self, upto: u64) -> View {
        let mut voided = BTreeSet::new();
        let mut conflicts = Vec::new();
        let mut disputed = BTreeSet::new();
        loop {
            match self.fold(&voided, &disputed, upto) {
                Ok(mut v) => {
                    v.voided = voided;
                    v.conflicts = conflicts;
                    return v;
                }
                Err((a, b)) => {
                    disputed.extend(a.blocks().filter(|x| b.blocks().contains(x)));
                    voided.insert(a);
                    voided.insert(b);
                    conflicts.push((a, b));
                }
            }
        }
    }

    /// One fold with `voided` left out and `disputed` held by nobody: the
    /// view, or the first two steps found to apply at one state.
    fn fold(
        &self,
        voided: &BTreeSet<StepBody>,
        disputed: &BTreeSet<u32>,
        upto: u64,
    ) -> Result<View, (StepBody, StepBody)> {
        let mut v = View {
            blocks: self.base.clone(),
            disputed: self.base_disputed.union(disputed).copied().collect(),
            removed: BTreeSet::new(),
            applied: Vec::new(),
            pending: 0,
            voided: BTreeSet::new(),
            conflicts: Vec::new(),
        };
        if v.blocks.is_empty() {
            return Ok(v);
        }
        let steps: Vec<&StepBody> = self
            .steps
            .keys()
            .filter(|s| s.at_ms <= upto && !voided.contains(s))
            .collect();
        // The steps from each state, for the disputes below: only steps
        // from one `(owner, version)` can apply at one state of a block.
        let mut from_state: BTreeMap<(PeerName, u32), Vec<usize>> = BTreeMap::new();
        for (i, s) in steps.iter().enumerate() {
            from_state
                .entry((s.from, s.from_version))
                .or_default()
                .push(i);
        }
        // One pass in the order of the steps' clocks (a router stamps its
        // steps later than every step it holds: `make`), so a step is
        // judged against what came before it and never against what came
        // after; one that does not link where it stands is pending.
        let mut done = vec![false; steps.len()];
        let mut pending = 0;
        for (i, s) in steps.iter().enumerate() {
            // Removals have a place in the order too: a removal takes effect
            // at the first inheritance where its signers hold a majority of
            // the blocks as they stand there (or at the end), so what was
            // valid stays valid when later steps move the signers' blocks
            // or remove the signers themselves.
            if s.kind == StepKind::Inherit && !v.removed.contains(&s.from) {
                self.apply_removals(&mut v);
            }
            if !self.links(&v, s) {
                pending += 1;
                continue;
            }
            // Another step that applies at this state too: a dispute.
            for &j in &from_state[&(s.from, s.from_version)] {
                let t = steps[j];
                if j != i && !done[j] && t.twin_of(s) && self.links(&v, t) {
                    return Err((**s, *t));
                }
            }
            v.apply(s);
            done[i] = true;
        }
        self.apply_removals(&mut v);
        v.pending = pending;
        Ok(v)
    }

    /// Whether `s` applies to the view as it is: every block of it is at its
    /// state and not disputed, and its signer may make it.
    fn links(&self, v: &View, s: &StepBody) -> bool {
        let from = Block {
            owner: s.from,
            version: s.from_version,
        };
        let at_state = s.blocks().all(|b| v.blocks.get(b as usize) == Some(&from))
            && (v.disputed.is_empty() || s.blocks().all(|b| !v.disputed.contains(&b)));
        if !at_state {
            return false;
        }
        match s.kind {
            // A removed router's gift counts: the fold cannot tell whether
            // it was made before the removal, and where it raced the heir's
            // inheritance the two are a dispute.
            StepKind::Give => true,
            // The heir may have been removed since, by a removal the fold
            // already counts (removals have no place in the order): what
            // it took before stays taken, and goes on to its own heir.
            StepKind::Inherit => {
                v.removed.contains(&s.from)
                    && (v.heir(s.first) == Some(s.to)
                        || v.removed.contains(&s.to)
                            && v.blocks[v.before(s.first) as usize].owner == s.to)
            }
        }
    }

    /// Marks removed every peer whose certificate is valid in `v`: signed
    /// by the peer, or by owners (not removed) of more than half of all the
    /// blocks but the peer's. Blocks of removed owners that nobody has
    /// inherited yet count as not signing: removals have no place in the
    /// order, so at an early place in it a later removal's owners would
    /// otherwise drop out of the count, and a liar with sybils holding a
    /// small share of all blocks would hold most of what is left (found by
    /// the simulation, seed 1).
    fn apply_removals(&self, v: &mut View) {
        if self.removals.keys().all(|p| v.removed.contains(p)) {
            return;
        }
        let mut w: BTreeMap<PeerName, u64> = BTreeMap::new();
        for (o, n) in runs(&v.blocks) {
            *w.entry(o).or_default() += n;
        }
        let total = v.blocks.len() as u64;
        loop {
            let valid: Vec<PeerName> = self
                .removals
                .iter()
                .filter(|(p, _)| !v.removed.contains(*p))
                .filter(|(p, c)| {
                    if c.signers().any(|s| s == **p) {
                        return true;
                    }
                    let others = total - w.get(*p).copied().unwrap_or(0);
                    let signed: u64 = c
                        .signers()
                        .filter(|s| !v.removed.contains(s))
                        .filter_map(|s| w.get(&s))
                        .sum();
                    others > 0 && 2 * signed > others
                })
                .map(|(p, _)| *p)
                .collect();
            if valid.is_empty() {
                return;
            }
            v.removed.extend(valid);
        }
    }

    /// Takes in `step` if it checks and is not stamped more than
    /// [`MAX_AHEAD_MS`] after `now_ms`; returns whether it is new.
    pub fn add(&mut self, step: Step, now_ms: u64) -> Result<bool, StepError> {
        let cluster = self.cluster.ok_or(StepError::Malformed)?;
        if step.body.at_ms > now_ms.saturating_add(MAX_AHEAD_MS) {
            return Err(StepError::Ahead);
        }
        step.check(cluster, self.layout)?;
        let new = self.steps.insert(step.body, step.sig).is_none();
        if new {
            self.step_changed(step.body.at_ms);
            if !self.extend_view(&step.body) {
                self.changed();
            }
        }
        Ok(new)
    }

    /// `key` gives every block of `blocks` it holds now to `to`, one step per
    /// run at one version. Returns the steps made.
    pub fn give(
        &mut self,
        key: &impl Signer,
        blocks: std::ops::Range<u32>,
        to: PeerName,
        at_ms: u64,
    ) -> Vec<Step> {
        let me = key.name();
        let v = self.view().clone();
        if me == to || v.removed.contains(&me) {
            return Vec::new();
        }
        let mine: Vec<u32> = blocks.filter(|b| v.owner(*b) == Some(me)).collect();
        self.make(key, &v, &mine, StepKind::Give, to, at_ms)
    }

    /// `key` takes every block of a removed owner whose heir it is, again
    /// while that makes it the heir of more. Returns the steps made.
    pub fn inherit(&mut self, key: &impl Signer, at_ms: u64) -> Vec<Step> {
        let me = key.name();
        let mut made = Vec::new();
        loop {
            let v = self.view().clone();
            if v.removed.contains(&me) {
                return made;
            }
            // Each run of one removed owner's blocks at one version whose
            // first block follows one of ours.
            let n = v.blocks.len() as u32;
            let mut blocks = Vec::new();
            let mut b = 0;
            while b < n {
                let x = v.blocks[b as usize];
                if !v.removed.contains(&x.owner) || v.disputed.contains(&b) || v.heir(b) != Some(me)
                {
                    b += 1;
                    continue;
                }
                while b < n && v.blocks[b as usize] == x && !v.disputed.contains(&b) {
                    blocks.push(b);
                    b += 1;
                }
            }
            let steps = self.make(key, &v, &blocks, StepKind::Inherit, me, at_ms);
            if steps.is_empty() {
                return made;
            }
            made.extend(steps);
        }
    }

    /// Signs one step per run of `blocks` (ascending) at one `(owner,
    /// version)`, adds them, and returns those that are new.
    fn make(
        &mut self,
        key: &impl Signer,
        v: &View,
        blocks: &[u32],
        kind: StepKind,
        to: PeerName,
        at_ms: u64,
    ) -> Vec<Step> {
        let Some(cluster) = self.cluster else {
            return Vec::new();
        };
        // Later than every step we hold, so that the fold, which goes by
        // the steps' clocks, judges this one after what it follows.
        let latest = self
            .steps
            .keys()
            .next_back()
            .map_or(0, |s| s.at_ms)
            .max(self.base_at_ms());
        let at_ms = at_ms.max(latest.saturating_add(1));
        let mut out = Vec::new();
        let mut i = 0;
        while i < blocks.len() {
            let first = blocks[i];
            let at = v.blocks[first as usize];
            let mut count = 1;
            while i + (count as usize) < blocks.len()
                && blocks[i + count as usize] == first + count
                && v.blocks[(first + count) as usize] == at
            {
                count += 1;
            }
            i += count as usize;
            let body = StepBody {
                kind,
                first,
                count,
                from: at.owner,
                from_version: at.version,
                to,
                at_ms,
            };
            let step = Step::sign(key, cluster, body);
            if self.steps.insert(body, step.sig).is_none() {
                self.step_changed(body.at_ms);
                if !self.extend_view(&body) {
                    self.changed();
                }
                out.push(step);
            }
        }
        out
    }

    /// `key`'s signature on the removal of `peer`.
    pub fn sign_removal(&mut self, key: &impl Signer, peer: PeerName) -> bool {
        let Some(cluster) = self.cluster else {
            return false;
        };
        let sig = Removal::sign(key, cluster, peer);
        let o = self
            .removals
            .entry(peer)
            .or_default()
            .absorb(cluster, peer, [&sig], |_| true);
        if o.added > 0 {
            self.all_changed();
        }
        o.added > 0
    }

    /// Merges `other` in: its steps and removal signatures that check. A
    /// ledger with no base takes `other`'s (a joiner's first contact, taken
    /// on trust).
    pub fn merge(&mut self, other: &Ledger, now_ms: u64) -> LedgerMerge {
        let Some(theirs) = other.cluster else {
            return LedgerMerge::default();
        };
        if other.layout != self.layout {
            return LedgerMerge::default();
        }
        match self.cluster {
            Some(ours) if ours != theirs => return LedgerMerge::default(),
            Some(_) => {}
            None => {
                self.cluster = Some(theirs);
                self.base = other.base.clone();
                self.base_disputed = other.base_disputed.clone();
                self.base_cert = other.base_cert.clone();
                self.all_changed();
            }
        }
        // Their base first: steps it covers are then judged on it.
        let mut votes = VoteOutcome::default();
        if let Some(c) = &other.base_cert {
            votes = self.receive_certified(c);
        }
        // Most certificates a peer sends are ones we hold as they are.
        let differ: Vec<(PeerName, &Removal)> = other
            .removals
            .iter()
            .filter(|(p, c)| self.removals.get(*p) != Some(*c))
            .map(|(p, c)| (*p, c))
            .collect();
        let removals = differ.iter().map(|(p, c)| (*p, c.sigs()));
        let mut out = self.receive(other.steps(), removals, now_ms);
        let theirs_on_base = other.base_cert.iter().flat_map(|c| c.votes.iter().copied());
        let o = self.receive_votes(
            other.votes.values().copied().chain(theirs_on_base),
            other.offered.values(),
        );
        out.votes = VoteOutcome {
            added: votes.added + o.added,
            forged: votes.forged + o.forged,
            refused: votes.refused + o.refused,
            refused_checkpoints: votes.refused_checkpoints + o.refused_checkpoints,
            adopted: votes.adopted || o.adopted,
        };
        out
    }

    /// When the base was cut (0: the seed layout).
    pub fn base_at_ms(&self) -> u64 {
        self.base_cert.as_ref().map_or(0, |c| c.checkpoint.at_ms)
    }

    /// The checkpoint our base is, with the votes that made it.
    pub fn certified(&self) -> Option<&Certified> {
        self.base_cert.as_ref()
    }

    /// The votes held for a checkpoint newer than the base.
    pub fn votes(&self) -> impl Iterator<Item = &Vote> {
        self.votes.values()
    }

    /// How many steps are held (what checkpoints bound).
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// What the steps made up to `at_ms` leave on our base.
    pub fn prefix(&self, at_ms: u64) -> Checkpoint {
        let v = self.judge_upto(at_ms);
        Checkpoint {
            at_ms,
            blocks: v.blocks,
            disputed: v.disputed,
        }
    }

    /// [`Ledger::prefix`] with its digest, judged once until a step made up
    /// to `at_ms`, a removal or the base changes.
    fn prefix_cached(&mut self, at_ms: u64) -> (Checkpoint, [u8; 32]) {
        if let Some(p) = self.prefixes.0.get(&at_ms) {
            return p.clone();
        }
        let cp = self.prefix(at_ms);
        let d = cp.digest();
        self.prefixes.0.insert(at_ms, (cp.clone(), d));
        while self.prefixes.0.len() > MAX_PREFIXES {
            self.prefixes.0.pop_first();
        }
        (cp, d)
    }

    /// `key` signs the checkpoint of `at_ms` as our steps make it, once
    /// per time and only for a time newer than our base and than its last
    /// vote (the caller picks `at_ms` a settle time in the past, so that
    /// the steps up to it have spread). Returns the vote, which may have
    /// made that checkpoint our base.
    pub fn sign_checkpoint(&mut self, key: &impl Signer, at_ms: u64) -> Option<Vote> {
        let cluster = self.cluster?;
        let me = key.name();
        let last = self.votes.get(&me).map_or(0, |v| v.at_ms);
        if at_ms <= self.base_at_ms() || at_ms <= last || !self.view().holds_any(me) {
            return None;
        }
        let (cp, digest) = self.prefix_cached(at_ms);
        let vote = Vote::sign(key, cluster, at_ms, digest);
        self.votes.insert(me, vote);
        self.try_adopt(Some(&cp));
        Some(vote)
    }

    /// A peer's base with its votes: ours if it is newer and its votes
    /// pass (else counted in `refused_checkpoints`). Its votes are judged
    /// as they are, not kept: their signers may own nothing in our view now.
    pub fn receive_certified(&mut self, c: &Certified) -> VoteOutcome {
        let mut out = VoteOutcome::default();
        let at_ms = c.checkpoint.at_ms;
        let Some(cluster) = self.cluster else {
            return out;
        };
        if at_ms <= self.base_at_ms() || c.checkpoint.blocks.len() != self.base.len() {
            return out;
        }
        let digest = c.checkpoint.digest();
        let mut signers = BTreeSet::new();
        let mut votes = Vec::new();
        for v in &c.votes {
            if v.at_ms != at_ms || v.digest != digest || !v.verifies(cluster) {
                out.forged += 1;
            } else if signers.insert(v.signer()) {
                votes.push(*v);
            }
        }
        out.added = votes.len() as u32;
        out.adopted = self.passes(Some(c.checkpoint.clone()), &signers, at_ms, digest, votes);
        out.refused_checkpoints = u32::from(!out.adopted);
        out
    }

    /// Takes in `votes` that verify and whose signers own blocks in our
    /// view (one per signer, its newest), and `offered`, checkpoints a
    /// peer holds; a checkpoint newer than our base whose signers hold more
    /// than half of the blocks, in our view and in itself, becomes
    /// our base.
    pub fn receive_votes<'a>(
        &mut self,
        votes: impl IntoIterator<Item = Vote>,
        offered: impl IntoIterator<Item = &'a Checkpoint>,
    ) -> VoteOutcome {
        let mut out = VoteOutcome::default();
        let Some(cluster) = self.cluster else {
            return out;
        };
        let base_at = self.base_at_ms();
        let base_digest = self.base_cert.as_ref().map(|c| c.checkpoint.digest());
        for vote in votes {
            let signer = vote.signer();
            if vote.at_ms == base_at && base_digest == Some(vote.digest) {
                self.endorse_base(vote, cluster, &mut out);
                continue;
            }
            let newer = self.votes.get(&signer).is_none_or(|v| v.at_ms < vote.at_ms);
            if vote.at_ms <= base_at || !newer {
                continue;
            }
            if !vote.verifies(cluster) {
                out.forged += 1;
            } else if !self.view().holds_any(signer) {
                out.refused += 1;
            } else {
                self.votes.insert(signer, vote);
                out.added += 1;
            }
        }
        // Only checkpoints some vote we hold signs, the most voted for.
        let mut voters: BTreeMap<[u8; 32], usize> = BTreeMap::new();
        for v in self.votes.values() {
            *voters.entry(v.digest).or_default() += 1;
        }
        for c in offered {
            if c.at_ms > base_at && c.blocks.len() == self.base.len() {
                let d = c.digest();
                if voters.contains_key(&d) && !self.offered.contains_key(&d) {
                    self.offered.insert(d, c.clone());
                }
            }
        }
        self.offered.retain(|d, _| voters.contains_key(d));
        while self.offered.len() > MAX_OFFERED {
            let least = self
                .offered
                .keys()
                .min_by_key(|d| voters.get(*d))
                .copied()
                .unwrap_or([0; 32]);
            self.offered.remove(&least);
        }
        out.adopted = self.try_adopt(None);
        out
    }

    /// Adds `vote` for our base to the votes it carries, if its signer owns
    /// blocks in it and has not signed it there yet. A base passes where its
    /// signers held a majority; a ledger that missed steps the base folded
    /// (they are gone from every peer once folded) weighs the signers in its
    /// own prefix, where they may hold less, and takes the base only once
    /// enough of the other owners' own votes for it have gathered.
    fn endorse_base(&mut self, vote: Vote, cluster: u64, out: &mut VoteOutcome) {
        let Some(c) = &self.base_cert else {
            return;
        };
        let signer = vote.signer();
        if c.votes.iter().any(|v| v.signer() == signer)
            || !c.checkpoint.blocks.iter().any(|b| b.owner == signer)
        {
            return;
        }
        if !vote.verifies(cluster) {
            out.forged += 1;
            return;
        }
        if let Some(c) = &mut self.base_cert {
            c.votes.push(vote);
            out.added += 1;
        }
    }

    /// Makes the newest checkpoint the votes pass our base, if one does:
    /// our own prefix of its time, `mine`, or the one offered.
    fn try_adopt(&mut self, mine: Option<&Checkpoint>) -> bool {
        let mut by: BTreeMap<(u64, [u8; 32]), BTreeSet<PeerName>> = BTreeMap::new();
        for (p, v) in &self.votes {
            by.entry((v.at_ms, v.digest)).or_default().insert(*p);
        }
        // The newest first.
        for ((at_ms, digest), signers) in by.into_iter().rev() {
            let offered = mine
                .filter(|c| c.at_ms == at_ms && c.digest() == digest)
                .or_else(|| self.offered.get(&digest).filter(|c| c.at_ms == at_ms))
                .cloned();
            if offered
                .as_ref()
                .is_some_and(|c| !is_quorum(c.weight(&signers), c.blocks.len() as u64))
            {
                continue;
            }
            let votes: Vec<Vote> = self
                .votes
                .values()
                .filter(|v| v.at_ms == at_ms && v.digest == digest)
                .copied()
                .collect();
            if self.passes(offered, &signers, at_ms, digest, votes) {
                return true;
            }
        }
        false
    }

    /// Adopts the checkpoint of `at_ms` with `digest` if `signers` hold
    /// more than half of the blocks in it and in our own view of that time
    /// (not our view now: a signer may have crashed and been inherited
    /// since, and a ledger that is behind must still take the checkpoint
    /// its peers dropped their steps for). `offered` is its content if we
    /// have it; else only our own prefix of that time can be it.
    fn passes(
        &mut self,
        offered: Option<Checkpoint>,
        signers: &BTreeSet<PeerName>,
        at_ms: u64,
        digest: [u8; 32],
        votes: Vec<Vote>,
    ) -> bool {
        let (ours, our_digest) = self.prefix_cached(at_ms);
        let quorum = |c: &Checkpoint| is_quorum(c.weight(signers), c.blocks.len() as u64);
        if !quorum(&ours) {
            return false;
        }
        let cp = match offered {
            Some(c) if c.digest() == digest && quorum(&c) => c,
            Some(_) => return false,
            None if our_digest == digest => ours,
            None => return false,
        };
        self.adopt(Certified {
            checkpoint: cp,
            votes,
        });
        true
    }

    /// `c` becomes the base. Steps it covers go: those that applied up to
    /// its time, and those whose state it left behind (they can never
    /// link again). A step made up to its time that still applies on it (a
    /// late one the signers had not heard of) stays, and applies on it as
    /// anywhere. Certificates of removed routers it leaves owning nothing go.
    fn adopt(&mut self, c: Certified) {
        let cp = &c.checkpoint;
        let at_ms = cp.at_ms;
        self.base = cp.blocks.clone();
        self.base_disputed = cp.disputed.clone();
        // A removed router that owns nothing is nothing to the view: its
        // certificate goes. (Who is removed is not in the checkpoint: it
        // depends on the signatures each router holds, not only on the
        // steps, so it would split the votes.)
        let owners: BTreeSet<PeerName> = cp.blocks.iter().map(|x| x.owner).collect();
        self.removals.retain(|p, _| owners.contains(p));
        self.votes.retain(|_, v| v.at_ms > at_ms);
        self.offered.retain(|_, o| o.at_ms > at_ms);
        self.all_changed();
        let applied: BTreeSet<StepBody> = self
            .view()
            .applied
            .iter()
            .filter(|s| s.at_ms <= at_ms)
            .copied()
            .collect();
        self.steps
            .retain(|s, _| s.at_ms > at_ms || applied.contains(s));
        self.base_cert = Some(c);
        self.all_changed();
    }

    /// Takes in the steps and removal signatures a peer sent (what the wire
    /// will carry): those that check, and of the steps, those that link or
    /// are evidence of a dispute. A step that links nowhere is dropped, not
    /// kept: gossip brings it again once what it follows has come. An old
    /// step that others folded into their bases already is harmless: the
    /// state it leaves is gone from every view that folded it (versions only
    /// grow), so it applies only where it is still missing.
    pub fn receive<'a, S>(
        &mut self,
        steps: impl IntoIterator<Item = Step>,
        removals: impl IntoIterator<Item = (PeerName, S)>,
        now_ms: u64,
    ) -> LedgerMerge
    where
        S: IntoIterator<Item = &'a Sig>,
    {
        let mut out = LedgerMerge::default();
        let Some(cluster) = self.cluster else {
            return out;
        };
        let mut new = Vec::new();
        for step in steps {
            if self.steps.contains_key(&step.body) {
                continue;
            }
            match self.add(step, now_ms) {
                Ok(true) => new.push(step.body),
                Ok(false) => {}
                Err(StepError::Ahead) => out.ahead += 1,
                Err(_) => out.forged += 1,
            }
        }
        // Signatures by any router are kept: a signer's weight is counted
        // where the removal stands in the order, and may be gone now.
        for (peer, sigs) in removals {
            let o = self
                .removals
                .entry(peer)
                .or_default()
                .absorb(cluster, peer, sigs, |_| true);
            out.removals.absorb(o);
        }
        if out.removals.added > 0 {
            self.all_changed();
        }
        let new_len = new.len();
        let v = self.view();
        let applied: BTreeSet<&StepBody> = v.applied.iter().collect();
        let unlinked: Vec<StepBody> = new
            .into_iter()
            .filter(|s| !applied.contains(s) && !v.voided.contains(s))
            .collect();
        out.added += (new_len - unlinked.len()) as u32;
        out.unlinked += unlinked.len() as u32;
        for s in &unlinked {
            self.drop_pending(s);
        }
        out
    }
}

/// Why a ledger from the wire was refused before any of it was judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerWireError {
    #[error("the ledger's range is empty or past 2^32")]
    Range,
    #[error("a checkpoint's runs do not cover the blocks exactly once")]
    Runs,
    #[error("a checkpoint disputes a block outside the range")]
    Disputed,
}

impl Checkpoint {
    fn to_wire(&self) -> CheckpointWire {
        CheckpointWire {
            at_ms: self.at_ms,
            runs: runs_at(&self.blocks)
                .into_iter()
                .map(|(b, count)| BlockRunWire {
                    owner: b.owner,
                    version: b.version,
                    count,
                })
                .collect(),
            disputed: self.disputed.iter().copied().collect(),
        }
    }

    fn from_wire(w: &CheckpointWire, layout: Layout) -> Result<Checkpoint, LedgerWireError> {
        let n = layout.blocks as usize;
        let mut blocks = Vec::with_capacity(n);
        for r in &w.runs {
            if r.count == 0 || blocks.len() + r.count as usize > n {
                return Err(LedgerWireError::Runs);
            }
            let b = Block {
                owner: r.owner,
                version: r.version,
            };
            blocks.extend(std::iter::repeat_n(b, r.count as usize));
        }
        if blocks.len() != n {
            return Err(LedgerWireError::Runs);
        }
        if w.disputed.iter().any(|b| *b as usize >= n) {
            return Err(LedgerWireError::Disputed);
        }
        Ok(Checkpoint {
            at_ms: w.at_ms,
            blocks,
            disputed: w.disputed.iter().copied().collect(),
        })
    }
}

/// Consecutive blocks at one owner and version: `(block, how many)`.
fn runs_at(blocks: &[Block]) -> Vec<(Block, u32)> {
    let mut out: Vec<(Block, u32)> = Vec::new();
    for b in blocks {
        match out.last_mut() {
            Some((x, n)) if x == b => *n += 1,
            _ => out.push((*b, 1)),
        }
    }
    out
}

impl Vote {
    fn to_wire(self) -> VoteWire {
        VoteWire {
            at_ms: self.at_ms,
            digest: self.digest,
            sig: self.sig,
        }
    }

    fn from_wire(w: &VoteWire) -> Vote {
        Vote {
            at_ms: w.at_ms,
            digest: w.digest,
            sig: w.sig,
        }
    }
}

impl Step {
    pub fn to_wire(&self) -> StepWire {
        let b = &self.body;
        StepWire {
            at_ms: b.at_ms,
            kind: match b.kind {
                StepKind::Give => StepKindWire::Give,
                StepKind::Inherit => StepKindWire::Inherit,
            },
            first: b.first,
            count: b.count,
            from: b.from,
            from_version: b.from_version,
            to: b.to,
            sig: self.sig,
        }
    }

    pub fn from_wire(w: &StepWire) -> Step {
        Step {
            body: StepBody {
                at_ms: w.at_ms,
                kind: match w.kind {
                    StepKindWire::Give => StepKind::Give,
                    StepKindWire::Inherit => StepKind::Inherit,
                },
                first: w.first,
                count: w.count,
                from: w.from,
                from_version: w.from_version,
                to: w.to,
            },
            sig: w.sig,
        }
    }
}

impl Ledger {
    /// What we hold, as the wire carries it. At most
    /// [`MAX_LEDGER_STEPS`] steps go, the oldest (those that link first on
    /// the base); checkpoints bound the steps far below that, and the rest
    /// go once they do.
    pub fn to_wire(&self) -> LedgerWire {
        let base = Checkpoint {
            at_ms: self.base_at_ms(),
            blocks: self.base.clone(),
            disputed: self.base_disputed.clone(),
        };
        LedgerWire {
            start: self.layout.range.start,
            end: self.layout.range.end,
            cluster: self.cluster,
            base: base.to_wire(),
            base_votes: self
                .base_cert
                .iter()
                .flat_map(|c| c.votes.iter().map(|v| v.to_wire()))
                .collect(),
            steps: self
                .steps()
                .take(MAX_LEDGER_STEPS)
                .map(|s| s.to_wire())
                .collect(),
            removals: self.removals.iter().map(|(p, c)| c.to_wire(*p)).collect(),
            votes: self.votes.values().map(|v| v.to_wire()).collect(),
            offered: self.offered.values().map(Checkpoint::to_wire).collect(),
        }
    }

    /// A peer's ledger as it sent it, nothing judged yet: [`Ledger::merge`]
    /// takes in only what checks (steps, signatures, votes and the base's
    /// certificate), as it does from any ledger. Refused whole where its
    /// shape is wrong for its own range.
    pub fn from_wire(w: &LedgerWire) -> Result<Ledger, LedgerWireError> {
        if w.end > 1 << 32 || w.end <= u64::from(w.start) {
            return Err(LedgerWireError::Range);
        }
        let mut l = Ledger::new(AddrRange::new(w.start, w.end));
        let Some(cluster) = w.cluster else {
            return Ok(l);
        };
        let base = Checkpoint::from_wire(&w.base, l.layout)?;
        let offered = w
            .offered
            .iter()
            .map(|c| Checkpoint::from_wire(c, l.layout))
            .collect::<Result<Vec<_>, _>>()?;
        l.cluster = Some(cluster);
        l.base = base.blocks.clone();
        l.base_disputed = base.disputed.clone();
        if base.at_ms > 0 {
            l.base_cert = Some(Certified {
                checkpoint: base,
                votes: w.base_votes.iter().map(Vote::from_wire).collect(),
            });
        }
        l.steps = w
            .steps
            .iter()
            .map(|s| {
                let s = Step::from_wire(s);
                (s.body, s.sig)
            })
            .collect();
        for r in &w.removals {
            l.removals
                .entry(r.peer)
                .or_default()
                .add_unchecked(r.sigs.iter().copied());
        }
        for v in &w.votes {
            let v = Vote::from_wire(v);
            l.votes.insert(v.signer(), v);
        }
        l.offered = offered.into_iter().map(|c| (c.digest(), c)).collect();
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use weft_peer_proto::sign::KeyPair;

    use super::*;

    /// The receivers' clock: after every step the tests make.
    const NOW: u64 = 1_000_000;

    const R: AddrRange = AddrRange {
        start: 0x0a20_0000,
        end: 0x0a20_0000 + 1024,
    };

    fn keys(n: u8) -> Vec<KeyPair> {
        let mut k: Vec<KeyPair> = (0..n).map(|i| KeyPair::from_seed([i + 1; 32])).collect();
        k.sort_by_key(|k| k.name());
        k
    }

    fn seeded(k: &[KeyPair]) -> Ledger {
        let names: Vec<PeerName> = k.iter().map(|k| k.name()).collect();
        Ledger::seeded(R, &names, 7)
    }

    #[test]
    fn blocks_cover_the_range_once() {
        for len in [1u64, 3, 100, 1024, 1 << 20] {
            let r = AddrRange {
                start: 10,
                end: 10 + len,
            };
            let l = Layout::new(r);
            let mut next = u64::from(r.start);
            for b in 0..l.blocks() {
                let x = l.block(b);
                assert_eq!(u64::from(x.start), next, "len {len} block {b}");
                assert!(x.end > u64::from(x.start));
                assert_eq!(l.block_of(x.start), Some(b));
                assert_eq!(l.block_of((x.end - 1) as u32), Some(b));
                next = x.end;
            }
            assert_eq!(next, r.end);
        }
    }

    #[test]
    fn a_ledger_goes_over_the_wire_and_merges_as_itself() {
        use weft_peer_proto::codec::{decode_ledger, encode_ledger};
        let k = keys(4);
        let mut a = seeded(&k);
        let first = a.view().blocks_of(k[0].name())[0];
        a.give(&k[0], first..first + 2, k[1].name(), 1);
        for key in &k[1..] {
            a.sign_checkpoint(key, 5);
        }
        assert_eq!(a.base_at_ms(), 5);
        a.give(&k[1], first..first + 1, k[2].name(), 10);
        a.sign_removal(&k[0], k[3].name());
        a.sign_checkpoint(&k[0], 20).expect("k[0] holds blocks");
        let w = a.to_wire();
        assert_eq!(w.base_votes.len(), 2, "k[1] and k[2] passed it");
        assert_eq!((w.steps.len(), w.removals.len(), w.votes.len()), (1, 1, 1));
        let bytes = encode_ledger(&w).expect("within the limits");
        let back =
            Ledger::from_wire(&decode_ledger(&bytes).expect("decodes")).expect("well formed");
        assert_eq!(back.to_wire(), w);
        assert_eq!(back.view(), a.view());
        // A peer behind takes from the wire what it takes from the ledger.
        let mut b = seeded(&k);
        let mut c = seeded(&k);
        assert_eq!(b.merge(&a, NOW), c.merge(&back, NOW));
        assert_eq!(b.to_wire(), c.to_wire());
        // And a joiner, which takes its first base on trust.
        let mut j = Ledger::new(R);
        j.merge(&back, NOW);
        assert_eq!(j.to_wire(), w);
    }

    #[test]
    fn a_ledger_behind_takes_a_base_once_enough_owners_signed_it() {
        let k = keys(4);
        let mut y = seeded(&k);
        let first = y.view().blocks_of(k[0].name())[0];
        y.give(&k[0], first..first + 2, k[1].name(), 1);
        let (mut a, mut d) = (y.clone(), y.clone());
        for key in &k[1..3] {
            a.sign_checkpoint(key, 5);
        }
        assert_eq!(a.base_at_ms(), 5, "k[1] and k[2] hold more than half");
        assert!(a.is_empty(), "the gift is folded into the base");
        // c never heard of the gift: in its prefix of 5 the two signers
        // hold half, and the gift is gone from every peer.
        let mut c = seeded(&k);
        let o = c.merge(&a, NOW);
        assert_eq!((c.base_at_ms(), o.votes.refused_checkpoints), (0, 1));
        // k[3], which had not taken the base, signs its own prefix of 5;
        // a adds that vote to its base's, and then c takes it.
        d.sign_checkpoint(&k[3], 5).expect("k[3] holds blocks");
        let o = a.merge(&d, NOW);
        assert_eq!(o.votes.added, 1);
        assert_eq!(a.certified().map(|c| c.votes.len()), Some(3));
        a.merge(&d, NOW);
        assert_eq!(a.certified().map(|c| c.votes.len()), Some(3), "once");
        c.merge(&a, NOW);
        assert_eq!(c.base_at_ms(), 5);
        assert_eq!(c.view().owner(first), Some(k[1].name()));
    }

    #[test]
    fn a_ledger_of_the_wrong_shape_is_refused_whole() {
        let k = keys(3);
        let w = seeded(&k).to_wire();
        let refused = |f: &dyn Fn(&mut LedgerWire)| {
            let mut x = w.clone();
            f(&mut x);
            Ledger::from_wire(&x).err()
        };
        assert_eq!(refused(&|_| {}), None);
        let runs = Some(LedgerWireError::Runs);
        assert_eq!(refused(&|x| x.base.runs[0].count -= 1), runs);
        assert_eq!(refused(&|x| x.base.runs[0].count += 1), runs);
        assert_eq!(refused(&|x| x.base.runs[0].count = u32::MAX), runs);
        assert_eq!(
            refused(&|x| {
                let r = x.base.runs[0];
                x.base.runs.insert(0, BlockRunWire { count: 0, ..r });
            }),
            runs
        );
        assert_eq!(
            refused(&|x| {
                let mut c = x.base.clone();
                c.runs.pop();
                x.offered.push(c);
            }),
            runs,
            "an offered checkpoint too"
        );
        assert_eq!(
            refused(&|x| x.base.disputed.push(1024)),
            Some(LedgerWireError::Disputed)
        );
        assert_eq!(
            refused(&|x| x.end = (1 << 32) + 1),
            Some(LedgerWireError::Range)
        );
        assert_eq!(
            refused(&|x| x.end = u64::from(x.start)),
            Some(LedgerWireError::Range)
        );
    }

    #[test]
    fn the_wire_carries_the_oldest_steps_within_the_limit() {
        use weft_peer_proto::codec::{decode_ledger, encode_ledger};
        let k = keys(2);
        let mut a = seeded(&k);
        let b = a.view().blocks_of(k[0].name())[0];
        // One block given back and forth past the limit.
        for i in 0..=MAX_LEDGER_STEPS as u64 {
            let (from, to) = if i % 2 == 0 { (0, 1) } else { (1, 0) };
            let made = a.give(&k[from], b..b + 1, k[to].name(), i + 1);
            assert_eq!(made.len(), 1);
        }
        assert_eq!(a.len(), MAX_LEDGER_STEPS + 1);
        let w = a.to_wire();
        assert_eq!(w.steps.len(), MAX_LEDGER_STEPS);
        let last = w.steps.iter().map(|s| s.at_ms).max();
        assert_eq!(
            last,
            Some(MAX_LEDGER_STEPS as u64),
            "the newest stays behind"
        );
        let bytes = encode_ledger(&w).expect("a sender never builds what is refused");
        let mut c = seeded(&k);
        let o = c.merge(
            &Ledger::from_wire(&decode_ledger(&bytes).expect("decodes")).expect("shape"),
            NOW,
        );
        assert_eq!((o.added, o.forged), (MAX_LEDGER_STEPS as u32, 0));
        assert_eq!(
            c.view().owner(b),
            Some(k[0].name()),
            "an even number of gifts"
        );
    }

    #[test]
    fn a_step_stamped_ahead_of_our_clock_is_refused_until_it_is_not() {
        let k = keys(3);
        let mut a = seeded(&k);
        let mut b = seeded(&k);
        let first = a.view().blocks_of(k[0].name())[0];
        let ahead = NOW + MAX_AHEAD_MS + 1;
        a.give(&k[0], first..first + 1, k[1].name(), ahead);
        let o = b.merge(&a, NOW);
        assert_eq!((o.added, o.ahead, o.forged), (0, 1, 0));
        assert!(b.is_empty(), "not kept");
        // Had b kept it, its own next step would be stamped after it.
        let of2 = b.view().blocks_of(k[2].name())[0];
        let mine = b.give(&k[2], of2..of2 + 1, k[0].name(), NOW);
        assert_eq!(mine[0].body.at_ms, NOW);
        let o = b.merge(&a, ahead - MAX_AHEAD_MS);
        assert_eq!((o.added, o.ahead), (1, 0), "in time it is taken");
        assert_eq!(b.view().owner(first), Some(k[1].name()));
    }

    #[test]
    fn a_gift_applies_everywhere_and_only_the_owner_may_give() {
        let k = keys(3);
        let mut a = seeded(&k);
        let mut b = seeded(&k);
        let v = a.view().clone();
        let of0 = v.blocks_of(k[0].name());
        let steps = a.give(&k[0], of0[0]..of0[0] + 4, k[1].name(), 1);
        assert_eq!(steps.len(), 1);
        assert_eq!(b.merge(&a, NOW).added, 1);
        assert_eq!(a.view(), b.view());
        assert_eq!(b.view().owner(of0[0]), Some(k[1].name()));

        // k[2] signs a gift of k[0]'s blocks: dropped and counted.
        let body = StepBody {
            kind: StepKind::Give,
            first: of0[10],
            count: 2,
            from: k[0].name(),
            from_version: 1,
            to: k[2].name(),
            at_ms: 1,
        };
        let mut forged = seeded(&k);
        forged.steps.insert(body, Step::sign(&k[2], 7, body).sig);
        let o = b.merge(&forged, NOW);
        assert_eq!((o.added, o.forged), (0, 1));
        assert_eq!(b.view().owner(of0[10]), Some(k[0].name()));
    }

    #[test]
    fn a_step_that_does_not_link_waits_and_freezes_nothing() {
        let k = keys(3);
        let mut a = seeded(&k);
        let first = a.view().blocks_of(k[0].name())[0];
        let s1 = a.give(&k[0], first..first + 1, k[1].name(), 1);
        let s2 = a.give(&k[1], first..first + 1, k[2].name(), 2);
        let mut b = seeded(&k);
        b.add(s2[0], NOW).expect("signed by its maker");
        // Without the first gift, the second links nowhere: pending.
        let v = b.view().clone();
        assert_eq!((v.pending, v.owner(first)), (1, Some(k[0].name())));
        b.add(s1[0], NOW).expect("signed");
        assert_eq!(b.view().owner(first), Some(k[2].name()));
        assert_eq!(b.view(), a.view());

        // A step at the last version is refused outright; one of a version
        // nobody reached is only ever pending.
        let mut body = s1[0].body;
        body.from_version = u32::MAX;
        assert_eq!(
            Step::sign(&k[0], 7, body).check(7, b.layout()),
            Err(StepError::Malformed)
        );
        body.from_version = u32::MAX - 1;
        b.add(Step::sign(&k[0], 7, body), NOW).expect("signed");
        assert_eq!(b.view().owner(first), Some(k[2].name()));
    }

    #[test]
    fn a_double_gift_is_a_dispute_held_by_nobody() {
        let k = keys(3);
        let mut a = seeded(&k);
        let mut b = seeded(&k);
        let first = a.view().blocks_of(k[0].name())[0];
        a.give(&k[0], first..first + 2, k[1].name(), 1);
        b.give(&k[0], first + 1..first + 3, k[2].name(), 1);
        a.merge(&b, NOW);
        b.merge(&a, NOW);
        let v = a.view().clone();
        assert_eq!(&v, b.view());
        // The block given twice is held by nobody; neither gift applies, so
        // the rest stays the giver's.
        assert_eq!(v.owner(first + 1), None);
        for x in [first, first + 2, first + 3] {
            assert_eq!(v.owner(x), Some(k[0].name()), "block {x}");
        }
        assert_eq!((v.voided.len(), v.conflicts.len()), (2, 1));
    }

    #[test]
    fn only_a_weighted_majority_removes_and_the_heir_inherits() {
        let k = keys(4);
        let mut a = seeded(&k);
        let victim = k[2].name();
        // One owner of a quarter of the blocks: no majority.
        a.sign_removal(&k[0], victim);
        assert!(!a.view().removed.contains(&victim));
        // An inheritance without a valid removal never applies.
        let heir = a
            .view()
            .heir(a.view().blocks_of(victim)[0])
            .expect("an heir");
        let heir_key = k.iter().find(|x| x.name() == heir).expect("an owner");
        assert!(a.inherit(heir_key, 1).is_empty());
        a.sign_removal(&k[3], victim);
        assert!(a.view().removed.contains(&victim));
        let steps = a.inherit(heir_key, 1);
        assert!(!steps.is_empty());
        let v = a.view().clone();
        assert!(v.blocks_of(victim).is_empty());
        assert_eq!(v.blocks_of(heir).len(), 2 * 1024 / 4);
    }

    /// Owners of more than half of the blocks sign one checkpoint:
    /// it becomes the base, the steps it covers go, and the view stays. A
    /// ledger that is behind takes it from a merge, weighing its signers in
    /// its own view.
    #[test]
    fn a_checkpoint_two_thirds_sign_becomes_the_base() {
        let k = keys(4);
        let mut a = seeded(&k);
        let first = a.view().blocks_of(k[0].name())[0];
        a.give(&k[0], first..first + 8, k[1].name(), 1);
        a.give(&k[1], first..first + 4, k[2].name(), 5);
        a.give(&k[0], first + 20..first + 22, k[3].name(), 9);
        let lagging = seeded(&k);
        let before = a.view().clone();
        assert!(a.sign_checkpoint(&k[0], 8).is_some());
        assert!(a.sign_checkpoint(&k[0], 8).is_none(), "once per time");
        a.sign_checkpoint(&k[1], 8);
        assert_eq!(a.base_at_ms(), 0, "about half of the blocks: not yet");
        a.sign_checkpoint(&k[2], 8);
        assert_eq!(a.base_at_ms(), 8);
        assert_eq!(a.len(), 1, "only the step after the checkpoint is left");
        assert_eq!(a.view().blocks, before.blocks);
        assert!(a.votes().next().is_none());
        let mut b = lagging;
        let out = b.merge(&a, NOW);
        assert!(out.votes.adopted);
        assert_eq!(b.base_at_ms(), 8);
        assert_eq!(b.view().blocks, before.blocks);
        // A step made after the checkpoint stamps later than it.
        let made = b.give(&k[3], first + 20..first + 21, k[0].name(), 2);
        assert!(made[0].body.at_ms > 8);
    }

    /// A liar's checkpoint (its sybils' votes, or its own with one honest
    /// owner's) gives it nothing: sybils own no block, and a quarter plus a
    /// quarter of the blocks is not more than half.
    #[test]
    fn a_liars_checkpoint_is_refused() {
        let k = keys(4);
        let mut a = seeded(&k);
        let liar = &k[3];
        let mut forged = a.prefix(10);
        for b in &mut forged.blocks {
            b.owner = liar.name();
        }
        let cluster = a.cluster().expect("seeded");
        let sybils: Vec<KeyPair> = (0..8).map(|i| KeyPair::from_seed([100 + i; 32])).collect();
        let mut votes: Vec<Vote> = sybils
            .iter()
            .map(|s| Vote::sign(s, cluster, 10, forged.digest()))
            .collect();
        votes.push(Vote::sign(liar, cluster, 10, forged.digest()));
        let cert = Certified {
            checkpoint: forged.clone(),
            votes: votes.clone(),
        };
        let out = a.receive_certified(&cert);
        assert_eq!((out.added, out.refused_checkpoints), (9, 1));
        assert!(!out.adopted, "sybils own nothing here, the liar a quarter");
        // Its votes alone, kept: the sybils' are refused.
        assert_eq!(a.receive_votes(votes.iter().copied(), [&forged]).refused, 8);
        // Altered under a signature.
        let mut bad = votes[8];
        bad.at_ms = 11;
        assert_eq!(a.receive_votes([bad], []).forged, 1);
        // One honest owner signs the real prefix, the liar its own: no
        // content has more than half.
        a.sign_checkpoint(&k[0], 10);
        assert_eq!(a.base_at_ms(), 0);
        let liar_real = Vote::sign(liar, cluster, 12, a.prefix(12).digest());
        a.sign_checkpoint(&k[1], 12);
        a.receive_votes([liar_real], []);
        assert_eq!(a.base_at_ms(), 0, "half of the blocks");
        assert_eq!(a.view().blocks_of(liar.name()).len(), 1024 / 4);
    }

    /// A step made before a checkpoint's time that its signers had not
    /// heard of is not lost: where it links on the new base, it applies.
    #[test]
    fn a_late_step_that_links_on_the_checkpoint_applies() {
        let k = keys(4);
        let mut x = seeded(&k);
        let mut y = seeded(&k);
        let first = y.view().blocks_of(k[0].name())[0];
        y.give(&k[0], first..first + 2, k[1].name(), 1);
        for key in &k[1..] {
            x.sign_checkpoint(key, 5);
        }
        assert_eq!(x.base_at_ms(), 5);
        x.merge(&y, NOW);
        assert_eq!(x.view().owner(first), Some(k[1].name()));
        assert_eq!(x.view().blocks, y.view().blocks);
    }

    #[test]
    fn a_late_step_changes_the_prefix_votes_are_judged_on() {
        let k = keys(4);
        let mut x = seeded(&k);
        let mut y = seeded(&k);
        // x judges the prefix of 5 (one vote: no quorum yet)...
        x.sign_checkpoint(&k[3], 5).expect("k[3] holds blocks");
        assert_eq!(x.base_at_ms(), 0);
        // ...and then hears of a gift made at 1, which is in that prefix.
        let first = y.view().blocks_of(k[0].name())[0];
        y.give(&k[0], first..first + 2, k[1].name(), 1);
        x.merge(&y, NOW);
        assert_eq!(x.prefix_cached(5), {
            let p = x.prefix(5);
            let d = p.digest();
            (p, d)
        });
        let votes = [
            y.sign_checkpoint(&k[1], 5).expect("a signer holds blocks"),
            y.sign_checkpoint(&k[2], 5).expect("a signer holds blocks"),
        ];
        x.receive_votes(votes, []);
        assert_eq!(x.base_at_ms(), 5, "the votes sign the prefix with the gift");
        assert_eq!(x.view().owner(first), Some(k[1].name()));
    }
}
