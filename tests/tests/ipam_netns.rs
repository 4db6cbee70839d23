//! IPAM with real meshd processes in network namespaces (needs root; CI runs
//! as root).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use weft_api::PeerName;
use weft_tests::ipam::{
    all_holdings, allocate_many, assert_no_duplicates, ipam, owners, ready, rings_agree,
};
use weft_tests::netns::Lab;

const PW: &str = weft_tests::netns::SECRET;

/// A lab of `n` nodes whose first three split the range by consensus (quick
/// gossip and failure detection, every one but the first told the first's
/// address), running once IPAM is ready on them.
fn start_three(name: &str, n: usize) -> Result<Lab> {
    let mut lab = Lab::builder(name, n)
        .password(PW)
        .args(&["--gossip-interval", "500ms", "--peer-timeout", "3s"])
        .ipalloc_init("consensus=3")
        .build()?;
    for i in 0..3 {
        lab.router(i).start()?;
    }
    lab.wait_for("consensus among the three", Duration::from_secs(60), |l| {
        ready(l, &[0, 1, 2])
    })?;
    Ok(lab)
}

/// Drops all traffic between node `i` and nodes `from`, in `i`'s own
/// namespace (table `inet wtcut`; `nft delete table inet wtcut` heals).
fn cut_off(lab: &Lab, i: usize, from: [usize; 2]) -> Result<()> {
    let (a, b) = (lab.nodes[from[0]].ip, lab.nodes[from[1]].ip);
    let rules = format!(
        "table inet wtcut {{\n chain i {{ type filter hook input priority 0; ip saddr {{ {a}, {b} }} drop; }}\n \
         chain o {{ type filter hook output priority 0; ip daddr {{ {a}, {b} }} drop; }}\n}}\n"
    );
    let file = std::env::temp_dir().join(format!("weft-lab-{}-cut-{i}.nft", lab.name));
    std::fs::write(&file, rules)?;
    lab.exec(i, &["nft", "-f", file.to_str().unwrap_or_default()])?;
    Ok(())
}

#[test]
fn three_routers_allocate_3000_distinct_addresses_and_survive_kill_9() -> Result<()> {
    let mut lab = start_three("ipam3k", 3)?;
    let s = ipam(&lab, 0)?;
    let shares: Vec<f64> = s.peers.iter().map(|p| p.share).collect();
    ensure!(
        shares.len() == 3 && shares.iter().all(|x| (x - 1.0 / 3.0).abs() < 0.01),
        "uneven split: {s:?}"
    );
    let got = allocate_many(&lab, &[0, 1, 2], 1000, "a")?;
    ensure!(got.len() == 3000);
    let distinct: BTreeSet<Ipv4Addr> = got.values().copied().collect();
    ensure!(
        distinct.len() == 3000,
        "only {} distinct addresses for 3000 allocations",
        distinct.len()
    );
    let range_ok = got
        .values()
        .all(|ip| (ip.octets()[0] == 10) && (32..48).contains(&ip.octets()[1]));
    ensure!(range_ok, "an address outside 10.32.0.0/12");
    // kill -9 and restart: every allocation is still there, nothing doubled.
    lab.kill_meshd(1);
    lab.router(1).start()?;
    // The router's own overlay address (the bridge gateway) is one more
    // allocation of its own; count the test's.
    let held: Vec<_> = all_holdings(&lab, &[1])?
        .into_iter()
        .filter(|(_, _, id)| id != weft_router::daemon::GATEWAY_KEY)
        .collect();
    ensure!(
        held.len() == 1000,
        "node 1 holds {} allocations after kill -9, not 1000",
        held.len()
    );
    for (ip, _, id) in &held {
        ensure!(
            got.get(id) == Some(ip),
            "{id} moved from {:?} to {ip} across the restart",
            got.get(id)
        );
    }
    // The same id again gets the same address; a new one a new address.
    let again = allocate_many(&lab, &[1], 1, "a")?;
    ensure!(again.get("a-n1-0") == got.get("a-n1-0"));
    assert_no_duplicates(&all_holdings(&lab, &[0, 1, 2])?)
}

#[test]
fn a_partitioned_router_keeps_allocating_and_no_address_is_doubled_after_healing() -> Result<()> {
    let lab = start_three("ipampart", 3)?;
    // Cut node 2 off from both others.
    cut_off(&lab, 2, [0, 1])?;
    let name2 = lab.name_of(2)?;
    lab.wait_for("node 2 cut off", Duration::from_secs(15), |l| {
        Ok(!weft_tests::netns::established_peers(&l.status(0)?).contains(&name2))
    })?;
    let during = allocate_many(&lab, &[0, 1, 2], 200, "p")?;
    ensure!(
        during.len() == 600,
        "allocation failed during the partition"
    );
    lab.exec(2, &["nft", "delete", "table", "inet", "wtcut"])?;
    lab.wait_for(
        "the rings to agree after healing",
        Duration::from_secs(60),
        |l| rings_agree(l, &[0, 1, 2]),
    )?;
    let after = allocate_many(&lab, &[0, 1, 2], 100, "q")?;
    ensure!(after.len() == 300);
    assert_no_duplicates(&all_holdings(&lab, &[0, 1, 2])?)
}

#[test]
fn a_late_router_gets_space_and_rmpeer_by_a_majority_gives_a_dead_routers_space_to_one_live_router()
-> Result<()> {
    let mut lab = start_three("ipamrm", 4)?;
    // A fourth router, joining later as an observer: no share at first, space on demand.
    lab.router(3).ipalloc_init("observer").start()?;
    lab.wait_for(
        "the late router to learn the ring",
        Duration::from_secs(30),
        |l| ready(l, &[0, 1, 2, 3]),
    )?;
    let late = allocate_many(&lab, &[3], 5, "late")?;
    ensure!(late.len() == 5);
    let s = ipam(&lab, 3)?;
    let mine = s.peers.iter().find(|p| p.is_self);
    ensure!(
        mine.is_some_and(|p| p.owned > 0),
        "the late router owns nothing: {s:?}"
    );
    // Node 2 dies for good.
    let dead = lab.name_of(2)?;
    lab.kill_meshd(2);
    lab.wait_for("node 2 unreachable", Duration::from_secs(20), |l| {
        let s = ipam(l, 0)?;
        Ok(s.peers.iter().any(|p| p.name == dead && !p.reachable))
    })?;
    let before: BTreeMap<PeerName, u64> = owners(&ipam(&lab, 0)?);
    let dead_owned = before.get(&dead).copied().unwrap_or(0);
    ensure!(dead_owned > 0);
    // One router's word is not enough: node 0's rmpeer starts a
    // certificate, but the others have no evidence of their own (nobody
    // asked them), so they do not co-sign within COSIGN_AFTER (10 s), nor
    // until --cosign-unasked-after (30 min by default).
    lab.meshctl(0, &["rmpeer", &dead.to_string()])?;
    std::thread::sleep(Duration::from_secs(15));
    for i in [0, 1, 3] {
        let own = owners(&ipam(&lab, i)?);
        ensure!(
            own.get(&dead) == Some(&dead_owned),
            "node {i}: one router's rmpeer took the dead router's space: {own:?}"
        );
    }
    // The operator asks a second router: two of the three other owners.
    lab.meshctl(1, &["rmpeer", &dead.to_string()])?;
    lab.wait_for(
        "the dead router's space to move",
        Duration::from_secs(30),
        |l| Ok(!owners(&ipam(l, 0)?).contains_key(&dead) && rings_agree(l, &[0, 1, 3])?),
    )?;
    let after = owners(&ipam(&lab, 0)?);
    let gained: Vec<(&PeerName, u64)> = after
        .iter()
        .map(|(p, n)| (p, n.saturating_sub(before.get(p).copied().unwrap_or(0))))
        .filter(|(_, g)| *g > 0)
        .collect();
    ensure!(
        gained.len() == 1 && gained[0].1 == dead_owned,
        "space should go to exactly one live router: {gained:?}"
    );
    ensure!(
        after.values().sum::<u64>() == before.values().sum::<u64>(),
        "addresses lost in the move"
    );
    assert_no_duplicates(&all_holdings(&lab, &[0, 1, 3])?)
}

/// A router back with a state older than the removal horizon (its
/// `ipam.json` says it was written 8 days ago) hands nothing out while it
/// hears nobody, though it still owns its space, and allocates again once
/// a peer's ring shows the space is still its own (docs/trust.md, "The
/// horizon's one assumption"). The address it had before stays.
#[test]
fn a_router_back_after_the_horizon_holds_until_a_peer_confirms_its_space() -> Result<()> {
    let mut lab = start_three("ipamold", 3)?;
    let before = lab.post_ip(1, "before")?;
    lab.kill_meshd(1);
    let file = lab.nodes[1].dir.join("data").join("ipam.json");
    let mut state: serde_json::Value = serde_json::from_slice(&std::fs::read(&file)?)?;
    let saved = state["saved_ms"]
        .as_u64()
        .context("ipam.json has saved_ms")?;
    let eight_days = 8 * 24 * 3600 * 1000;
    state["saved_ms"] = (saved - eight_days).into();
    std::fs::write(&file, serde_json::to_vec_pretty(&state)?)?;
    // Cut off from both others, so that nobody confirms it yet.
    cut_off(&lab, 1, [0, 2])?;
    lab.router(1).start()?;
    let (code, body) = lab.post_ip_status(1, "held")?;
    ensure!(
        code == 503 && body.contains("last saved 8 days ago"),
        "a stale router answered {code}: {body}"
    );
    ensure!(
        lab.nodes[1]
            .log()
            .contains("may have been removed meanwhile"),
        "the hold is not in the log"
    );
    lab.exec(1, &["nft", "delete", "table", "inet", "wtcut"])?;
    lab.wait_for(
        "a peer's ring to confirm node 1's space (dials back off up to a minute while cut)",
        Duration::from_secs(150),
        |l| Ok(l.post_ip_status(1, "after")?.0 == 200),
    )?;
    // (Logged at the next IPAM tick, every 500 ms.)
    let line = "the IPAM state is confirmed by the mesh";
    let logged = lab.wait_for(
        "the end of the hold in the log",
        Duration::from_secs(5),
        |l| Ok(l.nodes[1].log().contains(line)),
    );
    ensure!(
        logged.is_ok(),
        "{line:?} is not in the log:\n{}",
        lab.nodes[1].log()
    );
    let again = lab.post_ip(1, "before")?;
    ensure!(again.ip == before.ip, "the address held before moved");
    assert_no_duplicates(&all_holdings(&lab, &[0, 1, 2])?)
}
