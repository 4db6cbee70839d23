//! Two routers with one identity (a cloned data directory), with real meshd
//! in node namespaces: both clones and the honest router report it, in
//! `meshctl status` and in the metrics, and both clones then hold new
//! addresses; an honest restart of a router with its own data directory is
//! not reported (docs/trust.md, "Duplicate identities").

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use weft_api::Status;
use weft_tests::netns::{Lab, SECRET, established_peers, run};

const REPORTS: &str = "weft_duplicate_identity_total";
const ACTIVE: &str = "weft_duplicate_identities";

/// The value of a metric without labels (0 if meshd has not counted any).
fn metric(lab: &Lab, i: usize, name: &str) -> Result<u64> {
    let text = lab.metrics(i)?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0))
}

/// The uid node `who` holds in its topology for node `of`'s name.
fn uid_seen(s: &Status, name: weft_api::PeerName) -> Option<u64> {
    s.mesh.peers.iter().find(|p| p.name == name).map(|p| p.uid)
}

#[test]
fn two_routers_with_one_identity_are_reported_and_an_honest_restart_is_not() -> Result<()> {
    let mut lab = Lab::builder("dup", 3).password(SECRET).build()?;
    lab.router(0).start()?;
    lab.router(1).start()?;
    let n1 = lab.name_of(1)?;
    let n0 = lab.name_of(0)?;
    lab.wait_for("n0 and n1 meshed", Duration::from_secs(30), |l| {
        Ok(established_peers(&l.status(0)?).contains(&n1))
    })?;

    // An honest restart: same data directory, a new process (new uid).
    let old_uid = lab.status(1)?.uid;
    lab.kill_meshd(1);
    lab.router(1).start()?;
    let new_uid = lab.status(1)?.uid;
    ensure!(new_uid != old_uid, "a restart draws a new uid");
    lab.wait_for(
        "n0 holds the restarted n1's entry, and n1 holds n0's",
        Duration::from_secs(30),
        |l| {
            let (s0, s1) = (l.status(0)?, l.status(1)?);
            Ok(uid_seen(&s0, n1) == Some(new_uid)
                && established_peers(&s0).contains(&n1)
                && established_peers(&s1).contains(&n0))
        },
    )?;
    // Some gossip rounds (2 s each) for stale copies to come back, if any did.
    std::thread::sleep(Duration::from_secs(10));
    for i in [0, 1] {
        let s = lab.status(i)?;
        ensure!(
            s.mesh.duplicates.is_empty(),
            "n{i} reports an honest restart as a duplicate: {:?}",
            s.mesh.duplicates
        );
        ensure!(metric(&lab, i, REPORTS)? == 0, "n{i} counted a duplicate");
        ensure!(
            !lab.nodes[i].log().contains("two routers are running"),
            "n{i} logged a duplicate"
        );
    }

    // n1 gets space of its own (a donation), which the clone then copies.
    let before = lab.post_ip(1, "before-clone")?;

    // n2 starts with a copy of n1's data directory: the same identity key.
    let (from, to) = (lab.nodes[1].dir.join("data"), lab.nodes[2].dir.join("data"));
    run(Command::new("cp").arg("-a").arg(&from).arg(&to))?;
    lab.router(2).start()?;
    ensure!(lab.name_of(2)? == n1, "the clone has n1's name");
    lab.wait_for(
        "all three routers report the duplicate identity",
        Duration::from_secs(180),
        |l| {
            for i in 0..3 {
                let s = l.status(i)?;
                let own = i != 0;
                let seen = s.mesh.duplicates.iter().any(|d| {
                    d.name == n1 && d.own == own && d.uids.len() >= 2 && d.uids.contains(&new_uid)
                });
                if !seen {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )?;
    for i in 0..3 {
        let s = lab.status(i)?;
        ensure!(
            s.mesh.duplicates.iter().all(|d| d.name == n1),
            "n{i} reports an honest router: {:?}",
            s.mesh.duplicates
        );
        ensure!(metric(&lab, i, REPORTS)? >= 1, "n{i}: {REPORTS} is 0");
        ensure!(metric(&lab, i, ACTIVE)? == 1, "n{i}: {ACTIVE} is not 1");
        let log = lab.nodes[i].log();
        let line = format!("two routers are running with identity {n1}");
        ensure!(log.contains(&line), "n{i} did not log {line:?}");
        let human = lab.meshctl(i, &["status"])?;
        let text = String::from_utf8(human.stdout).context("meshctl status")?;
        ensure!(
            text.contains("DUPLICATE") && text.contains(&n1.to_string()),
            "meshctl status of n{i} does not show it:\n{text}"
        );
    }
    // Both clones hold new addresses (each has the ring and allocations the
    // other has, so either's next address could be the other's); the
    // honest router still allocates.
    // (A new key each try: a key asked again keeps its address.)
    let tries = std::cell::Cell::new(0);
    lab.wait_for(
        "both clones refuse new addresses",
        Duration::from_secs(10),
        |l| {
            tries.set(tries.get() + 1);
            let id = |i| format!("after-{i}-{}", tries.get());
            Ok(l.post_ip_status(1, &id(1))?.0 == 503 && l.post_ip_status(2, &id(2))?.0 == 503)
        },
    )?;
    for i in [1, 2] {
        let (code, body) = lab.post_ip_status(i, "held")?;
        ensure!(
            code == 503 && body.contains("runs with this router's identity"),
            "n{i} answered {code}: {body}"
        );
        let line = "new addresses are held until one of them stops";
        ensure!(
            lab.nodes[i].log().contains(line),
            "n{i} did not log {line:?}"
        );
        ensure!(
            lab.keys_with_prefix(i, "before-clone")?.len() == 1,
            "n{i} lost the allocation it had"
        );
    }
    let other = lab.post_ip(0, "honest")?;
    ensure!(other.ip != before.ip, "n0 handed out n1's address");
    Ok(())
}
