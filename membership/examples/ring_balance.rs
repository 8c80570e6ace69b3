//! Prints the ring's balance and movement figures, for the README.
//!
//! ```text
//! cargo run --release -p troupe-membership --example ring_balance            # default vnodes
//! cargo run --release -p troupe-membership --example ring_balance -- 64 128  # other counts
//! cargo run --release -p troupe-membership --example ring_balance -- --sets 200 128 256 512
//! ```
//!
//! Balance: 100,000 scene ids `scene-0`..`scene-99999` over nodes `n1`..`nN`; max/mean is
//! the most loaded node's count over the mean count (1.0 is perfect).
//! Movement: adding `n(N+1)`, the fraction of scenes whose owner changed (ideal
//! 1/(N+1)), and how many of those landed anywhere but the new node (must be 0);
//! removing `nN`, the fraction moved and how many moved away from a node other than `nN`.
//!
//! `--sets K` adds a robustness check: real clusters do not name their nodes `n1`..`nN`,
//! so it also builds K rings over random node ids for each N and prints the worst and
//! median max/mean seen and how many of the K rings went over 1.15.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Instant;

use troupe_membership::ring::{Ring, RingError, RingNode, DEFAULT_VNODES};

const SCENES: usize = 100_000;

fn nodes(n: usize) -> Vec<RingNode> {
    (1..=n).map(|i| RingNode::new(format!("n{i}"))).collect()
}

fn owners(ring: &Ring, scenes: &[String]) -> Vec<Option<RingNode>> {
    scenes.iter().map(|s| ring.owner(s).cloned()).collect()
}

fn report(vnodes: u32, scenes: &[String]) -> Result<(), RingError> {
    println!("virtual nodes per node: {vnodes}, scene ids: {SCENES}");
    println!(
        "{:>3}  {:>8}  {:>8}  {:>14}  {:>8}  {:>11}  {:>14}  {:>11}",
        "N", "max/mean", "min/mean", "add: moved", "ideal", "not to new", "remove: moved", "other moved"
    );
    let mut timings = Vec::new();
    let mut lookups = Vec::new();
    for n in [3usize, 5, 10] {
        let started = Instant::now();
        let ring = Ring::with_vnodes(nodes(n), vnodes)?;
        timings.push((n, started.elapsed()));
        let started = Instant::now();
        let before = owners(&ring, scenes);
        lookups.push(started.elapsed() / SCENES as u32);
        let mut load: HashMap<&RingNode, usize> = HashMap::new();
        for o in before.iter().flatten() {
            *load.entry(o).or_default() += 1;
        }
        let mean = SCENES as f64 / n as f64;
        let max = load.values().copied().max().unwrap_or(0) as f64 / mean;
        let min = if load.len() == n {
            load.values().copied().min().unwrap_or(0)
        } else {
            0
        } as f64
            / mean;

        let new = RingNode::new(format!("n{}", n + 1));
        let grown = owners(&Ring::with_vnodes(nodes(n + 1), vnodes)?, scenes);
        let moved = before.iter().zip(&grown).filter(|(a, b)| a != b).count();
        let stray = before
            .iter()
            .zip(&grown)
            .filter(|(a, b)| a != b && b.as_ref() != Some(&new))
            .count();

        let gone = RingNode::new(format!("n{n}"));
        let shrunk = owners(&Ring::with_vnodes(nodes(n - 1), vnodes)?, scenes);
        let removed_moved = before.iter().zip(&shrunk).filter(|(a, b)| a != b).count();
        let other = before
            .iter()
            .zip(&shrunk)
            .filter(|(a, b)| a != b && a.as_ref() != Some(&gone))
            .count();

        println!(
            "{n:>3}  {max:>8.3}  {min:>8.3}  {:>14.4}  {:>8.4}  {stray:>11}  {:>14.4}  {other:>11}",
            moved as f64 / SCENES as f64,
            1.0 / (n + 1) as f64,
            removed_moved as f64 / SCENES as f64,
        );
    }
    for ((n, build), lookup) in timings.iter().zip(&lookups) {
        println!("N = {n}: ring built in {build:.2?}, {lookup:.2?} per owner() lookup");
    }
    Ok(())
}

/// SplitMix64: a tiny deterministic generator, so the random id sets are the same each run.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn max_over_mean(ring: &Ring, scenes: &[String]) -> f64 {
    let mut load: HashMap<&RingNode, usize> = HashMap::new();
    for s in scenes {
        if let Some(o) = ring.owner(s) {
            *load.entry(o).or_default() += 1;
        }
    }
    let mean = scenes.len() as f64 / ring.len().max(1) as f64;
    load.values().copied().max().unwrap_or(0) as f64 / mean
}

fn robustness(vnodes: u32, sets: usize, scenes: &[String]) -> Result<(), RingError> {
    println!("random node ids, {sets} rings per N:");
    println!(
        "{:>3}  {:>12}  {:>14}  {:>10}",
        "N", "worst max/mean", "median max/mean", "over 1.15"
    );
    let mut rng = 0x7472_6f75_7065_u64; // "troupe"
    for n in [3usize, 5, 10] {
        let mut ratios = Vec::with_capacity(sets);
        for _ in 0..sets {
            let ids: Vec<RingNode> = (0..n)
                .map(|_| RingNode::new(format!("node-{:016x}", splitmix(&mut rng))))
                .collect();
            ratios.push(max_over_mean(&Ring::with_vnodes(ids, vnodes)?, scenes));
        }
        ratios.sort_by(f64::total_cmp);
        let over = ratios.iter().filter(|r| **r > 1.15).count();
        println!(
            "{n:>3}  {:>14.3}  {:>15.3}  {over:>10}",
            ratios.last().copied().unwrap_or(0.0),
            ratios.get(ratios.len() / 2).copied().unwrap_or(0.0),
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let usage = "usage: ring_balance [--sets K] [VNODES...]";
    let mut counts = Vec::new();
    let mut sets = 0usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--sets" {
            match args.next().and_then(|k| k.parse().ok()) {
                Some(k) => sets = k,
                None => {
                    eprintln!("{usage}  (--sets needs a number)");
                    return ExitCode::from(2);
                }
            }
            continue;
        }
        match arg.parse::<u32>() {
            Ok(v) => counts.push(v),
            Err(_) => {
                eprintln!("{usage}  (not a number: {arg})");
                return ExitCode::from(2);
            }
        }
    }
    if counts.is_empty() {
        counts.push(DEFAULT_VNODES);
    }
    let scenes: Vec<String> = (0..SCENES).map(|i| format!("scene-{i}")).collect();
    for (i, v) in counts.into_iter().enumerate() {
        if i > 0 {
            println!();
        }
        let run = report(v, &scenes).and_then(|()| match sets {
            0 => Ok(()),
            k => robustness(v, k, &scenes),
        });
        if let Err(e) = run {
            eprintln!("ring_balance: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
