//! The Weft router: `meshd` (the daemon) and `meshctl` (its CLI).
//!
//! - [`mesh`]: the gossip/topology core, a pure state machine.
//! - [`identity`], [`tls`]: who a router is and how sessions are admitted.
//! - [`daemon`]: the tokio shell that drives the core over QUIC sessions.
//! - [`dataplane`]: the TUN, the encrypted UDP data path and host wiring.
//! - [`api`], [`metrics`]: the local HTTP API and Prometheus endpoint.
//! - [`kube`]: peers, bootstrap and reclaim through the Kubernetes API.

pub mod api;
pub mod attach;
pub mod cni_install;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod identity;
pub mod ipam;
pub mod kube;
pub mod mesh;
pub mod metrics;
pub mod session;
pub mod store;
pub mod tls;
