//! What the local API shows of the router (`/status`, `/ipam`,
//! `/network`), built from the cores' typed views, and the gauges and
//! counters refreshed from them.

use std::collections::HashMap;
use std::time::Instant;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use weft_api::{
    ConnectionState, ConnectionStatus, Direction, DuplicateStatus, IpamPeer, IpamStatus,
    MeshStatus, NetworkStatus, NotReady, PeerRef, PeerStatus, PodNetwork, RouteStatus, Status,
    TargetState, TargetStatus,
};
use weft_ipam_crdt::Waiting;
use weft_mesh::MeshSnapshot;
use weft_peer_proto::PeerName;

use super::Router;
use crate::ipam::fmt_addr;
use crate::metrics::StateLabel;

/// The mesh core's view, as the API shows it.
fn mesh_status(s: MeshSnapshot) -> MeshStatus {
    let state = |c: weft_mesh::ConnectionState| match c {
        weft_mesh::ConnectionState::Established => ConnectionState::Established,
        weft_mesh::ConnectionState::Connecting => ConnectionState::Connecting,
        weft_mesh::ConnectionState::Retrying => ConnectionState::Retrying,
    };
    let target = |t: weft_mesh::TargetState| match t {
        weft_mesh::TargetState::Retrying => TargetState::Retrying,
        weft_mesh::TargetState::Connecting => TargetState::Connecting,
        weft_mesh::TargetState::Connected => TargetState::Connected,
        weft_mesh::TargetState::Ourself => TargetState::Ourself,
    };
    MeshStatus {
        peers: s
            .peers
            .into_iter()
            .map(|p| PeerStatus {
                name: p.name,
                nickname: p.nickname,
                uid: p.uid,
                version: p.version,
                is_self: p.is_self,
                reachable: p.reachable,
                hops: p.hops,
                connections: p
                    .connections
                    .into_iter()
                    .map(|(name, nickname)| PeerRef { name, nickname })
                    .collect(),
                addrs: p.addrs,
            })
            .collect(),
        connections: s
            .connections
            .into_iter()
            .map(|c| ConnectionStatus {
                addr: c.addr,
                direction: if c.outbound {
                    Direction::Outbound
                } else {
                    Direction::Inbound
                },
                state: state(c.state),
                peer: c.peer,
                nickname: c.nickname,
                session: c.session,
                age_secs: c.age.as_secs(),
                retry_in_secs: c.retry_in.map(|d| d.as_secs()),
                last_error: c.last_error,
            })
            .collect(),
        targets: s
            .targets
            .into_iter()
            .map(|t| TargetStatus {
                addr: t.addr,
                state: target(t.state),
                peer: t.peer,
                last_error: t.last_error,
            })
            .collect(),
        routes: s
            .routes
            .into_iter()
            .map(|r| RouteStatus {
                dst: r.dst,
                dst_nickname: r.dst_nickname,
                via: r.via,
                via_nickname: r.via_nickname,
                hops: r.hops,
            })
            .collect(),
        topology_hash: format!("{:016x}", s.topology_hash),
        duplicates: s
            .duplicates
            .into_iter()
            .map(|d| DuplicateStatus {
                name: d.peer,
                nickname: d.nickname,
                uids: d.uids,
                own: d.own,
                returns: d.returns,
                since_secs: d.since.as_secs(),
                last_secs: d.last.as_secs(),
            })
            .collect(),
    }
}

impl Router {
    pub(super) fn status(&mut self, now: Instant) -> Status {
        let mut s = self.status_base.clone();
        s.mesh = mesh_status(self.mesh.snapshot(now));
        s.dataplane = self.dp.as_ref().map(|d| d.status());
        let ipam = self.ipam_status(now);
        self.export_metrics(&s, &ipam);
        s
    }

    fn export_metrics(&mut self, s: &Status, ip: &IpamStatus) {
        if let Some(dp) = &mut self.dp {
            dp.export_metrics(&self.metrics);
        }
        let m = &self.metrics;
        let gauge = |family: &Family<StateLabel, Gauge>, state: &str, n: i64| {
            family
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .set(n);
        };
        for state in ConnectionState::ALL {
            gauge(&m.connections, state.as_str(), s.mesh.count(state) as i64);
        }
        let reachable = s.mesh.peers.iter().filter(|p| p.reachable && !p.is_self);
        gauge(&m.peers, "reachable", reachable.count() as i64);
        let unreachable = s.mesh.peers.iter().filter(|p| !p.reachable);
        gauge(&m.peers, "unreachable", unreachable.count() as i64);
        gauge(&m.ipam_addresses, "allocated", ip.allocated as i64);
        gauge(&m.ipam_addresses, "free", ip.free as i64);
        gauge(&m.ipam_addresses, "owned", ip.owned() as i64);
        let stranded = ip.peers.iter().filter(|p| !p.reachable).map(|p| p.owned);
        m.ipam_unreachable.set(stranded.sum::<u64>() as i64);
        m.ipam_pending.set(ip.pending as i64);
        m.duplicate_identities.set(s.mesh.duplicates.len() as i64);
        m.export_mesh(&self.mesh.counters);
        m.export_refused(&self.mesh.channels().refused());
    }

    pub(super) fn ipam_status(&mut self, now: Instant) -> IpamStatus {
        let reachable: HashMap<PeerName, (bool, String)> = self
            .mesh
            .peers_reachability()
            .into_iter()
            .map(|(n, ok, nick)| (n, (ok, nick)))
            .collect();
        let pending = self.allocations.len();
        let ch = self.mesh.channels();
        let b = ch.ipam();
        let ring = b.alloc().ring();
        let range = ring.range();
        let me = b.alloc().me();
        let (waiting, secs) = ch.waiting(now);
        let peers = ring
            .ownership()
            .into_iter()
            .map(|(p, owned)| {
                let (ok, nick) = reachable.get(&p).cloned().unwrap_or((false, String::new()));
                IpamPeer {
                    name: p,
                    nickname: nick,
                    owned,
                    share: owned as f64 / range.len() as f64,
                    reachable: ok || p == me,
                    is_self: p == me,
                    free: if p == me {
                        Some(b.alloc().free_count())
                    } else {
                        ch.free_of(p)
                    },
                    allocated: (p == me).then(|| b.alloc().allocations().count()),
                }
            })
            .collect();
        IpamStatus {
            range: crate::ipam::cidr(range),
            ready: waiting == Waiting::Ready,
            waiting: if waiting == Waiting::Ready {
                String::new()
            } else {
                crate::ipam::waiting_reason(ch, now)
            },
            waiting_secs: secs,
            init: format!("{:?}", b.init()),
            cluster: ring.cluster().map(|c| format!("{c:016x}")),
            refused_cluster: b.refused.map(|(c, _)| format!("{c:016x}")),
            peers,
            removed: ring.removed().iter().copied().collect(),
            allocated: b.alloc().allocations().count(),
            free: b.alloc().free_count(),
            pending,
            lost: b
                .alloc()
                .lost()
                .iter()
                .map(|(k, a)| format!("{k}={}", fmt_addr(*a)))
                .collect(),
            stopped: ch.stopped().map(str::to_owned),
        }
    }

    /// Whether pods can be wired here now, and how.
    pub(super) fn network_status(&self, now: Instant) -> NetworkStatus {
        let network = self.dp.as_ref().map(|dp| PodNetwork {
            bridge: dp.bridge().to_owned(),
            mtu: dp.mtu(),
            gateway: dp.gateway(),
            cni_state_dir: self
                .cni_state_dir
                .as_ref()
                .map(|d| d.to_string_lossy().into_owned()),
        });
        let not_ready = match (&network, crate::ipam::not_ready(self.mesh.channels(), now)) {
            (_, Some(why)) => Some(why),
            (None, None) => Some(NotReady::NoDataPlane),
            (Some(n), None) if n.gateway.is_none() => Some(NotReady::NoGateway),
            _ => None,
        };
        NetworkStatus {
            ready: not_ready.is_none(),
            reason: not_ready.as_ref().map(ToString::to_string),
            not_ready,
            range: self.range,
            network,
        }
    }
}
