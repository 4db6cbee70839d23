//! A set of addresses kept as disjoint, coalesced intervals: what a router
//! may still hand out. Every operation is O(log n) in the number of intervals.

use std::collections::BTreeMap;

use crate::range::AddrRange;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FreeSet {
    /// start -> end (exclusive); disjoint and never adjacent.
    iv: BTreeMap<u32, u64>,
    count: u64,
}

impl FreeSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Addresses in the set.
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn contains(&self, a: u32) -> bool {
        self.iv
            .range(..=a)
            .next_back()
            .is_some_and(|(_, e)| u64::from(a) < *e)
    }

    /// Adds every address of `r`.
    pub fn insert(&mut self, r: AddrRange) {
        if r.is_empty() {
            return;
        }
        self.remove(r);
        let (mut s, mut e) = (r.start, r.end);
        // Coalesce with a neighbour that ends where we start ...
        if let Some((&ps, &pe)) = self.iv.range(..s).next_back()
            && pe == u64::from(s)
        {
            self.iv.remove(&ps);
            s = ps;
        }
        // ... and one that starts where we end.
        if e <= u64::from(u32::MAX)
            && let Some(ne) = self.iv.remove(&(e as u32))
        {
            e = ne;
        }
        self.iv.insert(s, e);
        self.count += r.len();
    }

    /// Removes every address of `r` (those present).
    pub fn remove(&mut self, r: AddrRange) {
        if r.is_empty() {
            return;
        }
        let mut touched: Vec<(u32, u64)> = Vec::new();
        if let Some((&ps, &pe)) = self.iv.range(..r.start).next_back()
            && pe > u64::from(r.start)
        {
            touched.push((ps, pe));
        }
        touched.extend(
            self.iv
                .range(r.start..)
                .take_while(|(s, _)| u64::from(**s) < r.end)
                .map(|(s, e)| (*s, *e)),
        );
        for (s, e) in touched {
            self.iv.remove(&s);
            self.count -= e - u64::from(s);
            if s < r.start {
                self.iv.insert(s, u64::from(r.start));
                self.count += u64::from(r.start) - u64::from(s);
            }
            if e > r.end {
                self.iv.insert(r.end as u32, e);
                self.count += e - r.end;
            }
        }
    }

    /// Takes one address out if present.
    pub fn take(&mut self, a: u32) -> bool {
        if !self.contains(a) {
            return false;
        }
        self.remove(AddrRange::new(a, u64::from(a) + 1));
        true
    }

    /// Takes the lowest address.
    pub fn take_first(&mut self) -> Option<u32> {
        let (&s, _) = self.iv.iter().next()?;
        self.take(s);
        Some(s)
    }

    /// The largest interval (lowest start among equals).
    pub fn largest(&self) -> Option<AddrRange> {
        self.iv
            .iter()
            .map(|(s, e)| AddrRange::new(*s, *e))
            .max_by(|a, b| a.len().cmp(&b.len()).then(b.start.cmp(&a.start)))
    }

    pub fn intervals(&self) -> impl Iterator<Item = AddrRange> + '_ {
        self.iv.iter().map(|(s, e)| AddrRange::new(*s, *e))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Against a plain set of addresses, seeded.
    #[test]
    fn behaves_like_a_set() {
        let mut state = 0x1234_5678_u64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        for round in 0..300 {
            let mut f = FreeSet::new();
            let mut model = BTreeSet::new();
            for _ in 0..60 {
                let a = next(200) as u32;
                let r = AddrRange::new(a, u64::from(a) + next(20));
                match next(4) {
                    0 | 1 => {
                        f.insert(r);
                        model.extend(r.start..r.end as u32);
                    }
                    2 => {
                        f.remove(r);
                        for x in r.start..r.end as u32 {
                            model.remove(&x);
                        }
                    }
                    _ => {
                        let got = f.take_first();
                        let want = model.iter().next().copied();
                        if let Some(w) = want {
                            model.remove(&w);
                        }
                        assert_eq!(got, want, "round {round}");
                    }
                }
                assert_eq!(f.len(), model.len() as u64, "round {round}");
                let back: BTreeSet<u32> =
                    f.intervals().flat_map(|r| r.start..r.end as u32).collect();
                assert_eq!(back, model, "round {round}");
                // Coalesced: no two intervals touch.
                let ivs: Vec<AddrRange> = f.intervals().collect();
                assert!(
                    ivs.windows(2).all(|w| w[0].end < u64::from(w[1].start)),
                    "round {round}"
                );
            }
        }
    }
}
