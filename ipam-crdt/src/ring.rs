//! The ring: who owns which part of the address range.
//!
//! A ring is a map from tokens (addresses) to entries `{owner, version}`; the
//! entry at token `t` owns every address from `t` up to the next token (the
//! last one up to the end of the range). Once seeded there is always a token
//! at the start of the range.
//!
//! Tokens are compacted: an owner whose two neighbouring entries are both
//! its own (an heir's, after it inherits; a donor's, after a gift comes
//! back) replaces the second with a tombstone, a new version of that entry
//! that owns nothing and says when it was made. Tombstones merge like
//! entries (the higher `(version, owner)` wins, a tombstone over an entry of
//! the same version), so a stale copy of the entry cannot bring the token
//! back, and each router drops them after a horizon by that time
//! ([`Ring::forget_tombs`]): the ring stays in proportion to its owners
//! plus the horizon's churn, not to all history.
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
//! clusters refuse to merge. A peer is removed for good (`rmpeer`) only by a
//! valid removal certificate ([`crate::removal`]): certificates merge by the
//! union of their signatures, and each ring decides for itself, against its
//! own owners, when one is complete. A removed peer's ranges go to an heir
//! and never come back; once it owns nothing, the allocator compacts it away
//! after a horizon.

use std::collections::{BTreeMap, BTreeSet};

use weft_peer_proto::PeerName;
use weft_peer_proto::sign::Signer;

use crate::range::AddrRange;
use crate::removal::{Removal, SigOutcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Entry {
    pub owner: PeerName,
    pub version: u32,
}

/// A compacted token: `owner`'s entry there, at `version`, merged into the
/// entry before it at `at_ms` (the owner's wall clock, ms since the Unix
/// epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tomb {
    pub owner: PeerName,
    pub version: u32,
    pub at_ms: u64,
}

/// What one token holds, ordered so that merge takes the greatest: by
/// version, then owner, a tombstone over an entry, then the later tombstone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Live(Entry),
    Tomb(Tomb),
}

impl Slot {
    fn key(&self) -> (u32, PeerName, bool, u64) {
        match self {
            Slot::Live(e) => (e.version, e.owner, false, 0),
            Slot::Tomb(t) => (t.version, t.owner, true, t.at_ms),
        }
    }

    fn version(&self) -> u32 {
        self.key().0
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
    /// Compacted tokens, never at a token of `entries`.
    tombs: BTreeMap<u32, Tomb>,
    /// Peers removed by a certificate that was valid here.
    removed: BTreeSet<PeerName>,
    /// Removal certificates, complete or gathering signatures; only for
    /// peers that own space here or are removed.
    removals: BTreeMap<PeerName, Removal>,
}

/// What a merge did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MergeOutcome {
    pub changed: bool,
    /// Tokens where both sides had different entries of the same version.
    pub conflicts: u32,
    /// Removal signatures taken, forged and refused.
    pub removals: SigOutcome,
    /// Certificates for peers that own nothing here (not kept).
    pub removals_refused: u32,
}

impl Ring {
    /// An unseeded ring over `range`.
    pub fn new(range: AddrRange) -> Self {
        Ring {
            range,
            cluster: None,
            entries: BTreeMap::new(),
            tombs: BTreeMap::new(),
            removed: BTreeSet::new(),
            removals: BTreeMap::new(),
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
        tombs: BTreeMap<u32, Tomb>,
        removed: BTreeSet<PeerName>,
        removals: BTreeMap<PeerName, Removal>,
    ) -> Self {
        Ring {
            range,
            cluster,
            entries,
            tombs,
            removed,
            removals,
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

    /// The compacted tokens.
    pub fn tombs(&self) -> impl Iterator<Item = (u32, Tomb)> + '_ {
        self.tombs.iter().map(|(t, e)| (*t, *e))
    }

    /// The entries whose tokens lie in `r`.
    pub fn entries_in(&self, r: AddrRange) -> Vec<(u32, Entry)> {
        self.entries
            .range(r.start..)
            .take_while(|(t, _)| u64::from(**t) < r.end)
            .map(|(t, e)| (*t, *e))
            .collect()
    }

    /// The entry at exactly `token`.
    pub fn entry(&self, token: u32) -> Option<Entry> {
        self.entries.get(&token).copied()
    }

    pub fn removed(&self) -> &BTreeSet<PeerName> {
        &self.removed
    }

    /// Removal certificates, complete or not, by the peer they remove.
    pub fn removals(&self) -> impl Iterator<Item = (PeerName, &Removal)> {
        self.removals.iter().map(|(p, r)| (*p, r))
    }

    /// The peers that may sign a removal: those that own space and are not
    /// removed.
    fn signers(&self) -> BTreeSet<PeerName> {
        self.entries
            .values()
            .map(|e| e.owner)
            .filter(|o| !self.removed.contains(o))
            .collect()
    }

    /// Adds signatures to the certificate for `peer` (kept only while `peer`
    /// owns space here or is removed), then applies what became valid.
    /// `signers` are those who may sign: owners not removed, before or
    /// after the merge that brought `sigs` (a certificate often arrives with
    /// the heir's entries, after which the removed peer owns nothing).
    fn absorb_removal<'a>(
        &mut self,
        peer: PeerName,
        sigs: impl IntoIterator<Item = &'a weft_peer_proto::sign::Sig>,
        signers: &BTreeSet<PeerName>,
        out: &mut MergeOutcome,
    ) {
        let Some(cluster) = self.cluster else {
            return;
        };
        let removed = self.removed.contains(&peer);
        // An applied removal is complete here: more signatures add nothing.
        if removed && self.removals.contains_key(&peer) {
            return;
        }
        if !removed && !signers.contains(&peer) {
            out.removals_refused += 1;
            return;
        }
        let cert = self.removals.entry(peer).or_default();
        let o = cert.absorb(cluster, peer, sigs, |s| signers.contains(&s));
        out.changed |= o.added > 0;
        out.removals.absorb(o);
    }

    /// Whether the certificate for `peer` is valid against our owners now.
    pub fn removal_is_valid(&self, peer: PeerName) -> bool {
        let signers = self.signers();
        self.removals
            .get(&peer)
            .is_some_and(|c| c.is_valid(peer, &signers))
    }

    /// Marks removed every peer whose certificate is valid now, again while
    /// that changes who may sign. `before` are the signers of our view
    /// before the merge that called this (empty otherwise): a certificate
    /// often arrives with the heir's entries, and a majority of the owners
    /// we saw a moment ago is a majority we held. A peer that owns nothing
    /// is *not* removed on a certificate that is no majority of either: it
    /// may be a live router that gave its last space away, and one liar's
    /// signature must stay a minority for it too.
    fn apply_removals(&mut self, before: &BTreeSet<PeerName>) -> bool {
        let mut changed = false;
        loop {
            let now = self.signers();
            let then: BTreeSet<PeerName> = before
                .iter()
                .filter(|p| !self.removed.contains(*p))
                .copied()
                .collect();
            let valid: Vec<PeerName> = self
                .removals
                .iter()
                .filter(|(p, c)| {
                    !self.removed.contains(*p)
                        && (c.is_valid(**p, &now) || (!then.is_empty() && c.is_valid(**p, &then)))
                })
                .map(|(p, _)| *p)
                .collect();
            if valid.is_empty() {
                return changed;
            }
            self.removed.extend(valid);
            changed = true;
        }
    }

    /// `key`'s signature on the removal of `peer`: `key` must own space or be
    /// `peer`. Returns whether the ring changed (a new signature, or the
    /// removal now applied).
    pub fn sign_removal(&mut self, key: &impl Signer, peer: PeerName) -> Result<bool, RingError> {
        let Some(cluster) = self.cluster else {
            return Err(RingError::NotSeeded);
        };
        let me = key.name();
        if me != peer && !self.signers().contains(&me) {
            return Err(RingError::NotOwner(self.range));
        }
        let sig = Removal::sign(key, cluster, peer);
        let mut out = MergeOutcome::default();
        let signers = self.signers();
        self.absorb_removal(peer, [&sig], &signers, &mut out);
        if out.removals_refused > 0 {
            return Err(RingError::Invariant(format!(
                "{peer} owns nothing to remove"
            )));
        }
        Ok(self.apply_removals(&BTreeSet::new()) | out.changed)
    }

    /// Forgets `peer`'s removal (it owns nothing any more, and the horizon
    /// passed), so that the removed set stays bounded.
    pub(crate) fn forget_removed(&mut self, peer: PeerName) {
        if self.entries.values().all(|e| e.owner != peer) {
            self.removed.remove(&peer);
            self.removals.remove(&peer);
        }
    }

    /// Drops certificates that cannot apply any more (their peer owns
    /// nothing, and is not removed) and signatures of former owners.
    fn prune_removals(&mut self) {
        let owners: BTreeSet<PeerName> = self.entries.values().map(|e| e.owner).collect();
        let removed = &self.removed;
        self.removals
            .retain(|p, _| owners.contains(p) || removed.contains(p));
        for (p, c) in &mut self.removals {
            if !removed.contains(p) {
                c.retain(*p, |s| owners.contains(&s) && !removed.contains(&s));
            }
        }
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

    fn slot(&self, token: u32) -> Option<Slot> {
        self.entries
            .get(&token)
            .map(|e| Slot::Live(*e))
            .or_else(|| self.tombs.get(&token).map(|t| Slot::Tomb(*t)))
    }

    fn set_slot(&mut self, token: u32, slot: Slot) {
        match slot {
            Slot::Live(e) => {
                self.tombs.remove(&token);
                self.entries.insert(token, e);
            }
            Slot::Tomb(t) => {
                self.entries.remove(&token);
                self.tombs.insert(token, t);
            }
        }
    }

    /// `me` compacts its tokens: every entry of ours that directly follows
    /// another of ours becomes a tombstone made at `at_ms`, and the entry
    /// before it owns its addresses. Returns how many tokens went.
    pub fn compact_tokens(&mut self, me: PeerName, at_ms: u64) -> usize {
        let mut prev: Option<PeerName> = None;
        let mut gone = Vec::new();
        for (t, e) in &self.entries {
            if e.owner == me && prev == Some(me) {
                gone.push((*t, e.version));
            }
            prev = Some(e.owner);
        }
        for (t, version) in &gone {
            self.set_slot(
                *t,
                Slot::Tomb(Tomb {
                    owner: me,
                    version: version.saturating_add(1),
                    at_ms,
                }),
            );
        }
        gone.len()
    }

    /// Drops tombstones made `horizon_ms` or more before `now_ms` (wall
    /// clock): by then every router has merged them. Returns how many.
    pub fn forget_tombs(&mut self, now_ms: u64, horizon_ms: u64) -> usize {
        let before = self.tombs.len();
        self.tombs
            .retain(|_, t| t.at_ms.saturating_add(horizon_ms) > now_ms);
        before - self.tombs.len()
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
        let before = self.signers();
        let theirs = (other.entries.iter().map(|(t, e)| (*t, Slot::Live(*e))))
            .chain(other.tombs.iter().map(|(t, e)| (*t, Slot::Tomb(*e))));
        for (t, theirs) in theirs {
            let ours = self.slot(t);
            if ours == Some(theirs) {
                continue;
            }
            if let Some(ours) = ours {
                if ours.version() == theirs.version() {
                    out.conflicts += 1;
                }
                if theirs.key() <= ours.key() {
                    continue;
                }
            }
            self.set_slot(t, theirs);
            out.changed = true;
        }
        // Their removed set is their opinion: we go by the certificates.
        if !other.removals.is_empty() {
            let mut signers = self.signers();
            signers.extend(before.iter().filter(|p| !self.removed.contains(p)));
            for (p, cert) in &other.removals {
                self.absorb_removal(*p, cert.sigs(), &signers, &mut out);
            }
        }
        out.changed |= self.apply_removals(&before);
        self.prune_removals();
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
            // A token compacted before comes back above its tombstone.
            let version = self
                .tombs
                .remove(&at)
                .map_or(1, |t| t.version.saturating_add(1));
            self.entries.insert(at, Entry { owner, version });
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

    /// Marks `peer` as gone for good with no certificate (tests of the heir
    /// rules).
    #[cfg(test)]
    pub(crate) fn remove_unchecked(&mut self, peer: PeerName) -> bool {
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
            if self.cluster.is_some() || !self.tombs.is_empty() {
                return Err(RingError::Invariant(
                    "a cluster id or tombstones but no entries".into(),
                ));
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
        if let Some(t) = self.tombs.keys().find(|t| {
            self.entries.contains_key(t) || !self.range.contains(**t) || **t == self.range.start
        }) {
            return Err(RingError::Invariant(format!(
                "tombstone at {t}: on an entry, outside the range or at its start"
            )));
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
        r.remove_unchecked(p(2));
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
        r.remove_unchecked(p(1));
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
        at_x.remove_unchecked(d);
        at_b.remove_unchecked(d);
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
        r.remove_unchecked(p(2));
        r.remove_unchecked(p(3));
        assert_eq!(r.inherit_removed(p(4)), 0, "p4 precedes only p1");
        assert_eq!(r.inherit_removed(p(1)), 512, "p1 takes p2's, then p3's");
        assert_eq!(r.ownership().len(), 2);
    }

    #[test]
    fn an_heir_compacts_what_it_inherits_and_stale_rings_cannot_undo_it() {
        let base = Ring::seeded(R, &[p(1), p(2), p(3)], 7);
        let mut r = base.clone();
        r.remove_unchecked(p(2));
        assert_eq!(r.inherit_removed(p(1)), 341);
        assert_eq!(r.entries().count(), 3);
        assert_eq!(
            r.compact_tokens(p(3), 50),
            0,
            "p3 has no neighbouring entries"
        );
        assert_eq!(r.compact_tokens(p(1), 50), 1);
        r.check().expect("valid");
        assert_eq!((r.entries().count(), r.tombs().count()), (2, 1));
        assert_eq!(r.ranges_of(p(1)), vec![AddrRange::new(1000, 1682)]);
        // The stale entries (p2's, and p1's inherited one) lose to the
        // tombstone, in either order of merge.
        let mut inherited = base.clone();
        inherited.remove_unchecked(p(2));
        inherited.inherit_removed(p(1));
        for stale in [&base, &inherited] {
            let mut a = r.clone();
            a.merge(stale).expect("merge");
            let mut b = stale.clone();
            b.merge(&r).expect("merge");
            assert_eq!(
                a.entries().collect::<Vec<_>>(),
                r.entries().collect::<Vec<_>>()
            );
            assert_eq!(
                b.entries().collect::<Vec<_>>(),
                r.entries().collect::<Vec<_>>()
            );
        }
        // p1 gives away the address where the token was: it comes back
        // above its tombstone, and the gift wins over the tombstone anywhere.
        let mut gave = r.clone();
        gave.transfer(p(1), AddrRange::new(1341, 1400), p(4))
            .expect("p1 owns it");
        assert_eq!(
            gave.entry(1341).map(|e| e.version),
            Some(5),
            "above the tombstone (3), then given"
        );
        assert_eq!(gave.tombs().count(), 0);
        let mut other = r.clone();
        other.merge(&gave).expect("merge");
        assert_eq!(other.owner_of(1341), Some(p(4)));
        other.check().expect("valid");
        // Tombstones go after the horizon, by the time they were made.
        assert_eq!(r.forget_tombs(1_049, 1_000), 0);
        assert_eq!(r.forget_tombs(1_050, 1_000), 1);
        assert_eq!(r.tombs().count(), 0);
        r.check().expect("valid");
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
            if next(3) == 0 {
                r.compact_tokens(p(1 + next(4)), next(100));
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
