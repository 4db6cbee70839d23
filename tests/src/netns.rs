//! Real-kernel test labs: nodes are network namespaces joined by a bridge in
//! a "switch" namespace of their own, running real `meshd` processes.
//!
//! Every namespace a lab makes is named `wt-<lab>-...`; nothing is created in
//! the root namespace. Dropping the lab (also when a test panics) kills its
//! processes and deletes its namespaces; a lab that starts also deletes
//! leftovers of its own name from a run that was killed.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use weft_api::{Allocation, ConnectionState, IpReply, PeerName, Status};

/// Where meshd, meshctl and the CNI plugin are: `WEFT_BIN_DIR`, or the target directory the
/// test binary was built into, after making sure they are built and current
/// there (`cargo test` and `cargo nextest` build test harnesses, not the
/// router's executables, so a clean checkout has none and an old one may
/// have stale ones).
pub fn bin_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        if let Ok(d) = std::env::var("WEFT_BIN_DIR") {
            return PathBuf::from(d);
        }
        let exe = std::env::current_exe().expect("current exe");
        // target/<profile>/deps/<test> -> target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .to_path_buf();
        let target = profile_dir.parent().expect("target root");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "-q",
            "-p",
            "weft-router",
            "-p",
            "weft-cni",
            "--bins",
        ])
        .env("CARGO_TARGET_DIR", target);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        run(&mut cmd).expect("building meshd, meshctl and weft for the real-kernel tests");
        profile_dir
    })
    .clone()
}

pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    succeeded(cmd, out)
}

/// `out` if the command exited 0, else an error with its output.
fn succeeded(cmd: &Command, out: Output) -> Result<Output> {
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(out)
}

/// Runs a command with `input` on its stdin; fails on a non-zero exit,
/// with its output in the error.
pub fn run_input(cmd: &mut Command, input: &str) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    std::io::Write::write_all(&mut child.stdin.take().context("stdin")?, input.as_bytes())?;
    let out = child.wait_with_output()?;
    succeeded(cmd, out)
}

fn ip(args: &[&str]) -> Result<Output> {
    run(Command::new("ip").args(args))
}

/// One node: a namespace with `eth0` on the underlay.
pub struct Node {
    pub ns: String,
    pub ip: Ipv4Addr,
    pub dir: PathBuf,
    pub meshd: Option<Child>,
}

impl Node {
    pub fn socket(&self) -> PathBuf {
        self.dir.join("meshd.sock")
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip.into(), 6783)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("meshd.log")).unwrap_or_default()
    }

    /// The node's CNI state directory (meshd's `--cni-state-dir`, the
    /// plugin's `stateDir`).
    pub fn cni_dir(&self) -> PathBuf {
        self.dir.join("cni")
    }
}

/// A mesh secret for the labs, strong as `meshctl secret` makes them
/// (meshd refuses weak ones, [`weft_router::secret::check`]). Public, so
/// for tests only.
pub const SECRET: &str = "bddf1f56f6e387e98342d38ef84caa76cc3936cac6626ee8abbbd0b79954288e";
/// Another, for a router that must not be admitted.
pub const OTHER_SECRET: &str = "6948165b988ebfcd10aed7aac1137ea0dcc9d6b0dd055f8a9a6903c659751037";
/// A third, as a user's own secret.
pub const USER_SECRET: &str = "4c749043bc650cc2c166fcc6c607e560cdbddd177e525f44a19ccd324ddbad69";

pub struct Lab {
    pub name: String,
    switch: String,
    pub nodes: Vec<Node>,
    dir: PathBuf,
    routers: Routers,
}

/// How a lab starts its routers (set with [`LabBuilder`]).
#[derive(Debug, Clone, Default)]
struct Routers {
    password: String,
    /// For every node.
    args: Vec<String>,
    ipalloc_init: Option<String>,
    cni: bool,
    /// No node is told another's address.
    no_peers: bool,
    /// More for one node.
    node_args: Vec<(usize, Vec<String>)>,
}

/// A lab and how its routers start: [`Lab::builder`], then [`start`]
/// (every node's meshd, in order) or [`build`] (none yet; start them with
/// [`Lab::router`] or [`Lab::start_all`]).
///
/// Node `i` runs meshd with the lab's paths, then [`args`], the
/// `--ipalloc-init`, the CNI state directory, `--peer` with the first node's
/// address (for every node but the first, unless [`no_peers`]), and its
/// [`node_args`].
///
/// [`start`]: LabBuilder::start
/// [`build`]: LabBuilder::build
/// [`args`]: LabBuilder::args
/// [`no_peers`]: LabBuilder::no_peers
/// [`node_args`]: LabBuilder::node_args
#[must_use]
pub struct LabBuilder {
    name: String,
    n: usize,
    routers: Routers,
}

impl LabBuilder {
    /// The mesh password (`WEFT_PASSWORD`; unset without one).
    pub fn password(mut self, password: &str) -> Self {
        self.routers.password = password.to_owned();
        self
    }

    /// Arguments for every node's meshd.
    pub fn args<S: AsRef<str>>(mut self, args: &[S]) -> Self {
        self.routers
            .args
            .extend(args.iter().map(|s| s.as_ref().to_owned()));
        self
    }

    /// `--ipalloc-init` for every node, e.g. `consensus=3` or `observer`.
    pub fn ipalloc_init(mut self, init: &str) -> Self {
        self.routers.ipalloc_init = Some(init.to_owned());
        self
    }

    /// Each node's CNI state directory ([`Node::cni_dir`]) given to meshd.
    pub fn with_cni(mut self) -> Self {
        self.routers.cni = true;
        self
    }

    /// No `--peer`: the routers find each other otherwise (Kubernetes).
    pub fn no_peers(mut self) -> Self {
        self.routers.no_peers = true;
        self
    }

    /// More arguments for node `i` only.
    pub fn node_args<S: AsRef<str>>(mut self, i: usize, args: &[S]) -> Self {
        self.routers
            .node_args
            .push((i, args.iter().map(|s| s.as_ref().to_owned()).collect()));
        self
    }

    /// The lab, no meshd started yet.
    pub fn build(self) -> Result<Lab> {
        let mut lab = Lab::new(&self.name, self.n)?;
        lab.routers = self.routers;
        Ok(lab)
    }

    /// The lab with meshd started on every node, in order.
    pub fn start(self) -> Result<Lab> {
        let mut lab = self.build()?;
        lab.start_all()?;
        Ok(lab)
    }
}

/// One start of one node's meshd, from the lab's settings ([`Lab::router`]).
#[must_use]
pub struct RouterStart<'a> {
    lab: &'a mut Lab,
    i: usize,
    password: String,
    ipalloc_init: Option<String>,
    peers: Vec<SocketAddr>,
    args: Vec<String>,
}

impl<'a> RouterStart<'a> {
    /// Another password than the lab's.
    pub fn password(mut self, password: &str) -> Self {
        self.password = password.to_owned();
        self
    }

    /// Another `--ipalloc-init` than the lab's.
    pub fn ipalloc_init(mut self, init: &str) -> Self {
        self.ipalloc_init = Some(init.to_owned());
        self
    }

    /// The addresses given with `--peer`, instead of the first node's.
    pub fn peers(mut self, peers: &[SocketAddr]) -> Self {
        self.peers = peers.to_vec();
        self
    }

    /// More arguments, after the lab's.
    pub fn args<S: AsRef<str>>(mut self, args: &[S]) -> Self {
        self.args.extend(args.iter().map(|s| s.as_ref().to_owned()));
        self
    }

    /// Starts meshd and waits for its API.
    pub fn start(self) -> Result<()> {
        let i = self.i;
        let lab = self.spawn()?;
        lab.wait_api(i)
    }

    /// Starts meshd and does not wait (several routers starting at once:
    /// then [`Lab::wait_api`] for each).
    pub fn spawn(self) -> Result<&'a mut Lab> {
        let RouterStart {
            lab,
            i,
            password,
            ipalloc_init,
            peers,
            args,
        } = self;
        let r = &lab.routers;
        let mut all = r.args.clone();
        if let Some(init) = ipalloc_init {
            all.push(format!("--ipalloc-init={init}"));
        }
        if r.cni {
            all.push(format!(
                "--cni-state-dir={}",
                lab.nodes[i].cni_dir().display()
            ));
        }
        all.extend(peers.iter().map(|p| format!("--peer={p}")));
        for (node, more) in &r.node_args {
            if *node == i {
                all.extend(more.iter().cloned());
            }
        }
        all.extend(args);
        lab.spawn_meshd(i, &password, &all)?;
        Ok(lab)
    }
}

fn delete_namespaces_with_prefix(prefix: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let ns = line.split_whitespace().next().unwrap_or("");
            if ns.starts_with(prefix) {
                let _ = Command::new("ip")
                    .args(["netns", "pids", ns])
                    .output()
                    .map(|o| {
                        for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                            let _ = Command::new("kill").args(["-9", pid]).status();
                        }
                    });
                let _ = Command::new("ip").args(["netns", "del", ns]).status();
            }
        }
    }
}

impl Lab {
    /// A lab of `n` nodes and how its routers start; see [`LabBuilder`].
    pub fn builder(name: &str, n: usize) -> LabBuilder {
        LabBuilder {
            name: name.to_owned(),
            n,
            routers: Routers::default(),
        }
    }

    /// A lab of `n` nodes on one underlay (10.77.0.0/24), no meshd
    /// running. `name` must be unique per test and short (it goes into
    /// namespace names).
    pub fn new(name: &str, n: usize) -> Result<Self> {
        let prefix = format!("wt-{name}-");
        delete_namespaces_with_prefix(&prefix);
        let dir = std::env::temp_dir().join(format!("weft-lab-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let switch = format!("{prefix}sw");
        let mut lab = Lab {
            name: name.to_owned(),
            switch: switch.clone(),
            nodes: Vec::new(),
            dir,
            routers: Routers::default(),
        };
        ip(&["netns", "add", &switch])?;
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        for i in 0..n {
            lab.add_node(i)?;
        }
        Ok(lab)
    }

    fn add_node(&mut self, i: usize) -> Result<()> {
        let ns = format!("wt-{}-n{i}", self.name);
        let ipaddr = Ipv4Addr::new(10, 77, 0, i as u8 + 1);
        self.plug(&ns, &format!("p{i}"), ipaddr)?;
        let dir = self.dir.join(format!("n{i}"));
        std::fs::create_dir_all(&dir)?;
        self.nodes.push(Node {
            ns,
            ip: ipaddr,
            dir,
            meshd: None,
        });
        Ok(())
    }

    /// Creates namespace `ns` with `eth0` at `addr/24`, plugged into the
    /// switch at `port`.
    fn plug(&self, ns: &str, port: &str, addr: Ipv4Addr) -> Result<()> {
        ip(&["netns", "add", ns])?;
        let sw = self.switch.as_str();
        ip(&[
            "-n", sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ])?;
        ip(&["-n", sw, "link", "set", port, "master", "br0", "up"])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Runs a command inside node `i`'s namespace.
    pub fn exec(&self, i: usize, args: &[&str]) -> Result<Output> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.nodes[i].ns])
            .args(args))
    }

    /// Node `i`'s meshd as the lab starts it ([`LabBuilder`]), to adjust
    /// and [`RouterStart::start`] (also to restart it after
    /// [`kill_meshd`](Lab::kill_meshd)).
    pub fn router(&mut self, i: usize) -> RouterStart<'_> {
        let peers = if i > 0 && !self.routers.no_peers {
            vec![self.nodes[0].addr()]
        } else {
            Vec::new()
        };
        RouterStart {
            password: self.routers.password.clone(),
            ipalloc_init: self.routers.ipalloc_init.clone(),
            peers,
            args: Vec::new(),
            i,
            lab: self,
        }
    }

    /// Starts meshd on every node, in order, as [`router`](Lab::router)
    /// has it.
    pub fn start_all(&mut self) -> Result<()> {
        for i in 0..self.nodes.len() {
            self.router(i).start()?;
        }
        Ok(())
    }

    /// Starts meshd in node `i` with the lab's paths plus `args` (and
    /// nothing of the [`LabBuilder`]'s settings).
    pub fn start_meshd(&mut self, i: usize, password: &str, args: &[String]) -> Result<()> {
        self.spawn_meshd(i, password, args)?;
        self.wait_api(i)
    }

    /// [`start_meshd`](Lab::start_meshd) without waiting for its API. An
    /// empty `password` leaves `WEFT_PASSWORD` unset.
    pub fn spawn_meshd(&mut self, i: usize, password: &str, args: &[String]) -> Result<()> {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("meshd.log"))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &node.ns])
            .arg(bin_dir().join("meshd"))
            .args(["--nickname", &format!("n{i}")])
            .arg("--data-dir")
            .arg(node.dir.join("data"))
            .arg("--api-socket")
            .arg(node.socket())
            .args(["--log-level", "info,weft_router=debug"])
            .args(args);
        if password.is_empty() {
            cmd.env_remove("WEFT_PASSWORD");
        } else {
            cmd.env("WEFT_PASSWORD", password);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting meshd")?;
        node.meshd = Some(child);
        Ok(())
    }

    /// Until node `i`'s meshd answers on its API.
    pub fn wait_api(&self, i: usize) -> Result<()> {
        self.wait_for(&format!("n{i}'s API"), Duration::from_secs(20), |l| {
            Ok(l.status(i).is_ok())
        })
    }

    /// SIGKILLs node `i`'s meshd.
    pub fn kill_meshd(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].meshd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `meshctl status --json` of node `i`.
    pub fn status(&self, i: usize) -> Result<Status> {
        let out = self.meshctl(i, &["status", "--json"])?;
        serde_json::from_slice(&out.stdout).context("meshctl status --json")
    }

    /// Node `i`'s peer name.
    pub fn name_of(&self, i: usize) -> Result<PeerName> {
        Ok(self.status(i)?.name)
    }

    pub fn meshctl(&self, i: usize, args: &[&str]) -> Result<Output> {
        run(Command::new(bin_dir().join("meshctl"))
            .arg("--socket")
            .arg(self.nodes[i].socket())
            .args(args))
    }

    /// Node `i`'s /metrics (fetched inside its namespace).
    pub fn metrics(&self, i: usize) -> Result<String> {
        let out = self.exec(i, &["curl", "-sf", "http://127.0.0.1:6782/metrics"])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Polls `check` every 200 ms until it returns Ok(true) or `limit` passes;
    /// on timeout the error carries the last check's message and every log.
    pub fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        mut check: impl FnMut(&Lab) -> Result<bool>,
    ) -> Result<()> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < limit {
            match check(self) {
                Ok(true) => return Ok(()),
                Ok(false) => last = "condition false".into(),
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let logs: String = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("\n--- n{i} log (tail) ---\n{}", tail(&n.log(), 30)))
            .collect();
        bail!("timed out after {limit:?} waiting for {what}: {last}{logs}")
    }
}

/// A pod: a namespace wired onto a node's bridge the way the CNI plugin
/// does it (veth, address from meshd's IPAM, default route via the gateway).
#[derive(Debug, Clone)]
pub struct Pod {
    pub ns: String,
    pub node: usize,
    pub ip: Ipv4Addr,
}

impl Lab {
    /// The node's overlay address, waiting for IPAM.
    pub fn gateway(&self, i: usize) -> Result<Ipv4Addr> {
        let out = self.meshctl(i, &["expose", "--wait", "30s"])?;
        let s = String::from_utf8_lossy(&out.stdout);
        let addr = s.trim().split('/').next().unwrap_or_default();
        addr.parse()
            .with_context(|| format!("meshctl expose printed {s:?}"))
    }

    /// Creates pod `j` on node `i`.
    pub fn add_pod(&self, i: usize, j: usize) -> Result<Pod> {
        self.add_pod_as(i, j, &format!("pod-n{i}-{j}"), &format!("vp{j}"))
    }

    /// Creates pod `j` on node `i` as the CNI plugin wires one: keyed
    /// `cni:<network>:<container>/eth0`, on the host veth the plugin would
    /// name, so meshd's per-pod source check covers it.
    pub fn add_cni_pod(&self, i: usize, j: usize) -> Result<Pod> {
        let container = format!("{}-n{i}-{j}", self.name);
        let port = weft_kernel::pod_port(&container, "eth0");
        self.add_pod_as(i, j, &format!("cni:lab:{container}?ifname=eth0"), &port)
    }

    fn add_pod_as(&self, i: usize, j: usize, id: &str, host_if: &str) -> Result<Pod> {
        let node = &self.nodes[i].ns;
        let out = run(Command::new("curl")
            .args(["-sf", "-X", "POST", "--unix-socket"])
            .arg(self.nodes[i].socket())
            .arg(format!("http://meshd/ip/{id}")))?;
        let reply: IpReply = serde_json::from_slice(&out.stdout).context("POST /ip")?;
        let cidr = reply.cidr.to_string();
        let addr = reply.ip;
        let gw = self.gateway(i)?;
        let mtu = self
            .status(i)?
            .dataplane
            .context("data plane MTU")?
            .mtu
            .to_string();
        let ns = format!("wt-{}-n{i}p{j}", self.name);
        ip(&["netns", "add", &ns])?;
        ip(&[
            "-n", node, "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ])?;
        ip(&[
            "-n", node, "link", "set", host_if, "master", "weft", "mtu", &mtu, "up",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "mtu", &mtu, "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
        ip(&["-n", &ns, "route", "add", "default", "via", &gw.to_string()])?;
        Ok(Pod {
            ns,
            node: i,
            ip: addr,
        })
    }

    /// Runs a command inside namespace `ns` (a pod or an extra namespace).
    pub fn exec_in(&self, ns: &str, args: &[&str]) -> Result<Output> {
        run(Command::new("ip").args(["netns", "exec", ns]).args(args))
    }

    /// Whether `ns` gets an echo reply from `dst` (one try, 2 s).
    pub fn pings(&self, ns: &str, dst: Ipv4Addr) -> bool {
        Command::new("ip")
            .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "2", "-q"])
            .arg(dst.to_string())
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// The lab's scratch directory (node state lives in `n<i>/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// An empty namespace `wt-<lab>-<suffix>` (a pod sandbox for a CNI
    /// plugin to wire); deleted with the lab. Returns its name.
    pub fn add_netns(&self, suffix: &str) -> Result<String> {
        let ns = format!("wt-{}-{suffix}", self.name);
        ip(&["netns", "add", &ns])?;
        Ok(ns)
    }

    /// A CNI ADD as the plugin makes it: `POST /ip/<id>` on node `i`'s API
    /// socket (10 s at most), the address meshd answered.
    pub fn post_ip(&self, i: usize, id: &str) -> Result<IpReply> {
        let out = run(Command::new("curl")
            .args(["-sf", "-m", "10", "-X", "POST", "--unix-socket"])
            .arg(self.nodes[i].socket())
            .arg(format!("http://meshd/ip/{id}")))?;
        serde_json::from_slice(&out.stdout).with_context(|| format!("POST /ip/{id} reply"))
    }

    /// A CNI ADD that may fail: `POST /ip/<id>` on node `i` (40 s at
    /// most, so a wait for space ends first), its HTTP status and body.
    pub fn post_ip_status(&self, i: usize, id: &str) -> Result<(u16, String)> {
        let out = run(Command::new("curl")
            .args([
                "-s",
                "-m",
                "40",
                "-X",
                "POST",
                "-w",
                "\n%{http_code}",
                "--unix-socket",
            ])
            .arg(self.nodes[i].socket())
            .arg(format!("http://meshd/ip/{id}")))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').context("curl's status line")?;
        Ok((code.trim().parse().context("HTTP status")?, body.to_owned()))
    }

    /// Node `i`'s allocation keys that start with `prefix`.
    pub fn keys_with_prefix(&self, i: usize, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .allocations(i)?
            .into_iter()
            .map(|a| a.id)
            .filter(|k| k.starts_with(prefix))
            .collect())
    }

    /// Node `i`'s allocations as meshd lists them (`GET /ip`).
    pub fn allocations(&self, i: usize) -> Result<Vec<Allocation>> {
        let out = run(Command::new("curl")
            .args(["-sf", "--unix-socket"])
            .arg(self.nodes[i].socket())
            .arg("http://meshd/ip"))?;
        serde_json::from_slice(&out.stdout).context("GET /ip")
    }

    /// A namespace on the underlay switch at `10.77.0.<host>` that is not a
    /// node: "the outside world".
    pub fn add_outside(&self, host: u8) -> Result<(String, Ipv4Addr)> {
        let ns = format!("wt-{}-out", self.name);
        let addr = Ipv4Addr::new(10, 77, 0, host);
        self.plug(&ns, "pout", addr)?;
        Ok((ns, addr))
    }

    /// Drops underlay traffic between nodes `a` and `b` at the switch.
    pub fn block(&self, a: usize, b: usize) -> Result<()> {
        let (x, y) = (self.nodes[a].ip.to_string(), self.nodes[b].ip.to_string());
        let script = format!(
            "table bridge wtblock {{\n chain forward_block {{\n type filter hook forward priority 0;\n \
             ip saddr {x} ip daddr {y} drop\n ip saddr {y} ip daddr {x} drop\n }}\n}}\n"
        );
        run_input(
            Command::new("ip").args(["netns", "exec", &self.switch, "nft", "-f", "-"]),
            &script,
        )
        .context("nft block rule failed")?;
        Ok(())
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_meshd(i);
        }
        delete_namespaces_with_prefix(&format!("wt-{}-", self.name));
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The peers with an established session in a status.
pub fn established_peers(status: &Status) -> Vec<PeerName> {
    status
        .mesh
        .connections
        .iter()
        .filter(|c| c.state == ConnectionState::Established)
        .filter_map(|c| c.peer)
        .collect()
}

/// Every peer in a status' topology (self included).
pub fn known_peers(status: &Status) -> Vec<PeerName> {
    status.mesh.peers.iter().map(|p| p.name).collect()
}

/// The peers a status' topology shows as reachable.
pub fn reachable_peers(status: &Status) -> Vec<PeerName> {
    status
        .mesh
        .peers
        .iter()
        .filter(|p| p.reachable)
        .map(|p| p.name)
        .collect()
}
