//! Real meshd processes in network namespaces (needs root; CI runs as root).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, ensure};
use weft_api::{Encryption, PeerName};
use weft_tests::netns::{Lab, LabBuilder, established_peers, known_peers, reachable_peers};

const PW: &str = weft_tests::netns::SECRET;
const CONVERGE: Duration = Duration::from_secs(45);
/// Quick gossip and failure detection.
const FAST: &[&str] = &["--gossip-interval", "500ms", "--peer-timeout", "3s"];

/// A lab whose routers run with [`FAST`] and the password, every one but
/// the first told the first's address.
fn lab(name: &str, n: usize) -> LabBuilder {
    Lab::builder(name, n).password(PW).args(FAST)
}

/// Every node in `nodes` has an established session with every other one in
/// `nodes`, and sees every one of them as reachable in its topology.
fn full_mesh(lab: &Lab, nodes: &[usize]) -> Result<bool> {
    let mut names = Vec::new();
    for &i in nodes {
        names.push(lab.name_of(i)?);
    }
    for (k, &i) in nodes.iter().enumerate() {
        let s = lab.status(i)?;
        let est: BTreeSet<PeerName> = established_peers(&s).into_iter().collect();
        let reachable: BTreeSet<PeerName> = reachable_peers(&s).into_iter().collect();
        for (m, n) in names.iter().enumerate() {
            if m != k && !(est.contains(n) && reachable.contains(n)) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

#[test]
fn five_routers_knowing_only_the_first_form_a_full_mesh() -> Result<()> {
    let lab = lab("five", 5).start()?;
    lab.wait_for("a full mesh of 5", CONVERGE, |l| {
        full_mesh(l, &[0, 1, 2, 3, 4])
    })?;
    for i in 0..5 {
        let s = lab.status(i)?;
        ensure!(established_peers(&s).len() == 4, "node {i}: {s:?}");
        ensure!(
            s.encryption == Encryption::Password,
            "node {i} encryption: {:?}",
            s.encryption
        );
        let peers = &s.mesh.peers;
        ensure!(
            peers.len() == 5 && peers.iter().all(|p| p.reachable),
            "node {i} peers: {peers:?}"
        );
    }
    // The text views work too.
    let text = String::from_utf8(lab.meshctl(2, &["status"])?.stdout)?;
    ensure!(text.contains("Connections: 4 (4 established)"), "{text}");
    Ok(())
}

#[test]
fn a_router_with_the_wrong_password_is_rejected_on_both_sides() -> Result<()> {
    let mut lab = lab("pw", 4).build()?;
    for i in 0..3 {
        lab.router(i).start()?;
    }
    // The intruder knows everyone, and everyone is told about it.
    let all: Vec<SocketAddr> = (0..3).map(|i| lab.nodes[i].addr()).collect();
    lab.router(3)
        .password(weft_tests::netns::OTHER_SECRET)
        .peers(&all)
        .start()?;
    lab.meshctl(1, &["connect", &lab.nodes[3].addr().to_string()])?;
    lab.wait_for("3 honest routers in a full mesh", CONVERGE, |l| {
        full_mesh(l, &[0, 1, 2])
    })?;
    let intruder = lab.name_of(3)?;
    lab.wait_for("handshake failures counted on both sides", CONVERGE, |l| {
        let honest = l.metrics(1)?;
        let bad = l.metrics(3)?;
        Ok(
            honest.contains("weft_handshake_failures_total{reason=\"tls\"}")
                && bad.contains("weft_handshake_failures_total{reason=\"tls\"}"),
        )
    })?;
    // Give it a few more attempts to sneak in, then look everywhere.
    std::thread::sleep(Duration::from_secs(3));
    for i in 0..3 {
        let s = lab.status(i)?;
        ensure!(
            !known_peers(&s).contains(&intruder),
            "node {i} knows the intruder: {s:?}"
        );
        ensure!(
            !established_peers(&s).contains(&intruder),
            "node {i} has a session with the intruder"
        );
    }
    let s = lab.status(3)?;
    ensure!(
        established_peers(&s).is_empty(),
        "the intruder got a session: {s:?}"
    );
    ensure!(
        known_peers(&s).len() == 1,
        "the intruder learned peers: {s:?}"
    );
    Ok(())
}

#[test]
fn with_a_and_c_cut_off_c_is_routed_through_b() -> Result<()> {
    let mut lab = lab("cut", 3).build()?;
    let c_ip = lab.nodes[2].ip;
    // Drop everything between A and C in A's namespace.
    let rules = format!(
        "table inet wtcut {{\n chain i {{ type filter hook input priority 0; ip saddr {c_ip} drop; }}\n \
         chain o {{ type filter hook output priority 0; ip daddr {c_ip} drop; }}\n}}\n"
    );
    let rules_file = std::env::temp_dir().join("weft-lab-cut.nft");
    std::fs::write(&rules_file, rules)?;
    lab.exec(0, &["nft", "-f", rules_file.to_str().unwrap_or_default()])?;
    let b = lab.nodes[1].addr();
    let c = lab.nodes[2].addr();
    lab.router(1).peers(&[]).start()?;
    // A is even told to dial C directly; the underlay will not let it.
    lab.router(0).peers(&[b, c]).start()?;
    lab.router(2).peers(&[b]).start()?;
    let c_name = lab.name_of(2)?;
    let b_name = lab.name_of(1)?;
    lab.wait_for("A routes to C via B", CONVERGE, |l| {
        let s = l.status(0)?;
        Ok(s.mesh
            .routes
            .iter()
            .any(|r| r.dst == c_name && r.via == b_name && r.hops == 2))
    })?;
    let s = lab.status(0)?;
    ensure!(
        !established_peers(&s).contains(&c_name),
        "A has a direct session with C despite the drop rule"
    );
    let c_peer = s.mesh.peers.iter().find(|p| p.name == c_name);
    ensure!(
        c_peer.is_some_and(|p| p.reachable),
        "C not reachable from A: {s:?}"
    );
    let conns = String::from_utf8(lab.meshctl(0, &["status", "connections"])?.stdout)?;
    let c = c.to_string();
    ensure!(
        conns
            .lines()
            .any(|l| l.contains(&c) && (l.contains("connecting") || l.contains("retrying"))),
        "A's dial to C is not shown as pending:\n{conns}"
    );
    Ok(())
}

#[test]
fn a_killed_router_is_noticed_and_rejoins_after_restart() -> Result<()> {
    let mut lab = lab("kill", 4).start()?;
    let first = lab.nodes[0].addr();
    lab.wait_for("a full mesh of 4", CONVERGE, |l| {
        full_mesh(l, &[0, 1, 2, 3])
    })?;
    let victim = lab.name_of(3)?;
    // A target added at runtime must survive the restart.
    lab.meshctl(3, &["connect", &lab.nodes[1].addr().to_string()])?;
    lab.kill_meshd(3);
    // Peer timeout is 3 s: every session with it must be gone within that
    // (plus slack for a loaded machine), and then it is unreachable for all.
    let killed = std::time::Instant::now();
    lab.wait_for(
        "the others to drop their sessions with the killed router",
        Duration::from_secs(6),
        |l| {
            for i in 0..3 {
                if established_peers(&l.status(i)?).contains(&victim) {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )?;
    println!(
        "sessions with the killed router gone after {:?} (peer timeout 3 s)",
        killed.elapsed()
    );
    lab.wait_for(
        "the killed router unreachable everywhere",
        Duration::from_secs(6),
        |l| {
            for i in 0..3 {
                let s = l.status(i)?;
                let p = s.mesh.peers.iter().find(|p| p.name == victim);
                if p.is_some_and(|p| p.reachable) {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )?;
    // Restarted with no --peer: it must dial its persisted targets.
    lab.router(3).peers(&[]).start()?;
    lab.wait_for("the full mesh back after restart", CONVERGE, |l| {
        full_mesh(l, &[0, 1, 2, 3])
    })?;
    ensure!(
        lab.name_of(3)? == victim,
        "the restarted router changed its name"
    );
    let s = lab.status(3)?;
    let targets: Vec<SocketAddr> = s.mesh.targets.iter().map(|t| t.addr).collect();
    ensure!(
        targets.contains(&first) && targets.contains(&lab.nodes[1].addr()),
        "targets not persisted: {targets:?}"
    );
    lab.meshctl(3, &["forget", &lab.nodes[1].addr().to_string()])?;
    ensure!(
        lab.meshctl(3, &["forget", "10.77.0.250:6783"]).is_err(),
        "forgetting an unknown target succeeded"
    );
    Ok(())
}

#[test]
fn meshd_refuses_to_start_without_a_secret() -> Result<()> {
    let lab = Lab::new("nosecret", 1)?;
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.nodes[0].ns])
        .arg(weft_tests::netns::bin_dir().join("meshd"))
        .arg("--data-dir")
        .arg(lab.nodes[0].dir.join("data"))
        .arg("--api-socket")
        .arg(lab.nodes[0].socket())
        .env_remove("WEFT_PASSWORD")
        .output()?;
    ensure!(!out.status.success(), "meshd started without a secret");
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(err.contains("no mesh secret"), "unclear error: {err}");
    Ok(())
}

#[test]
fn a_weak_secret_is_refused_unless_allowed_and_meshctl_makes_strong_ones() -> Result<()> {
    const WEAK: &str = "correct horse battery staple";
    let mut lab = Lab::new("weak", 1)?;
    let meshd = |args: &[&str]| {
        std::process::Command::new("ip")
            .args(["netns", "exec", &lab.nodes[0].ns])
            .arg(weft_tests::netns::bin_dir().join("meshd"))
            .arg("--data-dir")
            .arg(lab.nodes[0].dir.join("data"))
            .arg("--api-socket")
            .arg(lab.nodes[0].socket())
            .args(args)
            .env("WEFT_PASSWORD", WEAK)
            .output()
    };
    let out = meshd(&[])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("weak") && err.contains("meshctl secret"),
        "meshd took a weak secret, or did not say why not: {err}"
    );
    let out = meshd(&["--allow-weak-password"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("--mesh-id"),
        "a weak secret allowed without a mesh id: {err}"
    );
    // Allowed, with a mesh id of its own, it runs.
    lab.start_meshd(
        0,
        WEAK,
        &["--allow-weak-password".into(), "--mesh-id=lab-weak".into()],
    )?;
    ensure!(lab.status(0)?.encryption == Encryption::Password);
    lab.kill_meshd(0);

    let (a, b) = (lab.meshctl(0, &["secret"])?, lab.meshctl(0, &["secret"])?);
    let (a, b) = (String::from_utf8(a.stdout)?, String::from_utf8(b.stdout)?);
    let a = a.trim();
    ensure!(
        a.len() == 64 && a.bytes().all(|c| c.is_ascii_hexdigit()) && a != b.trim(),
        "meshctl secret printed {a:?} then {b:?}"
    );
    // And meshd takes what it prints without being told anything.
    lab.start_meshd(0, a, &[])?;
    ensure!(lab.status(0)?.encryption == Encryption::Password);
    Ok(())
}
