use serde::{Deserialize, Serialize};

use crate::PeerName;
use crate::limits::*;
use crate::sign::{Sig, SignError, Signer};
use crate::topology::TopologyMsg;

/// One unit on a peer session's control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// First frame in each direction.
    Hello(Hello),
    /// The sender is closing the session on purpose.
    Goodbye(Goodbye),
    /// The built-in topology channel.
    Topology(TopologyMsg),
    /// Any other named channel (IPAM and later ones).
    Gossip(GossipMsg),
    /// How to reach the sender's data plane on this session: sent each way
    /// after the hello, and again about once a second until a data packet
    /// from the peer shows that the offer arrived.
    DataOffer(DataOffer),
}

/// The sender's data-plane endpoint for one session. The keys themselves are
/// never sent: both ends derive them from the session's TLS exporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataOffer {
    /// UDP port of the sender's data socket (on the session's address).
    pub port: u16,
    /// Put this in the header of every data packet sent to the sender.
    pub index: u32,
    /// Largest inner IP packet the sender accepts (its overlay MTU).
    pub mtu: u16,
}

/// An inclusive range of control-protocol versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRange {
    pub min: u16,
    pub max: u16,
}

impl VersionRange {
    /// The highest version both ranges contain.
    pub fn negotiate(self, other: VersionRange) -> Option<u16> {
        let v = self.max.min(other.max);
        (v >= self.min.max(other.min)).then_some(v)
    }
}

/// Feature bits a peer announces; unknown bits are ignored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Features(pub u64);

impl Features {
    /// The peer accepts QUIC datagrams on the session (data plane).
    pub const DATAGRAMS: Features = Features(1);

    pub fn contains(self, other: Features) -> bool {
        self.0 & other.0 == other.0
    }
}

/// The first frame on a session: who the sender is and what it speaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub versions: VersionRange,
    /// Must match the name derived from the sender's TLS certificate.
    pub name: PeerName,
    pub nickname: String,
    /// Random per process start.
    pub uid: u64,
    /// UDP port the sender accepts sessions on, so that the acceptor can tell
    /// others how to dial it.
    pub listen_port: u16,
    pub features: Features,
    /// The address at which the sender reached (dialer) or sees (acceptor:
    /// source IP and the dialer's `listen_port`) the receiver, so that each
    /// peer learns how others can dial it.
    pub your_addr: Option<std::net::SocketAddr>,
    /// Chosen at random by the dialer and echoed by the acceptor: both ends
    /// break ties between duplicate sessions by it alike.
    pub nonce: u64,
}

/// Why a session is being closed on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GoodbyeReason {
    /// A connection to the same peer already exists and wins the tie-break.
    Duplicate,
    /// The sender has reached its connection limit.
    ConnLimit,
    /// No protocol version in common.
    IncompatibleVersion,
    /// The hello's name does not match the certificate.
    NameMismatch,
    /// The receiver is the sender itself.
    SelfConnection,
    /// The sender is shutting down or was told to forget this peer.
    Shutdown,
    /// The receiver sent something the sender could not accept.
    ProtocolError,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Goodbye {
    pub reason: GoodbyeReason,
    pub message: String,
}

/// Name of a gossip channel: 1 to 32 bytes of `[a-z0-9-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChannelName(String);

impl ChannelName {
    pub fn new(s: &str) -> Result<Self, ValidationError> {
        let ok = !s.is_empty()
            && s.len() <= MAX_CHANNEL_NAME_LEN
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(ChannelName(s.to_owned()))
        } else {
            Err(ValidationError::ChannelName)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How a channel message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verb {
    /// Hop by hop along unicast routes to `dst`.
    Unicast { src: PeerName, dst: PeerName },
    /// Along `src`'s spanning tree to every reachable peer.
    Broadcast { src: PeerName },
    /// To a few neighbours; relayed only when it carried news. Its source
    /// is the signer, which must be the neighbour that sent it (each relay
    /// signs the delta it relays).
    Gossip,
}

/// The signing domain of channel messages.
pub const CHANNEL_DOMAIN: &str = "weft/channel/1";

/// One channel message. Its source signs `(channel, verb, seq, payload)`;
/// relays forward it unchanged but for `hops`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipMsg {
    pub channel: ChannelName,
    pub verb: Verb,
    /// Unique per source incarnation (a random start, then counted up):
    /// receivers drop what they saw by `(source, seq)`.
    pub seq: u64,
    /// Relays left: each relay takes one, and a message at 0 is not relayed.
    /// Not signed (relays change it); at most [`MAX_HOPS`].
    pub hops: u8,
    pub payload: Vec<u8>,
    /// By the source, whose key hashes to [`GossipMsg::source`].
    pub sig: Sig,
}

/// What a channel message's signature covers.
#[derive(Serialize)]
struct GossipBody<'a> {
    channel: &'a ChannelName,
    verb: Verb,
    seq: u64,
    payload: &'a [u8],
}

impl GossipMsg {
    /// A message from `signer` (which must be the verb's `src`).
    pub fn signed<S: Signer>(
        signer: &S,
        channel: ChannelName,
        verb: Verb,
        seq: u64,
        hops: u8,
        payload: Vec<u8>,
    ) -> Self {
        let body = GossipBody {
            channel: &channel,
            verb,
            seq,
            payload: &payload,
        };
        let sig = signer.sign(CHANNEL_DOMAIN, &body);
        GossipMsg {
            channel,
            verb,
            seq,
            hops,
            payload,
            sig,
        }
    }

    /// Who the message claims to come from: the verb's `src`, or for
    /// gossip its signer.
    pub fn source(&self) -> PeerName {
        match self.verb {
            Verb::Unicast { src, .. } | Verb::Broadcast { src } => src,
            Verb::Gossip => self.sig.signer(),
        }
    }

    /// The bytes the signature covers.
    pub fn signing_bytes(&self) -> Result<Vec<u8>, SignError> {
        crate::sign::signing_bytes(CHANNEL_DOMAIN, &self.body())
    }

    fn body(&self) -> GossipBody<'_> {
        GossipBody {
            channel: &self.channel,
            verb: self.verb,
            seq: self.seq,
            payload: &self.payload,
        }
    }

    /// Checks that [`GossipMsg::source`] signed the message.
    pub fn verify(&self) -> Result<(), SignError> {
        self.sig
            .verify_by(self.source(), CHANNEL_DOMAIN, &self.body())
    }
}

/// A frame that decoded but breaks a semantic limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    #[error("nickname longer than {MAX_NICKNAME_LEN} bytes")]
    Nickname,
    #[error("invalid channel name")]
    ChannelName,
    #[error("too many entries in one message")]
    TooManyEntries,
    #[error("peer entry lists too many connections or addresses")]
    TooManyConns,
    #[error("gossip payload larger than {MAX_GOSSIP_PAYLOAD} bytes")]
    PayloadTooLarge,
    #[error("goodbye message too long")]
    GoodbyeMessage,
    #[error("empty version range")]
    VersionRange,
    #[error("hop limit above {MAX_HOPS}")]
    Hops,
    #[error("data offer with port 0 or an MTU below {MIN_DATA_MTU}")]
    DataOffer,
}

/// The smallest overlay MTU a peer may offer (the IPv4 minimum reassembly size).
pub const MIN_DATA_MTU: u16 = 576;

impl Frame {
    /// Checks the limits serde cannot express. [`crate::codec::decode_frame`]
    /// calls it on everything it returns.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            Frame::Hello(h) => {
                if h.nickname.len() > MAX_NICKNAME_LEN {
                    return Err(ValidationError::Nickname);
                }
                if h.versions.min > h.versions.max {
                    return Err(ValidationError::VersionRange);
                }
            }
            Frame::Goodbye(g) => {
                if g.message.len() > MAX_GOODBYE_MSG_LEN {
                    return Err(ValidationError::GoodbyeMessage);
                }
            }
            Frame::Topology(TopologyMsg::Summary { .. }) => {}
            Frame::Topology(TopologyMsg::Digest { entries, .. }) => {
                if entries.len() > MAX_DIGEST_ENTRIES {
                    return Err(ValidationError::TooManyEntries);
                }
            }
            Frame::Topology(TopologyMsg::Update { entries }) => {
                if entries.len() > MAX_ENTRIES_PER_UPDATE {
                    return Err(ValidationError::TooManyEntries);
                }
                for e in entries {
                    if e.nickname.len() > MAX_NICKNAME_LEN {
                        return Err(ValidationError::Nickname);
                    }
                    if e.conns.len() > MAX_CONNS_PER_PEER || e.addrs.len() > MAX_ADDRS_PER_PEER {
                        return Err(ValidationError::TooManyConns);
                    }
                }
            }
            Frame::Gossip(g) => {
                ChannelName::new(g.channel.as_str())?;
                if g.payload.len() > MAX_GOSSIP_PAYLOAD {
                    return Err(ValidationError::PayloadTooLarge);
                }
                if g.hops > MAX_HOPS {
                    return Err(ValidationError::Hops);
                }
            }
            Frame::DataOffer(o) => {
                if o.port == 0 || o.mtu < MIN_DATA_MTU {
                    return Err(ValidationError::DataOffer);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_negotiation() {
        let r = |min, max| VersionRange { min, max };
        assert_eq!(r(1, 3).negotiate(r(2, 5)), Some(3));
        assert_eq!(r(1, 1).negotiate(r(1, 1)), Some(1));
        assert_eq!(r(1, 2).negotiate(r(3, 4)), None);
        assert_eq!(r(3, 4).negotiate(r(1, 2)), None);
    }

    #[test]
    fn channel_names() {
        assert!(ChannelName::new("ipam").is_ok());
        assert!(ChannelName::new("").is_err());
        assert!(ChannelName::new("IPAM").is_err());
        assert!(ChannelName::new(&"a".repeat(33)).is_err());
    }
}
