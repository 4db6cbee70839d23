//! The router's address requests: allocate (or claim), release and rmpeer,
//! each saved before it is answered, and the requests for space that
//! waiting allocations make.

use std::time::Instant;

use tracing::{debug, error, info};
use weft_ipam_crdt::{AllocError, IpamError, Waiting};
use weft_peer_proto::PeerName;

use super::Router;
use super::allocations::{Attempt, Reply};
use crate::handle::IpamFailure;

impl Router {
    /// One try at allocating `key` (or claiming `addr` for it), saved
    /// before it counts as done.
    fn try_allocate(&mut self, key: &str, addr: Option<u32>, now: Instant) -> Attempt {
        if let Some(why) = &self.alloc_hold {
            return Attempt::Failed(IpamFailure::new(503, why.clone()));
        }
        match self.mesh.channels_mut().allocate(key, addr) {
            Ok(a) => match self.save_ipam(now) {
                Ok(()) => Attempt::Done(a),
                Err(e) => Attempt::Failed(IpamFailure::new(500, e)),
            },
            Err(IpamError::Alloc(AllocError::NotReady | AllocError::NoSpace)) => Attempt::Wait,
            Err(e @ IpamError::Alloc(_)) => Attempt::Failed(IpamFailure::new(409, e.to_string())),
            Err(IpamError::Held(why)) => Attempt::Failed(IpamFailure::new(503, why)),
            // Stopped after a failed write, or whatever else keeps it from
            // serving: not the caller's fault.
            Err(e) => Attempt::Failed(IpamFailure::new(500, e.to_string())),
        }
    }

    pub(super) fn allocate(&mut self, key: String, addr: Option<u32>, reply: Reply, now: Instant) {
        match self.try_allocate(&key, addr, now) {
            Attempt::Done(a) => {
                let _ = reply.send(Ok(a));
            }
            Attempt::Failed(f) => {
                let _ = reply.send(Err(f));
            }
            Attempt::Wait => {
                self.allocations.push(key, addr, reply, now);
                self.ask_for_space(now);
            }
        }
    }

    /// Serves waiting allocations that can be served now; fails those past
    /// their deadline with the reason they waited.
    pub(super) fn retry_waiting(&mut self, now: Instant) {
        if self.allocations.is_empty() {
            return;
        }
        let mut queue = std::mem::take(&mut self.allocations);
        let expired = queue.retry(now, |key, addr| self.try_allocate(key, addr, now));
        self.allocations = queue;
        if !expired.is_empty() {
            let why = crate::ipam::waiting_reason(self.mesh.channels(), now);
            for w in expired {
                w.time_out(&why);
            }
        }
        if !self.allocations.is_empty() {
            self.ask_for_space(now);
        }
    }

    /// Asks the reachable peer with the most free space for some.
    fn ask_for_space(&mut self, now: Instant) {
        let ready = self.mesh.channels().ipam().waiting() == Waiting::Ready;
        if !ready || !self.allocations.may_ask(now) {
            return;
        }
        let reachable: std::collections::HashSet<PeerName> = self
            .mesh
            .peers_reachability()
            .into_iter()
            .filter(|(_, ok, _)| *ok)
            .map(|(n, _, _)| n)
            .collect();
        let donor = {
            let resting = self.allocations.resting(now);
            let ipam = self.mesh.channels();
            ipam.donor(|p| reachable.contains(&p) && !resting(p))
        };
        if let Some(d) = donor {
            self.allocations.asked(d, now);
            self.mesh.channels_mut().ask_for_space(d, now);
            info!(donor = %d, "asked a peer for address space");
        }
    }

    /// Releases `key`'s address (unknown keys are fine), saved before the
    /// answer; an allocation still waiting for the key is cancelled.
    pub(super) fn release(&mut self, key: &str, now: Instant) -> Result<Option<u32>, String> {
        self.allocations.cancel(key);
        let r = self
            .mesh
            .channels_mut()
            .release(key)
            .map_err(|e| e.to_string())?;
        self.save_ipam(now)?;
        Ok(r)
    }

    /// rmpeer: `who` is a peer name or nickname from the topology or ring.
    pub(super) fn rmpeer(&mut self, who: &str, now: Instant) -> Result<PeerName, String> {
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
        if self.mesh.is_reachable(peer) {
            return Err(format!(
                "{peer} is reachable; rmpeer is for peers that are gone for good"
            ));
        }
        // Our signature on its removal certificate (docs/trust.md): the
        // removal applies once more than half of the other owners signed.
        self.mesh
            .channels_mut()
            .sign_removal(peer)
            .map_err(|e| e.to_string())?;
        self.removal_asked.insert(peer);
        self.save_ipam(now)?;
        if self.mesh.channels().is_removed_peer(peer) {
            info!(%peer, "removed peer from the IPAM ring");
        } else {
            info!(%peer, "signed the removal of a peer; it applies once more than half of the owners signed");
        }
        Ok(peer)
    }

    /// Holds new addresses (and donations, and requests for space) while
    /// another router runs with this router's identity: it has a copy of
    /// this ring and these allocations, so what either hands out could be
    /// the other's. Both clones hold; the hold ends once the report clears
    /// (`DUPLICATE_HOLD` after the last sign of the other), after the
    /// operator stopped one of them.
    pub(super) fn hold_for_a_clone(&mut self, now: Instant) {
        let why = self.mesh.own_duplicate(now).map(|d| {
            let uids: Vec<String> = d.uids.iter().map(|u| format!("{u:016x}")).collect();
            format!(
                "another router runs with this router's identity {} (uids {}): new addresses are held until one of them stops (docs/troubleshooting.md)",
                d.peer,
                uids.join(", ")
            )
        });
        let ch = self.mesh.channels_mut();
        match (ch.held().is_some(), &why) {
            (false, Some(why)) => error!("{why}"),
            (true, None) => {
                info!("no other router runs with this identity any more: allocating again")
            }
            _ => {}
        }
        ch.hold(why);
        // (A router back from a stale state is held by the channel itself.)
        let stale = ch.stale().is_some();
        if self.ipam_stale && !stale {
            info!(
                "the IPAM state is confirmed by the mesh (or nobody contradicted it): allocating again"
            );
        }
        self.ipam_stale = stale;
    }

    /// Co-signs the removals others started (docs/trust.md, "Who may
    /// remove a router"): an operator's `rmpeer` or a Kubernetes reclaim on
    /// one router starts a certificate, but that is one router's word,
    /// which may be a lie. Every other router adds its signature only with
    /// its own evidence, and only once the peer has been unreachable here,
    /// with no session, for [`COSIGN_AFTER`]: evidence is the operator's
    /// `rmpeer` on this router, or (`--kube`) the peer's Node gone from
    /// this router's view of the API for `--kube-reclaim-after`. Without
    /// evidence, only without `--kube`, and only once the peer has been
    /// unreachable for `--cosign-unasked-after`. So a liar's certificate
    /// needs a partition that outlasts that wait, or (`--kube`) a Node
    /// really deleted; a live, reachable router is never co-signed away.
    pub(super) fn cosign_removals(&mut self, now: Instant) {
        let me = self.mesh.name();
        let ring = self.mesh.channels().ipam().alloc().ring();
        let pending: Vec<PeerName> = ring
            .removals()
            .filter(|(p, c)| {
                *p != me && !ring.removed().contains(p) && !c.signers().any(|s| s == me)
            })
            .map(|(p, _)| p)
            .collect();
        self.removal_asked.retain(|p| !ring.removed().contains(p));
        self.unreachable_since.retain(|p, _| pending.contains(p));
        for peer in pending {
            if self.mesh.is_reachable(peer) {
                // It is back: whoever asked was wrong, or it was restarted.
                self.unreachable_since.remove(&peer);
                self.removal_asked.remove(&peer);
                continue;
            }
            let since = *self.unreachable_since.entry(peer).or_insert(now);
            let asked = self.removal_asked.contains(&peer);
            let wait = if asked {
                Some(COSIGN_AFTER)
            } else {
                self.cosign_unasked_after
            };
            let Some(wait) = wait else {
                continue;
            };
            if now.saturating_duration_since(since) < wait {
                continue;
            }
            match self.mesh.channels_mut().sign_removal(peer) {
                Ok(_) => {
                    info!(%peer, asked_here = asked, "co-signed the removal of a peer unreachable here for {wait:?}")
                }
                Err(e) => debug!(%peer, "not co-signing a removal: {e}"),
            }
        }
    }
}

/// How long a peer must be unreachable here before this router co-signs
/// a removal another router asked for.
pub(super) const COSIGN_AFTER: std::time::Duration = std::time::Duration::from_secs(10);
