#![no_main]
//! The `ipam` channel (`IpamChannel`) as a state machine under message
//! sequences, driven only through its public API.
//!
//! Three honest routers with seeded keys (two seeds of a /27, and an
//! observer that gets space only by donation) exchange their real
//! messages, delivered late, out of order, twice or never, while the input
//! allocates, claims, releases, asks for space, fails writes and lets time
//! pass. An admitted attacker (a key of its own) replays what went by,
//! sends mutated copies under its own name, garbage, space requests and
//! removal signatures of its own. After every step:
//! - no panic;
//! - no address is allocated by two honest routers;
//! - each honest allocation lies in a range its router owns, and each
//!   allocator's own invariants hold (`Allocator::check`);
//! - every message an honest router sends, and every state it saves,
//!   passes `IpamMsg::validate` (and decodes);
//! - the refusal counters never go back.
//!
//! Not covered, because it is not enforced yet (docs/trust.md, "Not yet
//! enforced"): ring entries are unsigned, so a forged ring can hand another
//! router's range to someone else, or one gift to two routers. A run ends
//! when the attacker's message changed who owns an address at an honest
//! router other than by a removal or by that router's own donation: from
//! there on duplicates are the known gap, not news. Once ring entries are
//! signed, that early end should go.
//!
//! Speed: the signatures are real Ed25519 (ring), but a fuzzing build
//! (`cfg(fuzzing)`) of `weft_peer_proto::sign` remembers, for the process,
//! the key pair of each seed, each signature made and each check's result:
//! all pure functions of their inputs, so no outcome changes and a bad
//! signature still fails (BENCHMARKS.md, "Fuzzing", has the profile).
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use weft_ipam_crdt::channel::SPACE_DOMAIN;
use weft_ipam_crdt::{AddrRange, Init, IpamChannel, Removal};
use weft_mesh::{ChannelSend, GossipChannel};
use weft_peer_proto::PeerName;
use weft_peer_proto::codec::{decode_ipam, encode_ipam};
use weft_peer_proto::ipam::{
    ClaimsWire, EntryWire, FREE_DOMAIN, FreeHint, IpamMsg, RemovalWire, RingWire, SpaceRequestWire,
};
use weft_peer_proto::sign::{KeyPair, Signer};

const HONEST: usize = 3;
const START: u32 = 0x0a00_0000;
const LEN: u64 = 32;
const WALL_MS: u64 = 1_700_000_000_000;
const POOL: usize = 16;
const KEYS_PER_ROUTER: u8 = 12;

fn seed(i: usize) -> [u8; 32] {
    [i as u8 + 1; 32]
}

fn names() -> &'static [PeerName; HONEST] {
    static N: OnceLock<[PeerName; HONEST]> = OnceLock::new();
    N.get_or_init(|| std::array::from_fn(|i| KeyPair::from_seed(seed(i)).name()))
}

fn attacker() -> &'static KeyPair {
    static K: OnceLock<KeyPair> = OnceLock::new();
    K.get_or_init(|| KeyPair::from_seed([99; 32]))
}

fn range() -> AddrRange {
    AddrRange::new(START, u64::from(START) + LEN)
}

/// Whoever the input names: an honest router or the attacker.
fn anyone(u: &mut Unstructured) -> Result<PeerName> {
    let i = u.choose_index(HONEST + 1)?;
    Ok(if i == HONEST {
        attacker().name()
    } else {
        names()[i]
    })
}

/// A message that went by: who sent it, how, to whom.
#[derive(Clone)]
struct Sent {
    src: PeerName,
    /// `None`: gossip (to every neighbour); else a unicast.
    dst: Option<PeerName>,
    payload: Vec<u8>,
}

/// (start, owner) of each piece of the ring.
fn owners(w: &RingWire) -> Vec<(u32, PeerName)> {
    w.entries.iter().map(|e| (e.token, e.owner)).collect()
}

fn owner_at(o: &[(u32, PeerName)], a: u32) -> Option<PeerName> {
    o.iter().rev().find(|(t, _)| *t <= a).map(|(_, p)| *p)
}

/// The owner of the entry just before the one holding `a` (wrapping): the
/// heir of that entry, were its owner removed.
fn owner_before(o: &[(u32, PeerName)], a: u32) -> Option<PeerName> {
    let at = o.iter().rposition(|(t, _)| *t <= a)?;
    let before = if at == 0 { o.len() - 1 } else { at - 1 };
    (before != at).then(|| o[before].1)
}

struct Router {
    ch: IpamChannel,
    me: PeerName,
    /// A write fails from now until the input lets it succeed.
    failing: bool,
    refused: Vec<u64>,
}

struct World {
    now: Instant,
    routers: Vec<Router>,
    /// Honest messages not delivered yet.
    pending: Vec<Sent>,
    /// Messages that went by, for replays and mutations.
    pool: Vec<Sent>,
}

impl World {
    fn new(now: Instant) -> Self {
        let seeds = vec![names()[0], names()[1]];
        let routers = (0..HONEST)
            .map(|i| {
                let init = if i < 2 {
                    Init::Seed(seeds.clone())
                } else {
                    Init::Observer
                };
                let key = KeyPair::from_seed(seed(i));
                let ch = IpamChannel::new(key, range(), init, now, WALL_MS);
                Router {
                    refused: ch.refused().by_kind().iter().map(|(_, v)| *v).collect(),
                    ch,
                    me: names()[i],
                    failing: false,
                }
            })
            .collect();
        World {
            now,
            routers,
            pending: Vec::new(),
            pool: Vec::new(),
        }
    }

    fn keep(&mut self, s: Sent) {
        if self.pool.len() == POOL {
            self.pool.remove(0);
        }
        self.pool.push(s);
    }

    fn index_of(&self, p: PeerName) -> Option<usize> {
        self.routers.iter().position(|r| r.me == p)
    }

    /// Delivers `payload` from `src` to router `to`, as the mesh would.
    fn deliver(&mut self, to: usize, src: PeerName, unicast: bool, payload: &[u8]) {
        let now = self.now;
        let ch = &mut self.routers[to].ch;
        let _ = if unicast {
            ch.on_unicast(now, src, payload)
        } else {
            ch.on_gossip(now, payload).map(|_| ())
        };
    }

    /// The attacker's message to `to`. Returns false when it took or gave
    /// away a range the way only signed ring entries would prevent.
    fn attack(&mut self, to: usize, unicast: bool, payload: &[u8]) -> bool {
        let me = self.routers[to].me;
        let before = owners(&self.routers[to].ch.ipam().alloc().ring().to_wire());
        self.deliver(to, attacker().name(), unicast, payload);
        let ring = self.routers[to].ch.ipam().alloc().ring().to_wire();
        let after = owners(&ring);
        // A removal explains a change only if the attacker did not sign it:
        // a forged range can leave so few owners in this router's view that
        // the attacker's one signature is a majority (found by this target:
        // two owners left, each may remove the other, and the removals
        // cascade), which is the same known gap.
        let x = attacker().name();
        let removed_by_others = |w: PeerName| {
            ring.removed.contains(&w)
                && ring
                    .removals
                    .iter()
                    .filter(|r| r.peer == w)
                    .all(|r| r.sigs.iter().all(|s| s.signer() != x))
        };
        // And only where the new owner is the heir (the owner of the entry
        // before, in our view before or after): a forged inheritance by a
        // router that is not the heir is a forged range like any other
        // (found by this target: the attacker, removed by honest routers,
        // sent a third router a ring in which that router, not the heir,
        // had inherited its range; both then allocated from it). Chains
        // of removals that this misses end the run early, no worse.
        let heir = |a: u32, is: Option<PeerName>| {
            is.is_some() && (owner_before(&before, a) == is || owner_before(&after, a) == is)
        };
        let points = before.iter().chain(&after).map(|(t, _)| *t);
        let mut ok = true;
        for a in points.chain([START]) {
            let (was, is) = (owner_at(&before, a), owner_at(&after, a));
            let explained = was.is_some_and(removed_by_others) && heir(a, is);
            if was != is && was != Some(me) && !explained {
                ok = false;
            }
        }
        ok
    }

    /// Saves (or fails to), sends what the channels queued, checks.
    fn settle(&mut self) {
        let now = self.now;
        let mut out = Vec::new();
        for r in &mut self.routers {
            if r.ch.stopped().is_some() {
                if !r.failing
                    && let Some(p) = r.ch.retry_due(now)
                {
                    check_saved(&p);
                    r.ch.resumed(now);
                }
            } else if let Some(p) = r.ch.unsaved() {
                check_saved(&p);
                if r.failing {
                    r.ch.save_failed("disk full".into());
                } else {
                    r.ch.saved(now);
                }
            }
            while let Some(o) = r.ch.sender().pop() {
                let (dst, payload) = match o {
                    ChannelSend::Gossip(p) | ChannelSend::Broadcast(p) => (None, p),
                    ChannelSend::Unicast { dst, payload } => (Some(dst), payload),
                };
                let msg = decode_ipam(&payload).expect("what we send decodes");
                assert!(msg.validate().is_ok(), "what we send passes validate");
                out.push(Sent {
                    src: r.me,
                    dst,
                    payload,
                });
            }
        }
        for s in out {
            self.keep(s.clone());
            self.pending.push(s);
        }
        self.check();
    }

    /// An honest router removed anywhere. Honest routers here only ever
    /// remove the attacker, so that is the attacker's signature counted
    /// as a majority of owners: the documented limit (docs/trust.md, "Who
    /// may remove a router": the rule counts owners, not machines; with
    /// two owners, each may remove the other), not news. Found by this
    /// target: an honest router gave all its space away, leaving the
    /// attacker and one honest owner, whose removal the attacker then
    /// signed alone.
    fn honest_removed(&self) -> bool {
        self.routers.iter().any(|r| {
            let removed = r.ch.ipam().alloc().ring().removed();
            self.routers.iter().any(|h| removed.contains(&h.me))
        })
    }

    fn check(&mut self) {
        if trace() {
            for r in &self.routers {
                let a = r.ch.ipam().alloc();
                let allocs: Vec<String> = a
                    .allocations()
                    .map(|(k, v)| format!("{k}={v:#x}"))
                    .collect();
                eprintln!(
                    "   {} stale={:?} ring={:?} removed={:?} allocs={allocs:?}",
                    r.me,
                    r.ch.stale().is_some(),
                    owners(&a.ring().to_wire()),
                    a.ring().to_wire().removed
                );
            }
        }
        let mut holder: BTreeMap<u32, PeerName> = BTreeMap::new();
        for r in &mut self.routers {
            let alloc = r.ch.ipam().alloc();
            if let Err(e) = alloc.check() {
                panic!("{}: {e}", r.me);
            }
            for (key, a) in alloc.allocations() {
                assert_eq!(
                    alloc.ring().owner_of(a),
                    Some(r.me),
                    "{key} at {} holds {a:#x}, not in its range",
                    r.me
                );
                if let Some(other) = holder.insert(a, r.me) {
                    panic!("{a:#x} allocated by {other} and {}", r.me);
                }
            }
            let refused: Vec<u64> = r.ch.refused().by_kind().iter().map(|(_, v)| *v).collect();
            for (i, (a, b)) in r.refused.iter().zip(&refused).enumerate() {
                assert!(b >= a, "refusal counter {i} went from {a} to {b}");
            }
            r.refused = refused;
        }
    }

    fn mutate(&self, u: &mut Unstructured, msg: &mut IpamMsg) -> Result<()> {
        let x = attacker();
        // A ring marked stale (which routers that are not stale ignore).
        if let IpamMsg::State { ring, .. } = msg
            && u.ratio(1, 8)?
        {
            let ring = ring.clone();
            *msg = IpamMsg::Stale(ring);
        }
        match msg {
            IpamMsg::State {
                ring,
                consensus,
                free,
                at_ms,
            } => match u.int_in_range(0..=11u8)? {
                0 if !ring.entries.is_empty() => {
                    let i = u.choose_index(ring.entries.len())?;
                    ring.entries[i].owner = anyone(u)?;
                    ring.entries[i].version = ring.entries[i]
                        .version
                        .wrapping_add(u32::from(u.int_in_range(0..=3u8)?));
                }
                1 if !ring.entries.is_empty() => {
                    let i = u.choose_index(ring.entries.len())?;
                    ring.entries[i].version = u.arbitrary()?;
                }
                2 => {
                    let token = START + u32::from(u.int_in_range(0..=LEN as u8)?);
                    let owner = anyone(u)?;
                    let version = u32::from(u.int_in_range(0..=4u8)?);
                    let at = u.choose_index(ring.entries.len() + 1)?;
                    ring.entries.insert(
                        at,
                        EntryWire {
                            token,
                            owner,
                            version,
                        },
                    );
                }
                3 if !ring.entries.is_empty() => {
                    let i = u.choose_index(ring.entries.len())?;
                    ring.entries.remove(i);
                }
                4 => ring.removed.push(anyone(u)?),
                5 => {
                    // A removal of anyone, signed by the attacker (or one
                    // router's signature copied onto another's removal).
                    let peer = anyone(u)?;
                    let cluster = ring.cluster.unwrap_or(0);
                    let sig = match ring.removals.first() {
                        Some(r) if !r.sigs.is_empty() && u.arbitrary()? => r.sigs[0],
                        _ => Removal::sign(x, cluster, peer),
                    };
                    ring.removals.push(RemovalWire {
                        peer,
                        sigs: vec![sig],
                    });
                }
                6 => {
                    ring.cluster = if u.arbitrary()? {
                        None
                    } else {
                        Some(u.arbitrary()?)
                    }
                }
                7 => {
                    ring.start = u.arbitrary()?;
                    ring.end = u.arbitrary()?;
                }
                8 if !free.is_empty() && u.arbitrary()? => {
                    // A relayed hint, altered under its signature.
                    let i = u.choose_index(free.len())?;
                    free[i].free = u.arbitrary()?;
                    free[i].seq = free[i].seq.wrapping_add(1);
                }
                8 => {
                    // A hint of anyone's, signed by the attacker: it holds
                    // only when it is the attacker's own.
                    let (peer, seq, n) = (anyone(u)?, u.arbitrary()?, u.arbitrary()?);
                    let sig = x.sign(FREE_DOMAIN, &(peer, ring.cluster, seq, n));
                    free.push(FreeHint {
                        peer,
                        seq,
                        free: n,
                        sig,
                    });
                }
                // Built at another time (a state from long ago passes
                // for a fresh one, or the other way round).
                10 => *at_ms = at_ms.wrapping_add(u.arbitrary::<u32>()?.into()),
                9 => consensus.push(ClaimsWire {
                    voter: anyone(u)?,
                    promise: None,
                    accepted: None,
                    sig: None,
                }),
                _ => {
                    for _ in 0..u.int_in_range(1..=4u8)? {
                        ring.removed.push(PeerName(u.arbitrary()?));
                    }
                }
            },
            IpamMsg::Stale(ring) => {
                if !ring.entries.is_empty() {
                    let i = u.choose_index(ring.entries.len())?;
                    ring.entries[i].owner = anyone(u)?;
                    ring.entries[i].version = u.arbitrary()?;
                }
            }
            IpamMsg::SpaceRequest(r) => {
                match u.int_in_range(0..=3u8)? {
                    0 => r.at_ms = r.at_ms.wrapping_add(u.arbitrary::<u16>()?.into()),
                    1 => r.cluster = u.arbitrary()?,
                    2 => r.requester = x.name(),
                    _ => {}
                }
                if u.arbitrary()? {
                    r.sig = x.sign(SPACE_DOMAIN, &(r.requester, r.cluster, r.at_ms));
                }
            }
        }
        Ok(())
    }

    /// One step; false once the attacker took a range (see the module docs).
    fn step(&mut self, u: &mut Unstructured) -> Result<bool> {
        let now = self.now;
        let x = attacker();
        let to = u.choose_index(HONEST)?;
        let op = u.int_in_range(0..=13u8)?;
        if trace() {
            eprintln!(
                "-- step op {op} to {to} at {:?}",
                now.duration_since(self.now_base())
            );
        }
        match op {
            0 => {
                let ms = match u.int_in_range(0..=7u8)? {
                    0 => u64::from(u.arbitrary::<u32>()?),
                    _ => u64::from(u.arbitrary::<u16>()?),
                };
                self.now += Duration::from_millis(ms);
                let jitter = u.arbitrary()?;
                for r in &mut self.routers {
                    r.ch.tick(self.now, jitter);
                }
            }
            // An honest message arrives (or is lost).
            1..=3 => {
                if self.pending.is_empty() {
                    return Ok(true);
                }
                let i = u.choose_index(self.pending.len())?;
                let s = self.pending.remove(i);
                if u.ratio(1, 16)? {
                    return Ok(true);
                }
                match s.dst {
                    Some(d) => {
                        if let Some(j) = self.index_of(d) {
                            self.deliver(j, s.src, true, &s.payload);
                        }
                    }
                    None => {
                        for j in 0..HONEST {
                            if self.routers[j].me != s.src && !u.ratio(1, 8)? {
                                self.deliver(j, s.src, false, &s.payload);
                            }
                        }
                    }
                }
            }
            4 | 5 => {
                let k = u.int_in_range(0..=KEYS_PER_ROUTER - 1)?;
                let key = format!("pod-{to}-{k}");
                let addr = if u.ratio(1, 4)? {
                    Some(START + u32::from(u.int_in_range(0..=LEN as u8)?))
                } else {
                    None
                };
                let _ = self.routers[to].ch.allocate(&key, addr);
            }
            6 => {
                let k = u.int_in_range(0..=KEYS_PER_ROUTER - 1)?;
                let _ = self.routers[to].ch.release(&format!("pod-{to}-{k}"));
            }
            7 => {
                let ch = &mut self.routers[to].ch;
                if let Some(donor) = ch.donor(|_| true) {
                    ch.ask_for_space(donor, now);
                }
            }
            // A new neighbour gets the full state.
            8 => {
                let from = (to + 1 + u.choose_index(HONEST - 1)?) % HONEST;
                if let Some(p) = self.routers[from].ch.full_state(now) {
                    let src = self.routers[from].me;
                    self.deliver(to, src, false, &p);
                }
            }
            // Writes start or stop failing.
            9 => self.routers[to].failing = !self.routers[to].failing,
            // The attacker replays a message as it went by (its source
            // signed it, so the mesh hands it over under that source).
            10 => {
                if self.pool.is_empty() {
                    return Ok(true);
                }
                let s = self.pool[u.choose_index(self.pool.len())?].clone();
                self.deliver(to, s.src, s.dst.is_some(), &s.payload);
            }
            // The attacker sends a mutated copy, or garbage, under its name.
            11 => {
                let payload = match self.pool.len() {
                    n if n > 0 && u.ratio(3, 4)? => {
                        let s = self.pool[u.choose_index(n)?].clone();
                        let Ok(mut msg) = decode_ipam(&s.payload) else {
                            return Ok(true);
                        };
                        self.mutate(u, &mut msg)?;
                        if u.ratio(1, 4)? {
                            let mut b = encode_ipam(&msg).unwrap_or_default();
                            if !b.is_empty() {
                                let at = u.choose_index(b.len())?;
                                b[at] ^= u.int_in_range(1..=255u8)?;
                            }
                            b
                        } else {
                            encode_ipam(&msg).unwrap_or_default()
                        }
                    }
                    _ => {
                        let len = usize::from(u.int_in_range(0..=64u8)?);
                        u.bytes(len)?.to_vec()
                    }
                };
                let unicast = u.arbitrary()?;
                if trace() {
                    eprintln!("   attacker sends {:?}", decode_ipam(&payload));
                }
                if !self.attack(to, unicast, &payload) {
                    return Ok(false);
                }
            }
            // The attacker asks for space under its own name.
            12 => {
                let cluster = self.routers[to].ch.ipam().alloc().ring().cluster();
                let cluster = cluster.unwrap_or(0);
                let skew = i64::from(u.arbitrary::<i16>()?) * 64;
                let wall = WALL_MS + now.duration_since(self.now_base()).as_millis() as u64;
                let at_ms = wall.saturating_add_signed(skew);
                let req = SpaceRequestWire {
                    requester: x.name(),
                    cluster,
                    at_ms,
                    sig: x.sign(SPACE_DOMAIN, &(x.name(), cluster, at_ms)),
                };
                let payload = encode_ipam(&IpamMsg::SpaceRequest(req)).unwrap_or_default();
                if !self.attack(to, true, &payload) {
                    return Ok(false);
                }
            }
            // An honest router is asked to remove the attacker (rmpeer).
            _ => {
                let _ = self.routers[to].ch.sign_removal(x.name());
            }
        }
        self.settle();
        Ok(true)
    }

    fn now_base(&self) -> Instant {
        BASE.with(|b| *b)
    }
}

thread_local! {
    static BASE: Instant = Instant::now();
}

/// `WEFT_FUZZ_TRACE=1`: every step and every router's ring and allocations
/// on stderr, to read a crash.
fn trace() -> bool {
    static T: OnceLock<bool> = OnceLock::new();
    *T.get_or_init(|| std::env::var_os("WEFT_FUZZ_TRACE").is_some())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let now = BASE.with(|b| *b);
    let mut w = World::new(now);
    w.settle();
    while !u.is_empty() {
        match w.step(&mut u) {
            Ok(true) if !w.honest_removed() => {}
            _ => break,
        }
    }
});

/// What a router saves passes the limits its receivers enforce.
fn check_saved(p: &weft_ipam_crdt::Persisted) {
    let msg = IpamMsg::State {
        ring: p.ring.clone(),
        consensus: p.consensus.clone(),
        free: Vec::new(),
        at_ms: 0,
    };
    assert!(msg.validate().is_ok(), "what we save passes validate");
}
