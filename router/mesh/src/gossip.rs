//! How the mesh carries its channels' messages: the three verbs on the
//! wire, delivery to the local channel, relaying gossip that was news, and
//! the channels' full states for new and random neighbours.

use std::time::Instant;

use rand::seq::SliceRandom;
use weft_peer_proto::{ChannelName, Frame, GossipMsg, PeerName, Verb};

use crate::channel::{ChannelError, ChannelSend, Channels, GossipChannel};
use crate::mesh::Mesh;
use crate::outbox::{MeshEvent, SessionId, Transmit};

impl<C: Channels> Mesh<C> {
    pub(crate) fn handle_gossip(
        &mut self,
        now: Instant,
        session: SessionId,
        from: PeerName,
        msg: GossipMsg,
    ) {
        match msg.verb {
            Verb::Unicast { src, dst } => {
                if dst == self.cfg.name {
                    self.deliver(&msg.channel, src, |c| {
                        c.on_unicast(now, src, &msg.payload).map(|_| None)
                    });
                } else if let Some(hop) = self.routes().next_hop(dst) {
                    self.send_to_peer(hop, Frame::Gossip(msg));
                } else {
                    self.counters.unroutable += 1;
                }
            }
            Verb::Broadcast { src } if self.topology.get(&src).is_none() => {
                // Trees are per source: an unknown one would only grow our cache.
                self.counters.unknown_source += 1;
            }
            Verb::Broadcast { src } => {
                self.deliver(&msg.channel, src, |c| {
                    c.on_broadcast(now, src, &msg.payload).map(|_| None)
                });
                for child in self.routes().broadcast_children(src) {
                    if child != from {
                        self.send_to_peer(child, Frame::Gossip(msg.clone()));
                    }
                }
            }
            Verb::Gossip => {
                let news = self.deliver(&msg.channel, from, |c| c.on_gossip(now, &msg.payload));
                if let Some(delta) = news {
                    let out = GossipMsg {
                        channel: msg.channel,
                        verb: Verb::Gossip,
                        payload: delta,
                    };
                    self.relay(Frame::Gossip(out), Some(session));
                }
            }
        }
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
            self.out.send(
                session,
                Frame::Gossip(GossipMsg {
                    channel,
                    verb: Verb::Gossip,
                    payload,
                }),
            );
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
                let msg = GossipMsg {
                    channel,
                    verb: Verb::Unicast { src, dst },
                    payload,
                };
                self.send_to_peer(hop, Frame::Gossip(msg));
            }
            ChannelSend::Broadcast(payload) => {
                let msg = GossipMsg {
                    channel,
                    verb: Verb::Broadcast { src },
                    payload,
                };
                for child in self.routes().broadcast_children(src) {
                    self.send_to_peer(child, Frame::Gossip(msg.clone()));
                }
            }
            ChannelSend::Gossip(payload) => {
                let msg = GossipMsg {
                    channel,
                    verb: Verb::Gossip,
                    payload,
                };
                self.relay(Frame::Gossip(msg), None);
            }
        }
    }
}
