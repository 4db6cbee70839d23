//! How topology convergence grows with N, from the deterministic simulation:
//! N routers each started knowing only the first one's address. Prints a
//! markdown table (median over seeds) for BENCHMARKS.md.
//!
//!   cargo run --release -p weft-tests --bin mesh-scaling [N ...]

use weft_tests::bench::*;
use weft_tests::sim::{SimConfig, converge_from_seed};

fn main() {
    let ns: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let ns = if ns.is_empty() {
        vec![10, 30, 100, 300, 1000]
    } else {
        ns
    };
    let seeds = [1u64, 2, 3];
    println!(
        "| N | rounds to converge | virtual s | KiB sent per peer | max KiB (one peer) | mean sessions per peer |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for n in ns {
        let runs: Vec<_> = seeds
            .iter()
            .map(|s| {
                let base = weft_tests::sim::base_config();
                converge_from_seed(n, *s, SimConfig::new(*s), base)
            })
            .collect();
        let m = |f: fn(&weft_tests::sim::Convergence) -> f64| median(runs.iter().map(f).collect());
        println!(
            "| {n} | {:.1} | {:.1} | {:.0} | {:.0} | {:.1} |",
            m(|c| c.rounds),
            m(|c| c.seconds),
            m(|c| c.kib_per_peer),
            m(|c| c.max_kib),
            m(|c| c.mean_degree)
        );
    }
}
