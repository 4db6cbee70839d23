#![no_main]
//! The mesh core (`weft-mesh`) as a state machine under frame sequences.
//!
//! Two honest cores, A (under test) and B, built with seeded keys and a
//! tiny test channel, talk over a real session whose frames the input
//! delivers (or tampers with) when it likes. Three more routers exist only
//! as keys: the input signs entries and channel messages with them (or
//! with the wrong key), connects and disconnects them at A, replays and
//! mutates what went by, and feeds garbage. Every frame goes through
//! `encode_frame` / `decode_frame` as a driver's would. Virtual time
//! advances by ticks. Checked after every step, at both cores:
//! - no panic;
//! - the topology holds at most `max_peers` entries, its byte count is the
//!   sum of its entries' sizes, and a step raises it past the bound only by
//!   what entries grew once admitted (updates of held entries are never
//!   refused);
//! - our own entry is ours (our name, key, uid; a valid signature) and its
//!   version never goes back;
//! - every route is a shortest path over links both ends confirm;
//! - every counter is monotonic;
//! - a relayed message left with one hop fewer than it came with, and only
//!   if it came with one to spare; no message is relayed or delivered to
//!   the channel twice.
//!
//! Speed: the signatures are real Ed25519 (ring), but a fuzzing build
//! (`cfg(fuzzing)`) of `weft_peer_proto::sign` remembers, for the process,
//! the key pair of each seed, each signature made and each check's result:
//! all pure functions of their inputs, so no outcome changes and a bad
//! signature still fails (BENCHMARKS.md, "Fuzzing", has the profile).
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use weft_mesh::topology::entry_size;
use weft_mesh::{
    Action, Admit, ChannelError, Config, GossipChannel, GossipSender, Mesh, MeshCounters, SigCache,
};
use weft_peer_proto::codec::{decode_frame, encode_frame};
use weft_peer_proto::limits::{MAX_ENTRY_VERSION, MAX_HOPS};
use weft_peer_proto::sign::{KeyPair, Signer};
use weft_peer_proto::topology::{DigestEntry, PeerEntry, TopologyMsg};
use weft_peer_proto::{ChannelName, Frame, GossipMsg, PeerName, Verb};

/// A, B, and three routers that exist only as keys.
const ROUTERS: usize = 5;
const A: usize = 0;
const B: usize = 1;
/// A's session with B (and B's with A).
const SID_AB: u64 = 1;
/// Sessions of the key-only routers at A.
const FAKE_SIDS: std::ops::RangeInclusive<u64> = 10..=15;
const MAX_PEERS: usize = 4;
const MAX_BYTES: usize = 700;
const HOP_LIMIT: u8 = 3;
const HELD: usize = 24;
/// The smallest entry, as `entry_size` counts it.
const MIN_ENTRY: usize = 128;

fn keys() -> &'static [Arc<KeyPair>] {
    static KEYS: OnceLock<Vec<Arc<KeyPair>>> = OnceLock::new();
    KEYS.get_or_init(|| {
        (0..ROUTERS as u8)
            .map(|i| Arc::new(KeyPair::from_seed([i + 1; 32])))
            .collect()
    })
}

/// The routers' names, hashed once: `settle` and `check` ask for ours at
/// every step.
fn name(i: usize) -> PeerName {
    static NAMES: OnceLock<Vec<PeerName>> = OnceLock::new();
    NAMES.get_or_init(|| keys().iter().map(|k| k.name()).collect())[i]
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, i as u8 + 1], 6783))
}

/// Signatures that passed, shared by every run: a cache of a pure check,
/// so what a run does does not depend on what ran before.
fn cache() -> Arc<SigCache> {
    static CACHE: OnceLock<Arc<SigCache>> = OnceLock::new();
    CACHE.get_or_init(|| Arc::new(SigCache::new(4096))).clone()
}

/// Merges what is new; a payload starting with 0xff is refused.
struct TestChannel {
    name: ChannelName,
    sender: GossipSender,
    seen: HashSet<Vec<u8>>,
    deliveries: u64,
}

impl TestChannel {
    fn take(&mut self, payload: &[u8]) -> std::result::Result<bool, ChannelError> {
        if payload.first() == Some(&0xff) {
            return Err(ChannelError("refused".into()));
        }
        self.deliveries += 1;
        Ok(self.seen.insert(payload.to_vec()))
    }
}

impl GossipChannel for TestChannel {
    fn name(&self) -> &ChannelName {
        &self.name
    }
    fn on_unicast(
        &mut self,
        _: Instant,
        _: PeerName,
        p: &[u8],
    ) -> std::result::Result<(), ChannelError> {
        self.take(p).map(|_| ())
    }
    fn on_broadcast(
        &mut self,
        _: Instant,
        _: PeerName,
        p: &[u8],
    ) -> std::result::Result<(), ChannelError> {
        self.take(p).map(|_| ())
    }
    fn on_gossip(
        &mut self,
        _: Instant,
        p: &[u8],
    ) -> std::result::Result<Option<Vec<u8>>, ChannelError> {
        Ok(self.take(p)?.then(|| p.to_vec()))
    }
    fn full_state(&mut self, _: Instant) -> Option<Vec<u8>> {
        None
    }
    fn sender(&mut self) -> &mut GossipSender {
        &mut self.sender
    }
}

fn channel(n: &str) -> ChannelName {
    ChannelName::new(n).unwrap_or_else(|_| unreachable!())
}

/// One honest core and what the checks remember of it.
struct Core {
    me: usize,
    mesh: Mesh<TestChannel>,
    counters: Vec<u64>,
    own_version: u64,
    own_sig: weft_peer_proto::sign::Sig,
    /// Messages of other sources relayed (by source, seq), in earlier steps.
    relayed: HashSet<(PeerName, u64)>,
    /// Messages delivered to the channel, by (source, seq).
    delivered: HashSet<(PeerName, u64)>,
    /// This step: foreign messages taken in, with the hops they came with.
    came: HashMap<(PeerName, u64), u8>,
    /// This step: the most hops a gossip message we took in came with.
    gossip_hops: u8,
    sizes: BTreeMap<PeerName, usize>,
    bytes: usize,
}

fn counters(c: &MeshCounters) -> Vec<u64> {
    vec![
        c.topology_news,
        c.unroutable,
        c.unknown_channel,
        c.channel_errors,
        c.peers_refused,
        c.unknown_source,
        c.throttled,
        c.forged.topology_signature,
        c.forged.topology_form,
        c.forged.channel_signature,
        c.forged.channel_source,
        c.equivocations,
        c.evicted,
        c.hop_limit,
        c.duplicates,
    ]
}

impl Core {
    fn new(me: usize, now: Instant) -> Self {
        let mut cfg = Config::new(
            keys()[me].clone(),
            format!("n{me}"),
            me as u64 + 7,
            me as u64,
        );
        cfg.max_peers = MAX_PEERS;
        cfg.max_topology_bytes = MAX_BYTES;
        cfg.hop_limit = HOP_LIMIT;
        cfg.peer_gc_after = Duration::from_secs(10);
        cfg.fanout = 2;
        cfg.sig_cache = cache();
        let ch = TestChannel {
            name: channel("t"),
            sender: GossipSender::default(),
            seen: HashSet::new(),
            deliveries: 0,
        };
        let mesh = Mesh::new(cfg, ch, now);
        let own = mesh.topology().me().clone();
        let mut c = Core {
            me,
            counters: counters(&mesh.counters),
            own_version: own.version,
            own_sig: own.sig,
            mesh,
            relayed: HashSet::new(),
            delivered: HashSet::new(),
            came: HashMap::new(),
            gossip_hops: 0,
            sizes: BTreeMap::new(),
            bytes: 0,
        };
        c.remember_sizes();
        c
    }

    fn remember_sizes(&mut self) {
        let t = self.mesh.topology();
        self.sizes = t.entries().map(|e| (e.name, entry_size(e))).collect();
        self.bytes = t.bytes();
    }

    /// A frame from the wire, as a driver hands it over: decoded, and only
    /// if it decodes.
    fn feed(&mut self, now: Instant, sid: u64, bytes: &[u8]) {
        let Ok(frame) = decode_frame(bytes) else {
            return;
        };
        let id = match &frame {
            Frame::Gossip(m) => Some(((m.source(), m.seq), m.hops, m.verb)),
            _ => None,
        };
        let before = self.mesh.channels().deliveries;
        let _ = self.mesh.handle_frame(now, sid, frame);
        if let Some((id, hops, verb)) = id {
            if self.mesh.channels().deliveries > before {
                assert!(
                    self.delivered.insert(id),
                    "{id:?} delivered to the channel twice"
                );
            }
            if id.0 != name(self.me) {
                self.came.entry(id).or_insert(hops);
            }
            if verb == Verb::Gossip {
                self.gossip_hops = self.gossip_hops.max(hops);
            }
        }
    }

    /// Drains the core's outputs and checks every invariant. Returns the
    /// frames sent (session, encoded) and the sessions it closed.
    fn settle(&mut self) -> (Vec<(u64, Vec<u8>)>, Vec<u64>) {
        let me = name(self.me);
        let mut sent = Vec::new();
        let mut relayed_now = HashSet::new();
        while let Some(t) = self.mesh.poll_transmit() {
            if let Frame::Gossip(m) = &t.frame {
                assert!(m.hops <= MAX_HOPS, "hops {} above the limit", m.hops);
                let id = (m.source(), m.seq);
                if id.0 == me {
                    let allowed = HOP_LIMIT.max(self.gossip_hops.saturating_sub(1));
                    assert!(m.hops <= allowed, "our message with {} hops", m.hops);
                } else {
                    let came = self.came.get(&id).copied();
                    assert!(
                        came.is_some_and(|h| h >= 1 && m.hops == h - 1),
                        "{id:?} relayed with {} hops, came with {came:?}",
                        m.hops
                    );
                    assert!(!self.relayed.contains(&id), "{id:?} relayed twice");
                    relayed_now.insert(id);
                }
            }
            let bytes = encode_frame(&t.frame).expect("every frame we send encodes");
            sent.push((t.session, bytes));
        }
        self.relayed.extend(relayed_now);
        self.came.clear();
        self.gossip_hops = 0;
        let mut closed = Vec::new();
        while let Some(a) = self.mesh.poll_action() {
            if let Action::Close { session, .. } = a {
                closed.push(session);
            }
        }
        while self.mesh.poll_event().is_some() {}
        self.check();
        (sent, closed)
    }

    fn check(&mut self) {
        let me = name(self.me);
        // Counters only grow.
        let now = counters(&self.mesh.counters);
        for (i, (a, b)) in self.counters.iter().zip(&now).enumerate() {
            assert!(b >= a, "counter {i} went from {a} to {b}");
        }
        self.counters = now;
        // Our own entry is ours.
        let t = self.mesh.topology();
        let own = t.me();
        assert_eq!(own.name, me);
        assert_eq!(own.sig.key, keys()[self.me].public_key());
        assert_eq!(own.uid, self.me as u64 + 7, "our entry's uid");
        assert!(own.version >= self.own_version, "our version went back");
        if own.sig != self.own_sig {
            assert!(own.verify().is_ok(), "our entry is signed by us");
            self.own_sig = own.sig;
        }
        self.own_version = own.version;
        // Bounds.
        assert!(t.len() <= MAX_PEERS, "{} entries", t.len());
        let sum: usize = t.entries().map(entry_size).sum();
        assert_eq!(t.bytes(), sum, "the byte count is the entries' sizes");
        // An entry admitted in this step (at least MIN_ENTRY bytes then) may
        // have grown in it too, like one held before.
        let grown: usize = t
            .entries()
            .map(|e| {
                let before = self.sizes.get(&e.name).copied().unwrap_or(MIN_ENTRY);
                entry_size(e).saturating_sub(before)
            })
            .sum();
        assert!(
            t.bytes() <= MAX_BYTES.max(self.bytes) + grown,
            "{} bytes (bound {MAX_BYTES}, before {}, entries grew {grown})",
            t.bytes(),
            self.bytes
        );
        // Routes: shortest paths over links both ends list.
        let conns: HashMap<PeerName, &[PeerName]> =
            t.entries().map(|e| (e.name, e.conns.as_slice())).collect();
        let linked = |a: PeerName, b: PeerName| {
            a != b
                && conns.get(&a).is_some_and(|c| c.contains(&b))
                && conns.get(&b).is_some_and(|c| c.contains(&a))
        };
        let mut dist: HashMap<PeerName, u32> = HashMap::from([(me, 0)]);
        let mut q = VecDeque::from([me]);
        while let Some(n) = q.pop_front() {
            let d = dist[&n];
            for m in conns.keys() {
                if !dist.contains_key(m) && linked(n, *m) {
                    dist.insert(*m, d + 1);
                    q.push_back(*m);
                }
            }
        }
        let linked_to_me: Vec<PeerName> =
            conns.keys().copied().filter(|n| linked(me, *n)).collect();
        let table = self.mesh.routes().table();
        assert_eq!(
            table.len(),
            dist.len() - 1,
            "routes to every reachable peer"
        );
        for (dst, hop, hops) in table {
            assert_eq!(
                dist.get(&dst),
                Some(&hops),
                "route to {dst} is a shortest path"
            );
            assert!(
                linked_to_me.contains(&hop),
                "next hop {hop} is over a confirmed link"
            );
        }
        self.remember_sizes();
    }
}

fn hello(of: usize, uid: u64, nonce: u64, your: Option<SocketAddr>) -> weft_peer_proto::Hello {
    weft_peer_proto::Hello {
        versions: weft_peer_proto::VersionRange {
            min: weft_peer_proto::PROTOCOL_MIN,
            max: weft_peer_proto::PROTOCOL_MAX,
        },
        name: name(of),
        nickname: format!("n{of}"),
        uid,
        listen_port: 6783,
        features: Default::default(),
        your_addr: your,
        nonce,
    }
}

struct World {
    now: Instant,
    a: Core,
    b: Core,
    /// Whether A and B hold their session, and the frames in flight each way.
    ab_up: bool,
    to_b: VecDeque<Vec<u8>>,
    to_a: VecDeque<Vec<u8>>,
    /// A's sessions with key-only routers.
    fakes: BTreeMap<u64, usize>,
    /// Frames that went by, for replays and mutations.
    held: VecDeque<Vec<u8>>,
}

impl World {
    fn hold(&mut self, bytes: Vec<u8>) {
        if self.held.len() == HELD {
            self.held.pop_front();
        }
        self.held.push_back(bytes);
    }

    fn settle(&mut self) {
        // Closing a session is an input too: settle until nothing closes.
        for _ in 0..4 {
            let (sent, closed) = self.a.settle();
            for (sid, bytes) in sent {
                if sid == SID_AB && self.ab_up {
                    self.to_b.push_back(bytes);
                } else {
                    self.hold(bytes);
                }
            }
            let (sent_b, closed_b) = self.b.settle();
            for (sid, bytes) in sent_b {
                if sid == SID_AB && self.ab_up {
                    self.to_a.push_back(bytes);
                }
            }
            if closed.is_empty() && closed_b.is_empty() {
                return;
            }
            for sid in closed {
                self.down_at_a(sid);
            }
            if closed_b.contains(&SID_AB) {
                self.down_at_a(SID_AB);
            }
        }
    }

    fn down_at_a(&mut self, sid: u64) {
        let now = self.now;
        self.a.mesh.connection_down(now, sid, "closed".into());
        if sid == SID_AB && self.ab_up {
            self.b.mesh.connection_down(now, SID_AB, "closed".into());
            self.ab_up = false;
            self.to_a.clear();
            self.to_b.clear();
        }
        self.fakes.remove(&sid);
    }

    fn fake_sid(&self, u: &mut Unstructured) -> Result<u64> {
        // Mostly a session that is up; sometimes B's, or one that is not.
        if u.ratio(1, 8)? {
            return Ok(SID_AB);
        }
        let ids: Vec<u64> = self.fakes.keys().copied().collect();
        if !ids.is_empty() && u.ratio(7, 8)? {
            return Ok(ids[u.choose_index(ids.len())?]);
        }
        u.int_in_range(FAKE_SIDS)
    }

    fn entry(&self, u: &mut Unstructured) -> Result<PeerEntry> {
        let signer = u.choose_index(ROUTERS)?;
        let uid = u64::from(u.int_in_range(0..=2u8)?) + 7;
        let version = match u.int_in_range(0..=9u8)? {
            0 => MAX_ENTRY_VERSION,
            1 => MAX_ENTRY_VERSION + 1,
            2 => u64::MAX,
            _ => u64::from(u.int_in_range(0..=12u8)?),
        };
        let mask: u8 = u.arbitrary()?;
        let conns: Vec<PeerName> = (0..ROUTERS)
            .filter(|i| mask & (1 << i) != 0)
            .map(name)
            .collect();
        let addrs: Vec<SocketAddr> = (0..u.int_in_range(0..=2u8)?)
            .map(|i| addr(usize::from(i) + 10))
            .collect();
        let nick = "x".repeat(usize::from(u.int_in_range(0..=8u8)?));
        let mut e = PeerEntry::signed(&*keys()[signer], nick, uid, version, addrs, conns, [0; 32]);
        match u.int_in_range(0..=7u8)? {
            // Another router's entry under this key.
            0 => e.name = name(u.choose_index(ROUTERS)?),
            // Connections out of normal form.
            1 => e.conns.reverse(),
            // Changed after signing.
            2 => e.version = e.version.wrapping_add(1),
            _ => {}
        }
        Ok(e)
    }

    fn gossip(&self, u: &mut Unstructured) -> Result<GossipMsg> {
        // Not A's or B's key: a core that signs as itself is its own source.
        let signer = u.int_in_range(2..=ROUTERS - 1)?;
        let src = if u.ratio(1, 4)? {
            name(u.choose_index(ROUTERS)?)
        } else {
            name(signer)
        };
        let verb = match u.int_in_range(0..=2u8)? {
            0 => Verb::Gossip,
            1 => Verb::Broadcast { src },
            _ => Verb::Unicast {
                src,
                dst: name(u.choose_index(ROUTERS)?),
            },
        };
        let ch = if u.ratio(1, 8)? { "u" } else { "t" };
        let seq = u64::from(u.int_in_range(0..=15u8)?);
        let hops = u.int_in_range(0..=MAX_HOPS + 1)?;
        let len = usize::from(u.int_in_range(0..=3u8)?);
        let payload = u.bytes(len)?.to_vec();
        Ok(GossipMsg::signed(
            &*keys()[signer],
            channel(ch),
            verb,
            seq,
            hops,
            payload,
        ))
    }

    fn send_to_a(&mut self, sid: u64, frame: &Frame) {
        if let Ok(bytes) = encode_frame(frame) {
            self.a.feed(self.now, sid, &bytes);
            self.hold(bytes);
        }
    }

    fn step(&mut self, u: &mut Unstructured) -> Result<()> {
        let now = self.now;
        match u.int_in_range(0..=11u8)? {
            0 | 1 => {
                let ms = match u.int_in_range(0..=7u8)? {
                    0 => u64::from(u.arbitrary::<u16>()?) * 16,
                    _ => u64::from(u.arbitrary::<u16>()? % 3000),
                };
                self.now += Duration::from_millis(ms);
                let now = self.now;
                self.a.mesh.handle_timeout(now);
                self.b.mesh.handle_timeout(now);
            }
            2 => {
                if self.ab_up {
                    return Ok(());
                }
                let outbound: bool = u.arbitrary()?;
                let nonce: u64 = u.int_in_range(0..=3)?;
                let (ha, hb) = (
                    hello(A, A as u64 + 7, nonce, Some(addr(B))),
                    hello(B, B as u64 + 7, nonce, Some(addr(A))),
                );
                let at_a = self
                    .a
                    .mesh
                    .connection_up(now, SID_AB, &hb, addr(B), outbound);
                let at_b = self
                    .b
                    .mesh
                    .connection_up(now, SID_AB, &ha, addr(A), !outbound);
                match (at_a, at_b) {
                    (Admit::Accept, Admit::Accept) => self.ab_up = true,
                    (Admit::Accept, _) => self.a.mesh.connection_down(now, SID_AB, "x".into()),
                    (_, Admit::Accept) => self.b.mesh.connection_down(now, SID_AB, "x".into()),
                    _ => {}
                }
            }
            3 => {
                if self.ab_up {
                    self.down_at_a(SID_AB);
                }
            }
            // Frames in flight between A and B, maybe one of them tampered with.
            4 | 5 => {
                let to_a: bool = u.arbitrary()?;
                let n = u.int_in_range(1..=4u8)?;
                let tamper = u.ratio(1, 4)?;
                for i in 0..n {
                    let q = if to_a { &mut self.to_a } else { &mut self.to_b };
                    let Some(mut bytes) = q.pop_front() else {
                        break;
                    };
                    if tamper && i == 0 && !bytes.is_empty() {
                        let at = u.choose_index(bytes.len())?;
                        bytes[at] ^= u.int_in_range(1..=255u8)?;
                    }
                    if to_a {
                        self.a.feed(now, SID_AB, &bytes);
                        self.hold(bytes);
                    } else {
                        self.b.feed(now, SID_AB, &bytes);
                    }
                }
            }
            6 => {
                let p = u.int_in_range(2..=ROUTERS + 1)?;
                // Now and then a hello in A's or B's name.
                let p = if p > ROUTERS - 1 {
                    u.choose_index(2)?
                } else {
                    p
                };
                let sid = u.int_in_range(FAKE_SIDS)?;
                if self.fakes.contains_key(&sid) {
                    return Ok(());
                }
                let uid = u64::from(u.int_in_range(0..=2u8)?) + 7;
                let nonce = u64::from(u.int_in_range(0..=3u8)?);
                let outbound: bool = u.arbitrary()?;
                let h = hello(p, uid, nonce, Some(addr(A)));
                // (One in B's name replaces A's session with B: A closes that.)
                if self.a.mesh.connection_up(now, sid, &h, addr(p), outbound) == Admit::Accept {
                    self.fakes.insert(sid, p);
                }
            }
            7 => {
                let sid = u.int_in_range(FAKE_SIDS)?;
                self.down_at_a(sid);
            }
            8 => {
                let sid = self.fake_sid(u)?;
                let n = u.int_in_range(1..=3u8)?;
                let mut entries = Vec::new();
                for _ in 0..n {
                    entries.push(self.entry(u)?);
                }
                self.send_to_a(sid, &Frame::Topology(TopologyMsg::Update { entries }));
            }
            9 => {
                let sid = self.fake_sid(u)?;
                let m = self.gossip(u)?;
                self.send_to_a(sid, &Frame::Gossip(m));
            }
            // A frame that went by, again (maybe on another session), maybe
            // mutated; or bytes from nowhere.
            10 => {
                let sid = self.fake_sid(u)?;
                let mut bytes = match self.held.len() {
                    0 => Vec::new(),
                    n => self.held[u.choose_index(n)?].clone(),
                };
                match u.int_in_range(0..=3u8)? {
                    0 => {}
                    1 if !bytes.is_empty() => {
                        for _ in 0..u.int_in_range(1..=3u8)? {
                            let at = u.choose_index(bytes.len())?;
                            bytes[at] ^= u.int_in_range(1..=255u8)?;
                        }
                    }
                    _ => {
                        let len = usize::from(u.int_in_range(0..=48u8)?);
                        bytes = u.bytes(len)?.to_vec();
                    }
                }
                self.a.feed(now, sid, &bytes);
            }
            _ => {
                // A digest or summary naming anyone, or a channel message of our own.
                let sid = self.fake_sid(u)?;
                match u.int_in_range(0..=2u8)? {
                    0 => {
                        let mut entries = Vec::new();
                        for _ in 0..u.int_in_range(0..=4u8)? {
                            entries.push(DigestEntry {
                                name: name(u.choose_index(ROUTERS)?),
                                uid: u64::from(u.int_in_range(6..=9u8)?),
                                version: u64::from(u.int_in_range(0..=12u8)?),
                                hash: u.arbitrary()?,
                            });
                        }
                        let reply = u.arbitrary()?;
                        self.send_to_a(
                            sid,
                            &Frame::Topology(TopologyMsg::Digest { entries, reply }),
                        );
                    }
                    1 => {
                        let hash = u.arbitrary()?;
                        self.send_to_a(
                            sid,
                            &Frame::Topology(TopologyMsg::Summary { hash, peers: 3 }),
                        );
                    }
                    _ => {
                        let core = if u.arbitrary()? {
                            &mut self.a
                        } else {
                            &mut self.b
                        };
                        let payload = vec![u.int_in_range(0..=7u8)?];
                        let s = &mut core.mesh.channels_mut().sender;
                        match u.int_in_range(0..=2u8)? {
                            0 => s.gossip(payload),
                            1 => s.broadcast(payload),
                            _ => s.unicast(name(u.choose_index(ROUTERS)?), payload),
                        }
                    }
                }
            }
        }
        self.settle();
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let now = Instant::now();
    let mut w = World {
        now,
        a: Core::new(A, now),
        b: Core::new(B, now),
        ab_up: false,
        to_b: VecDeque::new(),
        to_a: VecDeque::new(),
        fakes: BTreeMap::new(),
        held: VecDeque::new(),
    };
    while !u.is_empty() {
        if w.step(&mut u).is_err() {
            break;
        }
    }
});
