//! IPAM benchmark, real meshd code in one process over loopback:
//!
//! 1. allocation latency (p50/p99) through the local API when the router
//!    owns free space, every allocation persisted (fsync) before it answers;
//! 2. allocations per second with 32 concurrent clients;
//! 3. time from a new router's start to its first address (it must learn the
//!    ring and get space donated). Repeated; medians reported.
//!
//!   cargo run --release -p weft-tests --bin ipam-bench

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use weft_tests::bench::*;

use anyhow::{Result, bail};
use hyper::Method;
use tokio::sync::watch;
use weft_ipam_crdt::Init;
use weft_router::daemon::DaemonConfig;

fn scratch() -> PathBuf {
    std::env::temp_dir().join(format!("weft-ipam-bench-{}", std::process::id()))
}

fn cfg(name: &str, port: u16, peers: Vec<SocketAddr>, init: Init) -> DaemonConfig {
    let dir = scratch().join(name);
    loopback_router(
        &dir,
        name,
        port,
        peers,
        "bench",
        Duration::from_millis(500),
        init,
    )
}

async fn post(sock: &Path, path: &str) -> Result<()> {
    weft_api::client::request(sock, Method::POST, path, None)
        .await
        .map(|_| ())
        .map_err(Into::into)
}

#[tokio::main]
async fn main() -> Result<()> {
    let _ = std::fs::remove_dir_all(scratch());
    let (stop_tx, stop) = watch::channel(false);
    let a_addr = SocketAddr::from(([127, 0, 0, 1], 25000));
    let a = tokio::spawn(weft_router::daemon::run(
        cfg("a", 25000, vec![], Init::Consensus(1)),
        stop.clone(),
    ));
    let sock_a = scratch().join("a/api.sock");
    let t = Instant::now();
    while post(&sock_a, "/ip/warmup").await.is_err() {
        if t.elapsed() > Duration::from_secs(20) {
            bail!("router a did not become ready");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 1. Sequential latency.
    let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
    for round in 0..3 {
        let mut lat = Vec::new();
        for k in 0..1000 {
            let t = Instant::now();
            post(&sock_a, &format!("/ip/seq{round}-{k}")).await?;
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        p50s.push(quantile(&mut lat, 0.50));
        p99s.push(quantile(&mut lat, 0.99));
    }
    println!(
        "allocation latency, one client (3 x 1000): p50 {:.2} ms, p99 {:.2} ms  [p50s {:?}, p99s {:?}]",
        median(p50s.clone()),
        median(p99s.clone()),
        rounded(&p50s),
        rounded(&p99s)
    );

    // 2. Throughput with 32 concurrent clients.
    let mut rates = Vec::new();
    for round in 0..3 {
        let t = Instant::now();
        let tasks: Vec<_> = (0..32)
            .map(|c| {
                let sock = sock_a.clone();
                tokio::spawn(async move {
                    for k in 0..60 {
                        post(&sock, &format!("/ip/par{round}-{c}-{k}")).await?;
                    }
                    anyhow::Ok(())
                })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        rates.push(1920.0 / t.elapsed().as_secs_f64());
    }
    println!(
        "allocations/s, 32 clients (3 x 1920): median {:.0}  [runs {:?}]",
        median(rates.clone()),
        rates.iter().map(|v| v.round()).collect::<Vec<_>>()
    );

    // 3. A new router's first address.
    let mut first = Vec::new();
    for j in 0..5 {
        let name = format!("new{j}");
        let (jstop_tx, jstop) = watch::channel(false);
        let t = Instant::now();
        let task = tokio::spawn(weft_router::daemon::run(
            cfg(&name, 25100 + j, vec![a_addr], Init::Observer),
            jstop,
        ));
        let sock = scratch().join(&name).join("api.sock");
        loop {
            if post(&sock, "/ip/first").await.is_ok() {
                break;
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("{name} got no address in 60 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        first.push(t.elapsed().as_secs_f64());
        let _ = jstop_tx.send(true);
        let _ = task.await;
    }
    println!(
        "new router, start to first address: median {:.2} s  [runs {:?}]",
        median(first.clone()),
        rounded(&first)
    );
    let _ = stop_tx.send(true);
    let _ = a.await;
    let _ = std::fs::remove_dir_all(scratch());
    Ok(())
}
