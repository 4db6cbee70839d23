//! The peer list meshd keeps in the ConfigMap `weft-peers` (key
//! `peers.json`), and the pure decisions made on it: who seeded the range,
//! which router runs on which Node, and which router is reclaiming the space
//! of a Node that is gone. Every change is a read-modify-write guarded by the
//! ConfigMap's resourceVersion, so two routers never both believe they hold
//! a claim. No I/O here; the caller passes the time and the Nodes it saw.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The ConfigMap key holding the list.
pub const KEY: &str = "peers.json";

/// A claim older than this is presumed dead (its router crashed mid-way)
/// and may be taken over. rmpeer is idempotent, so a takeover is harmless.
pub const CLAIM_TTL_SECS: u64 = 60;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerList {
    /// The routers that split the range first: decided here, through the
    /// API, by the first router to write the list.
    #[serde(default)]
    pub seed: Vec<String>,
    /// Peer name -> where it runs.
    #[serde(default)]
    pub peers: BTreeMap<String, PeerRecord>,
    /// Routers whose space was reclaimed (the latest [`MAX_REMOVED`]): one
    /// that comes back with its old identity learns it here, before it can
    /// hand out an address that now belongs to its heir.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
}

/// How many reclaimed routers the list remembers.
pub const MAX_REMOVED: usize = 1000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    pub node: String,
    #[serde(default)]
    pub nickname: String,
    /// Another router took over this router's Node (a reinstall with a new
    /// identity): its space is to be reclaimed although the Node exists.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retired: bool,
    /// Who is reclaiming this router's space, and since when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<Claim>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub by: String,
    /// Unix seconds.
    pub at: u64,
}

impl PeerList {
    /// Parses the ConfigMap's value; an absent key is an empty list.
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value {
            None => Ok(PeerList::default()),
            Some(v) if v.trim().is_empty() => Ok(PeerList::default()),
            Some(v) => serde_json::from_str(v).map_err(|e| format!("{KEY} is not valid: {e}")),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Makes us the seed if nobody is yet. Returns whether the list changed.
    pub fn seed_if_empty(&mut self, me: &str) -> bool {
        if self.seed.is_empty() {
            self.seed = vec![me.to_owned()];
            true
        } else {
            false
        }
    }

    /// Records that `me` runs on `node`. Any other router recorded on the
    /// same Node is retired: two routers never run on one Node at once, so
    /// the old one is a previous identity whose space must come back.
    /// Returns whether the list changed.
    pub fn register(&mut self, me: &str, node: &str, nickname: &str) -> bool {
        let mut changed = false;
        for (name, rec) in self.peers.iter_mut() {
            if name != me && rec.node == node && !rec.retired {
                rec.retired = true;
                changed = true;
            }
        }
        let want = PeerRecord {
            node: node.to_owned(),
            nickname: nickname.to_owned(),
            retired: false,
            claim: None,
        };
        match self.peers.get_mut(me) {
            Some(rec) if rec.node == node && rec.nickname == nickname && !rec.retired => {}
            Some(rec) => {
                // Keep a claim on us (it will fail: we are reachable).
                let claim = rec.claim.take();
                *rec = PeerRecord { claim, ..want };
                changed = true;
            }
            None => {
                self.peers.insert(me.to_owned(), want);
                changed = true;
            }
        }
        changed
    }

    /// Routers whose space should be reclaimed: retired, or on a Node not
    /// in `nodes`. The caller must confirm with the API that such a Node is
    /// really gone before acting (a watch can lag behind a new Node).
    pub fn candidates(&self, me: &str, nodes: &BTreeSet<String>) -> Vec<String> {
        self.peers
            .iter()
            .filter(|(name, rec)| *name != me && (rec.retired || !nodes.contains(&rec.node)))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Takes the claim on `peer` for `me` if it is free, ours, expired, or
    /// held by a router no longer in the list. Returns whether the list
    /// changed (and so must be written for the claim to count).
    pub fn claim(&mut self, peer: &str, me: &str, now: u64) -> ClaimOutcome {
        let live: BTreeSet<String> = self.peers.keys().cloned().collect();
        let Some(rec) = self.peers.get_mut(peer) else {
            return ClaimOutcome::Gone;
        };
        match &rec.claim {
            Some(c) if c.by == me => {
                if now.saturating_sub(c.at) > CLAIM_TTL_SECS / 2 {
                    rec.claim = Some(Claim {
                        by: me.to_owned(),
                        at: now,
                    });
                    ClaimOutcome::Taken
                } else {
                    ClaimOutcome::Held
                }
            }
            Some(c) if live.contains(&c.by) && now.saturating_sub(c.at) <= CLAIM_TTL_SECS => {
                ClaimOutcome::Busy(c.by.clone())
            }
            _ => {
                rec.claim = Some(Claim {
                    by: me.to_owned(),
                    at: now,
                });
                ClaimOutcome::Taken
            }
        }
    }

    /// `peer` had nothing to reclaim: forget it without listing it as
    /// removed (only if we hold the claim).
    pub fn forget(&mut self, peer: &str, me: &str) -> bool {
        match self.peers.get(peer) {
            Some(rec) if rec.claim.as_ref().is_some_and(|c| c.by == me) => {
                self.peers.remove(peer);
                true
            }
            _ => false,
        }
    }

    /// The reclaim of `peer` is done: forget it (only if we hold the claim).
    pub fn finish(&mut self, peer: &str, me: &str) -> bool {
        match self.peers.get(peer) {
            Some(rec) if rec.claim.as_ref().is_some_and(|c| c.by == me) => {
                self.peers.remove(peer);
                if !self.removed.iter().any(|r| r == peer) {
                    self.removed.push(peer.to_owned());
                }
                let excess = self.removed.len().saturating_sub(MAX_REMOVED);
                self.removed.drain(..excess);
                true
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The list changed: write it; if the write wins, the claim is ours.
    Taken,
    /// We already hold a fresh claim: go on.
    Held,
    /// Another live router holds a fresh claim.
    Busy(String),
    /// The entry is no longer there (someone finished).
    Gone,
}

/// The address meshd dials for a Node: its InternalIP, else its ExternalIP.
pub fn node_address(addresses: &[(String, String)]) -> Option<std::net::IpAddr> {
    ["InternalIP", "ExternalIP"].iter().find_map(|kind| {
        addresses
            .iter()
            .filter(|(t, _)| t == kind)
            .find_map(|(_, a)| a.parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_first_writer_seeds_and_later_ones_do_not() {
        let mut l = PeerList::default();
        assert!(l.seed_if_empty("a"));
        assert!(!l.seed_if_empty("b"));
        assert_eq!(l.seed, vec!["a"]);
        let back = PeerList::parse(Some(&l.to_json())).expect("valid");
        assert_eq!(back, l);
        assert_eq!(PeerList::parse(None).expect("valid"), PeerList::default());
        assert!(PeerList::parse(Some("{not json")).is_err());
    }

    #[test]
    fn register_is_idempotent_and_retires_a_previous_identity() {
        let mut l = PeerList::default();
        assert!(l.register("a", "n1", "n1"));
        assert!(!l.register("a", "n1", "n1"));
        assert!(l.register("b", "n2", "n2"));
        // n1 reinstalled: a new identity c on the same Node.
        assert!(l.register("c", "n1", "n1"));
        assert!(l.peers["a"].retired);
        assert!(!l.peers["c"].retired);
        let all = nodes(&["n1", "n2"]);
        assert_eq!(l.candidates("b", &all), vec!["a"]);
        assert_eq!(l.candidates("c", &all), vec!["a"]);
        // a comes back (data restored): it un-retires itself, and c is retired.
        assert!(l.register("a", "n1", "n1"));
        assert!(!l.peers["a"].retired);
        assert!(l.peers["c"].retired);
    }

    #[test]
    fn routers_on_missing_nodes_are_candidates_but_never_ourselves() {
        let mut l = PeerList::default();
        l.register("a", "n1", "");
        l.register("b", "n2", "");
        l.register("c", "n3", "");
        assert_eq!(l.candidates("a", &nodes(&["n1", "n2"])), vec!["c"]);
        assert_eq!(l.candidates("a", &nodes(&[])), vec!["b", "c"]);
        assert!(l.candidates("a", &nodes(&["n1", "n2", "n3"])).is_empty());
    }

    #[test]
    fn one_claim_at_a_time_until_it_expires_or_its_holder_goes() {
        let mut l = PeerList::default();
        l.register("a", "n1", "");
        l.register("b", "n2", "");
        l.register("c", "n3", "");
        assert_eq!(l.claim("c", "a", 1000), ClaimOutcome::Taken);
        assert_eq!(l.claim("c", "a", 1001), ClaimOutcome::Held);
        assert_eq!(l.claim("c", "b", 1001), ClaimOutcome::Busy("a".into()));
        assert!(!l.finish("c", "b"), "only the holder finishes");
        // The holder renews before half the TTL runs out...
        assert_eq!(
            l.claim("c", "a", 1000 + CLAIM_TTL_SECS / 2 + 1),
            ClaimOutcome::Taken
        );
        // ...and a silent holder loses it after the TTL.
        let later = 1000 + CLAIM_TTL_SECS / 2 + 1 + CLAIM_TTL_SECS + 1;
        assert_eq!(l.claim("c", "b", later), ClaimOutcome::Taken);
        assert_eq!(l.claim("c", "a", later), ClaimOutcome::Busy("b".into()));
        // A holder that left the list loses its claim at once.
        let mut m = l.clone();
        m.peers.remove("b");
        assert_eq!(m.claim("c", "a", later), ClaimOutcome::Taken);
        assert!(l.finish("c", "b"));
        assert_eq!(l.claim("c", "a", later), ClaimOutcome::Gone);
        assert!(!l.peers.contains_key("c"));
        assert_eq!(l.removed, vec!["c"]);
    }

    /// A router with nothing to reclaim leaves the list unmarked, so it
    /// registers again as any other if it comes back.
    #[test]
    fn forgetting_does_not_mark_removed() {
        let mut l = PeerList::default();
        l.register("a", "n1", "");
        l.register("c", "n3", "");
        assert!(!l.forget("c", "a"), "only the holder forgets");
        assert_eq!(l.claim("c", "a", 1000), ClaimOutcome::Taken);
        assert!(l.forget("c", "a"));
        assert!(!l.peers.contains_key("c") && l.removed.is_empty());
        assert!(l.register("c", "n3", ""));
    }

    #[test]
    fn internal_ip_before_external_ip() {
        let a = |v: &[(&str, &str)]| {
            node_address(
                &v.iter()
                    .map(|(t, a)| (t.to_string(), a.to_string()))
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            a(&[("ExternalIP", "1.2.3.4"), ("InternalIP", "10.0.0.1")]),
            Some("10.0.0.1".parse().expect("valid"))
        );
        assert_eq!(
            a(&[("Hostname", "x"), ("ExternalIP", "1.2.3.4")]),
            Some("1.2.3.4".parse().expect("valid"))
        );
        assert_eq!(a(&[("InternalIP", "garbage"), ("Hostname", "x")]), None);
    }
}
