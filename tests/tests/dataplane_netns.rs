//! The data plane between real kernels: nodes and pods are network
//! namespaces, each node runs a real meshd with a real TUN device (needs
//! root; CI runs as root).

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use weft_api::LinkStatus;
use weft_tests::netns::{Lab, LabBuilder, Pod};

const PW: &str = weft_tests::netns::SECRET;
const SETTLE: Duration = Duration::from_secs(60);

/// A lab of `n` routers, every one but the first told the first's address,
/// IPAM by consensus of all.
fn lab(name: &str, n: usize) -> LabBuilder {
    Lab::builder(name, n)
        .password(PW)
        .ipalloc_init(&format!("consensus={n}"))
}

/// Node `a` has an up data link to node `b`, for every pair.
fn links_up(lab: &Lab, pairs: &[(usize, usize)]) -> Result<bool> {
    for &(a, b) in pairs {
        match link(lab, a, b) {
            Ok(l) if l.up => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

/// Node `a`'s link to node `b`, as its status shows it.
fn link(lab: &Lab, a: usize, b: usize) -> Result<LinkStatus> {
    let name = lab.name_of(b)?;
    let s = lab.status(a)?;
    s.dataplane
        .and_then(|d| d.links.into_iter().find(|l| l.peer == name))
        .with_context(|| format!("n{a} has no link to n{b}"))
}

/// Runs an iperf3 TCP transfer of `bytes` from `from` to `to_ip` (served in
/// `to_ns`); returns the source address the server saw.
fn tcp_stream(from: &str, to_ns: &str, to_ip: Ipv4Addr, bytes: &str) -> Result<Ipv4Addr> {
    let server = Command::new("timeout")
        .args([
            "30", "ip", "netns", "exec", to_ns, "iperf3", "-s", "-1", "-J",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("iperf3 server")?;
    let start = Instant::now();
    loop {
        let out = Command::new("timeout")
            .args(["20", "ip", "netns", "exec", from, "iperf3", "-c"])
            .arg(to_ip.to_string())
            .args(["-n", bytes, "--connect-timeout", "2000"])
            .output()?;
        if out.status.success() {
            break;
        }
        let last = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if start.elapsed() > Duration::from_secs(10) {
            bail!("iperf3 {from} -> {to_ip} failed: {last}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = server.wait_with_output()?;
    let v: Value = serde_json::from_slice(&out.stdout).context("iperf3 server JSON")?;
    let seen = v["start"]["connected"][0]["remote_host"]
        .as_str()
        .context("remote_host")?
        .parse()?;
    Ok(seen)
}

/// Pings until one reply (the first packets may race ARP and routes).
fn ping_ok(lab: &Lab, ns: &str, dst: Ipv4Addr) -> Result<()> {
    for _ in 0..5 {
        if lab.pings(ns, dst) {
            return Ok(());
        }
    }
    bail!("{ns} cannot ping {dst}")
}

fn pods(lab: &Lab, per_node: usize) -> Result<Vec<Pod>> {
    let mut out = Vec::new();
    for i in 0..lab.nodes.len() {
        for j in 0..per_node {
            out.push(lab.add_pod(i, j)?);
        }
    }
    Ok(out)
}

/// Counts `needle` in `hay`.
fn occurrences(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

#[test]
fn pods_nodes_and_the_outside_world() -> Result<()> {
    // Node 2 sits behind a smaller MTU, so PMTU discovery has work to do.
    let mut lab = lab("dp", 3).node_args(2, &["--mtu=1300"]).build()?;
    // Every node filters by reverse path strictly, as many distributions do (the
    // ICMP errors meshd writes must survive it).
    for i in 0..3 {
        lab.exec(i, &["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1"])?;
    }
    lab.start_all()?;
    let all = [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)];
    lab.wait_for("data links", SETTLE, |l| links_up(l, &all))?;
    let pods = pods(&lab, 2)?;
    let gw: Vec<Ipv4Addr> = (0..3).map(|i| lab.gateway(i)).collect::<Result<_>>()?;

    // Every pod pings every pod, and a TCP stream crosses every pair.
    for a in &pods {
        for b in &pods {
            if a.ns != b.ns {
                ping_ok(&lab, &a.ns, b.ip)?;
            }
        }
    }
    for a in &pods {
        for b in &pods {
            if a.ns != b.ns {
                let seen = tcp_stream(&a.ns, &b.ns, b.ip, "256K")?;
                ensure!(
                    seen == a.ip,
                    "{} -> {}: server saw {seen}, not {}",
                    a.ns,
                    b.ns,
                    a.ip
                );
            }
        }
    }

    // A node reaches a remote pod from its own overlay address, and a pod a
    // remote node, with no NAT either way.
    let n0 = lab.nodes[0].ns.clone();
    let remote_pod = &pods[4]; // on node 2
    ping_ok(&lab, &n0, remote_pod.ip)?;
    let seen = tcp_stream(&n0, &remote_pod.ns, remote_pod.ip, "256K")?;
    ensure!(
        seen == gw[0],
        "pod saw node 0 as {seen}, not its overlay address {}",
        gw[0]
    );
    let n1 = lab.nodes[1].ns.clone();
    ping_ok(&lab, &pods[0].ns, gw[1])?;
    let seen = tcp_stream(&pods[0].ns, &n1, gw[1], "256K")?;
    ensure!(
        seen == pods[0].ip,
        "node 1 saw the pod as {seen}, not {}",
        pods[0].ip
    );

    // The outside world (not a node, no route to the overlay) is reached
    // through the masquerade: it sees node 0's underlay address.
    let (out_ns, out_ip) = lab.add_outside(200)?;
    ping_ok(&lab, &pods[0].ns, out_ip)?;
    let seen = tcp_stream(&pods[0].ns, &out_ns, out_ip, "64K")?;
    ensure!(
        seen == lab.nodes[0].ip,
        "outside saw {seen}, not node 0's {}",
        lab.nodes[0].ip
    );
    ensure!(
        !lab.pings(&out_ns, pods[0].ip),
        "the outside must not reach pods (it has no route)"
    );

    // Path MTU discovery: node 2's links carry at most 1300-byte packets;
    // a larger DF packet gets "fragmentation needed" with that MTU.
    let out = lab.exec_in(
        &pods[0].ns,
        &[
            "sh",
            "-c",
            &format!("ping -c 2 -W 1 -M do -s 1350 {} 2>&1; true", pods[4].ip),
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains("mtu = 1300") || text.contains("mtu=1300"),
        "no frag-needed with MTU 1300: {text}"
    );
    ensure!(link(&lab, 0, 2)?.mtu == 1300, "link MTU to node 2");
    ensure!(link(&lab, 0, 1)?.mtu == 1408, "link MTU to node 1");
    ping_ok(&lab, &pods[0].ns, pods[4].ip)?;

    // Unowned destinations: nobody owns addresses outside the range.
    // (Inside the range every address has an owner once IPAM is ready.)

    // The underlay carries no plaintext: a known pattern sent between pods
    // is in the pod's own capture and absent from the underlay's.
    let pattern = "5745465420706c61696e2074657874"; // "WEFT plain text"
    let needle = b"WEFT plain text";
    let dir = std::env::temp_dir().join("weft-dp-capture");
    let _ = std::fs::create_dir_all(&dir);
    let under = dir.join("underlay.pcap");
    let podcap = dir.join("pod.pcap");
    let mut cap_u = Command::new("ip")
        .args([
            "netns", "exec", &n0, "tcpdump", "-U", "-n", "-i", "eth0", "-w",
        ])
        .arg(&under)
        .arg("udp")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut cap_p = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pods[0].ns,
            "tcpdump",
            "-U",
            "-n",
            "-i",
            "eth0",
            "-w",
        ])
        .arg(&podcap)
        .arg("icmp")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(1500));
    lab.exec_in(
        &pods[0].ns,
        &[
            "ping",
            "-c",
            "5",
            "-i",
            "0.2",
            "-p",
            pattern,
            &pods[2].ip.to_string(),
        ],
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill").arg(cap_u.id().to_string()).status();
    let _ = Command::new("kill").arg(cap_p.id().to_string()).status();
    let _ = cap_u.wait();
    let _ = cap_p.wait();
    let u = std::fs::read(&under)?;
    let p = std::fs::read(&podcap)?;
    ensure!(
        occurrences(&p, needle) >= 5,
        "the pod capture should hold the plaintext (control)"
    );
    ensure!(
        u.len() > 1500,
        "the underlay capture is (nearly) empty ({} bytes)",
        u.len()
    );
    ensure!(
        occurrences(&u, needle) == 0,
        "plaintext pod payload on the underlay"
    );

    // Counters: bytes and packets both ways on a link, and the masquerade.
    let l = link(&lab, 0, 2)?;
    ensure!(l.tx_packets > 0 && l.rx_packets > 0, "{l:?}");
    ensure!(l.transport == "udp/aes-256-gcm" && l.encrypted, "{l:?}");
    let m = lab.metrics(0)?;
    ensure!(m.contains("weft_data_bytes_total"), "data metrics missing");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn spoofed_sources_are_dropped_at_the_receiver() -> Result<()> {
    let lab = lab("dps", 2).start()?;
    lab.wait_for("data links", SETTLE, |l| links_up(l, &[(0, 1), (1, 0)]))?;
    let a = lab.add_pod(0, 0)?;
    let b = lab.add_pod(1, 0)?;
    ping_ok(&lab, &a.ns, b.ip)?;
    // The pod on node 0 takes an address from node 1's space (one more
    // than its neighbour's) and pings with it as the source.
    let forged = Ipv4Addr::from(u32::from(b.ip) + 7);
    lab.exec_in(
        &a.ns,
        &["ip", "addr", "add", &format!("{forged}/32"), "dev", "eth0"],
    )?;
    let spoofed = |l: LinkStatus| l.drops.get("spoofed").copied().unwrap_or(0);
    let before = spoofed(link(&lab, 1, 0)?);
    let out = Command::new("ip")
        .args(["netns", "exec", &a.ns, "ping", "-c", "3", "-W", "1", "-I"])
        .arg(forged.to_string())
        .arg(b.ip.to_string())
        .output()?;
    ensure!(!out.status.success(), "a forged source got an answer");
    let after = spoofed(link(&lab, 1, 0)?);
    ensure!(after >= before + 3, "spoofed drops {before} -> {after}");
    // The honest address still works.
    ping_ok(&lab, &a.ns, b.ip)?;
    Ok(())
}

/// The value of a metric without labels (0 if meshd has not counted any).
fn metric(lab: &Lab, i: usize, name: &str) -> Result<u64> {
    let text = lab.metrics(i)?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0))
}

#[test]
fn a_pod_sending_as_its_neighbour_or_the_gateway_is_dropped_on_its_port() -> Result<()> {
    const SPOOFED: &str = "weft_pod_spoofed_packets_total";
    let lab = lab("dpg", 1).start()?;
    let a = lab.add_cni_pod(0, 0)?;
    let b = lab.add_cni_pod(0, 1)?;
    let gw = lab.gateway(0)?;
    ping_ok(&lab, &a.ns, b.ip)?;
    ping_ok(&lab, &a.ns, gw)?;
    let honest = metric(&lab, 0, SPOOFED)?;
    for (what, forged, dst) in [("its neighbour's", b.ip, gw), ("the gateway's", gw, b.ip)] {
        let before = metric(&lab, 0, SPOOFED)?;
        lab.exec_in(
            &a.ns,
            &["ip", "addr", "add", &format!("{forged}/32"), "dev", "eth0"],
        )?;
        let out = Command::new("ip")
            .args(["netns", "exec", &a.ns, "ping", "-c", "3", "-W", "1", "-I"])
            .arg(forged.to_string())
            .arg(dst.to_string())
            .output()?;
        ensure!(
            !out.status.success(),
            "a pod sending as {what} address got an answer"
        );
        lab.wait_for(
            &format!("drops of a pod sending as {what} address counted"),
            SETTLE,
            |l| Ok(metric(l, 0, SPOOFED)? >= before + 3),
        )?;
        lab.exec_in(
            &a.ns,
            &["ip", "addr", "del", &format!("{forged}/32"), "dev", "eth0"],
        )?;
    }
    // The pods' own addresses were never counted, and still work.
    ensure!(honest == 0, "{honest} honest packets counted as spoofed");
    ping_ok(&lab, &a.ns, b.ip)?;
    ping_ok(&lab, &b.ns, gw)?;
    Ok(())
}

/// Echo requests of `len` IP bytes from `from` that reached pod `ns`, by
/// an nftables counter in the pod's own namespace.
fn count_echoes(lab: &Lab, ns: &str, from: Ipv4Addr, len: u16) -> Result<u64> {
    const TABLE: &str = "wtechoes";
    let listed = lab.exec_in(ns, &["nft", "list", "tables"])?;
    if !String::from_utf8_lossy(&listed.stdout).contains(TABLE) {
        let rules = format!(
            "table ip {TABLE} {{\n chain input {{\n type filter hook input priority 0;\n \
             ip saddr {from} icmp type echo-request ip length {len} counter\n }}\n}}\n"
        );
        weft_tests::netns::run_input(
            Command::new("ip").args(["netns", "exec", ns, "nft", "-f", "-"]),
            &rules,
        )?;
    }
    let out = lab.exec_in(ns, &["nft", "list", "chain", "ip", TABLE, "input"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("counter packets ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no counter in {text}"))
}

#[test]
fn a_relay_that_forges_the_origin_is_dropped_at_the_receiver() -> Result<()> {
    const FORGED: &str = "weft_data_drops_total{reason=\"origin_auth\"}";
    const REPLAYED: &str = "weft_data_drops_total{reason=\"origin_replay\"}";
    // 777 bytes of ping payload: 805-byte IP packets, told apart from others.
    const SIZE: &str = "777";
    const LEN: u16 = 805;
    let mut lab = lab("dpf", 3).build()?;
    // A line: node 0 reaches node 2 only through node 1, which lies.
    lab.block(0, 2)?;
    for i in 0..3 {
        let peers = if i > 0 {
            vec![lab.nodes[i - 1].addr()]
        } else {
            Vec::new()
        };
        let forge: &[&str] = if i == 1 {
            &["--test-forge-relay-origin"]
        } else {
            &[]
        };
        lab.router(i).peers(&peers).args(forge).start()?;
    }
    lab.wait_for("data links via node 1", SETTLE, |l| {
        links_up(l, &[(0, 1), (1, 0), (1, 2), (2, 1)])
    })?;
    let a = lab.add_pod(0, 0)?;
    let c = lab.add_pod(2, 0)?;

    // Honest relaying: node 1 carries pod a's packets to pod c, whose
    // counter sees them (so it would see forged ones).
    ping_ok(&lab, &a.ns, c.ip)?;
    ensure!(
        link(&lab, 0, 2).is_err(),
        "node 0 must have no direct link to node 2"
    );
    let seen = count_echoes(&lab, &c.ns, a.ip, LEN)?;
    lab.exec_in(
        &a.ns,
        &["ping", "-c", "3", "-W", "2", "-s", SIZE, &c.ip.to_string()],
    )
    .context("pod a's relayed pings answered")?;
    ensure!(
        count_echoes(&lab, &c.ns, a.ip, LEN)? >= seen + 3,
        "pod c counted pod a's pings"
    );
    ensure!(
        metric(&lab, 2, FORGED)? + metric(&lab, 2, REPLAYED)? == 0,
        "honest relayed packets counted as forged"
    );

    // Node 1 sends as pod a: from its own host with pod a's address, as a
    // relayed packet naming node 0 as the origin, tagged with the keys it
    // holds (its own with node 2).
    lab.exec(
        1,
        &["ip", "addr", "add", &format!("{}/32", a.ip), "dev", "lo"],
    )?;
    let seen = count_echoes(&lab, &c.ns, a.ip, LEN)?;
    // Its answers go to pod a, so the ping itself fails: judged below.
    let (from, to) = (a.ip.to_string(), c.ip.to_string());
    let ping = Command::new("ip")
        .args(["netns", "exec", &lab.nodes[1].ns])
        .args(["ping", "-c", "5", "-W", "1", "-s", SIZE, "-I", &from, &to])
        .output()?;
    // Dropped as `origin_auth`, or as `origin_replay` when the forger's
    // counter is one pod a's own packets already used.
    let counted = lab.wait_for("node 2 counts the forged packets", SETTLE, |l| {
        Ok(metric(l, 2, FORGED)? + metric(l, 2, REPLAYED)? >= 5)
    });
    if let Err(e) = counted {
        let drops = |i| -> Result<String> {
            Ok(lab
                .metrics(i)?
                .lines()
                .filter(|l| l.starts_with("weft_data_drops_total"))
                .collect::<Vec<_>>()
                .join("; "))
        };
        bail!(
            "{e:#}\nping: {}{}\nnode 1 drops: {}\nnode 2 drops: {}",
            String::from_utf8_lossy(&ping.stdout),
            String::from_utf8_lossy(&ping.stderr),
            drops(1)?,
            drops(2)?
        );
    }
    let delivered = count_echoes(&lab, &c.ns, a.ip, LEN)? - seen;
    ensure!(delivered == 0, "{delivered} forged packets reached pod c");
    lab.exec(
        1,
        &["ip", "addr", "del", &format!("{}/32", a.ip), "dev", "lo"],
    )?;

    // Honest traffic through the same relay still flows.
    ping_ok(&lab, &a.ns, c.ip)?;
    let seen = count_echoes(&lab, &c.ns, a.ip, LEN)?;
    lab.exec_in(
        &a.ns,
        &["ping", "-c", "2", "-W", "2", "-s", SIZE, &c.ip.to_string()],
    )?;
    ensure!(
        count_echoes(&lab, &c.ns, a.ip, LEN)? >= seen + 2,
        "pod a's pings still reach pod c"
    );
    Ok(())
}

#[test]
fn relays_through_a_third_node_and_survives_a_restart() -> Result<()> {
    let mut lab = lab("dpr", 3).build()?;
    // Node 0 and node 2 cannot reach each other in the underlay.
    lab.block(0, 2)?;
    // A chain: each node knows the one before it.
    for i in 0..3 {
        let peers = if i > 0 {
            vec![lab.nodes[i - 1].addr()]
        } else {
            Vec::new()
        };
        lab.router(i).peers(&peers).start()?;
    }
    lab.wait_for("data links via node 1", SETTLE, |l| {
        links_up(l, &[(0, 1), (1, 0), (1, 2), (2, 1)])
    })?;
    let a = lab.add_pod(0, 0)?;
    let a2 = lab.add_pod(0, 1)?;
    let c = lab.add_pod(2, 0)?;
    ping_ok(&lab, &a.ns, c.ip)?;
    let seen = tcp_stream(&a.ns, &c.ns, c.ip, "1M")?;
    ensure!(seen == a.ip, "relayed stream seen from {seen}");
    ensure!(
        link(&lab, 0, 2).is_err(),
        "node 0 must have no direct link to node 2"
    );

    // meshd on node 0 goes away: pods on node 0 still reach each other
    // over the bridge, and nothing leaks to the underlay unencrypted.
    lab.kill_meshd(0);
    ping_ok(&lab, &a.ns, a2.ip)?;
    ensure!(
        !lab.pings(&a.ns, c.ip),
        "remote pods are unreachable while meshd is down"
    );
    let routes = lab.exec(0, &["ip", "route", "show", "proto", "119"])?;
    let routes = String::from_utf8_lossy(&routes.stdout);
    ensure!(
        routes.contains("unreachable 10.32.0.0/12"),
        "fail-closed route missing: {routes}"
    );
    // Once node 0's sessions time out, nobody reachable owns pod a's
    // address: node 2's pod gets ICMP host unreachable, not silence.
    lab.wait_for("ICMP unreachable for a dead node's pod", SETTLE, |l| {
        let out = l.exec_in(
            &c.ns,
            &["sh", "-c", &format!("ping -c 1 -W 1 {} 2>&1; true", a.ip)],
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).contains("Unreachable"))
    })?;
    // It comes back: the same pods reach remote pods again.
    let n1 = lab.nodes[1].addr();
    lab.router(0).peers(&[n1]).start()?;
    lab.wait_for("pod traffic after restart", SETTLE, |l| {
        Ok(l.pings(&a.ns, c.ip))
    })?;
    ping_ok(&lab, &a.ns, a2.ip)?;

    // Reset removes everything meshd put in the kernel.
    lab.kill_meshd(0);
    let bin = weft_tests::netns::bin_dir().join("meshctl");
    lab.exec(
        0,
        &[
            bin.to_str().unwrap_or("meshctl"),
            "--socket",
            "/nonexistent",
            "reset",
        ],
    )?;
    let links = lab.exec(0, &["ip", "-o", "link"])?;
    let links = String::from_utf8_lossy(&links.stdout);
    ensure!(
        !links.contains(" weft:") && !links.contains("weft-tun"),
        "links left: {links}"
    );
    let routes = lab.exec(0, &["ip", "route", "show", "proto", "119"])?;
    ensure!(
        routes.stdout.is_empty(),
        "routes left: {}",
        String::from_utf8_lossy(&routes.stdout)
    );
    let nft = lab.exec(0, &["nft", "list", "tables"])?;
    ensure!(
        !String::from_utf8_lossy(&nft.stdout).contains("weft"),
        "nft table left"
    );
    Ok(())
}
