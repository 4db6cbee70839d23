//! The cross-crate test harness: a deterministic simulation of many routers
//! ([`sim`]) and real-kernel scenarios with network namespaces ([`netns`]).

pub mod bench;
pub mod netns;
pub mod sim;
