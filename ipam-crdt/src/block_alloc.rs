//! One router's allocator on the signed block ledger (`ledger`,
//! ring-signing.md, item 2 of its order of work): the addresses it has
//! handed out from the blocks it owns, donations of whole blocks, and a
//! settle time before it allocates from a block it gained.
//!
//! Built beside [`crate::Allocator`] (the ring's) and not used by the channel
//! yet. The caller holds the [`Ledger`] beside it and calls
//! [`BlockAllocator::sync`] after every change to it (a merge, an
//! inheritance, a removal, a checkpoint); every call takes that ledger.
//! Pure: the caller passes its clock and its key. Invariants after every
//! call, checked by [`BlockAllocator::check`]:
//! - every allocation lies in a block this router owns and held for the
//!   settle time when it allocated (else it is reported as lost, never
//!   silently kept);
//! - a donation gives only blocks with no allocation in them.

use std::collections::BTreeMap;

use weft_peer_proto::PeerName;
use weft_peer_proto::sign::Signer;

use crate::allocator::AllocError;
use crate::ledger::{Ledger, Step};

/// How long a router holds a block it gained before it allocates from it:
/// a gift or an inheritance may still lose to a step it had not heard of
/// (a twin, which disputes the block, or a checkpoint that applied the
/// twin), and nothing must have been allocated from it then. Gossip
/// reaches every router well inside it (the simulation: about 10 s).
pub const SETTLE_MS: u64 = 30_000;

/// Whether a block ours since `since` (0: from the seed) may be allocated
/// from at `now_ms`.
fn settled_at(since: u64, now_ms: u64) -> bool {
    since == 0 || now_ms.saturating_sub(since) >= SETTLE_MS
}

/// One router's allocations over its ledger.
#[derive(Debug, Clone)]
pub struct BlockAllocator {
    me: PeerName,
    /// Each block we own: its version and since when (caller's ms) we have
    /// owned it at that version. A seed block is ours from the start.
    since: BTreeMap<u32, (u32, u64)>,
    allocs: BTreeMap<String, u32>,
    by_addr: BTreeMap<u32, String>,
    /// Allocations in blocks that are no longer ours (a dispute, or we were
    /// removed): kept out of `allocs` and reported.
    lost: Vec<(String, u32)>,
}

impl BlockAllocator {
    pub fn new(me: PeerName, ledger: &Ledger, now_ms: u64) -> Self {
        let mut a = BlockAllocator {
            me,
            since: BTreeMap::new(),
            allocs: BTreeMap::new(),
            by_addr: BTreeMap::new(),
            lost: Vec::new(),
        };
        a.sync(ledger, now_ms);
        a
    }

    pub fn lost(&self) -> &[(String, u32)] {
        &self.lost
    }

    pub fn lookup(&self, key: &str) -> Option<u32> {
        self.allocs.get(key).copied()
    }

    pub fn allocations(&self) -> impl Iterator<Item = (&str, u32)> {
        self.allocs.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// The range's first and last addresses (network and broadcast).
    fn reserved(ledger: &Ledger, a: u32) -> bool {
        let l = ledger.layout();
        let last = l.block(l.blocks() - 1);
        a == l.block(0).start || u64::from(a) + 1 == last.end
    }

    /// Blocks we own and have held for the settle time, ascending.
    fn settled(&self, now_ms: u64) -> impl Iterator<Item = u32> + '_ {
        self.since
            .iter()
            .filter(move |(_, (_, t))| settled_at(*t, now_ms))
            .map(|(b, _)| *b)
    }

    fn is_settled(&self, b: u32, now_ms: u64) -> bool {
        self.since
            .get(&b)
            .is_some_and(|(_, t)| settled_at(*t, now_ms))
    }

    /// Addresses free in settled blocks.
    pub fn free_count(&self, ledger: &Ledger, now_ms: u64) -> u64 {
        let l = ledger.layout();
        self.settled(now_ms)
            .map(|b| {
                let r = l.block(b);
                let used = self
                    .by_addr
                    .range(r.start..)
                    .take_while(|(a, _)| u64::from(**a) < r.end)
                    .count() as u64;
                let reserved = (r.start..=(r.end - 1) as u32)
                    .filter(|a| Self::reserved(ledger, *a))
                    .count() as u64;
                r.len() - used - reserved
            })
            .sum()
    }

    fn usable(&self, ledger: &Ledger) -> Result<(), AllocError> {
        if ledger.cluster().is_none() {
            return Err(AllocError::NotReady);
        }
        if ledger.view().removed.contains(&self.me) {
            return Err(AllocError::Removed);
        }
        Ok(())
    }

    /// The address for `key`, allocating the lowest free one of a settled
    /// block if it has none.
    pub fn allocate(&mut self, ledger: &Ledger, key: &str, now_ms: u64) -> Result<u32, AllocError> {
        if let Some(a) = self.allocs.get(key) {
            return Ok(*a);
        }
        self.usable(ledger)?;
        let l = ledger.layout();
        let found = self.settled(now_ms).find_map(|b| {
            let r = l.block(b);
            (r.start..=(r.end - 1) as u32)
                .find(|a| !Self::reserved(ledger, *a) && !self.by_addr.contains_key(a))
        });
        let a = found.ok_or(AllocError::NoSpace)?;
        self.allocs.insert(key.to_owned(), a);
        self.by_addr.insert(a, key.to_owned());
        Ok(a)
    }

    /// Gives `key` exactly `addr`, which must be in a settled block of ours.
    pub fn claim(
        &mut self,
        ledger: &Ledger,
        key: &str,
        addr: u32,
        now_ms: u64,
    ) -> Result<(), AllocError> {
        if self.allocs.get(key) == Some(&addr) {
            return Ok(());
        }
        self.usable(ledger)?;
        let l = ledger.layout();
        let Some(b) = l.block_of(addr).filter(|_| !Self::reserved(ledger, addr)) else {
            return Err(AllocError::OutOfRange(addr));
        };
        if let Some(holder) = self.by_addr.get(&addr) {
            return Err(AllocError::InUse {
                addr,
                holder: holder.clone(),
            });
        }
        match ledger.view().owner(b) {
            Some(o) if o == self.me && self.is_settled(b, now_ms) => {}
            Some(o) if o == self.me => return Err(AllocError::NotReady),
            Some(owner) => return Err(AllocError::NotOwner { addr, owner }),
            None => return Err(AllocError::NotReady),
        }
        if let Some(old) = self.allocs.remove(key) {
            self.by_addr.remove(&old);
        }
        self.allocs.insert(key.to_owned(), addr);
        self.by_addr.insert(addr, key.to_owned());
        Ok(())
    }

    /// Releases `key`'s address; an unknown key is not an error.
    pub fn release(&mut self, key: &str) -> Option<u32> {
        let a = self.allocs.remove(key)?;
        self.by_addr.remove(&a);
        Some(a)
    }

    /// A peer asked for space: give it the upper half (at least one) of our
    /// blocks that hold no allocation (and an address that is not
    /// reserved), as whole blocks. Returns the signed
    /// steps, for the caller to gossip.
    pub fn donate(
        &mut self,
        ledger: &mut Ledger,
        key: &impl Signer,
        to: PeerName,
        now_ms: u64,
    ) -> Vec<Step> {
        if to == self.me || key.name() != self.me || self.usable(ledger).is_err() {
            return Vec::new();
        }
        let l = ledger.layout();
        let empty: Vec<u32> = self
            .since
            .keys()
            .copied()
            .filter(|b| {
                let r = l.block(*b);
                let reserved_only = r.len() == 1 && Self::reserved(ledger, r.start);
                !reserved_only
                    && self
                        .by_addr
                        .range(r.start..)
                        .next()
                        .is_none_or(|(a, _)| u64::from(*a) >= r.end)
            })
            .collect();
        let give = empty.len().div_ceil(2);
        let mut steps = Vec::new();
        for b in empty.iter().rev().take(give) {
            steps.extend(ledger.give(key, *b..*b + 1, to, now_ms));
        }
        self.sync(ledger, now_ms);
        steps
    }

    /// Brings the blocks we own up to `ledger`'s view, after any change to
    /// it: a block new to us (or back at a new version) starts its settle
    /// time now; allocations in blocks that left us are lost.
    pub fn sync(&mut self, ledger: &Ledger, now_ms: u64) {
        let v = ledger.view();
        let seed = ledger.base_at_ms() == 0;
        let mut since = BTreeMap::new();
        for b in v.blocks_of(self.me) {
            let version = v.blocks[b as usize].version;
            let t = match self.since.get(&b) {
                Some((ver, t)) if *ver == version => *t,
                // The seed layout is every router's from the start: no step
                // it could lose to.
                _ if seed && version == 1 => 0,
                _ => now_ms.max(1),
            };
            since.insert(b, (version, t));
        }
        self.since = since;
        let l = ledger.layout();
        let gone: Vec<(String, u32)> = self
            .allocs
            .iter()
            .filter(|(_, a)| l.block_of(**a).is_none_or(|b| !self.since.contains_key(&b)))
            .map(|(k, a)| (k.clone(), *a))
            .collect();
        for (k, a) in &gone {
            self.allocs.remove(k);
            self.by_addr.remove(a);
        }
        self.lost.extend(gone);
    }

    /// The invariants of the module's text.
    pub fn check(&self, ledger: &Ledger) -> Result<(), String> {
        let l = ledger.layout();
        let v = ledger.view();
        for (k, a) in &self.allocs {
            let b = l
                .block_of(*a)
                .ok_or(format!("{k} at {a} is outside the range"))?;
            if v.owner(b) != Some(self.me) {
                return Err(format!("{k} at {a} is in block {b}, not ours"));
            }
            if self.by_addr.get(a) != Some(k) {
                return Err(format!("{k} at {a} is not indexed"));
            }
        }
        if self.by_addr.len() != self.allocs.len() {
            return Err("the address index holds what no key does".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use weft_peer_proto::sign::KeyPair;

    use super::*;
    use crate::AddrRange;

    const R: AddrRange = AddrRange {
        start: 0x0a20_0000,
        end: 0x0a20_0000 + 256,
    };
    const T0: u64 = 1_000_000;

    fn keys(n: u8) -> Vec<KeyPair> {
        let mut k: Vec<KeyPair> = (0..n).map(|i| KeyPair::from_seed([i + 1; 32])).collect();
        k.sort_by_key(|k| k.name());
        k
    }

    /// A router: its ledger and its allocations.
    struct Node {
        key: KeyPair,
        ledger: Ledger,
        alloc: BlockAllocator,
    }

    impl Node {
        fn allocate(&mut self, key: &str, now: u64) -> Result<u32, AllocError> {
            self.alloc.allocate(&self.ledger, key, now)
        }

        fn free(&self, now: u64) -> u64 {
            self.alloc.free_count(&self.ledger, now)
        }

        fn donate(&mut self, to: PeerName, now: u64) -> Vec<Step> {
            self.alloc.donate(&mut self.ledger, &self.key, to, now)
        }

        fn merge(&mut self, other: &Ledger, now: u64) -> Vec<Step> {
            self.ledger.merge(other, now);
            let made = self.ledger.inherit(&self.key, now);
            self.alloc.sync(&self.ledger, now);
            made
        }

        fn remove(&mut self, peer: PeerName, now: u64) {
            self.ledger.sign_removal(&self.key, peer);
            self.ledger.inherit(&self.key, now);
            self.alloc.sync(&self.ledger, now);
        }

        fn check(&self) {
            self.alloc.check(&self.ledger).expect("invariants");
        }
    }

    fn seeded(k: &[KeyPair], i: usize) -> Node {
        let names: Vec<PeerName> = k.iter().map(|k| k.name()).collect();
        let ledger = Ledger::seeded(R, &names, 7);
        let alloc = BlockAllocator::new(k[i].name(), &ledger, T0);
        Node {
            // The same key again (a key pair is not Clone).
            key: (1..=u8::MAX)
                .map(|j| KeyPair::from_seed([j; 32]))
                .find(|x| x.name() == k[i].name())
                .expect("a key of keys()"),
            ledger,
            alloc,
        }
    }

    #[test]
    fn seed_blocks_allocate_at_once_and_the_range_ends_are_reserved() {
        let k = keys(2);
        let mut a = seeded(&k, 0);
        let mut b = seeded(&k, 1);
        // 256 addresses in 256 blocks: k[0] holds 0..128, k[1] 128..256.
        let first = a.allocate("p0", T0).expect("a seed block is settled");
        assert_eq!(first, R.start + 1, "the network address is reserved");
        assert_eq!(a.free(T0), 126);
        let last = R.start + 255;
        assert_eq!(
            b.alloc.claim(&b.ledger, "p1", last, T0),
            Err(AllocError::OutOfRange(last)),
            "the broadcast address is reserved"
        );
        assert_eq!(
            a.alloc.claim(&a.ledger, "p2", R.start + 200, T0),
            Err(AllocError::NotOwner {
                addr: R.start + 200,
                owner: k[1].name()
            })
        );
        assert_eq!(a.allocate("p0", T0), Ok(first), "a key keeps its address");
        a.check();
        b.check();
    }

    #[test]
    fn a_donated_block_is_used_only_after_the_settle_time() {
        let k = keys(2);
        let mut a = seeded(&k, 0);
        let mut b = seeded(&k, 1);
        // b fills its own space, then asks a.
        let mut n = 0;
        while b.allocate(&format!("b{n}"), T0).is_ok() {
            n += 1;
        }
        assert_eq!((n, b.free(T0)), (127, 0));
        a.allocate("a0", T0).expect("seed");
        let steps = a.donate(k[1].name(), T0);
        // Empty: blocks 2..128 (block 0 holds only the reserved network
        // address, block 1 holds a0); the upper half goes, one step each.
        assert_eq!(steps.len(), 63, "half of the 126 empty blocks");
        let ledger = a.ledger.clone();
        b.merge(&ledger, T0 + 1);
        assert_eq!(b.free(T0 + 1), 0, "not settled yet");
        let gained = R.start + steps[0].body.first;
        assert_eq!(
            b.alloc.claim(&b.ledger, "x", gained, T0 + 1),
            Err(AllocError::NotReady)
        );
        assert_eq!(b.allocate("x", T0 + 1), Err(AllocError::NoSpace));
        let later = T0 + 1 + SETTLE_MS;
        assert_eq!(b.free(later), 63);
        assert_eq!(
            b.allocate("x", later),
            Ok(R.start + 65),
            "the lowest gained block"
        );
        a.check();
        b.check();
    }

    #[test]
    fn a_donation_never_gives_a_block_with_an_allocation() {
        let k = keys(2);
        let mut a = seeded(&k, 0);
        for i in 0..126 {
            a.allocate(&format!("p{i}"), T0).expect("space");
        }
        // Every block of a but the last holds an allocation (or is block 0,
        // the network address alone).
        let steps = a.donate(k[1].name(), T0);
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].body.first, 127);
        assert!(a.donate(k[1].name(), T0).is_empty(), "nothing empty left");
        assert_eq!(a.alloc.allocations().count(), 126);
        a.check();
    }

    #[test]
    fn a_block_lost_to_a_dispute_reports_its_allocations() {
        let k = keys(3);
        let mut a = seeded(&k, 0);
        let mut b = seeded(&k, 1);
        let mut c = seeded(&k, 2);
        // k[0] gives one block to b and, from the same state, to c.
        let blk = 10;
        let twin = a.ledger.clone();
        a.ledger.give(&a.key, blk..blk + 1, k[1].name(), T0);
        let mut liar = twin;
        liar.give(&a.key, blk..blk + 1, k[2].name(), T0);
        let gift_b = a.ledger.clone();
        b.merge(&gift_b, T0);
        c.merge(&liar, T0);
        let later = T0 + SETTLE_MS;
        let x = b.alloc.claim(&b.ledger, "x", R.start + blk, later);
        assert_eq!(x, Ok(()), "settled: b heard of no twin");
        // The twin reaches b: the block is disputed, held by nobody.
        b.merge(&liar, later + 1);
        assert_eq!(b.ledger.view().owner(blk), None);
        assert_eq!(b.alloc.lost(), &[("x".to_owned(), R.start + blk)]);
        assert_eq!(b.alloc.lookup("x"), None);
        b.check();
        c.check();
    }

    #[test]
    fn a_removed_owner_allocates_nothing_and_its_heir_settles_first() {
        let k = keys(3);
        let mut a = seeded(&k, 0);
        let mut b = seeded(&k, 1);
        let mut c = seeded(&k, 2);
        // k[1] and k[2] remove k[0]; the heir of k[0]'s blocks (0..86) is
        // the owner of the block before them, the last one: k[2].
        b.remove(k[0].name(), T0);
        c.remove(k[0].name(), T0);
        let ledger = b.ledger.clone();
        let before = c.free(T0);
        let made = c.merge(&ledger, T0);
        assert!(!made.is_empty(), "the heir inherits");
        assert_eq!(c.free(T0), before, "not settled yet");
        assert_eq!(
            c.free(T0 + SETTLE_MS) - before,
            85,
            "86 blocks, one reserved"
        );
        let ledger = c.ledger.clone();
        a.merge(&ledger, T0);
        assert_eq!(a.allocate("p", T0), Err(AllocError::Removed));
        c.check();
    }
}
