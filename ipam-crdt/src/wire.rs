//! Conversions between the `ipam` channel's wire types (`peer-proto`) and the
//! CRDT types, checking everything that came from a peer.

use std::collections::{BTreeMap, BTreeSet};

use weft_peer_proto::PeerName;
use weft_peer_proto::ipam::{BallotWire, ClaimsWire, EntryWire, RingWire, TombWire};
use weft_peer_proto::sign::Signer;

use crate::paxos::{Ballot, Claims, Knowledge};
use crate::range::AddrRange;
use crate::removal::Removal;
use crate::ring::{Entry, Ring, RingError, Tomb};

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
            removals: self.removals().map(|(p, r)| r.to_wire(p)).collect(),
            tombs: self
                .tombs()
                .map(|(token, t)| TombWire {
                    token,
                    owner: t.owner,
                    version: t.version,
                    at_ms: t.at_ms,
                })
                .collect(),
        }
    }

    /// A ring from a peer: it must cover `range`, hold each token once,
    /// inside the range, and pass [`Ring::check`]. The peer's removed set is
    /// not taken: its certificates are, with their signatures unchecked
    /// until this ring is merged into one of ours (which checks them).
    pub fn from_wire(w: &RingWire, range: AddrRange) -> Result<Ring, RingError> {
        Self::parse(w, range, false)
    }

    /// A ring this router saved itself: its removed set is taken as it is
    /// (a state file from before removal certificates has no certificates
    /// for its removals; they stay removed here, and are sent as they are).
    pub fn from_saved(w: &RingWire, range: AddrRange) -> Result<Ring, RingError> {
        Self::parse(w, range, true)
    }

    fn parse(w: &RingWire, range: AddrRange, ours: bool) -> Result<Ring, RingError> {
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
        let mut tombs = BTreeMap::new();
        for t in &w.tombs {
            if t.version > MAX_VERSION {
                return Err(RingError::Invariant(format!(
                    "version {} of tombstone {} is implausible",
                    t.version, t.token
                )));
            }
            let tomb = Tomb {
                owner: t.owner,
                version: t.version,
                at_ms: t.at_ms,
            };
            if tombs.insert(t.token, tomb).is_some() {
                return Err(RingError::Invariant(format!("tombstone {} twice", t.token)));
            }
        }
        let removed: BTreeSet<_> = if ours {
            w.removed.iter().copied().collect()
        } else {
            BTreeSet::new()
        };
        let mut removals: BTreeMap<_, Removal> = BTreeMap::new();
        for r in &w.removals {
            removals
                .entry(r.peer)
                .or_default()
                .add_unchecked(r.sigs.iter().copied());
        }
        let ring = Ring::from_parts(range, w.cluster, entries, tombs, removed, removals);
        ring.check()?;
        Ok(ring)
    }
}

/// The domain of a voter's signature over its consensus claims.
pub const CLAIMS_DOMAIN: &str = "weft/claims/1";

/// `(range start, range end, voter, promise, accepted)`.
pub type ClaimsStatement<'a> = (
    u32,
    u64,
    PeerName,
    Option<BallotWire>,
    &'a Option<(BallotWire, Vec<PeerName>)>,
);

/// What a voter signs: its claims, over this range (so that they cannot be
/// replayed into a consensus over another).
pub fn claims_statement(range: AddrRange, c: &ClaimsWire) -> ClaimsStatement<'_> {
    (range.start, range.end, c.voter, c.promise, &c.accepted)
}

/// `c` signed by its voter, `key`.
pub fn sign_claims(key: &impl Signer, range: AddrRange, mut c: ClaimsWire) -> ClaimsWire {
    c.sig = Some(key.sign(CLAIMS_DOMAIN, &claims_statement(range, &c)));
    c
}

/// Whether `c` carries its voter's signature.
pub fn claims_verify(range: AddrRange, c: &ClaimsWire) -> bool {
    c.sig.is_some_and(|s| {
        s.verify_by(c.voter, CLAIMS_DOMAIN, &claims_statement(range, c))
            .is_ok()
    })
}

/// The same claims, signatures aside.
pub fn same_claims(a: &ClaimsWire, b: &ClaimsWire) -> bool {
    a.voter == b.voter && a.promise == b.promise && a.accepted == b.accepted
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
            sig: None,
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
        ring.remove_unchecked(PeerName(7));
        let w = ring.to_wire();
        assert_eq!(Ring::from_saved(&w, R), Ok(ring.clone()));
        assert!(
            Ring::from_wire(&w, R).expect("valid").removed().is_empty(),
            "a peer's removed set is its opinion, not a certificate"
        );
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
