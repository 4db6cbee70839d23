//! The daemon loop's IPAM side: API requests against the `ipam` channel,
//! allocations that wait (bounded, with the reason shown) for bootstrap or
//! for space from a peer, and rmpeer.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{info, warn};
use weft_ipam_crdt::{AllocError, Waiting};
use weft_peer_proto::{ChannelName, PeerName};

use super::Loop;
use crate::ipam::{CHANNEL, IpamService, fmt_addr};
use weft_api::{IpamPeer, IpamStatus};

/// How long an allocation may wait for bootstrap or space before it fails.
pub const ALLOC_WAIT: Duration = Duration::from_secs(30);

/// An API failure: HTTP status and message.
#[derive(Debug)]
pub struct IpamFailure {
    pub status: u16,
    pub message: String,
}

impl IpamFailure {
    fn new(status: u16, message: impl Into<String>) -> Self {
        IpamFailure {
            status,
            message: message.into(),
        }
    }
}

pub struct Pending {
    key: String,
    addr: Option<u32>,
    deadline: Instant,
    reply: oneshot::Sender<Result<u32, IpamFailure>>,
}

fn channel() -> ChannelName {
    ChannelName::new(CHANNEL).unwrap_or_else(|_| unreachable!("a valid channel name"))
}

impl Loop {
    pub(super) fn ipam(&mut self) -> Option<&mut IpamService> {
        self.mesh
            .channel_mut(&channel())
            .and_then(|c| c.as_any_mut().downcast_mut::<IpamService>())
    }

    /// Sends what the IPAM service queued: our state to a few neighbours
    /// when it changed, and straight to peers we donated to.
    pub(super) fn flush_ipam(&mut self) {
        let Some(svc) = self.ipam() else { return };
        let gossip = std::mem::take(&mut svc.dirty);
        let direct = std::mem::take(&mut svc.direct);
        // This runs after every event: encode the state only when it goes out.
        if !gossip && direct.is_empty() {
            return;
        }
        let state = svc.state_msg();
        let Some(state) = state else { return };
        if gossip {
            self.mesh.gossip(channel(), state.clone());
        }
        for p in direct {
            let _ = self.mesh.unicast(channel(), p, state.clone());
        }
    }

    fn try_allocate(
        &mut self,
        key: &str,
        addr: Option<u32>,
    ) -> Result<u32, Result<IpamFailure, ()>> {
        let Some(svc) = self.ipam() else {
            return Err(Ok(IpamFailure::new(500, "IPAM not running")));
        };
        match svc.allocate(key, addr) {
            Err(e) => Err(Ok(IpamFailure::new(
                500,
                format!("cannot persist IPAM state: {e:#}"),
            ))),
            Ok(Ok(a)) => Ok(a),
            Ok(Err(AllocError::NotReady | AllocError::NoSpace)) => Err(Err(())),
            Ok(Err(e @ AllocError::Removed)) => Err(Ok(IpamFailure::new(409, e.to_string()))),
            Ok(Err(e)) => Err(Ok(IpamFailure::new(409, e.to_string()))),
        }
    }

    pub(super) fn allocate(
        &mut self,
        key: String,
        addr: Option<u32>,
        reply: oneshot::Sender<Result<u32, IpamFailure>>,
    ) {
        match self.try_allocate(&key, addr) {
            Ok(a) => {
                let _ = reply.send(Ok(a));
            }
            Err(Ok(f)) => {
                let _ = reply.send(Err(f));
            }
            Err(Err(())) => {
                self.pending.push(Pending {
                    key,
                    addr,
                    deadline: Instant::now() + ALLOC_WAIT,
                    reply,
                });
                self.ask_for_space(true);
            }
        }
    }

    /// Asks the peer owning the most space for some, at most once a second.
    fn ask_for_space(&mut self, now_if_due: bool) {
        let due = self
            .space_asked
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if !(now_if_due && due) {
            return;
        }
        let ready = self
            .ipam()
            .is_some_and(|s| s.bootstrap().waiting().eq(&Waiting::Ready));
        if !ready {
            return;
        }
        let reachable: std::collections::HashSet<PeerName> = self
            .mesh
            .peers_reachability()
            .into_iter()
            .filter(|(_, ok, _)| *ok)
            .map(|(n, _, _)| n)
            .collect();
        // Skip donors asked in the last few seconds: one that had nothing to
        // give does not answer, and others may have space.
        let now = Instant::now();
        self.donors_asked
            .retain(|_, at| now.duration_since(*at) < Duration::from_secs(3));
        let asked: std::collections::HashSet<PeerName> =
            self.donors_asked.keys().copied().collect();
        let donor = self
            .ipam()
            .and_then(|s| s.donor(|p| reachable.contains(&p) && !asked.contains(&p)));
        if let (Some(d), Some(msg)) = (donor, IpamService::space_request()) {
            self.space_asked = Some(now);
            self.donors_asked.insert(d, now);
            if self.mesh.unicast(channel(), d, msg).is_ok() {
                info!(donor = %d, "asked a peer for address space");
            }
        }
    }

    /// Serves waiting allocations that can be served now; fails those past
    /// their deadline with the reason they waited.
    /// A release cancels an allocation still waiting for the same key.
    pub(super) fn cancel_pending(&mut self, key: &str) {
        for p in std::mem::take(&mut self.pending) {
            if p.key == key {
                let _ = p.reply.send(Err(IpamFailure::new(
                    409,
                    "released while waiting for an address",
                )));
            } else {
                self.pending.push(p);
            }
        }
    }

    pub(super) fn retry_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let now = Instant::now();
        let pending = std::mem::take(&mut self.pending);
        for p in pending {
            // The client gave up (a CNI ADD timed out, say): allocating now
            // would leak the address.
            if p.reply.is_closed() {
                continue;
            }
            match self.try_allocate(&p.key, p.addr) {
                Ok(a) => {
                    let _ = p.reply.send(Ok(a));
                }
                Err(Ok(f)) => {
                    let _ = p.reply.send(Err(f));
                }
                Err(Err(())) if now >= p.deadline => {
                    let why = self.ipam().map(|s| s.waiting_reason()).unwrap_or_default();
                    warn!(key = %p.key, %why, "allocation timed out");
                    let _ = p.reply.send(Err(IpamFailure::new(503, why)));
                }
                Err(Err(())) => self.pending.push(p),
            }
        }
        if !self.pending.is_empty() {
            self.ask_for_space(true);
        }
    }

    pub(super) fn ipam_status(&mut self) -> Option<IpamStatus> {
        let reachable: std::collections::HashMap<PeerName, (bool, String)> = self
            .mesh
            .peers_reachability()
            .into_iter()
            .map(|(n, ok, nick)| (n, (ok, nick)))
            .collect();
        let pending = self.pending.len();
        let svc = self.ipam()?;
        let b = svc.bootstrap();
        let ring = b.alloc().ring();
        let range = ring.range();
        let me = b.alloc().me();
        let (waiting, secs) = svc.waiting();
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
                        svc.free_of(p)
                    },
                    allocated: (p == me).then(|| b.alloc().allocations().count()),
                }
            })
            .collect();
        Some(IpamStatus {
            range: crate::ipam::cidr(range),
            ready: waiting == Waiting::Ready,
            waiting: if waiting == Waiting::Ready {
                String::new()
            } else {
                svc.waiting_reason()
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
            stopped: svc.broken().map(str::to_owned),
        })
    }

    /// rmpeer: `who` is a peer name or nickname from the topology or ring.
    pub(super) fn rmpeer(&mut self, who: &str) -> Result<PeerName, String> {
        let peer = match who.parse::<PeerName>() {
            Ok(p) => p,
            Err(_) => {
                let matches: Vec<PeerName> = self
                    .mesh
                    .topology()
                    .entries()
                    .filter(|e| e.nickname == who)
                    .map(|e| e.name)
                    .collect();
                match matches.as_slice() {
                    [p] => *p,
                    [] => return Err(format!("no peer named or nicknamed {who:?}")),
                    _ => return Err(format!("nickname {who:?} is ambiguous; give the peer name")),
                }
            }
        };
        if peer == self.mesh.name() {
            return Err("refusing to remove ourselves".into());
        }
        if self.mesh.routes().is_reachable(peer) {
            return Err(format!(
                "{peer} is reachable; rmpeer is for peers that are gone for good"
            ));
        }
        let svc = self.ipam().ok_or("IPAM not running")?;
        svc.remove_peer(peer).map_err(|e| format!("{e:#}"))?;
        info!(%peer, "removed peer from the IPAM ring");
        Ok(peer)
    }
}
