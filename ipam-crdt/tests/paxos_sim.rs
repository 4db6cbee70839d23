//! Consensus bootstrap under loss, duplication, delay and partitions, with
//! duelling proposers proposing different values: no two routers ever learn
//! different decisions, and after healing everyone (observers too) decides.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

mod common;
use common::Rng;
use weft_ipam_crdt::PeerName;
use weft_ipam_crdt::paxos::{Knowledge, Paxos};

fn run(seed: u64) {
    let mut rng = Rng::new(seed);
    let voters = 5usize;
    let n = voters + 2; // two observers
    let mut nodes: Vec<Paxos> = (0..n)
        .map(|i| Paxos::new(PeerName(i as u64 + 1), voters, i < voters))
        .collect();
    let mut queue: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
    let mut msgs: BTreeMap<u64, (usize, Knowledge)> = BTreeMap::new();
    let (mut seq, mut now) = (0u64, 0u64);
    let mut group: Option<Vec<u64>> = None;
    let mut seen: Option<Vec<PeerName>> = None;
    // Safety is about the value: Paxos may choose it again at higher ballots.
    let check = |nodes: &[Paxos], seen: &mut Option<Vec<PeerName>>| {
        for (i, p) in nodes.iter().enumerate() {
            if let Some((_, d)) = p.decision() {
                match seen {
                    None => *seen = Some(d),
                    Some(s) => {
                        assert_eq!(*s, d, "node {i} learned a different decision; seed {seed}")
                    }
                }
            }
        }
    };
    for step in 0..4000u64 {
        now += 1;
        // Deliver what is due.
        while let Some(Reverse((at, id))) = queue.peek().copied() {
            if at > now {
                break;
            }
            queue.pop();
            if let Some((to, k)) = msgs.remove(&id) {
                nodes[to].merge(&k);
            }
        }
        check(&nodes, &mut seen);
        let healed = step >= 3000;
        if healed {
            group = None;
        } else if rng.below(200) == 0 {
            group = if group.is_some() {
                None
            } else {
                Some((0..n).map(|_| rng.below(2)).collect())
            };
        }
        // Gossip: a random node sends its knowledge to two others.
        let from = rng.below(n as u64) as usize;
        for _ in 0..2 {
            let to = rng.below(n as u64) as usize;
            let cut = group.as_ref().is_some_and(|g| g[from] != g[to]);
            if to == from || cut || (!healed && rng.below(10) == 0) {
                continue;
            }
            let copies = if rng.below(20) == 0 { 2 } else { 1 };
            for _ in 0..copies {
                seq += 1;
                queue.push(Reverse((now + 1 + rng.below(20), seq)));
                msgs.insert(seq, (to, nodes[from].knowledge().clone()));
            }
        }
        // Proposers: before healing, anyone now and then with its own view;
        // after, voter 0 retries until there is a decision.
        let proposer = if healed {
            (step % 50 == 0).then_some(0)
        } else {
            (rng.below(60) == 0).then(|| rng.below(voters as u64) as usize)
        };
        if let Some(p) = proposer {
            let k = 3 + rng.below(3) as usize;
            let mut value: Vec<PeerName> = (1..=voters as u64).map(PeerName).collect();
            value.truncate(k);
            nodes[p].propose(value);
        }
    }
    check(&nodes, &mut seen);
    let decided = nodes.iter().filter(|p| p.decision().is_some()).count();
    assert_eq!(
        decided, n,
        "only {decided} of {n} decided after healing; seed {seed}"
    );
}

#[test]
fn consensus_is_safe_under_loss_and_partitions_and_live_after_healing() {
    let seeds: Vec<u64> = match std::env::var("WEFT_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("WEFT_SIM_SEED is a number")],
        Err(_) => (1..=200).collect(),
    };
    for seed in seeds {
        run(seed);
    }
}
