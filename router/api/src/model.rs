//! The JSON shapes of the local API.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use weft_peer_proto::PeerName;

/// `GET /status`: everything `meshctl status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    #[serde(with = "text")]
    pub name: PeerName,
    pub nickname: String,
    pub uid: u64,
    /// How sessions are authenticated.
    pub encryption: Encryption,
    pub protocol: String,
    pub listen: SocketAddr,
    pub conn_limit: usize,
    pub discovery: bool,
    pub ready: bool,
    pub mesh: MeshStatus,
    /// None when meshd runs without a data plane (`--no-dataplane`).
    #[serde(default)]
    pub dataplane: Option<DataPlaneStatus>,
}

/// How sessions are admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encryption {
    /// Certificates from a CA derived from the mesh password.
    Password,
    /// Certificates from an operator's CA.
    Ca,
    /// Anyone may connect (`--no-encryption`, tests only).
    None,
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
    pub gateway: Option<Ipv4Addr>,
    /// TUN offload (TSO/GRO super-packets) in use.
    pub offload: bool,
    /// UDP segments per GSO send (1: no GSO).
    pub gso_segments: usize,
    pub links: Vec<LinkStatus>,
    /// Drops not tied to one peer, by reason.
    pub drops: BTreeMap<String, u64>,
}

/// One peer's data link.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkStatus {
    #[serde(with = "text")]
    pub peer: PeerName,
    pub nickname: String,
    /// The peer's data socket.
    pub remote: SocketAddr,
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
    pub drops: BTreeMap<String, u64>,
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
    /// Hash of the topology entries (ours included), to compare peers.
    pub topology_hash: String,
    /// Identities seen used by two routers at once (ours, maybe): a
    /// cloned data directory (docs/troubleshooting.md).
    #[serde(default)]
    pub duplicates: Vec<DuplicateStatus>,
}

/// Two routers seen running with one identity.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DuplicateStatus {
    #[serde(with = "text")]
    pub name: PeerName,
    pub nickname: String,
    /// The uids seen taking turns, the current one first.
    pub uids: Vec<u64>,
    /// It is this router's own identity.
    pub own: bool,
    /// Times a uid came back after another replaced it.
    pub returns: u64,
    /// Since it was first reported, and since the last return.
    pub since_secs: u64,
    pub last_secs: u64,
}

impl MeshStatus {
    /// Sessions in `state`.
    pub fn count(&self, state: ConnectionState) -> usize {
        self.connections.iter().filter(|c| c.state == state).count()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    #[serde(with = "text")]
    pub name: PeerName,
    pub nickname: String,
    pub uid: u64,
    pub version: u64,
    pub is_self: bool,
    pub reachable: bool,
    /// Hops from us along unicast routes.
    pub hops: Option<u32>,
    /// Peers this one reports an established session with.
    pub connections: Vec<PeerRef>,
    pub addrs: Vec<SocketAddr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerRef {
    #[serde(with = "text")]
    pub name: PeerName,
    pub nickname: String,
}

/// Who opened a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Outbound,
    Inbound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionState {
    Established,
    Connecting,
    /// Waiting for the next attempt.
    Retrying,
}

impl ConnectionState {
    pub const ALL: [ConnectionState; 3] = [
        ConnectionState::Established,
        ConnectionState::Connecting,
        ConnectionState::Retrying,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Established => "established",
            ConnectionState::Connecting => "connecting",
            ConnectionState::Retrying => "retrying",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionStatus {
    pub addr: SocketAddr,
    pub direction: Direction,
    pub state: ConnectionState,
    #[serde(with = "text_opt", default)]
    pub peer: Option<PeerName>,
    pub nickname: Option<String>,
    /// For `established`: the session's id on this router, new for every
    /// session (a reconnection shows as a new id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<u64>,
    /// Seconds in this state.
    pub age_secs: u64,
    /// For `retrying`: seconds until the next attempt.
    pub retry_in_secs: Option<u64>,
    pub last_error: Option<String>,
}

/// Where an operator-given address stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetState {
    Retrying,
    Connecting,
    Connected,
    /// The address is this router's own.
    Ourself,
}

impl TargetState {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Retrying => "retrying",
            TargetState::Connecting => "connecting",
            TargetState::Connected => "connected",
            TargetState::Ourself => "ourself",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetStatus {
    pub addr: SocketAddr,
    pub state: TargetState,
    #[serde(with = "text_opt", default)]
    pub peer: Option<PeerName>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteStatus {
    #[serde(with = "text")]
    pub dst: PeerName,
    pub dst_nickname: String,
    #[serde(with = "text")]
    pub via: PeerName,
    pub via_nickname: String,
    pub hops: u32,
}

/// `POST /connect` and `POST /forget`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetRequest {
    /// `host:port` or `host` (port 6783).
    pub addrs: Vec<String>,
}

/// Error body of every non-2xx answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// An address with its prefix length, shown as `10.32.0.5/12`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Not `A.B.C.D/N` with N at most 32.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IPv4 address with a prefix length (A.B.C.D/N)")]
pub struct CidrParseError(pub String);

impl FromStr for Cidr {
    type Err = CidrParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrParseError(s.chars().take(64).collect());
        let (a, p) = s.split_once('/').ok_or_else(err)?;
        let addr = a.parse().map_err(|_| err())?;
        let prefix = p.parse().ok().filter(|p| *p <= 32).ok_or_else(err)?;
        Ok(Cidr { addr, prefix })
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        text::deserialize(d)
    }
}

/// `POST /ip/{id}` and `GET /ip/{id}` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IpReply {
    pub id: String,
    pub ip: Ipv4Addr,
    /// The address with the prefix length of the whole pod range.
    pub cidr: Cidr,
    /// How a pod with this address is wired (None without a data plane).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<PodNetwork>,
}

/// `DELETE /ip/{id}` answer: what was released (an unknown id is no error).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Released {
    pub id: String,
    pub released: Option<Ipv4Addr>,
}

/// One entry of `GET /ip`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub id: String,
    pub ip: Ipv4Addr,
}

/// What a pod needs from its node: the bridge to attach to, the MTU, and
/// the default gateway (the host's overlay address on the bridge).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetwork {
    pub bridge: String,
    pub mtu: u16,
    /// None until IPAM has given the host its overlay address.
    pub gateway: Option<Ipv4Addr>,
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
    pub not_ready: Option<NotReady>,
    /// The same, for people (`curl`, logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The pod range, e.g. `10.32.0.0/12`.
    pub range: Cidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<PodNetwork>,
}

/// Why a router cannot take pods now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum NotReady {
    /// `consensus=N`: the range is not split yet.
    AwaitingConsensus {
        secs: u64,
        seen: usize,
        expected: usize,
        quorum: usize,
    },
    /// An observer or a non-seed waits for the seeds' ring.
    AwaitingRing { secs: u64 },
    /// rmpeer or a deleted Node removed this router from the ring.
    Removed,
    /// A write of the IPAM state failed: allocation stopped.
    Stopped { error: String },
    /// New addresses are held: another router runs with this router's
    /// identity, or its state is older than the removal horizon and no
    /// peer confirmed its ranges yet.
    Held { reason: String },
    /// meshd runs with `--no-dataplane`: IPAM may be ready, pods cannot be wired.
    NoDataPlane,
    /// The host has no overlay address (bridge gateway) yet.
    NoGateway,
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotReady::AwaitingConsensus {
                secs,
                seen,
                expected,
                quorum,
            } => write!(
                f,
                "awaiting consensus for {secs} s: {seen} of {expected} voters seen (quorum {quorum})"
            ),
            NotReady::AwaitingRing { secs } => write!(f, "awaiting the seeds' ring for {secs} s"),
            NotReady::Removed => f.write_str(
                "this router was removed from the ring (rmpeer or a deleted Node); \
                 reset it (stop meshd, remove its data directory) to rejoin as a new router",
            ),
            NotReady::Stopped { error } => {
                write!(f, "IPAM stopped after a failed write: {error}")
            }
            NotReady::Held { reason } => write!(f, "new addresses are held: {reason}"),
            NotReady::NoDataPlane => {
                f.write_str("meshd runs without a data plane (--no-dataplane)")
            }
            NotReady::NoGateway => f.write_str("the host has no overlay address yet"),
        }
    }
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
    pub range: Cidr,
    pub ready: bool,
    /// What allocation waits for, when not ready (for people).
    pub waiting: String,
    /// Seconds waiting (or ready) since.
    pub waiting_secs: u64,
    pub init: String,
    pub cluster: Option<String>,
    /// A ring of another cluster that was refused.
    pub refused_cluster: Option<String>,
    pub peers: Vec<IpamPeer>,
    #[serde(with = "text_vec")]
    pub removed: Vec<PeerName>,
    /// Our own allocations, free addresses and waiting requests.
    pub allocated: usize,
    pub free: u64,
    pub pending: usize,
    /// Allocations that fell outside our ranges (should stay empty).
    pub lost: Vec<String>,
    /// Set when a write of the IPAM state failed: allocation has stopped.
    pub stopped: Option<String>,
}

impl IpamStatus {
    /// Addresses this router owns.
    pub fn owned(&self) -> u64 {
        self.peers
            .iter()
            .filter(|p| p.is_self)
            .map(|p| p.owned)
            .sum()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IpamPeer {
    #[serde(with = "text")]
    pub name: PeerName,
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
    /// A peer name or nickname.
    pub peer: String,
}

/// `POST /rmpeer` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RmPeerReply {
    #[serde(with = "text")]
    pub removed: PeerName,
}

/// `POST /expose` answer: the host's overlay address.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExposeReply {
    pub address: Cidr,
}

/// Values written as their `Display` and read with `FromStr`.
mod text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

mod text_opt {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<Option<T>, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        Option::<String>::deserialize(d)?
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .transpose()
    }
}

mod text_vec {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for x in v {
            seq.serialize_element(&x.to_string())?;
        }
        seq.end()
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<Vec<T>, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        Vec::<String>::deserialize(d)?
            .into_iter()
            .map(|s| s.parse().map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_keeps_strings_for_people_and_types_for_code() {
        let c = ConnectionStatus {
            addr: "192.0.2.1:6783".parse().expect("addr"),
            direction: Direction::Outbound,
            state: ConnectionState::Retrying,
            peer: Some(PeerName(0x0102030405060708)),
            nickname: None,
            session: None,
            age_secs: 0,
            retry_in_secs: Some(3),
            last_error: None,
        };
        let v = serde_json::to_value(&c).expect("encode");
        assert_eq!(v["addr"], "192.0.2.1:6783");
        assert_eq!(v["direction"], "outbound");
        assert_eq!(v["state"], "retrying");
        assert_eq!(v["peer"], "01:02:03:04:05:06:07:08");
        let back: ConnectionStatus = serde_json::from_value(v).expect("decode");
        assert_eq!(back.peer, c.peer);
        let mut v = serde_json::to_value(&c).expect("encode");
        v["peer"] = serde_json::Value::Null;
        let back: ConnectionStatus = serde_json::from_value(v).expect("decode");
        assert_eq!(back.peer, None);
    }

    #[test]
    fn cidrs_parse_strictly() {
        let c: Cidr = "10.32.0.5/12".parse().expect("cidr");
        assert_eq!((c.addr, c.prefix), (Ipv4Addr::new(10, 32, 0, 5), 12));
        assert_eq!(serde_json::to_string(&c).expect("json"), "\"10.32.0.5/12\"");
        for bad in ["10.32.0.5", "10.32.0.5/33", "10.32.0/12", "x/1", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
            assert!(serde_json::from_str::<Cidr>(&format!("{bad:?}")).is_err());
        }
    }

    #[test]
    fn not_ready_reasons_are_tagged() {
        let n = NotReady::AwaitingRing { secs: 4 };
        let v = serde_json::to_value(&n).expect("encode");
        assert_eq!(v["kind"], "awaiting_ring");
        assert_eq!(serde_json::from_value::<NotReady>(v).expect("decode"), n);
        assert_eq!(n.to_string(), "awaiting the seeds' ring for 4 s");
    }
}
