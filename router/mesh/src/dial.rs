//! Dial planning: operator targets and hints in, and which due targets to
//! dial now, within the connection limit and the bound on dials in flight.

use std::net::SocketAddr;
use std::time::Instant;

use rand::seq::SliceRandom;
use weft_peer_proto::PeerName;

use crate::channel::Channels;
use crate::connector::DialState;
use crate::mesh::Mesh;
use crate::outbox::Action;

/// Operator and driver inputs about targets, and the dial planning.
impl<C: Channels> Mesh<C> {
    pub fn add_target(&mut self, addr: SocketAddr, now: Instant) {
        self.connector.add(addr, true, None, now);
    }

    /// An address worth trying (say, a peer from before a restart), dialed
    /// like a discovered one: within the connection limit, dropped once the
    /// limit is reached.
    pub fn add_hint(&mut self, addr: SocketAddr, now: Instant) {
        self.connector.hint(addr, now);
    }

    /// Stops dialing `addr`; a session to it stays up (as `weave forget`).
    pub fn forget_target(&mut self, addr: SocketAddr) -> bool {
        self.connector.remove(&addr).is_some()
    }

    pub fn explicit_targets(&self) -> Vec<SocketAddr> {
        self.connector
            .targets
            .iter()
            .filter(|(_, t)| t.explicit)
            .map(|(a, _)| *a)
            .collect()
    }

    pub fn dial_failed(&mut self, now: Instant, addr: SocketAddr, error: String) {
        self.now = now;
        self.connector.failed(addr, error, now, &mut self.rng);
    }

    /// Dial planning: which due targets to dial now, within the connection
    /// limit and the bound on dials in flight (explicit targets first).
    pub(crate) fn make_connections(&mut self, now: Instant) {
        // A target marked connected whose peer has no session any more (the
        // session came from another address, or was replaced) is due again.
        for t in self.connector.targets.values_mut() {
            if let DialState::Connected { peer } = t.state
                && !self.by_peer.contains_key(&peer)
            {
                t.state = DialState::Idle;
                t.next_try = t.next_try.max(now);
            }
        }
        if self.cfg.discovery {
            let connecting = self
                .connector
                .targets
                .values()
                .filter(|t| matches!(t.state, DialState::Connecting { .. }))
                .count();
            // Discovery only runs while we want more sessions; at the limit the
            // discovered targets are dropped and derived again when needed.
            let need = self.sessions.len() + connecting < self.cfg.conn_limit;
            if need && std::mem::take(&mut self.discovery_dirty) {
                // Every address others reached a peer at that we are not connected to.
                let mut found: Vec<(SocketAddr, PeerName)> = Vec::new();
                for e in self.topology.entries() {
                    if e.name != self.cfg.name && !self.by_peer.contains_key(&e.name) {
                        found.extend(e.addrs.iter().map(|a| (*a, e.name)));
                    }
                }
                for (addr, peer) in found {
                    self.connector.add(addr, false, Some(peer), now);
                }
            }
            let by_peer = &self.by_peer;
            let topology = &self.topology;
            self.connector.targets.retain(|_, t| {
                t.explicit
                    || matches!(t.state, DialState::Connecting { .. })
                    || (need
                        && t.peer.is_none_or(|p| {
                            topology.get(&p).is_some() && !by_peer.contains_key(&p)
                        }))
            });
        }
        let mut in_flight: Vec<Option<PeerName>> = self
            .connector
            .targets
            .values()
            .filter(|t| matches!(t.state, DialState::Connecting { .. }))
            .map(|t| t.peer)
            .collect();
        let connected_addrs: Vec<SocketAddr> = self.sessions.values().map(|c| c.addr).collect();
        let mut due: Vec<(bool, SocketAddr, Option<PeerName>)> = self
            .connector
            .targets
            .iter()
            .filter(|(_, t)| t.state == DialState::Idle && t.next_try <= now)
            .map(|(a, t)| (t.explicit, *a, t.peer))
            .collect();
        due.shuffle(&mut self.rng);
        due.sort_by_key(|(explicit, _, _)| !explicit);
        for (explicit, addr, peer) in due {
            if in_flight.len() >= self.cfg.max_concurrent_dials {
                self.connector.postpone(addr, now + self.cfg.backoff_base);
                continue;
            }
            let have_peer = peer.is_some_and(|p| self.by_peer.contains_key(&p));
            if have_peer || connected_addrs.contains(&addr) {
                if let Some(p) = peer.or_else(|| {
                    self.sessions
                        .values()
                        .find(|c| c.addr == addr)
                        .map(|c| c.peer)
                }) {
                    self.connector.connected(addr, p);
                }
                continue;
            }
            let over_limit = self.sessions.len() + in_flight.len() >= self.cfg.conn_limit;
            if !explicit && (over_limit || (peer.is_some() && in_flight.contains(&peer))) {
                // Not now; look again later rather than at every wake-up.
                self.connector
                    .postpone(addr, now + self.cfg.gossip_interval);
                continue;
            }
            self.connector.dialing(addr, now);
            in_flight.push(peer);
            self.out.act(Action::Dial(addr));
        }
    }
}
