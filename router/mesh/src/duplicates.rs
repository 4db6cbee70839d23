//! Duplicate identities: two routers running with one identity key (a
//! cloned data directory), hence one peer name.
//!
//! Every start of a router draws a fresh random `uid`, and a topology entry
//! carries it under the router's signature. An honest restart replaces a
//! uid for good: the old process is gone and signs nothing more, and the
//! new one bumps its version [`OWN_BUMP_MARGIN`] past the old entry, beyond
//! anything the old process can have left in flight. So a uid that comes
//! back after another replaced it (a *return*) means two live routers are
//! taking turns with one name. The rule:
//! - at a router that sees another's entries: the held entry for a name
//!   changes back to a uid it held before;
//! - at one of the clones: an entry under our own name with another uid
//!   beats ours again after we had superseded that uid;
//!
//! [`DUPLICATE_RETURNS`] returns within [`DUPLICATE_HOLD`] report the name.
//! A hello under our own name with another uid (a clone dialed us, or we
//! it) is live proof and reports at once. A report is repeated at most once
//! per [`REPORT_INTERVAL`] per name while the returns go on; a name with no
//! return for [`DUPLICATE_HOLD`] is no longer reported as duplicated. Only
//! the key's holder signs entries or hellos under its name, so no other
//! router can make an honest one look duplicated.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use weft_peer_proto::PeerName;

/// How far past an earlier incarnation's entry a router bumps its own.
/// Versions move by one per change (at most one per `own_interval`), so no
/// honest earlier incarnation has entries this far apart in flight; a
/// version space of 2^62 allows 2^42 such bumps.
pub const OWN_BUMP_MARGIN: u64 = 1 << 20;

/// Returns of a uid (within [`DUPLICATE_HOLD`]) that report a name.
pub const DUPLICATE_RETURNS: usize = 2;

/// How long a return counts, and how long a reported name stays reported
/// after its last return.
pub const DUPLICATE_HOLD: Duration = Duration::from_secs(600);

/// Least time between two reports of one name.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(60);

/// Names whose uid changed that are remembered (a bound whatever peers
/// do: keys are free, and a liar may restart made-up routers); the one
/// changed longest ago is forgotten first.
const MAX_TRACKED: usize = 4096;

/// Previous uids remembered per name.
const PAST_UIDS: usize = 4;

/// Two routers seen running with one identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateReport {
    pub peer: PeerName,
    /// The uids seen taking turns (the current one first), at most 5.
    pub uids: Vec<u64>,
    /// It is our own identity.
    pub own: bool,
    /// Returns seen for this name so far.
    pub returns: u64,
}

/// A name currently reported as duplicated, for status pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateView {
    pub peer: PeerName,
    /// Its nickname in our topology (filled in by the snapshot).
    pub nickname: String,
    pub uids: Vec<u64>,
    pub own: bool,
    pub returns: u64,
    /// Since the name was first reported, and since its last return.
    pub since: Duration,
    pub last: Duration,
}

#[derive(Debug, Clone)]
struct History {
    /// The uid held now (for our own name: ours, always).
    current: u64,
    /// Uids held before (for our own name: the others that beat ours),
    /// latest last.
    past: VecDeque<u64>,
    /// When the last [`DUPLICATE_RETURNS`] returns were seen.
    recent: VecDeque<Instant>,
    returns: u64,
    changed_at: Instant,
    first_reported: Option<Instant>,
    reported_at: Option<Instant>,
}

impl History {
    fn new(current: u64, now: Instant) -> Self {
        History {
            current,
            past: VecDeque::new(),
            recent: VecDeque::new(),
            returns: 0,
            changed_at: now,
            first_reported: None,
            reported_at: None,
        }
    }

    fn remember(&mut self, uid: u64) {
        self.past.retain(|u| *u != uid);
        self.past.push_back(uid);
        while self.past.len() > PAST_UIDS {
            self.past.pop_front();
        }
    }

    fn uids(&self, own_uid: Option<u64>) -> Vec<u64> {
        let mut v = vec![own_uid.unwrap_or(self.current)];
        for u in self.past.iter().rev() {
            if !v.contains(u) {
                v.push(*u);
            }
        }
        v
    }

    /// A return was seen: whether it reports the name now.
    fn returned(&mut self, now: Instant) -> bool {
        self.returns += 1;
        self.recent.push_back(now);
        while self.recent.len() > DUPLICATE_RETURNS {
            self.recent.pop_front();
        }
        let within = self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) < DUPLICATE_HOLD);
        within && self.recent.len() >= DUPLICATE_RETURNS
    }

    /// Whether a report is due now (and marks it made): at most one per
    /// [`REPORT_INTERVAL`].
    fn due(&mut self, now: Instant) -> bool {
        if self
            .reported_at
            .is_some_and(|t| now.saturating_duration_since(t) < REPORT_INTERVAL)
        {
            return false;
        }
        self.reported_at = Some(now);
        self.first_reported.get_or_insert(now);
        true
    }

    fn active(&self, now: Instant) -> bool {
        self.first_reported.is_some()
            && self
                .recent
                .back()
                .is_some_and(|t| now.saturating_duration_since(*t) < DUPLICATE_HOLD)
    }
}

/// What one router has seen of uids taking turns under one name.
#[derive(Debug, Clone)]
pub struct Duplicates {
    me: PeerName,
    uid: u64,
    by_name: HashMap<PeerName, History>,
    /// Reports made (at most one per name per [`REPORT_INTERVAL`]).
    pub reports: u64,
}

impl Duplicates {
    pub fn new(me: PeerName, uid: u64) -> Self {
        Duplicates {
            me,
            uid,
            by_name: HashMap::new(),
            reports: 0,
        }
    }

    fn history(&mut self, name: PeerName, current: u64, now: Instant) -> &mut History {
        if !self.by_name.contains_key(&name) && self.by_name.len() >= MAX_TRACKED {
            let oldest = self
                .by_name
                .iter()
                .filter(|(n, _)| **n != self.me)
                .min_by_key(|(n, h)| (h.changed_at, **n))
                .map(|(n, _)| *n);
            if let Some(n) = oldest {
                self.by_name.remove(&n);
            }
        }
        self.by_name
            .entry(name)
            .or_insert_with(|| History::new(current, now))
    }

    fn report(&mut self, name: PeerName, now: Instant) -> Option<DuplicateReport> {
        let own = name == self.me;
        let own_uid = own.then_some(self.uid);
        let h = self.by_name.get_mut(&name)?;
        if !h.due(now) {
            return None;
        }
        let r = DuplicateReport {
            peer: name,
            uids: h.uids(own_uid),
            own,
            returns: h.returns,
        };
        self.reports += 1;
        Some(r)
    }

    /// The entry held for `name` (another router) changed from uid `old`
    /// to `new`. `old` is `None` if there was no entry.
    pub fn held_changed(
        &mut self,
        now: Instant,
        name: PeerName,
        old: Option<u64>,
        new: u64,
    ) -> Option<DuplicateReport> {
        if name == self.me {
            return None;
        }
        let old = match (old, self.by_name.get(&name)) {
            (_, Some(h)) => h.current,
            (Some(old), None) => old,
            (None, None) => return None,
        };
        if old == new {
            return None;
        }
        let h = self.history(name, old, now);
        let is_return = h.past.contains(&new);
        let prev = std::mem::replace(&mut h.current, new);
        h.remember(prev);
        h.past.retain(|u| *u != new);
        h.changed_at = now;
        if is_return && h.returned(now) {
            return self.report(name, now);
        }
        None
    }

    /// An entry under our own name with uid `uid` beat ours (it was signed
    /// by our key).
    pub fn own_beaten(&mut self, now: Instant, uid: u64) -> Option<DuplicateReport> {
        if uid == self.uid {
            return None;
        }
        let (me, mine) = (self.me, self.uid);
        let h = self.history(me, mine, now);
        let is_return = h.past.contains(&uid);
        h.remember(uid);
        h.changed_at = now;
        if is_return && h.returned(now) {
            return self.report(me, now);
        }
        None
    }

    /// A hello under our own name with uid `uid`: if it is not ours,
    /// another live router holds our key.
    pub fn own_hello(&mut self, now: Instant, uid: u64) -> Option<DuplicateReport> {
        if uid == self.uid {
            return None;
        }
        let (me, mine) = (self.me, self.uid);
        let h = self.history(me, mine, now);
        h.remember(uid);
        h.changed_at = now;
        h.returns += 1;
        // Live proof: counts as enough returns at once.
        for _ in 0..DUPLICATE_RETURNS {
            h.recent.push_back(now);
        }
        while h.recent.len() > DUPLICATE_RETURNS {
            h.recent.pop_front();
        }
        self.report(me, now)
    }

    /// Names reported and not quiet for [`DUPLICATE_HOLD`], in name order.
    pub fn active(&self, now: Instant) -> Vec<DuplicateView> {
        let mut v: Vec<DuplicateView> = self
            .by_name
            .iter()
            .filter(|(_, h)| h.active(now))
            .map(|(n, h)| {
                let own = *n == self.me;
                DuplicateView {
                    peer: *n,
                    nickname: String::new(),
                    uids: h.uids(own.then_some(self.uid)),
                    own,
                    returns: h.returns,
                    since: h
                        .first_reported
                        .map_or(Duration::ZERO, |t| now.saturating_duration_since(t)),
                    last: h
                        .recent
                        .back()
                        .map_or(Duration::ZERO, |t| now.saturating_duration_since(*t)),
                }
            })
            .collect();
        v.sort_by_key(|d| d.peer);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: u64) -> PeerName {
        PeerName(n)
    }

    const ME: u64 = 1;
    const MY_UID: u64 = 100;

    fn dups() -> Duplicates {
        Duplicates::new(name(ME), MY_UID)
    }

    /// Honest restarts only ever bring new uids: never reported, however
    /// many and however fast.
    #[test]
    fn honest_restarts_are_not_reported() {
        let t0 = Instant::now();
        let mut d = dups();
        for (i, uid) in (1..50u64).enumerate() {
            let now = t0 + Duration::from_millis(i as u64);
            assert_eq!(d.held_changed(now, name(2), Some(uid - 1), uid), None);
            assert_eq!(
                d.own_beaten(now, 1000 + uid),
                None,
                "an earlier incarnation of ours"
            );
        }
        assert_eq!(d.own_hello(t0, MY_UID), None, "we dialed ourselves");
        assert!(d.active(t0 + Duration::from_secs(1)).is_empty());
        assert_eq!(d.reports, 0);
    }

    /// Two uids alternating under one name: reported at the second return,
    /// then at most once per interval, and forgotten after a quiet hold.
    #[test]
    fn alternating_uids_are_reported_once_per_interval() {
        let t0 = Instant::now();
        let mut d = dups();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(d.held_changed(at(0), name(2), Some(7), 8), None);
        assert_eq!(
            d.held_changed(at(1), name(2), Some(8), 7),
            None,
            "one return"
        );
        let r = d
            .held_changed(at(2), name(2), Some(7), 8)
            .expect("second return reports");
        assert_eq!((r.peer, r.own, r.returns), (name(2), false, 2));
        assert_eq!(r.uids, vec![8, 7]);
        for s in 3..60 {
            let (old, new) = if s % 2 == 1 { (8, 7) } else { (7, 8) };
            assert_eq!(
                d.held_changed(at(s), name(2), Some(old), new),
                None,
                "{s} s"
            );
        }
        assert!(
            d.held_changed(at(63), name(2), Some(7), 8).is_some(),
            "after the interval"
        );
        assert_eq!(d.reports, 2);
        let active = d.active(at(64));
        assert_eq!(active.len(), 1);
        assert_eq!(
            (active[0].peer, active[0].since),
            (name(2), Duration::from_secs(62))
        );
        assert!(
            d.active(at(63) + DUPLICATE_HOLD).is_empty(),
            "quiet for the hold"
        );
    }

    /// Returns spread wider than the hold do not add up.
    #[test]
    fn returns_further_apart_than_the_hold_do_not_report() {
        let t0 = Instant::now();
        let mut d = dups();
        let mut now = t0;
        let mut uid = 7;
        for _ in 0..10 {
            now += DUPLICATE_HOLD;
            let other = if uid == 7 { 8 } else { 7 };
            assert_eq!(d.held_changed(now, name(2), Some(uid), other), None);
            uid = other;
        }
        assert_eq!(d.reports, 0);
    }

    /// At a clone: the other's uid beating ours again and again.
    #[test]
    fn our_name_beaten_again_by_another_uid_is_reported() {
        let t0 = Instant::now();
        let mut d = dups();
        assert_eq!(d.own_beaten(t0, 5), None, "once: an earlier incarnation");
        assert_eq!(d.own_beaten(t0, MY_UID), None, "our own uid is never news");
        assert_eq!(d.own_beaten(t0, 5), None);
        let r = d.own_beaten(t0, 5).expect("beaten a third time");
        assert!(r.own);
        assert_eq!(r.uids, vec![MY_UID, 5]);
        assert_eq!(d.active(t0)[0].peer, name(ME));
    }

    /// A hello under our name with another uid is live proof.
    #[test]
    fn a_hello_under_our_name_from_another_uid_reports_at_once() {
        let t0 = Instant::now();
        let mut d = dups();
        let r = d.own_hello(t0, 5).expect("live proof");
        assert_eq!((r.own, r.uids.clone()), (true, vec![MY_UID, 5]));
        assert_eq!(d.active(t0).len(), 1);
    }

    /// Made-up routers restarting under new uids cannot grow the memory
    /// past its bound.
    #[test]
    fn tracked_names_are_bounded() {
        let t0 = Instant::now();
        let mut d = dups();
        for n in 0..(MAX_TRACKED as u64 + 500) {
            d.held_changed(t0 + Duration::from_millis(n), name(10 + n), Some(1), 2);
        }
        assert_eq!(d.by_name.len(), MAX_TRACKED);
    }
}
