//! Signed statements: what one router says, checked by every other.
//!
//! A session proves only that its peer holds the mesh secret. Every statement
//! about a router (its topology entry, its ranges and every transfer of them,
//! its removal, its votes, its space requests and the source of its channel
//! messages) carries an Ed25519 signature by the router that makes it. The
//! signer's public key travels with the signature; the signer's name is the
//! hash of that key ([`PublicKey::name`], the same as the name a router's
//! certificate proves), so checking a statement needs no directory.
//!
//! What is signed is `domain || 0x00 || bincode(statement)`: the domain keeps
//! a signature made for one kind of statement from being replayed as another.
//! Signing goes through [`Signer`], so that pure cores take the key as an
//! input and simulations make keys from their seed.

use serde::{Deserialize, Serialize};

use crate::PeerName;

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): the name
/// of a key is hashed over the same bytes a certificate carries.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// A raw Ed25519 public key. On the wire (bincode) its 32 bytes; in JSON
/// state files a base64 string ([`text`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The peer name of this key: the first 64 bits of SHA-256 over its
    /// SubjectPublicKeyInfo DER.
    pub fn name(&self) -> PeerName {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&ED25519_SPKI_PREFIX);
        ctx.update(&self.0);
        let d = ctx.finish();
        let mut b = [0u8; 32];
        b.copy_from_slice(d.as_ref());
        PeerName::from_digest(&b)
    }

    /// The key inside an Ed25519 SubjectPublicKeyInfo (DER), if it is one.
    pub fn from_spki_der(spki: &[u8]) -> Option<Self> {
        let key = spki.strip_prefix(&ED25519_SPKI_PREFIX[..])?;
        Some(PublicKey(key.try_into().ok()?))
    }
}

/// An Ed25519 signature (64 bytes, as two halves). On the wire (bincode)
/// its 64 bytes; in JSON state files a base64 string ([`text`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 32], pub [u8; 32]);

impl Signature {
    fn from_bytes(b: &[u8]) -> Self {
        let mut s = Signature([0; 32], [0; 32]);
        s.0.copy_from_slice(&b[..32]);
        s.1.copy_from_slice(&b[32..64]);
        s
    }

    fn to_bytes(self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[..32].copy_from_slice(&self.0);
        b[32..].copy_from_slice(&self.1);
        b
    }
}

/// A signature with the key that made it: 96 bytes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sig {
    pub key: PublicKey,
    pub sig: Signature,
}

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    #[error("bad signature")]
    BadSignature,
    #[error("signed by {signer}, which may not make this statement")]
    WrongSigner { signer: PeerName },
    #[error("the statement cannot be encoded")]
    Encode,
}

impl Sig {
    /// The signer's name.
    pub fn signer(&self) -> PeerName {
        self.key.name()
    }

    /// Checks that this signs `statement` under `domain`; returns the signer.
    pub fn verify<T: Serialize>(&self, domain: &str, statement: &T) -> Result<PeerName, SignError> {
        let msg = signing_bytes(domain, statement)?;
        self.verify_bytes(&msg)
    }

    /// Checks that this signs `msg`, bytes made by [`signing_bytes`] (for a
    /// receiver that caches what it checked by those bytes).
    pub fn verify_bytes(&self, msg: &[u8]) -> Result<PeerName, SignError> {
        let check = || {
            ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.key.0)
                .verify(msg, &self.sig.to_bytes())
                .is_ok()
        };
        #[cfg(fuzzing)]
        let ok = memo::verified(self, msg, check);
        #[cfg(not(fuzzing))]
        let ok = check();
        if !ok {
            return Err(SignError::BadSignature);
        }
        Ok(self.signer())
    }

    /// As [`Sig::verify`], and the signer must be `who`.
    pub fn verify_by<T: Serialize>(
        &self,
        who: PeerName,
        domain: &str,
        statement: &T,
    ) -> Result<(), SignError> {
        let signer = self.signer();
        if signer != who {
            return Err(SignError::WrongSigner { signer });
        }
        self.verify(domain, statement).map(|_| ())
    }
}

/// How keys and signatures are serialized.
///
/// Binary formats (bincode: the wire, and what signatures cover) get the raw
/// bytes, as serde derives them for a byte array: byte for byte what they
/// were before this module. Human-readable formats (the JSON of `ipam.json`)
/// get one base64 string: serde writes a byte array as a sequence of
/// numbers, which pretty-printed JSON puts one per line, so that a removal
/// certificate of 25 signatures took some 45 KiB, and the soak's `ipam.json`
/// tens of MB. Reading takes both the string and the old sequence, so files
/// written before still load.
mod text {
    use std::fmt;

    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::de::{self, SeqAccess, Visitor};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{PublicKey, Signature};

    /// The derived (binary) forms.
    #[derive(Serialize, Deserialize)]
    #[serde(rename = "PublicKey")]
    struct KeyBin([u8; 32]);

    #[derive(Serialize, Deserialize)]
    #[serde(rename = "Signature")]
    struct SigBin([u8; 32], [u8; 32]);

    impl Serialize for PublicKey {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            if s.is_human_readable() {
                s.serialize_str(&STANDARD.encode(self.0))
            } else {
                KeyBin(self.0).serialize(s)
            }
        }
    }

    impl Serialize for Signature {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            if s.is_human_readable() {
                s.serialize_str(&STANDARD.encode(self.to_bytes()))
            } else {
                SigBin(self.0, self.1).serialize(s)
            }
        }
    }

    /// `N` bytes from a base64 string, or from the sequence of numbers
    /// written before (`[..]` for a key, `[[..], [..]]` for a signature).
    struct Bytes<const N: usize>;

    impl<'de, const N: usize> Visitor<'de> for Bytes<N> {
        type Value = [u8; N];

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{N} bytes in base64")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<[u8; N], E> {
            let b = STANDARD
                .decode(v)
                .map_err(|e| E::custom(format_args!("bad base64: {e}")))?;
            let n = b.len();
            b.try_into().map_err(|_| E::invalid_length(n, &self))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; N], A::Error> {
            let mut out = [0u8; N];
            let mut i = 0;
            // A signature's old form is two arrays of 32: flatten either.
            while i < N {
                if N == 64 {
                    let half: [u8; 32] = seq
                        .next_element()?
                        .ok_or_else(|| de::Error::invalid_length(i, &self))?;
                    out[i..i + 32].copy_from_slice(&half);
                    i += 32;
                } else {
                    out[i] = seq
                        .next_element()?
                        .ok_or_else(|| de::Error::invalid_length(i, &self))?;
                    i += 1;
                }
            }
            if seq.next_element::<de::IgnoredAny>()?.is_some() {
                return Err(de::Error::invalid_length(N + 1, &self));
            }
            Ok(out)
        }
    }

    impl<'de> Deserialize<'de> for PublicKey {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            if d.is_human_readable() {
                d.deserialize_any(Bytes::<32>).map(PublicKey)
            } else {
                KeyBin::deserialize(d).map(|k| PublicKey(k.0))
            }
        }
    }

    impl<'de> Deserialize<'de> for Signature {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            if d.is_human_readable() {
                d.deserialize_any(Bytes::<64>)
                    .map(|b| Signature::from_bytes(&b))
            } else {
                SigBin::deserialize(d).map(|s| Signature(s.0, s.1))
            }
        }
    }
}

/// The bytes a signature covers: `domain || 0x00 || bincode(statement)`.
pub fn signing_bytes<T: Serialize>(domain: &str, statement: &T) -> Result<Vec<u8>, SignError> {
    let mut msg = Vec::with_capacity(domain.len() + 64);
    msg.extend_from_slice(domain.as_bytes());
    msg.push(0);
    crate::codec::encode_into(statement, &mut msg).map_err(|_| SignError::Encode)?;
    Ok(msg)
}

/// SHA-256 of [`signing_bytes`]: what a statement too large to sign
/// whole (a ledger checkpoint's blocks) is signed by.
pub fn statement_digest<T: Serialize>(domain: &str, statement: &T) -> Result<[u8; 32], SignError> {
    let msg = signing_bytes(domain, statement)?;
    let mut d = [0u8; 32];
    d.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &msg).as_ref());
    Ok(d)
}

/// What signs a router's statements: its identity key.
pub trait Signer {
    fn public_key(&self) -> PublicKey;

    /// Signs `statement` under `domain`.
    fn sign<T: Serialize>(&self, domain: &str, statement: &T) -> Sig
    where
        Self: Sized;

    fn name(&self) -> PeerName {
        self.public_key().name()
    }
}

/// An Ed25519 key pair held in memory.
pub struct KeyPair {
    key: RingKey,
    public: PublicKey,
}

#[cfg(not(fuzzing))]
type RingKey = ring::signature::Ed25519KeyPair;
/// Fuzzing builds share one ring key per seed (see [`memo`]).
#[cfg(fuzzing)]
type RingKey = std::sync::Arc<ring::signature::Ed25519KeyPair>;

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyPair({})", self.public.name())
    }
}

impl KeyPair {
    /// From a PKCS#8 document (as in a router's `identity.key`).
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, SignError> {
        let key = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|_| SignError::BadSignature)?;
        Ok(Self::from_ring(key))
    }

    /// From a 32-byte seed: simulations derive every router's key from their
    /// own seed, so that runs repeat.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let make = || {
            #[allow(clippy::expect_used)]
            ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
                .expect("any 32 bytes are an Ed25519 seed")
        };
        #[cfg(fuzzing)]
        let key = memo::seeded(seed, make);
        #[cfg(not(fuzzing))]
        let key = make();
        Self::from_ring(key)
    }

    fn from_ring(key: impl Into<RingKey>) -> Self {
        use ring::signature::KeyPair as _;
        let key = key.into();
        let mut pk = [0u8; 32];
        pk.copy_from_slice(key.public_key().as_ref());
        KeyPair {
            key,
            public: PublicKey(pk),
        }
    }
}

impl Signer for KeyPair {
    fn public_key(&self) -> PublicKey {
        self.public
    }

    fn sign<T: Serialize>(&self, domain: &str, statement: &T) -> Sig {
        // A statement that cannot be encoded is a bug of ours, not of a
        // peer's: sign the domain alone, which no check will accept.
        let msg = signing_bytes(domain, statement).unwrap_or_default();
        let sign = || Signature::from_bytes(self.key.sign(&msg).as_ref());
        #[cfg(fuzzing)]
        let sig = memo::signed(self.public, &msg, sign);
        #[cfg(not(fuzzing))]
        let sig = sign();
        Sig {
            key: self.public,
            sig,
        }
    }
}

/// Fuzzing only (`cfg(fuzzing)`, which cargo-fuzz sets for every crate it
/// builds): Ed25519 key pairs from seeds, signing and checking, memoized
/// for the process.
///
/// The state-machine fuzz targets (`mesh_core`, `ipam_channel`) spend most
/// of each execution signing and checking the same few hundred statements
/// with the same seeded keys, run after run (BENCHMARKS.md, "Fuzzing").
/// Ed25519 signing (RFC 8032, as ring does it) is deterministic and a check
/// is a function of the key, the bytes and the signature alone, so
/// remembering either changes no outcome (nor does sharing the key pair
/// of a seed, which is immutable): a remembered signature is the
/// one ring makes, and a bad or mutated signature, another key or other
/// bytes are another entry, checked by ring (and a failure is remembered as
/// a failure). Nothing of this is compiled outside fuzzing builds and this
/// module's tests; real Ed25519 stays what every other test runs.
#[cfg(any(fuzzing, test))]
mod memo {
    use std::collections::HashMap;
    use std::sync::{LazyLock, Mutex};

    use super::{PublicKey, Sig, Signature};

    /// Entries per table; a full table is emptied (about 30 MiB at most).
    const CAP: usize = 1 << 16;

    type Table<K, V> = LazyLock<Mutex<HashMap<K, V>>>;

    static SIGNED: Table<(PublicKey, Vec<u8>), Signature> = LazyLock::new(Default::default);
    static CHECKED: Table<(Sig, Vec<u8>), bool> = LazyLock::new(Default::default);

    fn get_or<K: std::hash::Hash + Eq, V: Copy>(t: &Table<K, V>, k: K, f: impl FnOnce() -> V) -> V {
        // A poisoned lock only means a run panicked: the table is still sound.
        if let Some(v) = t.lock().unwrap_or_else(|e| e.into_inner()).get(&k) {
            return *v;
        }
        let v = f();
        let mut g = t.lock().unwrap_or_else(|e| e.into_inner());
        if g.len() >= CAP {
            g.clear();
        }
        g.insert(k, v);
        v
    }

    /// Fuzzing only: the ring key of `seed`, made by `make` once per
    /// process (a key pair from a seed costs a scalar multiplication, and
    /// the targets make every router's from its seed at every run).
    #[cfg(fuzzing)]
    pub(super) fn seeded(
        seed: [u8; 32],
        make: impl FnOnce() -> ring::signature::Ed25519KeyPair,
    ) -> super::RingKey {
        static SEEDED: Table<[u8; 32], super::RingKey> = LazyLock::new(Default::default);
        let mut g = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
        g.entry(seed)
            .or_insert_with(|| std::sync::Arc::new(make()))
            .clone()
    }

    /// The signature of `msg` by `key`, made by `sign` if not remembered.
    pub(super) fn signed(
        key: PublicKey,
        msg: &[u8],
        sign: impl FnOnce() -> Signature,
    ) -> Signature {
        get_or(&SIGNED, (key, msg.to_vec()), sign)
    }

    /// Whether `sig` signs `msg`, checked by `check` if not remembered.
    pub(super) fn verified(sig: &Sig, msg: &[u8], check: impl FnOnce() -> bool) -> bool {
        get_or(&CHECKED, (*sig, msg.to_vec()), check)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire keeps the raw bytes; JSON gets base64 and still reads the
    /// arrays of numbers that files written before hold.
    #[test]
    fn keys_and_signatures_are_bytes_on_the_wire_and_base64_in_json() {
        let k = KeyPair::from_seed([7; 32]);
        let s = k.sign("weft-test", &1u8);
        let derived = (s.key.0, (s.sig.0, s.sig.1));
        let mut a = Vec::new();
        let mut b = Vec::new();
        crate::codec::encode_into(&s, &mut a).expect("encode");
        crate::codec::encode_into(&derived, &mut b).expect("encode");
        assert_eq!(a, b, "byte for byte the derived form");
        assert_eq!(a.len(), 96);

        let json = serde_json::to_string(&s).expect("json");
        assert!(json.len() < 160, "{json}");
        assert_eq!(serde_json::from_str::<Sig>(&json).expect("reads"), s);
        let old = format!(
            r#"{{"key":{:?},"sig":[{:?},{:?}]}}"#,
            s.key.0, s.sig.0, s.sig.1
        );
        assert_eq!(serde_json::from_str::<Sig>(&old).expect("old form"), s);

        let bad = [
            r#"{"key":"AAAA","sig":"AAAA"}"#.to_string(),
            json.replace('"', "'"),
            format!(r#"{{"key":{:?},"sig":[{:?}]}}"#, s.key.0, s.sig.0),
            format!(r#"{{"key":{:?},"sig":"!!"}}"#, s.key.0),
            format!(
                r#"{{"key":{:?},"sig":[{:?},{:?},{:?}]}}"#,
                &s.key.0[..31],
                s.sig.0,
                s.sig.1,
                s.sig.1
            ),
        ];
        for b in bad {
            assert!(serde_json::from_str::<Sig>(&b).is_err(), "{b}");
        }
    }

    #[test]
    fn sign_verify_and_refuse() {
        let k = KeyPair::from_seed([7; 32]);
        let s = k.sign("weft-test", &(1u32, "a"));
        assert_eq!(s.verify("weft-test", &(1u32, "a")), Ok(k.name()));
        assert_eq!(
            s.verify("weft-test", &(2u32, "a")),
            Err(SignError::BadSignature)
        );
        assert_eq!(
            s.verify("weft-other", &(1u32, "a")),
            Err(SignError::BadSignature),
            "a signature for one domain is not one for another"
        );
        let other = KeyPair::from_seed([8; 32]);
        assert!(matches!(
            s.verify_by(other.name(), "weft-test", &(1u32, "a")),
            Err(SignError::WrongSigner { .. })
        ));
        let mut forged = s;
        forged.key = other.public_key();
        assert_eq!(
            forged.verify("weft-test", &(1u32, "a")),
            Err(SignError::BadSignature),
            "another key under the same signature"
        );
    }

    /// What fuzzing builds remember is what ring computes: the same
    /// signature, and a check that still refuses a mutated signature,
    /// another key and other bytes once the good one is remembered.
    #[test]
    fn memo_changes_no_outcome() {
        let k = KeyPair::from_seed([9; 32]);
        let msg = signing_bytes("weft-test", &(3u32, "m")).unwrap_or_default();
        let real = Signature::from_bytes(k.key.sign(&msg).as_ref());
        let once = memo::signed(k.public, &msg, || real);
        let again = memo::signed(k.public, &msg, || Signature([0; 32], [0; 32]));
        assert_eq!((once, again), (real, real), "remembered, not made again");

        let check = |s: &Sig, m: &[u8]| {
            memo::verified(s, m, || {
                ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &s.key.0)
                    .verify(m, &s.sig.to_bytes())
                    .is_ok()
            })
        };
        let good = Sig {
            key: k.public,
            sig: real,
        };
        assert!(check(&good, &msg));
        assert!(check(&good, &msg), "remembered as good");
        let mut bad = good;
        bad.sig.1[0] ^= 1;
        assert!(!check(&bad, &msg), "a mutated signature");
        assert!(!check(&bad, &msg), "remembered as bad");
        let mut other = good;
        other.key = KeyPair::from_seed([10; 32]).public_key();
        assert!(!check(&other, &msg), "another key");
        assert!(!check(&good, b"other bytes"), "other bytes");
        assert!(
            memo::verified(&good, &msg, || false),
            "a remembered result is not checked again"
        );
    }

    #[test]
    fn name_is_the_spki_hash() {
        let k = KeyPair::from_seed([1; 32]);
        let mut spki = ED25519_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(&k.public_key().0);
        assert_eq!(PublicKey::from_spki_der(&spki), Some(k.public_key()));
        let d = ring::digest::digest(&ring::digest::SHA256, &spki);
        let mut b = [0u8; 32];
        b.copy_from_slice(d.as_ref());
        assert_eq!(k.name(), PeerName::from_digest(&b));
    }
}
