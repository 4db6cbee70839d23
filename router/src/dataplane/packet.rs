//! What the data plane reads from inner IPv4 headers, and the ICMP errors it
//! writes back (built with etherparse).

use std::net::Ipv4Addr;

use etherparse::{Icmpv4Type, PacketBuilder, icmpv4::DestUnreachableHeader};

/// The fields forwarding needs from an inner IPv4 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Info {
    pub src: u32,
    pub dst: u32,
    pub ttl: u8,
    pub dont_fragment: bool,
    pub protocol: u8,
    /// Offset of this fragment (non-zero: not the first fragment).
    pub fragment_offset: u16,
    pub header_len: usize,
}

impl Ipv4Info {
    /// Parses an IPv4 packet exactly `pkt.len()` long (what a TUN read or an
    /// opened data packet gives); None for anything else.
    pub fn parse(pkt: &[u8]) -> Option<Self> {
        if pkt.len() < 20 || pkt[0] >> 4 != 4 {
            return None;
        }
        let header_len = usize::from(pkt[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
        if header_len < 20 || total < header_len || total != pkt.len() {
            return None;
        }
        let frag = u16::from_be_bytes([pkt[6], pkt[7]]);
        Some(Ipv4Info {
            src: u32::from_be_bytes([pkt[12], pkt[13], pkt[14], pkt[15]]),
            dst: u32::from_be_bytes([pkt[16], pkt[17], pkt[18], pkt[19]]),
            ttl: pkt[8],
            dont_fragment: frag & 0x4000 != 0,
            protocol: pkt[9],
            fragment_offset: frag & 0x1fff,
            header_len,
        })
    }

    /// Whether an ICMP error may be sent about this packet (RFC 1122
    /// 3.2.2: never about ICMP errors or non-first fragments).
    fn may_answer(&self, pkt: &[u8]) -> bool {
        if self.fragment_offset != 0 {
            return false;
        }
        if self.protocol == 1 {
            // Only echo requests/replies may be answered with errors.
            return matches!(pkt.get(self.header_len), Some(0) | Some(8));
        }
        true
    }
}

/// Decrements the TTL of a well-formed IPv4 header in place, fixing the
/// checksum incrementally (RFC 1624). False if it reached zero.
pub fn decrement_ttl(pkt: &mut [u8]) -> bool {
    if pkt.len() < 20 || pkt[8] <= 1 {
        return false;
    }
    pkt[8] -= 1;
    // The TTL is the high byte of its 16-bit word: HC' = HC + 0x0100 (ones' complement).
    let sum = u32::from(u16::from_be_bytes([pkt[10], pkt[11]])) + 0x0100;
    let sum = (sum & 0xffff) + (sum >> 16);
    pkt[10..12].copy_from_slice(&(sum as u16).to_be_bytes());
    true
}

/// Which ICMP error to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpError {
    /// Nobody reachable owns the destination.
    HostUnreachable,
    /// Too big for the path, with the MTU that fits.
    FragmentationNeeded(u16),
    /// The TTL ran out while relaying.
    TimeExceeded,
}

/// Writes an ICMP error about `pkt` from `from` into `out` (cleared first);
/// false when none may be sent.
pub fn icmp_error(
    pkt: &[u8],
    info: &Ipv4Info,
    from: Ipv4Addr,
    what: IcmpError,
    out: &mut Vec<u8>,
) -> bool {
    if !info.may_answer(pkt) {
        return false;
    }
    out.clear();
    // The original header and the first 8 bytes of its payload (RFC 792).
    let quote = &pkt[..(info.header_len + 8).min(pkt.len())];
    let ty = match what {
        IcmpError::HostUnreachable => {
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Host)
        }
        IcmpError::FragmentationNeeded(mtu) => {
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: mtu,
            })
        }
        IcmpError::TimeExceeded => {
            Icmpv4Type::TimeExceeded(etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit)
        }
    };
    PacketBuilder::ipv4(from.octets(), info.src.to_be_bytes(), 64)
        .icmpv4(ty)
        .write(out, quote)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp_packet(ttl: u8) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4([10, 32, 0, 5], [10, 40, 0, 9], ttl)
            .udp(1000, 2000)
            .write(&mut out, b"payload")
            .expect("builds");
        out
    }

    #[test]
    fn parses_and_rejects() {
        let p = udp_packet(9);
        let i = Ipv4Info::parse(&p).expect("valid");
        assert_eq!(Ipv4Addr::from(i.src), Ipv4Addr::new(10, 32, 0, 5));
        assert_eq!(Ipv4Addr::from(i.dst), Ipv4Addr::new(10, 40, 0, 9));
        assert_eq!(i.ttl, 9);
        assert!(
            Ipv4Info::parse(&p[..p.len() - 1]).is_none(),
            "length mismatch"
        );
        assert!(Ipv4Info::parse(&[0x60; 40]).is_none(), "IPv6");
        assert!(Ipv4Info::parse(&[0x44; 40]).is_none(), "IHL below 5");
        assert!(Ipv4Info::parse(&[]).is_none());
    }

    #[test]
    fn ttl_decrement_keeps_checksum_valid() {
        let mut p = udp_packet(64);
        assert!(decrement_ttl(&mut p));
        let h = etherparse::Ipv4HeaderSlice::from_slice(&p).expect("header");
        assert_eq!(h.ttl(), 63);
        assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum());
        let mut last = udp_packet(1);
        assert!(!decrement_ttl(&mut last));
    }

    #[test]
    fn icmp_errors_quote_the_packet_and_not_errors() {
        let p = udp_packet(64);
        let i = Ipv4Info::parse(&p).expect("valid");
        let mut out = Vec::new();
        assert!(icmp_error(
            &p,
            &i,
            Ipv4Addr::new(10, 32, 0, 1),
            IcmpError::FragmentationNeeded(1300),
            &mut out
        ));
        let e = etherparse::SlicedPacket::from_ip(&out).expect("icmp parses");
        match e.transport {
            Some(etherparse::TransportSlice::Icmpv4(icmp)) => match icmp.icmp_type() {
                Icmpv4Type::DestinationUnreachable(
                    DestUnreachableHeader::FragmentationNeeded { next_hop_mtu },
                ) => {
                    assert_eq!(next_hop_mtu, 1300)
                }
                other => panic!("unexpected {other:?}"),
            },
            other => panic!("unexpected {other:?}"),
        }
        // Never an error about an error.
        let ei = Ipv4Info::parse(&out).expect("valid");
        let mut again = Vec::new();
        assert!(!icmp_error(
            &out,
            &ei,
            Ipv4Addr::new(10, 32, 0, 2),
            IcmpError::HostUnreachable,
            &mut again
        ));
    }
}
