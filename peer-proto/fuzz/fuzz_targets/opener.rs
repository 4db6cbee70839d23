#![no_main]
//! The data-plane opener as a state machine: a real sealer's packets,
//! delivered late, twice, tampered with, or after the sender skipped
//! epochs (a blackholed direction), mixed with forged ones. Checked after
//! every step:
//! - a packet opens at most once, and only as it was sealed;
//! - a tampered or forged packet never opens;
//! - a genuine packet newer than any opened so far always opens (so a
//!   direction that skipped epochs recovers).
use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use weft_peer_proto::seal::{
    DirectionKeys, EPOCH_BITS, MAX_EPOCH_SKIP, OpenError, Opener, Role, Sealer,
};

const HDR: &[u8] = b"header";

struct Sealed {
    counter: u64,
    plain: Vec<u8>,
    wire: Vec<u8>,
}

fuzz_target!(|data: &[u8]| {
    let secret = [9u8; 32];
    let mut sealer = Sealer::new(DirectionKeys::new(&secret, Role::Dialer));
    let mut opener = Opener::new(DirectionKeys::new(&secret, Role::Dialer));
    let mut held: Vec<Sealed> = Vec::new();
    let mut opened: HashSet<u64> = HashSet::new();
    let mut newest: Option<u64> = None;
    let mut bytes = data.iter().copied();
    while let Some(op) = bytes.next() {
        let arg = bytes.next().unwrap_or(0);
        match op % 5 {
            // Seal one packet and hold it (delivery comes later).
            0 | 1 => {
                let Some(counter) = sealer.take() else { return };
                let plain = vec![arg; usize::from(arg % 64)];
                let mut wire = plain.clone();
                let tag = sealer.seal_with(counter, HDR, &mut wire).expect("seal");
                wire.extend_from_slice(tag.as_ref());
                held.push(Sealed {
                    counter,
                    plain,
                    wire,
                });
            }
            // Deliver a held packet (it stays held: delivering it again is a replay).
            2 => {
                if held.is_empty() {
                    continue;
                }
                let p = &held[usize::from(arg) % held.len()];
                let mut buf = p.wire.clone();
                let fresh_newest = newest.is_none_or(|n| p.counter > n)
                    && (p.counter >> EPOCH_BITS)
                        <= (newest.unwrap_or(0) >> EPOCH_BITS) + MAX_EPOCH_SKIP;
                match opener.open(p.counter, HDR, &mut buf) {
                    Ok(n) => {
                        assert_eq!(&buf[..n], &p.plain[..], "opened as sealed");
                        assert!(
                            opened.insert(p.counter),
                            "counter {} opened twice",
                            p.counter
                        );
                        newest = newest.max(Some(p.counter));
                    }
                    Err(e) => assert!(
                        !fresh_newest,
                        "the newest genuine packet {} refused: {e:?}",
                        p.counter
                    ),
                }
            }
            // The sender's packets are lost for a while: skip counters.
            3 => sealer.skip_to(
                sealer
                    .peek()
                    .saturating_add(u64::from(arg) << (EPOCH_BITS - 4)),
            ),
            // A tampered copy of a held packet, or a forgery.
            _ => {
                let (counter, mut buf) = match held.get(usize::from(arg) % held.len().max(1)) {
                    Some(p) => {
                        let mut b = p.wire.clone();
                        let i = usize::from(arg) % b.len();
                        b[i] ^= 1 | arg;
                        (p.counter, b)
                    }
                    None => (u64::from(arg) << EPOCH_BITS, vec![arg; 40]),
                };
                assert!(
                    opener.open(counter, HDR, &mut buf).is_err(),
                    "a tampered or forged packet never opens"
                );
            }
        }
    }
});
