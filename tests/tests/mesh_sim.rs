//! Seeded, virtual-time simulations of the mesh core. Every assertion names
//! its seed; rerun one with `WEFT_SIM_SEED=<seed>`.

use std::time::Duration;

use weft_mesh::Config;
use weft_peer_proto::PeerName;
use weft_peer_proto::sign::Signer as _;
use weft_peer_proto::topology::PeerEntry;
use weft_tests::byzantine::{Lies, check_honest_state, lie};
use weft_tests::sim::{Sim, SimConfig, addr_of, converge_from_seed};

fn seeds(default: &[u64]) -> Vec<u64> {
    match std::env::var("WEFT_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("WEFT_SIM_SEED is a number")],
        Err(_) => default.to_vec(),
    }
}

fn base() -> Config {
    weft_tests::sim::base_config()
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

/// 50 routers, 5 of which lie all the time: forged entries for others (also
/// at u64::MAX), equivocation, thousands of fake peers, channel messages
/// under others' names, broadcast storms and looped unicasts; with loss,
/// duplication and a partition. The honest routers converge on the real
/// topology, hold no forgery, stay within their bound, let a real newcomer
/// in, count every forgery that reached them, and every relay dies out.
#[test]
fn byzantine_routers_cannot_forge_stuff_or_storm() {
    use std::cell::Cell;
    use std::rc::Rc;

    use weft_peer_proto::sign::KeyPair;

    for seed in seeds(&[71]) {
        let (n, liars, max_peers) = (50, 5, 150);
        let mut cfg = SimConfig::new(seed);
        cfg.loss = 0.05;
        cfg.duplicate = 0.02;
        let mut b = base();
        b.max_peers = max_peers;
        let mut sim = Sim::new(cfg, b);
        star_start(&mut sim, n);
        let liar_ix: Vec<usize> = (0..liars).map(|k| 1 + k * (n / liars)).collect();
        let honest: Vec<usize> = (0..n).filter(|i| !liar_ix.contains(i)).collect();
        sim.run_until_converged(Duration::from_millis(500), Duration::from_secs(300))
            .unwrap_or_else(|| panic!("no convergence before the lies; seed {seed}"));
        let gossip_frames = Rc::new(Cell::new(0usize));
        let g = gossip_frames.clone();
        sim.inspect_sends(Box::new(move |_, _, f, _| {
            if matches!(f, weft_peer_proto::Frame::Gossip(_)) {
                g.set(g.get() + 1);
            }
        }));
        // 3000 fake peers in a chain, each signed by its own made-up key.
        let keys: Vec<KeyPair> = (0..3000u64)
            .map(|k| {
                let mut s = [0u8; 32];
                s[..8].copy_from_slice(&(seed * 1_000_000 + k).to_be_bytes());
                KeyPair::from_seed(s)
            })
            .collect();
        let fake_names: Vec<PeerName> = keys.iter().map(|k| k.name()).collect();
        let fakes: Vec<PeerEntry> = keys
            .iter()
            .enumerate()
            .map(|(k, key)| {
                let mut conns = vec![fake_names[(k + 1) % 3000], fake_names[(k + 2999) % 3000]];
                conns.push(sim.nodes[honest[k % honest.len()]].name);
                PeerEntry::signed(key, format!("fake{k}"), 1, 1, vec![], conns, [0; 32])
            })
            .collect();
        let mut lies = Lies::default();
        let mut rounds = 0;
        let mut lie_for = |sim: &mut Sim, secs: u64, lies: &mut Lies| {
            let end = sim.now + Duration::from_secs(secs);
            while sim.now < end {
                for &l in &liar_ix {
                    lie(sim, l, &honest, &fakes, lies);
                }
                rounds += 1;
                let next = sim.now + Duration::from_secs(1);
                sim.run_until(next);
                for &i in &honest {
                    let len = sim.nodes[i].mesh.topology().len();
                    assert!(len <= max_peers, "node {i} holds {len}; seed {seed}");
                }
            }
            check_honest_state(sim, &honest, max_peers, seed);
        };
        lie_for(&mut sim, 10, &mut lies);
        // A partition under fire, then healing.
        let group: Vec<usize> = (0..n).map(|i| i % 2).collect();
        sim.partition(group);
        lie_for(&mut sim, 20, &mut lies);
        sim.heal();
        lie_for(&mut sim, 10, &mut lies);
        // A real newcomer while every topology is full of fakes.
        let full = honest
            .iter()
            .filter(|i| sim.nodes[**i].mesh.topology().len() == max_peers)
            .count();
        assert!(
            full > honest.len() / 2,
            "stuffing did not fill the topologies ({full}); seed {seed}"
        );
        let newcomer = sim.add_node(vec![addr_of(honest[3])]);
        let mut honest = honest.clone();
        honest.push(newcomer);
        lie_for(&mut sim, 10, &mut lies);
        // The liars stop; what is left settles.
        let took = sim.run_until_converged(Duration::from_millis(500), Duration::from_secs(300));
        assert!(
            took.is_some(),
            "honest routers did not converge after the lies; seed {seed}"
        );
        check_honest_state(&sim, &honest, max_peers, seed);
        for &i in &honest {
            assert!(
                sim.nodes[i]
                    .mesh
                    .topology()
                    .get(&sim.nodes[newcomer].name)
                    .is_some(),
                "node {i} kept the newcomer out; seed {seed}"
            );
        }
        // Every forgery that reached a router was counted there.
        let sum = |f: &dyn Fn(&weft_mesh::MeshCounters) -> u64| -> u64 {
            sim.nodes.iter().map(|x| f(&x.mesh.counters)).sum()
        };
        assert_eq!(
            sum(&|c| c.forged.topology_signature),
            lies.entry_signature as u64,
            "{lies:?}; seed {seed}"
        );
        assert_eq!(
            sum(&|c| c.forged.topology_form),
            lies.entry_form as u64,
            "{lies:?}; seed {seed}"
        );
        assert_eq!(
            sum(&|c| c.forged.channel_signature),
            lies.channel_signature as u64,
            "{lies:?}; seed {seed}"
        );
        assert_eq!(
            sum(&|c| c.forged.channel_source),
            lies.channel_source as u64,
            "{lies:?}; seed {seed}"
        );
        assert!(
            sum(&|c| c.equivocations) > 0,
            "no equivocation noticed; seed {seed}"
        );
        assert!(sum(&|c| c.evicted) > 0, "no eviction; seed {seed}");
        assert!(
            sum(&|c| c.duplicates) > 0,
            "no duplicate dropped; seed {seed}"
        );
        // Relays terminate: each genuine message is relayed at most once
        // by each router, and nothing is still moving.
        let relayed = gossip_frames.get();
        assert!(
            relayed <= (lies.genuine + rounds * liars * 32) * (n + 1),
            "{relayed} relays for {lies:?}; seed {seed}"
        );
        let until = sim.now + Duration::from_secs(30);
        sim.run_until(until);
        assert_eq!(
            gossip_frames.get(),
            relayed,
            "relays still moving; seed {seed}"
        );
        println!("seed {seed}: {lies:?}, {rounds} rounds, {relayed} channel frames");
    }
}

/// Node 5 is started with node 4's identity key (a cloned data directory).
fn clone_of_four(i: usize) -> weft_peer_proto::sign::KeyPair {
    let seed = if i == 5 { 4 } else { i as u8 };
    weft_peer_proto::sign::KeyPair::from_seed([seed + 1; 32])
}

/// Names each node reports as duplicated: (node, name, own).
fn reported(sim: &mut Sim) -> Vec<(usize, PeerName, bool)> {
    let mut v = vec![];
    for i in 0..sim.nodes.len() {
        if !sim.nodes[i].alive {
            continue;
        }
        for d in sim.with_node(i, |m, now| m.snapshot(now).duplicates) {
            v.push((i, d.peer, d.own));
        }
    }
    v
}

/// Honest restarts (after a crash, and at once, while peers still hold the
/// old session) are never reported; a clone of a router's identity is, by
/// both clones and by the honest routers.
#[test]
fn a_cloned_identity_is_reported_and_honest_restarts_are_not() {
    for seed in seeds(&[61, 62, 63]) {
        let mut cfg = SimConfig::new(seed);
        cfg.key_of = Some(clone_of_four);
        let mut sim = Sim::new(cfg, base());
        star_start(&mut sim, 5);
        sim.run_until_converged(Duration::from_millis(500), Duration::from_secs(60))
            .unwrap_or_else(|| panic!("no initial convergence; seed {seed}"));
        for round in 0..3 {
            sim.crash(4);
            let until = sim.now + Duration::from_secs(if round == 0 { 10 } else { 1 });
            sim.run_until(until);
            sim.restart(4);
            // At once: the peers still hold a session from the old process.
            sim.crash(2);
            sim.restart(2);
            sim.run_until_converged(Duration::from_millis(500), Duration::from_secs(60))
                .unwrap_or_else(|| panic!("no convergence after restarts; seed {seed}"));
        }
        let until = sim.now + Duration::from_secs(60);
        sim.run_until(until);
        assert_eq!(
            reported(&mut sim),
            vec![],
            "honest restarts reported; seed {seed}"
        );
        for i in 0..5 {
            let n = sim.with_node(i, |m, _| m.counters.duplicate_identities);
            assert_eq!(n, 0, "node {i} counted a duplicate; seed {seed}");
        }

        let clone = sim.add_node(vec![addr_of(0)]);
        let name = sim.nodes[4].name;
        assert_eq!(sim.nodes[clone].name, name);
        let until = sim.now + Duration::from_secs(180);
        sim.run_until(until);
        let seen = reported(&mut sim);
        println!("seed {seed}: reported {seen:?}");
        for i in 0..=5 {
            let own = i == 4 || i == 5;
            assert!(
                seen.contains(&(i, name, own)),
                "node {i} does not report the clone; seed {seed}"
            );
            let n = sim.with_node(i, |m, _| m.counters.duplicate_identities);
            assert!(n > 0, "node {i} counted no report; seed {seed}");
        }
        assert!(
            seen.iter().all(|(_, n, _)| *n == name),
            "an honest router reported; seed {seed}"
        );
    }
}
