//! One router's address allocator: its copy of the ring, the addresses it
//! has handed out, and what is still free in the ranges it owns.
//!
//! Pure: the router feeds it operator calls and ring updates, and sends what
//! it returns (rings to gossip, space requests). Invariants after every call,
//! checked by [`Allocator::check`]:
//! - every allocation lies in a range this router owns (else it is reported
//!   as lost, never silently kept);
//! - free + allocated + reserved = owned, with no overlap.

use std::collections::BTreeMap;

use weft_peer_proto::PeerName;
use weft_peer_proto::sign::Signer;

use crate::counters::Refused;
use crate::range::AddrRange;
use crate::ring::{MergeOutcome, Ring, RingError};
use crate::space::FreeSet;

/// How long a removed router that owns nothing any more is remembered
/// (7 days): long enough that every router has seen its removal, so no stale
/// ring can bring it back; short enough that churn does not fill the ring.
pub const REMOVED_HORIZON_MS: u64 = 7 * 24 * 3600 * 1000;

/// Why an allocation call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AllocError {
    #[error("the address space is not split yet (waiting for bootstrap)")]
    NotReady,
    #[error("this router owns no free address; ask a peer for space")]
    NoSpace,
    #[error("address {} belongs to peer {owner}", std::net::Ipv4Addr::from(*.addr))]
    NotOwner { addr: u32, owner: PeerName },
    #[error("address {} is outside the range or reserved", std::net::Ipv4Addr::from(*.0))]
    OutOfRange(u32),
    #[error("address {} is held by {holder}", std::net::Ipv4Addr::from(*.addr))]
    InUse { addr: u32, holder: String },
    #[error("this router was removed from the ring (rmpeer); it must be reset to rejoin")]
    Removed,
}

/// One router's allocator.
#[derive(Debug, Clone)]
pub struct Allocator {
    me: PeerName,
    ring: Ring,
    free: FreeSet,
    allocs: BTreeMap<String, u32>,
    by_addr: BTreeMap<u32, String>,
    /// Allocations that fell outside our ranges (a conflict, or we were
    /// removed): kept out of `allocs` and reported.
    lost: Vec<(String, u32)>,
    /// When (caller's ms) we first saw each removed peer owning nothing.
    removed_since: BTreeMap<PeerName, u64>,
    refused: Refused,
}

/// What persists across restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub ring: Ring,
    pub allocs: Vec<(String, u32)>,
}

impl Allocator {
    pub fn new(me: PeerName, ring: Ring) -> Self {
        let mut a = Allocator {
            me,
            ring,
            free: FreeSet::new(),
            allocs: BTreeMap::new(),
            by_addr: BTreeMap::new(),
            lost: Vec::new(),
            removed_since: BTreeMap::new(),
            refused: Refused::default(),
        };
        a.reconcile();
        a
    }

    /// What was dropped from peers' rings, by kind.
    pub fn refused(&self) -> &Refused {
        &self.refused
    }

    /// Restores what [`Allocator::snapshot`] saved.
    pub fn restore(me: PeerName, snap: Snapshot) -> Self {
        let mut a = Allocator::new(me, snap.ring);
        for (k, addr) in snap.allocs {
            a.allocs.insert(k.clone(), addr);
            a.by_addr.insert(addr, k);
        }
        a.reconcile();
        a
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            ring: self.ring.clone(),
            allocs: self.allocs.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        }
    }

    pub fn me(&self) -> PeerName {
        self.me
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    pub fn free_count(&self) -> u64 {
        self.free.len()
    }

    pub fn allocations(&self) -> impl Iterator<Item = (&str, u32)> {
        self.allocs.iter().map(|(k, v)| (k.as_str(), *v))
    }

    pub fn lost(&self) -> &[(String, u32)] {
        &self.lost
    }

    pub fn lookup(&self, key: &str) -> Option<u32> {
        self.allocs.get(key).copied()
    }

    fn reserved(&self, a: u32) -> bool {
        let r = self.ring.range();
        a == r.start || u64::from(a) + 1 == r.end
    }

    /// Rebuilds the free set from the ring and the allocations; moves
    /// allocations outside our ranges to `lost`.
    fn reconcile(&mut self) {
        let mut free = FreeSet::new();
        for r in self.ring.ranges_of(self.me) {
            free.insert(r);
        }
        let range = self.ring.range();
        free.take(range.start);
        if range.end > 0 {
            free.take((range.end - 1) as u32);
        }
        let mut lost = Vec::new();
        for (k, a) in &self.allocs {
            if !free.take(*a) {
                lost.push((k.clone(), *a));
            }
        }
        for (k, a) in &lost {
            self.allocs.remove(k);
            self.by_addr.remove(a);
        }
        self.lost.extend(lost);
        self.free = free;
    }

    fn usable(&self) -> Result<(), AllocError> {
        if self.ring.removed().contains(&self.me) {
            return Err(AllocError::Removed);
        }
        if !self.ring.is_seeded() {
            return Err(AllocError::NotReady);
        }
        Ok(())
    }

    /// The address for `key`, allocating the lowest free one if it has none.
    pub fn allocate(&mut self, key: &str) -> Result<u32, AllocError> {
        if let Some(a) = self.allocs.get(key) {
            return Ok(*a);
        }
        self.usable()?;
        let a = self.free.take_first().ok_or(AllocError::NoSpace)?;
        self.allocs.insert(key.to_owned(), a);
        self.by_addr.insert(a, key.to_owned());
        Ok(a)
    }

    /// Gives `key` exactly `addr` (a container that keeps its address).
    pub fn claim(&mut self, key: &str, addr: u32) -> Result<(), AllocError> {
        if self.allocs.get(key) == Some(&addr) {
            return Ok(());
        }
        self.usable()?;
        if !self.ring.range().contains(addr) || self.reserved(addr) {
            return Err(AllocError::OutOfRange(addr));
        }
        if let Some(holder) = self.by_addr.get(&addr) {
            return Err(AllocError::InUse {
                addr,
                holder: holder.clone(),
            });
        }
        match self.ring.owner_of(addr) {
            Some(o) if o == self.me => {}
            Some(owner) => return Err(AllocError::NotOwner { addr, owner }),
            None => return Err(AllocError::NotReady),
        }
        if let Some(old) = self.allocs.remove(key) {
            self.by_addr.remove(&old);
            self.free.insert(AddrRange::new(old, u64::from(old) + 1));
        }
        self.free.take(addr);
        self.allocs.insert(key.to_owned(), addr);
        self.by_addr.insert(addr, key.to_owned());
        Ok(())
    }

    /// Releases `key`'s address; an unknown key is not an error.
    pub fn release(&mut self, key: &str) -> Option<u32> {
        let a = self.allocs.remove(key)?;
        self.by_addr.remove(&a);
        if self.ring.owner_of(a) == Some(self.me) && !self.reserved(a) {
            self.free.insert(AddrRange::new(a, u64::from(a) + 1));
        }
        Some(a)
    }

    /// A peer asked for space: give it the upper half of our largest free
    /// interval (all of it if it is one address). Returns what was given;
    /// the caller gossips the ring.
    pub fn donate(&mut self, to: PeerName) -> Option<AddrRange> {
        if to == self.me || self.usable().is_err() {
            return None;
        }
        let largest = self.free.largest()?;
        let half = largest.len() / 2;
        let mut give = AddrRange::new((largest.end - half.max(1)) as u32, largest.end);
        // The range's last address is reserved, never free: when the half we
        // give ends just before it, it goes along, rather than stay behind
        // as a one-address range of ours (which on rmpeer would go to
        // another heir than the rest).
        let range = self.ring.range();
        if give.end + 1 == range.end && self.ring.owner_of(give.end as u32) == Some(self.me) {
            give.end = range.end;
        }
        self.ring.transfer(self.me, give, to).ok()?;
        self.free.remove(give);
        Some(give)
    }

    /// Merges a ring from a peer; inherits the ranges of removed peers whose
    /// heir we are. Returns what the merge did (with `changed` also set when
    /// we inherited, so the caller gossips). Refuses, and counts, a ring that
    /// changes or splits a range we own: only we do that, unless a removal
    /// certificate that is valid here removed us.
    pub fn merge(&mut self, other: &Ring) -> Result<MergeOutcome, RingError> {
        // Another cluster's ring is refused as such, before anything else.
        if let (Some(ours), Some(theirs)) = (self.ring.cluster(), other.cluster())
            && ours != theirs
        {
            return Err(RingError::ClusterMismatch { ours, theirs });
        }
        let mut merged = self.ring.clone();
        let mut out = merged.merge(other)?;
        self.refused.count_removals(&out);
        let removed = merged.removed().contains(&self.me) && merged.removal_is_valid(self.me);
        if !removed && let Some(t) = self.first_change_to_ours(&merged) {
            self.refused.ring_takes_ours += 1;
            return Err(RingError::Invariant(format!(
                "a peer's ring takes or splits our range at token {t}"
            )));
        }
        self.ring = merged;
        out.changed |= self.inherit();
        if out.changed {
            self.reconcile();
        }
        Ok(out)
    }

    /// Takes `ring` for ours, whole: a router back from a stale state
    /// (`channel`), once a peer's ring gives it every address it owns, so
    /// that nothing the mesh forgot meanwhile comes back through it.
    pub fn adopt(&mut self, ring: Ring) {
        self.ring = ring;
        self.reconcile();
    }

    /// The first token of `merged` inside a range we own that differs from
    /// ours (a new token, or another entry at ours).
    fn first_change_to_ours(&self, merged: &Ring) -> Option<u32> {
        self.ring.ranges_of(self.me).into_iter().find_map(|r| {
            let ours = self.ring.entries_in(r);
            let theirs = merged.entries_in(r);
            if ours == theirs {
                return None;
            }
            let first = ours
                .iter()
                .zip(&theirs)
                .find(|(a, b)| a != b)
                .map_or(r.start, |(_, b)| b.0);
            Some(first)
        })
    }

    /// Signs the removal of `peer` with `key` (ours, or `peer`'s own when it
    /// leaves); applies it once the certificate is valid here, and then its
    /// heir (maybe us) takes its ranges. The caller decides when an honest
    /// router may sign (docs/trust.md). Returns whether the ring changed.
    pub fn sign_removal(&mut self, key: &impl Signer, peer: PeerName) -> Result<bool, RingError> {
        let mut changed = self.ring.sign_removal(key, peer)?;
        changed |= self.inherit();
        if changed {
            self.reconcile();
        }
        Ok(changed)
    }

    /// Keeps the ring in proportion to its owners, so that churn does not
    /// grow it for ever: compacts our own tokens (tombstones made at
    /// `wall_ms`), forgets tombstones made `horizon_ms` before `wall_ms`,
    /// and forgets removed peers once they have owned nothing for
    /// `horizon_ms` (by `now_ms`, the caller's clock). Returns whether the
    /// ring changed.
    pub fn compact(&mut self, now_ms: u64, wall_ms: u64, horizon_ms: u64) -> bool {
        let mut changed = false;
        if !self.ring.removed().contains(&self.me) {
            changed |= self.ring.compact_tokens(self.me, wall_ms) > 0;
        }
        changed |= self.ring.forget_tombs(wall_ms, horizon_ms) > 0;
        changed | self.forget_removed(now_ms, horizon_ms)
    }

    fn forget_removed(&mut self, now_ms: u64, horizon_ms: u64) -> bool {
        let owners: std::collections::BTreeSet<PeerName> =
            self.ring.entries().map(|(_, e)| e.owner).collect();
        let gone: Vec<PeerName> = self
            .ring
            .removed()
            .iter()
            .filter(|p| !owners.contains(p))
            .copied()
            .collect();
        self.removed_since.retain(|p, _| gone.contains(p));
        let mut changed = false;
        for p in gone {
            let since = *self.removed_since.entry(p).or_insert(now_ms);
            if now_ms.saturating_sub(since) >= horizon_ms {
                self.ring.forget_removed(p);
                self.removed_since.remove(&p);
                changed = true;
            }
        }
        changed
    }

    fn inherit(&mut self) -> bool {
        self.ring.inherit_removed(self.me) > 0
    }

    /// Checks the invariants in the module docs.
    pub fn check(&self) -> Result<(), String> {
        self.ring.check().map_err(|e| e.to_string())?;
        let owned: u64 = self
            .ring
            .ranges_of(self.me)
            .iter()
            .map(AddrRange::len)
            .sum();
        let range = self.ring.range();
        let ends: std::collections::BTreeSet<u32> =
            [range.start, (range.end.max(1) - 1) as u32].into();
        let reserved = ends
            .iter()
            .filter(|a| self.ring.owner_of(**a) == Some(self.me))
            .count() as u64;
        for (k, a) in &self.allocs {
            if self.ring.owner_of(*a) != Some(self.me) {
                return Err(format!("{k} holds {a}, which we do not own"));
            }
            if self.free.contains(*a) {
                return Err(format!("{k} holds {a}, which is also free"));
            }
        }
        if self.allocs.len() != self.by_addr.len() {
            return Err("two keys share an address".into());
        }
        let total = self.free.len() + self.allocs.len() as u64 + reserved;
        if total != owned {
            return Err(format!(
                "free {} + allocated {} + reserved {reserved} != owned {owned}",
                self.free.len(),
                self.allocs.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use weft_peer_proto::sign::KeyPair;

    use super::*;

    const R: AddrRange = AddrRange {
        start: 100,
        end: 164,
    };

    fn pair() -> (Allocator, Allocator) {
        let ring = Ring::seeded(R, &[PeerName(1), PeerName(2)], 9);
        (
            Allocator::new(PeerName(1), ring.clone()),
            Allocator::new(PeerName(2), ring),
        )
    }

    #[test]
    fn allocate_release_claim() {
        let (mut a, _) = pair();
        assert_eq!(
            a.allocate("c1"),
            Ok(101),
            "the range's first address is reserved"
        );
        assert_eq!(a.allocate("c1"), Ok(101), "idempotent per key");
        assert_eq!(a.allocate("c2"), Ok(102));
        assert_eq!(a.release("c1"), Some(101));
        assert_eq!(a.release("c1"), None, "releasing twice is fine");
        assert_eq!(a.claim("c3", 120), Ok(()));
        assert_eq!(
            a.claim("c4", 120),
            Err(AllocError::InUse {
                addr: 120,
                holder: "c3".into()
            })
        );
        assert_eq!(
            a.claim("c4", 140),
            Err(AllocError::NotOwner {
                addr: 140,
                owner: PeerName(2)
            })
        );
        assert_eq!(a.claim("c4", 100), Err(AllocError::OutOfRange(100)));
        a.check().expect("invariants");
    }

    #[test]
    fn exhaustion_then_donation() {
        let (mut a, mut b) = pair();
        let mut n = 0;
        while a.allocate(&format!("c{n}")).is_ok() {
            n += 1;
        }
        assert_eq!(n, 31, "32 owned, one reserved");
        assert_eq!(a.allocate("more"), Err(AllocError::NoSpace));
        let given = b.donate(PeerName(1)).expect("b has space");
        assert_eq!(
            given.len(),
            16,
            "half of b's 31 free, plus its reserved last address, which goes along"
        );
        b.check().expect("donor invariants");
        a.merge(b.ring()).expect("merge");
        a.check().expect("receiver invariants");
        assert!(given.contains(a.allocate("more").expect("space arrived")));
    }

    fn keys() -> Vec<KeyPair> {
        (1..=3).map(|i| KeyPair::from_seed([i; 32])).collect()
    }

    /// Three routers named by their keys, the range split between them.
    fn three(keys: &[KeyPair]) -> Vec<Allocator> {
        let names: Vec<PeerName> = keys.iter().map(|k| k.name()).collect();
        let ring = Ring::seeded(R, &names, 9);
        names
            .iter()
            .map(|n| Allocator::new(*n, ring.clone()))
            .collect()
    }

    /// One liar's signature on the removal of an honest router is a
    /// minority; it stays one when that router gives all its space away (a
    /// donation of its last free address). `Ring::apply_removals` used to
    /// apply any certificate for a peer that owns nothing, so the honest
    /// router was removed for good on one signature (found by the Byzantine
    /// IPAM simulation's review).
    #[test]
    fn a_minority_removal_stays_one_when_its_peer_gives_everything_away() {
        let k: Vec<KeyPair> = (1..=5).map(|i| KeyPair::from_seed([i; 32])).collect();
        let names: Vec<PeerName> = k.iter().map(|k| k.name()).collect();
        let ring = Ring::seeded(R, &names, 9);
        let mut honest = Allocator::new(names[0], ring.clone());
        let (victim, liar) = (names[3], names[4]);
        let mut lie = ring.clone();
        lie.sign_removal(&k[4], victim)
            .expect("the liar owns space");
        honest.merge(&lie).expect("nothing of ours changes");
        assert!(!honest.ring().removed().contains(&victim), "a minority");
        // The victim gives all it owns to router 1 (what a donation of its
        // last address does).
        let mut gave = ring.clone();
        for r in gave.ranges_of(victim) {
            gave.transfer(victim, r, names[1]).expect("its own");
        }
        honest.merge(&gave).expect("nothing of ours changes");
        assert!(
            !honest.ring().removed().contains(&victim),
            "one liar's signature removed {victim}, which gave its space away (liar {liar})"
        );
    }

    #[test]
    fn removed_peers_space_goes_to_its_heir_only() {
        let k = keys();
        let mut alloc = three(&k);
        let dead = k[2].name();
        // Peer 3 dies; peer 1 signs its removal: one of the two others is
        // not more than half, so nothing happens yet.
        assert_eq!(alloc[0].sign_removal(&k[0], dead), Ok(true));
        assert!(alloc[0].ring().removed().is_empty());
        assert_eq!(alloc[0].ring().ownership().len(), 3);
        // Peer 2 learns the signature and adds its own: the removal applies.
        let r0 = alloc[0].ring().clone();
        alloc[1].merge(&r0).expect("merge");
        alloc[1].sign_removal(&k[1], dead).expect("an owner signs");
        assert!(alloc[1].ring().removed().contains(&dead));
        let r1 = alloc[1].ring().clone();
        alloc[0].merge(&r1).expect("merge");
        let r0 = alloc[0].ring().clone();
        alloc[1].merge(&r0).expect("merge");
        assert_eq!(alloc[0].ring(), alloc[1].ring());
        let own = alloc[0].ring().ownership();
        assert_eq!(own.get(&dead), None);
        assert_eq!(own.values().sum::<u64>(), 64);
        // Exactly one of them got it.
        assert_eq!(own.len(), 2);
        for a in &alloc[..2] {
            a.check().expect("invariants");
        }
        // The removed peer cannot allocate any more.
        alloc[2].merge(&r0).expect("merge");
        assert_eq!(alloc[2].allocate("x"), Err(AllocError::Removed));
    }

    #[test]
    fn a_peer_cannot_take_or_split_our_range_nor_remove_us_alone() {
        let k = keys();
        let mut alloc = three(&k);
        let (me, liar) = (k[0].name(), k[1].name());
        let ours = alloc[0].ring().ranges_of(me)[0];
        let mut forged = alloc[1].ring().clone();
        forged
            .transfer(
                me,
                AddrRange::new(ours.start + 2, u64::from(ours.start) + 5),
                liar,
            )
            .expect("forging as the owner");
        assert!(matches!(
            alloc[0].merge(&forged),
            Err(RingError::Invariant(_))
        ));
        assert_eq!(alloc[0].refused().ring_takes_ours, 1, "counted");
        assert_eq!(
            alloc[0].ring().ranges_of(me),
            vec![ours],
            "our range untouched"
        );
        // The liar lists us as removed, inherits our range and signs our
        // removal: one signature of the two others is no certificate.
        let mut evicted = alloc[1].ring().clone();
        evicted.remove_unchecked(me);
        for p in [liar, k[2].name()] {
            evicted.inherit_removed(p);
        }
        evicted
            .sign_removal(&k[1], me)
            .expect("the liar owns space");
        assert!(alloc[0].merge(&evicted).is_err());
        assert_eq!(alloc[0].refused().ring_takes_ours, 2);
        assert!(alloc[0].allocate("x").is_ok(), "we still allocate");
        assert_eq!(alloc[0].ring().ranges_of(me), vec![ours]);
        // A signature that does not verify is counted as forged.
        let mut bad = alloc[1].ring().clone();
        bad.sign_removal(&k[1], me).expect("signs");
        let mut w = bad.to_wire();
        w.removals[0].sigs[0].sig.0[0] ^= 1;
        let bad = Ring::from_wire(&w, R).expect("well formed");
        alloc[0].merge(&bad).expect("nothing of ours changes");
        assert_eq!(alloc[0].refused().removal_sig, 1);
        // With the third owner's signature too, the removal is valid here:
        // then our range goes to the heir, and we stop.
        let mut both = alloc[1].ring().clone();
        both.sign_removal(&k[1], me).expect("signs");
        let mut third = alloc[2].ring().clone();
        third.merge(&both).expect("merge");
        third.sign_removal(&k[2], me).expect("signs");
        for p in [liar, k[2].name()] {
            third.inherit_removed(p);
        }
        assert!(alloc[0].merge(&third).is_ok());
        assert_eq!(alloc[0].allocate("y"), Err(AllocError::Removed));
    }

    #[test]
    fn removed_peers_are_forgotten_after_the_horizon_once_they_own_nothing() {
        let k = keys();
        let mut alloc = three(&k);
        let dead = k[2].name();
        alloc[0].sign_removal(&k[0], dead).expect("signs");
        let r0 = alloc[0].ring().clone();
        alloc[1].merge(&r0).expect("merge");
        alloc[1].sign_removal(&k[1], dead).expect("signs");
        let r1 = alloc[1].ring().clone();
        alloc[0].merge(&r1).expect("merge");
        assert!(alloc[0].ring().removed().contains(&dead));
        // First seen owning nothing (the heir may compact its tokens).
        alloc[0].compact(1_000, 1_000, 5_000);
        assert!(!alloc[0].compact(5_999, 5_999, 5_000), "not yet");
        assert!(alloc[0].compact(6_000, 6_000, 5_000), "past the horizon");
        assert!(alloc[0].ring().removed().is_empty());
        assert_eq!(alloc[0].ring().removals().count(), 0);
        // A stale ring (from before the removal) brings nothing back.
        let stale = Ring::seeded(R, &k.iter().map(|k| k.name()).collect::<Vec<_>>(), 9);
        alloc[0].merge(&stale).expect("merge");
        assert_eq!(alloc[0].ring().ownership().get(&dead), None);
        alloc[0].check().expect("invariants");
    }

    /// The donor at the end of the range gives its reserved last address
    /// along with the half it donates, keeping one range, not two.
    #[test]
    fn donating_from_the_end_of_the_range_leaves_no_stray_range() {
        let (_, mut b) = pair();
        let given = b.donate(PeerName(1)).expect("space");
        assert_eq!(given.end, R.end, "the reserved last address went along");
        assert_eq!(b.ring().ranges_of(PeerName(2)).len(), 1);
        b.check().expect("donor invariants");
        let mut a = Allocator::new(PeerName(1), b.ring().clone());
        a.check().expect("receiver invariants");
        assert!(a.allocate("x").is_ok());
    }

    #[test]
    fn snapshot_roundtrip() {
        let (mut a, _) = pair();
        a.allocate("c1").expect("space");
        a.claim("c2", 110).expect("ours");
        let b = Allocator::restore(PeerName(1), a.snapshot());
        assert_eq!(b.lookup("c1"), Some(101));
        assert_eq!(b.lookup("c2"), Some(110));
        assert_eq!(b.free_count(), a.free_count());
        b.check().expect("invariants");
    }
}
