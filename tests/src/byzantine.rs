//! Lies a Byzantine router tells at the mesh layer, shared by the
//! simulations that put liars among honest routers (`tests/mesh_sim.rs`,
//! `tests/ipam_channel_sim.rs`), and the check of what honest routers hold.

use rand::Rng;
use weft_mesh::Channels;
use weft_peer_proto::PeerName;
use weft_peer_proto::sign::Signer as _;
use weft_peer_proto::topology::PeerEntry;

use crate::sim::Sim;

/// What the liars did, counted as it went on the wire.
#[derive(Debug, Default)]
pub struct Lies {
    /// Entries for another router (or for the receiver itself) signed by
    /// the liar, and entries at versions beyond the limit.
    pub entry_signature: usize,
    pub entry_form: usize,
    /// Channel messages under another router's name, and gossip signed by
    /// someone other than the neighbour sending it.
    pub channel_signature: usize,
    pub channel_source: usize,
    /// Copies of genuine channel messages of the liars' own: storms and loops.
    pub genuine: usize,
}

/// One round of lies from liar `l` on each of its sessions. `fakes` are
/// entries signed by keys the liar made up (valid, but nobody real links to
/// them): topology stuffing.
pub fn lie<C: Channels>(
    sim: &mut Sim<C>,
    l: usize,
    honest: &[usize],
    fakes: &[PeerEntry],
    lies: &mut Lies,
) {
    use weft_peer_proto::topology::TopologyMsg;
    use weft_peer_proto::{ChannelName, Frame, GossipMsg, Verb};

    let key = sim.nodes[l].key.clone();
    let names: Vec<PeerName> = sim.nodes.iter().map(|n| n.name).collect();
    let chan = ChannelName::new("ipam").expect("name");
    for conn in sim.sessions_of(l) {
        let victim = honest[sim.rng().random_range(0..honest.len())];
        let real = sim.nodes[victim].mesh.topology().me().clone();
        let mut forged = real.clone();
        forged.version += 1000;
        forged.conns = vec![names[l]];
        forged.sig = key.sign("weft/topology/1", &"anything");
        let mut frozen = real.clone();
        frozen.version = u64::MAX;
        let update = |entries| Frame::Topology(TopologyMsg::Update { entries });
        lies.entry_signature += sim.send_as(l, conn, update(vec![forged]));
        lies.entry_form += sim.send_as(l, conn, update(vec![frozen]));
        // Equivocation: two different entries of its own at one version.
        let me = sim.nodes[l].mesh.topology().me().clone();
        let odd: u8 = sim.rng().random();
        let twin = PeerEntry::signed(
            &*key,
            format!("liar{odd}"),
            me.uid,
            me.version + 1,
            me.addrs.clone(),
            me.conns.clone(),
            me.dh,
        );
        sim.send_as(l, conn, update(vec![twin]));
        // Stuffing, a slice at a time, to a few neighbours a round.
        if sim.rng().random_bool(0.2) {
            let at = sim.rng().random_range(0..fakes.len());
            let chunk: Vec<PeerEntry> = fakes.iter().cycle().skip(at).take(200).cloned().collect();
            sim.send_as(l, conn, update(chunk));
        }
        // Channel messages under an honest router's name.
        let (src, dst) = (names[victim], names[honest[0]]);
        let seq = sim.rng().random();
        let m = GossipMsg::signed(
            &*key,
            chan.clone(),
            Verb::Unicast { src, dst },
            seq,
            8,
            vec![1],
        );
        lies.channel_signature += sim.send_as(l, conn, Frame::Gossip(m));
        let seq = sim.rng().random();
        let mut m = GossipMsg::signed(
            &*key,
            chan.clone(),
            Verb::Broadcast { src: names[l] },
            seq,
            8,
            vec![2],
        );
        m.verb = Verb::Broadcast { src };
        lies.channel_signature += sim.send_as(l, conn, Frame::Gossip(m));
        let stranger = weft_peer_proto::sign::KeyPair::from_seed(sim.rng().random());
        let m = GossipMsg::signed(&stranger, chan.clone(), Verb::Gossip, seq, 8, vec![3]);
        lies.channel_source += sim.send_as(l, conn, Frame::Gossip(m));
        // Genuine messages of its own, stormed and looped back: a broadcast
        // and a unicast to the far side, each sent three times.
        let seq = sim.rng().random();
        let b = GossipMsg::signed(
            &*key,
            chan.clone(),
            Verb::Broadcast { src: names[l] },
            seq,
            32,
            vec![4],
        );
        let far = names[*honest.last().expect("honest")];
        let u = GossipMsg::signed(
            &*key,
            chan.clone(),
            Verb::Unicast {
                src: names[l],
                dst: far,
            },
            seq.wrapping_add(1),
            32,
            vec![5],
        );
        for _ in 0..3 {
            lies.genuine += sim.send_as(l, conn, Frame::Gossip(b.clone()));
            lies.genuine += sim.send_as(l, conn, Frame::Gossip(u.clone()));
        }
    }
}

/// Every honest topology holds at most `max` entries, each signed by the
/// router it names; a real router's entry is that router's own.
pub fn check_honest_state<C: Channels>(sim: &Sim<C>, honest: &[usize], max: usize, seed: u64) {
    let real: std::collections::HashMap<PeerName, PeerEntry> = sim
        .nodes
        .iter()
        .map(|n| (n.name, n.mesh.topology().me().clone()))
        .collect();
    let honest_names: Vec<PeerName> = honest.iter().map(|i| sim.nodes[*i].name).collect();
    for &i in honest {
        let t = sim.nodes[i].mesh.topology();
        assert!(
            t.len() <= max,
            "node {i} holds {} > {max}; seed {seed}",
            t.len()
        );
        for e in t.entries() {
            assert_eq!(
                e.verify(),
                Ok(()),
                "node {i} holds a forged entry; seed {seed}"
            );
        }
        for (name, mine) in &real {
            if let Some(e) = t.get(name).filter(|_| honest_names.contains(name)) {
                assert!(
                    e.order_key() <= mine.order_key(),
                    "node {i} holds an entry for {name} its router never had; seed {seed}"
                );
            }
        }
    }
}
