//! The cross-crate test harness: a deterministic simulation of many routers
//! ([`sim`]), real-kernel scenarios with network namespaces ([`netns`]), and
//! a CNI runtime driver ([`cni`]) and a real Kubernetes API server
//! ([`kube`]).

pub mod bench;
pub mod byzantine;
pub mod cni;
pub mod ipam;
pub mod kube;
pub mod netns;
pub mod podman;
pub mod sim;
