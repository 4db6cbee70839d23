//! One router's IPAM as a whole: the allocator plus how the range gets split
//! in the first place (`--ipalloc-init`), never waiting silently.
//!
//! - `seed=A,B,...`: the listed routers split the range at once (every one
//!   computes the same ring); everyone else waits for that ring.
//! - `consensus=N`: the voters agree once by [`Paxos`]. A voter proposes
//!   (the voters it has seen) once it has seen all N, or after `patience`
//!   with a quorum; the lowest-named voter goes first and the others only
//!   after a further wait each, so proposers rarely duel.
//! - `observer`: never votes; waits for a ring from the others.
//!
//! Time comes in as milliseconds from the caller; nothing here reads a clock.

use weft_peer_proto::PeerName;

use crate::allocator::Allocator;
use crate::paxos::{Knowledge, Paxos, cluster_id};
use crate::range::AddrRange;
use crate::ring::{MergeOutcome, Ring, RingError};

/// How the range is first split (`--ipalloc-init`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Init {
    Consensus(usize),
    Seed(Vec<PeerName>),
    Observer,
}

/// What the router is waiting for, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// The range is split; allocation works.
    Ready,
    /// Consensus: voters seen of those expected, and the quorum.
    Consensus {
        seen: usize,
        expected: usize,
        quorum: usize,
    },
    /// A seed or observer router waiting for the seeds' ring.
    Ring,
}

#[derive(Debug, Clone)]
pub struct Ipam {
    me: PeerName,
    range: AddrRange,
    init: Init,
    alloc: Allocator,
    paxos: Paxos,
    since_ms: u64,
    next_proposal_ms: u64,
    patience_ms: u64,
    /// A ring of another cluster that was refused: (its cluster, when).
    pub refused: Option<(u64, u64)>,
}

impl Ipam {
    pub fn new(me: PeerName, range: AddrRange, init: Init, now_ms: u64) -> Self {
        let (ring, voter, expected) = match &init {
            Init::Seed(seeds) if seeds.contains(&me) => (
                Ring::seeded(range, seeds, cluster_id(range, seeds)),
                false,
                1,
            ),
            Init::Seed(_) | Init::Observer => (Ring::new(range), false, 1),
            Init::Consensus(n) => (Ring::new(range), true, *n),
        };
        let patience_ms = 10_000;
        Ipam {
            me,
            range,
            init,
            alloc: Allocator::new(me, ring),
            paxos: Paxos::new(me, expected, voter),
            since_ms: now_ms,
            next_proposal_ms: now_ms,
            patience_ms,
            refused: None,
        }
    }

    /// Restarts from persisted state: the ring, our allocations, and the
    /// consensus claims (a voter must never forget what it promised).
    pub fn restore(
        me: PeerName,
        init: Init,
        snapshot: crate::allocator::Snapshot,
        knowledge: &Knowledge,
        now_ms: u64,
    ) -> Self {
        let range = snapshot.ring.range();
        let mut b = Ipam::new(me, range, init, now_ms);
        let seeded_now = b.alloc.ring().clone();
        b.alloc = Allocator::restore(me, snapshot);
        // A seed's own ring is implied by its flags; merging it is a no-op
        // when the persisted ring already has it.
        let _ = b.alloc.merge(&seeded_now);
        b.paxos.merge(knowledge);
        b
    }

    pub fn init(&self) -> &Init {
        &self.init
    }

    pub fn alloc(&self) -> &Allocator {
        &self.alloc
    }

    pub fn alloc_mut(&mut self) -> &mut Allocator {
        &mut self.alloc
    }

    pub fn knowledge(&self) -> &Knowledge {
        self.paxos.knowledge()
    }

    pub fn waiting(&self) -> Waiting {
        if self.alloc.ring().is_seeded() {
            return Waiting::Ready;
        }
        match self.init {
            Init::Consensus(n) => Waiting::Consensus {
                seen: self.paxos.voters_seen(),
                expected: n,
                quorum: self.paxos.quorum(),
            },
            _ => Waiting::Ring,
        }
    }

    /// Since when (ms) we have been waiting (or were, until ready).
    pub fn since_ms(&self) -> u64 {
        self.since_ms
    }

    /// A peer's state: its ring (if any) and consensus knowledge. Returns
    /// whether ours changed (so the caller gossips).
    pub fn on_state(
        &mut self,
        ring: Option<&Ring>,
        knowledge: &Knowledge,
        now_ms: u64,
    ) -> Result<bool, RingError> {
        // Once seeded, claims are of no use: ignored, so they stop growing.
        let mut changed = !self.alloc.ring().is_seeded() && self.paxos.merge(knowledge);
        if let Some(r) = ring {
            match self.alloc.merge(r) {
                Ok(MergeOutcome { changed: c, .. }) => changed |= c,
                Err(e @ RingError::ClusterMismatch { .. }) => {
                    if let RingError::ClusterMismatch { theirs, .. } = e {
                        self.refused = Some((theirs, now_ms));
                    }
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
        changed |= self.seed_from_decision(now_ms);
        Ok(changed)
    }

    fn seed_from_decision(&mut self, now_ms: u64) -> bool {
        // Only voters know the quorum; everyone else adopts rings.
        if self.alloc.ring().is_seeded() || !matches!(self.init, Init::Consensus(_)) {
            return false;
        }
        let Some((_, value)) = self.paxos.decision() else {
            return false;
        };
        if value.is_empty() {
            return false;
        }
        let ring = Ring::seeded(self.range, &value, cluster_id(self.range, &value));
        let ok = self.alloc.merge(&ring).is_ok_and(|o| o.changed);
        if ok {
            self.since_ms = now_ms;
        }
        ok
    }

    /// Time passing: a consensus voter may propose. `jitter` is a random
    /// value from the caller. Returns whether our state changed.
    pub fn tick(&mut self, now_ms: u64, jitter: u64) -> bool {
        let Init::Consensus(n) = self.init else {
            return false;
        };
        if self.alloc.ring().is_seeded()
            || self.paxos.decision().is_some()
            || now_ms < self.next_proposal_ms
        {
            return self.seed_from_decision(now_ms);
        }
        let voters: Vec<PeerName> = self.paxos.knowledge().keys().copied().collect();
        let waited = now_ms.saturating_sub(self.since_ms);
        let enough = voters.len() >= n
            || (waited >= self.patience_ms && voters.len() >= self.paxos.quorum());
        if !enough {
            return false;
        }
        // The lowest-named voter proposes first; the others wait their turn.
        let rank = voters.iter().position(|v| *v == self.me).unwrap_or(0) as u64;
        let turn = self.since_ms + rank * 2_000;
        if now_ms < turn {
            self.next_proposal_ms = turn;
            return false;
        }
        self.next_proposal_ms = now_ms + 3_000 + jitter % 2_000;
        let proposed = self.paxos.propose(voters);
        proposed | self.seed_from_decision(now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: AddrRange = AddrRange {
        start: 0,
        end: 1 << 16,
    };

    /// Everyone sends its state to everyone, `rounds` times, ticking between.
    fn exchange(nodes: &mut [Ipam], now: &mut u64, rounds: usize) {
        for r in 0..rounds {
            *now += 500;
            for (i, n) in nodes.iter_mut().enumerate() {
                n.tick(*now, (i * 7919 + r) as u64);
            }
            let states: Vec<(Ring, Knowledge)> = nodes
                .iter()
                .map(|n| (n.alloc().ring().clone(), n.knowledge().clone()))
                .collect();
            for n in nodes.iter_mut() {
                for (ring, k) in &states {
                    n.on_state(Some(ring), k, *now).expect("one cluster");
                }
            }
        }
    }

    #[test]
    fn consensus_of_three_splits_the_range_once_and_the_observer_learns_it() {
        let mut now = 0;
        let mut nodes: Vec<Ipam> = (1..=3)
            .map(|i| Ipam::new(PeerName(i), R, Init::Consensus(3), now))
            .collect();
        nodes.push(Ipam::new(PeerName(9), R, Init::Observer, now));
        assert_eq!(
            nodes[0].waiting(),
            Waiting::Consensus {
                seen: 1,
                expected: 3,
                quorum: 2
            }
        );
        assert_eq!(nodes[3].waiting(), Waiting::Ring);
        exchange(&mut nodes, &mut now, 12);
        let ring = nodes[0].alloc().ring().clone();
        for n in &nodes {
            assert_eq!(n.waiting(), Waiting::Ready);
            assert_eq!(n.alloc().ring(), &ring);
        }
        let own = ring.ownership();
        assert_eq!(own.len(), 3, "split between the three voters: {own:?}");
        assert!(
            !own.contains_key(&PeerName(9)),
            "observers never get a share at bootstrap"
        );
    }

    #[test]
    fn restore_keeps_allocations_and_promises() {
        let mut now = 0;
        let mut nodes: Vec<Ipam> = (1..=3)
            .map(|i| Ipam::new(PeerName(i), R, Init::Consensus(3), now))
            .collect();
        exchange(&mut nodes, &mut now, 12);
        let a = nodes[1].alloc_mut().allocate("c1").expect("ready");
        let snap = nodes[1].alloc().snapshot();
        let k = nodes[1].knowledge().clone();
        let back = Ipam::restore(PeerName(2), Init::Consensus(3), snap, &k, now);
        assert_eq!(back.waiting(), Waiting::Ready);
        assert_eq!(back.alloc().lookup("c1"), Some(a));
        assert_eq!(back.knowledge().get(&PeerName(2)), k.get(&PeerName(2)));
    }

    /// An observer does not know N: one voter's acceptance is not a decision
    /// to it. (It used to seed a ring from it, a second cluster in the making.)
    #[test]
    fn an_observer_never_seeds_from_claims() {
        let mut now = 0;
        let mut a = Ipam::new(PeerName(1), R, Init::Consensus(3), now);
        let mut b = Ipam::new(PeerName(2), R, Init::Consensus(3), now);
        let mut o = Ipam::new(PeerName(9), R, Init::Observer, now);
        // Until voter 1 has accepted a value (a quorum of 2 promised it).
        for _ in 0..100 {
            now += 500;
            a.tick(now, 1);
            b.tick(now, 2);
            let (ka, kb) = (a.knowledge().clone(), b.knowledge().clone());
            let _ = b.on_state(None, &ka, now);
            let _ = a.on_state(None, &kb, now);
            if a.knowledge()
                .get(&PeerName(1))
                .is_some_and(|c| c.accepted.is_some())
            {
                break;
            }
        }
        assert!(
            a.knowledge()
                .get(&PeerName(1))
                .is_some_and(|c| c.accepted.is_some()),
            "voter 1 never accepted"
        );
        let _ = o.on_state(None, a.knowledge(), now);
        assert_eq!(
            o.waiting(),
            Waiting::Ring,
            "the observer seeded a ring from claims alone"
        );
    }

    #[test]
    fn seeds_split_at_once_and_others_wait_for_their_ring() {
        let seeds = vec![PeerName(1), PeerName(2)];
        let mut now = 0;
        let mut nodes = vec![
            Ipam::new(PeerName(1), R, Init::Seed(seeds.clone()), now),
            Ipam::new(PeerName(2), R, Init::Seed(seeds.clone()), now),
            Ipam::new(PeerName(3), R, Init::Seed(seeds), now),
        ];
        assert_eq!(nodes[0].waiting(), Waiting::Ready);
        assert_eq!(
            nodes[0].alloc().ring(),
            nodes[1].alloc().ring(),
            "seeds compute the same ring"
        );
        assert_eq!(nodes[2].waiting(), Waiting::Ring);
        exchange(&mut nodes, &mut now, 1);
        assert_eq!(nodes[2].waiting(), Waiting::Ready);
    }

    #[test]
    fn separately_seeded_rings_refuse_each_other_and_say_so() {
        let mut a = Ipam::new(PeerName(1), R, Init::Seed(vec![PeerName(1)]), 0);
        let b = Ipam::new(PeerName(2), R, Init::Seed(vec![PeerName(2)]), 0);
        let err = a.on_state(Some(b.alloc().ring()), b.knowledge(), 5);
        assert!(matches!(err, Err(RingError::ClusterMismatch { .. })));
        assert_eq!(a.refused.map(|(_, at)| at), Some(5));
        assert_eq!(a.waiting(), Waiting::Ready, "our own ring is untouched");
    }

    #[test]
    fn a_quorum_decides_after_patience_when_a_voter_never_comes() {
        let mut now = 0;
        let mut nodes: Vec<Ipam> = (1..=2)
            .map(|i| Ipam::new(PeerName(i), R, Init::Consensus(3), now))
            .collect();
        exchange(&mut nodes, &mut now, 4);
        assert!(
            matches!(nodes[0].waiting(), Waiting::Consensus { seen: 2, .. }),
            "waits for the third at first"
        );
        exchange(&mut nodes, &mut now, 30);
        assert_eq!(nodes[0].waiting(), Waiting::Ready);
        assert_eq!(nodes[0].alloc().ring(), nodes[1].alloc().ring());
    }
}
