//! The one place that knows frames are bincode 2. Swap the encoding here.

use crate::limits::MAX_FRAME_LEN;
use crate::{Frame, ValidationError};

/// Why bytes from a peer were not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after frame")]
    Trailing(usize),
    #[error("frame breaks a limit: {0}")]
    Invalid(#[from] ValidationError),
    #[error("cannot encode frame: {0}")]
    Encode(String),
}

impl CodecError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            CodecError::TooLarge(_) => "too_large",
            CodecError::Malformed(_) => "malformed",
            CodecError::Trailing(_) => "trailing",
            CodecError::Invalid(_) => "invalid",
            CodecError::Encode(_) => "encode",
        }
    }
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_FRAME_LEN>()
}

/// Encodes `frame` (without length prefix).
pub fn encode_frame(frame: &Frame) -> Result<Vec<u8>, CodecError> {
    let v = bincode::serde::encode_to_vec(frame, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    if v.len() > MAX_FRAME_LEN {
        return Err(CodecError::TooLarge(v.len()));
    }
    Ok(v)
}

/// Decodes one whole frame; every byte must be consumed.
pub fn decode_frame(bytes: &[u8]) -> Result<Frame, CodecError> {
    if bytes.len() > MAX_FRAME_LEN {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    let (frame, used): (Frame, usize) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    frame.validate()?;
    Ok(frame)
}

/// Appends the encoding of `value` to `out`: the bytes signatures cover
/// (see [`crate::sign`]). Deterministic: the same value, the same bytes.
pub fn encode_into<T: serde::Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let v = bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    out.extend_from_slice(&v);
    Ok(())
}

/// Encodes a gossip payload, refusing one larger than a receiver takes.
fn encode_gossip<T: serde::Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    let v = bincode::serde::encode_to_vec(msg, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    if v.len() > crate::limits::MAX_GOSSIP_PAYLOAD {
        return Err(CodecError::TooLarge(v.len()));
    }
    Ok(v)
}

/// Decodes a whole gossip payload, with the same guarantees as
/// [`decode_frame`] but the limits `validate` checks after.
fn decode_gossip<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > crate::limits::MAX_GOSSIP_PAYLOAD {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    let (msg, used): (T, usize) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(CodecError::Trailing(bytes.len() - used));
    }
    Ok(msg)
}

/// Encodes an `ipam` channel message.
pub fn encode_ipam(msg: &crate::ipam::IpamMsg) -> Result<Vec<u8>, CodecError> {
    encode_gossip(msg)
}

/// Decodes a whole `ipam` channel message, with the same guarantees as
/// [`decode_frame`].
pub fn decode_ipam(bytes: &[u8]) -> Result<crate::ipam::IpamMsg, CodecError> {
    let msg: crate::ipam::IpamMsg = decode_gossip(bytes)?;
    msg.validate()?;
    Ok(msg)
}

/// Encodes a block ledger (`ipam-crdt` `ledger`), refusing one a receiver
/// would refuse: too large, or past the limits of [`LedgerWire::validate`].
///
/// [`LedgerWire::validate`]: crate::ipam::LedgerWire::validate
pub fn encode_ledger(msg: &crate::ipam::LedgerWire) -> Result<Vec<u8>, CodecError> {
    msg.validate()?;
    encode_gossip(msg)
}

/// Decodes a whole block ledger, with the same guarantees as
/// [`decode_frame`].
pub fn decode_ledger(bytes: &[u8]) -> Result<crate::ipam::LedgerWire, CodecError> {
    let msg: crate::ipam::LedgerWire = decode_gossip(bytes)?;
    msg.validate()?;
    Ok(msg)
}

/// The 4-byte big-endian length prefix that precedes every frame on a stream.
pub fn write_len_prefix(len: usize) -> [u8; 4] {
    // Frames are capped at MAX_FRAME_LEN (4 MiB), well inside u32.
    (len.min(u32::MAX as usize) as u32).to_be_bytes()
}

/// Reads a length prefix and checks it against the limit before anyone
/// allocates a buffer for the frame.
pub fn read_len_prefix(prefix: [u8; 4]) -> Result<usize, CodecError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_LEN {
        return Err(CodecError::TooLarge(len));
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::topology::{PeerEntry, TopologyMsg};
    use crate::*;

    fn samples() -> Vec<Frame> {
        let addr: SocketAddr = "192.0.2.1:6783".parse().unwrap_or_else(|_| unreachable!());
        use crate::sign::Signer as _;
        let key = sign::KeyPair::from_seed([1; 32]);
        vec![
            Frame::Hello(Hello {
                versions: VersionRange { min: 1, max: 1 },
                name: PeerName(7),
                nickname: "node-a".into(),
                uid: 42,
                listen_port: 6783,
                features: Features::DATAGRAMS,
                your_addr: Some(addr),
                nonce: 5,
            }),
            Frame::Goodbye(Goodbye {
                reason: GoodbyeReason::Duplicate,
                message: "dup".into(),
            }),
            Frame::Topology(TopologyMsg::Summary { hash: 9, peers: 3 }),
            Frame::Topology(TopologyMsg::Update {
                entries: vec![PeerEntry::signed(
                    &key,
                    "n".into(),
                    2,
                    3,
                    vec![addr],
                    vec![PeerName(4)],
                    [8; 32],
                )],
            }),
            Frame::Gossip(GossipMsg::signed(
                &key,
                ChannelName::new("ipam").unwrap_or_else(|_| unreachable!()),
                Verb::Unicast {
                    src: key.name(),
                    dst: PeerName(2),
                },
                7,
                limits::MAX_HOPS,
                vec![1, 2, 3],
            )),
            Frame::DataOffer(DataOffer {
                port: 6784,
                index: 0xdead_beef,
                mtu: 1432,
            }),
        ]
    }

    #[test]
    fn roundtrip() {
        for f in samples() {
            let bytes = encode_frame(&f).expect("encode");
            assert_eq!(decode_frame(&bytes).expect("decode"), f);
        }
    }

    #[test]
    fn truncations_and_trailing_bytes_are_errors() {
        for f in samples() {
            let bytes = encode_frame(&f).expect("encode");
            for cut in 0..bytes.len() {
                assert!(decode_frame(&bytes[..cut]).is_err(), "{f:?} cut at {cut}");
            }
            let mut long = bytes.clone();
            long.push(0);
            assert!(matches!(decode_frame(&long), Err(CodecError::Trailing(1))));
        }
    }

    #[test]
    fn ipam_roundtrip_and_truncation() {
        use crate::ipam::*;
        use crate::sign::{KeyPair, Signer};
        let key = KeyPair::from_seed([3; 32]);
        let msg = IpamMsg::State {
            ring: RingWire {
                start: 10,
                end: 1 << 32,
                cluster: Some(3),
                entries: vec![EntryWire {
                    token: 10,
                    owner: PeerName(1),
                    version: 2,
                }],
                removed: vec![PeerName(9)],
                removals: vec![RemovalWire {
                    peer: PeerName(9),
                    sigs: vec![key.sign("weft-test", &9u64)],
                }],
                tombs: vec![TombWire {
                    token: 20,
                    owner: PeerName(1),
                    version: 3,
                    at_ms: 1_764_000_000_000,
                }],
            },
            consensus: vec![ClaimsWire {
                voter: PeerName(1),
                promise: Some(BallotWire {
                    round: 1,
                    proposer: PeerName(1),
                }),
                accepted: Some((
                    BallotWire {
                        round: 1,
                        proposer: PeerName(1),
                    },
                    vec![PeerName(1), PeerName(2)],
                )),
                sig: Some(key.sign("weft-test", &1u64)),
            }],
            free: vec![FreeHint {
                peer: PeerName(1),
                seq: 4,
                free: 100,
                sig: key.sign("weft-test", &4u64),
            }],
            at_ms: 1_764_000_000_123,
        };
        let bytes = encode_ipam(&msg).expect("encode");
        assert_eq!(decode_ipam(&bytes).expect("decode"), msg);
        for cut in 0..bytes.len() {
            assert!(decode_ipam(&bytes[..cut]).is_err());
        }
        let ask = IpamMsg::SpaceRequest(SpaceRequestWire {
            requester: key.name(),
            cluster: 3,
            at_ms: 17,
            sig: key.sign("weft-test", &17u64),
        });
        assert_eq!(
            decode_ipam(&encode_ipam(&ask).expect("encode")).ok(),
            Some(ask)
        );
    }

    #[test]
    fn huge_length_claims_do_not_allocate() {
        // Variant 2 (Topology), variant 1 (Digest), then a u64 varint length of ~2^60.
        let bytes = [2u8, 1, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0x10];
        assert!(decode_frame(&bytes).is_err());
        assert!(read_len_prefix([0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn semantic_limits_enforced() {
        let f = Frame::Hello(Hello {
            versions: VersionRange { min: 1, max: 1 },
            name: PeerName(7),
            nickname: "x".repeat(65),
            uid: 0,
            listen_port: 1,
            features: Features::default(),
            your_addr: None,
            nonce: 0,
        });
        let bytes = encode_frame(&f).expect("encode");
        assert!(matches!(
            decode_frame(&bytes),
            Err(CodecError::Invalid(ValidationError::Nickname))
        ));
    }
}
