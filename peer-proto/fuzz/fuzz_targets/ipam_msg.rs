#![no_main]
//! Any `ipam` channel payload: decoding, checking the ring and merging it
//! into a real one never panics, and a ring that passed the checks keeps the
//! merged ring valid.
use libfuzzer_sys::fuzz_target;
use weft_ipam_crdt::wire::knowledge_from_wire;
use weft_ipam_crdt::{AddrRange, Ring};
use weft_peer_proto::PeerName;
use weft_peer_proto::codec::decode_ipam;
use weft_peer_proto::ipam::IpamMsg;

fuzz_target!(|data: &[u8]| {
    let range = AddrRange::new(1000, 2024);
    if let Ok(IpamMsg::State {
        ring, consensus, ..
    }) = decode_ipam(data)
    {
        let _ = knowledge_from_wire(&consensus);
        if let Ok(theirs) = Ring::from_wire(&ring, range) {
            let mut ours = Ring::seeded(
                range,
                &[PeerName(1), PeerName(2)],
                theirs.cluster().unwrap_or(7),
            );
            if ours.merge(&theirs).is_ok() {
                ours.check().expect("a checked ring keeps the merge valid");
            }
        }
    }
});
