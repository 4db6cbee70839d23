//! The address-space CRDT of Weft: the pod range split between routers with
//! no external datastore.
//!
//! Pure: no I/O, no clock, no randomness of its own.
//!
//! - [`range`]: IPv4 ranges as half-open `u32` intervals, CIDR parsing.
//! - [`space`]: a router's free addresses as coalesced intervals.
//! - [`ring`]: who owns which range; merge is a lattice join; only owners
//!   change their entries; separately seeded rings refuse to merge; removed
//!   peers' ranges go to exactly one heir.
//!
//! - [`allocator`]: one router's allocator: allocate / claim / release,
//!   donate half of its largest free interval, merge rings, inherit the
//!   ranges of removed peers, snapshot for persistence.
//!
//! - [`ledger`]: signed ownership on fixed blocks (ring-signing.md), built
//!   and simulated beside the ring, not yet used by the channel.
//! - [`block_alloc`]: one router's allocator on the ledger: whole-block
//!   donations and a settle time before allocating from gained blocks.
//! - [`removal`]: removal certificates, signed by the removed router or a
//!   majority of the other owners.
//! - [`counters`]: what was dropped from peers, by kind.
//!
//! - [`wire`]: checked conversions from and to the `ipam` channel's wire types.
//! - [`paxos`]: `consensus=N` bootstrap, single-decree Paxos over gossip.
//!
//! - [`bootstrap`]: one router's IPAM as a whole: the allocator plus
//!   `--ipalloc-init consensus=N | seed=... | observer`, with what it waits
//!   for and since when.
//!
//! - [`channel`]: the `ipam` gossip channel over the mesh core: requests,
//!   donations on request, and nothing sent before the driver saved it.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::disallowed_methods))]

pub mod allocator;
pub mod block_alloc;
pub mod bootstrap;
pub mod channel;
pub mod counters;
pub mod ledger;
pub mod paxos;
pub mod range;
pub mod removal;
pub mod ring;
pub mod space;
pub mod wire;

pub use allocator::{AllocError, Allocator, Snapshot};
pub use bootstrap::{Init, Ipam, Waiting};
pub use channel::{IpamChannel, IpamError, Persisted, Unready};
pub use counters::Refused;
pub use range::AddrRange;
pub use removal::Removal;
pub use ring::{Entry, MergeOutcome, Ring, RingError, Tomb};
pub use space::FreeSet;
pub use weft_peer_proto::PeerName;
