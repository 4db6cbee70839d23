//! Whom to dial and when: explicit targets (flags, `meshctl connect`) and
//! addresses discovered from the topology, with jittered exponential
//! backoff, within the connection limit and a bound on dials in flight.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::seq::SliceRandom;
use weft_peer_proto::PeerName;

use crate::gossip::Channels;
use crate::mesh::Mesh;
use crate::outbox::Action;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DialState {
    /// Waiting until `next_try`.
    Idle,
    Connecting {
        since: Instant,
    },
    Connected {
        peer: PeerName,
    },
    /// The address is our own; never dialed again.
    Ourself,
}

#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Given by an operator (kept until forgotten) rather than discovered.
    pub explicit: bool,
    /// Who we expect (discovered) or found (connected) there.
    pub peer: Option<PeerName>,
    pub state: DialState,
    pub attempts: u32,
    pub next_try: Instant,
    pub last_error: Option<String>,
}

#[derive(Debug)]
pub(crate) struct Connector {
    pub(crate) targets: BTreeMap<SocketAddr, Target>,
    base: Duration,
    max: Duration,
}

impl Connector {
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        Connector {
            targets: BTreeMap::new(),
            base,
            max,
        }
    }

    fn backoff(&self, attempts: u32, rng: &mut impl Rng) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempts.min(16))
            .min(self.max);
        exp.mul_f64(rng.random_range(0.5..1.5))
    }

    /// Adds (or promotes to explicit) a target; due at once.
    pub(crate) fn add(
        &mut self,
        addr: SocketAddr,
        explicit: bool,
        peer: Option<PeerName>,
        now: Instant,
    ) {
        let t = self.targets.entry(addr).or_insert(Target {
            explicit,
            peer,
            state: DialState::Idle,
            attempts: 0,
            next_try: now,
            last_error: None,
        });
        if explicit && !t.explicit {
            t.explicit = true;
            t.next_try = t.next_try.min(now);
        }
    }

    /// An address worth trying with no peer expected there (any more): a
    /// discovered target for a forgotten peer becomes such a hint.
    pub(crate) fn hint(&mut self, addr: SocketAddr, at: Instant) {
        let t = self.targets.entry(addr).or_insert(Target {
            explicit: false,
            peer: None,
            state: DialState::Idle,
            attempts: 0,
            next_try: at,
            last_error: None,
        });
        if !matches!(t.state, DialState::Connected { .. }) {
            t.peer = None;
        }
    }

    pub(crate) fn remove(&mut self, addr: &SocketAddr) -> Option<Target> {
        self.targets.remove(addr)
    }

    pub(crate) fn dialing(&mut self, addr: SocketAddr, now: Instant) {
        if let Some(t) = self.targets.get_mut(&addr) {
            t.state = DialState::Connecting { since: now };
        }
    }

    pub(crate) fn postpone(&mut self, addr: SocketAddr, until: Instant) {
        if let Some(t) = self.targets.get_mut(&addr) {
            t.next_try = t.next_try.max(until);
        }
    }

    pub(crate) fn failed(
        &mut self,
        addr: SocketAddr,
        error: String,
        now: Instant,
        rng: &mut impl Rng,
    ) {
        let delay = self
            .targets
            .get(&addr)
            .map(|t| self.backoff(t.attempts, rng));
        if let (Some(t), Some(delay)) = (self.targets.get_mut(&addr), delay) {
            t.attempts = t.attempts.saturating_add(1);
            t.state = DialState::Idle;
            t.next_try = now + delay;
            t.last_error = Some(error);
        }
    }

    pub(crate) fn connected(&mut self, addr: SocketAddr, peer: PeerName) {
        if let Some(t) = self.targets.get_mut(&addr) {
            t.state = DialState::Connected { peer };
            t.peer = Some(peer);
            t.last_error = None;
        }
    }

    pub(crate) fn ourself(&mut self, addr: SocketAddr) {
        if let Some(t) = self.targets.get_mut(&addr) {
            t.state = DialState::Ourself;
            t.last_error = Some("this address is our own".into());
        }
    }

    /// A session that was up went down: retry soon if it had lasted, or keep
    /// backing off if sessions there keep failing quickly (a peer at its
    /// connection limit, say). `connected` does not reset the attempts, so
    /// only a session that lasted does.
    pub(crate) fn disconnected(
        &mut self,
        addr: SocketAddr,
        lasted: Duration,
        why: String,
        now: Instant,
        rng: &mut impl Rng,
    ) {
        let Some(attempts) = self.targets.get(&addr).map(|t| t.attempts) else {
            return;
        };
        let attempts = if lasted > self.max { 0 } else { attempts };
        let delay = self.backoff(attempts, rng);
        if let Some(t) = self.targets.get_mut(&addr) {
            t.attempts = attempts.saturating_add(1);
            t.state = DialState::Idle;
            t.next_try = now + delay;
            t.last_error = Some(why);
        }
    }

    /// When the next idle target becomes due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.targets
            .values()
            .filter(|t| t.state == DialState::Idle)
            .map(|t| t.next_try)
            .min()
    }
}

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
