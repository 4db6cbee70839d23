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
//! start, for the sequence numbers of our free-space hints (which must grow
//! across restarts).

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use weft_mesh::{ChannelError, GossipChannel, GossipSender};
use weft_peer_proto::codec::{decode_ipam, encode_ipam};
use weft_peer_proto::ipam::{ClaimsWire, FreeHint, IpamMsg, RingWire};
use weft_peer_proto::{ChannelName, PeerName};

use crate::wire::{knowledge_from_wire, knowledge_to_wire};
use crate::{AddrRange, AllocError, Init, Ipam, Ring, RingError, Snapshot, Waiting};

/// The channel's name on the mesh.
pub const CHANNEL: &str = "ipam";

/// What a router keeps on disk: the ring, its own allocations, and its
/// consensus claims (a voter must never forget what it promised).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    pub ring: RingWire,
    pub allocs: Vec<(String, u32)>,
    pub consensus: Vec<ClaimsWire>,
}

/// Why the channel cannot take a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IpamError {
    /// A write of our state failed: nothing more is allocated or sent.
    #[error("IPAM stopped after a failed write: {0}")]
    Stopped(String),
    #[error(transparent)]
    Alloc(#[from] AllocError),
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
}

pub struct IpamChannel {
    name: ChannelName,
    ipam: Ipam,
    /// The origin of the millisecond clock [`Ipam`] runs on.
    epoch: Instant,
    /// The wall clock (ms since the Unix epoch) at `epoch`.
    wall_ms: u64,
    /// Free addresses per router, as each last said: (seq, free).
    hints: BTreeMap<PeerName, (u64, u64)>,
    /// Changed since the driver last saved.
    unsaved: bool,
    /// Once saved: gossip our state, and send it straight to these routers.
    gossip_due: bool,
    direct: Vec<PeerName>,
    stopped: Option<String>,
    sender: GossipSender,
}

impl IpamChannel {
    /// A router with no state yet. `wall_ms` is the wall clock at `now`.
    pub fn new(me: PeerName, range: AddrRange, init: Init, now: Instant, wall_ms: u64) -> Self {
        Self::with(Ipam::new(me, range, init, 0), now, wall_ms)
    }

    /// A router restarting from what it saved. Fails when the saved ring is
    /// not one of `range` (the range changed, or the file is damaged).
    pub fn restore(
        me: PeerName,
        range: AddrRange,
        init: Init,
        saved: &Persisted,
        now: Instant,
        wall_ms: u64,
    ) -> Result<Self, RingError> {
        let ring = Ring::from_wire(&saved.ring, range)?;
        let snap = Snapshot {
            ring,
            allocs: saved.allocs.clone(),
        };
        let knowledge = knowledge_from_wire(&saved.consensus);
        Ok(Self::with(
            Ipam::restore(me, init, snap, &knowledge, 0),
            now,
            wall_ms,
        ))
    }

    fn with(ipam: Ipam, now: Instant, wall_ms: u64) -> Self {
        IpamChannel {
            name: ChannelName::new(CHANNEL).unwrap_or_else(|_| unreachable!("a valid name")),
            ipam,
            epoch: now,
            wall_ms,
            hints: BTreeMap::new(),
            // What we start from is saved (again) before anything is sent.
            unsaved: true,
            gossip_due: true,
            direct: Vec::new(),
            stopped: None,
            sender: GossipSender::default(),
        }
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
        let snap = self.ipam.alloc().snapshot();
        Some(Persisted {
            ring: snap.ring.to_wire(),
            allocs: snap.allocs,
            consensus: knowledge_to_wire(self.ipam.knowledge()),
        })
    }

    /// The driver wrote [`Self::unsaved`]: what waited for it may leave.
    pub fn saved(&mut self, now: Instant) {
        self.unsaved = false;
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

    /// The driver could not write: stop, and send nothing that was not saved.
    pub fn save_failed(&mut self, error: String) {
        self.stopped = Some(error);
        self.sender.clear();
        self.direct.clear();
    }

    /// Why the channel stopped (a failed write), if it did.
    pub fn stopped(&self) -> Option<&str> {
        self.stopped.as_deref()
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
        let before = self.ipam.alloc().lookup(key);
        let a = match addr {
            Some(a) => self.ipam.alloc_mut().claim(key, a).map(|()| a)?,
            None => self.ipam.alloc_mut().allocate(key)?,
        };
        if before != Some(a) {
            self.unsaved = true;
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

    /// Gives the space of `peer`, gone for good, to its heir.
    pub fn remove_peer(&mut self, peer: PeerName) -> Result<bool, IpamError> {
        self.running()?;
        let changed = self.ipam.alloc_mut().remove_peer(peer);
        if changed {
            self.changed();
        }
        Ok(changed)
    }

    /// Asks `donor` for some of its space (it answers with its new ring).
    pub fn ask_for_space(&mut self, donor: PeerName) {
        if self.stopped.is_none()
            && let Ok(msg) = encode_ipam(&IpamMsg::SpaceRequest)
        {
            self.sender.unicast(donor, msg);
        }
    }

    /// Time passing (consensus proposals). `jitter` is random.
    pub fn tick(&mut self, now: Instant, jitter: u64) {
        if self.stopped.is_none() && self.ipam.tick(self.ms(now), jitter) {
            self.changed();
        }
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
        self.hints.get(&peer).map(|(_, f)| *f)
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
        let me = self.ipam.alloc().me();
        let free = self.ipam.alloc().free_count();
        if self.hints.get(&me).is_none_or(|(_, f)| *f != free) {
            let wall = self.wall_ms.saturating_add(self.ms(now));
            let seq = wall.max(self.hints.get(&me).map_or(0, |(s, _)| s + 1));
            self.hints.insert(me, (seq, free));
        }
        // Once the ring is seeded nobody needs the claims (a late router
        // adopts the ring), and they grow with the square of the voters.
        let consensus = if self.ipam.alloc().ring().is_seeded() {
            Vec::new()
        } else {
            knowledge_to_wire(self.ipam.knowledge())
        };
        let msg = IpamMsg::State {
            ring: self.ipam.alloc().ring().to_wire(),
            consensus,
            free: self
                .hints
                .iter()
                .map(|(p, (seq, free))| FreeHint {
                    peer: *p,
                    seq: *seq,
                    free: *free,
                })
                .collect(),
        };
        encode_ipam(&msg).ok()
    }

    fn on_state(
        &mut self,
        now: Instant,
        ring: RingWire,
        consensus: Vec<ClaimsWire>,
        free: Vec<FreeHint>,
    ) -> Result<(), ChannelError> {
        let bad = |e: String| ChannelError(e);
        if self.stopped.is_some() {
            return Ok(());
        }
        let ring = Ring::from_wire(&ring, self.range()).map_err(|e| bad(e.to_string()))?;
        let now_ms = self.ms(now);
        match self
            .ipam
            .on_state(Some(&ring), &knowledge_from_wire(&consensus), now_ms)
        {
            Ok(true) => self.changed(),
            Ok(false) => {}
            Err(e) => {
                // Our consensus claims may have moved before the ring was
                // refused: they are saved before they are sent.
                self.changed();
                return Err(bad(e.to_string()));
            }
        }
        // Hints only for routers that own space, so they stay bounded.
        let owners = self.ipam.alloc().ring().ownership();
        let me = self.ipam.alloc().me();
        for h in free {
            let newer = self.hints.get(&h.peer).is_none_or(|(s, _)| *s < h.seq);
            if h.peer != me && owners.contains_key(&h.peer) && newer {
                self.hints.insert(h.peer, (h.seq, h.free));
            }
        }
        self.hints.retain(|p, _| owners.contains_key(p) || *p == me);
        Ok(())
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
            IpamMsg::SpaceRequest => {
                if self.stopped.is_none() && self.ipam.alloc_mut().donate(src).is_some() {
                    self.changed();
                    self.direct.push(src);
                }
                Ok(())
            }
            IpamMsg::State {
                ring,
                consensus,
                free,
            } => self.on_state(now, ring, consensus, free),
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
            } => self.on_state(now, ring, consensus, free).map(|()| None),
            IpamMsg::SpaceRequest => Err(ChannelError(
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

    const A: PeerName = PeerName(1);
    const B: PeerName = PeerName(2);

    fn range() -> AddrRange {
        "10.32.0.0/24".parse().expect("range")
    }

    fn queued(ch: &mut IpamChannel) -> Vec<ChannelSend> {
        std::iter::from_fn(|| ch.sender().pop()).collect()
    }

    /// A seed owning the whole range, and an observer owning nothing,
    /// both saved once.
    fn pair(now: Instant) -> (IpamChannel, IpamChannel) {
        let mut a = IpamChannel::new(A, range(), Init::Seed(vec![A]), now, 1);
        let mut b = IpamChannel::new(B, range(), Init::Observer, now, 1);
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
        b.ask_for_space(A);
        let request = match queued(&mut b).as_slice() {
            [ChannelSend::Unicast { dst, payload }] if *dst == A => payload.clone(),
            q => panic!("a space request to the donor, not {q:?}"),
        };
        a.on_unicast(now, B, &request).expect("a good request");
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
            ChannelSend::Unicast { dst, payload } if *dst == B => Some(payload.clone()),
            _ => None,
        });
        b.on_unicast(
            now,
            A,
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
        let (mut a, _) = pair(now);
        assert!(a.allocate("pod", None).is_ok());
        a.remove_peer(PeerName(9)).expect("runs");
        a.save_failed("disk full".into());
        assert!(a.sender().is_empty(), "what waited for the save is dropped");
        assert!(a.unsaved().is_none());
        assert!(a.full_state(now).is_none());
        let stopped = IpamError::Stopped("disk full".into());
        assert_eq!(a.allocate("other", None), Err(stopped.clone()));
        assert_eq!(a.release("pod"), Err(stopped.clone()));
        assert_eq!(a.remove_peer(PeerName(9)), Err(stopped));
        a.ask_for_space(B);
        assert!(a.sender().is_empty());
        assert_eq!(a.unready(now), Some(Unready::Stopped("disk full".into())));
        assert_eq!(a.stopped(), Some("disk full"));
    }
}
