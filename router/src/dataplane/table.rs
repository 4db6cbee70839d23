//! The forwarding table: a snapshot the packet threads read without locks.
//!
//! Built by the daemon loop from the IPAM ring (address -> owner), the mesh
//! routes (owner -> next hop) and the sessions that have data links (next
//! hop -> keys and UDP address), and published whole through an `ArcSwap`
//! whenever one of them changes.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use weft_ipam_crdt::AddrRange;
use weft_peer_proto::PeerName;

use super::crypto::{Opener, OriginKeys, Sealer};
use super::stats::{DropReason, Drops};

/// One data link: the data plane's half of a peer session.
pub struct Link {
    pub peer: PeerName,
    pub nickname: String,
    /// The session this link belongs to (a reconnect makes a new link).
    pub conn: u64,
    /// The peer's data socket.
    pub remote: SocketAddr,
    /// Goes in the header of what we send (the peer chose it).
    pub send_index: u32,
    /// Arrives in the header of what the peer sends (we chose it).
    pub recv_index: u32,
    /// Largest inner packet both ends accept.
    pub mtu: u16,
    pub sealer: Mutex<Sealer>,
    pub opener: Mutex<Opener>,
    pub stats: LinkStats,
}

/// Traffic on one link, updated by the packet threads.
#[derive(Default)]
pub struct LinkStats {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Milliseconds since the data plane started, of the last packet that
    /// authenticated (0: none yet).
    pub last_rx_ms: AtomicU64,
    pub drops: Drops,
}

impl LinkStats {
    pub fn sent(&self, packets: u64, bytes: u64) {
        self.tx_packets.fetch_add(packets, Ordering::Relaxed);
        self.tx_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    pub fn received(&self, bytes: u64, now_ms: u64) {
        self.rx_packets.fetch_add(1, Ordering::Relaxed);
        self.rx_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.last_rx_ms.store(now_ms.max(1), Ordering::Relaxed);
    }
    pub fn drop(&self, why: DropReason) {
        self.drops.inc(why);
    }
}

/// What a destination address resolves to.
pub enum Route<'a> {
    /// Send on this link (the next hop toward the owner).
    Via(&'a Arc<Link>),
    /// The address is ours: it belongs on the local bridge.
    Local,
    /// Outside the overlay range, nobody owns it, or its owner is unreachable.
    Unreachable,
}

/// An immutable snapshot of everything forwarding needs.
pub struct Table {
    pub me: PeerName,
    range: Option<AddrRange>,
    /// Ring tokens: owner of every address from `start` to the next token.
    owners: Vec<(u32, PeerName)>,
    hops: HashMap<PeerName, PeerName>,
    links: HashMap<PeerName, Arc<Link>>,
    by_index: HashMap<u32, Arc<Link>>,
    /// End-to-end origin keys with every router whose entry has one.
    origins: HashMap<PeerName, Arc<OriginKeys>>,
    /// The router's own overlay address: the source of its ICMP errors.
    pub gateway: Option<Ipv4Addr>,
}

impl Table {
    pub fn new(me: PeerName) -> Self {
        Table {
            me,
            range: None,
            owners: Vec::new(),
            hops: HashMap::new(),
            links: HashMap::new(),
            by_index: HashMap::new(),
            origins: HashMap::new(),
            gateway: None,
        }
    }

    /// The owner of `addr` by the ring: O(log n).
    pub fn owner(&self, addr: u32) -> Option<PeerName> {
        if !self.range.is_some_and(|r| r.contains(addr)) {
            return None;
        }
        let i = self.owners.partition_point(|(t, _)| *t <= addr);
        i.checked_sub(1).map(|i| self.owners[i].1)
    }

    pub fn route(&self, dst: u32) -> Route<'_> {
        match self.owner(dst) {
            None => Route::Unreachable,
            Some(o) if o == self.me => Route::Local,
            Some(o) => self.link_toward(o).map_or(Route::Unreachable, Route::Via),
        }
    }

    /// The link to the next hop toward `peer`.
    pub fn link_toward(&self, peer: PeerName) -> Option<&Arc<Link>> {
        let hop = self.hops.get(&peer).copied().unwrap_or(peer);
        self.links.get(&hop)
    }

    pub fn link_by_index(&self, index: u32) -> Option<&Arc<Link>> {
        self.by_index.get(&index)
    }

    /// The origin keys between us and `peer`.
    pub fn origin_keys(&self, peer: PeerName) -> Option<&OriginKeys> {
        self.origins.get(&peer).map(|k| &**k)
    }

    pub fn with_origins(
        mut self,
        origins: impl Iterator<Item = (PeerName, Arc<OriginKeys>)>,
    ) -> Self {
        self.origins = origins.collect();
        self
    }

    pub fn with_ring(
        mut self,
        range: AddrRange,
        tokens: impl Iterator<Item = (u32, PeerName)>,
    ) -> Self {
        self.range = Some(range);
        self.owners = tokens.collect();
        self.owners.sort_unstable_by_key(|(t, _)| *t);
        self
    }

    /// `hops`: (destination, next hop) for every reachable peer.
    pub fn with_hops(mut self, hops: impl Iterator<Item = (PeerName, PeerName)>) -> Self {
        self.hops = hops.collect();
        self
    }

    /// Links that still receive but are not used for sending.
    pub fn add_receivers(&mut self, links: impl Iterator<Item = Arc<Link>>) {
        for l in links {
            self.by_index.entry(l.recv_index).or_insert(l);
        }
    }

    pub fn with_links(mut self, links: impl Iterator<Item = Arc<Link>>) -> Self {
        for l in links {
            self.by_index.insert(l.recv_index, l.clone());
            self.links.insert(l.peer, l);
        }
        self
    }
}

/// The CIDR blocks that exactly cover `r` (for kernel routes).
pub fn cidrs(r: AddrRange) -> Vec<(Ipv4Addr, u8)> {
    let mut out = Vec::new();
    let mut start = u64::from(r.start);
    while start < r.end {
        // The largest aligned block starting here that fits.
        let align = if start == 0 {
            32
        } else {
            start.trailing_zeros().min(32)
        };
        let mut bits = align;
        while bits > 0 && start + (1u64 << bits) > r.end {
            bits -= 1;
        }
        out.push((Ipv4Addr::from(start as u32), (32 - bits) as u8));
        start += 1u64 << bits;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_lookup_follows_tokens() {
        let me = PeerName(1);
        let t = Table::new(me).with_ring(
            AddrRange::new(100, 200),
            [(150, PeerName(2)), (100, me), (180, PeerName(3))].into_iter(),
        );
        assert_eq!(t.owner(99), None);
        assert_eq!(t.owner(100), Some(me));
        assert_eq!(t.owner(149), Some(me));
        assert_eq!(t.owner(150), Some(PeerName(2)));
        assert_eq!(t.owner(199), Some(PeerName(3)));
        assert_eq!(t.owner(200), None);
        assert!(matches!(t.route(120), Route::Local));
        // No link to peer 2 and no hop: unreachable.
        assert!(matches!(t.route(160), Route::Unreachable));
    }

    #[test]
    fn cidrs_cover_ranges_exactly() {
        let ip = |s: &str| u32::from(s.parse::<Ipv4Addr>().expect("ip"));
        let r = AddrRange::new(ip("10.32.0.0"), u64::from(ip("10.48.0.0")));
        assert_eq!(cidrs(r), vec![("10.32.0.0".parse().expect("ip"), 12)]);
        let r = AddrRange::new(ip("10.32.0.1"), u64::from(ip("10.32.0.8")));
        let got: Vec<String> = cidrs(r).iter().map(|(a, p)| format!("{a}/{p}")).collect();
        assert_eq!(got, ["10.32.0.1/32", "10.32.0.2/31", "10.32.0.4/30"]);
        // Every address of an odd range is covered once.
        let r = AddrRange::new(ip("10.32.3.7"), u64::from(ip("10.32.9.200")));
        let total: u64 = cidrs(r).iter().map(|(_, p)| 1u64 << (32 - p)).sum();
        assert_eq!(total, r.len());
        let full = AddrRange::new(0, 1 << 32);
        assert_eq!(cidrs(full), vec![(Ipv4Addr::UNSPECIFIED, 0)]);
    }
}
