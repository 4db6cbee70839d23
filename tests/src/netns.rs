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
use serde_json::Value;

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
}

pub struct Lab {
    pub name: String,
    switch: String,
    pub nodes: Vec<Node>,
    dir: PathBuf,
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
    /// A lab of `n` nodes on one underlay (10.77.0.0/24). `name` must be
    /// unique per test and short (it goes into namespace names).
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

    /// Starts meshd in node `i` with the lab's paths plus `args`.
    pub fn start_meshd(&mut self, i: usize, password: &str, args: &[String]) -> Result<()> {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("meshd.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &node.ns])
            .arg(bin_dir().join("meshd"))
            .args(["--nickname", &format!("n{i}")])
            .arg("--data-dir")
            .arg(node.dir.join("data"))
            .arg("--api-socket")
            .arg(node.socket())
            .args(["--log-level", "info,weft_router=debug"])
            .args(args)
            .env("WEFT_PASSWORD", password)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting meshd")?;
        node.meshd = Some(child);
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
    pub fn status(&self, i: usize) -> Result<Value> {
        let out = run(Command::new(bin_dir().join("meshctl"))
            .arg("--socket")
            .arg(self.nodes[i].socket())
            .args(["status", "--json"]))?;
        Ok(serde_json::from_slice(&out.stdout)?)
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
        let node = &self.nodes[i].ns;
        let id = format!("pod-n{i}-{j}");
        let out = run(Command::new("curl")
            .args(["-sf", "-X", "POST", "--unix-socket"])
            .arg(self.nodes[i].socket())
            .arg(format!("http://meshd/ip/{id}")))?;
        let v: Value = serde_json::from_slice(&out.stdout)?;
        let cidr = v["cidr"].as_str().context("cidr")?.to_owned();
        let addr: Ipv4Addr = v["ip"].as_str().context("ip")?.parse()?;
        let gw = self.gateway(i)?;
        let mtu = self.status(i)?["dataplane"]["mtu"]
            .as_u64()
            .context("data plane MTU")?
            .to_string();
        let ns = format!("wt-{}-n{i}p{j}", self.name);
        let host_if = format!("vp{j}");
        ip(&["netns", "add", &ns])?;
        ip(&[
            "-n", node, "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ])?;
        ip(&[
            "-n", node, "link", "set", &host_if, "master", "weft", "mtu", &mtu, "up",
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

    /// Starts meshd on every node: the range split by consensus of all of
    /// them, each node's CNI state directory in its own directory, the
    /// later nodes told about the first.
    pub fn start_all_with_cni(&mut self, password: &str) -> Result<()> {
        let n = self.nodes.len();
        for i in 0..n {
            let mut args = vec![
                format!("--ipalloc-init=consensus={n}"),
                format!(
                    "--cni-state-dir={}",
                    self.nodes[i].dir.join("cni").display()
                ),
            ];
            if i > 0 {
                args.push(format!("--peer={}", self.nodes[0].addr()));
            }
            self.start_meshd(i, password, &args)?;
        }
        Ok(())
    }

    /// Node `i`'s allocation keys that start with `prefix`.
    pub fn keys_with_prefix(&self, i: usize, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .allocations(i)?
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k.starts_with(prefix))
            .collect())
    }

    /// Node `i`'s allocations as meshd lists them: `(key, ip)`.
    pub fn allocations(&self, i: usize) -> Result<Vec<(String, String)>> {
        let out = run(Command::new("curl")
            .args(["-sf", "--unix-socket"])
            .arg(self.nodes[i].socket())
            .arg("http://meshd/ip"))?;
        let v: Value = serde_json::from_slice(&out.stdout)?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        (
                            e["id"].as_str().unwrap_or_default().to_owned(),
                            e["ip"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
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

/// Names (`name` fields) of the peers with an established session in a status.
pub fn established_peers(status: &Value) -> Vec<String> {
    status["mesh"]["connections"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .filter(|c| c["state"] == "established")
                .filter_map(|c| c["peer"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Names of every peer in a status' topology (self included).
pub fn known_peers(status: &Value) -> Vec<String> {
    status["mesh"]["peers"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
