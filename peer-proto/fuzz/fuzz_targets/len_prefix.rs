#![no_main]
//! A stream of length-prefixed frames as a session reads it.
use libfuzzer_sys::fuzz_target;
use weft_peer_proto::codec::{decode_frame, read_len_prefix};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while rest.len() >= 4 {
        let Ok(len) = read_len_prefix([rest[0], rest[1], rest[2], rest[3]]) else {
            return;
        };
        rest = &rest[4..];
        if rest.len() < len {
            return;
        }
        let _ = decode_frame(&rest[..len]);
        rest = &rest[len..];
    }
});
