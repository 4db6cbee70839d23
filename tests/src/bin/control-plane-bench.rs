//! Control-plane benchmark, real code over loopback QUIC in one process:
//!
//! 1. handshakes per second: full session set-up (QUIC + mutual TLS with the
//!    password-derived CA + hello exchange + name check) against a running
//!    router, one at a time and 8 in parallel;
//! 2. time for a new router to learn a 100-router topology: 100 routers are
//!    started on loopback, each told only the first one; once they agree, a
//!    new router told only one of them is started and timed until it knows
//!    all 101 peers as reachable. Repeated; medians reported.
//!
//!   cargo run --release -p weft-tests --bin control-plane-bench [ROUTERS] [JOINS]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use weft_tests::bench::*;

use anyhow::{Context, Result};
use tokio::sync::watch;
use weft_router::daemon::DaemonConfig;
use weft_router::session::{self, SessionEvent};

const PW: &str = "bench password";

fn scratch() -> PathBuf {
    std::env::temp_dir().join(format!("weft-cp-bench-{}", std::process::id()))
}

fn router_cfg(i: usize, peers: Vec<SocketAddr>, port: u16) -> DaemonConfig {
    let dir = scratch().join(format!("r{i}"));
    // Router 0 splits the range alone; the rest observe and learn its ring.
    let init = if i == 0 {
        weft_ipam_crdt::Init::Consensus(1)
    } else {
        weft_ipam_crdt::Init::Observer
    };
    loopback_router(
        &dir,
        &format!("r{i}"),
        port,
        peers,
        PW,
        Duration::from_secs(2),
        init,
    )
}

async fn status(sock: &std::path::Path) -> Result<weft_api::Status> {
    let body = weft_api::client::request(sock, hyper::Method::GET, "/status", None).await?;
    Ok(serde_json::from_slice(&body)?)
}

/// Sets up and tears down `n` sessions one after another; returns handshakes/s.
async fn handshakes(k: usize, server: SocketAddr, n: usize) -> Result<f64> {
    let CertifiedClient {
        ctx,
        endpoint,
        events: mut rx,
        ..
    } = certified_client(
        &scratch().join(format!("client{k}")),
        PW,
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &format!("client{k}"),
        k as u64,
    )?;
    let start = Instant::now();
    for _ in 0..n {
        tokio::spawn(session::dial(ctx.clone(), endpoint.clone(), server));
        loop {
            match rx.recv().await.context("client events closed")? {
                SessionEvent::Up { out, .. } => {
                    let _ = out.close(weft_peer_proto::GoodbyeReason::Shutdown, "bench".into());
                    break;
                }
                SessionEvent::DialFailed { error, .. } => anyhow::bail!("dial failed: {error}"),
                _ => {}
            }
        }
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> Result<()> {
    let routers: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100);
    let joins: usize = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5);
    let _ = std::fs::remove_dir_all(scratch());
    let (stop_tx, stop) = watch::channel(false);
    let base_port = 24000u16;

    // 1. Handshakes against router 0.
    let first = SocketAddr::from(([127, 0, 0, 1], base_port));
    let mut tasks = vec![tokio::spawn(weft_router::daemon::run(
        router_cfg(0, vec![], base_port),
        stop.clone(),
    ))];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut seq = Vec::new();
    for round in 0..5 {
        seq.push(handshakes(round, first, 200).await?);
    }
    let mut par = Vec::new();
    for round in 0..5 {
        let t = Instant::now();
        let all: Vec<_> = (0..8)
            .map(|k| tokio::spawn(handshakes(100 + round * 8 + k, first, 50)))
            .collect();
        for h in all {
            h.await??;
        }
        par.push(400.0 / t.elapsed().as_secs_f64());
    }
    println!(
        "handshakes/s, sequential (median of 5 x 200): {:.0}  [runs: {:?}]",
        median(seq.clone()),
        seq.iter().map(|v| v.round()).collect::<Vec<_>>()
    );
    println!(
        "handshakes/s, 8 in parallel (median of 5 x 400): {:.0}  [runs: {:?}]",
        median(par.clone()),
        par.iter().map(|v| v.round()).collect::<Vec<_>>()
    );

    // 2. A new router learning a `routers`-router topology.
    for i in 1..routers {
        tasks.push(tokio::spawn(weft_router::daemon::run(
            router_cfg(i, vec![first], base_port + i as u16),
            stop.clone(),
        )));
    }
    let sock0 = scratch().join("r0/api.sock");
    let t = Instant::now();
    loop {
        let s = status(&sock0).await;
        if s.is_ok_and(|s| s.mesh.peers.iter().filter(|p| p.reachable).count() == routers) {
            break;
        }
        if t.elapsed() > Duration::from_secs(300) {
            anyhow::bail!("the {routers} routers did not converge in 300 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{routers} routers converged (as seen by router 0) in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mut learn = Vec::new();
    for j in 0..joins {
        let i = routers + j;
        let port = base_port + i as u16;
        let peer = SocketAddr::from((
            [127, 0, 0, 1],
            base_port + 1 + (j as u16 * 17) % (routers as u16 - 1),
        ));
        let (jstop_tx, jstop) = watch::channel(false);
        let t = Instant::now();
        let task = tokio::spawn(weft_router::daemon::run(
            router_cfg(i, vec![peer], port),
            jstop,
        ));
        let sock = scratch().join(format!("r{i}/api.sock"));
        loop {
            if let Ok(s) = status(&sock).await
                && s.mesh.peers.iter().filter(|p| p.reachable).count() > routers
            {
                break;
            }
            if t.elapsed() > Duration::from_secs(120) {
                anyhow::bail!("join {j} did not learn the topology in 120 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        learn.push(t.elapsed().as_secs_f64());
        let _ = jstop_tx.send(true);
        let _ = task.await;
        // Let the others notice it left before the next one joins.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!(
        "new router learns a {}-peer topology (all reachable) in: median {:.2} s  [runs: {:?}]",
        routers + 1,
        median(learn.clone()),
        rounded(&learn)
    );
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let _ = std::fs::remove_dir_all(scratch());
    Ok(())
}
