//! The dial targets: explicit ones (flags, `meshctl connect`) and
//! addresses discovered from the topology, each with its state and a
//! jittered exponential backoff. [`crate::dial`] decides which to dial.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::Rng;
use weft_peer_proto::PeerName;

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
