//! What the core hands its driver: frames to send, actions to carry out and
//! events worth a log line, queued in order.

use std::collections::VecDeque;
use std::net::SocketAddr;

use weft_peer_proto::{Frame, GoodbyeReason, PeerName};

/// The driver's handle for one peer session.
pub type SessionId = u64;

/// A frame for the driver to send on a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub session: SessionId,
    pub frame: Frame,
}

/// Something the driver must do besides sending frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a session to this address; report with `connection_up` or `dial_failed`.
    Dial(SocketAddr),
    /// Send any queued transmits, then a goodbye, then close the session.
    /// Report the close with `connection_down`.
    Close {
        session: SessionId,
        reason: GoodbyeReason,
        message: String,
    },
}

/// Worth a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MeshEvent {
    Connected {
        peer: PeerName,
        nickname: String,
        addr: SocketAddr,
        outbound: bool,
    },
    Disconnected {
        peer: PeerName,
        nickname: String,
        reason: String,
    },
    Rejected {
        addr: SocketAddr,
        peer: PeerName,
        reason: GoodbyeReason,
    },
    PeerRemoved {
        peer: PeerName,
        nickname: String,
    },
    ChannelError {
        channel: String,
        src: PeerName,
        error: String,
    },
    /// Two routers are running with one identity (`own`: ours). Queued
    /// at most once per name per [`crate::duplicates::REPORT_INTERVAL`].
    DuplicateIdentity {
        peer: PeerName,
        nickname: String,
        /// The uids seen taking turns, the current one first.
        uids: Vec<u64>,
        own: bool,
        returns: u64,
    },
}
/// The three queues the driver drains after every input.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pub(crate) transmits: VecDeque<Transmit>,
    pub(crate) actions: VecDeque<Action>,
    pub(crate) events: VecDeque<MeshEvent>,
}

impl Outbox {
    pub(crate) fn send(&mut self, session: SessionId, frame: Frame) {
        self.transmits.push_back(Transmit { session, frame });
    }

    pub(crate) fn act(&mut self, a: Action) {
        self.actions.push_back(a);
    }

    pub(crate) fn event(&mut self, e: MeshEvent) {
        self.events.push_back(e);
    }
}
