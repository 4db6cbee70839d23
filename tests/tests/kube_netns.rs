//! The Kubernetes deployment against a real kube-apiserver (1.20, with
//! etcd, from ../shared/tools): the manifests apply, the ServiceAccount may
//! do exactly what meshd does, and meshd processes in node namespaces,
//! authenticated as that ServiceAccount, take their peers from Node objects,
//! bootstrap through the API, reclaim the space of deleted Nodes, and take
//! the mesh password from the Secret (filling it when it is empty).
//! Needs root (CI runs as root), kubectl and etcd (tests/run.sh installs them).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use weft_api::{Allocation, PeerName, Status};
use weft_tests::ipam::{
    all_holdings, allocate_many, assert_no_duplicates, ipam, owners, rings_agree,
};
use weft_tests::kube::ApiServer;
use weft_tests::netns::{Lab, bin_dir};

const PW: &str = weft_tests::netns::SECRET;
const SA: &str = "system:serviceaccount:kube-system:weft";

fn manifest(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/kubernetes")
        .join(name)
}

fn apply_manifests(api: &ApiServer) -> Result<()> {
    for f in ["weft-password.yaml", "weft.yaml"] {
        let path = manifest(f);
        let p = path.to_str().context("path")?;
        api.kubectl(&["apply", "--dry-run=server", "-f", p])?;
        api.kubectl(&["apply", "-f", p])?;
    }
    Ok(())
}

#[test]
fn manifests_apply_and_the_service_account_may_do_exactly_what_meshd_does() -> Result<()> {
    let api = ApiServer::start(&std::env::temp_dir().join("weft-kube-manifests"))?;
    apply_manifests(&api)?;
    let ds = api.kubectl(&[
        "-n",
        "kube-system",
        "get",
        "daemonset",
        "weft",
        "-o",
        "json",
    ])?;
    let ds: Value = serde_json::from_slice(&ds.stdout)?;
    let spec = &ds["spec"]["template"]["spec"];
    ensure!(spec["hostNetwork"] == true, "{spec}");
    ensure!(spec["priorityClassName"] == "system-node-critical");
    ensure!(spec["initContainers"][0]["command"][1] == "install-cni");
    ensure!(
        spec["containers"][0]["securityContext"]["privileged"].is_null(),
        "meshd must not be privileged"
    );

    // Re-applying (an upgrade) keeps meshd's own record in weft-peers.
    api.kubectl(&[
        "-n",
        "kube-system",
        "patch",
        "configmap",
        "weft-peers",
        "--type",
        "merge",
        "-p",
        r#"{"data":{"peers.json":"{\"seed\":[\"kept\"]}"}}"#,
    ])?;
    apply_manifests(&api)?;
    ensure!(
        api.peer_list()?.seed.first().map(String::as_str) == Some("kept"),
        "re-applying the manifest wiped the peer list"
    );
    // And the password meshd (or the user) put in the Secret.
    ensure!(
        api.mesh_password()?.is_empty(),
        "the manifest's Secret holds a password"
    );
    api.kubectl(&[
        "-n",
        "kube-system",
        "patch",
        "secret",
        "weft-password",
        "--type",
        "merge",
        "-p",
        r#"{"stringData":{"password":"kept"}}"#,
    ])?;
    apply_manifests(&api)?;
    ensure!(
        api.mesh_password()? == "kept",
        "re-applying the manifest wiped the password"
    );

    // What meshd does, and nothing else.
    let ns = ["-n", "kube-system"];
    let allowed: &[&[&str]] = &[
        &["get", "nodes"],
        &["list", "nodes"],
        &["watch", "nodes"],
        &["patch", "nodes", "--subresource=status"],
        &["get", "configmaps/weft-peers", ns[0], ns[1]],
        &["update", "configmaps/weft-peers", ns[0], ns[1]],
        &["get", "secrets/weft-password", ns[0], ns[1]],
        &["update", "secrets/weft-password", ns[0], ns[1]],
    ];
    let denied: &[&[&str]] = &[
        &["create", "nodes"],
        &["update", "nodes"],
        &["patch", "nodes"],
        &["delete", "nodes"],
        &["update", "nodes", "--subresource=status"],
        &["create", "configmaps", ns[0], ns[1]],
        &["list", "configmaps", ns[0], ns[1]],
        &["watch", "configmaps", ns[0], ns[1]],
        &["delete", "configmaps/weft-peers", ns[0], ns[1]],
        &["patch", "configmaps/weft-peers", ns[0], ns[1]],
        &["get", "configmaps/weft-config", ns[0], ns[1]],
        &["update", "configmaps/weft-config", ns[0], ns[1]],
        &["get", "configmaps/weft-peers", "-n", "default"],
        &["list", "secrets", ns[0], ns[1]],
        &["watch", "secrets", ns[0], ns[1]],
        &["create", "secrets", ns[0], ns[1]],
        &["delete", "secrets/weft-password", ns[0], ns[1]],
        &["patch", "secrets/weft-password", ns[0], ns[1]],
        &["get", "secrets/other", ns[0], ns[1]],
        &["update", "secrets/other", ns[0], ns[1]],
        &["get", "secrets/weft-password", "-n", "default"],
        &["list", "pods", "--all-namespaces"],
        &["create", "leases.coordination.k8s.io", ns[0], ns[1]],
        &["create", "serviceaccounts/weft/token", ns[0], ns[1]],
        &["get", "daemonsets.apps/weft", ns[0], ns[1]],
    ];
    for a in allowed {
        ensure!(api.can_i(SA, a)?, "the ServiceAccount may not {a:?}");
    }
    for d in denied {
        ensure!(!api.can_i(SA, d)?, "the ServiceAccount may {d:?}");
    }
    Ok(())
}

/// meshd's arguments on node `i`: Kubernetes as the ServiceAccount of
/// `kubeconfig`, quick resyncs, reclaims and failure detection.
fn kube_args(i: usize, kubeconfig: &Path) -> Vec<String> {
    [
        "--kube",
        "--node-name",
        &format!("kr-n{i}"),
        "--kubeconfig",
        kubeconfig.to_str().unwrap_or_default(),
        "--kube-resync",
        "2s",
        "--kube-reclaim-after",
        "1s",
        "--peer-timeout",
        "2s",
        "--gossip-interval",
        "500ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Starts node `i`'s meshd with [`kube_args`].
fn start(lab: &mut Lab, i: usize, kubeconfig: &Path) -> Result<()> {
    lab.router(i).args(&kube_args(i, kubeconfig)).start()
}

fn network_available(api: &ApiServer, node: &str) -> Result<bool> {
    let n = api.node(node)?;
    Ok(n["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .any(|c| c["type"] == "NetworkUnavailable" && c["status"] == "False"))
}

fn reclaims(lab: &Lab, nodes: &[usize]) -> Result<u64> {
    let mut total = 0;
    for &i in nodes {
        let m = lab.metrics(i)?;
        total += m
            .lines()
            .find(|l| l.starts_with("weft_kube_reclaims_total "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .context("no weft_kube_reclaims_total")? as u64;
    }
    Ok(total)
}

/// Until `peer` is off the peer list and owns nothing in the (agreeing)
/// rings of nodes 0 and 1.
fn wait_reclaimed(lab: &Lab, api: &ApiServer, peer: PeerName) -> Result<()> {
    lab.wait_for(
        &format!("the space of {peer} (Node deleted) to be reclaimed"),
        Duration::from_secs(60),
        |l| {
            let own = owners(&ipam(l, 0)?);
            Ok(!api.peer_list()?.peers.contains_key(&peer.to_string())
                && own.get(&peer).copied().unwrap_or(0) == 0
                && rings_agree(l, &[0, 1])?)
        },
    )
}

/// Node `i`'s allocations, sorted.
fn held(lab: &Lab, i: usize) -> Result<Vec<Allocation>> {
    let mut a = lab.allocations(i)?;
    a.sort_by(|x, y| (&x.id, x.ip).cmp(&(&y.id, y.ip)));
    Ok(a)
}

/// The whole range is owned, by exactly the routers `live`, and each
/// router's allocations are what they were.
fn check_space(lab: &Lab, live: &[usize], before: &BTreeMap<usize, Vec<Allocation>>) -> Result<()> {
    let names: Vec<PeerName> = live
        .iter()
        .map(|&i| lab.name_of(i))
        .collect::<Result<_>>()?;
    let own = owners(&ipam(lab, live[0])?);
    ensure!(
        own.values().sum::<u64>() == 1 << 20,
        "the /12 is not wholly owned: {own:?}"
    );
    for (peer, n) in &own {
        ensure!(
            *n == 0 || names.contains(peer),
            "{peer} owns {n} addresses but is not a live router"
        );
    }
    for (&i, alloc) in before {
        ensure!(
            &held(lab, i)? == alloc,
            "node {i}'s allocations changed across the reclaim"
        );
    }
    assert_no_duplicates(&all_holdings(lab, live)?)
}

#[test]
fn routers_find_each_other_through_nodes_and_reclaim_deleted_nodes_space_exactly_once() -> Result<()>
{
    // No --peer: the routers find each other through the Node objects.
    let mut lab = Lab::builder("kr", 4).password(PW).no_peers().build()?;
    // Not under the lab's directory, which Lab::new wipes: a killed run's
    // servers are found (and stopped) through their pid files.
    let api = ApiServer::start(&std::env::temp_dir().join("weft-kube-kr"))?;
    apply_manifests(&api)?;
    // meshd authenticates as the DaemonSet's ServiceAccount: any call the
    // RBAC does not grant fails this test.
    let sa_config = lab.dir().join("sa.kubeconfig");
    api.service_account_kubeconfig("kube-system", "weft", &sa_config)?;
    for i in 0..4 {
        api.forward_into(&lab.nodes[i].ns)?;
    }
    for i in 0..3 {
        api.create_node(&format!("kr-n{i}"), &lab.nodes[i].ip.to_string())?;
    }

    // 1. The first router seeds the range through the API: it allocates at
    //    once, with no other router running (no quorum to wait for).
    start(&mut lab, 0, &sa_config)?;
    let first = lab
        .gateway(0)
        .context("the first router got no address alone")?;
    let n0 = lab.name_of(0)?;
    ensure!(api.peer_list()?.seed == [n0.to_string()]);
    ensure!(first.octets()[0] == 10);

    // 2. The others are given no --peer: they dial the Nodes' InternalIPs,
    //    join the seed's ring and get space by donation.
    start(&mut lab, 1, &sa_config)?;
    start(&mut lab, 2, &sa_config)?;
    for i in 1..3 {
        lab.gateway(i)?;
    }
    lab.wait_for(
        "a full mesh from the Node list",
        Duration::from_secs(30),
        |l| {
            Ok((0..3).all(|i| {
                l.status(i)
                    .map(|s| weft_tests::netns::established_peers(&s).len() == 2)
                    .unwrap_or(false)
            }))
        },
    )?;
    lab.wait_for(
        "NetworkUnavailable=False on every Node",
        Duration::from_secs(30),
        |_| Ok((0..3).all(|i| network_available(&api, &format!("kr-n{i}")).unwrap_or(false))),
    )?;
    let list = api.peer_list()?;
    for i in 0..3 {
        ensure!(
            list.peers
                .get(&lab.name_of(i)?.to_string())
                .is_some_and(|p| p.node == format!("kr-n{i}")),
            "peer list: {list:?}"
        );
    }
    allocate_many(&lab, &[0, 1, 2], 20, "pod")?;
    lab.wait_for("rings to agree", Duration::from_secs(20), |l| {
        rings_agree(l, &[0, 1, 2])
    })?;
    let mut before = BTreeMap::new();
    for i in 0..2 {
        before.insert(i, held(&lab, i)?);
    }
    let n2 = lab.name_of(2)?;
    let n2_owned = owners(&ipam(&lab, 0)?)[&n2];
    ensure!(n2_owned > 0);

    // 3. Every router down; Node kr-n2 deleted meanwhile. At start-up the
    //    others notice from the Node list alone.
    for i in 0..3 {
        lab.kill_meshd(i);
    }
    api.kubectl(&["delete", "node", "kr-n2"])?;
    start(&mut lab, 0, &sa_config)?;
    start(&mut lab, 1, &sa_config)?;
    wait_reclaimed(&lab, &api, n2)?;
    ensure!(reclaims(&lab, &[0, 1])? == 1, "reclaimed more than once");
    check_space(&lab, &[0, 1], &before)?;
    for i in 0..2 {
        ensure!(
            ipam(&lab, i)?.removed.contains(&n2),
            "node {i} does not know {n2} was removed"
        );
    }

    // 4. A Node deleted while the others run: its router joins, takes
    //    space, dies; its Node is deleted; one live router reclaims.
    api.create_node("kr-n3", &lab.nodes[3].ip.to_string())?;
    start(&mut lab, 3, &sa_config)?;
    lab.gateway(3)?;
    allocate_many(&lab, &[3], 10, "late")?;
    let n3 = lab.name_of(3)?;
    lab.wait_for("rings to agree with n3", Duration::from_secs(20), |l| {
        rings_agree(l, &[0, 1, 3])
    })?;
    let n3_ip = IpAddr::from(lab.nodes[3].ip);
    let dials_n3 = |s: &Status| s.mesh.targets.iter().any(|t| t.addr.ip() == n3_ip);
    ensure!(
        dials_n3(&lab.status(0)?),
        "kr-n3's address was never dialed"
    );
    let own_before = owners(&ipam(&lab, 0)?);
    let n3_owned = own_before[&n3];
    ensure!(n3_owned > 0);
    for i in 0..2 {
        before.insert(i, held(&lab, i)?);
    }
    lab.kill_meshd(3);
    api.kubectl(&["delete", "node", "kr-n3"])?;
    wait_reclaimed(&lab, &api, n3)?;
    ensure!(
        reclaims(&lab, &[0, 1])? == 2,
        "each deleted Node is reclaimed once"
    );
    let own_after = owners(&ipam(&lab, 0)?);
    let gained: Vec<(&PeerName, u64)> = own_after
        .iter()
        .map(|(p, n)| (p, n.saturating_sub(own_before.get(p).copied().unwrap_or(0))))
        .filter(|(_, g)| *g > 0)
        .collect();
    ensure!(
        gained.len() == 1 && gained[0].1 == n3_owned,
        "the space should go to exactly one live router: {gained:?}"
    );
    check_space(&lab, &[0, 1], &before)?;
    // The dead Node's address is no longer dialed.
    lab.wait_for("kr-n3's address forgotten", Duration::from_secs(20), |l| {
        Ok(!dials_n3(&l.status(0)?))
    })?;

    // 5. The host comes back under the same Node name with its old data
    //    directory: the removed identity steps aside (meshd exits and says
    //    so), and the restart joins as a new router with fresh space.
    api.create_node("kr-n3", &lab.nodes[3].ip.to_string())?;
    let data = lab.nodes[3].dir.join("data");
    let out = Command::new("timeout")
        .arg("60")
        .args(["ip", "netns", "exec", &lab.nodes[3].ns])
        .arg(bin_dir().join("meshd"))
        .arg("--data-dir")
        .arg(&data)
        .arg("--api-socket")
        .arg(lab.nodes[3].dir.join("once.sock"))
        .args(kube_args(3, &sa_config))
        .env("WEFT_PASSWORD", PW)
        .output()?;
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1) && said.contains("was removed from the ring"),
        "a removed router restarted without stepping aside: {:?} {said}",
        out.status
    );
    ensure!(!data.join("identity.key").exists());
    start(&mut lab, 3, &sa_config)?;
    lab.gateway(3)?;
    let renewed = lab.name_of(3)?;
    ensure!(renewed != n3, "the same identity came back");
    allocate_many(&lab, &[3], 5, "again")?;
    lab.wait_for(
        "rings to agree with the new n3",
        Duration::from_secs(30),
        |l| rings_agree(l, &[0, 1, 3]),
    )?;
    assert_no_duplicates(&all_holdings(&lab, &[0, 1, 3])?)
}

/// Until nodes `nodes` each hold a session with every other one of them.
fn wait_full_mesh(lab: &Lab, nodes: &[usize], what: &str) -> Result<()> {
    lab.wait_for(what, Duration::from_secs(30), |l| {
        Ok(nodes.iter().all(|&i| {
            l.status(i)
                .map(|s| weft_tests::netns::established_peers(&s).len() == nodes.len() - 1)
                .unwrap_or(false)
        }))
    })
}

/// The weft-peers ConfigMap is writable by every router's ServiceAccount,
/// so by one compromised meshd: what it says about a live router must not
/// take that router's space. Forged here with the admin's rights: the
/// victim's record moved to a Node that does not exist (rewritten every
/// second, since the victim corrects its own record), then retired, then
/// the victim listed as removed. The victim keeps its ranges and its
/// allocations, nobody reclaims, it still allocates while its record is
/// forged, and a forged removal holds its allocations (counted) instead of
/// making it step aside.
#[test]
fn a_forged_peer_list_entry_cannot_evict_a_live_router() -> Result<()> {
    let mut lab = Lab::builder("kf", 3).password(PW).no_peers().build()?;
    let api = ApiServer::start(&std::env::temp_dir().join("weft-kube-kf"))?;
    apply_manifests(&api)?;
    let sa_config = lab.dir().join("sa.kubeconfig");
    api.service_account_kubeconfig("kube-system", "weft", &sa_config)?;
    for i in 0..3 {
        api.forward_into(&lab.nodes[i].ns)?;
        api.create_node(&format!("kr-n{i}"), &lab.nodes[i].ip.to_string())?;
    }
    for i in 0..3 {
        start(&mut lab, i, &sa_config)?;
        lab.gateway(i)?;
    }
    wait_full_mesh(&lab, &[0, 1, 2], "a full mesh from the Node list")?;
    allocate_many(&lab, &[0, 1, 2], 10, "pod")?;
    lab.wait_for("rings to agree", Duration::from_secs(20), |l| {
        rings_agree(l, &[0, 1, 2])
    })?;
    let victim = lab.name_of(1)?;
    let key = victim.to_string();
    let owned = owners(&ipam(&lab, 0)?)[&victim];
    ensure!(owned > 0, "the victim owns nothing to lose");
    let mut before = BTreeMap::new();
    for i in 0..3 {
        before.insert(i, held(&lab, i)?);
    }
    // The victim keeps what it owns in every ring, nobody reclaimed, and
    // it runs with its identity.
    let unharmed = |lab: &Lab, what: &str| -> Result<()> {
        for i in 0..3 {
            let own = owners(&ipam(lab, i)?);
            ensure!(
                own.get(&victim) == Some(&owned),
                "{what}: node {i} sees the victim own {:?}, not {owned}",
                own.get(&victim)
            );
        }
        ensure!(
            reclaims(lab, &[0, 1, 2])? == 0,
            "{what}: a router reclaimed"
        );
        ensure!(
            lab.name_of(1)? == victim,
            "{what}: the victim is not running"
        );
        ensure!(
            lab.nodes[1].dir.join("data/identity.key").exists(),
            "{what}: the victim's identity was moved aside"
        );
        Ok(())
    };

    // 1. Its record says it runs on a Node that does not exist, for 20 s
    //    (reclaim-after is 1 s, co-signing waits 10 s).
    for round in 0..20 {
        api.edit_peer_list(|l| {
            if let Some(r) = l.peers.get_mut(&key) {
                r.node = "kr-gone".into();
                r.retired = round % 2 == 1;
            }
        })?;
        std::thread::sleep(Duration::from_secs(1));
    }
    unharmed(&lab, "record on a missing Node")?;
    allocate_many(&lab, &[1], 3, "during")?;

    // 2. Listed as removed (as a finished reclaim leaves it), for 20 s.
    api.edit_peer_list(|l| {
        l.peers.remove(&key);
        l.removed.push(key.clone());
    })?;
    let unconfirmed = |l: &Lab| -> Result<u64> {
        Ok(l.metrics(1)?
            .lines()
            .find_map(|m| m.strip_prefix("weft_kube_unconfirmed_removals_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64)
    };
    lab.wait_for(
        "the victim to count the unconfirmed removal",
        Duration::from_secs(30),
        |l| Ok(unconfirmed(l)? > 0),
    )?;
    std::thread::sleep(Duration::from_secs(20));
    unharmed(&lab, "listed as removed")?;
    ensure!(
        allocate_many(&lab, &[1], 1, "held").is_err(),
        "the victim allocated while the list alone says it was removed"
    );
    // Taken off the list again: it allocates.
    api.edit_peer_list(|l| l.removed.retain(|r| *r != key))?;
    lab.wait_for(
        "the victim to allocate again",
        Duration::from_secs(30),
        |l| Ok(allocate_many(l, &[1], 1, "after").is_ok()),
    )?;
    unharmed(&lab, "after the forgery")?;
    for (i, alloc) in &before {
        let now = held(&lab, *i)?;
        ensure!(
            alloc.iter().all(|a| now.contains(a)),
            "node {i} lost allocations"
        );
    }
    assert_no_duplicates(&all_holdings(&lab, &[0, 1, 2])?)
}

#[test]
fn the_first_router_fills_the_empty_password_secret_and_a_users_password_is_kept() -> Result<()> {
    // No WEFT_PASSWORD: every password below comes from the Secret, except
    // node 3's, which is given the Secret's to show it is the mesh's.
    let mut lab = Lab::builder("kp", 4).no_peers().build()?;
    let api = ApiServer::start(&std::env::temp_dir().join("weft-kube-kp"))?;
    apply_manifests(&api)?;
    ensure!(api.mesh_password()?.is_empty());
    let sa_config = lab.dir().join("sa.kubeconfig");
    api.service_account_kubeconfig("kube-system", "weft", &sa_config)?;
    for i in 0..4 {
        api.forward_into(&lab.nodes[i].ns)?;
        api.create_node(&format!("kr-n{i}"), &lab.nodes[i].ip.to_string())?;
    }
    // As in the DaemonSet's pods while the Secret is empty: the password
    // file of the optional Secret volume is missing (or, on node 2, empty).
    let pw_args = |lab: &Lab, i: usize| -> Vec<String> {
        let f = lab.nodes[i].dir.join("password");
        vec!["--password-file".into(), f.display().to_string()]
    };
    std::fs::write(lab.nodes[2].dir.join("password"), "")?;
    let start_from_secret = |lab: &mut Lab, nodes: &[usize]| -> Result<()> {
        // All at once: they race to fill the Secret.
        for &i in nodes {
            let pw = pw_args(lab, i);
            lab.router(i)
                .args(&kube_args(i, &sa_config))
                .args(&pw)
                .spawn()?;
        }
        nodes.iter().try_for_each(|&i| lab.wait_api(i))
    };

    // 1. An empty Secret: exactly one password ends up in it, and all use it.
    start_from_secret(&mut lab, &[0, 1, 2])?;
    wait_full_mesh(&lab, &[0, 1, 2], "a full mesh on the generated password")?;
    let generated = api.mesh_password()?;
    ensure!(
        generated.lines().count() == 1
            && generated.len() >= 48
            && generated.bytes().all(|c| c.is_ascii_hexdigit()),
        "the Secret should hold one random password, not {} bytes",
        generated.len()
    );
    for i in 0..3 {
        ensure!(lab.status(i)?.encryption == weft_api::Encryption::Password);
    }
    let writers = (0..3)
        .filter(|&i| lab.nodes[i].log().contains("filled it with a random one"))
        .count();
    ensure!(writers == 1, "{writers} routers wrote a password");
    lab.router(3)
        .password(&generated)
        .args(&kube_args(3, &sa_config))
        .start()?;
    wait_full_mesh(&lab, &[0, 1, 2, 3], "the Secret's password to admit node 3")?;
    ensure!(api.mesh_password()? == generated, "the password changed");
    for i in 0..4 {
        ensure!(
            !lab.nodes[i].log().contains(&generated),
            "node {i} logged the mesh password"
        );
    }

    // 2. No Secret at all: meshd stops and says what to apply.
    for i in 0..4 {
        lab.kill_meshd(i);
    }
    api.kubectl(&["-n", "kube-system", "delete", "secret", "weft-password"])?;
    let out = Command::new("timeout")
        .arg("60")
        .args(["ip", "netns", "exec", &lab.nodes[0].ns])
        .arg(bin_dir().join("meshd"))
        .arg("--data-dir")
        .arg(lab.nodes[0].dir.join("data"))
        .arg("--api-socket")
        .arg(lab.nodes[0].dir.join("once.sock"))
        .args(kube_args(0, &sa_config))
        .args(pw_args(&lab, 0))
        .env_remove("WEFT_PASSWORD")
        .output()?;
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1)
            && said.contains("Secret kube-system/weft-password does not exist")
            && said.contains("apply deploy/kubernetes/"),
        "no clear error without the Secret: {:?} {said}",
        out.status
    );

    // 3. The user's own password, created before applying: apply keeps it,
    //    and the routers use it as it is.
    const USER_PW: &str = weft_tests::netns::USER_SECRET;
    api.kubectl(&[
        "-n",
        "kube-system",
        "create",
        "secret",
        "generic",
        "weft-password",
        &format!("--from-literal=password={USER_PW}"),
    ])?;
    apply_manifests(&api)?;
    ensure!(
        api.mesh_password()? == USER_PW,
        "apply replaced the password"
    );
    start_from_secret(&mut lab, &[0, 1, 2])?;
    lab.router(3)
        .password(USER_PW)
        .args(&kube_args(3, &sa_config))
        .start()?;
    wait_full_mesh(&lab, &[0, 1, 2, 3], "a full mesh on the user's password")?;
    ensure!(
        api.mesh_password()? == USER_PW,
        "a router replaced the password"
    );
    Ok(())
}
