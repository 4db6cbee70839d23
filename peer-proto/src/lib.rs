//! Every byte that crosses between Weft peers.
//!
//! - [`Frame`]: what travels on a peer session's control stream, length-prefixed
//!   ([`codec::write_len_prefix`]) and encoded by [`codec`] (bincode 2, behind one
//!   module so that it can be swapped).
//! - [`Hello`]: the first frame each side sends; carries the protocol version
//!   range, so that the rest can change without breaking old peers.
//! - [`topology`]: the entries the topology channel gossips.
//! - [`ipam`]: the messages of the `ipam` channel.
//! - [`sign`]: Ed25519-signed statements, checked against the signer's name.
//! - [`data`]: the header of encrypted data packets (used by the data plane),
//!   [`seal`]: their per-session keys, AEAD and replay window, and
//!   [`origin`]: the end-to-end keys that prove a relayed packet's origin.
//!
//! Contract: nothing decoded from a peer can panic or allocate without bound.
//! Every decode goes through [`codec::decode_frame`], which enforces
//! [`limits::MAX_FRAME_LEN`] and then [`Frame::validate`]s the semantic limits.
#![forbid(unsafe_code)]

pub mod codec;
pub mod data;
mod frame;
pub mod ipam;
pub mod limits;
mod name;
pub mod origin;
pub mod seal;
pub mod sign;
pub mod topology;

pub use codec::CodecError;
pub use frame::{
    CHANNEL_DOMAIN, ChannelName, DataOffer, Features, Frame, Goodbye, GoodbyeReason, GossipMsg,
    Hello, MIN_DATA_MTU, ValidationError, Verb, VersionRange,
};
pub use name::{PeerName, PeerNameParseError};

/// The oldest control-protocol version this build speaks.
pub const PROTOCOL_MIN: u16 = 2;
/// The newest control-protocol version this build speaks.
pub const PROTOCOL_MAX: u16 = 2;
/// ALPN identifier of Weft's QUIC sessions.
pub const ALPN: &[u8] = b"weft/1";
/// Default UDP port of the peer protocol (the same number Weave Net used).
pub const DEFAULT_PORT: u16 = 6783;
