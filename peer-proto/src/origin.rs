//! End-to-end origin keys: who started a relayed data packet, proven to the
//! router it is for, whatever routers relay it.
//!
//! Every router draws an X25519 key pair at start and publishes the public
//! half in its topology entry, which its identity key signs
//! ([`crate::topology::PeerEntry::dh`]). The origin of a relayed packet and
//! its final receiver agree on a secret by static-static Diffie-Hellman and
//! derive from it, with HKDF-SHA256 over both names and both public keys,
//! one AES-256-GCM key per direction. The origin tags each packet it sends
//! through a relay: GMAC (AES-GCM with the inner packet as associated data
//! and nothing to encrypt) under a per-pair counter, the nonce. A relay
//! holds neither secret, so it can carry a tag but not make one: naming
//! another router as origin, changing the packet, or replaying it fails at
//! the receiver. The TTL and the header checksum are left out of the tag,
//! since every relay changes them.
//!
//! Keys change with every start of either router (the key pair is drawn
//! anew), so a counter never repeats under one key and a restarted router
//! starts its counters afresh. Replays are caught by a [`ReplayWindow`] per
//! origin at the receiver.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use ring::aead::{Aad, LessSafeKey};
use ring::hkdf::{HKDF_SHA256, Salt};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::PeerName;
use crate::seal::{ReplayWindow, aes_key, nonce};

/// Bytes of an origin tag.
pub const ORIGIN_TAG_LEN: usize = 16;
/// Tags one pair's direction makes at most; then relayed packets of the
/// pair are dropped until either router restarts (about nine years at a
/// million relayed packets a second).
pub const ORIGIN_COUNTER_LIMIT: u64 = 1 << 48;

/// A router's X25519 key pair for origin keys, drawn at each start.
pub struct DhSecret(StaticSecret);

impl DhSecret {
    /// From 32 random bytes (the shell draws them; the cores stay pure).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        DhSecret(StaticSecret::from(bytes))
    }

    /// What goes in our topology entry.
    pub fn public(&self) -> [u8; 32] {
        PublicKey::from(&self.0).to_bytes()
    }
}

impl std::fmt::Debug for DhSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DhSecret(public {:02x?})", &self.public()[..4])
    }
}

/// Why a relayed packet's origin was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginError {
    /// A counter already seen from this origin, or too old.
    Replay,
    /// The tag is not the origin's: forged, altered, or from a key the
    /// origin no longer uses.
    Auth,
}

/// The origin keys between us and one other router: tags for what we send
/// it through relays, checks of what it sends us through relays.
pub struct OriginKeys {
    /// The other router's public key these keys were derived with.
    pub peer_public: [u8; 32],
    send: LessSafeKey,
    next: AtomicU64,
    recv: LessSafeKey,
    window: Mutex<ReplayWindow>,
}

fn direction_key(
    prk: &ring::hkdf::Prk,
    from: (PeerName, &[u8; 32]),
    to: (PeerName, &[u8; 32]),
) -> LessSafeKey {
    let (f, t) = (from.0.0.to_be_bytes(), to.0.0.to_be_bytes());
    aes_key(prk, &[b"weft origin: from, to", &f, from.1, &t, to.1])
}

/// Runs `f` over `pkt` with the fields relays change (the IPv4 TTL and
/// header checksum) zeroed, then puts them back. No copy of the packet.
fn masked<R>(pkt: &mut [u8], f: impl FnOnce(&[u8]) -> R) -> R {
    if pkt.len() < 20 {
        return f(pkt);
    }
    let saved = [pkt[8], pkt[10], pkt[11]];
    pkt[8] = 0;
    pkt[10] = 0;
    pkt[11] = 0;
    let r = f(pkt);
    pkt[8] = saved[0];
    pkt[10] = saved[1];
    pkt[11] = saved[2];
    r
}

impl OriginKeys {
    /// The keys between `me` and `peer`, or None when the peer's key gives
    /// no secret (a low-order point, such as the all-zero key of a router
    /// that publishes none).
    pub fn derive(
        me: PeerName,
        secret: &DhSecret,
        peer: PeerName,
        peer_public: [u8; 32],
    ) -> Option<Self> {
        let shared = secret.0.diffie_hellman(&PublicKey::from(peer_public));
        if !shared.was_contributory() {
            return None;
        }
        let prk = Salt::new(HKDF_SHA256, b"weft origin keys v1").extract(shared.as_bytes());
        let mine = secret.public();
        Some(OriginKeys {
            peer_public,
            send: direction_key(&prk, (me, &mine), (peer, &peer_public)),
            next: AtomicU64::new(0),
            recv: direction_key(&prk, (peer, &peer_public), (me, &mine)),
            window: Mutex::new(ReplayWindow::default()),
        })
    }

    /// Tags `inner` for the peer: the counter and the tag to put in the
    /// header, or None when the counters ran out.
    pub fn tag(&self, inner: &mut [u8]) -> Option<(u64, [u8; ORIGIN_TAG_LEN])> {
        let counter = self.next.fetch_add(1, Ordering::Relaxed);
        if counter >= ORIGIN_COUNTER_LIMIT {
            self.next.store(ORIGIN_COUNTER_LIMIT, Ordering::Relaxed);
            return None;
        }
        let tag = masked(inner, |p| {
            self.send
                .seal_in_place_separate_tag(nonce(counter), Aad::from(p), &mut [])
                .ok()
        })?;
        let mut out = [0u8; ORIGIN_TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Some((counter, out))
    }

    /// Checks that the peer tagged `inner` with `counter`, and that the
    /// counter is new; records it when so. The tag is checked first, so a
    /// forgery under a counter already seen counts as a forgery (`Auth`),
    /// and only a genuine packet seen before as a replay.
    pub fn verify(
        &self,
        counter: u64,
        tag: &[u8; ORIGIN_TAG_LEN],
        inner: &mut [u8],
    ) -> Result<(), OriginError> {
        let mut window = match self.window.lock() {
            Ok(w) => w,
            Err(p) => p.into_inner(),
        };
        let fresh = counter < ORIGIN_COUNTER_LIMIT && window.check(counter);
        let mut t = *tag;
        masked(inner, |p| {
            self.recv
                .open_in_place(nonce(counter), Aad::from(p), &mut t)
                .map(|_| ())
                .map_err(|_| OriginError::Auth)
        })?;
        if !fresh {
            return Err(OriginError::Replay);
        }
        window.update(counter);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(n: u8) -> (PeerName, DhSecret) {
        (PeerName(u64::from(n)), DhSecret::from_bytes([n; 32]))
    }

    fn keys(a: &(PeerName, DhSecret), b: &(PeerName, DhSecret)) -> OriginKeys {
        OriginKeys::derive(a.0, &a.1, b.0, b.1.public()).expect("contributory")
    }

    fn packet() -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0xab, 0xcd];
        p.extend_from_slice(&[10, 32, 0, 1, 10, 33, 0, 1]);
        p.extend_from_slice(b"payload!");
        p
    }

    #[test]
    fn the_receiver_accepts_its_origin_once_and_relays_may_change_the_ttl() {
        let (a, c) = (router(1), router(3));
        let (at_a, at_c) = (keys(&a, &c), keys(&c, &a));
        let mut p = packet();
        let (n, tag) = at_a.tag(&mut p).expect("tag");
        assert_eq!(p, packet(), "tagging leaves the packet as it was");
        // A relay decrements the TTL and fixes the checksum.
        p[8] -= 1;
        p[10] ^= 0x01;
        assert_eq!(at_c.verify(n, &tag, &mut p), Ok(()));
        assert_eq!(at_c.verify(n, &tag, &mut p), Err(OriginError::Replay));
        // A forgery under that used counter is a forgery, not a replay.
        let mut forged = tag;
        forged[0] ^= 1;
        assert_eq!(at_c.verify(n, &forged, &mut p), Err(OriginError::Auth));
        // The other direction has its own key.
        let (n, tag) = at_c.tag(&mut p).expect("tag");
        assert_eq!(at_a.verify(n, &tag, &mut p), Ok(()));
    }

    #[test]
    fn a_relay_cannot_tag_for_another_origin_or_alter_a_packet() {
        let (a, b, c) = (router(1), router(2), router(3));
        let at_c_from_a = keys(&c, &a);
        // B tags with what it holds (its own keys with C), naming A.
        let b_to_c = keys(&b, &c);
        let mut p = packet();
        let (n, tag) = b_to_c.tag(&mut p).expect("tag");
        assert_eq!(at_c_from_a.verify(n, &tag, &mut p), Err(OriginError::Auth));
        // A's genuine tag does not cover another payload or source.
        let a_to_c = keys(&a, &c);
        let (n, tag) = a_to_c.tag(&mut p).expect("tag");
        let mut altered = p.clone();
        altered[12] = 10;
        altered[15] = 9;
        assert_eq!(
            at_c_from_a.verify(n, &tag, &mut altered),
            Err(OriginError::Auth)
        );
        let mut altered = p.clone();
        *altered.last_mut().expect("payload") ^= 1;
        assert_eq!(
            at_c_from_a.verify(n, &tag, &mut altered),
            Err(OriginError::Auth)
        );
        // A failed packet does not burn the counter: the genuine one opens.
        assert_eq!(at_c_from_a.verify(n, &tag, &mut p), Ok(()));
        // Nor does a tag under another counter.
        let (n, tag) = a_to_c.tag(&mut p).expect("tag");
        assert_eq!(
            at_c_from_a.verify(n + 1, &tag, &mut p),
            Err(OriginError::Auth)
        );
    }

    #[test]
    fn a_restarted_origin_has_new_keys_and_the_zero_key_gives_none() {
        let (a, c) = (router(1), router(3));
        let at_c = keys(&c, &a);
        let restarted = (a.0, DhSecret::from_bytes([9; 32]));
        let mut p = packet();
        let (n, tag) = keys(&restarted, &c).tag(&mut p).expect("tag");
        assert_eq!(at_c.verify(n, &tag, &mut p), Err(OriginError::Auth));
        assert!(OriginKeys::derive(c.0, &c.1, a.0, [0; 32]).is_none());
    }

    #[test]
    fn counters_run_out_instead_of_repeating() {
        let (a, c) = (router(1), router(3));
        let k = keys(&a, &c);
        k.next.store(ORIGIN_COUNTER_LIMIT - 1, Ordering::Relaxed);
        let mut p = packet();
        assert!(k.tag(&mut p).is_some());
        assert!(k.tag(&mut p).is_none());
        assert!(k.tag(&mut p).is_none());
    }
}
