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

use weft_peer_proto::{ChannelName, PeerName};

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
pub enum ChannelSend {
    Unicast { dst: PeerName, payload: Vec<u8> },
    Broadcast(Vec<u8>),
    Gossip(Vec<u8>),
}

/// A channel's outgoing queue. The mesh drains it in
/// [`Mesh::poll_transmit`](crate::Mesh::poll_transmit): after the driver has persisted what the last
/// input changed.
#[derive(Debug, Default)]
pub struct GossipSender {
    queue: VecDeque<ChannelSend>,
}

impl GossipSender {
    /// Sends `payload` hop by hop to `dst`'s instance of the channel.
    pub fn unicast(&mut self, dst: PeerName, payload: Vec<u8>) {
        self.queue.push_back(ChannelSend::Unicast { dst, payload });
    }

    /// Sends `payload` to every reachable router's instance of the channel.
    pub fn broadcast(&mut self, payload: Vec<u8>) {
        self.queue.push_back(ChannelSend::Broadcast(payload));
    }

    /// Gossips `payload` (news of ours) to a few neighbours.
    pub fn gossip(&mut self, payload: Vec<u8>) {
        self.queue.push_back(ChannelSend::Gossip(payload));
    }

    /// Drops everything queued (a channel that stopped, say).
    pub fn clear(&mut self) {
        self.queue.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The oldest queued message (the mesh takes them in order).
    pub fn pop(&mut self) -> Option<ChannelSend> {
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
