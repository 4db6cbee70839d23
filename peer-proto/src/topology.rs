//! Wire types of the topology channel: who is connected to whom.
//!
//! The merge logic lives in the router's mesh core; these are only the bytes.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::PeerName;

/// What one peer says about itself. Only that peer changes it; a higher
/// `(version, uid)` wins on merge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEntry {
    pub name: PeerName,
    pub nickname: String,
    /// Random per process start, so a restarted peer is told apart.
    pub uid: u64,
    pub version: u64,
    /// Addresses at which others reached this peer (newest first), for
    /// discovery. At most [`crate::limits::MAX_ADDRS_PER_PEER`].
    pub addrs: Vec<SocketAddr>,
    /// Peers this one holds an established session with, sorted.
    pub conns: Vec<PeerName>,
}

impl PeerEntry {
    /// The `(version, uid)` pair merges compare.
    pub fn order_key(&self) -> (u64, u64) {
        (self.version, self.uid)
    }

    pub fn digest(&self) -> DigestEntry {
        DigestEntry {
            name: self.name,
            uid: self.uid,
            version: self.version,
        }
    }
}

/// A peer's entry reduced to what anti-entropy compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DigestEntry {
    pub name: PeerName,
    pub uid: u64,
    pub version: u64,
}

impl DigestEntry {
    pub fn order_key(&self) -> (u64, u64) {
        (self.version, self.uid)
    }
}

/// Messages of the topology channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TopologyMsg {
    /// "My topology hashes to this": the cheap periodic check. A mismatch
    /// is answered with a [`TopologyMsg::Digest`].
    Summary { hash: u64, peers: u32 },
    /// Every entry the sender has, by version. Answered with an update of
    /// what the sender lacks; with `reply`, also with the receiver's digest
    /// when the receiver lacks something.
    Digest {
        entries: Vec<DigestEntry>,
        reply: bool,
    },
    /// Entries that are news to the receiver.
    Update { entries: Vec<PeerEntry> },
}
