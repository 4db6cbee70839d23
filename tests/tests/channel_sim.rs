//! The three gossip verbs on a named channel, through the mesh core, on a
//! sparse mesh where many peers are several hops apart.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use weft_mesh::{ChannelError, Config, GossipChannel, GossipSender};
use weft_peer_proto::{ChannelName, PeerName};
use weft_tests::sim::{Sim, SimConfig, addr_of};

/// A grow-only set gossiped as a CRDT, recording unicasts and broadcasts.
struct TestChannel {
    name: ChannelName,
    sender: GossipSender,
    set: BTreeSet<u64>,
    unicasts: Vec<(PeerName, Vec<u8>)>,
    broadcasts: Vec<(PeerName, Vec<u8>)>,
}

fn encode(set: &BTreeSet<u64>) -> Vec<u8> {
    set.iter().flat_map(|v| v.to_be_bytes()).collect()
}

impl TestChannel {
    fn new() -> Self {
        TestChannel {
            name: chan(),
            sender: GossipSender::default(),
            set: BTreeSet::new(),
            unicasts: Vec::new(),
            broadcasts: Vec::new(),
        }
    }
}

impl GossipChannel for TestChannel {
    fn name(&self) -> &ChannelName {
        &self.name
    }
    fn on_unicast(
        &mut self,
        _: Instant,
        src: PeerName,
        payload: &[u8],
    ) -> Result<(), ChannelError> {
        self.unicasts.push((src, payload.to_vec()));
        Ok(())
    }
    fn on_broadcast(
        &mut self,
        _: Instant,
        src: PeerName,
        payload: &[u8],
    ) -> Result<(), ChannelError> {
        self.broadcasts.push((src, payload.to_vec()));
        Ok(())
    }
    fn on_gossip(&mut self, _: Instant, payload: &[u8]) -> Result<Option<Vec<u8>>, ChannelError> {
        if !payload.len().is_multiple_of(8) {
            return Err(ChannelError("ragged set".into()));
        }
        let news: BTreeSet<u64> = payload
            .chunks(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
            .filter(|v| !self.set.contains(v))
            .collect();
        self.set.extend(news.iter().copied());
        Ok((!news.is_empty()).then(|| encode(&news)))
    }
    fn full_state(&mut self, _: Instant) -> Option<Vec<u8>> {
        (!self.set.is_empty()).then(|| encode(&self.set))
    }
    fn sender(&mut self) -> &mut GossipSender {
        &mut self.sender
    }
}

fn chan() -> ChannelName {
    ChannelName::new("test").expect("valid name")
}

fn state(sim: &mut Sim<TestChannel>, i: usize) -> &mut TestChannel {
    sim.nodes[i].mesh.channels_mut()
}

fn sim(seed: u64, base: Config) -> Sim<TestChannel> {
    Sim::with_channels(
        SimConfig::new(seed),
        base,
        Box::new(|_, _, _, _| TestChannel::new()),
        Box::new(|_, _| None),
    )
}

#[test]
fn unicast_broadcast_and_gossip_reach_everyone_across_hops() {
    for seed in [31u64, 32, 33] {
        let mut base = weft_tests::sim::base_config();
        base.conn_limit = 2; // sparse: most peers are more than one hop apart
        let mut sim = sim(seed, base);
        let n = 16;
        sim.add_node(vec![]);
        for _ in 1..n {
            sim.add_node(vec![addr_of(0)]);
        }
        sim.run_until_converged(Duration::from_millis(500), Duration::from_secs(300))
            .unwrap_or_else(|| panic!("no convergence; seed {seed}"));
        // Broadcast trees are computed from each peer's own topology: send
        // only once every peer holds the same one.
        let until = sim.now + Duration::from_secs(10);
        sim.run_until(until);
        let hashes: BTreeSet<u64> = sim.nodes.iter().map(|x| x.mesh.topology().hash()).collect();
        assert_eq!(
            hashes.len(),
            1,
            "topologies differ after settling; seed {seed}"
        );
        let names: Vec<PeerName> = sim.nodes.iter().map(|x| x.name).collect();
        let max_hops = (0..n)
            .flat_map(|i| {
                let r = sim.nodes[i].mesh.routes();
                names.iter().filter_map(|d| r.hops(*d)).collect::<Vec<_>>()
            })
            .max()
            .unwrap_or(0);
        assert!(
            max_hops >= 3,
            "mesh not sparse enough to test relaying (max {max_hops} hops); seed {seed}"
        );

        // Unicast: every node to every other node, exactly once each.
        for i in 0..n {
            for (j, dst) in names.iter().enumerate() {
                if i != j {
                    let payload = format!("{i}->{j}").into_bytes();
                    sim.with_node(i, |m, _| m.channels_mut().sender().unicast(*dst, payload));
                }
            }
        }
        // Broadcast from a few sources.
        for src in [0usize, 7, 15] {
            sim.with_node(src, |m, _| {
                let payload = format!("from {src}").into_bytes();
                m.channels_mut().sender().broadcast(payload)
            });
        }
        // Gossip: each node contributes one element.
        for i in 0..n {
            state(&mut sim, i).set.insert(i as u64);
            sim.with_node(i, |m, _| {
                let payload = (i as u64).to_be_bytes().to_vec();
                m.channels_mut().sender().gossip(payload)
            });
        }
        let until = sim.now + Duration::from_secs(30);
        sim.run_until(until);
        let unroutable: u64 = sim.nodes.iter().map(|x| x.mesh.counters.unroutable).sum();
        assert_eq!(unroutable, 0, "every unicast had a route; seed {seed}");

        let everything: BTreeSet<u64> = (0..n as u64).collect();
        for j in 0..n {
            let names2 = names.clone();
            let st = state(&mut sim, j);
            let mut got: BTreeMap<PeerName, usize> = BTreeMap::new();
            for (src, payload) in &st.unicasts {
                let i = names2.iter().position(|x| x == src).expect("known source");
                assert_eq!(payload, &format!("{i}->{j}").into_bytes(), "seed {seed}");
                *got.entry(*src).or_default() += 1;
            }
            assert_eq!(
                got.len(),
                n - 1,
                "node {j} got unicasts from {} peers; seed {seed}",
                got.len()
            );
            assert!(
                got.values().all(|c| *c == 1),
                "duplicate unicast at {j}; seed {seed}"
            );
            let bsrcs: Vec<PeerName> = st.broadcasts.iter().map(|(s, _)| *s).collect();
            let expected: Vec<PeerName> = [0usize, 7, 15]
                .iter()
                .filter(|s| **s != j)
                .map(|s| names2[*s])
                .collect();
            let mut b = bsrcs.clone();
            b.sort();
            let mut e = expected.clone();
            e.sort();
            assert_eq!(b, e, "node {j} broadcasts (each exactly once); seed {seed}");
            assert_eq!(st.set, everything, "node {j} gossip set; seed {seed}");
        }
    }
}

#[test]
fn a_channel_error_is_counted_and_the_session_survives() {
    let mut sim = sim(41, weft_tests::sim::base_config());
    sim.add_node(vec![]);
    sim.add_node(vec![addr_of(0)]);
    sim.run_until_converged(Duration::from_millis(500), Duration::from_secs(60))
        .expect("converges");
    sim.with_node(0, |m, _| m.channels_mut().sender().gossip(vec![1, 2, 3]));
    let until = sim.now + Duration::from_secs(2);
    sim.run_until(until);
    assert_eq!(sim.nodes[1].mesh.counters.channel_errors, 1);
    assert!(
        sim.converged(),
        "a bad channel payload must not cost the session"
    );
    assert_eq!(sim.degree().0, 1.0);
}

/// Node 0 lies to node 1 on their session; 1 and 2 are honest (a line
/// 0 - 1 - 2). Before channel messages were signed, a unicast "from 2"
/// sent by 0 was delivered to 1's channel as 2's.
#[test]
fn forged_looped_and_stormed_channel_messages_are_dropped_and_counted() {
    use weft_peer_proto::limits::MAX_HOPS;
    use weft_peer_proto::sign::KeyPair;
    use weft_peer_proto::{Frame, GossipMsg, Verb};

    let mut base = weft_tests::sim::base_config();
    base.discovery = false;
    let mut sim = sim(43, base);
    sim.add_node(vec![]);
    sim.add_node(vec![addr_of(0)]);
    sim.add_node(vec![addr_of(1)]);
    sim.run_until_converged(Duration::from_millis(500), Duration::from_secs(60))
        .expect("converges");
    let names: Vec<PeerName> = sim.nodes.iter().map(|x| x.name).collect();
    let liar = sim.nodes[0].key.clone();
    let conn = sim.sessions_of(0)[0];
    let send = |sim: &mut Sim<TestChannel>, m: GossipMsg| {
        sim.send_as(0, conn, Frame::Gossip(m));
    };
    let unicast = |src, dst| Verb::Unicast { src, dst };

    // 1. A unicast under 2's name, signed by 0.
    let m = GossipMsg::signed(
        &*liar,
        chan(),
        unicast(names[2], names[1]),
        1,
        MAX_HOPS,
        b"forged".to_vec(),
    );
    send(&mut sim, m);
    // 2. A broadcast under 2's name, with 0's signature over other bytes.
    let mut m = GossipMsg::signed(
        &*liar,
        chan(),
        Verb::Broadcast { src: names[0] },
        2,
        MAX_HOPS,
        b"x".to_vec(),
    );
    m.verb = Verb::Broadcast { src: names[2] };
    send(&mut sim, m);
    // 3. Gossip signed by a router that is not the neighbour sending it.
    let stranger = KeyPair::from_seed([99; 32]);
    send(
        &mut sim,
        GossipMsg::signed(
            &stranger,
            chan(),
            Verb::Gossip,
            3,
            MAX_HOPS,
            encode(&[7].into()),
        ),
    );
    // 4. A genuine unicast of 0's to 2, with no relays left.
    send(
        &mut sim,
        GossipMsg::signed(
            &*liar,
            chan(),
            unicast(names[0], names[2]),
            4,
            0,
            b"x".to_vec(),
        ),
    );
    // 5. A storm: one genuine broadcast, sent fifty times.
    let storm = GossipMsg::signed(
        &*liar,
        chan(),
        Verb::Broadcast { src: names[0] },
        5,
        MAX_HOPS,
        b"storm".to_vec(),
    );
    for _ in 0..50 {
        send(&mut sim, storm.clone());
    }
    let until = sim.now + Duration::from_secs(2);
    sim.run_until(until);

    let c = sim.nodes[1].mesh.counters.clone();
    assert_eq!(c.forged.channel_signature, 2, "{c:?}");
    assert_eq!(c.forged.channel_source, 1, "{c:?}");
    assert_eq!(c.hop_limit, 1, "{c:?}");
    assert_eq!(c.duplicates, 49, "{c:?}");
    let st = state(&mut sim, 1);
    assert!(st.unicasts.is_empty(), "{:?}", st.unicasts);
    assert_eq!(st.broadcasts, vec![(names[0], b"storm".to_vec())]);
    assert!(!st.set.contains(&7));
    // Node 2 got the storm once (relayed by 1), nothing else.
    let st = state(&mut sim, 2);
    assert_eq!(st.broadcasts, vec![(names[0], b"storm".to_vec())]);
    assert!(st.unicasts.is_empty());
    assert!(sim.converged(), "lies cost no session");
    assert_eq!(sim.sessions_of(0), vec![conn]);
}
