//! The header in front of every encrypted data packet (smoltcp-style view).
//!
//! ```text
//!  0         1         2                   4                                  12
//!  +---------+---------+-------------------+----------------------------------+
//!  | version |  kind   |   key id (BE)     |   counter (BE u64, the nonce)    |
//!  +---------+---------+-------------------+----------------------------------+
//!  | AEAD ciphertext of the inner IP packet, then the 16-byte tag ...
//! ```
//! The counter is the AEAD nonce and the replay-window position; the key id
//! names the session key it was sealed with, so that keys can rotate.

/// Current data header version.
pub const DATA_VERSION: u8 = 1;

mod field {
    use core::ops::{Range, RangeFrom};
    pub const VERSION: usize = 0;
    pub const KIND: usize = 1;
    pub const KEY_ID: Range<usize> = 2..4;
    pub const COUNTER: Range<usize> = 4..12;
    pub const PAYLOAD: RangeFrom<usize> = 12..;
}

/// Bytes the header takes.
pub const HEADER_LEN: usize = field::PAYLOAD.start;

/// What a data packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKind {
    /// An IP packet from a pod or host.
    Ip,
    /// A keep-alive with no payload.
    KeepAlive,
}

impl DataKind {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(DataKind::Ip),
            2 => Some(DataKind::KeepAlive),
            _ => None,
        }
    }
    fn to_byte(self) -> u8 {
        match self {
            DataKind::Ip => 1,
            DataKind::KeepAlive => 2,
        }
    }
}

/// Why a buffer is not a data packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    #[error("data packet shorter than its header")]
    Truncated,
    #[error("unknown data header version {0}")]
    Version(u8),
    #[error("unknown data packet kind {0}")]
    Kind(u8),
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

    /// Wraps a buffer that came from the network; every accessor is then safe.
    pub fn new_checked(buffer: T) -> Result<Self, DataError> {
        let p = Self::new_unchecked(buffer);
        let b = p.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(DataError::Truncated);
        }
        if b[field::VERSION] != DATA_VERSION {
            return Err(DataError::Version(b[field::VERSION]));
        }
        DataKind::from_byte(b[field::KIND]).ok_or(DataError::Kind(b[field::KIND]))?;
        Ok(p)
    }

    pub fn kind(&self) -> DataKind {
        DataKind::from_byte(self.buffer.as_ref()[field::KIND]).unwrap_or(DataKind::KeepAlive)
    }

    pub fn key_id(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::KEY_ID];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn counter(&self) -> u64 {
        let mut c = [0u8; 8];
        c.copy_from_slice(&self.buffer.as_ref()[field::COUNTER]);
        u64::from_be_bytes(c)
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> DataPacket<T> {
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// The parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataRepr {
    pub kind: DataKind,
    pub key_id: u16,
    pub counter: u64,
}

impl DataRepr {
    pub fn parse<T: AsRef<[u8]>>(p: &DataPacket<T>) -> Self {
        DataRepr {
            kind: p.kind(),
            key_id: p.key_id(),
            counter: p.counter(),
        }
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header into the first [`HEADER_LEN`] bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), DataError> {
        if buf.len() < HEADER_LEN {
            return Err(DataError::Truncated);
        }
        buf[field::VERSION] = DATA_VERSION;
        buf[field::KIND] = self.kind.to_byte();
        buf[field::KEY_ID].copy_from_slice(&self.key_id.to_be_bytes());
        buf[field::COUNTER].copy_from_slice(&self.counter.to_be_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_parse_roundtrip() {
        let r = DataRepr {
            kind: DataKind::Ip,
            key_id: 0x0102,
            counter: 0x0a0b_0c0d_0e0f_1011,
        };
        let mut buf = [0u8; HEADER_LEN + 3];
        r.emit(&mut buf).expect("fits");
        buf[HEADER_LEN..].copy_from_slice(b"abc");
        let p = DataPacket::new_checked(&buf[..]).expect("valid");
        assert_eq!(DataRepr::parse(&p), r);
        assert_eq!(p.payload(), b"abc");
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(
            DataPacket::new_checked(&[1u8; 5][..]).err(),
            Some(DataError::Truncated)
        );
        let mut buf = [0u8; HEADER_LEN];
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
    }
}
