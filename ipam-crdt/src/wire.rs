//! Conversions between the `ipam` channel's wire types (`peer-proto`) and the
//! CRDT types, checking everything that came from a peer.

use std::collections::{BTreeMap, BTreeSet};

use weft_peer_proto::ipam::{BallotWire, ClaimsWire, EntryWire, RingWire};

use crate::paxos::{Ballot, Claims, Knowledge};
use crate::range::AddrRange;
use crate::ring::{Entry, Ring, RingError};

/// Versions grow by one per change of one range; no real ring comes near
/// this, and refusing larger ones keeps `u32` far from overflowing.
pub const MAX_VERSION: u32 = 1 << 30;

impl Ring {
    pub fn to_wire(&self) -> RingWire {
        RingWire {
            start: self.range().start,
            end: self.range().end,
            cluster: self.cluster(),
            entries: self
                .entries()
                .map(|(token, e)| EntryWire {
                    token,
                    owner: e.owner,
                    version: e.version,
                })
                .collect(),
            removed: self.removed().iter().copied().collect(),
        }
    }

    /// A ring from a peer: it must cover `range`, hold each token once,
    /// inside the range, and pass [`Ring::check`].
    pub fn from_wire(w: &RingWire, range: AddrRange) -> Result<Ring, RingError> {
        let theirs = AddrRange::new(w.start, w.end);
        if theirs != range || w.end < u64::from(w.start) {
            return Err(RingError::RangeMismatch {
                ours: range,
                theirs,
            });
        }
        let mut entries = BTreeMap::new();
        for e in &w.entries {
            if !range.contains(e.token) {
                return Err(RingError::Invariant(format!(
                    "token {} outside the range",
                    e.token
                )));
            }
            if e.version > MAX_VERSION {
                return Err(RingError::Invariant(format!(
                    "version {} of token {} is implausible",
                    e.version, e.token
                )));
            }
            if entries
                .insert(
                    e.token,
                    Entry {
                        owner: e.owner,
                        version: e.version,
                    },
                )
                .is_some()
            {
                return Err(RingError::Invariant(format!("token {} twice", e.token)));
            }
        }
        let removed: BTreeSet<_> = w.removed.iter().copied().collect();
        let ring = Ring::from_parts(range, w.cluster, entries, removed);
        ring.check()?;
        Ok(ring)
    }
}

fn ballot(b: BallotWire) -> Ballot {
    Ballot {
        round: b.round,
        proposer: b.proposer,
    }
}

fn ballot_wire(b: Ballot) -> BallotWire {
    BallotWire {
        round: b.round,
        proposer: b.proposer,
    }
}

pub fn knowledge_to_wire(k: &Knowledge) -> Vec<ClaimsWire> {
    k.iter()
        .map(|(voter, c)| ClaimsWire {
            voter: *voter,
            promise: c.promise.map(ballot_wire),
            accepted: c
                .accepted
                .as_ref()
                .map(|(b, v)| (ballot_wire(*b), v.clone())),
        })
        .collect()
}

pub fn knowledge_from_wire(w: &[ClaimsWire]) -> Knowledge {
    w.iter()
        .map(|c| {
            (
                c.voter,
                Claims {
                    promise: c.promise.map(ballot),
                    accepted: c.accepted.as_ref().map(|(b, v)| (ballot(*b), v.clone())),
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use weft_peer_proto::PeerName;

    use super::*;

    const R: AddrRange = AddrRange {
        start: 100,
        end: 200,
    };

    #[test]
    fn roundtrip_and_rejections() {
        let mut ring = Ring::seeded(R, &[PeerName(1), PeerName(2)], 5);
        ring.transfer(PeerName(1), AddrRange::new(120, 130), PeerName(3))
            .expect("owner");
        ring.remove_peer(PeerName(7));
        let w = ring.to_wire();
        assert_eq!(Ring::from_wire(&w, R), Ok(ring));
        let other = AddrRange::new(100, 300);
        assert!(matches!(
            Ring::from_wire(&w, other),
            Err(RingError::RangeMismatch { .. })
        ));
        let mut bad = w.clone();
        bad.entries.push(EntryWire {
            token: 250,
            owner: PeerName(1),
            version: 1,
        });
        assert!(Ring::from_wire(&bad, R).is_err());
        let mut bad = w.clone();
        bad.entries.push(bad.entries[0]);
        assert!(Ring::from_wire(&bad, R).is_err());
        let mut bad = w.clone();
        bad.entries.retain(|e| e.token != 100);
        assert!(Ring::from_wire(&bad, R).is_err(), "no token at the start");
        let mut bad = w.clone();
        bad.cluster = None;
        assert!(
            Ring::from_wire(&bad, R).is_err(),
            "entries without a cluster"
        );
        let mut bad = w;
        bad.entries.clear();
        assert!(
            Ring::from_wire(&bad, R).is_err(),
            "a cluster without entries"
        );
    }
}
