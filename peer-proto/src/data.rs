//! The header in front of every encrypted data packet (smoltcp-style view).
//!
//! ```text
//!  0         1         2         4                   8                                  16
//!  +---------+---------+---------+-------------------+----------------------------------+
//!  | version |  kind   | 0 0     | receiver index BE |   counter (BE u64, the nonce)    |
//!  +---------+---------+---------+-------------------+----------------------------------+
//!  only when kind = Relayed:
//!  16                  24                     32                                        48
//!  +-------------------+----------------------+-----------------------------------------+
//!  | origin name (BE)  | origin counter (BE)  | origin tag (16 bytes)                   |
//!  +-------------------+----------------------+-----------------------------------------+
//!  | AEAD ciphertext of the inner IP packet, then the 16-byte tag ...
//! ```
//! The receiver index names the receiving router's per-session state (chosen
//! by the receiver and told to the sender over the session); the counter is the
//! AEAD nonce and the replay-window position, and its top bits select the key
//! epoch. The whole header is the AEAD's associated data of the hop.
//!
//! A relayed packet also carries proof of its origin for its final receiver:
//! the origin's counter and tag under the key only origin and receiver hold
//! ([`crate::origin`]). The origin writes them, relays copy them unchanged,
//! and the receiver checks them, so a relay cannot name another router as
//! the origin of a packet it made.

/// Current data header version.
pub const DATA_VERSION: u8 = 2;

mod field {
    use core::ops::Range;
    pub const VERSION: usize = 0;
    pub const KIND: usize = 1;
    pub const RESERVED: Range<usize> = 2..4;
    pub const INDEX: Range<usize> = 4..8;
    pub const COUNTER: Range<usize> = 8..16;
    pub const ORIGIN: Range<usize> = 16..24;
    pub const ORIGIN_COUNTER: Range<usize> = 24..32;
    pub const ORIGIN_TAG: Range<usize> = 32..48;
}

/// Bytes the header takes for direct packets.
pub const HEADER_LEN: usize = field::COUNTER.end;
/// Bytes the header takes for relayed packets (with the origin and its proof).
pub const RELAYED_HEADER_LEN: usize = field::ORIGIN_TAG.end;
/// The AEAD tag after the ciphertext.
pub const TAG_LEN: usize = 16;
pub use crate::origin::ORIGIN_TAG_LEN;
/// Worst-case bytes a data packet adds to the inner packet, besides IP and UDP.
pub const MAX_OVERHEAD: usize = RELAYED_HEADER_LEN + TAG_LEN;

/// What a data packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    /// An IP packet that the sending router took from its own TUN.
    Ip,
    /// An IP packet that goes through relays: `origin` took it from its
    /// TUN and proved so to the final receiver ([`Relay`]).
    Relayed,
    /// A keep-alive with no payload: proves the path works both ways.
    KeepAlive,
}

impl DataKind {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(DataKind::Ip),
            2 => Some(DataKind::Relayed),
            3 => Some(DataKind::KeepAlive),
            _ => None,
        }
    }
    fn to_byte(self) -> u8 {
        match self {
            DataKind::Ip => 1,
            DataKind::Relayed => 2,
            DataKind::KeepAlive => 3,
        }
    }
}

/// Why a buffer is not a data packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    #[error("data packet shorter than its header and tag")]
    Truncated,
    #[error("unknown data header version {0}")]
    Version(u8),
    #[error("unknown data packet kind {0}")]
    Kind(u8),
    #[error("reserved data header bits are set")]
    Reserved,
}

/// A read/write view of a data packet over any byte buffer.
#[derive(Debug, Clone)]
pub struct DataPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> DataPacket<T> {
    /// Wraps a buffer without checking it.
    pub fn new_unchecked(buffer: T) -> Self {
        DataPacket { buffer }
    }

    /// Wraps a buffer that came from the network; every accessor is then safe,
    /// and the buffer holds at least the header and a tag.
    pub fn new_checked(buffer: T) -> Result<Self, DataError> {
        let p = Self::new_unchecked(buffer);
        let b = p.buffer.as_ref();
        if b.len() < HEADER_LEN + TAG_LEN {
            return Err(DataError::Truncated);
        }
        if b[field::VERSION] != DATA_VERSION {
            return Err(DataError::Version(b[field::VERSION]));
        }
        let kind = DataKind::from_byte(b[field::KIND]).ok_or(DataError::Kind(b[field::KIND]))?;
        if b[field::RESERVED] != [0, 0] {
            return Err(DataError::Reserved);
        }
        if kind == DataKind::Relayed && b.len() < RELAYED_HEADER_LEN + TAG_LEN {
            return Err(DataError::Truncated);
        }
        Ok(p)
    }

    pub fn kind(&self) -> DataKind {
        DataKind::from_byte(self.buffer.as_ref()[field::KIND]).unwrap_or(DataKind::KeepAlive)
    }

    pub fn index(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::INDEX];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    pub fn counter(&self) -> u64 {
        let mut c = [0u8; 8];
        c.copy_from_slice(&self.buffer.as_ref()[field::COUNTER]);
        u64::from_be_bytes(c)
    }

    /// The origin of a relayed packet and its proof.
    pub fn relay(&self) -> Option<Relay> {
        (self.kind() == DataKind::Relayed).then(|| {
            let b = self.buffer.as_ref();
            let mut o = [0u8; 8];
            o.copy_from_slice(&b[field::ORIGIN]);
            let mut c = [0u8; 8];
            c.copy_from_slice(&b[field::ORIGIN_COUNTER]);
            let mut tag = [0u8; ORIGIN_TAG_LEN];
            tag.copy_from_slice(&b[field::ORIGIN_TAG]);
            Relay {
                origin: u64::from_be_bytes(o),
                counter: u64::from_be_bytes(c),
                tag,
            }
        })
    }

    /// Bytes of header (the AEAD's associated data).
    pub fn header_len(&self) -> usize {
        header_len(self.kind())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }
}

/// Header bytes for a kind.
pub const fn header_len(kind: DataKind) -> usize {
    match kind {
        DataKind::Relayed => RELAYED_HEADER_LEN,
        _ => HEADER_LEN,
    }
}

/// What a relayed packet says about its origin, for its final receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relay {
    /// The router that took the packet from its TUN.
    pub origin: u64,
    /// The origin's counter toward the final receiver (the tag's nonce).
    pub counter: u64,
    /// The origin's tag ([`crate::origin::OriginKeys::tag`]).
    pub tag: [u8; ORIGIN_TAG_LEN],
}

/// The parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataRepr {
    pub kind: DataKind,
    pub index: u32,
    pub counter: u64,
    /// Present exactly when `kind` is `Relayed`.
    pub relay: Option<Relay>,
}

impl DataRepr {
    pub fn parse<T: AsRef<[u8]>>(p: &DataPacket<T>) -> Self {
        DataRepr {
            kind: p.kind(),
            index: p.index(),
            counter: p.counter(),
            relay: p.relay(),
        }
    }

    pub const fn buffer_len(&self) -> usize {
        header_len(self.kind)
    }

    /// Writes the header into the first [`Self::buffer_len`] bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), DataError> {
        if buf.len() < self.buffer_len() {
            return Err(DataError::Truncated);
        }
        buf[field::VERSION] = DATA_VERSION;
        buf[field::KIND] = self.kind.to_byte();
        buf[field::RESERVED].copy_from_slice(&[0, 0]);
        buf[field::INDEX].copy_from_slice(&self.index.to_be_bytes());
        buf[field::COUNTER].copy_from_slice(&self.counter.to_be_bytes());
        if self.kind == DataKind::Relayed {
            let r = self.relay.unwrap_or(Relay {
                origin: 0,
                counter: 0,
                tag: [0; ORIGIN_TAG_LEN],
            });
            buf[field::ORIGIN].copy_from_slice(&r.origin.to_be_bytes());
            buf[field::ORIGIN_COUNTER].copy_from_slice(&r.counter.to_be_bytes());
            buf[field::ORIGIN_TAG].copy_from_slice(&r.tag);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_parse_roundtrip() {
        let relay = Relay {
            origin: 0x1122_3344_5566_7788,
            counter: 0x99aa_bbcc_ddee_ff00,
            tag: *b"sixteen byte tag",
        };
        for (kind, relay) in [
            (DataKind::Ip, None),
            (DataKind::Relayed, Some(relay)),
            (DataKind::KeepAlive, None),
        ] {
            let r = DataRepr {
                kind,
                index: 0x0102_0304,
                counter: 0x0a0b_0c0d_0e0f_1011,
                relay,
            };
            let mut buf = vec![0u8; r.buffer_len() + TAG_LEN];
            r.emit(&mut buf).expect("fits");
            let p = DataPacket::new_checked(&buf[..]).expect("valid");
            assert_eq!(DataRepr::parse(&p), r);
            assert_eq!(p.header_len(), r.buffer_len());
        }
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(
            DataPacket::new_checked(&[1u8; 5][..]).err(),
            Some(DataError::Truncated)
        );
        let mut buf = [0u8; HEADER_LEN + TAG_LEN];
        buf[0] = 9;
        assert_eq!(
            DataPacket::new_checked(&buf[..]).err(),
            Some(DataError::Version(9))
        );
        buf[0] = DATA_VERSION;
        buf[1] = 77;
        assert_eq!(
            DataPacket::new_checked(&buf[..]).err(),
            Some(DataError::Kind(77))
        );
        buf[1] = 1;
        buf[2] = 1;
        assert_eq!(
            DataPacket::new_checked(&buf[..]).err(),
            Some(DataError::Reserved)
        );
        buf[2] = 0;
        buf[1] = 2;
        // A relayed packet needs room for its origin and proof as well.
        assert_eq!(
            DataPacket::new_checked(&buf[..]).err(),
            Some(DataError::Truncated)
        );
    }
}
