//! Which incoming QUIC connection attempts get handshake state.
//!
//! An Initial from an address that has not proven it receives what we send
//! it is answered with a stateless Retry (quinn's `Incoming::retry`): a
//! spoofed source gets no connection state and no TLS work, only one Retry
//! packet smaller than its Initial (no amplification). A dialer that comes
//! back with the Retry's token (which binds its address, for
//! [`RETRY_TOKEN_LIFETIME`]) is given a handshake while fewer than
//! [`MAX_HALF_OPEN`] are under way, and fewer than [`MAX_HALF_OPEN_PER_ADDR`]
//! from its address; beyond that the attempt is ignored (nothing is sent),
//! and the dialer's next retransmission tries again. A handshake stays
//! half-open until its hello exchange ends, fails or times out.
//!
//! Every attempt is counted in `weft_incoming_total` by outcome.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::Metrics;

/// Inbound handshakes under way at once, across every address.
pub const MAX_HALF_OPEN: usize = 64;
/// The same, from one (validated) address.
pub const MAX_HALF_OPEN_PER_ADDR: usize = 8;
/// How long a Retry token admits its address (quinn's default).
pub const RETRY_TOKEN_LIFETIME: Duration = Duration::from_secs(15);
/// Connection attempts quinn holds for the acceptor before it refuses more
/// by itself (each holds its first datagram: about 1.5 KiB).
pub const MAX_INCOMING: usize = 4096;

/// What was done with one incoming attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not validated: answered with a stateless Retry.
    Retried,
    /// Validated: its handshake begins.
    Accepted,
    /// Validated, but the half-open caps were reached: dropped unanswered.
    Ignored,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Retried => "retried",
            Outcome::Accepted => "accepted",
            Outcome::Ignored => "ignored",
        }
    }
}

#[derive(Debug, Default)]
struct HalfOpen {
    total: usize,
    by_addr: HashMap<IpAddr, usize>,
}

/// Counts half-open inbound handshakes, and caps them.
#[derive(Debug, Clone)]
pub struct Gate {
    inner: Arc<Mutex<HalfOpen>>,
    gauge: Gauge,
    max: usize,
    max_per_addr: usize,
}

/// One half-open handshake; dropping it (the hello exchange ended, one way
/// or another) makes room for the next.
#[derive(Debug)]
pub struct Permit {
    gate: Gate,
    addr: IpAddr,
}

impl Gate {
    /// A gate with the caps above, reporting into `gauge`.
    pub fn new(gauge: Gauge) -> Self {
        Self::with_caps(gauge, MAX_HALF_OPEN, MAX_HALF_OPEN_PER_ADDR)
    }

    pub fn with_caps(gauge: Gauge, max: usize, max_per_addr: usize) -> Self {
        Gate {
            inner: Arc::default(),
            gauge,
            max,
            max_per_addr,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HalfOpen> {
        // The counts stay consistent whatever panicked while holding them.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Room for one more handshake from `addr`, if the caps allow it.
    pub fn enter(&self, addr: IpAddr) -> Option<Permit> {
        let addr = addr.to_canonical();
        let mut h = self.lock();
        let from_addr = h.by_addr.get(&addr).copied().unwrap_or(0);
        if h.total >= self.max || from_addr >= self.max_per_addr {
            return None;
        }
        h.total += 1;
        h.by_addr.insert(addr, from_addr + 1);
        self.gauge.set(h.total as i64);
        Some(Permit {
            gate: self.clone(),
            addr,
        })
    }

    /// Handshakes under way.
    pub fn half_open(&self) -> usize {
        self.lock().total
    }

    /// Decides what happens to `incoming`, does it, and counts it. Returns
    /// the attempt and its permit when its handshake is to begin.
    pub fn triage(
        &self,
        incoming: quinn::Incoming,
        metrics: &Metrics,
    ) -> Option<(quinn::Incoming, Permit)> {
        let (outcome, admitted) = if !incoming.remote_address_validated() {
            // quinn guarantees an unvalidated attempt may be retried; were
            // it not so, it would be dropped (refused) here, never accepted.
            match incoming.retry() {
                Ok(()) => (Outcome::Retried, None),
                Err(e) => {
                    e.into_incoming().ignore();
                    (Outcome::Ignored, None)
                }
            }
        } else {
            match self.enter(incoming.remote_address().ip()) {
                Some(permit) => (Outcome::Accepted, Some((incoming, permit))),
                None => {
                    incoming.ignore();
                    (Outcome::Ignored, None)
                }
            }
        };
        metrics.incoming(outcome.label());
        admitted
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut h = self.gate.lock();
        h.total = h.total.saturating_sub(1);
        if let Some(n) = h.by_addr.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                h.by_addr.remove(&self.addr);
            }
        }
        self.gate.gauge.set(h.total as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn the_caps_hold_and_a_finished_handshake_makes_room() {
        let gauge = Gauge::default();
        let gate = Gate::with_caps(gauge.clone(), 3, 2);
        let a1 = gate.enter(ip(1)).expect("first from .1");
        let a2 = gate.enter(ip(1)).expect("second from .1");
        assert!(
            gate.enter(ip(1)).is_none(),
            "a third from .1 is over its cap"
        );
        let b1 = gate.enter(ip(2)).expect("first from .2");
        assert!(gate.enter(ip(3)).is_none(), "the total cap is reached");
        assert_eq!((gate.half_open(), gauge.get()), (3, 3));
        drop(a1);
        assert_eq!(gauge.get(), 2);
        let c1 = gate.enter(ip(3)).expect("room again after one ended");
        drop((a2, b1, c1));
        assert_eq!((gate.half_open(), gauge.get()), (0, 0));
        assert!(gate.lock().by_addr.is_empty(), "no address left behind");
    }

    #[test]
    fn an_ipv4_mapped_address_counts_as_its_ipv4_address() {
        let gate = Gate::with_caps(Gauge::default(), 8, 1);
        let _p = gate.enter(ip(1)).expect("first");
        let mapped = IpAddr::from(std::net::Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        assert!(gate.enter(mapped).is_none());
    }
}
