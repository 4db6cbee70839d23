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
    /// O(V + E): one pass over the entries for the confirmed links, one BFS
    /// that carries each peer's first hop along (a forged chain of any
    /// length costs what its entries cost to hold).
    pub fn compute(topology: &Topology) -> Self {
        let me = topology.name();
        // Entries' connection lists are sorted (the topology refuses others).
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
        let mut q = VecDeque::from([me]);
        while let Some(n) = q.pop_front() {
            let (first, hops) = match r.unicast.get(&n) {
                Some(&(first, hops)) => (Some(first), hops),
                None => (None, 0),
            };
            for m in r.adjacency.get(&n).map(Vec::as_slice).unwrap_or(&[]) {
                if *m != me && !r.unicast.contains_key(m) {
                    r.unicast.insert(*m, (first.unwrap_or(*m), hops + 1));
                    q.push_back(*m);
                }
            }
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

    /// Hops from us to `peer` (0 for ourselves), if reachable.
    pub fn distance(&self, peer: PeerName) -> Option<u32> {
        if peer == self.me {
            Some(0)
        } else {
            self.hops(peer)
        }
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
    use std::sync::{Arc, OnceLock};
    use std::time::Instant;

    use weft_peer_proto::sign::{KeyPair, Signer as _};
    use weft_peer_proto::topology::PeerEntry;

    use super::*;

    fn key(n: u64) -> Arc<KeyPair> {
        static KEYS: OnceLock<Vec<Arc<KeyPair>>> = OnceLock::new();
        KEYS.get_or_init(|| {
            (0..=255u8)
                .map(|i| Arc::new(KeyPair::from_seed([i; 32])))
                .collect()
        })[n as usize % 256]
            .clone()
    }

    #[allow(non_snake_case)]
    fn PeerName(n: u64) -> super::PeerName {
        key(n).name()
    }

    fn topo(me: u64, edges: &[(u64, u64)], asymmetric: &[(u64, u64)]) -> Topology {
        let mut conns: HashMap<u64, Vec<super::PeerName>> = HashMap::new();
        for (a, b) in edges {
            conns.entry(*a).or_default().push(PeerName(*b));
            conns.entry(*b).or_default().push(PeerName(*a));
        }
        for (a, b) in asymmetric {
            conns.entry(*a).or_default().push(PeerName(*b));
        }
        let mut t = Topology::new(key(me), String::new(), 1);
        t.set_own(conns.remove(&me).unwrap_or_default(), &[]);
        let entries = conns
            .into_iter()
            .map(|(n, c)| PeerEntry::signed(&*key(n), String::new(), 1, 1, vec![], c, [0; 32]))
            .collect();
        t.merge(entries, Instant::now(), &|_| None);
        t
    }

    /// A long chain of peers (what a liar can make keys for): one BFS,
    /// and the first hop is right at every length.
    #[test]
    fn long_chains_route_through_their_first_hop() {
        let n = 3000u64;
        let keys: Vec<Arc<KeyPair>> = (0..n)
            .map(|i| {
                let mut seed = [0u8; 32];
                seed[..8].copy_from_slice(&(i + 1000).to_be_bytes());
                Arc::new(KeyPair::from_seed(seed))
            })
            .collect();
        let names: Vec<super::PeerName> = keys.iter().map(|k| k.name()).collect();
        let mut t = Topology::new(keys[0].clone(), String::new(), 1);
        t.set_own(vec![names[1]], &[]);
        let entries: Vec<PeerEntry> = (1..n as usize)
            .map(|i| {
                let mut c = vec![names[i - 1]];
                if i + 1 < n as usize {
                    c.push(names[i + 1]);
                }
                PeerEntry::signed(&*keys[i], String::new(), 1, 1, vec![], c, [0; 32])
            })
            .collect();
        t.merge(entries, Instant::now(), &|_| None);
        let r = Routes::compute(&t);
        assert_eq!(r.reachable_count(), n as usize - 1);
        let last = names[n as usize - 1];
        assert_eq!(r.next_hop(last), Some(names[1]));
        assert_eq!(r.hops(last), Some(n as u32 - 1));
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
                    let c = nodes
                        .into_iter()
                        .find(|i| PeerName(*i) == c)
                        .expect("a node");
                    *received.entry(c).or_insert(0) += 1;
                    frontier.push(c);
                }
            }
            for n in nodes.iter().filter(|n| **n != src) {
                assert_eq!(received.get(n), Some(&1), "src {src} -> {n}");
            }
        }
    }
}
