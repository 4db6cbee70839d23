//! Wire types of the topology channel: who is connected to whom.
//!
//! Every entry is signed by the router it describes (domain
//! [`TOPOLOGY_DOMAIN`]) and carries that router's public key, whose hash is
//! the entry's name: only a router can write its own entry. The merge logic
//! lives in the router's mesh core; these are only the bytes and the check.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::PeerName;
use crate::limits::MAX_ENTRY_VERSION;
use crate::sign::{Sig, SignError, Signer};

/// The signing domain of topology entries.
pub const TOPOLOGY_DOMAIN: &str = "weft/topology/1";

/// What one peer says about itself. Only that peer changes it; a higher
/// `(version, uid)` wins on merge, and between two entries with the same
/// `(version, uid)` (an equivocation) the higher [`PeerEntry::content_hash`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEntry {
    pub name: PeerName,
    pub nickname: String,
    /// Random per process start, so a restarted peer is told apart.
    pub uid: u64,
    /// At most [`MAX_ENTRY_VERSION`].
    pub version: u64,
    /// Addresses at which others reached this peer (newest first), for
    /// discovery. At most [`crate::limits::MAX_ADDRS_PER_PEER`].
    pub addrs: Vec<SocketAddr>,
    /// Peers this one holds an established session with, sorted and
    /// without duplicates.
    pub conns: Vec<PeerName>,
    /// This peer's X25519 public key for end-to-end origin keys of relayed
    /// data packets ([`crate::origin`]), drawn anew at each start. All
    /// zeros: none (relayed packets to and from it are dropped).
    pub dh: [u8; 32],
    /// By `name`'s own key, over everything above.
    pub sig: Sig,
}

/// What a topology signature covers: the entry without its signature.
#[derive(Serialize)]
struct EntryBody<'a> {
    name: PeerName,
    nickname: &'a str,
    uid: u64,
    version: u64,
    addrs: &'a [SocketAddr],
    conns: &'a [PeerName],
    dh: &'a [u8; 32],
}

/// Why an entry was refused on merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    #[error("{0}")]
    Signature(#[from] SignError),
    #[error("version above the limit")]
    Version,
    #[error("connections not sorted, or listed twice")]
    Unsorted,
}

impl PeerEntry {
    /// Our own entry, signed. `conns` is sorted and deduplicated here.
    pub fn signed<S: Signer>(
        signer: &S,
        nickname: String,
        uid: u64,
        version: u64,
        addrs: Vec<SocketAddr>,
        mut conns: Vec<PeerName>,
        dh: [u8; 32],
    ) -> Self {
        conns.sort_unstable();
        conns.dedup();
        let name = signer.name();
        let body = EntryBody {
            name,
            nickname: &nickname,
            uid,
            version,
            addrs: &addrs,
            conns: &conns,
            dh: &dh,
        };
        let sig = signer.sign(TOPOLOGY_DOMAIN, &body);
        PeerEntry {
            name,
            nickname,
            uid,
            version,
            addrs,
            conns,
            dh,
            sig,
        }
    }

    /// The bytes the signature covers.
    pub fn signing_bytes(&self) -> Result<Vec<u8>, SignError> {
        crate::sign::signing_bytes(TOPOLOGY_DOMAIN, &self.body())
    }

    fn body(&self) -> EntryBody<'_> {
        EntryBody {
            name: self.name,
            nickname: &self.nickname,
            uid: self.uid,
            version: self.version,
            addrs: &self.addrs,
            conns: &self.conns,
            dh: &self.dh,
        }
    }

    /// The checks that need no cryptography: the version bound and the
    /// normal form of `conns` (an honest router never sends otherwise, and
    /// a signed entry cannot be normalised by its receiver).
    pub fn check_form(&self) -> Result<(), EntryError> {
        if self.version > MAX_ENTRY_VERSION {
            return Err(EntryError::Version);
        }
        if self.conns.windows(2).any(|w| w[0] >= w[1]) {
            return Err(EntryError::Unsorted);
        }
        Ok(())
    }

    /// Checks that the entry is well formed and signed by the router it
    /// names (whose key hashes to `name`).
    pub fn verify(&self) -> Result<(), EntryError> {
        self.check_form()?;
        self.sig
            .verify_by(self.name, TOPOLOGY_DOMAIN, &self.body())
            .map_err(EntryError::from)
    }

    /// The `(version, uid)` pair merges compare first.
    pub fn order_key(&self) -> (u64, u64) {
        (self.version, self.uid)
    }

    /// SHA-256 over the encoded entry, signature and key included: it
    /// names this exact entry.
    pub fn content_digest(&self) -> [u8; 32] {
        let mut bytes = Vec::new();
        // Encoding into a Vec fails only for types serde cannot express.
        let _ = crate::codec::encode_into(self, &mut bytes);
        let mut d = [0u8; 32];
        d.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref());
        d
    }

    /// The first 64 bits of [`PeerEntry::content_digest`]: two entries with
    /// the same order key but different content differ here.
    pub fn content_hash(&self) -> u64 {
        hash_of_digest(&self.content_digest())
    }

    /// The entry reduced to what anti-entropy compares (hashes it: holders
    /// of many entries keep the hash instead).
    pub fn digest(&self) -> DigestEntry {
        self.digest_with(self.content_hash())
    }

    pub fn digest_with(&self, hash: u64) -> DigestEntry {
        DigestEntry {
            name: self.name,
            uid: self.uid,
            version: self.version,
            hash,
        }
    }
}

/// [`PeerEntry::content_hash`] from a [`PeerEntry::content_digest`].
pub fn hash_of_digest(d: &[u8; 32]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_be_bytes(b)
}

/// A peer's entry reduced to what anti-entropy compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DigestEntry {
    pub name: PeerName,
    pub uid: u64,
    pub version: u64,
    /// [`PeerEntry::content_hash`].
    pub hash: u64,
}

impl DigestEntry {
    pub fn order_key(&self) -> (u64, u64) {
        (self.version, self.uid)
    }

    /// The total order of merges: version, then uid, then content.
    pub fn merge_key(&self) -> (u64, u64, u64) {
        (self.version, self.uid, self.hash)
    }
}

/// Messages of the topology channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TopologyMsg {
    /// "My topology hashes to this": the cheap periodic check. A mismatch
    /// is answered with a [`TopologyMsg::Digest`].
    Summary { hash: u64, peers: u32 },
    /// Every entry the sender has, by version. Answered with an update of
    /// what the sender lacks; with `reply`, also with the receiver's digest
    /// when the receiver lacks something.
    Digest {
        entries: Vec<DigestEntry>,
        reply: bool,
    },
    /// Entries that are news to the receiver.
    Update { entries: Vec<PeerEntry> },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::KeyPair;

    #[test]
    fn entries_verify_only_as_their_own_router_signed_them() {
        let k = KeyPair::from_seed([3; 32]);
        let e = PeerEntry::signed(
            &k,
            "a".into(),
            1,
            2,
            vec![],
            vec![PeerName(9), PeerName(4)],
            [5; 32],
        );
        assert_eq!(e.conns, vec![PeerName(4), PeerName(9)]);
        assert_eq!(e.verify(), Ok(()));
        let mut changed = e.clone();
        changed.version = 3;
        assert!(changed.verify().is_err(), "content changed after signing");
        let mut rekeyed = e.clone();
        rekeyed.dh = [6; 32];
        assert!(
            rekeyed.verify().is_err(),
            "origin key changed after signing"
        );
        let other = KeyPair::from_seed([4; 32]);
        let mut renamed = PeerEntry::signed(&other, "a".into(), 1, 2, vec![], vec![], [5; 32]);
        renamed.name = e.name;
        assert!(
            matches!(
                renamed.verify(),
                Err(EntryError::Signature(SignError::WrongSigner { .. }))
            ),
            "another router's key under our name"
        );
        let top = PeerEntry::signed(&k, "a".into(), 1, u64::MAX, vec![], vec![], [5; 32]);
        assert_eq!(top.verify(), Err(EntryError::Version));
        assert_ne!(e.content_hash(), changed.content_hash());
    }
}
