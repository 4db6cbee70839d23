//! Admission: which sessions a router keeps. A handshake that finished is
//! checked here (ourselves, protocol versions, the connection limit) and
//! duplicates between the same two routers are resolved the same way at
//! both ends; then the new neighbour is brought up to date.

use std::net::SocketAddr;
use std::time::Instant;

use rand::seq::SliceRandom;
use weft_peer_proto::limits::MAX_ADDRS_PER_PEER;
use weft_peer_proto::topology::TopologyMsg;
use weft_peer_proto::{
    Features, Frame, GoodbyeReason, Hello, PROTOCOL_MAX, PROTOCOL_MIN, PeerName, VersionRange,
};

use crate::channel::Channels;
use crate::mesh::{Mesh, Neighbour};
use crate::outbox::{Action, MeshEvent, SessionId, Transmit};
use crate::topology;

/// The answer to a session that finished its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Accept,
    /// Send queued transmits, then a goodbye with this reason, then close.
    Reject(GoodbyeReason),
}

impl<C: Channels> Mesh<C> {
    /// The hello we send on a new session.
    pub fn hello(&self, your_addr: Option<SocketAddr>) -> Hello {
        Hello {
            versions: VersionRange {
                min: PROTOCOL_MIN,
                max: PROTOCOL_MAX,
            },
            name: self.cfg.name,
            nickname: self.cfg.nickname.clone(),
            uid: self.cfg.uid,
            listen_port: self.cfg.listen_port,
            features: Features::default(),
            your_addr,
            nonce: 0,
        }
    }

    /// A session finished its TLS handshake and hello exchange. `addr` is where
    /// the peer can be dialed: the address we dialed, or for inbound sessions
    /// its source IP with its `listen_port`.
    pub fn connection_up(
        &mut self,
        now: Instant,
        session: SessionId,
        hello: &Hello,
        addr: SocketAddr,
        outbound: bool,
    ) -> Admit {
        self.now = now;
        let peer = hello.name;
        if peer == self.cfg.name {
            let r = self.dups.own_hello(now, hello.uid);
            self.duplicate(r);
            if outbound {
                self.connector.ourself(addr);
            }
            return self.reject(addr, peer, GoodbyeReason::SelfConnection);
        }
        if hello
            .versions
            .negotiate(VersionRange {
                min: PROTOCOL_MIN,
                max: PROTOCOL_MAX,
            })
            .is_none()
        {
            if outbound {
                self.connector.failed(
                    addr,
                    "no common protocol version".into(),
                    now,
                    &mut self.rng,
                );
            }
            return self.reject(addr, peer, GoodbyeReason::IncompatibleVersion);
        }
        if let Some(&old_id) = self.by_peer.get(&peer) {
            let old = &self.sessions[&old_id];
            let lower = self.cfg.name.min(peer);
            let initiator = |outbound: bool| if outbound { self.cfg.name } else { peer };
            let (old_init, new_init) = (initiator(old.outbound), initiator(outbound));
            // A session from an earlier incarnation of the peer is dead.
            // Otherwise sessions started by the lower name win, and between
            // two started by the same side, the higher nonce (both ends see
            // the same nonces, whatever order the sessions came up in).
            let new_wins = if old.uid != hello.uid {
                true
            } else if old_init != new_init {
                new_init == lower
            } else {
                hello.nonce > old.nonce
            };
            if !new_wins {
                if outbound {
                    self.connector.connected(addr, peer);
                }
                return self.reject(addr, peer, GoodbyeReason::Duplicate);
            }
            self.out.act(Action::Close {
                session: old_id,
                reason: GoodbyeReason::Duplicate,
                message: "replaced by a newer session".into(),
            });
            self.drop_session(old_id);
        } else if !outbound && self.sessions.len() >= self.cfg.conn_limit.saturating_mul(2) {
            // Tell the peer about some of our neighbours (with the addresses
            // they were reached at), so that it can dial someone else.
            let mut names: Vec<PeerName> = self.by_peer.keys().copied().collect();
            names.sort_unstable();
            names.shuffle(&mut self.rng);
            let mut entries = vec![self.topology.me().clone()];
            entries.extend(
                names
                    .iter()
                    .take(32)
                    .filter_map(|n| self.topology.get(n).cloned()),
            );
            for chunk in topology::chunk_entries(entries) {
                self.out.transmits.push_back(Transmit {
                    session,
                    frame: Frame::Topology(TopologyMsg::Update { entries: chunk }),
                });
            }
            return self.reject(addr, peer, GoodbyeReason::ConnLimit);
        }
        if let Some(a) = hello.your_addr {
            self.learn_own_addr(a);
        }
        self.sessions.insert(
            session,
            Neighbour {
                peer,
                nickname: hello.nickname.clone(),
                addr,
                outbound,
                since: now,
                uid: hello.uid,
                nonce: hello.nonce,
                updates_at: None,
                digest_at: None,
            },
        );
        self.by_peer.insert(peer, session);
        if outbound {
            self.connector.connected(addr, peer);
        }
        self.out.event(MeshEvent::Connected {
            peer,
            nickname: hello.nickname.clone(),
            addr,
            outbound,
        });
        // Bring each other up to date, and tell everyone about the new link.
        self.out.transmits.push_back(Transmit {
            session,
            frame: Frame::Topology(TopologyMsg::Digest {
                entries: self.topology.digest(),
                reply: false,
            }),
        });
        self.send_full_states(now, session);
        self.mark_own_dirty(now);
        Admit::Accept
    }

    fn reject(&mut self, addr: SocketAddr, peer: PeerName, reason: GoodbyeReason) -> Admit {
        self.out.event(MeshEvent::Rejected { addr, peer, reason });
        Admit::Reject(reason)
    }

    fn learn_own_addr(&mut self, a: SocketAddr) {
        if a.ip().is_unspecified() || a.port() == 0 {
            return;
        }
        if self.own_addrs.first() == Some(&a) {
            return;
        }
        self.own_addrs.retain(|x| *x != a);
        self.own_addrs.insert(0, a);
        self.own_addrs.truncate(MAX_ADDRS_PER_PEER);
    }

    fn drop_session(&mut self, session: SessionId) -> Option<Neighbour> {
        let c = self.sessions.remove(&session)?;
        if self.by_peer.get(&c.peer) == Some(&session) {
            self.by_peer.remove(&c.peer);
        }
        Some(c)
    }

    /// A session ended (either side closed it, it timed out, or we were told
    /// to close it). Unknown ids are ignored.
    pub fn connection_down(&mut self, now: Instant, session: SessionId, reason: String) {
        self.now = now;
        let Some(c) = self.drop_session(session) else {
            return;
        };
        self.out.event(MeshEvent::Disconnected {
            peer: c.peer,
            nickname: c.nickname.clone(),
            reason: reason.clone(),
        });
        let lasted = now.saturating_duration_since(c.since);
        if self.connector.targets.contains_key(&c.addr) {
            self.connector
                .disconnected(c.addr, lasted, reason, now, &mut self.rng);
        } else if self.cfg.discovery {
            // Try to get it back, as a discovered target.
            self.connector
                .add(c.addr, false, Some(c.peer), now + self.cfg.backoff_base);
        }
        self.mark_own_dirty(now);
    }

    fn mark_own_dirty(&mut self, now: Instant) {
        self.own_dirty = true;
        self.discovery_dirty = true;
        let at = (now + self.cfg.flush_interval).max(self.own_next);
        self.flush_at = Some(self.flush_at.map_or(at, |f| f.min(at)));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use std::sync::Arc;

    use weft_peer_proto::sign::KeyPair;

    use super::*;
    use crate::{Config, NoChannels};

    /// Router `rank` of two: mesh(1) has the lower name.
    fn mesh(rank: u64) -> Mesh<NoChannels> {
        let mut keys: Vec<Arc<KeyPair>> = (1..=2u8)
            .map(|i| Arc::new(KeyPair::from_seed([i; 32])))
            .collect();
        keys.sort_by_key(|k| weft_peer_proto::sign::Signer::name(&**k));
        let key = keys[(rank - 1) as usize].clone();
        Mesh::new(
            Config::new(key, format!("n{rank}"), rank, rank),
            NoChannels,
            Instant::now(),
        )
    }

    fn closed(m: &mut Mesh<NoChannels>) -> Vec<SessionId> {
        std::iter::from_fn(|| m.poll_action())
            .filter_map(|a| match a {
                Action::Close { session, .. } => Some(session),
                Action::Dial(_) => None,
            })
            .collect()
    }

    /// A (lower name) and B dial each other at once: session X is A->B, Y is
    /// B->A. Whatever order each side learns of them, both keep X.
    #[test]
    fn simultaneous_dials_resolve_to_the_same_session_on_both_ends() {
        let addr_a: SocketAddr = "192.0.2.1:6783".parse().expect("addr");
        let addr_b: SocketAddr = "192.0.2.2:6783".parse().expect("addr");
        for a_first in [true, false] {
            for b_first in [true, false] {
                let now = Instant::now();
                let (mut a, mut b) = (mesh(1), mesh(2));
                let (ha, hb) = (a.hello(None), b.hello(None));
                // At A: X is outbound (id 10), Y inbound (id 11).
                let a_order = if a_first {
                    [(10, true), (11, false)]
                } else {
                    [(11, false), (10, true)]
                };
                let mut a_kept = Vec::new();
                for (id, out) in a_order {
                    if a.connection_up(now, id, &hb, addr_b, out) == Admit::Accept {
                        a_kept.push(id);
                    }
                }
                let a_closed = closed(&mut a);
                a_kept.retain(|id| !a_closed.contains(id));
                // At B: X is inbound (id 20), Y outbound (id 21).
                let b_order = if b_first {
                    [(20, false), (21, true)]
                } else {
                    [(21, true), (20, false)]
                };
                let mut b_kept = Vec::new();
                for (id, out) in b_order {
                    if b.connection_up(now, id, &ha, addr_a, out) == Admit::Accept {
                        b_kept.push(id);
                    }
                }
                let b_closed = closed(&mut b);
                b_kept.retain(|id| !b_closed.contains(id));
                assert_eq!(a_kept, vec![10], "A keeps X ({a_first}, {b_first})");
                assert_eq!(b_kept, vec![20], "B keeps X ({a_first}, {b_first})");
            }
        }
    }

    /// Two sessions dialed by the same side (B reached A at two addresses):
    /// both ends keep the one with the higher nonce, in any arrival order.
    #[test]
    fn same_side_duplicates_are_resolved_by_nonce_alike() {
        let addr: SocketAddr = "192.0.2.2:6783".parse().expect("addr");
        for first in [0usize, 1] {
            let now = Instant::now();
            let (mut a, b) = (mesh(1), mesh(2));
            let mut hb = b.hello(None);
            let nonces = [7u64, 99];
            let order = if first == 0 { [0, 1] } else { [1, 0] };
            let mut kept = Vec::new();
            for i in order {
                hb.nonce = nonces[i];
                if a.connection_up(now, i as u64, &hb, addr, false) == Admit::Accept {
                    kept.push(i as u64);
                }
            }
            let gone = closed(&mut a);
            kept.retain(|id| !gone.contains(id));
            assert_eq!(kept, vec![1], "arrival order {order:?}");
        }
    }

    #[test]
    fn connecting_to_ourselves_is_refused_and_not_retried() {
        let now = Instant::now();
        let mut a = mesh(1);
        let addr: SocketAddr = "192.0.2.1:6783".parse().expect("addr");
        a.add_target(addr, now);
        a.handle_timeout(now);
        assert_eq!(a.poll_action(), Some(Action::Dial(addr)));
        let me = a.hello(None);
        assert_eq!(
            a.connection_up(now, 1, &me, addr, true),
            Admit::Reject(GoodbyeReason::SelfConnection)
        );
        a.handle_timeout(now + Duration::from_secs(3600));
        assert!(std::iter::from_fn(|| a.poll_action()).all(|x| x != Action::Dial(addr)));
    }

    #[test]
    fn incompatible_versions_are_refused() {
        let now = Instant::now();
        let mut a = mesh(1);
        let mut h = mesh(2).hello(None);
        h.versions = VersionRange {
            min: PROTOCOL_MAX + 1,
            max: PROTOCOL_MAX + 3,
        };
        let addr: SocketAddr = "192.0.2.2:6783".parse().expect("addr");
        assert_eq!(
            a.connection_up(now, 1, &h, addr, false),
            Admit::Reject(GoodbyeReason::IncompatibleVersion)
        );
        assert_eq!(a.established().count(), 0);
    }
}
