//! Hard limits on what a peer may send. Exceeding any of them is a protocol
//! error for the session that sent it, never an allocation.

/// Largest encoded frame accepted on a control stream (bytes).
pub const MAX_FRAME_LEN: usize = 4 << 20;
/// Longest nickname (bytes of UTF-8).
pub const MAX_NICKNAME_LEN: usize = 64;
/// Longest gossip channel name (bytes).
pub const MAX_CHANNEL_NAME_LEN: usize = 32;
/// Most peer entries in one topology update; larger updates are split.
pub const MAX_ENTRIES_PER_UPDATE: usize = 256;
/// Most connections one peer entry may list.
pub const MAX_CONNS_PER_PEER: usize = 2048;
/// Most entries in one topology digest (one per known peer).
pub const MAX_DIGEST_ENTRIES: usize = 100_000;
/// Largest gossip payload of a named channel (bytes).
pub const MAX_GOSSIP_PAYLOAD: usize = 2 << 20;
/// Longest free-text message in a goodbye (bytes).
pub const MAX_GOODBYE_MSG_LEN: usize = 256;
/// Most addresses one peer entry may advertise.
pub const MAX_ADDRS_PER_PEER: usize = 8;
/// Highest version a topology entry may carry. Far beyond what a router
/// reaches (one version a second for 10^11 years), and far enough below
/// `u64::MAX` that a router can always outbid any accepted entry about
/// itself.
pub const MAX_ENTRY_VERSION: u64 = 1 << 62;
/// Most relays a channel message makes (its hop limit when sent).
pub const MAX_HOPS: u8 = 32;
