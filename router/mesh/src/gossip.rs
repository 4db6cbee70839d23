//! Gossip channels: what rides on the mesh (IPAM, and later others), after
//! weaveworks/mesh's `Gossiper` and `Gossip`. A channel never sees a socket
//! or a session, only bytes and the name of the router that originated
//! them, and it sends through its own [`GossipSender`] with three verbs:
//!
//! - unicast: hop by hop along unicast routes to one router;
//! - broadcast: down the source's spanning tree to every reachable router;
//! - gossip: to a few neighbours, relayed onwards only while it is news
//!   (what [`GossipChannel::on_gossip`] returns is the delta relayed).
//!
//! The mesh owns its channels as `C: Channels`, so that the driver reaches a
//! channel's own methods (`mesh.channels_mut()`) with its type intact.

use std::collections::VecDeque;
use std::time::Instant;

use rand::seq::SliceRandom;
use weft_peer_proto::{ChannelName, Frame, GossipMsg, PeerName, Verb};

use crate::mesh::Mesh;
use crate::outbox::{MeshEvent, SessionId, Transmit};

/// A payload a channel could not accept. Counted and logged by the mesh; it
/// never tears down the session it arrived on.
#[derive(Debug, thiserror::Error)]
#[error("channel rejected message: {0}")]
pub struct ChannelError(pub String);

/// One named channel: what it does with what arrives.
pub trait GossipChannel: Send {
    fn name(&self) -> &ChannelName;
    /// A message addressed to us ([`GossipSender::unicast`] at `src`).
    fn on_unicast(
        &mut self,
        now: Instant,
        src: PeerName,
        payload: &[u8],
    ) -> Result<(), ChannelError>;
    /// A message `src` sent to everyone ([`GossipSender::broadcast`]).
    fn on_broadcast(
        &mut self,
        now: Instant,
        src: PeerName,
        payload: &[u8],
    ) -> Result<(), ChannelError>;
    /// Gossiped state: merge it and return only what was news (encoded), or
    /// `None`. The mesh relays the news to a few neighbours at once, so a
    /// channel whose news must first be persisted returns `None` and queues
    /// it on its sender once it is.
    fn on_gossip(&mut self, now: Instant, payload: &[u8]) -> Result<Option<Vec<u8>>, ChannelError>;
    /// The complete state, sent to new neighbours and periodically to a
    /// random one (`None` when there is nothing to say).
    fn full_state(&mut self, now: Instant) -> Option<Vec<u8>>;
    /// Where the channel queues what it sends of its own accord.
    fn sender(&mut self) -> &mut GossipSender;
}

/// A message a channel queued, with the verb to send it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    Unicast { dst: PeerName, payload: Vec<u8> },
    Broadcast(Vec<u8>),
    Gossip(Vec<u8>),
}

/// A channel's outgoing queue. The mesh drains it in
/// [`Mesh::poll_transmit`]: after the driver has persisted what the last
/// input changed.
#[derive(Debug, Default)]
pub struct GossipSender {
    queue: VecDeque<Outgoing>,
}

impl GossipSender {
    /// Sends `payload` hop by hop to `dst`'s instance of the channel.
    pub fn unicast(&mut self, dst: PeerName, payload: Vec<u8>) {
        self.queue.push_back(Outgoing::Unicast { dst, payload });
    }

    /// Sends `payload` to every reachable router's instance of the channel.
    pub fn broadcast(&mut self, payload: Vec<u8>) {
        self.queue.push_back(Outgoing::Broadcast(payload));
    }

    /// Gossips `payload` (news of ours) to a few neighbours.
    pub fn gossip(&mut self, payload: Vec<u8>) {
        self.queue.push_back(Outgoing::Gossip(payload));
    }

    /// Drops everything queued (a channel that stopped, say).
    pub fn clear(&mut self) {
        self.queue.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    fn pop(&mut self) -> Option<Outgoing> {
        self.queue.pop_front()
    }
}

/// The set of channels a mesh carries.
pub trait Channels: Send {
    /// The channel called `name`, if this router runs it.
    fn get(&mut self, name: &ChannelName) -> Option<&mut dyn GossipChannel>;
    /// Calls `f` on every channel, always in the same order.
    fn each(&mut self, f: &mut dyn FnMut(&mut dyn GossipChannel));
}

/// A mesh that carries only its own topology.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoChannels;

impl Channels for NoChannels {
    fn get(&mut self, _: &ChannelName) -> Option<&mut dyn GossipChannel> {
        None
    }
    fn each(&mut self, _: &mut dyn FnMut(&mut dyn GossipChannel)) {}
}

/// One channel is a set of channels.
impl<T: GossipChannel> Channels for T {
    fn get(&mut self, name: &ChannelName) -> Option<&mut dyn GossipChannel> {
        (self.name() == name).then_some(self as &mut dyn GossipChannel)
    }
    fn each(&mut self, f: &mut dyn FnMut(&mut dyn GossipChannel)) {
        f(self)
    }
}

impl<C: Channels> Mesh<C> {
    pub(crate) fn handle_gossip(
        &mut self,
        now: Instant,
        conn: SessionId,
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
                    self.relay(Frame::Gossip(out), Some(conn));
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
        if let Some(&conn) = self.by_peer.get(&peer) {
            self.out.transmits.push_back(Transmit {
                session: conn,
                frame,
            });
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
        for conn in ids.into_iter().take(self.cfg.fanout) {
            self.out.transmits.push_back(Transmit {
                session: conn,
                frame: frame.clone(),
            });
        }
    }

    /// Every channel's complete state, to one session.
    pub(crate) fn send_full_states(&mut self, now: Instant, conn: SessionId) {
        let mut states = Vec::new();
        self.channels.each(&mut |c| {
            if let Some(s) = c.full_state(now) {
                states.push((c.name().clone(), s));
            }
        });
        for (channel, payload) in states {
            self.out.send(
                conn,
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

    fn send_out(&mut self, channel: ChannelName, o: Outgoing) {
        let src = self.cfg.name;
        match o {
            Outgoing::Unicast { dst, payload } if dst == src => {
                let now = self.now;
                self.deliver(&channel, src, |c| {
                    c.on_unicast(now, src, &payload).map(|_| None)
                });
            }
            Outgoing::Unicast { dst, payload } => {
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
            Outgoing::Broadcast(payload) => {
                let msg = GossipMsg {
                    channel,
                    verb: Verb::Broadcast { src },
                    payload,
                };
                for child in self.routes().broadcast_children(src) {
                    self.send_to_peer(child, Frame::Gossip(msg.clone()));
                }
            }
            Outgoing::Gossip(payload) => {
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
