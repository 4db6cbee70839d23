//! Seeded, virtual-time simulations of the mesh core. Every assertion names
//! its seed; rerun one with `WEFT_SIM_SEED=<seed>`.

use std::time::Duration;

use weft_mesh::Config;
use weft_peer_proto::PeerName;
use weft_tests::sim::{Sim, SimConfig, addr_of, converge_from_seed};

fn seeds(default: &[u64]) -> Vec<u64> {
    match std::env::var("WEFT_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("WEFT_SIM_SEED is a number")],
        Err(_) => default.to_vec(),
    }
}

fn base() -> Config {
    Config::new(PeerName(0), String::new(), 0, 0)
}

/// N routers, each started knowing only the first one's address.
fn star_start(sim: &mut Sim, n: usize) {
    sim.add_node(vec![]);
    for _ in 1..n {
        sim.add_node(vec![addr_of(0)]);
    }
}

fn converge(n: usize, seed: u64) -> weft_tests::sim::Convergence {
    converge_from_seed(n, seed, SimConfig::new(seed), base())
}

#[test]
fn ten_and_hundred_peers_converge_from_one_seed() {
    for seed in seeds(&[1, 2, 3]) {
        for n in [10, 100] {
            let c = converge(n, seed);
            println!("seed {seed}: {c:?}");
        }
    }
}

/// The 1000-peer run: about a minute of CPU; CI runs it once.
#[test]
fn thousand_peers_converge_from_one_seed() {
    for seed in seeds(&[7]) {
        let c = converge(1000, seed);
        println!("seed {seed}: {c:?}");
    }
}

#[test]
fn converges_under_loss_duplication_and_after_partition_heals() {
    for seed in seeds(&[11, 12, 13, 14]) {
        let mut cfg = SimConfig::new(seed);
        cfg.loss = 0.2;
        cfg.duplicate = 0.05;
        let mut sim = Sim::new(cfg, base());
        let n = 40;
        star_start(&mut sim, n);
        sim.run_until_converged(Duration::from_millis(500), Duration::from_secs(300))
            .unwrap_or_else(|| panic!("no convergence under 20% loss; seed {seed}"));
        // Split in two for two minutes; each side must stay converged within itself,
        // and everything must come back together after healing.
        let group: Vec<usize> = (0..n).map(|i| i % 2).collect();
        sim.partition(group.clone());
        let until = sim.now + Duration::from_secs(120);
        sim.run_until(until);
        let names: Vec<PeerName> = sim.nodes.iter().map(|n| n.name).collect();
        for i in 0..n {
            let r = sim.nodes[i].mesh.routes();
            for (j, g) in group.iter().enumerate() {
                let name = names[j];
                if *g != group[i] {
                    assert!(
                        !r.is_reachable(name),
                        "node {i} still routes to {j} across the partition; seed {seed}"
                    );
                }
            }
        }
        sim.heal();
        let took = sim
            .run_until_converged(Duration::from_millis(500), Duration::from_secs(300))
            .unwrap_or_else(|| panic!("no convergence after healing; seed {seed}"));
        println!("seed {seed}: reconverged {took:?} after healing (20% loss, 5% duplication)");
    }
}

#[test]
fn crashed_peers_become_unreachable_and_rejoin_after_restart() {
    for seed in seeds(&[21, 22]) {
        let mut sim = Sim::new(SimConfig::new(seed), base());
        let n = 20;
        star_start(&mut sim, n);
        sim.run_until_converged(Duration::from_millis(500), Duration::from_secs(120))
            .unwrap_or_else(|| panic!("no initial convergence; seed {seed}"));
        // Crash the seed itself and two others.
        let dead = [0usize, 5, 9];
        for d in dead {
            sim.crash(d);
        }
        let until = sim.now + Duration::from_secs(30);
        sim.run_until(until);
        assert!(sim.converged(), "survivors did not agree; seed {seed}");
        for i in (0..n).filter(|i| !dead.contains(i)) {
            for d in dead {
                let name = sim.nodes[d].name;
                assert!(
                    !sim.nodes[i].mesh.routes().is_reachable(name),
                    "node {i} still reaches dead {d}; seed {seed}"
                );
            }
        }
        for d in dead {
            sim.restart(d);
        }
        sim.run_until_converged(Duration::from_millis(500), Duration::from_secs(120))
            .unwrap_or_else(|| panic!("restarted peers did not rejoin; seed {seed}"));
    }
}

#[test]
fn without_discovery_routers_dial_only_what_they_were_given() {
    for seed in seeds(&[51, 52]) {
        let mut b = base();
        b.discovery = false;
        let mut sim = Sim::new(SimConfig::new(seed), b);
        let n = 8;
        star_start(&mut sim, n);
        sim.run_until_converged(Duration::from_millis(500), Duration::from_secs(120))
            .unwrap_or_else(|| panic!("no convergence; seed {seed}"));
        let until = sim.now + Duration::from_secs(30);
        sim.run_until(until);
        // A star: every leaf holds one session (to the seed) and reaches the others in two hops.
        let seed_name = sim.nodes[0].name;
        let names: Vec<PeerName> = sim.nodes.iter().map(|x| x.name).collect();
        for i in 1..n {
            let peers: Vec<PeerName> = sim.nodes[i].mesh.established().map(|(_, p)| p).collect();
            assert_eq!(
                peers,
                vec![seed_name],
                "node {i} dialed a discovered peer; seed {seed}"
            );
            let r = sim.nodes[i].mesh.routes();
            for (j, name) in names.iter().enumerate().skip(1) {
                if j != i {
                    assert_eq!(
                        r.next_hop(*name),
                        Some(seed_name),
                        "node {i} -> {j}; seed {seed}"
                    );
                    assert_eq!(r.hops(*name), Some(2), "node {i} -> {j}; seed {seed}");
                }
            }
        }
    }
}

/// A partition outlasting peer_gc_after, where nobody on one side has an
/// explicit target on the other: the mesh heals through the addresses
/// remembered for forgotten peers.
#[test]
fn a_long_partition_heals_without_explicit_targets_across_it() {
    for seed in seeds(&[61, 62]) {
        let mut sim = Sim::new(SimConfig::new(seed), base());
        let n = 20;
        star_start(&mut sim, n);
        sim.run_until_converged(Duration::from_millis(500), Duration::from_secs(120))
            .unwrap_or_else(|| panic!("no convergence; seed {seed}"));
        for i in n / 2..n {
            sim.with_node(i, |m, _| m.forget_target(addr_of(0)));
            sim.nodes[i].targets.clear();
        }
        let group: Vec<usize> = (0..n).map(|i| usize::from(i >= n / 2)).collect();
        sim.partition(group);
        let until = sim.now + base().peer_gc_after * 3;
        sim.run_until(until);
        assert!(
            sim.nodes[0].mesh.topology().len() <= n / 2,
            "the far side was not forgotten during the partition; seed {seed}"
        );
        sim.heal();
        sim.run_until_converged(Duration::from_millis(500), Duration::from_secs(300))
            .unwrap_or_else(|| panic!("no convergence after a long partition; seed {seed}"));
    }
}
