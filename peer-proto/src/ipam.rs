//! Wire types of the `ipam` gossip channel. The logic is in `ipam-crdt`,
//! which converts these to and from its own types and checks them.

use serde::{Deserialize, Serialize};

use crate::PeerName;

/// One ring entry: `owner` owns from `token` up to the next token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryWire {
    pub token: u32,
    pub owner: PeerName,
    pub version: u32,
}

/// The whole ring (it is small: a few entries per router).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingWire {
    pub start: u32,
    /// Exclusive; up to 2^32.
    pub end: u64,
    pub cluster: Option<u64>,
    pub entries: Vec<EntryWire>,
    pub removed: Vec<PeerName>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BallotWire {
    pub round: u64,
    pub proposer: PeerName,
}

/// One voter's consensus claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimsWire {
    pub voter: PeerName,
    pub promise: Option<BallotWire>,
    pub accepted: Option<(BallotWire, Vec<PeerName>)>,
}

/// How many free addresses a router has, as it last said; the highest `seq`
/// from a router wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreeHint {
    pub peer: PeerName,
    pub seq: u64,
    pub free: u64,
}

/// Messages of the `ipam` channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IpamMsg {
    /// The sender's ring and what it knows of the bootstrap consensus.
    State {
        ring: RingWire,
        consensus: Vec<ClaimsWire>,
        free: Vec<FreeHint>,
    },
    /// "I have no free address; please give me some" (unicast).
    SpaceRequest,
}

/// Most ring entries accepted in one message.
pub const MAX_RING_ENTRIES: usize = 1 << 16;
/// Most removed peers, voters, or peers in a consensus value.
pub const MAX_IPAM_PEERS: usize = 1 << 14;

impl IpamMsg {
    /// The limits serde cannot express.
    pub fn validate(&self) -> Result<(), crate::ValidationError> {
        if let IpamMsg::State {
            ring,
            consensus,
            free,
        } = self
        {
            let too_many = ring.entries.len() > MAX_RING_ENTRIES
                || free.len() > MAX_IPAM_PEERS
                || ring.removed.len() > MAX_IPAM_PEERS
                || consensus.len() > MAX_IPAM_PEERS
                || consensus.iter().any(|c| {
                    c.accepted
                        .as_ref()
                        .is_some_and(|(_, v)| v.len() > MAX_IPAM_PEERS)
                });
            if too_many {
                return Err(crate::ValidationError::TooManyEntries);
            }
        }
        Ok(())
    }
}
