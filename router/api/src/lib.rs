//! meshd's local API, typed: what `GET /status`, `/ipam`, `/network` and
//! the `/ip` calls answer ([`model`]), and a [`client`] for the root-only
//! unix socket it is served on. meshd serves these types, and meshctl, the
//! CNI plugin and the tests read them, so that no one compares sentences or
//! parses an address back out of a string.
//!
//! The JSON is what `curl --unix-socket` shows: addresses and peer names as
//! strings, states as lower-case words.
#![forbid(unsafe_code)]

pub mod client;
pub mod model;

pub use client::{ClientError, request};
pub use model::*;
pub use weft_peer_proto::PeerName;
