#![no_main]
//! Any datagram: the checked view either rejects it or every accessor works,
//! and the header re-emits to the same bytes.
use libfuzzer_sys::fuzz_target;
use weft_peer_proto::data::{DataPacket, DataRepr, TAG_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = DataPacket::new_checked(data) {
        let r = DataRepr::parse(&p);
        assert!(data.len() >= r.buffer_len() + TAG_LEN);
        let mut buf = vec![0u8; r.buffer_len()];
        r.emit(&mut buf).expect("header fits");
        assert_eq!(&buf[..], &data[..r.buffer_len()]);
    }
});
