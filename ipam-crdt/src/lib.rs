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
//! Still to come (see the IPAM issue): the per-router allocator state
//! machine, bootstrap (consensus / seed / observer), donation and
//! persistence.
#![forbid(unsafe_code)]

pub mod range;
pub mod ring;
pub mod space;

pub use range::AddrRange;
pub use ring::{Entry, MergeOutcome, Ring, RingError};
pub use space::FreeSet;
pub use weft_peer_proto::PeerName;
