//! The gossip and topology core of a Weft router, sans I/O (after
//! quinn-proto): sessions admitted, topology spread by anti-entropy, routes,
//! dial planning, and the gossip channels that ride on it.
//!
//! [`Mesh`] never touches a socket, a clock or a thread: the driver (the
//! tokio shell in meshd, or the simulation in `tests/`) feeds it inputs,
//! each with the current `now`, and drains what it asks for. Call order,
//! after every input:
//!
//! 1. inputs: [`Mesh::connection_up`], [`Mesh::connection_down`],
//!    [`Mesh::dial_failed`], [`Mesh::handle_frame`], [`Mesh::handle_timeout`]
//!    (when [`Mesh::poll_timeout`] is due), the operator's
//!    [`Mesh::add_target`] / [`Mesh::forget_target`], and whatever the
//!    driver asks of its channels through [`Mesh::channels_mut`];
//! 2. persist what the channels changed, if they keep state on disk;
//! 3. drain [`Mesh::poll_transmit`] (frames to send on a session, the
//!    channels' queued messages among them), then [`Mesh::poll_action`]
//!    (dials to start, sessions to close), then [`Mesh::poll_event`]
//!    (things worth a log line);
//! 4. arm a timer for [`Mesh::poll_timeout`].
//!
//! Randomness comes from the seed in [`Config`], so a simulation that feeds
//! the same inputs gets the same outputs.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::disallowed_methods))]

mod admission;
mod anti_entropy;
mod channel;
mod config;
mod connector;
mod dial;
pub mod duplicates;
mod gossip;
mod mesh;
mod outbox;
pub mod routes;
mod snapshot;
pub mod topology;
mod verify;

pub use admission::Admit;
pub use anti_entropy::ProtocolError;
pub use channel::{ChannelError, ChannelSend, Channels, GossipChannel, GossipSender, NoChannels};
pub use config::Config;
pub use duplicates::{DuplicateReport, DuplicateView};
pub use mesh::{Forged, Mesh, MeshCounters};
pub use outbox::{Action, MeshEvent, SessionId, Transmit};
pub use snapshot::{
    ConnectionState, ConnectionView, MeshSnapshot, PeerView, RouteView, TargetState, TargetView,
};
pub use verify::SigCache;
