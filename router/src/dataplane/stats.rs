//! Drop counters by reason, shared by the packet threads and the metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a packet was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Not a well-formed IPv4 packet, read from our TUN.
    MalformedTun,
    /// An IPv6 packet from our TUN (the overlay is IPv4; the kernel may
    /// send one before IPv6 is turned off on the device).
    Ipv6,
    /// Not a well-formed data packet or inner packet, from the network.
    MalformedNet,
    /// A receiver index we never gave out (stale session or garbage).
    UnknownIndex,
    /// A counter already seen, or too old.
    Replay,
    /// Failed authentication.
    Auth,
    /// Inner source address not owned by the router it came from.
    Spoofed,
    /// Nobody reachable owns the destination (answered with ICMP).
    NoRoute,
    /// Larger than the path MTU (answered with ICMP when DF is set).
    TooBig,
    /// TTL ran out while relaying.
    TtlExpired,
    /// The UDP socket or the TUN refused the packet.
    IoError,
    /// A link's counter ran out (the session must be re-established).
    CounterExhausted,
    /// A relayed packet for us whose origin tag does not verify: a relay
    /// named another router as its origin, or changed it.
    OriginAuth,
    /// A relayed packet for us whose origin counter was seen before (a
    /// relay replayed it) or is too old.
    OriginReplay,
    /// No origin key with the router at the other end of a relayed packet
    /// (its topology entry, which carries the key, has not arrived yet, or
    /// publishes none).
    OriginUnknown,
}

impl DropReason {
    pub const ALL: [DropReason; 15] = [
        DropReason::MalformedTun,
        DropReason::Ipv6,
        DropReason::MalformedNet,
        DropReason::UnknownIndex,
        DropReason::Replay,
        DropReason::Auth,
        DropReason::Spoofed,
        DropReason::NoRoute,
        DropReason::TooBig,
        DropReason::TtlExpired,
        DropReason::IoError,
        DropReason::CounterExhausted,
        DropReason::OriginAuth,
        DropReason::OriginReplay,
        DropReason::OriginUnknown,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::MalformedTun => "malformed_tun",
            DropReason::Ipv6 => "ipv6",
            DropReason::MalformedNet => "malformed_net",
            DropReason::UnknownIndex => "unknown_index",
            DropReason::Replay => "replay",
            DropReason::Auth => "auth",
            DropReason::Spoofed => "spoofed",
            DropReason::NoRoute => "no_route",
            DropReason::TooBig => "too_big",
            DropReason::TtlExpired => "ttl_expired",
            DropReason::IoError => "io_error",
            DropReason::CounterExhausted => "counter_exhausted",
            DropReason::OriginAuth => "origin_auth",
            DropReason::OriginReplay => "origin_replay",
            DropReason::OriginUnknown => "origin_unknown",
        }
    }
}

/// One counter per reason.
#[derive(Default)]
pub struct Drops([AtomicU64; DropReason::ALL.len()]);

impl Drops {
    pub fn inc(&self, why: DropReason) {
        self.0[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, why: DropReason) -> u64 {
        self.0[why as usize].load(Ordering::Relaxed)
    }

    /// (label, count) for every reason with a non-zero count.
    pub fn nonzero(&self) -> Vec<(&'static str, u64)> {
        DropReason::ALL
            .iter()
            .map(|r| (r.label(), self.get(*r)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}
