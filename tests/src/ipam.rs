//! IPAM checks shared by the real-kernel tests: meshd's API over its unix
//! socket, many allocations at once, and the invariants (no address held
//! twice, every ring the same).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use weft_api::{Allocation, IpReply, IpamStatus, PeerName};

use crate::netns::Lab;

/// `meshctl status ipam --json` of node `i`.
pub fn ipam(lab: &Lab, i: usize) -> Result<IpamStatus> {
    let out = lab.meshctl(i, &["status", "ipam", "--json"])?;
    serde_json::from_slice(&out.stdout).context("meshctl status ipam --json")
}

/// A small runtime for the async API client.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Allocates `n` ids on each of `nodes`, `conc` at a time per node; returns id -> ip.
pub fn allocate_many(
    lab: &Lab,
    nodes: &[usize],
    n: usize,
    tag: &str,
) -> Result<BTreeMap<String, Ipv4Addr>> {
    rt().block_on(async {
        let mut tasks = Vec::new();
        for &i in nodes {
            let sock = lab.nodes[i].socket();
            let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
            for k in 0..n {
                let (sock, sem) = (sock.clone(), sem.clone());
                let id = format!("{tag}-n{i}-{k}");
                tasks.push(tokio::spawn(async move {
                    let _permit = sem.acquire().await;
                    let path = format!("/ip/{id}");
                    let r: IpReply =
                        weft_api::client::json(&sock, hyper::Method::POST, &path, None).await?;
                    anyhow::Ok((id, r.ip))
                }));
            }
        }
        let mut out = BTreeMap::new();
        for t in tasks {
            let (id, ip) = t.await??;
            out.insert(id, ip);
        }
        Ok(out)
    })
}

/// Every allocation every node holds: ip -> (node, id).
pub fn all_holdings(lab: &Lab, nodes: &[usize]) -> Result<Vec<(Ipv4Addr, usize, String)>> {
    let mut out = Vec::new();
    for &i in nodes {
        let list: Vec<Allocation> = rt().block_on(weft_api::client::json(
            &lab.nodes[i].socket(),
            hyper::Method::GET,
            "/ip",
            None,
        ))?;
        out.extend(list.into_iter().map(|a| (a.ip, i, a.id)));
    }
    Ok(out)
}

/// Fails naming the first address held twice.
pub fn assert_no_duplicates(h: &[(Ipv4Addr, usize, String)]) -> Result<()> {
    let mut seen: BTreeMap<Ipv4Addr, (usize, &str)> = BTreeMap::new();
    for (ip, node, id) in h {
        if let Some(prev) = seen.insert(*ip, (*node, id)) {
            anyhow::bail!("{ip} held twice: {prev:?} and ({node}, {id})");
        }
    }
    Ok(())
}

/// Every node IPAM-ready and in the same cluster.
pub fn ready(lab: &Lab, nodes: &[usize]) -> Result<bool> {
    let mut clusters = BTreeSet::new();
    for &i in nodes {
        let s = ipam(lab, i)?;
        if !s.ready {
            return Ok(false);
        }
        clusters.insert(s.cluster);
    }
    Ok(clusters.len() == 1)
}

/// Every node sees the same owners with the same amounts.
pub fn rings_agree(lab: &Lab, nodes: &[usize]) -> Result<bool> {
    let mut views = BTreeSet::new();
    for &i in nodes {
        views.insert(owners(&ipam(lab, i)?));
    }
    Ok(views.len() == 1)
}

/// Peer name -> addresses owned, from an IPAM status.
pub fn owners(s: &IpamStatus) -> BTreeMap<PeerName, u64> {
    s.peers.iter().map(|p| (p.name, p.owned)).collect()
}
