//! How the mesh carries its channels' messages: the three verbs on the
//! wire, delivery to the local channel, relaying gossip that was news, and
//! the channels' full states for new and random neighbours.
//!
//! Every message is signed by its source (for gossip: by the neighbour that
//! sent it, which signs the delta it relays). A message is checked once,
//! before anything else is done with it: a forged one is dropped and
//! counted, never delivered or relayed, and the session that carried it
//! stays up (the liar may be further back). Messages are remembered by
//! `(source, seq)` in a bounded window, so a copy that loops back or
//! arrives twice is dropped without another check; and each relay takes
//! one from the message's hop limit, so whatever the routes, a message
//! dies out.

use std::collections::{HashSet, VecDeque};
use std::time::Instant;

use rand::seq::SliceRandom;
use weft_peer_proto::{ChannelName, Frame, GossipMsg, PeerName, Verb};

use crate::channel::{ChannelError, ChannelSend, Channels, GossipChannel};
use crate::mesh::Mesh;
use crate::outbox::{MeshEvent, SessionId, Transmit};

/// The last `capacity` message ids seen; the oldest is forgotten first.
#[derive(Debug)]
pub(crate) struct Seen {
    capacity: usize,
    set: HashSet<(PeerName, u64)>,
    order: VecDeque<(PeerName, u64)>,
}

impl Seen {
    pub(crate) fn new(capacity: usize) -> Self {
        Seen {
            capacity: capacity.max(1),
            set: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    pub(crate) fn contains(&self, id: &(PeerName, u64)) -> bool {
        self.set.contains(id)
    }

    pub(crate) fn insert(&mut self, id: (PeerName, u64)) {
        if self.set.insert(id) {
            self.order.push_back(id);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

impl<C: Channels> Mesh<C> {
    pub(crate) fn handle_gossip(
        &mut self,
        now: Instant,
        session: SessionId,
        from: PeerName,
        mut msg: GossipMsg,
    ) {
        let src = msg.source();
        let id = (src, msg.seq);
        if self.seen.contains(&id) {
            self.counters.duplicates += 1;
            return;
        }
        if msg.verb == Verb::Gossip && src != from {
            // Gossip is between neighbours: whoever sent it signs it.
            self.counters.forged.channel_source += 1;
            return;
        }
        if self.cfg.sig_cache.check_msg(&msg).is_err() {
            self.counters.forged.channel_signature += 1;
            return;
        }
        self.seen.insert(id);
        // What a relay of this message may still do.
        let relayable = msg.hops > 0;
        msg.hops = msg.hops.saturating_sub(1);
        match msg.verb {
            Verb::Unicast { dst, .. } if dst == self.cfg.name => {
                self.deliver(&msg.channel, src, |c| {
                    c.on_unicast(now, src, &msg.payload).map(|_| None)
                });
            }
            Verb::Unicast { dst, .. } => {
                if !relayable {
                    self.counters.hop_limit += 1;
                } else if let Some(hop) = self.routes().next_hop(dst) {
                    self.send_to_peer(hop, Frame::Gossip(msg));
                } else {
                    self.counters.unroutable += 1;
                }
            }
            Verb::Broadcast { .. } if self.topology.get(&src).is_none() => {
                // Trees are per source: an unknown one would only grow our cache.
                self.counters.unknown_source += 1;
            }
            Verb::Broadcast { .. } => {
                self.deliver(&msg.channel, src, |c| {
                    c.on_broadcast(now, src, &msg.payload).map(|_| None)
                });
                let children: Vec<PeerName> = self
                    .routes()
                    .broadcast_children(src)
                    .into_iter()
                    .filter(|c| *c != from)
                    .collect();
                if !relayable && !children.is_empty() {
                    self.counters.hop_limit += 1;
                    return;
                }
                for child in children {
                    self.send_to_peer(child, Frame::Gossip(msg.clone()));
                }
            }
            Verb::Gossip => {
                let news = self.deliver(&msg.channel, from, |c| c.on_gossip(now, &msg.payload));
                if let Some(delta) = news {
                    if !relayable {
                        self.counters.hop_limit += 1;
                        return;
                    }
                    let out = self.sign(msg.channel, Verb::Gossip, msg.hops, delta);
                    self.relay(Frame::Gossip(out), Some(session));
                }
            }
        }
    }

    /// A message of ours, signed, with the next sequence number (which we
    /// remember, so that it dies here if it comes back).
    fn sign(&mut self, channel: ChannelName, verb: Verb, hops: u8, payload: Vec<u8>) -> GossipMsg {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.seen.insert((self.cfg.name, seq));
        GossipMsg::signed(&*self.cfg.signer, channel, verb, seq, hops, payload)
    }

    fn deliver(
        &mut self,
        channel: &ChannelName,
        src: PeerName,
        f: impl FnOnce(&mut dyn GossipChannel) -> Result<Option<Vec<u8>>, ChannelError>,
    ) -> Option<Vec<u8>> {
        let Some(c) = self.channels.get(channel) else {
            self.counters.unknown_channel += 1;
            return None;
        };
        match f(c) {
            Ok(news) => news,
            Err(e) => {
                self.counters.channel_errors += 1;
                self.out.event(MeshEvent::ChannelError {
                    channel: channel.as_str().to_owned(),
                    src,
                    error: e.to_string(),
                });
                None
            }
        }
    }

    pub(crate) fn send_to_peer(&mut self, peer: PeerName, frame: Frame) {
        if let Some(&session) = self.by_peer.get(&peer) {
            self.out.transmits.push_back(Transmit { session, frame });
        }
    }

    /// Sends `frame` to `fanout` random neighbours other than `except`.
    pub(crate) fn relay(&mut self, frame: Frame, except: Option<SessionId>) {
        let mut ids: Vec<SessionId> = self
            .sessions
            .keys()
            .copied()
            .filter(|c| Some(*c) != except)
            .collect();
        ids.sort_unstable();
        ids.shuffle(&mut self.rng);
        for session in ids.into_iter().take(self.cfg.fanout) {
            self.out.transmits.push_back(Transmit {
                session,
                frame: frame.clone(),
            });
        }
    }

    /// Every channel's complete state, to one session.
    pub(crate) fn send_full_states(&mut self, now: Instant, session: SessionId) {
        let mut states = Vec::new();
        self.channels.each(&mut |c| {
            if let Some(s) = c.full_state(now) {
                states.push((c.name().clone(), s));
            }
        });
        for (channel, payload) in states {
            let msg = self.sign(channel, Verb::Gossip, self.cfg.hop_limit, payload);
            self.out.send(session, Frame::Gossip(msg));
        }
    }

    /// Moves what the channels queued on their senders into the transmits.
    pub(crate) fn drain_channels(&mut self) {
        let mut queued = Vec::new();
        self.channels.each(&mut |c| {
            let name = c.name().clone();
            while let Some(o) = c.sender().pop() {
                queued.push((name.clone(), o));
            }
        });
        for (channel, o) in queued {
            self.send_out(channel, o);
        }
    }

    fn send_out(&mut self, channel: ChannelName, o: ChannelSend) {
        let src = self.cfg.name;
        let hops = self.cfg.hop_limit;
        match o {
            ChannelSend::Unicast { dst, payload } if dst == src => {
                let now = self.now;
                self.deliver(&channel, src, |c| {
                    c.on_unicast(now, src, &payload).map(|_| None)
                });
            }
            ChannelSend::Unicast { dst, payload } => {
                let Some(hop) = self.routes().next_hop(dst) else {
                    self.counters.unroutable += 1;
                    return;
                };
                let msg = self.sign(channel, Verb::Unicast { src, dst }, hops, payload);
                self.send_to_peer(hop, Frame::Gossip(msg));
            }
            ChannelSend::Broadcast(payload) => {
                let msg = self.sign(channel, Verb::Broadcast { src }, hops, payload);
                for child in self.routes().broadcast_children(src) {
                    self.send_to_peer(child, Frame::Gossip(msg.clone()));
                }
            }
            ChannelSend::Gossip(payload) => {
                let msg = self.sign(channel, Verb::Gossip, hops, payload);
                self.relay(Frame::Gossip(msg), None);
            }
        }
    }
}
