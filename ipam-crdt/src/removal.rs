//! Removal certificates: the one statement a router makes about another
//! (docs/trust.md, "Who may remove a router").
//!
//! "`peer` is gone for good" takes effect only once it is signed by `peer`
//! itself, or by more than half of the routers that own space in the ring,
//! `peer` and routers already removed not counted. Signatures accumulate
//! across gossip (a certificate is a set of signatures, merged by union), and
//! each receiver decides validity against its own ring: no receiver takes a
//! sender's word that a certificate is complete.
//!
//! Which signatures are kept: those that verify, over this cluster and this
//! peer, by `peer` or by a router that owns space in our ring. Anything else
//! is dropped and counted as forged (a bad signature) or refused (a good
//! signature by a router that may not sign it): a certificate holds at most
//! one signature per owner, so it stays bounded.
//!
//! When an honest router may sign is the caller's decision (the router
//! passes "asked by the operator or Kubernetes, and unreachable for T").
//!
//! Each signature is checked once per process, not once per ring that
//! receives it: what passed is remembered in [`CHECKED`], the mesh's
//! `SigCache`, by the hash of the signed bytes, key and signature.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::LazyLock;

use serde::Serialize;
use weft_mesh::SigCache;
use weft_peer_proto::PeerName;
use weft_peer_proto::ipam::RemovalWire;
use weft_peer_proto::sign::{Sig, Signer, signing_bytes};

/// The domain of removal signatures.
pub const DOMAIN: &str = "weft/remove/1";

/// Removal signatures that passed, for every ring of the process: a router
/// meets each signature in the ring of every neighbour that gossips it, and
/// a simulation holds many routers' rings. A check is a function of the
/// bytes, the key and the signature alone, so remembering it changes no
/// outcome; a bad signature is never remembered. 65 536 entries (about
/// 4 MiB) hold every certificate of a ring within `MAX_IPAM_PEERS`'s reach
/// many times over; the oldest is forgotten first.
static CHECKED: LazyLock<SigCache> = LazyLock::new(|| SigCache::new(1 << 16));

/// Whether `sig` signs the removal of `peer` in `cluster`.
fn verifies(sig: &Sig, cluster: u64, peer: PeerName) -> bool {
    signing_bytes(DOMAIN, &Statement { cluster, peer })
        .is_ok_and(|msg| CHECKED.check(sig.signer(), &msg, sig).is_ok())
}

/// What a removal signature covers: the cluster keeps a certificate of one
/// ring from being replayed into another.
#[derive(Serialize)]
struct Statement {
    cluster: u64,
    peer: PeerName,
}

/// The signatures gathered for the removal of one peer, by signer.
#[derive(Debug, Clone, Default)]
pub struct Removal {
    sigs: BTreeMap<PeerName, Sig>,
    /// The signatures of `sigs`, to pass over one held without hashing its
    /// key into a name: every gossip brings every signature again.
    held: HashSet<Sig>,
}

/// What merging signatures into a certificate did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SigOutcome {
    pub added: u32,
    /// Signatures that did not verify.
    pub forged: u32,
    /// Good signatures by routers that may not sign this removal.
    pub refused: u32,
}

impl SigOutcome {
    pub fn absorb(&mut self, o: SigOutcome) {
        self.added += o.added;
        self.forged += o.forged;
        self.refused += o.refused;
    }
}

impl PartialEq for Removal {
    fn eq(&self, other: &Self) -> bool {
        self.sigs == other.sigs
    }
}

impl Eq for Removal {}

impl Removal {
    /// Our signature on the removal of `peer` in `cluster`.
    pub fn sign(key: &impl Signer, cluster: u64, peer: PeerName) -> Sig {
        key.sign(DOMAIN, &Statement { cluster, peer })
    }

    pub fn signers(&self) -> impl Iterator<Item = PeerName> + '_ {
        self.sigs.keys().copied()
    }

    pub fn sigs(&self) -> impl Iterator<Item = &Sig> {
        self.sigs.values()
    }

    pub fn len(&self) -> usize {
        self.sigs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sigs.is_empty()
    }

    /// Adds the signatures of `sigs` that verify and whose signer `may_sign`.
    /// A signature we already hold is not checked again, and one whose
    /// signer may not sign is refused before it is verified.
    pub fn absorb<'a>(
        &mut self,
        cluster: u64,
        peer: PeerName,
        sigs: impl IntoIterator<Item = &'a Sig>,
        may_sign: impl Fn(PeerName) -> bool,
    ) -> SigOutcome {
        let mut out = SigOutcome::default();
        for sig in sigs {
            if self.held.contains(sig) {
                continue;
            }
            let signer = sig.signer();
            if signer != peer && !may_sign(signer) {
                out.refused += 1;
            } else if !verifies(sig, cluster, peer) {
                out.forged += 1;
            } else {
                self.held.insert(*sig);
                match self.sigs.insert(signer, *sig) {
                    None => out.added += 1,
                    Some(old) => {
                        self.held.remove(&old);
                    }
                }
            }
        }
        out
    }

    /// Signatures as they came from a peer, not checked: only for a ring
    /// that is merged into ours (which checks them) and then dropped.
    pub(crate) fn add_unchecked(&mut self, sigs: impl IntoIterator<Item = Sig>) {
        for s in sigs {
            self.held.insert(s);
            if let Some(old) = self.sigs.insert(s.signer(), s)
                && old != s
            {
                self.held.remove(&old);
            }
        }
    }

    /// Whether this removes `peer`, given the routers that own space now
    /// (those already removed left out by the caller).
    pub fn is_valid(&self, peer: PeerName, owners: &BTreeSet<PeerName>) -> bool {
        if self.sigs.contains_key(&peer) {
            return true;
        }
        let others = owners.iter().filter(|o| **o != peer);
        let (n, signed) = others.fold((0usize, 0usize), |(n, s), o| {
            (n + 1, s + usize::from(self.sigs.contains_key(o)))
        });
        2 * signed > n
    }

    /// Drops signatures by routers that may no longer sign (they own
    /// nothing now), keeping the certificate bounded by the owners.
    pub fn retain(&mut self, peer: PeerName, may_sign: impl Fn(PeerName) -> bool) {
        self.sigs.retain(|s, _| *s == peer || may_sign(*s));
        self.held = self.sigs.values().copied().collect();
    }

    pub fn to_wire(&self, peer: PeerName) -> RemovalWire {
        RemovalWire {
            peer,
            sigs: self.sigs.values().copied().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use weft_peer_proto::sign::KeyPair;

    use super::*;

    fn keys(n: u8) -> Vec<KeyPair> {
        (1..=n).map(|i| KeyPair::from_seed([i; 32])).collect()
    }

    #[test]
    fn a_majority_of_the_other_owners_or_the_peer_itself() {
        let k = keys(5);
        let owners: BTreeSet<PeerName> = k.iter().map(|k| k.name()).collect();
        let x = k[4].name();
        let mut r = Removal::default();
        let sig = |i: usize| Removal::sign(&k[i], 7, x);
        let out = r.absorb(7, x, &[sig(0), sig(1)], |s| owners.contains(&s));
        assert_eq!(out.added, 2);
        assert!(
            !r.is_valid(x, &owners),
            "two of the four others is not more than half"
        );
        r.absorb(7, x, &[sig(2)], |s| owners.contains(&s));
        assert!(r.is_valid(x, &owners), "three of four");
        let mut own = Removal::default();
        own.absorb(7, x, &[sig(4)], |_| false);
        assert!(own.is_valid(x, &owners), "the peer itself");
    }

    #[test]
    fn a_signature_dropped_by_retain_is_taken_again() {
        let k = keys(3);
        let x = k[2].name();
        let mut r = Removal::default();
        let s0 = Removal::sign(&k[0], 7, x);
        assert_eq!(r.absorb(7, x, &[s0], |_| true).added, 1);
        assert_eq!(r.absorb(7, x, &[s0], |_| true).added, 0, "held already");
        r.retain(x, |_| false);
        assert!(r.is_empty());
        assert_eq!(r.absorb(7, x, &[s0], |_| true).added, 1, "dropped, so new");
        assert_eq!(r, {
            let mut again = Removal::default();
            again.absorb(7, x, &[s0], |_| true);
            again
        });
    }

    #[test]
    fn forged_foreign_and_replayed_signatures_are_counted_not_kept() {
        let k = keys(3);
        let owners: BTreeSet<PeerName> = k[..2].iter().map(|k| k.name()).collect();
        let x = k[1].name();
        let mut r = Removal::default();
        let mut forged = Removal::sign(&k[0], 7, x);
        forged.sig.0[0] ^= 1;
        let other_cluster = Removal::sign(&k[0], 8, x);
        let other_peer = Removal::sign(&k[0], 7, k[2].name());
        let not_an_owner = Removal::sign(&k[2], 7, x);
        let out = r.absorb(
            7,
            x,
            &[forged, other_cluster, other_peer, not_an_owner],
            |s| owners.contains(&s),
        );
        assert_eq!((out.added, out.forged, out.refused), (0, 3, 1));
        assert!(r.is_empty());
        assert!(!r.is_valid(x, &owners));
    }
}
