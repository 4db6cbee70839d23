//! JSON shapes of the local API, shared by meshd, meshctl and tests.

use serde::{Deserialize, Serialize};

/// `GET /status`: everything `meshctl status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub name: String,
    pub nickname: String,
    pub uid: u64,
    /// How sessions are authenticated: `password`, `ca` or `none`.
    pub encryption: String,
    pub protocol: String,
    pub listen: String,
    pub conn_limit: usize,
    pub discovery: bool,
    pub ready: bool,
    pub mesh: MeshStatus,
    /// None when meshd runs without a data plane (`--no-dataplane`).
    #[serde(default)]
    pub dataplane: Option<DataPlaneStatus>,
}

/// The data plane: devices, MTU and per-peer traffic.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DataPlaneStatus {
    pub tun: String,
    pub bridge: String,
    /// UDP port of the encrypted data path.
    pub port: u16,
    /// Overlay MTU (TUN, bridge and pods).
    pub mtu: u16,
    /// The host's overlay address (bridge gateway), once IPAM gave one.
    pub gateway: Option<String>,
    /// TUN offload (TSO/GRO super-packets) in use.
    pub offload: bool,
    /// UDP segments per GSO send (1: no GSO).
    pub gso_segments: usize,
    pub links: Vec<LinkStatus>,
    /// Drops not tied to one peer, by reason.
    pub drops: std::collections::BTreeMap<String, u64>,
}

/// One peer's data link.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LinkStatus {
    pub peer: String,
    pub nickname: String,
    /// The peer's data socket.
    pub remote: String,
    /// e.g. `udp/aes-256-gcm`.
    pub transport: String,
    pub encrypted: bool,
    /// Largest inner packet on this link.
    pub mtu: u16,
    /// A packet from the peer authenticated recently.
    pub up: bool,
    /// Seconds since the last authenticated packet, if any.
    pub last_rx_secs: Option<f64>,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub drops: std::collections::BTreeMap<String, u64>,
}

/// The mesh core's part of the status.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MeshStatus {
    /// Every known peer, ourselves included.
    pub peers: Vec<PeerStatus>,
    /// Established sessions and dial attempts.
    pub connections: Vec<ConnectionStatus>,
    /// Addresses given by the operator.
    pub targets: Vec<TargetStatus>,
    pub routes: Vec<RouteStatus>,
    /// Topology entries (including ours) and their hash, to compare peers.
    pub topology_hash: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub nickname: String,
    pub uid: u64,
    pub version: u64,
    pub is_self: bool,
    pub reachable: bool,
    /// Hops from us along unicast routes.
    pub hops: Option<u32>,
    /// Peers this one reports an established session with.
    pub connections: Vec<PeerRef>,
    pub addrs: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerRef {
    pub name: String,
    pub nickname: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionStatus {
    pub addr: String,
    /// `outbound` or `inbound`.
    pub direction: String,
    /// `established`, `connecting` or `retrying`.
    pub state: String,
    pub peer: Option<String>,
    pub nickname: Option<String>,
    /// Seconds in this state.
    pub age_secs: u64,
    /// For `retrying`: seconds until the next attempt.
    pub retry_in_secs: Option<u64>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetStatus {
    pub addr: String,
    pub state: String,
    pub peer: Option<String>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteStatus {
    pub dst: String,
    pub dst_nickname: String,
    pub via: String,
    pub via_nickname: String,
    pub hops: u32,
}

/// `POST /connect` and `POST /forget`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetRequest {
    pub addrs: Vec<String>,
}

/// Error body of every non-2xx answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// `POST /ip/{id}` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IpReply {
    pub id: String,
    pub ip: String,
    /// `ip/prefix` of the whole pod range.
    pub cidr: String,
    /// How a pod with this address is wired (None without a data plane).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<PodNetwork>,
}

/// What a pod needs from its node: the bridge to attach to, the MTU, and
/// the default gateway (the host's overlay address on the bridge).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetwork {
    pub bridge: String,
    pub mtu: u16,
    /// None until IPAM has given the host its overlay address.
    pub gateway: Option<String>,
    /// Where meshd takes releases the plugin had to leave (its
    /// `--cni-state-dir`); the plugin's `stateDir` must be the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_state_dir: Option<String>,
}

/// `GET /network`: whether meshd can take pods now (the CNI STATUS verb).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkStatus {
    /// IPAM is ready and the data plane has its gateway.
    pub ready: bool,
    /// Why not, when not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The pod range, e.g. `10.32.0.0/12`.
    pub range: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<PodNetwork>,
}

/// IPAM keys the CNI plugin allocates under: `cni:<network>:<container id>`
/// (and `/<ifname>` appended by the API).
pub const CNI_KEY_PREFIX: &str = "cni:";

/// One file in `<cni-state-dir>/release/`: a release the plugin could not
/// make because meshd was down, for meshd to make when it is back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingRelease {
    pub key: String,
}

/// `GET /ipam`: what `meshctl status ipam` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IpamStatus {
    pub range: String,
    pub ready: bool,
    /// What allocation waits for, when not ready.
    pub waiting: String,
    /// Seconds waiting (or ready) since.
    pub waiting_secs: u64,
    pub init: String,
    pub cluster: Option<String>,
    /// A ring of another cluster that was refused.
    pub refused_cluster: Option<String>,
    pub peers: Vec<IpamPeer>,
    pub removed: Vec<String>,
    /// Our own allocations, free addresses and waiting requests.
    pub allocated: usize,
    pub free: u64,
    pub pending: usize,
    /// Allocations that fell outside our ranges (should stay empty).
    pub lost: Vec<String>,
    /// Set when a write of the IPAM state failed: allocation has stopped.
    pub stopped: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IpamPeer {
    pub name: String,
    pub nickname: String,
    pub owned: u64,
    pub share: f64,
    pub reachable: bool,
    pub is_self: bool,
    /// Ours exactly; others' as they last gossiped it.
    pub free: Option<u64>,
    pub allocated: Option<usize>,
}

/// `POST /rmpeer`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RmPeerRequest {
    pub peer: String,
}
