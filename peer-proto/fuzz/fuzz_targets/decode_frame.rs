#![no_main]
//! Any bytes a peer sends: decoding never panics, and whatever decodes
//! re-encodes to a frame that decodes to the same value.
use libfuzzer_sys::fuzz_target;
use weft_peer_proto::codec::{decode_frame, encode_frame};

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode_frame(data) {
        let again = encode_frame(&frame).expect("a decoded frame re-encodes");
        assert_eq!(decode_frame(&again).expect("re-decodes"), frame);
    }
});
