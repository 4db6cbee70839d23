//! The ring: who owns which part of the address range.
//!
//! A ring is a map from tokens (addresses) to entries `{owner, version}`; the
//! entry at token `t` owns every address from `t` up to the next token (the
//! last one up to the end of the range). Once seeded there is always a token
//! at the start of the range. Tokens are never removed.
//!
//! Only an entry's owner changes it (to give the range away, or to split it
//! by adding tokens inside it), and every change bumps the version, so there
//! are never two concurrent writers of one entry. Merge keeps, per token, the
//! entry with the higher `(version, owner)`: a total order, so merge is
//! commutative, associative and idempotent. Two different entries with the
//! same version can only come from a broken peer or a double reclaim; they
//! are counted as conflicts and resolved the same way everywhere.
//!
//! A ring carries the id of the cluster that seeded it; rings of different
//! clusters refuse to merge. Peers removed for good (`rmpeer`) are kept in a
//! grow-only set, so that their ranges go to an heir and never come back.

use std::collections::{BTreeMap, BTreeSet};

use weft_peer_proto::PeerName;

use crate::range::AddrRange;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Entry {
    pub owner: PeerName,
    pub version: u32,
}

impl Entry {
    fn key(&self) -> (u32, PeerName) {
        (self.version, self.owner)
    }
}

/// What went wrong with a ring operation or merge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    #[error("ring of cluster {theirs:016x} cannot merge into cluster {ours:016x}")]
    ClusterMismatch { ours: u64, theirs: u64 },
    #[error("ring covers {theirs}, ours covers {ours}")]
    RangeMismatch { ours: AddrRange, theirs: AddrRange },
    #[error("{0} is not wholly owned by the peer that tried to change it")]
    NotOwner(AddrRange),
    #[error("the ring is not seeded yet")]
    NotSeeded,
    #[error("invariant broken: {0}")]
    Invariant(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ring {
    range: AddrRange,
    cluster: Option<u64>,
    entries: BTreeMap<u32, Entry>,
    removed: BTreeSet<PeerName>,
}

/// What a merge did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MergeOutcome {
    pub changed: bool,
    /// Tokens where both sides had different entries of the same version.
    pub conflicts: u32,
}

impl Ring {
    /// An unseeded ring over `range`.
    pub fn new(range: AddrRange) -> Self {
        Ring {
            range,
            cluster: None,
            entries: BTreeMap::new(),
            removed: BTreeSet::new(),
        }
    }

    /// The ring every one of `peers` computes alike: the range split into
    /// equal consecutive parts in name order.
    pub fn seeded(range: AddrRange, peers: &[PeerName], cluster: u64) -> Self {
        let mut names: Vec<PeerName> = peers.to_vec();
        names.sort_unstable();
        names.dedup();
        let mut r = Ring::new(range);
        r.cluster = Some(cluster);
        let n = names.len().max(1) as u64;
        for (i, p) in names.iter().enumerate() {
            let token = u64::from(range.start) + range.len() * i as u64 / n;
            r.entries.insert(
                token as u32,
                Entry {
                    owner: *p,
                    version: 1,
                },
            );
        }
        r
    }

    /// A ring from its parts, unchecked (see `Ring::from_wire` for peers' rings).
    pub(crate) fn from_parts(
        range: AddrRange,
        cluster: Option<u64>,
        entries: BTreeMap<u32, Entry>,
        removed: BTreeSet<PeerName>,
    ) -> Self {
        Ring {
            range,
            cluster,
            entries,
            removed,
        }
    }

    pub fn range(&self) -> AddrRange {
        self.range
    }

    pub fn cluster(&self) -> Option<u64> {
        self.cluster
    }

    pub fn is_seeded(&self) -> bool {
        self.cluster.is_some() && !self.entries.is_empty()
    }

    pub fn entries(&self) -> impl Iterator<Item = (u32, Entry)> + '_ {
        self.entries.iter().map(|(t, e)| (*t, *e))
    }

    /// The entry at exactly `token`.
    pub fn entry(&self, token: u32) -> Option<Entry> {
        self.entries.get(&token).copied()
    }

    pub fn removed(&self) -> &BTreeSet<PeerName> {
        &self.removed
    }

    /// The end (exclusive) of the entry at `token`.
    fn end_of(&self, token: u32) -> u64 {
        self.entries
            .range(token.saturating_add(1)..)
            .next()
            .map_or(self.range.end, |(t, _)| u64::from(*t))
            .max(u64::from(token) + 1)
            .min(self.range.end)
    }

    /// Who owns `addr`: O(log n).
    pub fn owner_of(&self, addr: u32) -> Option<PeerName> {
        if !self.range.contains(addr) {
            return None;
        }
        self.entries
            .range(..=addr)
            .next_back()
            .map(|(_, e)| e.owner)
    }

    /// Every range `peer` owns, in address order, adjacent ones joined.
    pub fn ranges_of(&self, peer: PeerName) -> Vec<AddrRange> {
        let mut out: Vec<AddrRange> = Vec::new();
        for (t, e) in &self.entries {
            if e.owner != peer {
                continue;
            }
            let r = AddrRange::new(*t, self.end_of(*t));
            match out.last_mut() {
                Some(last) if last.end == u64::from(r.start) => last.end = r.end,
                _ => out.push(r),
            }
        }
        out
    }

    /// Addresses owned per peer.
    pub fn ownership(&self) -> BTreeMap<PeerName, u64> {
        let mut m = BTreeMap::new();
        for (t, e) in &self.entries {
            *m.entry(e.owner).or_default() += self.end_of(*t) - u64::from(*t);
        }
        m
    }

    /// Merges `other` in.
    pub fn merge(&mut self, other: &Ring) -> Result<MergeOutcome, RingError> {
        if other.range != self.range {
            return Err(RingError::RangeMismatch {
                ours: self.range,
                theirs: other.range,
            });
        }
        let mut out = MergeOutcome::default();
        match (self.cluster, other.cluster) {
            (_, None) => return Ok(out),
            (Some(a), Some(b)) if a != b => {
                return Err(RingError::ClusterMismatch { ours: a, theirs: b });
            }
            (None, Some(b)) => {
                self.cluster = Some(b);
                out.changed = true;
            }
            _ => {}
        }
        for (t, theirs) in &other.entries {
            match self.entries.get_mut(t) {
                None => {
                    self.entries.insert(*t, *theirs);
                    out.changed = true;
                }
                Some(ours) if ours == theirs => {}
                Some(ours) => {
                    if ours.version == theirs.version {
                        out.conflicts += 1;
                    }
                    if theirs.key() > ours.key() {
                        *ours = *theirs;
                        out.changed = true;
                    }
                }
            }
        }
        for p in &other.removed {
            out.changed |= self.removed.insert(*p);
        }
        Ok(out)
    }

    /// Whether `peer` owns every address of `r`.
    pub fn owns(&self, peer: PeerName, r: AddrRange) -> bool {
        if r.is_empty() || !self.range.contains(r.start) || r.end > self.range.end {
            return false;
        }
        let Some((_, e)) = self.entries.range(..=r.start).next_back() else {
            return false;
        };
        if e.owner != peer {
            return false;
        }
        self.entries
            .range(r.start..)
            .take_while(|(t, _)| u64::from(**t) < r.end)
            .all(|(_, e)| e.owner == peer)
    }

    /// Adds a token at `at` inside the owner's entry (same owner, version 1
    /// if new): a no-op if a token is already there.
    fn split(&mut self, at: u64) {
        if at >= self.range.end {
            return;
        }
        let at = at as u32;
        if self.entries.contains_key(&at) {
            return;
        }
        if let Some((_, e)) = self.entries.range(..at).next_back() {
            let owner = e.owner;
            self.entries.insert(at, Entry { owner, version: 1 });
        }
    }

    /// `me` gives `r` (all of which it owns) to `to`.
    pub fn transfer(&mut self, me: PeerName, r: AddrRange, to: PeerName) -> Result<(), RingError> {
        if !self.is_seeded() {
            return Err(RingError::NotSeeded);
        }
        if !self.owns(me, r) {
            return Err(RingError::NotOwner(r));
        }
        self.split(u64::from(r.start));
        self.split(r.end);
        let tokens: Vec<u32> = self
            .entries
            .range(r.start..)
            .take_while(|(t, _)| u64::from(**t) < r.end)
            .map(|(t, _)| *t)
            .collect();
        for t in tokens {
            if let Some(e) = self.entries.get_mut(&t) {
                e.owner = to;
                e.version = e.version.saturating_add(1);
            }
        }
        Ok(())
    }

    /// Marks `peer` as gone for good.
    pub fn remove_peer(&mut self, peer: PeerName) -> bool {
        self.removed.insert(peer)
    }

    /// Who inherits a removed peer's entry at `token`: the owner of the entry
    /// immediately before it (wrapping around the ring). If that owner is
    /// removed too, nobody yet: its own heir takes that entry first, and then
    /// this one.
    ///
    /// Why at most one router ever believes it is the heir of an entry: a
    /// router is right about where its own entry ends, since only the owner
    /// of a range adds tokens inside it (and a range changes hands with the
    /// whole ring state). Deciding per entry matters: the dead peer's lowest
    /// entry, say, depends on whether a donation *to* it was seen yet.
    pub fn heir_of_entry(&self, token: u32) -> Option<PeerName> {
        let before = self
            .entries
            .range(..token)
            .next_back()
            .or_else(|| self.entries.iter().next_back())?;
        if *before.0 == token {
            return None;
        }
        let owner = before.1.owner;
        (!self.removed.contains(&owner)).then_some(owner)
    }

    /// `me` takes every entry of a removed peer whose heir it is (version
    /// bumped), again and again while that makes it the heir of the next one.
    /// Returns the addresses taken.
    pub fn inherit_removed(&mut self, me: PeerName) -> u64 {
        if self.removed.contains(&me) {
            return 0;
        }
        let mut taken = 0;
        loop {
            let mine: Vec<u32> = self
                .entries
                .iter()
                .filter(|(t, e)| {
                    self.removed.contains(&e.owner) && self.heir_of_entry(**t) == Some(me)
                })
                .map(|(t, _)| *t)
                .collect();
            if mine.is_empty() {
                return taken;
            }
            for t in mine {
                taken += self.end_of(t) - u64::from(t);
                if let Some(e) = self.entries.get_mut(&t) {
                    e.owner = me;
                    e.version = e.version.saturating_add(1);
                }
            }
        }
    }

    /// The structural invariants: a seeded ring starts at the range start and
    /// every token lies inside the range.
    pub fn check(&self) -> Result<(), RingError> {
        if self.entries.is_empty() {
            // A cluster id with nothing in it would make a fresh router
            // refuse the real ring later.
            if self.cluster.is_some() {
                return Err(RingError::Invariant("a cluster id but no entries".into()));
            }
            return Ok(());
        }
        if self.cluster.is_none() {
            return Err(RingError::Invariant("entries without a cluster id".into()));
        }
        if !self.entries.contains_key(&self.range.start) {
            return Err(RingError::Invariant(
                "no token at the start of the range".into(),
            ));
        }
        if let Some((t, _)) = self.entries.iter().next_back()
            && !self.range.contains(*t)
        {
            return Err(RingError::Invariant(format!("token {t} outside the range")));
        }
        let total: u64 = self.ownership().values().sum();
        if total != self.range.len() {
            return Err(RingError::Invariant(format!(
                "entries cover {total} of {} addresses",
                self.range.len()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: AddrRange = AddrRange {
        start: 1000,
        end: 2024,
    };

    fn p(n: u64) -> PeerName {
        PeerName(n)
    }

    #[test]
    fn seeding_splits_evenly_and_everyone_agrees() {
        let a = Ring::seeded(R, &[p(3), p(1), p(2)], 7);
        let b = Ring::seeded(R, &[p(2), p(3), p(1)], 7);
        assert_eq!(a, b);
        a.check().expect("valid");
        let own = a.ownership();
        assert_eq!(own.values().sum::<u64>(), 1024);
        assert!(own.values().all(|n| (341..=342).contains(n)), "{own:?}");
        assert_eq!(a.owner_of(1000), Some(p(1)));
        assert_eq!(a.owner_of(2023), Some(p(3)));
        assert_eq!(a.owner_of(2024), None);
        assert_eq!(a.owner_of(999), None);
    }

    #[test]
    fn only_owners_transfer_and_transfers_merge_everywhere() {
        let mut a = Ring::seeded(R, &[p(1), p(2)], 7);
        let mut b = a.clone();
        let part = AddrRange::new(1100, 1200);
        assert_eq!(a.transfer(p(2), part, p(9)), Err(RingError::NotOwner(part)));
        a.transfer(p(1), part, p(9)).expect("p1 owns it");
        a.check().expect("valid");
        assert_eq!(a.owner_of(1099), Some(p(1)));
        assert_eq!(a.owner_of(1100), Some(p(9)));
        assert_eq!(a.owner_of(1199), Some(p(9)));
        assert_eq!(a.owner_of(1200), Some(p(1)));
        assert_eq!(a.ranges_of(p(9)), vec![part]);
        let out = b.merge(&a).expect("same cluster");
        assert!(out.changed && out.conflicts == 0);
        assert_eq!(a, b);
        // p9 hands part of it back; p1 sees it after a merge.
        b.transfer(p(9), AddrRange::new(1150, 1200), p(1))
            .expect("p9 owns it");
        a.merge(&b).expect("merge");
        assert_eq!(
            a.ranges_of(p(1)),
            vec![AddrRange::new(1000, 1100), AddrRange::new(1150, 1512)]
        );
    }

    #[test]
    fn different_clusters_never_merge() {
        let mut a = Ring::seeded(R, &[p(1)], 7);
        let b = Ring::seeded(R, &[p(2)], 8);
        assert!(matches!(
            a.merge(&b),
            Err(RingError::ClusterMismatch { .. })
        ));
        let mut fresh = Ring::new(R);
        assert!(fresh.merge(&a).expect("adopts").changed);
        assert_eq!(fresh, a);
    }

    #[test]
    fn removed_peer_goes_to_exactly_one_heir() {
        let mut r = Ring::seeded(R, &[p(1), p(2), p(3)], 7);
        r.remove_peer(p(2));
        // p2's range follows p1's: p1 inherits, p3 does not.
        assert_eq!(r.clone().inherit_removed(p(3)), 0);
        let n = r.inherit_removed(p(1));
        assert_eq!(n, 341);
        assert!(r.ranges_of(p(2)).is_empty());
        // A stale copy of the old ring cannot bring p2's range back.
        let stale = Ring::seeded(R, &[p(1), p(2), p(3)], 7);
        r.merge(&stale).expect("merge");
        assert!(r.ranges_of(p(2)).is_empty());
        // Wrapping around: the first peer's heir is the last owner.
        let mut r = Ring::seeded(R, &[p(1), p(2), p(3)], 7);
        r.remove_peer(p(1));
        assert_eq!(r.inherit_removed(p(3)), 341);
    }

    /// The review's case: X gives D a range, D dies, B has not seen the gift.
    /// Deciding per entry, X and B inherit different entries: no conflict.
    #[test]
    fn heirs_agree_even_when_a_gift_to_the_dead_peer_was_not_seen_everywhere() {
        let (x, b, d) = (p(1), p(2), p(3));
        let base = Ring::seeded(R, &[x, b, d], 7); // x [1000,1341), b [1341,1682), d [1682,2024)
        let mut at_x = base.clone();
        at_x.transfer(x, AddrRange::new(1300, 1341), d)
            .expect("x owns it");
        let mut at_b = base;
        at_x.remove_peer(d);
        at_b.remove_peer(d);
        let gx = at_x.inherit_removed(x);
        let gb = at_b.inherit_removed(b);
        assert_eq!((gx, gb), (41, 342));
        let mut merged = at_x.clone();
        let out = merged.merge(&at_b).expect("merge");
        assert_eq!(out.conflicts, 0, "two routers inherited the same entry");
        let own = merged.ownership();
        assert_eq!(own.get(&d), None);
        assert_eq!(own.values().sum::<u64>(), 1024);
    }

    #[test]
    fn chains_of_removed_peers_resolve() {
        let mut r = Ring::seeded(R, &[p(1), p(2), p(3), p(4)], 7);
        r.remove_peer(p(2));
        r.remove_peer(p(3));
        assert_eq!(r.inherit_removed(p(4)), 0, "p4 precedes only p1");
        assert_eq!(r.inherit_removed(p(1)), 512, "p1 takes p2's, then p3's");
        assert_eq!(r.ownership().len(), 2);
    }

    fn random_ring(seed: u64) -> Ring {
        // A history of transfers by owners, so the ring is one that can occur.
        let mut s = seed | 1;
        let mut next = |n: u64| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s % n
        };
        let mut r = Ring::seeded(R, &[p(1), p(2), p(3)], 7);
        for _ in 0..next(8) {
            let a = 1000 + next(1024) as u32;
            let len = 1 + next(64);
            let to = p(1 + next(4));
            if let Some(owner) = r.owner_of(a) {
                let _ = r.transfer(owner, AddrRange::new(a, (u64::from(a) + len).min(2024)), to);
            }
        }
        r
    }

    #[test]
    fn merge_laws_and_invariants_seeded() {
        for seed in 0..300u64 {
            let (x, y, z) = (
                random_ring(seed * 3 + 1),
                random_ring(seed * 3 + 2),
                random_ring(seed * 3 + 3),
            );
            let join = |a: &Ring, b: &Ring| {
                let mut r = a.clone();
                r.merge(b).expect("same cluster");
                r
            };
            assert_eq!(join(&x, &y), join(&y, &x), "commutative, seed {seed}");
            assert_eq!(
                join(&join(&x, &y), &z),
                join(&x, &join(&y, &z)),
                "associative, seed {seed}"
            );
            assert_eq!(join(&x, &x), x, "idempotent, seed {seed}");
            for r in [&x, &y, &z] {
                r.check().unwrap_or_else(|e| panic!("{e}, seed {seed}"));
            }
        }
    }
}
