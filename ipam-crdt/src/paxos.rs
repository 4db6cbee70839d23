//! `--ipalloc-init consensus=N`: the first routers agree once on who splits
//! the range, by single-decree Paxos carried by gossip (as Weave Net did).
//!
//! Every voter keeps [`Claims`]: the highest ballot it promised and the
//! highest (ballot, value) it accepted. Claims only grow, by their voter's own
//! action, so the gossiped map of everyone's claims merges per voter by
//! taking the larger. After each merge a voter:
//! - promises the highest ballot it has seen (phase 1);
//! - as a proposer whose ballot a quorum has promised, accepts the value of
//!   the highest ballot those promisers accepted, or its own value if none
//!   did (phase 2a), and as any voter accepts a proposer's accepted value at
//!   a ballot it has not promised past (phase 2b).
//!
//! A value is chosen once a quorum of voters has accepted it at one ballot.
//! Quorum is `N/2 + 1`, so two groups that cannot talk cannot both choose
//! (when N is right). Observers only learn. The caller decides when to
//! propose (time and randomness stay outside).

use std::collections::BTreeMap;

use weft_peer_proto::PeerName;

/// Ballots are ordered by round, then proposer, so they are unique.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ballot {
    pub round: u64,
    pub proposer: PeerName,
}

/// What one voter has claimed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    pub promise: Option<Ballot>,
    pub accepted: Option<(Ballot, Vec<PeerName>)>,
}

impl Claims {
    fn key(&self) -> (Option<Ballot>, Option<Ballot>) {
        (self.promise, self.accepted.as_ref().map(|(b, _)| *b))
    }
}

/// Everyone's claims, as gossiped.
pub type Knowledge = BTreeMap<PeerName, Claims>;

#[derive(Debug, Clone)]
pub struct Paxos {
    me: PeerName,
    /// Voters expected (N); quorum is N/2 + 1.
    expected: usize,
    voter: bool,
    knows: Knowledge,
    /// Our current proposal and the value we would propose.
    proposal: Option<(Ballot, Vec<PeerName>)>,
}

impl Paxos {
    /// A voter (or, with `voter = false`, an observer that only learns).
    pub fn new(me: PeerName, expected: usize, voter: bool) -> Self {
        let mut knows = Knowledge::new();
        if voter {
            knows.insert(me, Claims::default());
        }
        Paxos {
            me,
            expected: expected.max(1),
            voter,
            knows,
            proposal: None,
        }
    }

    pub fn quorum(&self) -> usize {
        self.expected / 2 + 1
    }

    /// Voters we know of (ourselves included).
    pub fn voters_seen(&self) -> usize {
        self.knows.len()
    }

    pub fn knowledge(&self) -> &Knowledge {
        &self.knows
    }

    /// Merges a peer's knowledge, then acts on it. Returns whether anything
    /// changed (so the caller gossips).
    pub fn merge(&mut self, other: &Knowledge) -> bool {
        let mut changed = false;
        for (voter, theirs) in other {
            if *voter == self.me && !self.voter {
                continue;
            }
            // A value must name who splits the range; an empty one is forged.
            if theirs.accepted.as_ref().is_some_and(|(_, v)| v.is_empty()) {
                continue;
            } // Claims only grow, so the larger is the later. (Our own come back
            // larger only if we lost them, which persistence prevents.)
            match self.knows.get(voter) {
                Some(ours) if ours.key() >= theirs.key() => {}
                _ => {
                    self.knows.insert(*voter, theirs.clone());
                    changed = true;
                }
            }
        }
        changed | self.step()
    }

    /// Starts a proposal above every ballot seen, for `value` (the peers to
    /// split the range between).
    pub fn propose(&mut self, value: Vec<PeerName>) -> bool {
        if !self.voter || self.decision().is_some() || value.is_empty() {
            return false;
        }
        let top = self
            .knows
            .values()
            .flat_map(|c| [c.promise, c.accepted.as_ref().map(|(b, _)| *b)])
            .flatten()
            .map(|b| b.round)
            .max()
            .unwrap_or(0);
        let mut value = value;
        value.sort_unstable();
        value.dedup();
        self.proposal = Some((
            Ballot {
                round: top + 1,
                proposer: self.me,
            },
            value,
        ));
        self.step();
        true
    }

    fn mine(&mut self) -> &mut Claims {
        self.knows.entry(self.me).or_default()
    }

    /// Acts as acceptor and proposer on what we know. Returns whether our
    /// claims changed.
    fn step(&mut self) -> bool {
        if !self.voter {
            return false;
        }
        let before = self.knows.get(&self.me).cloned();
        // Phase 1: promise the highest ballot anyone proposes or accepted.
        let top = self
            .knows
            .values()
            .flat_map(|c| [c.promise, c.accepted.as_ref().map(|(b, _)| *b)])
            .flatten()
            .chain(self.proposal.as_ref().map(|(b, _)| *b))
            .max();
        if let Some(top) = top
            && self
                .knows
                .get(&self.me)
                .is_none_or(|c| c.promise < Some(top))
        {
            self.mine().promise = Some(top);
        }
        // Phase 2a: our ballot promised by a quorum -> accept a value for it.
        if let Some((b, own)) = self.proposal.clone() {
            let promisers: Vec<&Claims> = self
                .knows
                .values()
                .filter(|c| c.promise == Some(b))
                .collect();
            let already = self
                .knows
                .get(&self.me)
                .and_then(|c| c.accepted.as_ref())
                .is_some_and(|(ab, _)| *ab == b);
            if promisers.len() >= self.quorum() && !already {
                let value = promisers
                    .iter()
                    .filter_map(|c| c.accepted.as_ref())
                    .max_by_key(|(ab, _)| *ab)
                    .map(|(_, v)| v.clone())
                    .unwrap_or(own);
                if self
                    .knows
                    .get(&self.me)
                    .is_none_or(|c| c.promise <= Some(b))
                {
                    self.mine().accepted = Some((b, value));
                }
            }
        }
        // Phase 2b: accept what a proposer accepted at a ballot we have not promised past.
        let offers: Vec<(Ballot, Vec<PeerName>)> = self
            .knows
            .iter()
            .filter_map(|(v, c)| {
                c.accepted
                    .as_ref()
                    .filter(|(b, _)| b.proposer == *v)
                    .cloned()
            })
            .collect();
        for (b, value) in offers {
            let mine = self.knows.get(&self.me).cloned().unwrap_or_default();
            let newer = mine.accepted.as_ref().is_none_or(|(ab, _)| *ab < b);
            if newer && mine.promise <= Some(b) {
                let m = self.mine();
                m.promise = Some(b);
                m.accepted = Some((b, value));
            }
        }
        self.knows.get(&self.me) != before.as_ref()
    }

    /// The chosen value: a quorum accepted it at one ballot.
    pub fn decision(&self) -> Option<(Ballot, Vec<PeerName>)> {
        let mut count: BTreeMap<Ballot, (usize, &Vec<PeerName>)> = BTreeMap::new();
        for c in self.knows.values() {
            if let Some((b, v)) = &c.accepted {
                count.entry(*b).or_insert((0, v)).0 += 1;
            }
        }
        count
            .into_iter()
            .rev()
            .find(|(_, (n, _))| *n >= self.quorum())
            .map(|(b, (_, v))| (b, v.clone()))
    }
}

/// The cluster id a decision gives the ring: a function of what was decided
/// (the peers, over which range), not of the ballot, because Paxos may choose
/// the same value again at a higher ballot and every router must agree.
/// Another decision (another set of peers) gives another id.
pub fn cluster_id(range: crate::AddrRange, value: &[PeerName]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |x: u64| {
        for byte in x.to_be_bytes() {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(u64::from(range.start));
    eat(range.end);
    let mut v = value.to_vec();
    v.sort_unstable();
    for p in v {
        eat(p.0);
    }
    h
}
