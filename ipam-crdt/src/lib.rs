//! The address-space CRDT: a ring of owned ranges split between routers.
//!
//! Pure: no I/O, no clock, no randomness of its own. This crate is the seam
//! the IPAM issue fills in; for now it only names the peer type it will use.
#![forbid(unsafe_code)]

pub use weft_peer_proto::PeerName;
