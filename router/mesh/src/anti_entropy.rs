//! Anti-entropy: how topology news spreads and how two routers that missed
//! some of it find out. News is batched and relayed to a few neighbours;
//! every gossip interval one random neighbour gets a hash of the whole
//! topology, and a mismatch is repaired with digests and updates. Peers
//! that stay unreachable are forgotten after a while.

use std::time::Instant;

use rand::seq::{IndexedRandom, SliceRandom};
use weft_peer_proto::topology::{PeerEntry, TopologyMsg};
use weft_peer_proto::{Frame, PeerName};

use crate::channel::Channels;
use crate::config::gc_period;
use crate::mesh::Mesh;
use crate::outbox::{MeshEvent, SessionId, Transmit};
use crate::topology;

/// A peer broke the protocol on a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    #[error("unexpected hello after the session started")]
    UnexpectedHello,
}

impl<C: Channels> Mesh<C> {
    fn schedule_flush(&mut self, now: Instant) {
        if self.flush_at.is_none() {
            self.flush_at = Some(now + self.cfg.flush_interval);
        }
    }

    /// A frame arrived on an established session.
    pub fn handle_frame(
        &mut self,
        now: Instant,
        session: SessionId,
        frame: Frame,
    ) -> Result<(), ProtocolError> {
        self.now = now;
        let Some(from) = self.sessions.get(&session).map(|c| c.peer) else {
            return Ok(());
        };
        match frame {
            Frame::Hello(_) => return Err(ProtocolError::UnexpectedHello),
            // The driver closes the session on a goodbye, and hands data
            // offers to the data plane before they get here.
            Frame::Goodbye(_) | Frame::DataOffer(_) => {}
            Frame::Topology(TopologyMsg::Summary { hash, .. }) => {
                if hash != self.topology.hash() && self.may_answer(now, session, false) {
                    let entries = self.topology.digest();
                    self.out.transmits.push_back(Transmit {
                        session,
                        frame: Frame::Topology(TopologyMsg::Digest {
                            entries,
                            reply: true,
                        }),
                    });
                }
            }
            Frame::Topology(TopologyMsg::Digest { entries, reply }) => {
                if !self.may_answer(now, session, true) {
                    return Ok(());
                }
                for chunk in self.topology.newer_than(&entries) {
                    self.out.transmits.push_back(Transmit {
                        session,
                        frame: Frame::Topology(TopologyMsg::Update { entries: chunk }),
                    });
                }
                if reply && self.topology.lacks_any(&entries) {
                    let entries = self.topology.digest();
                    self.out.transmits.push_back(Transmit {
                        session,
                        frame: Frame::Topology(TopologyMsg::Digest {
                            entries,
                            reply: false,
                        }),
                    });
                }
            }
            Frame::Topology(TopologyMsg::Update { entries }) => {
                self.merge_topology(now, session, entries)
            }
            Frame::Gossip(msg) => self.handle_gossip(now, session, from, msg),
        }
        Ok(())
    }

    /// At most one answer of each kind per session per half gossip interval:
    /// answering costs us far more than asking costs the peer.
    fn may_answer(&mut self, now: Instant, session: SessionId, updates: bool) -> bool {
        let min_gap = self.cfg.gossip_interval / 2;
        let Some(c) = self.sessions.get_mut(&session) else {
            return false;
        };
        let at = if updates {
            &mut c.updates_at
        } else {
            &mut c.digest_at
        };
        if at.is_some_and(|t| now.saturating_duration_since(t) < min_gap) {
            self.counters.throttled += 1;
            return false;
        }
        *at = Some(now);
        true
    }

    fn merge_topology(&mut self, now: Instant, session: SessionId, entries: Vec<PeerEntry>) {
        if self.topology.is_full() {
            // Who makes room depends on how far everyone is from us.
            self.routes();
        }
        let routes = &self.routes;
        let out = self.topology.merge(entries, now, &|n| routes.distance(n));
        self.counters.peers_refused += out.refused as u64;
        self.counters.forged.topology_signature += out.forged_signature as u64;
        self.counters.forged.topology_form += out.forged_form as u64;
        self.counters.equivocations += out.equivocations as u64;
        self.counters.evicted += out.evicted as u64;
        for (name, old, new) in &out.uid_changes {
            let r = self.dups.held_changed(now, *name, *old, *new);
            self.duplicate(r);
        }
        for uid in &out.own_beaten_by {
            let r = self.dups.own_beaten(now, *uid);
            self.duplicate(r);
        }
        if out.news.is_empty() && !out.own_bumped {
            return;
        }
        self.routes_dirty = true;
        self.discovery_dirty = true;
        self.counters.topology_news += out.news.len() as u64;
        for e in out.news {
            self.pending_news.insert(e.name, (e, Some(session)));
        }
        if out.own_bumped {
            let me = self.topology.me().clone();
            self.pending_news.insert(me.name, (me, None));
        }
        self.schedule_flush(now);
    }

    pub(crate) fn flush(&mut self, now: Instant) {
        if self.own_dirty && now < self.own_next {
            self.flush_at = Some(self.own_next);
        } else if std::mem::take(&mut self.own_dirty) {
            self.own_next = now + self.cfg.own_interval;
            let conns: Vec<PeerName> = self.sessions.values().map(|c| c.peer).collect();
            let addrs = self.own_addrs.clone();
            if self.topology.set_own(conns, &addrs) {
                self.routes_dirty = true;
                // Our own news goes to every neighbour: they need it to route to us.
                let me = self.topology.me().clone();
                let mut ids: Vec<SessionId> = self.sessions.keys().copied().collect();
                // In a fixed order, so that a seed replays a run exactly.
                ids.sort_unstable();
                for session in ids {
                    self.out.transmits.push_back(Transmit {
                        session,
                        frame: Frame::Topology(TopologyMsg::Update {
                            entries: vec![me.clone()],
                        }),
                    });
                }
                self.pending_news.remove(&me.name);
            }
        }
        if self.pending_news.is_empty() {
            return;
        }
        let news = std::mem::take(&mut self.pending_news);
        let mut ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        ids.sort_unstable();
        ids.shuffle(&mut self.rng);
        for session in ids.into_iter().take(self.cfg.fanout) {
            let entries: Vec<PeerEntry> = news
                .values()
                .filter(|(_, src)| *src != Some(session))
                .map(|(e, _)| e.clone())
                .collect();
            for chunk in topology::chunk_entries(entries) {
                self.out.transmits.push_back(Transmit {
                    session,
                    frame: Frame::Topology(TopologyMsg::Update { entries: chunk }),
                });
            }
        }
    }

    pub(crate) fn tick(&mut self, now: Instant) {
        // Anti-entropy with one random neighbour.
        let mut ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        ids.sort_unstable();
        if let Some(&session) = ids.choose(&mut self.rng) {
            let (hash, peers) = (self.topology.hash(), self.topology.len() as u32);
            self.out.transmits.push_back(Transmit {
                session,
                frame: Frame::Topology(TopologyMsg::Summary { hash, peers }),
            });
            self.send_full_states(now, session);
        }
        if now >= self.next_gc {
            self.next_gc = now + gc_period(&self.cfg);
            self.collect_garbage(now);
        }
    }

    /// Forgets peers that stayed unreachable for `peer_gc_after`.
    fn collect_garbage(&mut self, now: Instant) {
        let gc_after = self.cfg.peer_gc_after;
        let names: Vec<PeerName> = self.topology.entries().map(|e| e.name).collect();
        let routes = self.routes();
        let unreachable: std::collections::HashSet<PeerName> = names
            .into_iter()
            .filter(|n| !routes.is_reachable(*n))
            .collect();
        self.unreachable_since
            .retain(|n, _| unreachable.contains(n));
        let mut removed = false;
        for n in unreachable {
            let since = *self.unreachable_since.entry(n).or_insert(now);
            if now.saturating_duration_since(since) >= gc_after {
                let nickname = self
                    .topology
                    .get(&n)
                    .map(|e| e.nickname.clone())
                    .unwrap_or_default();
                // Remember where it was: after a long partition these may be
                // the only addresses left to heal through.
                let addrs = self
                    .topology
                    .get(&n)
                    .map(|e| e.addrs.clone())
                    .unwrap_or_default();
                if self.cfg.discovery && self.connector.targets.len() < 4 * self.cfg.conn_limit {
                    for a in addrs {
                        self.connector.hint(a, now + self.cfg.backoff_base);
                    }
                }
                self.topology.remove(n, now);
                self.unreachable_since.remove(&n);
                self.out.event(MeshEvent::PeerRemoved { peer: n, nickname });
                removed = true;
            }
        }
        if removed {
            self.routes_dirty = true;
        }
    }
}
