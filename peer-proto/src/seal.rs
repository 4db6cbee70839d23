//! Per-session data keys, the sealer and opener of data packets, and the
//! replay window.
//!
//! Both ends of a peer session export the same 32-byte secret from its TLS
//! 1.3 exporter (RFC 8446 §7.5) and derive from it, with HKDF-SHA256, one
//! AES-256-GCM key per direction and per *epoch*. The epoch is the top bits
//! of the packet counter, so a key seals at most 2^24 packets (the record
//! limit RFC 8446 §5.5 gives for AES-GCM) and the next key follows without a
//! message. Nonces are the counter itself: unique per key by construction.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};
use ring::hkdf::{HKDF_SHA256, KeyType, Salt};

/// Packets sealed under one key.
pub const EPOCH_BITS: u32 = 24;
/// Counters stop here; the session must be re-established (it never is in practice).
pub const COUNTER_LIMIT: u64 = 1 << 60;
/// Packets behind the newest one that can still arrive (reordering tolerance).
pub const WINDOW: u64 = 2048;

/// Which end of the QUIC session a router was: the keys differ per direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Dialer,
    Acceptor,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Dialer => b"weft data: sent by the dialer",
            Role::Acceptor => b"weft data: sent by the acceptor",
        }
    }
    pub fn other(self) -> Role {
        match self {
            Role::Dialer => Role::Acceptor,
            Role::Acceptor => Role::Dialer,
        }
    }
}

/// The TLS exporter label both ends use.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-weft-data-v1";

struct Len(usize);
impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// The key schedule of one direction of one session.
pub struct DirectionKeys {
    prk: ring::hkdf::Prk,
    label: &'static [u8],
}

impl DirectionKeys {
    pub fn new(secret: &[u8; 32], sender: Role) -> Self {
        DirectionKeys {
            prk: Salt::new(HKDF_SHA256, b"weft data keys v1").extract(secret),
            label: sender.label(),
        }
    }

    pub fn key(&self, epoch: u64) -> LessSafeKey {
        let e = epoch.to_be_bytes();
        aes_key(&self.prk, &[self.label, &e[..]])
    }
}

/// The AES-256-GCM key HKDF-expanded from `prk` with `info`.
pub(crate) fn aes_key(prk: &ring::hkdf::Prk, info: &[&[u8]]) -> LessSafeKey {
    let mut k = [0u8; 32];
    // Both calls only fail for output lengths over 255 * 32 bytes.
    if let Ok(okm) = prk.expand(info, Len(32)) {
        let _ = okm.fill(&mut k);
    }
    match UnboundKey::new(&AES_256_GCM, &k) {
        Ok(u) => LessSafeKey::new(u),
        Err(_) => unreachable!("32 bytes is the AES-256 key length"),
    }
}

/// The AEAD nonce of `counter`.
pub(crate) fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// The sending half: a counter and the key of its epoch.
pub struct Sealer {
    keys: DirectionKeys,
    epoch: u64,
    key: LessSafeKey,
    next: u64,
}

impl Sealer {
    pub fn new(keys: DirectionKeys) -> Self {
        let key = keys.key(0);
        Sealer {
            keys,
            epoch: 0,
            key,
            next: 0,
        }
    }

    /// Takes the next counter, moving to the next key at an epoch boundary.
    pub fn take(&mut self) -> Option<u64> {
        let c = self.next;
        if c >= COUNTER_LIMIT {
            return None;
        }
        self.next += 1;
        let epoch = c >> EPOCH_BITS;
        if epoch != self.epoch {
            self.epoch = epoch;
            self.key = self.keys.key(epoch);
        }
        Some(c)
    }

    /// The counter [`Self::take`] gives next.
    pub fn peek(&self) -> u64 {
        self.next
    }

    /// Moves the counter forward to `counter` (never back, so no nonce is
    /// used twice): as if the packets in between were sent and lost.
    pub fn skip_to(&mut self, counter: u64) {
        self.next = self.next.max(counter.min(COUNTER_LIMIT));
    }

    /// Seals with a counter from [`Self::take`]; `aad` is the packet header.
    pub fn seal_with(&self, counter: u64, aad: &[u8], in_out: &mut [u8]) -> Option<Tag> {
        self.key
            .seal_in_place_separate_tag(nonce(counter), Aad::from(aad), in_out)
            .ok()
    }
}

/// Why a packet did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// Counter already seen or too far behind the window.
    Replay,
    /// Authentication failed (wrong key, tampering, or garbage).
    Auth,
}

/// Epochs a sender may be ahead of the receiver's next one and still be
/// followed: a direction blackholed for up to 2^16 epochs (2^40 packets,
/// days at line rate) recovers with its first packet that gets through.
pub const MAX_EPOCH_SKIP: u64 = 1 << 16;

/// The receiving half: keys of the previous, current and next epoch (all
/// derived ahead of time, so an ordinary forged packet never costs a
/// derivation), one trial key for a sender that skipped epochs, and the
/// window.
pub struct Opener {
    keys: DirectionKeys,
    previous: Option<(u64, LessSafeKey)>,
    current: (u64, LessSafeKey),
    next: (u64, LessSafeKey),
    /// The key of the one far epoch last tried: a flood of forged packets
    /// naming one far epoch costs one derivation, not one per packet.
    trial: Option<(u64, LessSafeKey)>,
    window: ReplayWindow,
}

impl Opener {
    pub fn new(keys: DirectionKeys) -> Self {
        let current = (0, keys.key(0));
        let next = (1, keys.key(1));
        Opener {
            keys,
            previous: None,
            current,
            next,
            trial: None,
            window: ReplayWindow::default(),
        }
    }

    /// Checks the counter, authenticates and decrypts `in_out` (ciphertext
    /// then tag) in place; returns the plaintext length. The window and the
    /// epoch only move for packets that authenticate.
    pub fn open(
        &mut self,
        counter: u64,
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<usize, OpenError> {
        if counter >= COUNTER_LIMIT || !self.window.check(counter) {
            return Err(OpenError::Replay);
        }
        let epoch = counter >> EPOCH_BITS;
        let skipped = epoch > self.next.0;
        let key = if epoch == self.current.0 {
            &self.current.1
        } else if epoch == self.next.0 {
            &self.next.1
        } else if skipped {
            // The sender is epochs ahead: its packets in between were lost
            // (a blackholed direction). Follow it, within a bound.
            if epoch - self.next.0 > MAX_EPOCH_SKIP {
                return Err(OpenError::Replay);
            }
            if self.trial.as_ref().is_none_or(|(e, _)| *e != epoch) {
                self.trial = Some((epoch, self.keys.key(epoch)));
            }
            match &self.trial {
                Some((_, k)) => k,
                None => return Err(OpenError::Replay),
            }
        } else {
            match &self.previous {
                Some((e, k)) if *e == epoch => k,
                _ => return Err(OpenError::Replay),
            }
        };
        let n = key
            .open_in_place(nonce(counter), Aad::from(aad), in_out)
            .map_err(|_| OpenError::Auth)?
            .len();
        self.window.update(counter);
        if skipped {
            // Jump: the skipped epoch becomes the current one.
            if let Some(trial) = self.trial.take() {
                let following = (epoch + 1, self.keys.key(epoch + 1));
                let old_next = std::mem::replace(&mut self.next, following);
                self.current = trial;
                self.previous = Some(old_next).filter(|(e, _)| *e + 1 == epoch);
            }
        } else if epoch == self.next.0 {
            // The sender moved on: shift the keys by one epoch.
            let following = (epoch + 1, self.keys.key(epoch + 1));
            let now_current = std::mem::replace(&mut self.next, following);
            self.previous = Some(std::mem::replace(&mut self.current, now_current));
        }
        Ok(n)
    }
}

/// A sliding window of the last [`WINDOW`] counters (RFC 6479 style bitmap).
pub struct ReplayWindow {
    /// Highest counter accepted, plus one (0: none yet).
    top: u64,
    bits: [u64; (WINDOW / 64) as usize],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            top: 0,
            bits: [0; (WINDOW / 64) as usize],
        }
    }
}

impl ReplayWindow {
    const WORDS: u64 = WINDOW / 64;

    /// Whether `c` is new and inside the window (does not record it).
    pub fn check(&self, c: u64) -> bool {
        if c >= self.top {
            return true;
        }
        if self.top - c > WINDOW - 64 {
            return false;
        }
        let (w, b) = Self::pos(c);
        self.bits[w] & (1 << b) == 0
    }

    /// Records `c`, which [`Self::check`] accepted.
    pub fn update(&mut self, c: u64) {
        if c >= self.top {
            // Clear the words between the newest counter's word and c's; a
            // fresh window is already clear.
            if self.top > 0 {
                let old_word = (self.top - 1) / 64;
                let clear = (c / 64 - old_word).min(Self::WORDS);
                for i in 1..=clear {
                    self.bits[((old_word + i) % Self::WORDS) as usize] = 0;
                }
            }
            self.top = c + 1;
        }
        let (w, b) = Self::pos(c);
        self.bits[w] |= 1 << b;
    }

    fn pos(c: u64) -> (usize, u64) {
        (((c / 64) % Self::WORDS) as usize, c % 64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Sealer, Opener) {
        let secret = [7u8; 32];
        (
            Sealer::new(DirectionKeys::new(&secret, Role::Dialer)),
            Opener::new(DirectionKeys::new(&secret, Role::Dialer)),
        )
    }

    fn seal(s: &mut Sealer, msg: &[u8]) -> (u64, Vec<u8>) {
        let c = s.take().expect("counter");
        let mut buf = msg.to_vec();
        let tag = s.seal_with(c, b"hdr", &mut buf).expect("seal");
        buf.extend_from_slice(tag.as_ref());
        (c, buf)
    }

    #[test]
    fn roundtrip_and_replay() {
        let (mut s, mut o) = pair();
        let (c, mut p) = seal(&mut s, b"hello pod");
        let mut again = p.clone();
        let n = o.open(c, b"hdr", &mut p).expect("opens");
        assert_eq!(&p[..n], b"hello pod");
        assert_eq!(o.open(c, b"hdr", &mut again), Err(OpenError::Replay));
    }

    #[test]
    fn tampering_and_wrong_direction_fail() {
        let (mut s, mut o) = pair();
        let (c, p) = seal(&mut s, b"payload");
        let mut bad = p.clone();
        bad[0] ^= 1;
        assert_eq!(o.open(c, b"hdr", &mut bad), Err(OpenError::Auth));
        let mut bad_aad = p.clone();
        assert_eq!(o.open(c, b"HDR", &mut bad_aad), Err(OpenError::Auth));
        // A failed packet does not burn its counter.
        let mut good = p.clone();
        assert!(o.open(c, b"hdr", &mut good).is_ok());
        let mut other = Opener::new(DirectionKeys::new(&[7u8; 32], Role::Acceptor));
        let (c2, mut p2) = seal(&mut s, b"x");
        assert_eq!(other.open(c2, b"hdr", &mut p2), Err(OpenError::Auth));
    }

    #[test]
    fn epochs_roll_over() {
        let (mut s, mut o) = pair();
        s.next = (1 << EPOCH_BITS) - 2;
        for _ in 0..4 {
            let (c, mut p) = seal(&mut s, b"across the boundary");
            assert!(o.open(c, b"hdr", &mut p).is_ok(), "counter {c}");
        }
        // A late packet of the previous epoch still opens.
        let mut late = Sealer::new(DirectionKeys::new(&[7u8; 32], Role::Dialer));
        late.next = (1 << EPOCH_BITS) - 5;
        let (c, mut p) = seal(&mut late, b"late");
        assert!(o.open(c, b"hdr", &mut p).is_ok());
    }

    #[test]
    fn a_direction_blackholed_across_epochs_recovers() {
        let (_, mut o) = pair();
        let mut far = Sealer::new(DirectionKeys::new(&[7u8; 32], Role::Dialer));
        far.next = 5 << EPOCH_BITS;
        let (c, mut p) = seal(&mut far, b"after the outage");
        let mut again = p.clone();
        assert!(o.open(c, b"hdr", &mut p).is_ok(), "the skipped epoch opens");
        assert_eq!(o.open(c, b"hdr", &mut again), Err(OpenError::Replay));
        // Its successors, the next epoch, and late packets of it still open.
        for _ in 0..3 {
            let (c, mut p) = seal(&mut far, b"on");
            assert!(o.open(c, b"hdr", &mut p).is_ok(), "counter {c}");
        }
        far.next = (6 << EPOCH_BITS) + 1;
        let (c, mut p) = seal(&mut far, b"next epoch");
        assert!(o.open(c, b"hdr", &mut p).is_ok());
        // A forged packet of a far epoch leaves the keys as they were.
        let (_, mut o) = pair();
        let mut forged = vec![0u8; 40];
        assert_eq!(
            o.open(3 << EPOCH_BITS, b"hdr", &mut forged),
            Err(OpenError::Auth)
        );
        let mut s0 = Sealer::new(DirectionKeys::new(&[7u8; 32], Role::Dialer));
        let (c, mut p) = seal(&mut s0, b"still epoch 0");
        assert!(o.open(c, b"hdr", &mut p).is_ok());
    }

    #[test]
    fn epochs_beyond_the_skip_bound_are_refused_without_work() {
        let (_, mut o) = pair();
        let mut far = Sealer::new(DirectionKeys::new(&[7u8; 32], Role::Dialer));
        far.next = (MAX_EPOCH_SKIP + 2) << EPOCH_BITS;
        let (c, mut p) = seal(&mut far, b"from the far future");
        assert_eq!(o.open(c, b"hdr", &mut p), Err(OpenError::Replay));
        assert!(o.trial.is_none(), "no key was derived for it");
    }

    #[test]
    fn window_accepts_reordering_and_rejects_old() {
        let mut w = ReplayWindow::default();
        for c in [0u64, 2, 1, 5, 3, 4] {
            assert!(w.check(c), "{c}");
            w.update(c);
        }
        for c in 0..=5 {
            assert!(!w.check(c), "{c} replayed");
        }
        w.update(10_000);
        assert!(!w.check(10_000));
        assert!(w.check(9_999));
        assert!(!w.check(10_000 - WINDOW));
        assert!(!w.check(6), "far behind the window");
        // A jump clears stale bits: counters just behind the new top are free.
        let mut w = ReplayWindow::default();
        for c in 0..3000 {
            w.update(c);
        }
        w.update(3000 + WINDOW);
        assert!(w.check(3000 + WINDOW - 10));
    }

    #[test]
    fn window_matches_a_set_model() {
        // Seeded pseudo-random counters near the top: the window must agree
        // with an exact set for everything inside it.
        let mut seen = std::collections::HashSet::new();
        let mut w = ReplayWindow::default();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut top = 0u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let c = (top + (x % 300)).saturating_sub(200);
            let fresh = !seen.contains(&c);
            let inside = c + (WINDOW - 64) >= top;
            let ok = w.check(c);
            if inside {
                assert_eq!(ok, fresh, "counter {c} top {top}");
            } else {
                assert!(!ok, "counter {c} behind the window accepted");
            }
            if ok {
                w.update(c);
                seen.insert(c);
                top = top.max(c + 1);
            }
        }
    }
}
