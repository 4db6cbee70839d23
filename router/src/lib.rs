//! The Weft router: `meshd` (the daemon) and `meshctl` (its CLI).
//!
//! The pure cores live in their own crates: `weft-mesh` (gossip and
//! topology) and `weft-ipam-crdt` (the address space and its channel); the
//! local API's types in `weft-api`. This crate is the shell around them:
//!
//! - [`identity`], [`tls`], [`session`]: who a router is, how sessions are
//!   admitted, and one task per QUIC session; [`incoming`]: which
//!   connection attempts get handshake state (Retry, half-open caps).
//! - [`daemon`]: the loop that drives the cores over those sessions and
//!   saves before it sends; [`handle`]: how others ask it things.
//! - [`ipam`]: IPAM state on disk, and how the API shows it.
//! - [`dataplane`]: the TUN, the encrypted UDP data path and host wiring.
//! - [`api`], [`metrics`]: the local HTTP API and Prometheus endpoint.
//! - [`kube`]: peers, bootstrap and reclaim through the Kubernetes API.

pub mod api;
pub mod attach;
pub mod cni_install;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod handle;
pub mod identity;
pub mod incoming;
pub mod ipam;
pub mod kube;
pub mod metrics;
pub mod secret;
pub mod session;
pub mod store;
pub mod tls;
