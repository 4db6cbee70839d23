//! Weft between plain Docker hosts, with no Kubernetes: two nodes (network
//! namespaces), each running its own Docker daemon (Debian's docker.io,
//! vfs storage) and meshd. Containers started with `--network none` are put
//! on the mesh with `meshctl attach`, ping each other across it, and
//! `meshctl detach` takes them off again, also after the container is gone.
//! A plain network namespace is attached with an address of our choosing.
//!
//! The image is made here from Debian's static busybox with `docker import`.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use weft_tests::cni::busybox_tar;
use weft_tests::netns::{Lab, bin_dir, run};

const PW: &str = weft_tests::netns::SECRET;
const IMAGE: &str = "weft-test-busybox";

/// One node's Docker daemon: its own data root, exec root and socket, no
/// bridge and no iptables rules (containers run with `--network none`).
struct Dockerd {
    child: Child,
    sock: PathBuf,
}

impl Dockerd {
    fn start(lab: &Lab, i: usize) -> Result<Dockerd> {
        // Short paths: the daemon's unix sockets live under them.
        let dir = lab.dir().join(format!("d{i}"));
        std::fs::create_dir_all(&dir)?;
        let sock = dir.join("s.sock");
        let log = std::fs::File::create(dir.join("dockerd.log"))?;
        // nsenter, not `ip netns exec`: that mounts a /sys without the
        // cgroup hierarchy runc needs.
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", lab.nodes[i].ns))
            .arg("dockerd")
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("x"))
            .arg("--pidfile")
            .arg(dir.join("pid"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--storage-driver=vfs",
                "--userland-proxy=false",
                "--log-level=warn",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting dockerd (Debian package docker.io)")?;
        let d = Dockerd { child, sock };
        let start = Instant::now();
        while d.docker(&["info"]).is_err() {
            if start.elapsed() > Duration::from_secs(60) {
                bail!(
                    "dockerd on node {i} did not answer: {}",
                    std::fs::read_to_string(dir.join("dockerd.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok(d)
    }

    fn host(&self) -> String {
        format!("unix://{}", self.sock.display())
    }

    fn docker(&self, args: &[&str]) -> Result<Output> {
        run(Command::new("docker")
            .env("DOCKER_HOST", self.host())
            .args(args))
    }

    fn stdout(&self, args: &[&str]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.docker(args)?.stdout)
            .trim()
            .to_owned())
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Ok(ids) = self.stdout(&["ps", "-aq"]) {
            for id in ids.split_whitespace() {
                let _ = self.docker(&["rm", "-f", id]);
            }
        }
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// meshctl in node `i`'s namespace (attach wires the host end there), with
/// `DOCKER_HOST` pointing at that node's daemon.
fn meshctl(lab: &Lab, i: usize, docker: &Dockerd, args: &[&str]) -> Result<String> {
    let out = run(Command::new("ip")
        .args(["netns", "exec", &lab.nodes[i].ns])
        .arg(bin_dir().join("meshctl"))
        .arg("--socket")
        .arg(lab.nodes[i].socket())
        .args(args)
        .env("DOCKER_HOST", docker.host()))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn attach_keys(lab: &Lab, i: usize) -> Result<Vec<String>> {
    lab.keys_with_prefix(i, "cni:weft-attach:")
}

fn host_veths(lab: &Lab, i: usize) -> Result<usize> {
    let out = lab.exec(i, &["ip", "-o", "link", "show", "type", "veth"])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|n| n.starts_with("wf"))
        })
        .count())
}

#[test]
fn docker_containers_on_two_hosts_attach_ping_and_detach() -> Result<()> {
    let lab = Lab::builder("dk", 2)
        .password(PW)
        .ipalloc_init("consensus=2")
        .with_cni()
        .start()?;
    for i in 0..2 {
        lab.gateway(i)?;
    }
    let tar = busybox_tar(lab.dir(), "docker")?;
    let docker: Vec<Dockerd> = (0..2)
        .map(|i| Dockerd::start(&lab, i))
        .collect::<Result<_>>()?;
    let tar = tar.to_str().context("path")?;
    let mut addrs = Vec::new();
    for (i, d) in docker.iter().enumerate() {
        d.docker(&["import", tar, IMAGE])?;
        let name = format!("c{i}");
        d.docker(&[
            "run",
            "-d",
            "--network",
            "none",
            "--name",
            &name,
            IMAGE,
            "sleep",
            "600",
        ])?;
        let printed = meshctl(&lab, i, d, &["attach", &name])?;
        let (ip, prefix) = printed
            .split_once('/')
            .with_context(|| format!("attach printed {printed:?}"))?;
        ensure!(prefix == "12", "attach printed {printed}");
        let ip: std::net::Ipv4Addr = ip.parse()?;
        // The container sees the address on ethwe.
        let inside = d.stdout(&["exec", &name, "ip", "-o", "-4", "addr", "show", "ethwe"])?;
        ensure!(inside.contains(&printed), "{name}: {inside}");
        addrs.push(ip);
    }
    // Across the mesh, both ways.
    for (i, d) in docker.iter().enumerate() {
        let other = addrs[1 - i].to_string();
        d.docker(&[
            "exec",
            &format!("c{i}"),
            "ping",
            "-c",
            "3",
            "-W",
            "2",
            &other,
        ])
        .with_context(|| format!("c{i} cannot ping {other}"))?;
    }

    // A plain namespace, with an address we choose in node 1's space.
    let plain = lab.add_netns("plain")?;
    let gw1 = lab.gateway(1)?;
    let want = std::net::Ipv4Addr::from(u32::from(gw1) + 100);
    let printed = meshctl(&lab, 1, &docker[1], &["attach", &plain, &want.to_string()])?;
    ensure!(
        printed == format!("{want}/12"),
        "attach with ADDR printed {printed}"
    );
    docker[0]
        .docker(&[
            "exec",
            "c0",
            "ping",
            "-c",
            "2",
            "-W",
            "2",
            &want.to_string(),
        ])
        .context("c0 cannot ping the attached namespace")?;
    // The same address twice is refused, saying why.
    let other = lab.add_netns("plain2")?;
    match meshctl(&lab, 1, &docker[1], &["attach", &other, &want.to_string()]) {
        Ok(out) => anyhow::bail!("an address in use was given again: {out}"),
        Err(e) => ensure!(format!("{e:#}").contains("is held by"), "{e:#}"),
    }

    ensure!(attach_keys(&lab, 0)?.len() == 1);
    ensure!(attach_keys(&lab, 1)?.len() == 2);
    ensure!(host_veths(&lab, 0)? == 1 && host_veths(&lab, 1)? == 2);
    // Detach: a running container, a namespace, and a container already removed.
    meshctl(&lab, 0, &docker[0], &["detach", "c0"])?;
    let links = docker[0].stdout(&["exec", "c0", "ip", "-o", "link"])?;
    ensure!(
        !links.contains("ethwe"),
        "ethwe still in c0 after detach: {links}"
    );
    meshctl(&lab, 1, &docker[1], &["detach", &plain])?;
    let c1_id = docker[1].stdout(&["inspect", "--format", "{{.Id}}", "c1"])?;
    docker[1].docker(&["rm", "-f", "c1"])?;
    // By name it is no longer found: refused, not silently "detached".
    match meshctl(&lab, 1, &docker[1], &["detach", "c1"]) {
        Ok(out) => anyhow::bail!("detaching a removed container by name said ok: {out}"),
        Err(e) => ensure!(format!("{e:#}").contains("nothing is attached"), "{e:#}"),
    }
    meshctl(&lab, 1, &docker[1], &["detach", &c1_id]).context("detaching a removed container")?;
    for i in 0..2 {
        ensure!(
            attach_keys(&lab, i)?.is_empty(),
            "node {i} still holds attach addresses: {:?}",
            attach_keys(&lab, i)?
        );
        ensure!(host_veths(&lab, i)? == 0, "node {i} kept a host veth");
    }
    Ok(())
}
