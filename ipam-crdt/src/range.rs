//! IPv4 address ranges as half-open `u32` intervals.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// `[start, end)`; `end` may be `2^32` (held as u64 to allow it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddrRange {
    pub start: u32,
    pub end: u64,
}

impl AddrRange {
    pub fn new(start: u32, end: u64) -> Self {
        AddrRange {
            start,
            end: end.max(u64::from(start)),
        }
    }

    pub fn len(&self) -> u64 {
        self.end - u64::from(self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, a: u32) -> bool {
        a >= self.start && u64::from(a) < self.end
    }
}

/// A string that is not `a.b.c.d/len`, or whose address has host bits set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid IPv4 CIDR {0:?} (expected e.g. 10.32.0.0/12 with no host bits set)")]
pub struct CidrError(pub String);

impl FromStr for AddrRange {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrError(s.chars().take(64).collect());
        let (ip, len) = s.split_once('/').ok_or_else(err)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| err())?;
        let len: u32 = len.parse().map_err(|_| err())?;
        if len > 32 {
            return Err(err());
        }
        let size = 1u64 << (32 - len);
        let start = u32::from(ip);
        if u64::from(start) % size != 0 {
            return Err(err());
        }
        Ok(AddrRange::new(start, u64::from(start) + size))
    }
}

impl fmt::Display for AddrRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A peer's ring may name any range, empty ones too.
        if self.is_empty() {
            return write!(f, "{} (empty)", Ipv4Addr::from(self.start));
        }
        let last = (self.end - 1) as u32;
        write!(f, "{}-{}", Ipv4Addr::from(self.start), Ipv4Addr::from(last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `ipam_channel` fuzz target: a peer's ring over an
    /// empty range was refused with a message that printed the range, and
    /// printing an empty range ending at 0 overflowed (a panic in debug
    /// builds, a wrong range in release ones).
    #[test]
    fn an_empty_range_prints() {
        assert_eq!(AddrRange::new(0, 0).to_string(), "0.0.0.0 (empty)");
        let e = crate::RingError::RangeMismatch {
            ours: "10.32.0.0/12".parse().expect("valid"),
            theirs: AddrRange::new(0, 0),
        };
        assert_eq!(
            e.to_string(),
            "ring covers 0.0.0.0 (empty), ours covers 10.32.0.0-10.47.255.255"
        );
    }

    #[test]
    fn cidr() {
        let r: AddrRange = "10.32.0.0/12".parse().expect("valid");
        assert_eq!(r.len(), 1 << 20);
        assert!(r.contains(u32::from(Ipv4Addr::new(10, 47, 255, 255))));
        assert!(!r.contains(u32::from(Ipv4Addr::new(10, 48, 0, 0))));
        assert_eq!(r.to_string(), "10.32.0.0-10.47.255.255");
        assert_eq!(
            "0.0.0.0/0".parse::<AddrRange>().map(|r| r.len()),
            Ok(1 << 32)
        );
        assert_eq!(AddrRange::new(10, 0).to_string(), "0.0.0.10 (empty)");
        for bad in [
            "10.32.0.1/12",
            "10.32.0.0/33",
            "10.32.0.0",
            "x/12",
            "10.32.0.0/-1",
        ] {
            assert!(bad.parse::<AddrRange>().is_err(), "{bad}");
        }
    }
}
