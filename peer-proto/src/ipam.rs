//! Wire types of the `ipam` gossip channel. The logic is in `ipam-crdt`,
//! which converts these to and from its own types and checks them.

use serde::{Deserialize, Serialize};

use crate::PeerName;
use crate::sign::Sig;

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
    /// The routers the sender has removed. Informational on the wire (a
    /// receiver goes by the certificates in `removals` alone); trusted only
    /// when read back from the router's own disk, which is how a state file
    /// from before removal certificates keeps its removals.
    #[serde(default)]
    pub removed: Vec<PeerName>,
    /// Removal certificates, complete or still gathering signatures.
    #[serde(default)]
    pub removals: Vec<RemovalWire>,
    /// Compacted tokens (`ipam-crdt` `ring`): never at a token of
    /// `entries`; together with them at most [`MAX_RING_ENTRIES`].
    #[serde(default)]
    pub tombs: Vec<TombWire>,
}

/// A compacted token: `owner`'s entry at `token` merged into the one
/// before it, as version `version`, at `at_ms` (ms since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TombWire {
    pub token: u32,
    pub owner: PeerName,
    pub version: u32,
    pub at_ms: u64,
}

/// "`peer` is gone for good", with the signatures gathered so far: by
/// `peer` itself, or by routers that own space (`ipam-crdt` `removal`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovalWire {
    pub peer: PeerName,
    pub sigs: Vec<Sig>,
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
    /// The voter's signature over its claims (`ipam-crdt` `wire::claims_statement`).
    #[serde(default)]
    pub sig: Option<Sig>,
}

/// "I, `requester`, have no free address" (signed by the requester, over the
/// ring's cluster and the requester's wall clock, so that it cannot be
/// replayed for ever nor under another name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceRequestWire {
    pub requester: PeerName,
    pub cluster: u64,
    /// The requester's wall clock, ms since the Unix epoch; grows per request.
    pub at_ms: u64,
    pub sig: Sig,
}

/// How many free addresses a router has, as it last said; the highest `seq`
/// from a router wins. Signed by `peer` (over [`FreeHint::statement`]), so a
/// router relays others' hints but cannot make them up: a forged hint would
/// steer every router's space requests to whoever the forger likes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreeHint {
    pub peer: PeerName,
    pub seq: u64,
    pub free: u64,
    pub sig: Sig,
}

/// The domain of free-space hint signatures.
pub const FREE_DOMAIN: &str = "weft/free/1";

impl FreeHint {
    /// What `sig` covers: the hint under the ring's cluster, so that a hint
    /// cannot be replayed into another mesh.
    pub fn statement(&self, cluster: Option<u64>) -> (PeerName, Option<u64>, u64, u64) {
        (self.peer, cluster, self.seq, self.free)
    }
}

/// Messages of the `ipam` channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IpamMsg {
    /// The sender's ring and what it knows of the bootstrap consensus.
    State {
        ring: RingWire,
        consensus: Vec<ClaimsWire>,
        free: Vec<FreeHint>,
        /// The sender's wall clock (ms since the Unix epoch) when it built
        /// this state: a receiver refuses a state older than most of the
        /// removal horizon, which may bring back what the mesh forgot
        /// (`ipam-crdt` `channel`, `on_state`).
        at_ms: u64,
    },
    /// "I have no free address; please give me some" (unicast).
    SpaceRequest(SpaceRequestWire),
    /// The ring of a router restarted from a state older than the removal
    /// horizon (`ipam-crdt` `channel`, "stale"): not to be merged by a
    /// router that is not stale itself, since it may bring back what the
    /// mesh forgot; stale routers judge each other's by it when the whole
    /// mesh restarts after the horizon.
    Stale(RingWire),
}

/// Most ring tokens (entries and tombstones) accepted in one message.
pub const MAX_RING_ENTRIES: usize = 1 << 16;
/// Most removed peers, voters, or peers in a consensus value.
pub const MAX_IPAM_PEERS: usize = 1 << 14;

impl IpamMsg {
    /// The limits serde cannot express.
    pub fn validate(&self) -> Result<(), crate::ValidationError> {
        let (ring, consensus, free): (_, &[ClaimsWire], &[FreeHint]) = match self {
            IpamMsg::State {
                ring,
                consensus,
                free,
                ..
            } => (ring, consensus, free),
            IpamMsg::Stale(ring) => (ring, &[], &[]),
            IpamMsg::SpaceRequest(_) => return Ok(()),
        };
        let too_many = ring.entries.len() + ring.tombs.len() > MAX_RING_ENTRIES
            || free.len() > MAX_IPAM_PEERS
            || ring.removed.len() > MAX_IPAM_PEERS
            || ring.removals.len() > MAX_IPAM_PEERS
            || ring.removals.iter().any(|r| r.sigs.len() > MAX_IPAM_PEERS)
            || consensus.len() > MAX_IPAM_PEERS
            || consensus.iter().any(|c| {
                c.accepted
                    .as_ref()
                    .is_some_and(|(_, v)| v.len() > MAX_IPAM_PEERS)
            });
        if too_many {
            return Err(crate::ValidationError::TooManyEntries);
        }
        Ok(())
    }
}

/// A run of `count` consecutive blocks at one owner and version (`ipam-crdt`
/// `ledger`): a view of the ledger is a few runs per router, not one entry
/// per block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRunWire {
    pub owner: PeerName,
    pub version: u32,
    pub count: u32,
}

/// A checkpoint: the blocks a prefix of the ledger's order leaves, and
/// those disputed, at `at_ms` (0: the seed layout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointWire {
    pub at_ms: u64,
    pub runs: Vec<BlockRunWire>,
    pub disputed: Vec<u32>,
}

/// An owner's signature on the digest of its prefix of `at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteWire {
    pub at_ms: u64,
    pub digest: [u8; 32],
    pub sig: Sig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepKindWire {
    Give,
    Inherit,
}

/// A signed change of blocks `first .. first + count` from `(from,
/// from_version)` to `to`, stamped `at_ms` by its signer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepWire {
    pub at_ms: u64,
    pub kind: StepKindWire,
    pub first: u32,
    pub count: u32,
    pub from: PeerName,
    pub from_version: u32,
    pub to: PeerName,
    pub sig: Sig,
}

/// What a router's block ledger holds: its base (a checkpoint, with the
/// votes that made it; none for the seed layout), the signed steps above
/// it, removal certificates, and votes and checkpoints not passed yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerWire {
    pub start: u32,
    /// Exclusive; up to 2^32.
    pub end: u64,
    pub cluster: Option<u64>,
    pub base: CheckpointWire,
    pub base_votes: Vec<VoteWire>,
    pub steps: Vec<StepWire>,
    pub removals: Vec<RemovalWire>,
    pub votes: Vec<VoteWire>,
    pub offered: Vec<CheckpointWire>,
}

/// Most blocks of a ledger (a /12 in blocks of 64 addresses): runs, and
/// disputed blocks, per checkpoint.
pub const MAX_LEDGER_BLOCKS: usize = 1 << 14;
/// Most steps in one ledger message (about 180 bytes each).
pub const MAX_LEDGER_STEPS: usize = 1 << 12;
/// Most checkpoints offered in one ledger message.
pub const MAX_LEDGER_OFFERED: usize = 4;

impl LedgerWire {
    /// The limits serde cannot express.
    pub fn validate(&self) -> Result<(), crate::ValidationError> {
        let checkpoint_too_big = |c: &CheckpointWire| {
            c.runs.len() > MAX_LEDGER_BLOCKS || c.disputed.len() > MAX_LEDGER_BLOCKS
        };
        let too_many = checkpoint_too_big(&self.base)
            || self.offered.len() > MAX_LEDGER_OFFERED
            || self.offered.iter().any(checkpoint_too_big)
            || self.steps.len() > MAX_LEDGER_STEPS
            || self.base_votes.len() > MAX_IPAM_PEERS
            || self.votes.len() > MAX_IPAM_PEERS
            || self.removals.len() > MAX_IPAM_PEERS
            || self.removals.iter().any(|r| r.sigs.len() > MAX_IPAM_PEERS);
        if too_many {
            return Err(crate::ValidationError::TooManyEntries);
        }
        Ok(())
    }
}
