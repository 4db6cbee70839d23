//! Real meshd processes in network namespaces (needs root; CI runs as root).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Result, ensure};
use weft_tests::netns::{Lab, established_peers, known_peers};

const PW: &str = "correct horse battery staple";
const CONVERGE: Duration = Duration::from_secs(45);

fn name_of(lab: &Lab, i: usize) -> Result<String> {
    Ok(lab.status(i)?["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

/// Every node in `nodes` has an established session with every other one in
/// `nodes`, and sees every one of them as reachable in its topology.
fn full_mesh(lab: &Lab, nodes: &[usize]) -> Result<bool> {
    let mut names = Vec::new();
    for &i in nodes {
        names.push(name_of(lab, i)?);
    }
    for (k, &i) in nodes.iter().enumerate() {
        let s = lab.status(i)?;
        let est: BTreeSet<String> = established_peers(&s).into_iter().collect();
        let reachable: BTreeSet<String> = s["mesh"]["peers"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter(|p| p["reachable"] == true)
                    .filter_map(|p| p["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        for (m, n) in names.iter().enumerate() {
            if m != k && !(est.contains(n) && reachable.contains(n)) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

fn fast(extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["--gossip-interval", "500ms", "--peer-timeout", "3s"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

#[test]
fn five_routers_knowing_only_the_first_form_a_full_mesh() -> Result<()> {
    let mut lab = Lab::new("five", 5)?;
    let first = lab.nodes[0].addr().to_string();
    lab.start_meshd(0, PW, &fast(&[]))?;
    for i in 1..5 {
        lab.start_meshd(i, PW, &fast(&["--peer", &first]))?;
    }
    lab.wait_for("a full mesh of 5", CONVERGE, |l| {
        full_mesh(l, &[0, 1, 2, 3, 4])
    })?;
    for i in 0..5 {
        let s = lab.status(i)?;
        ensure!(established_peers(&s).len() == 4, "node {i}: {s}");
        ensure!(
            s["encryption"] == "password",
            "node {i} encryption: {}",
            s["encryption"]
        );
        let peers = s["mesh"]["peers"].as_array().cloned().unwrap_or_default();
        ensure!(
            peers.len() == 5 && peers.iter().all(|p| p["reachable"] == true),
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
    let mut lab = Lab::new("pw", 4)?;
    let first = lab.nodes[0].addr().to_string();
    lab.start_meshd(0, PW, &fast(&[]))?;
    lab.start_meshd(1, PW, &fast(&["--peer", &first]))?;
    lab.start_meshd(2, PW, &fast(&["--peer", &first]))?;
    // The intruder knows everyone, and everyone is told about it.
    let all: Vec<String> = (0..3).map(|i| lab.nodes[i].addr().to_string()).collect();
    let args = vec![
        "--peer",
        all[0].as_str(),
        "--peer",
        all[1].as_str(),
        "--peer",
        all[2].as_str(),
    ];
    lab.start_meshd(3, "not the password", &fast(&args))?;
    lab.meshctl(1, &["connect", &lab.nodes[3].addr().to_string()])?;
    lab.wait_for("3 honest routers in a full mesh", CONVERGE, |l| {
        full_mesh(l, &[0, 1, 2])
    })?;
    let intruder = name_of(&lab, 3)?;
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
            "node {i} knows the intruder: {s}"
        );
        ensure!(
            !established_peers(&s).contains(&intruder),
            "node {i} has a session with the intruder"
        );
    }
    let s = lab.status(3)?;
    ensure!(
        established_peers(&s).is_empty(),
        "the intruder got a session: {s}"
    );
    ensure!(
        known_peers(&s).len() == 1,
        "the intruder learned peers: {s}"
    );
    Ok(())
}

#[test]
fn with_a_and_c_cut_off_c_is_routed_through_b() -> Result<()> {
    let mut lab = Lab::new("cut", 3)?;
    let c_ip = lab.nodes[2].ip;
    // Drop everything between A and C in A's namespace.
    let rules = format!(
        "table inet wtcut {{\n chain i {{ type filter hook input priority 0; ip saddr {c_ip} drop; }}\n \
         chain o {{ type filter hook output priority 0; ip daddr {c_ip} drop; }}\n}}\n"
    );
    let rules_file = std::env::temp_dir().join("weft-lab-cut.nft");
    std::fs::write(&rules_file, rules)?;
    lab.exec(0, &["nft", "-f", rules_file.to_str().unwrap_or_default()])?;
    let b = lab.nodes[1].addr().to_string();
    let c = lab.nodes[2].addr().to_string();
    lab.start_meshd(1, PW, &fast(&[]))?;
    // A is even told to dial C directly; the underlay will not let it.
    lab.start_meshd(0, PW, &fast(&["--peer", &b, "--peer", &c]))?;
    lab.start_meshd(2, PW, &fast(&["--peer", &b]))?;
    let c_name = name_of(&lab, 2)?;
    let b_name = name_of(&lab, 1)?;
    lab.wait_for("A routes to C via B", CONVERGE, |l| {
        let s = l.status(0)?;
        let routes = s["mesh"]["routes"].as_array().cloned().unwrap_or_default();
        Ok(routes
            .iter()
            .any(|r| r["dst"] == c_name.as_str() && r["via"] == b_name.as_str() && r["hops"] == 2))
    })?;
    let s = lab.status(0)?;
    ensure!(
        !established_peers(&s).contains(&c_name),
        "A has a direct session with C despite the drop rule"
    );
    let c_peer = s["mesh"]["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == c_name.as_str()).cloned());
    ensure!(
        c_peer.is_some_and(|p| p["reachable"] == true),
        "C not reachable from A: {s}"
    );
    let conns = String::from_utf8(lab.meshctl(0, &["status", "connections"])?.stdout)?;
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
    let mut lab = Lab::new("kill", 4)?;
    let first = lab.nodes[0].addr().to_string();
    lab.start_meshd(0, PW, &fast(&[]))?;
    for i in 1..4 {
        lab.start_meshd(i, PW, &fast(&["--peer", &first]))?;
    }
    lab.wait_for("a full mesh of 4", CONVERGE, |l| {
        full_mesh(l, &[0, 1, 2, 3])
    })?;
    let victim = name_of(&lab, 3)?;
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
                let p = s["mesh"]["peers"]
                    .as_array()
                    .and_then(|ps| ps.iter().find(|p| p["name"] == victim.as_str()).cloned());
                if p.is_some_and(|p| p["reachable"] == true) {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )?;
    lab.start_meshd(3, PW, &fast(&[]))?;
    lab.wait_for("the full mesh back after restart", CONVERGE, |l| {
        full_mesh(l, &[0, 1, 2, 3])
    })?;
    ensure!(
        name_of(&lab, 3)? == victim,
        "the restarted router changed its name"
    );
    let s = lab.status(3)?;
    let targets: Vec<String> = s["mesh"]["targets"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|t| t["addr"].as_str().map(str::to_owned))
        .collect();
    ensure!(
        targets.contains(&first) && targets.contains(&lab.nodes[1].addr().to_string()),
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
