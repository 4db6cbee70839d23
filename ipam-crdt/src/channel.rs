//! The `ipam` gossip channel: one router's [`Ipam`] (ring, allocator,
//! consensus) riding on the mesh, pure like the rest of this crate.
//!
//! Nothing leaves before it is on disk. Every change marks the state
//! unsaved; the driver writes [`IpamChannel::unsaved`] and then calls
//! [`IpamChannel::saved`], and only then does the channel queue what
//! depends on the change (our new state to a few neighbours, and straight
//! to a router we donated to). A driver whose write failed calls
//! [`IpamChannel::save_failed`]: the channel stops gossiping and
//! allocating, and says why in [`IpamChannel::stopped`].
//!
//! Time comes in as `now` on every input; the wall clock only once, at
//! start, for the sequence numbers of our free-space hints and the times of
//! our space requests (which must grow across restarts).
//!
//! What peers say is checked here before it reaches the allocator: space
//! requests must be signed by the requester, for our cluster, fresh, and not
//! too frequent; consensus claims must be signed by their voter, and are
//! ignored once the ring is seeded; free-space hints must be signed by the
//! router they describe, under our cluster, and are kept only for routers
//! that own space. What fails is dropped and counted
//! ([`IpamChannel::refused`]). We never send what a receiver would refuse:
//! our state is compacted first and checked against [`IpamMsg::validate`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use weft_mesh::{ChannelError, GossipChannel, GossipSender};
use weft_peer_proto::codec::{decode_ipam, encode_ipam};
use weft_peer_proto::ipam::{
    ClaimsWire, FREE_DOMAIN, FreeHint, IpamMsg, RingWire, SpaceRequestWire,
};
use weft_peer_proto::sign::{KeyPair, Signer};
use weft_peer_proto::{ChannelName, PeerName};

use crate::allocator::REMOVED_HORIZON_MS;
use crate::wire::{
    claims_verify, knowledge_from_wire, knowledge_to_wire, same_claims, sign_claims,
};
use crate::{AddrRange, AllocError, Init, Ipam, Refused, Ring, RingError, Snapshot, Waiting};

/// The channel's name on the mesh.
pub const CHANNEL: &str = "ipam";

/// The domain of space-request signatures.
pub const SPACE_DOMAIN: &str = "weft/space/1";

/// How far a space request's time may lie from ours (clock skew included);
/// an older one is stale, which is what bounds replay protection.
pub const SPACE_REQUEST_FRESH_MS: u64 = 5 * 60 * 1000;

/// The least time between two donations to one requester.
pub const DONATION_INTERVAL_MS: u64 = 2_000;

/// How often a write that failed is tried again.
pub const SAVE_RETRY: Duration = Duration::from_secs(1);

/// What a space request's signature covers.
fn space_statement(r: &SpaceRequestWire) -> (PeerName, u64, u64) {
    (r.requester, r.cluster, r.at_ms)
}

/// What a router keeps on disk: the ring, its own allocations, and its
/// consensus claims (a voter must never forget what it promised).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    pub ring: RingWire,
    pub allocs: Vec<(String, u32)>,
    pub consensus: Vec<ClaimsWire>,
    /// The wall clock (ms since the Unix epoch) when this state was last
    /// known current: when it was written, or, in a ring where others own
    /// space, when the newest peer's state merged into it was built. So a
    /// router restarting from a state older than the removal horizon
    /// knows it (written at least daily: [`RESAVE_MS`]). None in files
    /// from before.
    #[serde(default)]
    pub saved_ms: Option<u64>,
}

/// A state older than this at restart is stale ([`IpamChannel::restore`]):
/// a day short of [`REMOVED_HORIZON_MS`], after which the mesh forgets a
/// removal, so a router removed while it was away would no longer learn it.
pub const STALE_AFTER_MS: u64 = REMOVED_HORIZON_MS - RESAVE_MS;

/// How often an idle channel writes its state again anyway, to keep
/// [`Persisted::saved_ms`] recent.
pub const RESAVE_MS: u64 = 24 * 3600 * 1000;

/// How long a stale router that hears only other stale routers (the whole
/// mesh restarting after the horizon) waits before it takes their word.
pub const STALE_WAIT_MS: u64 = 10 * 60 * 1000;

/// A router restored from a stale state, or cut off from every peer's
/// state, for [`STALE_AFTER_MS`].
#[derive(Debug, Clone)]
struct Stale {
    /// Why nothing is handed out.
    reason: String,
    /// Since when (our ms).
    since_ms: u64,
    /// A seeded ring from a router that is not stale came (it decides).
    fresh_seen: bool,
    /// A stale router's ring merged without taking ours, and gave us all
    /// we own.
    stale_ok: bool,
    /// A stale router's ring did not (then only a fresh ring, or the
    /// operator, decides).
    stale_bad: bool,
    /// When the state we restored from was written (or last heard from a
    /// peer): kept in what we save while stale, so that a restart does not
    /// make it look fresh.
    saved_ms: u64,
}

/// Why the channel cannot take a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IpamError {
    /// A write of our state failed: nothing more is allocated or sent.
    #[error("IPAM stopped after a failed write: {0}")]
    Stopped(String),
    /// The driver holds new addresses ([`IpamChannel::hold`]).
    #[error("new addresses are held: {0}")]
    Held(String),
    #[error(transparent)]
    Alloc(#[from] AllocError),
    #[error(transparent)]
    Ring(#[from] RingError),
}

/// Why a router cannot take pods now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unready {
    /// `consensus=N`: not split yet, for `secs`.
    Consensus {
        secs: u64,
        seen: usize,
        expected: usize,
        quorum: usize,
    },
    /// Waiting for the seeds' ring, for `secs`.
    Ring { secs: u64 },
    /// rmpeer or a deleted Node removed us from the ring.
    Removed,
    /// A write failed.
    Stopped(String),
    /// New addresses are held ([`IpamChannel::hold`], or a stale state).
    Held(String),
}

pub struct IpamChannel {
    name: ChannelName,
    key: KeyPair,
    ipam: Ipam,
    /// The origin of the millisecond clock [`Ipam`] runs on.
    epoch: Instant,
    /// The wall clock (ms since the Unix epoch) at `epoch`.
    wall_ms: u64,
    /// Free addresses per router, as each last said and signed (ours too).
    hints: BTreeMap<PeerName, FreeHint>,
    /// The cluster our own hint was signed under.
    hint_cluster: Option<u64>,
    /// Changed since the driver last saved.
    unsaved: bool,
    /// Once saved: gossip our state, and send it straight to these routers.
    gossip_due: bool,
    direct: Vec<PeerName>,
    stopped: Option<String>,
    /// Why new addresses and donations are held, if they are.
    held: Option<String>,
    /// Restored from a stale state: nothing is handed out, and our ring
    /// goes out only as [`IpamMsg::Stale`], until a peer's ring confirms
    /// our ranges.
    stale: Option<Stale>,
    /// The wall clock at the last tick, and at the last save.
    wall_now_ms: u64,
    saved_wall_ms: u64,
    /// The wall clock when our ring was last known current: when the
    /// newest peer's state we merged was built, or the last tick while no
    /// other router owns space. A router that hears nobody for
    /// [`STALE_AFTER_MS`] (cut off, but still up) turns stale as if it had
    /// restarted from an old state.
    heard_ms: u64,
    /// When the state was last written again after a failed write.
    retried: Option<Instant>,
    sender: GossipSender,
    /// Keys allocated since the last save: rolled back if the save fails.
    unsaved_allocs: Vec<String>,
    /// Voters' claims with their signatures, as last verified (ours too).
    signed_claims: BTreeMap<PeerName, ClaimsWire>,
    /// The time of our last space request (they must grow).
    asked_ms: u64,
    /// Per requester: the time of its last request taken (replays and
    /// older ones refused), and when (our ms) we last donated to it.
    requests: BTreeMap<PeerName, (u64, u64)>,
    removed_horizon_ms: u64,
    refused: Refused,
}

impl IpamChannel {
    /// A router with no state yet, signing with `key` (its identity key:
    /// its name is the router's name). `wall_ms` is the wall clock at `now`.
    pub fn new(key: KeyPair, range: AddrRange, init: Init, now: Instant, wall_ms: u64) -> Self {
        let ipam = Ipam::new(key.name(), range, init, 0);
        Self::with(key, ipam, now, wall_ms)
    }

    /// A router restarting from what it saved. Fails when the saved ring is
    /// not one of `range` (the range changed, or the file is damaged).
    pub fn restore(
        key: KeyPair,
        range: AddrRange,
        init: Init,
        saved: &Persisted,
        now: Instant,
        wall_ms: u64,
    ) -> Result<Self, RingError> {
        let ring = Ring::from_saved(&saved.ring, range)?;
        let snap = Snapshot {
            ring,
            allocs: saved.allocs.clone(),
        };
        let knowledge = knowledge_from_wire(&saved.consensus);
        let ipam = Ipam::restore(key.name(), init, snap, &knowledge, 0);
        let mut ch = Self::with(key, ipam, now, wall_ms);
        ch.heard_ms = saved.saved_ms.unwrap_or(wall_ms).min(wall_ms);
        if let Some(at) = saved.saved_ms
            && wall_ms.saturating_sub(at) >= STALE_AFTER_MS
            && ch.ipam.alloc().ring().is_seeded()
            && !ch.sole_owner()
        {
            let days = wall_ms.saturating_sub(at) / (24 * 3600 * 1000);
            let reason = format!(
                "the IPAM state was last saved {days} days ago, past the {} days after which \
                 the mesh forgets a removal: this router may have been removed meanwhile and its \
                 space given away, so it hands out nothing until a peer's ring shows its ranges \
                 are still its own (docs/trust.md)",
                REMOVED_HORIZON_MS / (24 * 3600 * 1000)
            );
            ch.stale = Some(Stale {
                reason,
                since_ms: 0,
                fresh_seen: false,
                stale_ok: false,
                stale_bad: false,
                saved_ms: at,
            });
        }
        for c in &saved.consensus {
            if claims_verify(range, c) {
                ch.signed_claims.insert(c.voter, c.clone());
            }
        }
        Ok(ch)
    }

    /// We own all the space (a mesh of one): nobody can have removed us,
    /// nor forgotten anything we would bring back.
    fn sole_owner(&self) -> bool {
        let me = self.ipam.alloc().me();
        let owners = self.ipam.alloc().ring().ownership();
        owners.contains_key(&me) && owners.keys().all(|p| *p == me)
    }

    /// The operator says this router's state holds although it is older
    /// than the horizon (`meshd --trust-stale-ipam`): every other router
    /// is gone for good, or the mesh restarted whole and the stale rings
    /// disagree. Ends the stale hold.
    pub fn trust_stale(&mut self) {
        if self.stale.take().is_some() {
            self.heard_ms = self.wall_now_ms;
            self.changed();
        }
    }

    fn with(key: KeyPair, ipam: Ipam, now: Instant, wall_ms: u64) -> Self {
        IpamChannel {
            name: ChannelName::new(CHANNEL).unwrap_or_else(|_| unreachable!("a valid name")),
            key,
            ipam,
            epoch: now,
            wall_ms,
            hints: BTreeMap::new(),
            hint_cluster: None,
            // What we start from is saved (again) before anything is sent.
            unsaved: true,
            gossip_due: true,
            direct: Vec::new(),
            stopped: None,
            held: None,
            stale: None,
            wall_now_ms: wall_ms,
            saved_wall_ms: wall_ms,
            heard_ms: wall_ms,
            retried: None,
            sender: GossipSender::default(),
            unsaved_allocs: Vec::new(),
            signed_claims: BTreeMap::new(),
            asked_ms: 0,
            requests: BTreeMap::new(),
            removed_horizon_ms: REMOVED_HORIZON_MS,
            refused: Refused::default(),
        }
    }

    /// How long a removed router that owns nothing is remembered (default
    /// [`REMOVED_HORIZON_MS`]; simulations shorten it).
    pub fn set_removed_horizon(&mut self, ms: u64) {
        self.removed_horizon_ms = ms;
    }

    /// What was dropped from peers (and not sent by us), by kind: the
    /// allocator's counts and the channel's own.
    pub fn refused(&self) -> Refused {
        let a = self.ipam.alloc().refused();
        let c = &self.refused;
        Refused {
            removal_sig: a.removal_sig,
            removal_signer: a.removal_signer,
            removal_target: a.removal_target,
            ring_takes_ours: a.ring_takes_ours,
            ..*c
        }
    }

    fn wall(&self, now: Instant) -> u64 {
        self.wall_ms.saturating_add(self.ms(now))
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    fn changed(&mut self) {
        self.unsaved = true;
        self.gossip_due = true;
    }

    // ---- persistence, with the driver ----

    /// The state to write, when it changed since the last [`Self::saved`].
    pub fn unsaved(&self) -> Option<Persisted> {
        if !self.unsaved || self.stopped.is_some() {
            return None;
        }
        Some(self.persisted())
    }

    /// After a failed write, the whole state to write again, at most once a
    /// second (so a full disk is not hammered); [`Self::resumed`] once it is
    /// on disk.
    pub fn retry_due(&mut self, now: Instant) -> Option<Persisted> {
        self.stopped.as_ref()?;
        if self
            .retried
            .is_some_and(|t| now.saturating_duration_since(t) < SAVE_RETRY)
        {
            return None;
        }
        self.retried = Some(now);
        Some(self.persisted())
    }

    /// The driver wrote [`Self::retry_due`]'s state: run again, and tell the
    /// mesh what changed meanwhile.
    pub fn resumed(&mut self, now: Instant) {
        self.stopped = None;
        self.retried = None;
        self.gossip_due = true;
        self.saved(now);
    }

    fn persisted(&self) -> Persisted {
        let snap = self.ipam.alloc().snapshot();
        // Once seeded the claims are of no use to anyone: not stored.
        let consensus = if snap.ring.is_seeded() {
            Vec::new()
        } else {
            self.signed_knowledge()
        };
        Persisted {
            ring: snap.ring.to_wire(),
            allocs: snap.allocs,
            consensus,
            saved_ms: Some(self.stale.as_ref().map_or(self.heard_ms, |s| s.saved_ms)),
        }
    }

    /// Everyone's claims as we send and store them: ours signed now, the
    /// others' with the signature they came with (a voter's claims we have
    /// no signature for are left out).
    fn signed_knowledge(&self) -> Vec<ClaimsWire> {
        let me = self.key.name();
        let range = self.range();
        knowledge_to_wire(self.ipam.knowledge())
            .into_iter()
            .filter_map(|c| match self.signed_claims.get(&c.voter) {
                Some(s) if same_claims(s, &c) => Some(s.clone()),
                _ if c.voter == me => Some(sign_claims(&self.key, range, c)),
                _ => None,
            })
            .collect()
    }

    /// The driver wrote [`Self::unsaved`]: what waited for it may leave.
    pub fn saved(&mut self, now: Instant) {
        self.unsaved = false;
        self.unsaved_allocs.clear();
        self.saved_wall_ms = self.wall_now_ms;
        if self.stopped.is_some() || (!self.gossip_due && self.direct.is_empty()) {
            return;
        }
        let Some(state) = self.state_msg(now) else {
            return;
        };
        if std::mem::take(&mut self.gossip_due) {
            self.sender.gossip(state.clone());
        }
        for p in std::mem::take(&mut self.direct) {
            self.sender.unicast(p, state.clone());
        }
    }

    /// The driver could not write: stop, send nothing that was not saved,
    /// and forget the allocations that were not saved (none of them may be
    /// handed out, now or on a retry).
    pub fn save_failed(&mut self, error: String) {
        for key in std::mem::take(&mut self.unsaved_allocs) {
            self.ipam.alloc_mut().release(&key);
        }
        self.stopped = Some(error);
        self.sender.clear();
        self.direct.clear();
    }

    /// Why the channel stopped (a failed write), if it did.
    pub fn stopped(&self) -> Option<&str> {
        self.stopped.as_deref()
    }

    /// Holds new allocations, donations and requests for space (with a
    /// reason), or resumes them (`None`); releases, gossip and removals go
    /// on. meshd holds while another router runs with this router's
    /// identity: the clone has a copy of this ring and these allocations,
    /// so whatever either of them handed out could be the other's too.
    pub fn hold(&mut self, why: Option<String>) {
        self.held = why;
    }

    /// Why new addresses are held by [`Self::hold`], if they are.
    pub fn held(&self) -> Option<&str> {
        self.held.as_deref()
    }

    /// Why a router restored from a stale state hands nothing out yet.
    pub fn stale(&self) -> Option<&str> {
        self.stale.as_ref().map(|s| s.reason.as_str())
    }

    fn running(&self) -> Result<(), IpamError> {
        match &self.stopped {
            Some(why) => Err(IpamError::Stopped(why.clone())),
            None => Ok(()),
        }
    }

    // ---- requests ----

    /// Allocates for `key` (or claims `addr` for it). Saved by the driver
    /// before the address is handed out.
    pub fn allocate(&mut self, key: &str, addr: Option<u32>) -> Result<u32, IpamError> {
        self.running()?;
        if let Some(why) = self
            .held
            .as_ref()
            .or(self.stale.as_ref().map(|s| &s.reason))
        {
            // A key asked again keeps its address: nothing new goes out.
            if let Some(had) = self.ipam.alloc().lookup(key)
                && addr.is_none_or(|a| a == had)
            {
                return Ok(had);
            }
            return Err(IpamError::Held(why.clone()));
        }
        let before = self.ipam.alloc().lookup(key);
        let a = match addr {
            Some(a) => self.ipam.alloc_mut().claim(key, a).map(|()| a)?,
            None => self.ipam.alloc_mut().allocate(key)?,
        };
        if before != Some(a) {
            self.unsaved = true;
            self.unsaved_allocs.push(key.to_owned());
        }
        Ok(a)
    }

    /// Releases `key` (unknown keys are fine).
    pub fn release(&mut self, key: &str) -> Result<Option<u32>, IpamError> {
        self.running()?;
        let r = self.ipam.alloc_mut().release(key);
        if r.is_some() {
            self.unsaved = true;
        }
        Ok(r)
    }

    /// Signs the removal of `peer`, gone for good. It takes effect (and
    /// the heir takes `peer`'s space) once the certificate is valid: signed
    /// by more than half of the other owners, whose signatures gather by
    /// gossip. The caller decides when we may sign (docs/trust.md: asked by
    /// the operator or Kubernetes, and `peer` unreachable long enough).
    /// Signing our own removal (we leave) takes effect at once.
    pub fn sign_removal(&mut self, peer: PeerName) -> Result<bool, IpamError> {
        self.running()?;
        let changed = self.ipam.alloc_mut().sign_removal(&self.key, peer)?;
        if changed {
            self.changed();
        }
        Ok(changed)
    }

    /// Whether `peer` is removed here (its certificate is complete).
    pub fn is_removed_peer(&self, peer: PeerName) -> bool {
        self.ipam.alloc().ring().removed().contains(&peer)
    }

    /// Asks `donor` for some of its space (it answers with its new ring).
    pub fn ask_for_space(&mut self, donor: PeerName, now: Instant) {
        let Some(cluster) = self.ipam.alloc().ring().cluster() else {
            return;
        };
        if self.stopped.is_some() || self.held.is_some() || self.stale.is_some() {
            return;
        }
        self.asked_ms = self.wall(now).max(self.asked_ms + 1);
        let requester = self.key.name();
        let at_ms = self.asked_ms;
        let req = SpaceRequestWire {
            requester,
            cluster,
            at_ms,
            // The statement `space_statement` makes of this request.
            sig: self.key.sign(SPACE_DOMAIN, &(requester, cluster, at_ms)),
        };
        if let Ok(msg) = encode_ipam(&IpamMsg::SpaceRequest(req)) {
            self.sender.unicast(donor, msg);
        }
    }

    /// A space request: donate to its requester if it verifies, is fresh,
    /// and the requester did not get space from us just now.
    fn on_space_request(&mut self, now: Instant, src: PeerName, req: &SpaceRequestWire) {
        if self.stopped.is_some() || self.held.is_some() || self.stale.is_some() {
            return;
        }
        let wall = self.wall(now);
        let ours = self.ipam.alloc().ring().cluster();
        let last = self.requests.get(&req.requester).copied();
        let genuine = req.requester == src
            && ours == Some(req.cluster)
            && req.at_ms.abs_diff(wall) <= SPACE_REQUEST_FRESH_MS
            && last.is_none_or(|(at, _)| at < req.at_ms)
            && req
                .sig
                .verify_by(req.requester, SPACE_DOMAIN, &space_statement(req))
                .is_ok();
        if !genuine {
            self.refused.space_request += 1;
            return;
        }
        let ms = self.ms(now);
        let given_at = last.map(|(_, given)| given);
        self.requests
            .insert(req.requester, (req.at_ms, given_at.unwrap_or(0)));
        if given_at.is_some_and(|g| ms.saturating_sub(g) < DONATION_INTERVAL_MS) {
            self.refused.space_rate += 1;
            return;
        }
        if self.ipam.alloc_mut().donate(req.requester).is_some() {
            self.requests.insert(req.requester, (req.at_ms, ms));
            self.changed();
            self.direct.push(req.requester);
        }
    }

    /// Time passing (consensus proposals, compaction). `jitter` is random.
    pub fn tick(&mut self, now: Instant, jitter: u64) {
        if self.stopped.is_some() {
            return;
        }
        let ms = self.ms(now);
        let mut changed = self.ipam.tick(ms, jitter);
        let wall = self.wall(now);
        self.wall_now_ms = wall;
        // An idle router writes again now and then, so that its saved
        // time says it was up (a restart from it is not stale).
        if wall.saturating_sub(self.saved_wall_ms) >= RESAVE_MS {
            self.unsaved = true;
        }
        // Only stale routers heard, for long enough, and they all agree we
        // own what we own (the mesh restarted whole after the horizon):
        // their word is all there is. (Alone, nobody's word: the hold
        // stays, or the operator lifts it, `trust_stale`.)
        if let Some(st) = &self.stale
            && !st.fresh_seen
            && st.stale_ok
            && !st.stale_bad
            && ms.saturating_sub(st.since_ms) >= STALE_WAIT_MS
        {
            self.stale = None;
            self.heard_ms = wall;
            changed = true;
        }
        changed |= self.cut_off(ms, wall);
        changed |= self
            .ipam
            .alloc_mut()
            .compact(ms, wall, self.removed_horizon_ms);
        if changed {
            self.changed();
        }
        // Requests older than the freshness window are refused as stale
        // anyway: what we remember of them may go.
        let oldest = self.wall(now).saturating_sub(SPACE_REQUEST_FRESH_MS);
        self.requests.retain(|_, (at, _)| *at >= oldest);
    }

    // ---- what it knows ----

    pub fn ipam(&self) -> &Ipam {
        &self.ipam
    }

    pub fn range(&self) -> AddrRange {
        self.ipam.alloc().ring().range()
    }

    /// Whether we are in the ring's removed set: we can allocate nothing, ever.
    pub fn is_removed(&self) -> bool {
        let a = self.ipam.alloc();
        a.ring().removed().contains(&a.me())
    }

    /// What allocation waits for, and for how many seconds (or, once
    /// ready, since when it is).
    pub fn waiting(&self, now: Instant) -> (Waiting, u64) {
        (
            self.ipam.waiting(),
            self.ms(now).saturating_sub(self.ipam.since_ms()) / 1000,
        )
    }

    /// Why this router cannot take pods now (None when it can).
    pub fn unready(&self, now: Instant) -> Option<Unready> {
        if let Some(why) = &self.stopped {
            return Some(Unready::Stopped(why.clone()));
        }
        if self.is_removed() {
            return Some(Unready::Removed);
        }
        if let Some(why) = self
            .held
            .as_ref()
            .or(self.stale.as_ref().map(|s| &s.reason))
        {
            return Some(Unready::Held(why.clone()));
        }
        match self.waiting(now) {
            (Waiting::Ready, _) => None,
            (
                Waiting::Consensus {
                    seen,
                    expected,
                    quorum,
                },
                secs,
            ) => Some(Unready::Consensus {
                secs,
                seen,
                expected,
                quorum,
            }),
            (Waiting::Ring, secs) => Some(Unready::Ring { secs }),
        }
    }

    /// Free addresses `peer` last reported.
    pub fn free_of(&self, peer: PeerName) -> Option<u64> {
        self.hints.get(&peer).map(|h| h.free)
    }

    /// The router to ask for space among those `eligible`: the one with the
    /// most free addresses as far as we know, else the one owning the most.
    pub fn donor(&self, eligible: impl Fn(PeerName) -> bool) -> Option<PeerName> {
        let me = self.ipam.alloc().me();
        self.ipam
            .alloc()
            .ring()
            .ownership()
            .into_iter()
            .filter(|(p, _)| *p != me && eligible(*p))
            .max_by_key(|(p, owned)| (self.free_of(*p).unwrap_or(0), *owned))
            .map(|(p, _)| p)
    }

    // ---- the wire ----

    /// The encoded state we gossip, with our free count refreshed in it.
    fn state_msg(&mut self, now: Instant) -> Option<Vec<u8>> {
        // A stale ring goes out marked: it may bring back what the mesh
        // forgot (a removed router's ranges, compacted tokens), so only
        // other stale routers look at it.
        if self.stale.is_some() {
            let msg = IpamMsg::Stale(self.ipam.alloc().ring().to_wire());
            if msg.validate().is_err() {
                self.refused.oversize += 1;
                return None;
            }
            return encode_ipam(&msg).ok();
        }
        let me = self.ipam.alloc().me();
        let free = self.ipam.alloc().free_count();
        let cluster = self.ipam.alloc().ring().cluster();
        let stale = self
            .hints
            .get(&me)
            .is_none_or(|h| h.free != free || self.hint_cluster != cluster);
        if stale {
            let wall = self.wall_ms.saturating_add(self.ms(now));
            let seq = wall.max(self.hints.get(&me).map_or(0, |h| h.seq + 1));
            // `FreeHint::statement` of this hint.
            let sig = self.key.sign(FREE_DOMAIN, &(me, cluster, seq, free));
            let hint = FreeHint {
                peer: me,
                seq,
                free,
                sig,
            };
            self.hints.insert(me, hint);
            self.hint_cluster = cluster;
        }
        // Once the ring is seeded nobody needs the claims (a late router
        // adopts the ring), and they grow with the square of the voters.
        let consensus = if self.ipam.alloc().ring().is_seeded() {
            Vec::new()
        } else {
            self.signed_knowledge()
        };
        let msg = IpamMsg::State {
            ring: self.ipam.alloc().ring().to_wire(),
            consensus,
            free: self.hints.values().copied().collect(),
            at_ms: self.wall(now),
        };
        // A receiver refuses a message past the limits: we do not send one.
        if msg.validate().is_err() {
            self.refused.oversize += 1;
            return None;
        }
        encode_ipam(&msg).ok()
    }

    fn on_state(
        &mut self,
        now: Instant,
        ring: RingWire,
        consensus: Vec<ClaimsWire>,
        free: Vec<FreeHint>,
        at_ms: u64,
    ) -> Result<(), ChannelError> {
        // A state built near or past the horizon ago (delivered late, or
        // replayed) may bring back what the mesh forgot since: an entry
        // its owner compacted, forgot, split again at a lower version and
        // gave away beats that split, so the owner takes the range back
        // while the recipient keeps it (found by the ipam_channel fuzz
        // target, with the owner's state delivered 40 days late). Refused
        // at the age tombstones are refused at.
        let wall = self.wall(now);
        if wall.saturating_sub(at_ms) >= self.take_for() {
            self.refused.old_state += 1;
            return Ok(());
        }
        let merged = self.on_ring(now, ring, consensus, free, false);
        if merged.is_ok() && self.stale.is_none() {
            self.heard_ms = self.heard_ms.max(at_ms.min(wall));
        }
        merged
    }

    /// How old a state or tombstone we still take in may be: a seventh of
    /// the horizon short of it, which its maker keeps it longer.
    fn take_for(&self) -> u64 {
        self.removed_horizon_ms - self.removed_horizon_ms / 7
    }

    /// A stale router's ring: looked at only by a stale router.
    fn on_stale(&mut self, now: Instant, ring: RingWire) -> Result<(), ChannelError> {
        if self.stale.is_none() {
            return Ok(());
        }
        self.on_ring(now, ring, Vec::new(), Vec::new(), true)
    }

    fn on_ring(
        &mut self,
        now: Instant,
        ring: RingWire,
        consensus: Vec<ClaimsWire>,
        free: Vec<FreeHint>,
        from_stale: bool,
    ) -> Result<(), ChannelError> {
        let bad = |e: String| ChannelError(e);
        if self.stopped.is_some() {
            return Ok(());
        }
        // A tombstone near or past the horizon may be one its maker already
        // forgot, and then split its token again under a version the
        // tombstone beats: taken in, it would hide that split and give us
        // the maker's space (found by the ipam_channel fuzz target, with a
        // state delivered 49 days late). Its maker keeps it a seventh of
        // the horizon longer than we take it.
        let mut ring = ring;
        let wall = self.wall(now);
        let take_for = self.take_for();
        ring.tombs
            .retain(|t| wall.saturating_sub(t.at_ms) < take_for);
        let ring = Ring::from_wire(&ring, self.range()).map_err(|e| bad(e.to_string()))?;
        let now_ms = self.ms(now);
        // Claims count only while the ring is not seeded, and only signed.
        let mut claims = Vec::new();
        if self.ipam.alloc().ring().is_seeded() {
            self.refused.late_claims += consensus.len() as u64;
        } else {
            let range = self.range();
            for c in consensus {
                if claims_verify(range, &c) {
                    claims.push(c);
                } else {
                    self.refused.claims += 1;
                }
            }
        }
        // What we own before the merge (which may make us an heir): what a
        // stale router asks a peer's ring to confirm.
        let mine = self
            .stale
            .is_some()
            .then(|| self.ipam.alloc().ring().ranges_of(self.ipam.alloc().me()));
        let other_cluster = matches!(
            (self.ipam.alloc().ring().cluster(), ring.cluster()),
            (Some(a), Some(b)) if a != b
        );
        let result = self
            .ipam
            .on_state(Some(&ring), &knowledge_from_wire(&claims), now_ms);
        // Keep the signature of each voter's claims we now hold.
        let held = knowledge_to_wire(self.ipam.knowledge());
        for c in claims {
            if held.iter().any(|h| same_claims(h, &c)) {
                self.signed_claims.insert(c.voter, c);
            }
        }
        // Hints, even beside a refused ring: signed by the router they
        // describe, and kept only for routers that own space, so they stay
        // bounded. Only a hint newer than ours is checked (relayed ones we
        // hold come back often).
        // Until our ring is seeded nobody owns space, so none is kept.
        let owners = self.ipam.alloc().ring().ownership();
        let me = self.ipam.alloc().me();
        let cluster = self.ipam.alloc().ring().cluster();
        // (Beside another cluster's ring, hints are that cluster's: not
        // ours to judge, nor forgeries.)
        for h in free
            .into_iter()
            .filter(|_| cluster.is_some() && !other_cluster)
        {
            let newer = self.hints.get(&h.peer).is_none_or(|held| held.seq < h.seq);
            if h.peer == me || !newer {
                continue;
            }
            let signed = |at| h.sig.verify_by(h.peer, FREE_DOMAIN, &h.statement(at));
            if signed(cluster).is_ok() {
                if owners.contains_key(&h.peer) {
                    self.hints.insert(h.peer, h);
                }
            } else if signed(None).is_err() {
                // (One signed before its router's ring was seeded is
                // genuine, and stale: ignored.)
                self.refused.free_hint += 1;
            }
        }
        // (The cluster of a seeded ring never changes, so a hint we hold
        // was checked under the one we have.)
        self.hints.retain(|p, _| *p == me || owners.contains_key(p));
        if let Some(mine) = mine
            && !other_cluster
        {
            self.confirm_stale(&ring, &mine, result.is_ok(), from_stale);
        }
        match result {
            Ok(true) => self.changed(),
            Ok(false) => {}
            Err(e) => {
                // Our consensus claims may have moved before the ring was
                // refused: they are saved before they are sent.
                self.changed();
                return Err(bad(e.to_string()));
            }
        }
        Ok(())
    }

    /// Up, but cut off from every peer's state for [`STALE_AFTER_MS`]: our
    /// ring may bring back what the mesh forgot meanwhile (a compacted
    /// token's old entry beats its new split), so we turn stale as a
    /// router restarting from an old state does. Returns whether we did.
    fn cut_off(&mut self, ms: u64, wall: u64) -> bool {
        let ring = self.ipam.alloc().ring();
        if self.stale.is_some() {
            return false;
        }
        if !ring.is_seeded() || self.sole_owner() {
            // Nobody else's space to be wrong about.
            self.heard_ms = wall;
            return false;
        }
        let quiet = wall.saturating_sub(self.heard_ms);
        if quiet < STALE_AFTER_MS {
            return false;
        }
        let days = quiet / (24 * 3600 * 1000);
        let reason = format!(
            "this router has merged no peer's IPAM state for {days} days, near the {} days              after which the mesh forgets a removal and a compacted token: its ring may bring              back what the mesh forgot, so it hands out nothing until a peer's ring shows its              ranges are still its own (docs/trust.md)",
            REMOVED_HORIZON_MS / (24 * 3600 * 1000)
        );
        self.stale = Some(Stale {
            reason,
            since_ms: ms,
            fresh_seen: false,
            stale_ok: false,
            stale_bad: false,
            saved_ms: self.heard_ms,
        });
        true
    }

    /// Restored from a stale state: a seeded ring from a router that is
    /// not stale, which merged (nothing of ours taken) and gives us every
    /// address we own, ends the hold, and we take that ring whole; one that
    /// gives our ranges to others says why the hold goes on. Stale
    /// routers' rings count only when no fresh ring came for
    /// [`STALE_WAIT_MS`], and none of them contradicted ours (`tick`).
    /// `mine` is what we owned before the merge, which may have made us
    /// an heir (the fresh ring cannot know it yet).
    fn confirm_stale(&mut self, theirs: &Ring, mine: &[AddrRange], merged: bool, from_stale: bool) {
        let me = self.ipam.alloc().me();
        let Some(st) = self.stale.as_mut() else {
            return;
        };
        if !theirs.is_seeded() {
            return;
        }
        st.fresh_seen |= !from_stale;
        let held_there = theirs.ranges_of(me);
        let covered = mine.iter().all(|r| {
            let inside: u64 = held_there
                .iter()
                .map(|h| {
                    let (lo, hi) = (u64::from(r.start.max(h.start)), r.end.min(h.end));
                    hi.saturating_sub(lo)
                })
                .sum();
            inside == r.end - u64::from(r.start)
        });
        // Nor may it give us more than we hold now: taken whole, it would
        // undo a donation of ours it has not heard of, and we would hand
        // out what the recipient (and, once the ring heals, the heirs
        // after it) hand out too (found by the ipam_channel fuzz target: a
        // donor cut off for the horizon, confirmed by the recipient's ring
        // from before the gift, later inherited the range beyond the gift
        // as the recipient did). A ring that has heard of it confirms.
        let now_mine = self.ipam.alloc().ring().ranges_of(me);
        let exceeds = held_there.iter().any(|h| {
            let inside: u64 = now_mine
                .iter()
                .map(|r| {
                    let (lo, hi) = (u64::from(r.start.max(h.start)), r.end.min(h.end));
                    hi.saturating_sub(lo)
                })
                .sum();
            inside != h.end - u64::from(h.start)
        });
        if !merged || !covered || exceeds {
            // (A ring that forgot one of our tokens merges, and is no
            // confirmation: the token's tombstone went with the horizon.)
            if let Some(st) = self.stale.as_mut() {
                if covered && merged {
                    // It gives us more: it lags behind a donation of ours
                    // (no confirmation, nor a contradiction).
                } else if from_stale {
                    st.stale_bad = true;
                } else {
                    st.reason = "the IPAM state is older than the removal horizon, and a peer's \
                         ring does not give this router all the space it holds: it was probably \
                         removed while it was away (or this ipam.json is an old copy). Stop meshd \
                         and move ipam.json aside to rejoin as a new router \
                         (docs/troubleshooting.md)"
                        .into();
                }
            }
            return;
        }
        if from_stale {
            if let Some(st) = self.stale.as_mut() {
                st.stale_ok = true;
            }
            return;
        }
        self.stale = None;
        self.heard_ms = self.heard_ms.max(self.wall_now_ms);
        self.ipam.alloc_mut().adopt(theirs.clone());
        // What we hold may go out again.
        self.changed();
    }

    fn decode(payload: &[u8]) -> Result<IpamMsg, ChannelError> {
        decode_ipam(payload).map_err(|e| ChannelError(e.to_string()))
    }
}

impl GossipChannel for IpamChannel {
    fn name(&self) -> &ChannelName {
        &self.name
    }

    fn on_unicast(
        &mut self,
        now: Instant,
        src: PeerName,
        payload: &[u8],
    ) -> Result<(), ChannelError> {
        match Self::decode(payload)? {
            IpamMsg::SpaceRequest(req) => {
                self.on_space_request(now, src, &req);
                Ok(())
            }
            IpamMsg::State {
                ring,
                consensus,
                free,
                at_ms,
            } => self.on_state(now, ring, consensus, free, at_ms),
            IpamMsg::Stale(ring) => self.on_stale(now, ring),
        }
    }

    fn on_broadcast(
        &mut self,
        now: Instant,
        _src: PeerName,
        payload: &[u8],
    ) -> Result<(), ChannelError> {
        self.on_gossip(now, payload).map(|_| ())
    }

    /// Our news goes out once saved (from [`IpamChannel::saved`]), never
    /// as a relayed delta.
    fn on_gossip(&mut self, now: Instant, payload: &[u8]) -> Result<Option<Vec<u8>>, ChannelError> {
        match Self::decode(payload)? {
            IpamMsg::State {
                ring,
                consensus,
                free,
                at_ms,
            } => self
                .on_state(now, ring, consensus, free, at_ms)
                .map(|()| None),
            IpamMsg::Stale(ring) => self.on_stale(now, ring).map(|()| None),
            IpamMsg::SpaceRequest(_) => Err(ChannelError(
                "space request gossiped instead of unicast".into(),
            )),
        }
    }

    /// Only saved state is sent.
    fn full_state(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.unsaved || self.stopped.is_some() {
            return None;
        }
        self.state_msg(now)
    }

    fn sender(&mut self) -> &mut GossipSender {
        &mut self.sender
    }
}

#[cfg(test)]
mod tests {
    use weft_mesh::ChannelSend;

    use super::*;

    fn key(i: u8) -> KeyPair {
        KeyPair::from_seed([i; 32])
    }

    fn name(i: u8) -> PeerName {
        key(i).name()
    }

    fn range() -> AddrRange {
        "10.32.0.0/24".parse().expect("range")
    }

    fn queued(ch: &mut IpamChannel) -> Vec<ChannelSend> {
        std::iter::from_fn(|| ch.sender().pop()).collect()
    }

    /// Router 2 (`b`) asks router 1 for space: the request it sends.
    fn space_request(b: &mut IpamChannel, now: Instant) -> Vec<u8> {
        b.ask_for_space(name(1), now);
        match queued(b).as_slice() {
            [ChannelSend::Unicast { dst, payload }] if *dst == name(1) => payload.clone(),
            q => panic!("a space request to the donor, not {q:?}"),
        }
    }

    /// A seed owning the whole range, and an observer owning nothing,
    /// both saved once.
    fn pair(now: Instant) -> (IpamChannel, IpamChannel) {
        let mut a = IpamChannel::new(key(1), range(), Init::Seed(vec![name(1)]), now, 1);
        let mut b = IpamChannel::new(key(2), range(), Init::Observer, now, 1);
        for ch in [&mut a, &mut b] {
            assert!(
                ch.full_state(now).is_none(),
                "nothing before the first save"
            );
            assert!(ch.unsaved().is_some());
            ch.saved(now);
            assert!(ch.unsaved().is_none());
        }
        (a, b)
    }

    #[test]
    fn news_leaves_only_once_it_is_saved() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let state = match queued(&mut a).as_slice() {
            [ChannelSend::Gossip(s)] => s.clone(),
            q => panic!("the seed gossips its ring once saved, not {q:?}"),
        };
        queued(&mut b);
        // The observer learns the ring: nothing relayed, nothing sent, and
        // no full state for a new neighbour until it is saved.
        assert_eq!(b.on_gossip(now, &state).expect("a good state"), None);
        assert!(b.sender().is_empty());
        assert!(b.full_state(now).is_none());
        let saved = b.unsaved().expect("the ring is news");
        assert!(
            Ring::from_wire(&saved.ring, range())
                .expect("ring")
                .is_seeded()
        );
        b.saved(now);
        assert!(matches!(
            queued(&mut b).as_slice(),
            [ChannelSend::Gossip(_)]
        ));
        assert!(b.full_state(now).is_some());
    }

    #[test]
    fn a_donation_reaches_the_recipient_only_after_the_donor_saved() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let state = match queued(&mut a).as_slice() {
            [ChannelSend::Gossip(s)] => s.clone(),
            q => panic!("{q:?}"),
        };
        b.on_gossip(now, &state).expect("a good state");
        b.saved(now);
        queued(&mut b);
        assert_eq!(
            b.allocate("pod", None),
            Err(IpamError::Alloc(AllocError::NoSpace))
        );
        let request = space_request(&mut b, now);
        a.on_unicast(now, name(2), &request)
            .expect("a good request");
        assert!(
            a.sender().is_empty(),
            "nothing leaves before the donor saved"
        );
        assert!(a.unsaved().is_some());
        a.saved(now);
        let q = queued(&mut a);
        assert!(
            q.iter().any(|o| matches!(o, ChannelSend::Gossip(_))),
            "{q:?}"
        );
        let to_b = q.iter().find_map(|o| match o {
            ChannelSend::Unicast { dst, payload } if *dst == name(2) => Some(payload.clone()),
            _ => None,
        });
        b.on_unicast(
            now,
            name(1),
            &to_b.expect("the new ring straight to the recipient"),
        )
        .expect("a good state");
        b.saved(now);
        assert!(
            b.allocate("pod", None).is_ok(),
            "the recipient owns space now"
        );
    }

    #[test]
    fn a_failed_save_stops_the_channel_and_drops_what_waited() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        queued(&mut a);
        let pod = a.allocate("pod", None).expect("space");
        // A donation waits for the save too.
        let ring = a.ipam().alloc().ring().clone();
        b.ipam.alloc_mut().merge(&ring).expect("merge");
        queued(&mut b);
        let ask = space_request(&mut b, now);
        a.on_unicast(now, name(2), &ask).expect("a good request");
        a.save_failed("disk full".into());
        let t0 = Instant::now();
        assert!(a.retry_due(t0).is_some(), "a retry is due at once");
        assert!(a.retry_due(t0).is_none(), "and then not before a second");
        assert_eq!(
            a.ipam().alloc().lookup("pod"),
            None,
            "an allocation that was not saved is rolled back"
        );
        assert_ne!(a.ipam().alloc().lookup("pod"), Some(pod));
        assert_eq!(
            a.allocate("pod", None),
            Err(IpamError::Stopped("disk full".into())),
            "a retry of the same key gets no address"
        );
        assert!(a.sender().is_empty(), "what waited for the save is dropped");
        assert!(a.unsaved().is_none());
        assert!(a.full_state(now).is_none());
        let stopped = IpamError::Stopped("disk full".into());
        assert_eq!(a.allocate("other", None), Err(stopped.clone()));
        assert_eq!(a.release("pod"), Err(stopped.clone()));
        assert_eq!(a.sign_removal(name(2)), Err(stopped));
        a.ask_for_space(name(2), now);
        assert!(a.sender().is_empty());
        assert_eq!(a.unready(now), Some(Unready::Stopped("disk full".into())));
        assert_eq!(a.stopped(), Some("disk full"));
        // Once the whole state is on disk again, it runs again.
        let retry = a.retry_due(now + SAVE_RETRY * 2).expect("due again");
        assert!(retry.allocs.iter().all(|(k, _)| k != "pod"));
        a.resumed(now);
        assert_eq!(a.stopped(), None);
        assert!(a.allocate("pod", None).is_ok(), "allocates again");
    }

    /// Space goes only to a requester whose signed request verifies, is
    /// fresh, is not a replay, and does not come too often.
    #[test]
    fn space_requests_must_be_signed_fresh_and_not_too_frequent() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let ring = a.ipam().alloc().ring().clone();
        b.ipam.alloc_mut().merge(&ring).expect("merge");
        let ask = |b: &mut IpamChannel, at: Instant| {
            queued(b);
            b.ask_for_space(name(1), at);
            match queued(b).as_slice() {
                [ChannelSend::Unicast { payload, .. }] => payload.clone(),
                q => panic!("{q:?}"),
            }
        };
        let owned = |a: &IpamChannel| a.ipam().alloc().ring().ownership();
        // Under another name than the sender's: refused.
        let req = ask(&mut b, now);
        a.on_unicast(now, name(3), &req)
            .expect("dropped, not an error");
        assert_eq!(a.refused().space_request, 1);
        assert_eq!(owned(&a).len(), 1, "nothing given");
        // Badly signed: refused.
        let Ok(IpamMsg::SpaceRequest(mut forged)) = decode_ipam(&req) else {
            panic!("a space request")
        };
        forged.at_ms += 1;
        let forged = encode_ipam(&IpamMsg::SpaceRequest(forged)).expect("encode");
        a.on_unicast(now, name(2), &forged).expect("dropped");
        assert_eq!(a.refused().space_request, 2);
        // Genuine: space given.
        a.on_unicast(now, name(2), &req).expect("taken");
        assert!(owned(&a).contains_key(&name(2)));
        let given = owned(&a)[&name(2)];
        // Replayed: refused.
        a.on_unicast(now, name(2), &req).expect("dropped");
        assert_eq!(a.refused().space_request, 3);
        // A new request at once: too frequent.
        let again = ask(&mut b, now);
        a.on_unicast(now, name(2), &again).expect("dropped");
        assert_eq!(a.refused().space_rate, 1);
        assert_eq!(owned(&a)[&name(2)], given);
        // Later: given more.
        let later = now + std::time::Duration::from_millis(DONATION_INTERVAL_MS);
        let req = ask(&mut b, later);
        a.on_unicast(later, name(2), &req).expect("taken");
        assert!(owned(&a)[&name(2)] > given);
        // Stale (a request kept for longer than the freshness window).
        let old = ask(&mut b, later);
        let much_later = later + std::time::Duration::from_millis(SPACE_REQUEST_FRESH_MS + 10);
        a.on_unicast(much_later, name(2), &old).expect("dropped");
        assert_eq!(a.refused().space_request, 4);
    }

    /// The seed (router 1) and router 2, which asked it for space and
    /// allocated one address: router 2's state as saved at wall ms 1.
    fn with_space(now: Instant) -> (IpamChannel, IpamChannel, Persisted) {
        let (mut a, mut b) = pair(now);
        let ring = a.ipam().alloc().ring().clone();
        b.ipam.alloc_mut().merge(&ring).expect("merge");
        queued(&mut a);
        queued(&mut b);
        let ask = space_request(&mut b, now);
        a.on_unicast(now, name(2), &ask).expect("a good request");
        a.saved(now);
        let state = a.full_state(now).expect("saved");
        b.on_gossip(now, &state).expect("a good state");
        b.allocate("pod", None).expect("space given");
        let saved = b.unsaved().expect("changed");
        assert_eq!(saved.saved_ms, Some(1), "the wall clock of the save");
        b.saved(now);
        (a, b, saved)
    }

    fn decoded(bytes: &[u8]) -> IpamMsg {
        decode_ipam(bytes).expect("decodes")
    }

    /// Back after the horizon (the mesh may have forgotten its removal), a
    /// router hands nothing out and its ring goes out marked stale, which
    /// routers that are not stale ignore, until a fresh peer's ring gives
    /// it every address it owns; then it takes that ring whole.
    #[test]
    fn a_router_back_after_the_horizon_holds_until_a_fresh_ring_confirms_its_space() {
        let now = Instant::now();
        let (mut a, _, saved) = with_space(now);
        let late = 1 + STALE_AFTER_MS;
        let restore = |wall| {
            IpamChannel::restore(key(2), range(), Init::Observer, &saved, now, wall)
                .expect("restores")
        };
        assert_eq!(restore(late - 1).stale(), None, "a day short: not stale");
        let old = Persisted {
            saved_ms: None,
            ..saved.clone()
        };
        let from_before = IpamChannel::restore(key(2), range(), Init::Observer, &old, now, late);
        assert_eq!(
            from_before.expect("restores").stale(),
            None,
            "no time: not stale"
        );
        let mut b = restore(late);
        assert!(b.stale().expect("stale").contains("last saved 6 days ago"));
        assert!(matches!(b.allocate("new", None), Err(IpamError::Held(_))));
        assert!(matches!(b.unready(now), Some(Unready::Held(_))));
        assert_eq!(
            b.ipam().alloc().lookup("pod"),
            saved.allocs.first().map(|x| x.1)
        );
        b.saved(now);
        let Some(mine) = b.full_state(now) else {
            panic!("a stale router still says what it holds")
        };
        assert!(matches!(decoded(&mine), IpamMsg::Stale(_)));
        let before = a.ipam().alloc().ring().clone();
        assert_eq!(a.on_gossip(now, &mine).expect("ignored"), None);
        assert_eq!(
            a.ipam().alloc().ring(),
            &before,
            "a fresh router ignores it"
        );
        // The seed's ring gives router 2 what it owns: confirmed.
        let theirs = a
            .full_state(now + Duration::from_millis(STALE_AFTER_MS))
            .expect("saved");
        b.on_gossip(now, &theirs).expect("a good state");
        assert_eq!(b.stale(), None);
        assert!(b.unready(now).is_none());
        assert_eq!(
            b.ipam().alloc().ring(),
            a.ipam().alloc().ring(),
            "taken whole"
        );
        assert!(b.allocate("new", None).is_ok());
        b.saved(now);
        assert!(matches!(
            decoded(&b.full_state(now).expect("saved")),
            IpamMsg::State { .. }
        ));
    }

    /// Removed while it was away, and the removal forgotten: the heir's
    /// ring takes its range with no certificate left, so it stays held and
    /// says so, where before it went on allocating what the heir owns.
    #[test]
    fn a_router_removed_and_forgotten_while_away_stays_held() {
        let now = Instant::now();
        let (mut a, _, saved) = with_space(now);
        assert_eq!(a.sign_removal(name(2)), Ok(true), "the only other owner");
        a.set_removed_horizon(0);
        a.tick(now, 0);
        a.saved(now);
        let IpamMsg::State { ring, .. } = decoded(&a.full_state(now).expect("saved")) else {
            panic!("a state")
        };
        assert!(
            ring.removals.is_empty() && ring.removed.is_empty(),
            "forgotten"
        );
        let mut b = IpamChannel::restore(
            key(2),
            range(),
            Init::Observer,
            &saved,
            now,
            1 + STALE_AFTER_MS,
        )
        .expect("restores");
        b.saved(now);
        let theirs = a
            .full_state(now + Duration::from_millis(STALE_AFTER_MS))
            .expect("saved");
        // Refused (it takes our range), or merged where the heir's entry
        // went with its tombstone: either way no confirmation.
        let _ = b.on_gossip(now, &theirs);
        assert!(b.stale().expect("held").contains("probably removed"));
        assert!(matches!(b.allocate("new", None), Err(IpamError::Held(_))));
        // Not even after the wait: a fresh ring said no.
        b.tick(now + Duration::from_millis(STALE_WAIT_MS), 0);
        assert!(b.stale().is_some());
        // Nor after a restart: what it saves keeps the old time.
        b.changed();
        let again = b.unsaved().expect("changed");
        assert_eq!(again.saved_ms, Some(1));
        let wall = 2 + STALE_AFTER_MS;
        let b2 = IpamChannel::restore(key(2), range(), Init::Observer, &again, now, wall)
            .expect("restores");
        assert!(b2.stale().is_some(), "still stale after a restart");
    }

    /// Alone (nobody heard), a stale router stays held: its own word is
    /// what a removed router would say too. The operator lifts the hold
    /// (`--trust-stale-ipam`). A router that owns nothing is stale too (its
    /// ring could bring back what the mesh forgot); one that owns all the
    /// space (a mesh of one) is not.
    #[test]
    fn a_stale_router_alone_waits_for_the_operator() {
        let now = Instant::now();
        let (mut a0, _, saved) = with_space(now);
        let late = 1 + STALE_AFTER_MS;
        let mut b = IpamChannel::restore(key(2), range(), Init::Observer, &saved, now, late)
            .expect("restores");
        b.saved(now);
        b.tick(now + Duration::from_millis(2 * STALE_WAIT_MS), 0);
        assert!(b.stale().is_some(), "no fallback when alone");
        b.trust_stale();
        assert_eq!(b.stale(), None);
        assert!(b.allocate("new", None).is_ok());

        let empty = Persisted {
            allocs: Vec::new(),
            ring: {
                let mut r = saved.ring.clone();
                for e in &mut r.entries {
                    if e.owner == name(2) {
                        e.owner = name(1);
                    }
                }
                r
            },
            ..saved.clone()
        };
        let c = IpamChannel::restore(key(3), range(), Init::Observer, &empty, now, late)
            .expect("restores");
        assert!(c.stale().is_some(), "owning nothing, still stale");
        a0.changed();
        let mut solo = a0.unsaved().expect("changed");
        solo.saved_ms = Some(1);
        solo.ring = empty.ring.clone();
        let one = IpamChannel::restore(key(1), range(), Init::Observer, &solo, now, late)
            .expect("restores");
        assert_eq!(one.stale(), None, "a mesh of one");
    }

    /// The whole mesh back after the horizon: every router is stale, so
    /// each takes the others' word once it heard nothing else for
    /// `STALE_WAIT_MS`, and an idle router writes its state daily.
    #[test]
    fn a_mesh_back_whole_after_the_horizon_resumes_after_the_wait() {
        let now = Instant::now();
        let (mut a0, _, saved_b) = with_space(now);
        a0.changed();
        let mut saved_a = a0.unsaved().expect("changed");
        saved_a.saved_ms = Some(1);
        let late = 1 + STALE_AFTER_MS;
        let mut a = IpamChannel::restore(key(1), range(), Init::Observer, &saved_a, now, late)
            .expect("restores");
        let mut b = IpamChannel::restore(key(2), range(), Init::Observer, &saved_b, now, late)
            .expect("restores");
        for ch in [&mut a, &mut b] {
            assert!(ch.stale().is_some());
            ch.saved(now);
        }
        let (sa, sb) = (a.full_state(now).expect("a"), b.full_state(now).expect("b"));
        a.on_gossip(now, &sb).expect("good");
        b.on_gossip(now, &sa).expect("good");
        let soon = now + Duration::from_millis(STALE_WAIT_MS - 1);
        let later = now + Duration::from_millis(STALE_WAIT_MS);
        for ch in [&mut a, &mut b] {
            ch.tick(soon, 0);
            assert!(ch.stale().is_some(), "not before the wait");
            ch.tick(later, 0);
            assert_eq!(ch.stale(), None, "their word after it");
            assert!(ch.allocate("new", None).is_ok());
            ch.saved(later);
        }
        // A stale ring that contradicts blocks that path.
        let (_, _, saved_c) = with_space(now);
        let mut c = IpamChannel::restore(key(2), range(), Init::Observer, &saved_c, now, late)
            .expect("restores");
        c.saved(now);
        let mut taken = a0.ipam().alloc().ring().clone();
        for r in taken.ranges_of(name(2)) {
            taken.transfer(name(2), r, name(1)).expect("owned");
        }
        let contra = encode_ipam(&IpamMsg::Stale(taken.to_wire())).expect("encode");
        let _ = c.on_gossip(now, &contra);
        c.on_gossip(now, &sa).expect("good");
        c.tick(later, 0);
        assert!(c.stale().is_some(), "one stale ring said no");
        let day = later + Duration::from_millis(RESAVE_MS);
        a.tick(day - Duration::from_millis(1), 0);
        assert!(a.unsaved().is_none(), "nothing changed");
        a.tick(day, 0);
        assert!(a.unsaved().is_some(), "written again after a day");
    }

    /// A tombstone older than six sevenths of the horizon is not taken in
    /// (its maker may have forgotten it and split that token again below
    /// it); a recent one is.
    #[test]
    fn tombstones_near_the_horizon_are_not_taken_in() {
        use weft_peer_proto::ipam::TombWire;
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let IpamMsg::State { mut ring, .. } = decoded(&a.full_state(now).expect("saved")) else {
            panic!("a state")
        };
        let start = ring.entries[0].token;
        let tomb = |token, at_ms| TombWire {
            token,
            owner: name(1),
            version: 7,
            at_ms,
        };
        let later = now + Duration::from_millis(REMOVED_HORIZON_MS);
        let wall = 1 + REMOVED_HORIZON_MS;
        ring.tombs = vec![
            tomb(start + 8, wall - REMOVED_HORIZON_MS / 7 * 6),
            tomb(start + 16, wall - REMOVED_HORIZON_MS / 7 * 6 + 1),
        ];
        let msg = IpamMsg::State {
            ring,
            consensus: Vec::new(),
            free: Vec::new(),
            at_ms: wall,
        };
        b.on_gossip(later, &encode_ipam(&msg).expect("encode"))
            .expect("a good state");
        let held: Vec<u32> = b
            .ipam()
            .alloc()
            .ring()
            .to_wire()
            .tombs
            .iter()
            .map(|t| t.token)
            .collect();
        assert_eq!(held, vec![start + 16], "only the recent one");
    }

    /// A donor cut off for the horizon is not confirmed by the ring of a
    /// recipient that has not heard of its last gift: taken whole, that
    /// ring would give the gift back to it. A ring that knows the gift
    /// confirms it.
    #[test]
    fn a_ring_behind_our_own_donation_does_not_end_the_hold() {
        let now = Instant::now();
        let (mut a, mut b, _) = with_space(now);
        // A second gift to router 2, which does not hear of it yet.
        queued(&mut b);
        let ask_at = now + Duration::from_millis(2 * DONATION_INTERVAL_MS);
        let ask = space_request(&mut b, ask_at);
        let gift_at = ask_at + Duration::from_millis(1);
        let before = a.ipam().alloc().ring().ranges_of(name(1));
        a.on_unicast(gift_at, name(2), &ask)
            .expect("a good request");
        assert_ne!(
            a.ipam().alloc().ring().ranges_of(name(1)),
            before,
            "donated"
        );
        a.saved(gift_at);
        let with_gift = a.full_state(gift_at).expect("saved");
        let cut = now + Duration::from_millis(STALE_AFTER_MS + 1);
        a.tick(cut, 0);
        assert!(a.stale().is_some(), "cut off");
        b.saved(cut);
        let behind = b.full_state(cut).expect("saved");
        a.on_gossip(cut, &behind).expect("a good state");
        assert!(
            a.stale().is_some(),
            "a ring behind our gift confirms nothing"
        );
        assert!(!a.stale().expect("held").contains("probably removed"));
        // Router 2 hears of the gift (in time), and its ring confirms.
        b.on_gossip(gift_at, &with_gift).expect("a good state");
        b.saved(cut);
        let knows = b.full_state(cut).expect("saved");
        a.on_gossip(cut, &knows).expect("a good state");
        assert_eq!(a.stale(), None);
    }

    /// A state built six sevenths of the horizon ago or more (delivered
    /// late, or replayed) is refused and counted, as its tombstones would
    /// be: it may bring back an entry its owner compacted, forgot and
    /// split again below it. A younger one merges.
    #[test]
    fn a_state_built_near_the_horizon_ago_is_refused() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let old = a.full_state(now).expect("saved");
        let IpamMsg::State { at_ms, .. } = decoded(&old) else {
            panic!("a state")
        };
        assert_eq!(at_ms, 1, "the sender's wall clock");
        let take_for = REMOVED_HORIZON_MS - REMOVED_HORIZON_MS / 7;
        let late = now + Duration::from_millis(take_for);
        b.on_gossip(late, &old).expect("refused, not an error");
        assert_eq!(b.refused().old_state, 1);
        assert!(!b.ipam().alloc().ring().is_seeded(), "not merged");
        let young = now + Duration::from_millis(take_for - 1);
        b.on_gossip(young, &old).expect("a good state");
        assert_eq!(b.refused().old_state, 1);
        assert_eq!(b.ipam().alloc().ring(), a.ipam().alloc().ring());
    }

    /// Up but cut off from every peer's state for [`STALE_AFTER_MS`], a
    /// router turns stale as one restarting from an old state does: it
    /// hands out nothing new, its ring goes out marked stale, and what it
    /// saves keeps the time it last heard a peer (a restart stays stale);
    /// a fresh ring that gives it its space ends the hold. A mesh of one
    /// never turns stale.
    #[test]
    fn a_router_cut_off_for_the_horizon_turns_stale() {
        let now = Instant::now();
        let (mut a, mut b, _) = with_space(now);
        let almost = now + Duration::from_millis(STALE_AFTER_MS - 1);
        b.tick(almost, 0);
        assert_eq!(b.stale(), None, "a millisecond short");
        // The seed hears router 2 (which does not hear it back).
        b.saved(almost);
        let from_b = b.full_state(almost).expect("saved");
        a.on_gossip(almost, &from_b).expect("a good state");
        let cut = now + Duration::from_millis(STALE_AFTER_MS);
        b.tick(cut, 0);
        let why = b.stale().expect("stale");
        assert!(
            why.contains("merged no peer's IPAM state for 6 days"),
            "{why}"
        );
        assert!(matches!(b.allocate("new", None), Err(IpamError::Held(_))));
        assert!(
            b.allocate("pod", None).is_ok(),
            "a key asked again keeps its own"
        );
        let saved = b.unsaved().expect("changed");
        assert_eq!(saved.saved_ms, Some(1), "when it last heard a peer");
        b.saved(cut);
        assert!(matches!(
            decoded(&b.full_state(cut).expect("saved")),
            IpamMsg::Stale(_)
        ));
        let again = IpamChannel::restore(
            key(2),
            range(),
            Init::Observer,
            &saved,
            cut,
            1 + STALE_AFTER_MS,
        )
        .expect("restores");
        assert!(again.stale().is_some(), "a restart does not make it fresh");
        // The seed heard router 2 a millisecond ago: not stale; its fresh
        // ring confirms router 2's space.
        a.tick(cut, 0);
        assert_eq!(a.stale(), None, "it heard a peer");
        a.saved(cut);
        let theirs = a.full_state(cut).expect("saved");
        b.on_gossip(cut, &theirs).expect("a good state");
        assert_eq!(b.stale(), None);
        assert!(b.allocate("new", None).is_ok());
        b.tick(cut + Duration::from_millis(1), 0);
        assert_eq!(b.stale(), None, "heard just now");
        let solo = now + Duration::from_millis(3 * STALE_AFTER_MS);
        let (mut one, _) = pair(now);
        one.tick(solo, 0);
        assert_eq!(one.stale(), None, "nobody else owns space");
    }

    /// Held (meshd: a clone of this router runs), nothing new is handed
    /// out: no allocation, no donation, no request for space; resumed, it
    /// allocates again.
    #[test]
    fn a_held_channel_hands_out_nothing_new() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let ring = a.ipam().alloc().ring().clone();
        b.ipam.alloc_mut().merge(&ring).expect("merge");
        queued(&mut a);
        queued(&mut b);
        let kept = a.allocate("kept", None).expect("space");
        a.hold(Some("a clone".into()));
        assert_eq!(a.held(), Some("a clone"));
        assert_eq!(
            a.allocate("new", None),
            Err(IpamError::Held("a clone".into()))
        );
        assert_eq!(a.allocate("kept", None), Ok(kept), "asked again: the same");
        let ask = space_request(&mut b, now);
        a.on_unicast(now, name(2), &ask).expect("not an error");
        assert!(
            !a.ipam().alloc().ring().ownership().contains_key(&name(2)),
            "no donation while held"
        );
        a.ask_for_space(name(2), now);
        assert!(
            !queued(&mut a)
                .iter()
                .any(|o| matches!(o, ChannelSend::Unicast { .. })),
            "no request for space while held"
        );
        assert_eq!(a.release("kept"), Ok(Some(kept)), "releases go on");
        a.hold(None);
        assert!(a.allocate("new", None).is_ok());
    }

    /// A free-space hint holds only signed by the router it describes: a
    /// relaying router cannot make one up, nor alter one it relays, and
    /// the donor we ask goes by the hints that hold.
    #[test]
    fn free_hints_are_signed_by_the_router_they_describe() {
        let now = Instant::now();
        let (mut a, mut b) = pair(now);
        let state = a.full_state(now).expect("saved");
        b.on_gossip(now, &state).expect("a good state");
        let full = Some(a.ipam().alloc().free_count());
        assert_eq!(b.free_of(name(1)), full, "the seed's own hint");
        assert_eq!(b.refused().free_hint, 0);
        let Ok(IpamMsg::State {
            ring,
            consensus,
            free,
            at_ms,
        }) = decode_ipam(&state)
        else {
            panic!("a state")
        };
        let resend = |b: &mut IpamChannel, free: Vec<FreeHint>| {
            let msg = IpamMsg::State {
                ring: ring.clone(),
                consensus: consensus.clone(),
                free,
                at_ms,
            };
            b.on_gossip(now, &encode_ipam(&msg).expect("encode"))
                .expect("hints are dropped, not errors");
        };
        // Altered in relay: newer and emptier, under the seed's signature.
        let mut altered = free[0];
        altered.seq += 1;
        altered.free = 0;
        resend(&mut b, vec![altered]);
        assert_eq!(b.refused().free_hint, 1);
        assert_eq!(b.free_of(name(1)), full);
        // Made up and signed by the relay (router 3) in the seed's name.
        let cluster = ring.cluster;
        let (seq, n) = (u64::MAX, 0u64);
        let sig = key(3).sign(FREE_DOMAIN, &(name(1), cluster, seq, n));
        let made_up = FreeHint {
            peer: name(1),
            seq,
            free: n,
            sig,
        };
        resend(&mut b, vec![made_up]);
        assert_eq!(b.refused().free_hint, 2);
        assert_eq!(b.free_of(name(1)), full);
        // Signed by the seed, but under another cluster: a replay from
        // another mesh.
        let other = cluster.map(|c| c ^ 1);
        let sig = key(1).sign(FREE_DOMAIN, &(name(1), other, seq, n));
        resend(&mut b, vec![FreeHint { sig, ..made_up }]);
        assert_eq!(b.refused().free_hint, 3);
        // The seed's own newer hint holds, and the stale one is ignored.
        let sig = key(1).sign(FREE_DOMAIN, &(name(1), cluster, seq, n));
        resend(&mut b, vec![FreeHint { sig, ..made_up }]);
        assert_eq!(b.free_of(name(1)), Some(0));
        resend(&mut b, free.clone());
        assert_eq!(b.free_of(name(1)), Some(0), "the highest seq wins");
        assert_eq!(b.refused().free_hint, 3);
        assert_eq!(b.refused().forged(), 3);
        // A hint of a router that owns nothing is not kept, even signed.
        let sig = key(3).sign(FREE_DOMAIN, &(name(3), cluster, 5u64, 9u64));
        let stranger = FreeHint {
            peer: name(3),
            seq: 5,
            free: 9,
            sig,
        };
        resend(&mut b, vec![stranger]);
        assert_eq!(b.free_of(name(3)), None);
        assert_eq!(b.refused().free_hint, 3, "genuine, so not counted");
    }

    /// Unsigned claims are dropped and counted; once seeded, claims are
    /// neither taken nor stored.
    #[test]
    fn claims_are_signed_and_forgotten_once_seeded() {
        let now = Instant::now();
        let mut v1 = IpamChannel::new(key(1), range(), Init::Consensus(2), now, 1);
        let mut v2 = IpamChannel::new(key(2), range(), Init::Consensus(2), now, 1);
        for ch in [&mut v1, &mut v2] {
            ch.saved(now);
            queued(ch);
        }
        let state = |ch: &mut IpamChannel| ch.full_state(now).expect("saved");
        let s2 = state(&mut v2);
        let Ok(IpamMsg::State {
            ring,
            mut consensus,
            free,
            at_ms,
        }) = decode_ipam(&s2)
        else {
            panic!("a state")
        };
        assert!(consensus.iter().all(|c| c.sig.is_some()), "ours are signed");
        consensus[0].sig = None;
        let unsigned = encode_ipam(&IpamMsg::State {
            ring,
            consensus,
            free,
            at_ms,
        })
        .expect("encode");
        v1.on_gossip(now, &unsigned).expect("dropped, not an error");
        assert_eq!(v1.refused().claims, 1);
        assert_eq!(v1.ipam().knowledge().len(), 1, "voter 2 not seen");
        v1.on_gossip(now, &s2).expect("signed");
        assert_eq!(v1.ipam().knowledge().len(), 2);
        // Until the two agree.
        let mut t = now;
        for _ in 0..200 {
            t += std::time::Duration::from_millis(500);
            for ch in [&mut v1, &mut v2] {
                ch.tick(t, 3);
                ch.saved(t);
            }
            let (s1, s2) = (v1.full_state(t), v2.full_state(t));
            if let Some(s) = s2 {
                v1.on_gossip(t, &s).expect("good");
            }
            if let Some(s) = s1 {
                v2.on_gossip(t, &s).expect("good");
            }
            if v1.unready(t).is_none() && v2.unready(t).is_none() {
                break;
            }
        }
        assert_eq!(v1.unready(t), None, "consensus reached");
        v1.saved(t);
        v1.tick(t, 0);
        let saved = v1.unsaved().or_else(|| {
            v1.changed();
            v1.unsaved()
        });
        assert_eq!(
            saved.expect("state").consensus,
            Vec::new(),
            "not stored once seeded"
        );
        let known = v1.ipam().knowledge().clone();
        let stale = IpamChannel::new(key(3), range(), Init::Consensus(2), now, 1);
        let mut stale = stale;
        stale.saved(now);
        let s3 = stale.full_state(now).expect("saved");
        v1.on_gossip(t, &s3).expect("ignored");
        assert_eq!(v1.ipam().knowledge(), &known, "claims ignored once seeded");
        let late = v1.refused().late_claims;
        assert!(late >= 1, "and counted: {:?}", v1.refused());
        assert_eq!(v1.refused().claims, 1, "unchecked, so not as forged");
    }

    /// A ring past the receivers' limits is not sent (and counted): before,
    /// the sender built it, and every receiver refused it.
    #[test]
    fn a_state_the_receivers_would_refuse_is_not_sent() {
        use weft_peer_proto::ipam::{EntryWire, MAX_RING_ENTRIES};
        let now = Instant::now();
        let big: AddrRange = "10.0.0.0/8".parse().expect("range");
        let (me, other) = (name(1), name(2));
        let n = MAX_RING_ENTRIES as u32 + 1;
        let entries = (0..n)
            .map(|i| EntryWire {
                token: big.start + i * 8,
                owner: if i % 2 == 0 { me } else { other },
                version: 2,
            })
            .collect();
        let saved = Persisted {
            ring: RingWire {
                start: big.start,
                end: big.end,
                cluster: Some(1),
                entries,
                removed: Vec::new(),
                removals: Vec::new(),
                tombs: Vec::new(),
            },
            allocs: Vec::new(),
            consensus: Vec::new(),
            saved_ms: None,
        };
        let mut ch = IpamChannel::restore(key(1), big, Init::Observer, &saved, now, 1)
            .expect("a ring we wrote ourselves");
        ch.saved(now);
        assert!(
            ch.sender().is_empty(),
            "nothing the receivers refuse is sent"
        );
        assert!(ch.full_state(now).is_none());
        assert!(ch.refused().oversize >= 2, "{:?}", ch.refused());
    }
}
