//! The seam between the mesh and what rides on it (IPAM and later channels),
//! after weaveworks/mesh's `Gossiper`: a channel never sees a socket or a peer
//! session, only bytes and the name of the peer that originated them.

use std::any::Any;

use weft_peer_proto::PeerName;

/// A payload a channel could not accept. Counted and logged by the mesh; it
/// never tears down the session it arrived on.
#[derive(Debug, thiserror::Error)]
#[error("channel rejected message: {0}")]
pub struct ChannelError(pub String);

/// Receives the messages of one named channel.
pub trait GossipChannel: Send {
    /// A message addressed to us with [`super::Mesh::unicast`].
    fn on_unicast(&mut self, src: PeerName, payload: &[u8]) -> Result<(), ChannelError>;
    /// A message `src` sent to everyone with [`super::Mesh::broadcast`].
    fn on_broadcast(&mut self, src: PeerName, payload: &[u8]) -> Result<(), ChannelError>;
    /// Gossiped state: merge it and return only what was news (encoded), or
    /// `None`. The mesh relays the news to a few neighbours.
    fn on_gossip(&mut self, payload: &[u8]) -> Result<Option<Vec<u8>>, ChannelError>;
    /// The complete state, sent to new neighbours and periodically to a
    /// random one (`None` when there is nothing to say).
    fn full_state(&mut self) -> Option<Vec<u8>>;
    /// For the owner to reach its concrete type.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}
