//! Allocations that wait: for the range to be split, or for space from a
//! peer. Each waits at most [`ALLOC_WAIT`], and the reason it waits is what
//! it fails with. While any waits, one peer at a time is asked for space:
//! at most once a second, never the same donor twice within a few seconds
//! (one that had nothing to give does not answer).
//!
//! Plain state with `now` passed in, so the policy is tested without a clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use weft_peer_proto::PeerName;

use crate::handle::IpamFailure;

/// How long an allocation may wait for bootstrap or space before it fails.
pub const ALLOC_WAIT: Duration = Duration::from_secs(30);
/// Shortest time between two requests for space.
const ASK_EVERY: Duration = Duration::from_secs(1);
/// How long a donor that was asked is left alone.
const DONOR_REST: Duration = Duration::from_secs(3);

pub type Reply = oneshot::Sender<Result<u32, IpamFailure>>;

/// An allocation request still waiting for an address.
pub struct WaitingAllocation {
    pub key: String,
    /// The address asked for, if any.
    pub addr: Option<u32>,
    deadline: Instant,
    reply: Reply,
}

impl WaitingAllocation {
    /// Fails it: it waited [`ALLOC_WAIT`] for `why`.
    pub fn time_out(self, why: &str) {
        tracing::warn!(key = %self.key, %why, "allocation timed out");
        let _ = self.reply.send(Err(IpamFailure::new(503, why)));
    }
}

/// What one try at an allocation came to.
pub enum Attempt {
    Done(u32),
    /// Not now: the range is not split, or no free address here.
    Wait,
    Failed(IpamFailure),
}

#[derive(Default)]
pub struct AllocationQueue {
    waiting: Vec<WaitingAllocation>,
    asked_at: Option<Instant>,
    donors_asked: HashMap<PeerName, Instant>,
}

impl AllocationQueue {
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    pub fn push(&mut self, key: String, addr: Option<u32>, reply: Reply, now: Instant) {
        self.waiting.push(WaitingAllocation {
            key,
            addr,
            deadline: now + ALLOC_WAIT,
            reply,
        });
    }

    /// A release cancels an allocation still waiting for the same key.
    pub fn cancel(&mut self, key: &str) {
        for w in std::mem::take(&mut self.waiting) {
            if w.key == key {
                let _ = w.reply.send(Err(IpamFailure::new(
                    409,
                    "released while waiting for an address",
                )));
            } else {
                self.waiting.push(w);
            }
        }
    }

    /// Tries every waiting allocation again with `attempt` and answers
    /// those done or failed. Returns those past their deadline, for the
    /// caller to fail with the reason they waited. Requests whose client
    /// gave up are dropped untried: allocating for them would leak the
    /// address.
    pub fn retry(
        &mut self,
        now: Instant,
        mut attempt: impl FnMut(&str, Option<u32>) -> Attempt,
    ) -> Vec<WaitingAllocation> {
        let mut expired = Vec::new();
        for w in std::mem::take(&mut self.waiting) {
            if w.reply.is_closed() {
                continue;
            }
            match attempt(&w.key, w.addr) {
                Attempt::Done(a) => {
                    let _ = w.reply.send(Ok(a));
                }
                Attempt::Failed(f) => {
                    let _ = w.reply.send(Err(f));
                }
                Attempt::Wait if now >= w.deadline => expired.push(w),
                Attempt::Wait => self.waiting.push(w),
            }
        }
        expired
    }

    /// Whether a request for space may go out now.
    pub fn may_ask(&self, now: Instant) -> bool {
        self.asked_at
            .is_none_or(|t| now.saturating_duration_since(t) >= ASK_EVERY)
    }

    /// Routers not to ask now (asked within the last few seconds).
    pub fn resting(&mut self, now: Instant) -> impl Fn(PeerName) -> bool + '_ {
        self.donors_asked
            .retain(|_, at| now.saturating_duration_since(*at) < DONOR_REST);
        |p| self.donors_asked.contains_key(&p)
    }

    pub fn asked(&mut self, donor: PeerName, now: Instant) {
        self.asked_at = Some(now);
        self.donors_asked.insert(donor, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_allocations_are_served_failed_or_timed_out_with_their_reason() {
        let t0 = Instant::now();
        let mut q = AllocationQueue::default();
        let (tx_a, mut rx_a) = oneshot::channel();
        let (tx_b, mut rx_b) = oneshot::channel();
        let (tx_c, rx_c) = oneshot::channel();
        q.push("a".into(), None, tx_a, t0);
        q.push("b".into(), None, tx_b, t0);
        q.push("c".into(), None, tx_c, t0);
        drop(rx_c); // the client gave up: never tried again
        let mut tried = Vec::new();
        let expired = q.retry(t0 + Duration::from_secs(1), |k, _| {
            tried.push(k.to_owned());
            if k == "a" {
                Attempt::Done(7)
            } else {
                Attempt::Wait
            }
        });
        assert!(expired.is_empty(), "nothing past its deadline yet");
        assert_eq!(tried, ["a", "b"]);
        assert_eq!(rx_a.try_recv().ok().and_then(|r| r.ok()), Some(7));
        assert!(rx_b.try_recv().is_err(), "b still waits");
        assert_eq!(q.len(), 1);
        let expired = q.retry(t0 + ALLOC_WAIT, |_, _| Attempt::Wait);
        assert_eq!(expired.len(), 1);
        for w in expired {
            w.time_out("no space");
        }
        let failed = rx_b.try_recv().expect("answered").expect_err("timed out");
        assert_eq!((failed.status, failed.message.as_str()), (503, "no space"));
        assert!(q.is_empty());
    }

    #[test]
    fn a_release_cancels_the_wait_for_its_key() {
        let t0 = Instant::now();
        let mut q = AllocationQueue::default();
        let (tx, mut rx) = oneshot::channel();
        q.push("k".into(), None, tx, t0);
        q.cancel("other");
        assert_eq!(q.len(), 1);
        q.cancel("k");
        assert_eq!(
            rx.try_recv().expect("answered").map_err(|f| f.status),
            Err(409)
        );
    }

    #[test]
    fn space_is_asked_for_once_a_second_and_a_donor_is_left_alone_for_a_while() {
        let t0 = Instant::now();
        let mut q = AllocationQueue::default();
        let (a, b) = (PeerName(1), PeerName(2));
        assert!(q.may_ask(t0));
        q.asked(a, t0);
        assert!(!q.may_ask(t0 + Duration::from_millis(500)));
        assert!(q.may_ask(t0 + ASK_EVERY));
        {
            let resting = q.resting(t0 + Duration::from_secs(2));
            assert!(resting(a) && !resting(b));
        }
        let resting = q.resting(t0 + DONOR_REST);
        assert!(!resting(a));
    }
}
