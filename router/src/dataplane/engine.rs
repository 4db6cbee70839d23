//! The packet threads: TUN -> seal -> UDP, and UDP -> open -> check -> TUN
//! (or on to the next hop).
//!
//! Each is a plain OS thread doing blocking I/O in batches: the TUN side
//! reads 64 KB TCP super-packets (virtio offload) that tun-rs splits into
//! MTU-sized segments; consecutive packets for one peer are sealed into one
//! buffer and sent as a single UDP GSO `sendmsg`. The receive side reads GRO
//! batches, opens every datagram in place and coalesces what goes to the TUN
//! back into super-packets (tun-rs's GRO table). Our buffers are allocated
//! once per thread and our per-packet code does not allocate; tun-rs's GRO
//! coalescing copies each merged super-packet into a new buffer.

use std::io::IoSliceMut;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tracing::warn;
use tun_rs::{GROTable, IDEAL_BATCH_SIZE, SyncDevice, VIRTIO_NET_HDR_LEN};
use weft_peer_proto::PeerName;
use weft_peer_proto::data::{DataKind, DataPacket, DataRepr, Relay, TAG_LEN, header_len};

use super::crypto::{OpenError, OriginError, OriginKeys};
use super::packet::{IcmpError, Ipv4Info, decrement_ttl, icmp_error};
use super::stats::{DropReason, Drops};
use super::table::{Link, Route, Table};

/// Largest UDP payload we put in one GSO send.
const MAX_GSO_BYTES: usize = 64_000;
/// Receive buffers per receive call. The socket blocks, and a blocking
/// `recvmmsg` waits until every buffer is full, so it is one: batching on
/// this side comes from UDP GRO, which hands over up to 64 datagrams of a
/// flow in one buffer.
const RX_BATCH: usize = 1;
/// Bytes per receive buffer: a full GRO batch.
const RX_BUF: usize = 65_536;
/// ICMP errors per second the router sends at most (and its burst).
const ICMP_PER_SEC: f64 = 200.0;

/// What both threads share.
pub struct Shared {
    pub table: ArcSwap<Table>,
    pub drops: Drops,
    pub tun: SyncDevice,
    pub udp: UdpSocket,
    pub udp_state: UdpSocketState,
    pub started: Instant,
    /// Test only: forge the origin of relayed packets.
    pub forge_relay_origin: bool,
}

impl Shared {
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }
}

/// What goes in a data packet's header besides the hop's own fields.
pub enum Hop<'a> {
    /// No payload.
    KeepAlive,
    /// For the next hop itself.
    Direct,
    /// Through relays to the router `keys` are with, started by `origin`
    /// (us, but for a forging test router): the packet is tagged here.
    Originate {
        origin: PeerName,
        keys: &'a OriginKeys,
    },
    /// Relayed on, its origin's proof copied unchanged.
    Forward(Relay),
}

/// Sealed packets for one destination, sent as one GSO batch.
pub struct TxBatch {
    buf: Vec<u8>,
    dst: Option<SocketAddr>,
    seg: usize,
    count: usize,
    /// A segment shorter than `seg` was added: it must be the last.
    closed: bool,
}

impl Default for TxBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl TxBatch {
    pub fn new() -> Self {
        TxBatch {
            buf: Vec::with_capacity(MAX_GSO_BYTES + 2048),
            dst: None,
            seg: 0,
            count: 0,
            closed: false,
        }
    }

    /// Seals `inner` for `link` and queues it; flushes first when the packet
    /// cannot join the current batch.
    pub fn push(&mut self, sh: &Shared, link: &Link, hop: Hop<'_>, inner: &[u8]) {
        let kind = match hop {
            Hop::KeepAlive => DataKind::KeepAlive,
            Hop::Direct => DataKind::Ip,
            Hop::Originate { .. } | Hop::Forward(_) => DataKind::Relayed,
        };
        let hlen = header_len(kind);
        let size = hlen + inner.len() + TAG_LEN;
        if self.count > 0
            && (self.dst != Some(link.remote)
                || size > self.seg
                || self.closed
                || self.buf.len() + size > MAX_GSO_BYTES
                || self.count >= sh.udp_state.max_gso_segments())
        {
            self.flush(sh);
        }
        let start = self.buf.len();
        self.buf.resize(start + size, 0);
        let (hdr, rest) = self.buf[start..].split_at_mut(hlen);
        let (body, tag_out) = rest.split_at_mut(inner.len());
        body.copy_from_slice(inner);
        let relay = match hop {
            Hop::Originate { origin, keys } => match keys.tag(body) {
                Some((counter, tag)) => Some(Relay {
                    origin: origin.0,
                    counter,
                    tag,
                }),
                None => {
                    self.buf.truncate(start);
                    link.stats.drop(DropReason::CounterExhausted);
                    return;
                }
            },
            Hop::Forward(r) => Some(r),
            Hop::KeepAlive | Hop::Direct => None,
        };
        let sealed = {
            let mut sealer = match link.sealer.lock() {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            sealer.take().and_then(|counter| {
                let repr = DataRepr {
                    kind,
                    index: link.send_index,
                    counter,
                    relay,
                };
                repr.emit(hdr).ok()?;
                sealer.seal_with(counter, hdr, body)
            })
        };
        let Some(tag) = sealed else {
            self.buf.truncate(start);
            link.stats.drop(DropReason::CounterExhausted);
            return;
        };
        tag_out.copy_from_slice(tag.as_ref());
        if self.count == 0 {
            self.dst = Some(link.remote);
            self.seg = size;
        } else if size < self.seg {
            self.closed = true;
        }
        self.count += 1;
        link.stats.sent(1, inner.len() as u64);
    }

    pub fn flush(&mut self, sh: &Shared) {
        if let (Some(dst), true) = (self.dst, self.count > 0) {
            let t = Transmit {
                destination: dst,
                ecn: None,
                contents: &self.buf,
                segment_size: (self.count > 1).then_some(self.seg),
                src_ip: None,
            };
            if let Err(e) = sh.udp_state.try_send((&sh.udp).into(), &t) {
                for _ in 0..self.count {
                    sh.drops.inc(DropReason::IoError);
                }
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    tracing::debug!(error = %e, %dst, "data send failed");
                }
            }
        }
        self.buf.clear();
        self.dst = None;
        self.count = 0;
        self.closed = false;
    }
}

/// Sends a packet this router starts on `link`, toward the router that
/// owns its destination: directly when that is the next hop, else tagged
/// for the owner so that relays cannot claim to have it from us.
fn originate(
    sh: &Shared,
    table: &Table,
    tx: &mut TxBatch,
    link: &Link,
    owner: PeerName,
    src: u32,
    pkt: &[u8],
) {
    // A dishonest relay (test only): a packet whose source another router
    // owns goes out as that router's, with the keys we hold for the owner.
    let forged = if sh.forge_relay_origin {
        table.owner(src).filter(|o| *o != table.me)
    } else {
        None
    };
    if link.peer == owner && forged.is_none() {
        return tx.push(sh, link, Hop::Direct, pkt);
    }
    match table.origin_keys(owner) {
        Some(keys) => {
            let origin = forged.unwrap_or(table.me);
            tx.push(sh, link, Hop::Originate { origin, keys }, pkt)
        }
        None => link.stats.drop(DropReason::OriginUnknown),
    }
}

/// Packets for our TUN, coalesced and written per batch.
struct TunQueue {
    bufs: Vec<Vec<u8>>,
    used: usize,
    gro: GROTable,
}

impl TunQueue {
    fn new(slots: usize) -> Self {
        TunQueue {
            bufs: (0..slots)
                .map(|_| Vec::with_capacity(VIRTIO_NET_HDR_LEN + RX_BUF))
                .collect(),
            used: 0,
            gro: GROTable::default(),
        }
    }

    fn push(&mut self, sh: &Shared, pkt: &[u8]) {
        if self.used == self.bufs.len() {
            self.flush(sh);
        }
        let b = &mut self.bufs[self.used];
        b.clear();
        b.resize(VIRTIO_NET_HDR_LEN, 0);
        b.extend_from_slice(pkt);
        self.used += 1;
    }

    fn flush(&mut self, sh: &Shared) {
        if self.used == 0 {
            return;
        }
        if let Err(e) = sh.tun.send_multiple(
            &mut self.gro,
            &mut self.bufs[..self.used],
            VIRTIO_NET_HDR_LEN,
        ) {
            sh.drops.inc(DropReason::IoError);
            tracing::debug!(error = %e, "TUN write failed");
        }
        self.used = 0;
    }
}

/// ICMP errors, rate-limited. Errors about packets from local pods go into
/// our TUN with the unreachable destination as their source (a source the
/// kernel routes through the TUN, so reverse-path filtering keeps them);
/// errors a relay raises go back through the overlay from its own overlay
/// address, which the origin's router accepts as owned by the relay.
struct IcmpSender {
    tokens: f64,
    last: Instant,
    buf: Vec<u8>,
}

impl IcmpSender {
    fn new() -> Self {
        IcmpSender {
            tokens: ICMP_PER_SEC / 4.0,
            last: Instant::now(),
            buf: Vec::with_capacity(128),
        }
    }

    /// The error packet, or None when rate-limited or not allowed.
    fn build(
        &mut self,
        from: Ipv4Addr,
        pkt: &[u8],
        info: &Ipv4Info,
        what: IcmpError,
    ) -> Option<&[u8]> {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * ICMP_PER_SEC)
            .min(ICMP_PER_SEC / 4.0);
        self.last = now;
        if self.tokens < 1.0 || !icmp_error(pkt, info, from, what, &mut self.buf) {
            return None;
        }
        self.tokens -= 1.0;
        Some(&self.buf)
    }

    /// To a local pod, through our TUN.
    fn send_local(
        &mut self,
        sh: &Shared,
        q: &mut TunQueue,
        pkt: &[u8],
        info: &Ipv4Info,
        what: IcmpError,
    ) {
        if let Some(p) = self.build(Ipv4Addr::from(info.dst), pkt, info, what) {
            q.push(sh, p);
        }
    }

    /// To a remote sender, through the overlay.
    fn send_remote(
        &mut self,
        sh: &Shared,
        table: &Table,
        tx: &mut TxBatch,
        pkt: &[u8],
        info: &Ipv4Info,
        what: IcmpError,
    ) {
        let Some(gw) = table.gateway else { return };
        let (back, owner) = match (table.route(info.src), table.owner(info.src)) {
            (Route::Via(l), Some(o)) => (l.clone(), o),
            _ => return,
        };
        if let Some(p) = self.build(gw, pkt, info, what) {
            // The error is ours (from our own address) to the source's router.
            originate(sh, table, tx, &back, owner, u32::from(gw), p);
        }
    }
}

/// TUN -> peers. Returns when the TUN is gone.
pub fn tun_loop(sh: Arc<Shared>, mtu: usize) {
    let mut original = vec![0u8; VIRTIO_NET_HDR_LEN + 65_536];
    let mut bufs = vec![vec![0u8; mtu.max(1500) + 64]; IDEAL_BATCH_SIZE];
    let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
    let mut tx = TxBatch::new();
    let mut back = TunQueue::new(4);
    let mut icmp = IcmpSender::new();
    loop {
        let n = match sh
            .tun
            .recv_multiple(&mut original, &mut bufs, &mut sizes, 0)
        {
            Ok(n) => n,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBADFD) | Some(libc::EBADF)) => {
                warn!(error = %e, "TUN closed; data plane stopped");
                return;
            }
            Err(e) => {
                // A bad virtio header or a segment that does not split.
                sh.drops.inc(DropReason::MalformedTun);
                tracing::debug!(error = %e, "TUN read");
                continue;
            }
        };
        let table = sh.table.load();
        for i in 0..n {
            let pkt = &bufs[i][..sizes[i]];
            let Some(info) = Ipv4Info::parse(pkt) else {
                let why = if pkt.first().is_some_and(|b| b >> 4 == 6) {
                    DropReason::Ipv6
                } else {
                    DropReason::MalformedTun
                };
                sh.drops.inc(why);
                continue;
            };
            match table.route(info.dst) {
                Route::Via(link) => {
                    if pkt.len() > usize::from(link.mtu) {
                        link.stats.drop(DropReason::TooBig);
                        if info.dont_fragment {
                            icmp.send_local(
                                &sh,
                                &mut back,
                                pkt,
                                &info,
                                IcmpError::FragmentationNeeded(link.mtu),
                            );
                        }
                        continue;
                    }
                    let Some(owner) = table.owner(info.dst) else {
                        continue;
                    };
                    originate(&sh, &table, &mut tx, link, owner, info.src, pkt);
                }
                Route::Local | Route::Unreachable => {
                    sh.drops.inc(DropReason::NoRoute);
                    icmp.send_local(&sh, &mut back, pkt, &info, IcmpError::HostUnreachable);
                }
            }
        }
        tx.flush(&sh);
        back.flush(&sh);
    }
}

/// Peers -> TUN (or the next hop).
pub fn udp_loop(sh: Arc<Shared>) {
    let mut storage = vec![0u8; RX_BATCH * RX_BUF];
    let mut metas = [RecvMeta::default(); RX_BATCH];
    let mut q = TunQueue::new(IDEAL_BATCH_SIZE);
    let mut tx = TxBatch::new();
    let mut icmp = IcmpSender::new();
    loop {
        let n = {
            let mut chunks = storage.chunks_mut(RX_BUF);
            let mut iovs: [IoSliceMut<'_>; RX_BATCH] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
            match sh.udp_state.recv((&sh.udp).into(), &mut iovs, &mut metas) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    sh.drops.inc(DropReason::IoError);
                    tracing::debug!(error = %e, "data socket receive");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    continue;
                }
            }
        };
        let table = sh.table.load();
        let now_ms = sh.now_ms();
        for (meta, chunk) in metas[..n].iter().zip(storage.chunks_mut(RX_BUF)) {
            let stride = meta.stride.max(1);
            let len = meta.len.min(chunk.len());
            for dgram in chunk[..len].chunks_mut(stride) {
                receive(&sh, &table, dgram, now_ms, &mut q, &mut tx, &mut icmp);
            }
        }
        tx.flush(&sh);
        q.flush(&sh);
    }
}

/// One datagram from the network.
fn receive(
    sh: &Shared,
    table: &Table,
    dgram: &mut [u8],
    now_ms: u64,
    q: &mut TunQueue,
    tx: &mut TxBatch,
    icmp: &mut IcmpSender,
) {
    let Ok(p) = DataPacket::new_checked(&*dgram) else {
        sh.drops.inc(DropReason::MalformedNet);
        return;
    };
    let repr = DataRepr::parse(&p);
    let Some(link) = table.link_by_index(repr.index) else {
        sh.drops.inc(DropReason::UnknownIndex);
        return;
    };
    let (hdr, body) = dgram.split_at_mut(repr.buffer_len());
    let opened = {
        let mut opener = match link.opener.lock() {
            Ok(o) => o,
            Err(p) => p.into_inner(),
        };
        opener.open(repr.counter, hdr, body)
    };
    let n = match opened {
        Ok(n) => n,
        Err(OpenError::Replay) => return link.stats.drop(DropReason::Replay),
        Err(OpenError::Auth) => return link.stats.drop(DropReason::Auth),
    };
    link.stats.received(n as u64, now_ms);
    if repr.kind == DataKind::KeepAlive {
        return;
    }
    let inner = &mut body[..n];
    let Some(info) = Ipv4Info::parse(inner) else {
        return link.stats.drop(DropReason::MalformedNet);
    };
    // The packet's source must belong to the router it started from: the
    // sender itself, or the origin a relayed packet names. The router it is
    // for checks that the origin tagged it (a relay cannot: the key is the
    // origin's and ours); a relay on the way can only check the name.
    let origin = repr.relay.map_or(link.peer, |r| PeerName(r.origin));
    if origin == table.me || table.owner(info.src) != Some(origin) {
        return link.stats.drop(DropReason::Spoofed);
    }
    match (table.route(info.dst), repr.relay) {
        (Route::Local, None) => q.push(sh, inner),
        (Route::Local, Some(r)) => {
            let Some(keys) = table.origin_keys(origin) else {
                return link.stats.drop(DropReason::OriginUnknown);
            };
            match keys.verify(r.counter, &r.tag, inner) {
                Ok(()) => q.push(sh, inner),
                Err(OriginError::Auth) => link.stats.drop(DropReason::OriginAuth),
                Err(OriginError::Replay) => link.stats.drop(DropReason::OriginReplay),
            }
        }
        // Only packets their origin tagged are relayed: a direct packet
        // for an address another router owns is the sender's mistake (its
        // ring is behind ours).
        (Route::Via(next), Some(r)) if next.peer != link.peer => {
            if !decrement_ttl(inner) {
                link.stats.drop(DropReason::TtlExpired);
                icmp.send_remote(sh, table, tx, inner, &info, IcmpError::TimeExceeded);
                return;
            }
            if inner.len() > usize::from(next.mtu) {
                next.stats.drop(DropReason::TooBig);
                if info.dont_fragment {
                    icmp.send_remote(
                        sh,
                        table,
                        tx,
                        inner,
                        &info,
                        IcmpError::FragmentationNeeded(next.mtu),
                    );
                }
                return;
            }
            tx.push(sh, next, Hop::Forward(r), inner);
        }
        // Back where it came from, not tagged for relaying, or nowhere to go.
        (Route::Via(_) | Route::Unreachable, _) => {
            link.stats.drop(DropReason::NoRoute);
            icmp.send_remote(sh, table, tx, inner, &info, IcmpError::HostUnreachable);
        }
    }
}
