//! A deterministic, virtual-time network of [`Mesh`] cores.
//!
//! Everything is driven from one seeded RNG and an event queue ordered by
//! (virtual time, sequence number), so a seed reproduces a run exactly. The
//! network model: dials take one delay and fail after `dial_timeout` when the
//! other side is dead or cut off; frames on a session arrive in order (as on a
//! QUIC stream) after a random delay, unless lost or duplicated; sessions that
//! cross a partition, or end at a crashed node, are noticed as down after
//! `idle_timeout` (as QUIC's idle timeout would).
//!
//! Each node's mesh carries channels `C`, made by the simulation's `start`
//! function; after every input the `save` function may write what they
//! changed to the node's disk (bytes that survive a crash and are handed
//! back to `start` on restart), before the node's transmits leave, as
//! meshd does.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use weft_mesh::{Action, Admit, Channels, Config, Mesh, NoChannels, SessionId};
use weft_peer_proto::codec::encode_frame;
use weft_peer_proto::sign::{KeyPair, Signer as _};
use weft_peer_proto::{Frame, GoodbyeReason, Hello, PeerName};

/// The configuration simulations start their nodes from: every node gets
/// its own key, name, uid and seed; they share one signature cache.
pub fn base_config() -> Config {
    Config::new(Arc::new(KeyPair::from_seed([0; 32])), String::new(), 0, 0)
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    /// Probability that a frame is lost.
    pub loss: f64,
    /// Probability that a frame is delivered twice.
    pub duplicate: f64,
    pub min_delay: Duration,
    pub max_delay: Duration,
    pub dial_timeout: Duration,
    pub idle_timeout: Duration,
    /// The identity key of node `i`, when its channels must sign with a
    /// key the test knows; else keys are drawn from the seed.
    pub key_of: Option<fn(usize) -> KeyPair>,
}

impl SimConfig {
    pub fn new(seed: u64) -> Self {
        SimConfig {
            seed,
            loss: 0.0,
            duplicate: 0.0,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(20),
            dial_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(5),
            key_of: None,
        }
    }
}

pub struct SimNode<C> {
    pub mesh: Mesh<C>,
    /// The node's identity key (kept across restarts).
    pub key: Arc<KeyPair>,
    /// What the node's channels saved last (survives crashes).
    pub disk: Option<Vec<u8>>,
    pub name: PeerName,
    pub addr: SocketAddr,
    pub alive: bool,
    /// What it was started with (kept across restarts, as meshd persists targets).
    pub targets: Vec<SocketAddr>,
    timer_gen: u64,
    armed: Option<Instant>,
}

#[derive(Debug)]
enum Event {
    Timer {
        node: usize,
        generation: u64,
    },
    DialArrive {
        from: usize,
        addr: SocketAddr,
    },
    HandshakeDone {
        node: usize,
        conn: SessionId,
        hello: Hello,
        addr: SocketAddr,
    },
    Deliver {
        node: usize,
        conn: SessionId,
        frame: Frame,
    },
    Down {
        node: usize,
        conn: SessionId,
        reason: String,
    },
    DialFailed {
        node: usize,
        addr: SocketAddr,
    },
}

/// Totals over a run.
#[derive(Debug, Default, Clone)]
pub struct SimStats {
    pub frames_sent: u64,
    pub frames_lost: u64,
    /// Encoded bytes (with the 4-byte length prefix) sent, per node index.
    pub bytes_sent: Vec<u64>,
}

/// Makes a node's channels: (index, name, what it saved, now).
pub type StartChannels<C> = Box<dyn FnMut(usize, PeerName, Option<&[u8]>, Instant) -> C>;
/// Saves what a node's channels changed, if anything: the bytes to keep.
pub type SaveChannels<C> = Box<dyn FnMut(&mut C, Instant) -> Option<Vec<u8>>>;
/// Looks at every frame a node sends: (index, name, frame, what it saved).
pub type InspectSends = Box<dyn FnMut(usize, PeerName, &Frame, Option<&[u8]>)>;

pub struct Sim<C = NoChannels> {
    pub cfg: SimConfig,
    pub t0: Instant,
    pub now: Instant,
    rng: StdRng,
    pub nodes: Vec<SimNode<C>>,
    by_addr: HashMap<SocketAddr, usize>,
    queue: BinaryHeap<Reverse<(Instant, u64)>>,
    events: HashMap<u64, Event>,
    seq: u64,
    /// (node, conn) -> (node, conn) at the other end.
    links: HashMap<(usize, SessionId), (usize, SessionId)>,
    /// Last scheduled arrival per receiving end, to keep sessions in order.
    last_arrival: HashMap<(usize, SessionId), Instant>,
    partition: Option<Vec<usize>>,
    next_conn: SessionId,
    pub stats: SimStats,
    base: Config,
    start: StartChannels<C>,
    save: SaveChannels<C>,
    inspect: Option<InspectSends>,
}

pub fn addr_of(i: usize) -> SocketAddr {
    let ip = Ipv4Addr::from(0x0a00_0000u32 + i as u32 + 1);
    SocketAddr::V4(SocketAddrV4::new(ip, 6783))
}

impl Sim<NoChannels> {
    /// Routers that carry only their topology. `base` is the mesh
    /// configuration every node starts from (its name, uid and seed are
    /// filled in per node).
    pub fn new(cfg: SimConfig, base: Config) -> Self {
        Sim::with_channels(
            cfg,
            base,
            Box::new(|_, _, _, _| NoChannels),
            Box::new(|_, _| None),
        )
    }
}

impl<C: Channels> Sim<C> {
    /// Routers whose meshes carry the channels `start` makes.
    pub fn with_channels(
        cfg: SimConfig,
        base: Config,
        start: StartChannels<C>,
        save: SaveChannels<C>,
    ) -> Self {
        let t0 = Instant::now();
        Sim {
            rng: StdRng::seed_from_u64(cfg.seed),
            cfg,
            t0,
            now: t0,
            nodes: Vec::new(),
            by_addr: HashMap::new(),
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            seq: 0,
            links: HashMap::new(),
            last_arrival: HashMap::new(),
            partition: None,
            next_conn: 1,
            stats: SimStats::default(),
            base,
            start,
            save,
            inspect: None,
        }
    }

    /// Calls `f` on every frame a node sends, with what the node saved last
    /// (to check that nothing leaves that is not on disk, say).
    pub fn inspect_sends(&mut self, f: InspectSends) {
        self.inspect = Some(f);
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    fn mesh_for(
        &mut self,
        key: Arc<KeyPair>,
        i: usize,
        targets: &[SocketAddr],
        disk: Option<&[u8]>,
    ) -> Mesh<C> {
        let mut c = self.base.clone();
        let name = key.name();
        c.name = name;
        c.signer = key;
        c.nickname = format!("node{i}");
        c.uid = self.rng.random();
        c.seed = self.rng.random();
        let channels = (self.start)(i, name, disk, self.now);
        let mut m = Mesh::new(c, channels, self.now);
        for t in targets {
            m.add_target(*t, self.now);
        }
        m
    }

    /// Adds a node that knows `targets`; returns its index.
    pub fn add_node(&mut self, targets: Vec<SocketAddr>) -> usize {
        let i = self.nodes.len();
        // Drawn either way, so that runs repeat whatever keys are used.
        let drawn = KeyPair::from_seed(self.rng.random());
        let key = Arc::new(self.cfg.key_of.map_or(drawn, |f| f(i)));
        let name = key.name();
        let mesh = self.mesh_for(key.clone(), i, &targets, None);
        let addr = addr_of(i);
        self.by_addr.insert(addr, i);
        self.nodes.push(SimNode {
            mesh,
            key,
            disk: None,
            name,
            addr,
            alive: true,
            targets,
            timer_gen: 0,
            armed: None,
        });
        self.stats.bytes_sent.push(0);
        self.after_input(i);
        i
    }

    fn schedule(&mut self, at: Instant, e: Event) {
        self.seq += 1;
        self.events.insert(self.seq, e);
        self.queue.push(Reverse((at, self.seq)));
    }

    fn delay(&mut self) -> Duration {
        let (lo, hi) = (self.cfg.min_delay, self.cfg.max_delay);
        if hi <= lo {
            lo
        } else {
            self.rng.random_range(lo..hi)
        }
    }

    fn cut(&self, a: usize, b: usize) -> bool {
        self.partition.as_ref().is_some_and(|g| g[a] != g[b])
    }

    /// Drains a node's outputs into the network and re-arms its timer.
    fn after_input(&mut self, i: usize) {
        if !self.nodes[i].alive {
            return;
        }
        let now = self.now;
        if let Some(d) = (self.save)(self.nodes[i].mesh.channels_mut(), now) {
            self.nodes[i].disk = Some(d);
        }
        while let Some(t) = self.nodes[i].mesh.poll_transmit() {
            self.send(i, t.session, t.frame);
        }
        while let Some(a) = self.nodes[i].mesh.poll_action() {
            match a {
                Action::Dial(addr) => {
                    let d = self.delay();
                    self.schedule(self.now + d, Event::DialArrive { from: i, addr });
                }
                Action::Close {
                    session, reason, ..
                } => self.close(i, session, reason),
            }
        }
        while self.nodes[i].mesh.poll_event().is_some() {}
        let t = self.nodes[i].mesh.poll_timeout();
        if t != self.nodes[i].armed {
            self.nodes[i].armed = t;
            self.nodes[i].timer_gen += 1;
            if let Some(t) = t {
                let generation = self.nodes[i].timer_gen;
                self.schedule(
                    t.max(self.now),
                    Event::Timer {
                        node: i,
                        generation,
                    },
                );
            }
        }
    }

    /// Puts `frame` on the wire; returns how many copies will arrive.
    fn send(&mut self, from: usize, conn: SessionId, frame: Frame) -> usize {
        if let Some(f) = self.inspect.as_mut() {
            let node = &self.nodes[from];
            f(from, node.name, &frame, node.disk.as_deref());
        }
        let len = encode_frame(&frame).map(|b| b.len() + 4).unwrap_or(0);
        self.stats.frames_sent += 1;
        self.stats.bytes_sent[from] += len as u64;
        let Some(&(to, to_conn)) = self.links.get(&(from, conn)) else {
            return 0;
        };
        if self.cut(from, to) || !self.nodes[to].alive || self.rng.random_bool(self.cfg.loss) {
            self.stats.frames_lost += 1;
            return 0;
        }
        let copies = if self.rng.random_bool(self.cfg.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let d = self.delay();
            let last = self
                .last_arrival
                .get(&(to, to_conn))
                .copied()
                .unwrap_or(self.now);
            let at = last.max(self.now + d);
            self.last_arrival.insert((to, to_conn), at);
            self.schedule(
                at,
                Event::Deliver {
                    node: to,
                    conn: to_conn,
                    frame: frame.clone(),
                },
            );
        }
        copies
    }

    /// `node` closes `conn` after what it queued: the other end notices after
    /// the last frame arrives.
    fn close(&mut self, node: usize, conn: SessionId, reason: GoodbyeReason) {
        let now = self.now;
        self.nodes[node]
            .mesh
            .connection_down(now, conn, format!("closed by us: {reason:?}"));
        if let Some((to, to_conn)) = self.links.remove(&(node, conn)) {
            self.links.remove(&(to, to_conn));
            let at = self
                .last_arrival
                .get(&(to, to_conn))
                .copied()
                .unwrap_or(now)
                .max(now)
                + self.cfg.min_delay;
            self.schedule(
                at,
                Event::Down {
                    node: to,
                    conn: to_conn,
                    reason: format!("goodbye: {reason:?}"),
                },
            );
        }
    }

    /// Tears down every session for which `pred(a, b)` holds; both ends
    /// notice after the idle timeout.
    fn sever(&mut self, pred: impl Fn(usize, usize) -> bool, why: &str) {
        let at = self.now + self.cfg.idle_timeout;
        let mut doomed: Vec<((usize, SessionId), (usize, SessionId))> = self
            .links
            .iter()
            .filter(|((a, _), (b, _))| pred(*a, *b))
            .map(|(k, v)| (*k, *v))
            .collect();
        // In a fixed order, so that a seed replays a run exactly.
        doomed.sort_unstable();
        for (a, _) in &doomed {
            self.links.remove(a);
        }
        for ((n, c), _) in doomed {
            self.schedule(
                at,
                Event::Down {
                    node: n,
                    conn: c,
                    reason: why.to_owned(),
                },
            );
        }
    }

    fn handle(&mut self, e: Event) {
        let now = self.now;
        match e {
            Event::Timer { node, generation } => {
                if self.nodes[node].alive && self.nodes[node].timer_gen == generation {
                    self.nodes[node].armed = None;
                    self.nodes[node].mesh.handle_timeout(now);
                    self.after_input(node);
                }
            }
            Event::DialArrive { from, addr } => {
                if !self.nodes[from].alive {
                    return;
                }
                let to = self.by_addr.get(&addr).copied();
                let ok = to.is_some_and(|t| self.nodes[t].alive && !self.cut(from, t));
                let Some(to) = to.filter(|_| ok) else {
                    let at = now + self.cfg.dial_timeout;
                    self.schedule(at, Event::DialFailed { node: from, addr });
                    return;
                };
                let (ca, cb) = (self.next_conn, self.next_conn + 1);
                self.next_conn += 2;
                self.links.insert((from, ca), (to, cb));
                self.links.insert((to, cb), (from, ca));
                let mut hello_a = self.nodes[from].mesh.hello(Some(addr));
                hello_a.nonce = self.rng.random();
                let from_addr = self.nodes[from].addr;
                let admit = self.nodes[to]
                    .mesh
                    .connection_up(now, cb, &hello_a, from_addr, false);
                let mut hello_b = self.nodes[to].mesh.hello(Some(from_addr));
                hello_b.nonce = hello_a.nonce;
                let d = self.delay();
                self.last_arrival.insert((from, ca), now + d);
                self.schedule(
                    now + d,
                    Event::HandshakeDone {
                        node: from,
                        conn: ca,
                        hello: hello_b,
                        addr,
                    },
                );
                if let Admit::Reject(reason) = admit {
                    self.after_input(to);
                    self.close(to, cb, reason);
                }
                self.after_input(to);
            }
            Event::HandshakeDone {
                node,
                conn,
                hello,
                addr,
            } => {
                if !self.nodes[node].alive {
                    return;
                }
                if !self.links.contains_key(&(node, conn)) {
                    // The acceptor already closed it. Frames it sent before the
                    // close are still read, as a real driver does; the close
                    // follows them.
                    self.nodes[node]
                        .mesh
                        .connection_up(now, conn, &hello, addr, true);
                    self.after_input(node);
                    return;
                }
                let admit = self.nodes[node]
                    .mesh
                    .connection_up(now, conn, &hello, addr, true);
                if let Admit::Reject(reason) = admit {
                    self.after_input(node);
                    self.close(node, conn, reason);
                }
                self.after_input(node);
            }
            Event::Deliver { node, conn, frame } => {
                if !self.nodes[node].alive {
                    return;
                }
                let _ = self.nodes[node].mesh.handle_frame(now, conn, frame);
                self.after_input(node);
            }
            Event::Down { node, conn, reason } => {
                if self.nodes[node].alive {
                    self.nodes[node].mesh.connection_down(now, conn, reason);
                    self.after_input(node);
                }
            }
            Event::DialFailed { node, addr } => {
                if self.nodes[node].alive {
                    self.nodes[node]
                        .mesh
                        .dial_failed(now, addr, "timed out".into());
                    self.after_input(node);
                }
            }
        }
    }

    /// Runs events up to `until` (virtual).
    pub fn run_until(&mut self, until: Instant) {
        while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
            if at > until {
                break;
            }
            self.queue.pop();
            self.now = self.now.max(at);
            if let Some(e) = self.events.remove(&seq) {
                self.handle(e);
            }
        }
        self.now = self.now.max(until);
    }

    /// Runs until [`Sim::converged`] (checked every `every`) or `limit` passes;
    /// returns the virtual time it took.
    pub fn run_until_converged(&mut self, every: Duration, limit: Duration) -> Option<Duration> {
        let start = self.now;
        while self.now - start < limit {
            let next = self.now + every;
            self.run_until(next);
            if self.converged() {
                return Some(self.now - start);
            }
        }
        None
    }

    /// Every live node knows every live node's current entry and can route to it.
    pub fn converged(&mut self) -> bool {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].alive)
            .collect();
        let truth: Vec<(PeerName, (u64, u64))> = live
            .iter()
            .map(|i| {
                (
                    self.nodes[*i].name,
                    self.nodes[*i].mesh.topology().me().order_key(),
                )
            })
            .collect();
        for i in &live {
            let t = self.nodes[*i].mesh.topology();
            if truth
                .iter()
                .any(|(n, k)| t.get(n).map(|e| e.order_key()) != Some(*k))
            {
                return false;
            }
        }
        for i in &live {
            let routes = self.nodes[*i].mesh.routes();
            if truth.iter().any(|(n, _)| !routes.is_reachable(*n)) {
                return false;
            }
        }
        true
    }

    pub fn crash(&mut self, i: usize) {
        self.nodes[i].alive = false;
        self.nodes[i].timer_gen += 1;
        self.nodes[i].armed = None;
        self.sever(|a, b| a == i || b == i, "idle timeout (peer crashed)");
    }

    pub fn restart(&mut self, i: usize) {
        let targets = self.nodes[i].targets.clone();
        let key = self.nodes[i].key.clone();
        let disk = self.nodes[i].disk.take();
        self.nodes[i].mesh = self.mesh_for(key, i, &targets, disk.as_deref());
        self.nodes[i].disk = disk;
        self.nodes[i].alive = true;
        self.nodes[i].armed = None;
        self.after_input(i);
    }

    /// Splits the nodes into groups (`group[i]` for node i); sessions across
    /// groups die after the idle timeout and no dial crosses.
    pub fn partition(&mut self, group: Vec<usize>) {
        self.partition = Some(group.clone());
        self.sever(move |a, b| group[a] != group[b], "idle timeout (partition)");
    }

    pub fn heal(&mut self) {
        self.partition = None;
    }

    /// Lets a test act on node `i`'s core (send on a channel, say), then
    /// carries out what that produced.
    pub fn with_node<T>(&mut self, i: usize, f: impl FnOnce(&mut Mesh<C>, Instant) -> T) -> T {
        let now = self.now;
        let r = f(&mut self.nodes[i].mesh, now);
        self.after_input(i);
        r
    }

    /// Node `i`'s sessions that are up, in a fixed order.
    pub fn sessions_of(&self, i: usize) -> Vec<SessionId> {
        let mut v: Vec<SessionId> = self
            .links
            .keys()
            .filter(|(n, _)| *n == i)
            .map(|(_, c)| *c)
            .collect();
        v.sort_unstable();
        v
    }

    /// The node at the other end of node `i`'s session `conn`, if it is up.
    pub fn peer_of(&self, i: usize, conn: SessionId) -> Option<usize> {
        self.links.get(&(i, conn)).map(|(n, _)| *n)
    }

    /// Sends `frame` from node `i` on its session `conn`, past its core:
    /// what a lying router puts on the wire. Returns how many copies will
    /// arrive (0 when lost or cut off, 2 when duplicated).
    pub fn send_as(&mut self, i: usize, conn: SessionId, frame: Frame) -> usize {
        self.send(i, conn, frame)
    }

    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    /// Sessions per live node: (mean, max).
    pub fn degree(&self) -> (f64, usize) {
        let mut per: BTreeMap<usize, usize> = BTreeMap::new();
        for (a, _) in self.links.keys() {
            *per.entry(*a).or_default() += 1;
        }
        let live = self.nodes.iter().filter(|n| n.alive).count().max(1);
        let total: usize = per.values().sum();
        (
            total as f64 / live as f64,
            per.values().copied().max().unwrap_or(0),
        )
    }
}

/// How a mesh started from one seed converged.
#[derive(Debug, Clone)]
pub struct Convergence {
    pub n: usize,
    pub seed: u64,
    /// Virtual seconds until every peer knew every peer's current entry and
    /// could route to it.
    pub seconds: f64,
    /// The same in anti-entropy rounds (gossip intervals).
    pub rounds: f64,
    pub kib_per_peer: f64,
    pub max_kib: f64,
    pub mean_degree: f64,
}

/// Starts `n` routers that each know only the first one's address and runs
/// until they converge (panics, naming the seed, after 600 virtual seconds).
pub fn converge_from_seed(n: usize, seed: u64, cfg: SimConfig, base: Config) -> Convergence {
    let interval = base.gossip_interval;
    let mut sim = Sim::new(SimConfig { seed, ..cfg }, base);
    sim.add_node(vec![]);
    for _ in 1..n {
        sim.add_node(vec![addr_of(0)]);
    }
    let took = sim
        .run_until_converged(Duration::from_millis(500), Duration::from_secs(600))
        .unwrap_or_else(|| panic!("{n} peers did not converge in 600 virtual s; seed {seed}"));
    let total: u64 = sim.stats.bytes_sent.iter().sum();
    let max = sim.stats.bytes_sent.iter().copied().max().unwrap_or(0);
    Convergence {
        n,
        seed,
        seconds: took.as_secs_f64(),
        rounds: took.as_secs_f64() / interval.as_secs_f64(),
        kib_per_peer: total as f64 / n as f64 / 1024.0,
        max_kib: max as f64 / 1024.0,
        mean_degree: sim.degree().0,
    }
}
