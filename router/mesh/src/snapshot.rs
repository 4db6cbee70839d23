//! A typed view of the core for status pages: peers, sessions and dials,
//! operator targets and routes. The shell turns it into whatever its API
//! speaks; the core knows nothing of JSON.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use weft_peer_proto::PeerName;

use crate::channel::Channels;
use crate::connector::DialState;
use crate::duplicates::DuplicateView;
use crate::mesh::Mesh;
use crate::outbox::SessionId;
use crate::topology::Topology;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshSnapshot {
    /// Every known peer, ourselves included, in name order.
    pub peers: Vec<PeerView>,
    /// Established sessions, then dials in progress or waiting.
    pub connections: Vec<ConnectionView>,
    /// Addresses an operator gave.
    pub targets: Vec<TargetView>,
    pub routes: Vec<RouteView>,
    /// Hash of the topology, to compare routers.
    pub topology_hash: u64,
    /// Names seen used by two routers at once (ours among them, maybe).
    pub duplicates: Vec<DuplicateView>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerView {
    pub name: PeerName,
    pub nickname: String,
    pub uid: u64,
    pub version: u64,
    pub is_self: bool,
    pub reachable: bool,
    /// Hops along unicast routes (0 for ourselves).
    pub hops: Option<u32>,
    /// The peers it reports sessions with, and their nicknames.
    pub connections: Vec<(PeerName, String)>,
    pub addrs: Vec<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConnectionState {
    Established,
    Connecting,
    Retrying,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionView {
    pub addr: SocketAddr,
    pub outbound: bool,
    pub state: ConnectionState,
    pub peer: Option<PeerName>,
    pub nickname: Option<String>,
    /// For `Established`: the session's id, new for every session.
    pub session: Option<SessionId>,
    /// Time in this state.
    pub age: Duration,
    /// For `Retrying`: time until the next attempt.
    pub retry_in: Option<Duration>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetState {
    Retrying,
    Connecting,
    Connected,
    /// The address is our own.
    Ourself,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetView {
    pub addr: SocketAddr,
    pub state: TargetState,
    pub peer: Option<PeerName>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteView {
    pub dst: PeerName,
    pub dst_nickname: String,
    pub via: PeerName,
    pub via_nickname: String,
    pub hops: u32,
}

fn nickname(t: &Topology, n: &PeerName) -> String {
    t.get(n).map(|e| e.nickname.clone()).unwrap_or_default()
}

impl<C: Channels> Mesh<C> {
    pub fn snapshot(&mut self, now: Instant) -> MeshSnapshot {
        self.routes();
        let topology = &self.topology;
        let routes = &self.routes;
        let me = self.cfg.name;
        let peers = topology
            .entries()
            .map(|e| PeerView {
                name: e.name,
                nickname: e.nickname.clone(),
                uid: e.uid,
                version: e.version,
                is_self: e.name == me,
                reachable: routes.is_reachable(e.name),
                hops: if e.name == me {
                    Some(0)
                } else {
                    routes.hops(e.name)
                },
                connections: e
                    .conns
                    .iter()
                    .map(|c| (*c, nickname(topology, c)))
                    .collect(),
                addrs: e.addrs.clone(),
            })
            .collect();
        let mut connections: Vec<ConnectionView> = self
            .sessions
            .iter()
            .map(|(id, c)| ConnectionView {
                addr: c.addr,
                outbound: c.outbound,
                state: ConnectionState::Established,
                peer: Some(c.peer),
                nickname: Some(c.nickname.clone()),
                session: Some(*id),
                age: now.saturating_duration_since(c.since),
                retry_in: None,
                last_error: None,
            })
            .collect();
        for (addr, t) in &self.connector.targets {
            let (state, age, retry_in) = match t.state {
                DialState::Connecting { since } => (
                    ConnectionState::Connecting,
                    now.saturating_duration_since(since),
                    None,
                ),
                DialState::Idle => (
                    ConnectionState::Retrying,
                    Duration::ZERO,
                    Some(t.next_try.saturating_duration_since(now)),
                ),
                DialState::Connected { .. } | DialState::Ourself => continue,
            };
            if t.peer.is_some_and(|p| self.by_peer.contains_key(&p)) {
                continue;
            }
            connections.push(ConnectionView {
                addr: *addr,
                outbound: true,
                state,
                peer: t.peer,
                nickname: t.peer.map(|p| nickname(topology, &p)),
                session: None,
                age,
                retry_in,
                last_error: t.last_error.clone(),
            });
        }
        connections.sort_by_key(|c| (c.state, c.addr));
        let targets = self
            .connector
            .targets
            .iter()
            .filter(|(_, t)| t.explicit)
            .map(|(addr, t)| TargetView {
                addr: *addr,
                state: match t.state {
                    DialState::Idle => TargetState::Retrying,
                    DialState::Connecting { .. } => TargetState::Connecting,
                    DialState::Connected { .. } => TargetState::Connected,
                    DialState::Ourself => TargetState::Ourself,
                },
                peer: t.peer,
                last_error: t.last_error.clone(),
            })
            .collect();
        let routes = routes
            .table()
            .into_iter()
            .map(|(dst, via, hops)| RouteView {
                dst,
                dst_nickname: nickname(topology, &dst),
                via,
                via_nickname: nickname(topology, &via),
                hops,
            })
            .collect();
        let duplicates = self
            .dups
            .active(now)
            .into_iter()
            .map(|mut d| {
                d.nickname = nickname(topology, &d.peer);
                d
            })
            .collect();
        MeshSnapshot {
            duplicates,
            peers,
            connections,
            targets,
            routes,
            topology_hash: topology.hash(),
        }
    }
}
