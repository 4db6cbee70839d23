//! Routes computed from the topology, identical on every peer that holds the
//! same topology.
//!
//! A link counts only when both ends report it (so a peer that died, whose
//! entry still lists its old connections, is unreachable as soon as its
//! neighbours notice). Unicast: BFS from us, neighbours visited in name order,
//! so the next hop towards every peer is the first hop of a shortest path.
//! Broadcast: BFS from the source with the same order; we forward to the peers
//! whose BFS parent is us.

use std::collections::{HashMap, VecDeque};

use weft_peer_proto::PeerName;

use super::topology::Topology;

#[derive(Debug, Clone)]
pub struct Routes {
    me: PeerName,
    adjacency: HashMap<PeerName, Vec<PeerName>>,
    /// dst -> (next hop, hops)
    unicast: HashMap<PeerName, (PeerName, u32)>,
    broadcast: HashMap<PeerName, Vec<PeerName>>,
}

impl Routes {
    pub fn compute(topology: &Topology) -> Self {
        let me = topology.name();
        // Entries' connection lists are sorted (the topology normalises them).
        let claims: HashMap<PeerName, &[PeerName]> = topology
            .entries()
            .map(|e| (e.name, e.conns.as_slice()))
            .collect();
        let mut adjacency: HashMap<PeerName, Vec<PeerName>> = HashMap::with_capacity(claims.len());
        for (a, tos) in &claims {
            let ns: Vec<PeerName> = tos
                .iter()
                .filter(|b| {
                    *b != a
                        && claims
                            .get(b)
                            .is_some_and(|back| back.binary_search(a).is_ok())
                })
                .copied()
                .collect();
            if !ns.is_empty() {
                adjacency.insert(*a, ns);
            }
        }
        let mut r = Routes {
            me,
            adjacency,
            unicast: HashMap::new(),
            broadcast: HashMap::new(),
        };
        let parents = r.bfs(me);
        for (node, (_, hops)) in &parents {
            if *node == me {
                continue;
            }
            // Walk back to the child of `me` on the path.
            let mut cur = *node;
            while let Some((p, _)) = parents.get(&cur) {
                if *p == me {
                    break;
                }
                cur = *p;
            }
            r.unicast.insert(*node, (cur, *hops));
        }
        r
    }

    /// node -> (BFS parent, hops from root); the root maps to itself.
    fn bfs(&self, root: PeerName) -> HashMap<PeerName, (PeerName, u32)> {
        let mut parents = HashMap::new();
        parents.insert(root, (root, 0));
        let mut q = VecDeque::from([root]);
        while let Some(n) = q.pop_front() {
            let hops = parents[&n].1;
            for m in self.adjacency.get(&n).map(Vec::as_slice).unwrap_or(&[]) {
                if !parents.contains_key(m) {
                    parents.insert(*m, (n, hops + 1));
                    q.push_back(*m);
                }
            }
        }
        parents
    }

    /// Next hop towards `dst`, if it is reachable.
    pub fn next_hop(&self, dst: PeerName) -> Option<PeerName> {
        self.unicast.get(&dst).map(|(h, _)| *h)
    }

    /// Hops to `dst` (1 = direct), if reachable.
    pub fn hops(&self, dst: PeerName) -> Option<u32> {
        self.unicast.get(&dst).map(|(_, h)| *h)
    }

    pub fn is_reachable(&self, peer: PeerName) -> bool {
        peer == self.me || self.unicast.contains_key(&peer)
    }

    /// Number of peers reachable from us, not counting ourselves.
    pub fn reachable_count(&self) -> usize {
        self.unicast.len()
    }

    /// Peers we forward a broadcast from `src` to.
    pub fn broadcast_children(&mut self, src: PeerName) -> Vec<PeerName> {
        if let Some(c) = self.broadcast.get(&src) {
            return c.clone();
        }
        let parents = self.bfs(src);
        let mut children: Vec<PeerName> = parents
            .iter()
            .filter(|(n, (p, _))| *p == self.me && **n != src && **n != self.me)
            .map(|(n, _)| *n)
            .collect();
        children.sort_unstable();
        self.broadcast.insert(src, children.clone());
        children
    }

    /// Unicast routes as (destination, next hop, hops), sorted by destination.
    pub fn table(&self) -> Vec<(PeerName, PeerName, u32)> {
        let mut t: Vec<_> = self
            .unicast
            .iter()
            .map(|(d, (h, n))| (*d, *h, *n))
            .collect();
        t.sort_unstable();
        t
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use weft_peer_proto::topology::PeerEntry;

    use super::*;

    fn topo(me: u64, edges: &[(u64, u64)], asymmetric: &[(u64, u64)]) -> Topology {
        let mut conns: HashMap<u64, Vec<PeerName>> = HashMap::new();
        for (a, b) in edges {
            conns.entry(*a).or_default().push(PeerName(*b));
            conns.entry(*b).or_default().push(PeerName(*a));
        }
        for (a, b) in asymmetric {
            conns.entry(*a).or_default().push(PeerName(*b));
        }
        let entry = |n: u64, conns: Vec<PeerName>| PeerEntry {
            name: PeerName(n),
            nickname: String::new(),
            uid: 1,
            version: 1,
            addrs: vec![],
            conns,
        };
        let mut t = Topology::new(entry(me, conns.remove(&me).unwrap_or_default()));
        t.merge(
            conns.into_iter().map(|(n, c)| entry(n, c)).collect(),
            Instant::now(),
        );
        t
    }

    #[test]
    fn multi_hop_when_no_direct_link() {
        // A(1) - B(2) - C(3), no A-C.
        let r = Routes::compute(&topo(1, &[(1, 2), (2, 3)], &[]));
        assert_eq!(r.next_hop(PeerName(3)), Some(PeerName(2)));
        assert_eq!(r.hops(PeerName(3)), Some(2));
        assert_eq!(r.next_hop(PeerName(2)), Some(PeerName(2)));
    }

    #[test]
    fn one_sided_links_do_not_count() {
        // 1 claims 3 but 3 does not claim 1.
        let r = Routes::compute(&topo(1, &[(1, 2)], &[(1, 3)]));
        assert!(!r.is_reachable(PeerName(3)));
        assert_eq!(r.reachable_count(), 1);
    }

    #[test]
    fn broadcast_trees_cover_everyone_once() {
        let edges = [(1, 2), (1, 3), (2, 3), (2, 4), (3, 4), (4, 5), (3, 5)];
        let nodes = [1u64, 2, 3, 4, 5];
        for src in nodes {
            let mut received = HashMap::new();
            let mut frontier = vec![src];
            while let Some(n) = frontier.pop() {
                let mut r = Routes::compute(&topo(n, &edges, &[]));
                for c in r.broadcast_children(PeerName(src)) {
                    *received.entry(c.0).or_insert(0) += 1;
                    frontier.push(c.0);
                }
            }
            for n in nodes.iter().filter(|n| **n != src) {
                assert_eq!(received.get(n), Some(&1), "src {src} -> {n}");
            }
        }
    }
}
