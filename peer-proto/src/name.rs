use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A router's name: the first 64 bits of the SHA-256 of its public key
/// (SubjectPublicKeyInfo DER), so that nobody without the key can claim it.
/// Shown as eight colon-separated hex bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerName(pub u64);

impl PeerName {
    /// The name whose bytes are the first eight of `digest`.
    pub fn from_digest(digest: &[u8; 32]) -> Self {
        let mut b = [0u8; 8];
        b.copy_from_slice(&digest[..8]);
        PeerName(u64::from_be_bytes(b))
    }
}

impl fmt::Display for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0.to_be_bytes();
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]
        )
    }
}

impl fmt::Debug for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerName({self})")
    }
}

/// A string that is not eight colon-separated hex bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid peer name {0:?}: expected eight hex bytes like 0a:1b:2c:3d:4e:5f:60:71")]
pub struct PeerNameParseError(pub String);

impl FromStr for PeerName {
    type Err = PeerNameParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PeerNameParseError(s.chars().take(64).collect());
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 8 {
            return Err(err());
        }
        let mut v = 0u64;
        for p in parts {
            if p.len() != 2 {
                return Err(err());
            }
            v = (v << 8) | u64::from(u8::from_str_radix(p, 16).map_err(|_| err())?);
        }
        Ok(PeerName(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_parse_roundtrip() {
        let n = PeerName(0x0a1b_2c3d_4e5f_6071);
        assert_eq!(n.to_string(), "0a:1b:2c:3d:4e:5f:60:71");
        assert_eq!(n.to_string().parse::<PeerName>(), Ok(n));
    }

    #[test]
    fn parse_rejects_garbage() {
        for s in [
            "",
            "0a:1b",
            "0a:1b:2c:3d:4e:5f:60:7g",
            "0a:1b:2c:3d:4e:5f:60:710",
            "::::::::",
        ] {
            assert!(s.parse::<PeerName>().is_err(), "{s}");
        }
    }
}
