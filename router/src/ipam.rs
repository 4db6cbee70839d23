//! The `ipam` channel: the pure [`Bootstrap`] (ring, allocator, consensus)
//! riding on the mesh, persisted to `ipam.json` in the data directory.
//!
//! Every change is written (atomically: temporary file, fsync, rename) before
//! anything that depends on it leaves the process: an API answer, a gossiped
//! ring, a consensus promise. Messages to send go to an outbox that the
//! daemon loop drains after every event.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use weft_api::NotReady;
use weft_ipam_crdt::wire::{knowledge_from_wire, knowledge_to_wire};
use weft_ipam_crdt::{AddrRange, AllocError, Bootstrap, Init, Ring, Snapshot, Waiting};
use weft_peer_proto::PeerName;
use weft_peer_proto::codec::{decode_ipam, encode_ipam};
use weft_peer_proto::ipam::{ClaimsWire, FreeHint, IpamMsg, RingWire};

use crate::mesh::{ChannelError, GossipChannel};

pub const CHANNEL: &str = "ipam";

#[derive(Serialize, Deserialize)]
struct Persisted {
    ring: RingWire,
    allocs: Vec<(String, u32)>,
    consensus: Vec<ClaimsWire>,
}

/// Parses `--ipalloc-init`: `consensus=N`, `seed=NAME,NAME,...` or `observer`.
pub fn parse_init(s: &str) -> Result<Init> {
    if s == "observer" {
        return Ok(Init::Observer);
    }
    if let Some(n) = s.strip_prefix("consensus=") {
        let n: usize = n
            .parse()
            .with_context(|| format!("consensus=N needs a number, got {n:?}"))?;
        if n == 0 {
            bail!("consensus=0 makes no sense: at least one router must vote");
        }
        return Ok(Init::Consensus(n));
    }
    if let Some(list) = s.strip_prefix("seed=") {
        let seeds: Vec<PeerName> = list
            .split(',')
            .map(|p| p.trim().parse::<PeerName>().map_err(anyhow::Error::from))
            .collect::<Result<_>>()?;
        if seeds.is_empty() {
            bail!("seed= needs at least one peer name");
        }
        return Ok(Init::Seed(seeds));
    }
    bail!("--ipalloc-init must be consensus=N, seed=NAME[,NAME...] or observer, not {s:?}")
}

pub struct IpamService {
    b: Bootstrap,
    path: PathBuf,
    epoch: Instant,
    /// Our state changed: gossip it.
    pub dirty: bool,
    /// Send our state straight to these peers (we donated to them).
    pub direct: Vec<PeerName>,
    pub bad_messages: u64,
    /// Free addresses per router, as each last said: (seq, free).
    hints: std::collections::BTreeMap<PeerName, (u64, u64)>,
    /// Set when persisting failed: we neither gossip nor allocate any more.
    broken: Option<String>,
}
impl IpamService {
    /// Opens (or creates) the persisted state in `data_dir`.
    /// Whether a data directory holds IPAM state (then `--ipalloc-init` no
    /// longer matters: the persisted ring is restored).
    pub fn has_state(data_dir: &Path) -> bool {
        data_dir.join("ipam.json").exists()
    }

    /// Whether our own name is in the ring's removed set: we can allocate
    /// nothing, ever.
    pub fn is_removed(&self) -> bool {
        let a = self.b.alloc();
        a.ring().removed().contains(&a.me())
    }

    pub fn open(me: PeerName, range: AddrRange, init: Init, data_dir: &Path) -> Result<Self> {
        let path = data_dir.join("ipam.json");
        let epoch = Instant::now();
        let b = match crate::store::read_json::<Persisted>(&path)? {
            Some(p) => {
                let ring = Ring::from_wire(&p.ring, range).map_err(|e| {
                    anyhow::anyhow!(
                        "{}: {e}; if --ipalloc-range changed on purpose, remove the file (its allocations are lost)",
                        path.display()
                    )
                })?;
                let snap = Snapshot {
                    ring,
                    allocs: p.allocs,
                };
                Bootstrap::restore(me, init, snap, &knowledge_from_wire(&p.consensus), 0)
            }
            None => Bootstrap::new(me, range, init, 0),
        };
        let s = IpamService {
            b,
            path,
            epoch,
            dirty: true,
            direct: Vec::new(),
            bad_messages: 0,
            hints: Default::default(),
            broken: None,
        };
        s.persist()?;
        Ok(s)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn persist(&self) -> Result<()> {
        let snap = self.b.alloc().snapshot();
        let p = Persisted {
            ring: snap.ring.to_wire(),
            allocs: snap.allocs,
            consensus: knowledge_to_wire(self.b.knowledge()),
        };
        crate::store::write_json(&self.path, &p)
    }

    /// Persists a change, and only then marks our state for gossip. If the
    /// write fails, the service stops gossiping and allocating (nothing
    /// that is not on disk may leave the process); the error is logged by
    /// the mesh and shown in status.
    fn changed(&mut self) -> Result<(), ChannelError> {
        match self.persist() {
            Ok(()) => {
                self.dirty = true;
                Ok(())
            }
            Err(e) => {
                self.broken = Some(format!("{e:#}"));
                Err(ChannelError(format!("persisting IPAM state: {e:#}")))
            }
        }
    }

    /// Why the service stopped (a failed write), if it did.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    pub fn bootstrap(&self) -> &Bootstrap {
        &self.b
    }

    pub fn range(&self) -> AddrRange {
        self.b.alloc().ring().range()
    }

    /// The encoded state we gossip (our free count refreshed in it).
    pub fn state_msg(&mut self) -> Option<Vec<u8>> {
        let me = self.b.alloc().me();
        let free = self.b.alloc().free_count();
        if self.hints.get(&me).is_none_or(|(_, f)| *f != free) {
            // Wall-clock milliseconds: larger after a restart too.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let seq = now.max(self.hints.get(&me).map_or(0, |(s, _)| s + 1));
            self.hints.insert(me, (seq, free));
        }
        if self.broken.is_some() {
            return None;
        }
        // Once the ring is seeded nobody needs the claims (a late router
        // adopts the ring), and they grow with the square of the voters.
        let consensus = if self.b.alloc().ring().is_seeded() {
            Vec::new()
        } else {
            knowledge_to_wire(self.b.knowledge())
        };
        let msg = IpamMsg::State {
            ring: self.b.alloc().ring().to_wire(),
            consensus,
            free: self
                .hints
                .iter()
                .map(|(p, (seq, free))| FreeHint {
                    peer: *p,
                    seq: *seq,
                    free: *free,
                })
                .collect(),
        };
        encode_ipam(&msg).ok()
    }

    /// Free addresses `peer` last reported.
    pub fn free_of(&self, peer: PeerName) -> Option<u64> {
        self.hints.get(&peer).map(|(_, f)| *f)
    }

    pub fn space_request() -> Option<Vec<u8>> {
        encode_ipam(&IpamMsg::SpaceRequest).ok()
    }

    /// Allocates (or, with `addr`, claims) for `key`; persisted before it returns.
    pub fn allocate(&mut self, key: &str, addr: Option<u32>) -> Result<Result<u32, AllocError>> {
        if let Some(why) = &self.broken {
            bail!("IPAM stopped after a failed write: {why}");
        }
        let before = self.b.alloc().lookup(key);
        let r = match addr {
            Some(a) => self.b.alloc_mut().claim(key, a).map(|()| a),
            None => self.b.alloc_mut().allocate(key),
        };
        if r.is_ok() && before != r.as_ref().ok().copied() {
            self.persist()?;
        }
        Ok(r)
    }

    /// Releases `key` (unknown keys are fine); persisted before it returns.
    pub fn release(&mut self, key: &str) -> Result<Option<u32>> {
        if let Some(why) = &self.broken {
            bail!("IPAM stopped after a failed write: {why}");
        }
        let r = self.b.alloc_mut().release(key);
        if r.is_some() {
            self.persist()?;
        }
        Ok(r)
    }

    pub fn remove_peer(&mut self, peer: PeerName) -> Result<bool> {
        let changed = self.b.alloc_mut().remove_peer(peer);
        if changed {
            self.dirty = true;
            self.persist()?;
        }
        Ok(changed)
    }

    /// Time passing (consensus proposals).
    pub fn tick(&mut self, jitter: u64) {
        let now = self.now_ms();
        if self.b.tick(now, jitter) && self.changed().is_err() {
            self.bad_messages += 1;
        }
    }

    /// Seconds we have been waiting for the range to be split (or ready since).
    pub fn waiting(&self) -> (Waiting, u64) {
        (
            self.b.waiting(),
            self.now_ms().saturating_sub(self.b.since_ms()) / 1000,
        )
    }

    /// Why this router cannot take pods now (None when it can): the range
    /// not split yet, or allocation stopped after a failed write.
    pub fn not_ready(&self) -> Option<NotReady> {
        if let Some(why) = &self.broken {
            return Some(NotReady::Stopped { error: why.clone() });
        }
        if self.is_removed() {
            return Some(NotReady::Removed);
        }
        match self.waiting() {
            (Waiting::Ready, _) => None,
            (
                Waiting::Consensus {
                    seen,
                    expected,
                    quorum,
                },
                secs,
            ) => Some(NotReady::AwaitingConsensus {
                secs,
                seen,
                expected,
                quorum,
            }),
            (Waiting::Ring, secs) => Some(NotReady::AwaitingRing { secs }),
        }
    }

    /// Why an allocation cannot be served now, for humans.
    pub fn waiting_reason(&self) -> String {
        match self.not_ready() {
            Some(why) => why.to_string(),
            None => "no free address here; asked a peer for space".into(),
        }
    }

    /// The peer to ask for space: the reachable one with the most free
    /// addresses as far as we know, else the one owning the most.
    pub fn donor(&self, reachable: impl Fn(PeerName) -> bool) -> Option<PeerName> {
        let me = self.b.alloc().me();
        let own = self.b.alloc().ring().ownership();
        own.into_iter()
            .filter(|(p, _)| *p != me && reachable(*p))
            .max_by_key(|(p, owned)| (self.free_of(*p).unwrap_or(0), *owned))
            .map(|(p, _)| p)
    }

    fn on_state(&mut self, payload: &[u8]) -> Result<bool, ChannelError> {
        let bad = |e: String| ChannelError(e);
        match decode_ipam(payload).map_err(|e| bad(e.to_string()))? {
            IpamMsg::State {
                ring,
                consensus,
                free,
            } => {
                let range = self.range();
                let ring = Ring::from_wire(&ring, range).map_err(|e| bad(e.to_string()))?;
                let now = self.now_ms();
                let changed =
                    match self
                        .b
                        .on_state(Some(&ring), &knowledge_from_wire(&consensus), now)
                    {
                        Ok(c) => c,
                        Err(e) => {
                            // Our consensus claims may have moved before the ring
                            // was refused: they must be on disk before they are sent.
                            let _ = self.changed();
                            return Err(bad(e.to_string()));
                        }
                    };
                if changed {
                    self.changed()?;
                }
                // Hints only for routers that own space, so they stay bounded.
                let owners = self.b.alloc().ring().ownership();
                let me = self.b.alloc().me();
                for h in free {
                    let newer = self.hints.get(&h.peer).is_none_or(|(s, _)| *s < h.seq);
                    if h.peer != me && owners.contains_key(&h.peer) && newer {
                        self.hints.insert(h.peer, (h.seq, h.free));
                    }
                }
                self.hints.retain(|p, _| owners.contains_key(p) || *p == me);
                Ok(changed)
            }
            IpamMsg::SpaceRequest => Err(bad("space request gossiped instead of unicast".into())),
        }
    }
}

pub fn fmt_addr(a: u32) -> String {
    Ipv4Addr::from(a).to_string()
}

/// The range as the API shows it.
pub fn cidr(r: AddrRange) -> weft_api::Cidr {
    weft_api::Cidr {
        addr: Ipv4Addr::from(r.start),
        prefix: prefix_len(r) as u8,
    }
}

/// Prefix length of the range when it is a CIDR block.
pub fn prefix_len(r: AddrRange) -> u32 {
    // 32 - log2(len), with log2(len) = 63 - leading_zeros(len).
    r.len().max(1).leading_zeros().saturating_sub(31)
}

impl GossipChannel for IpamService {
    fn on_unicast(&mut self, src: PeerName, payload: &[u8]) -> Result<(), ChannelError> {
        match decode_ipam(payload).map_err(|e| ChannelError(e.to_string()))? {
            IpamMsg::SpaceRequest => {
                if self.broken.is_none() && self.b.alloc_mut().donate(src).is_some() {
                    self.changed()?;
                    self.direct.push(src);
                }
                Ok(())
            }
            IpamMsg::State { .. } => self.on_state(payload).map(|_| ()),
        }
    }

    fn on_broadcast(&mut self, _src: PeerName, payload: &[u8]) -> Result<(), ChannelError> {
        self.on_state(payload).map(|_| ())
    }

    fn on_gossip(&mut self, payload: &[u8]) -> Result<Option<Vec<u8>>, ChannelError> {
        // The state is small: news is relayed as our whole new state.
        Ok(if self.on_state(payload)? {
            self.state_msg()
        } else {
            None
        })
    }

    fn full_state(&mut self) -> Option<Vec<u8>> {
        self.state_msg()
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_parsing() {
        assert_eq!(parse_init("consensus=3").ok(), Some(Init::Consensus(3)));
        assert_eq!(parse_init("observer").ok(), Some(Init::Observer));
        assert_eq!(
            parse_init("seed=00:00:00:00:00:00:00:01,00:00:00:00:00:00:00:02").ok(),
            Some(Init::Seed(vec![PeerName(1), PeerName(2)]))
        );
        for bad in [
            "consensus=0",
            "consensus=x",
            "seed=",
            "seed=abc",
            "paxos",
            "",
        ] {
            assert!(parse_init(bad).is_err(), "{bad}");
        }
        assert_eq!(prefix_len("10.32.0.0/12".parse().expect("cidr")), 12);
        assert_eq!(prefix_len("10.0.0.0/32".parse().expect("cidr")), 32);
        assert_eq!(prefix_len("0.0.0.0/0".parse().expect("cidr")), 0);
    }

    #[test]
    fn allocations_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("weft-ipam-svc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let range: AddrRange = "10.32.0.0/24".parse().expect("cidr");
        let me = PeerName(1);
        let mut s = IpamService::open(me, range, Init::Seed(vec![me]), &dir).expect("open");
        let a = s.allocate("c1", None).expect("io").expect("space");
        drop(s);
        let mut s = IpamService::open(me, range, Init::Seed(vec![me]), &dir).expect("reopen");
        assert_eq!(s.allocate("c1", None).expect("io"), Ok(a));
        let other: AddrRange = "10.33.0.0/24".parse().expect("cidr");
        assert!(
            IpamService::open(me, other, Init::Seed(vec![me]), &dir).is_err(),
            "range changed"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
