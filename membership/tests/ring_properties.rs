//! Movement and balance of the ring: what operators rely on when adding, draining and
//! removing nodes.
//!
//! * Adding a node to N moves about 1/(N+1) of the scenes, and every one of them onto the
//!   new node: rooms never hop between nodes that stayed.
//! * Removing a node moves exactly its own scenes.
//! * Over 100,000 scene ids the most loaded node holds at most 1.15x the mean.
//!
//! Property-style checks run over memberships drawn from a seeded generator, so that the
//! bounds are not an accident of the names `n1`..`nN`, and a failure reproduces exactly.

use std::collections::HashMap;

use troupe_membership::ring::{Ring, RingNode};

fn ids(n: usize) -> Vec<RingNode> {
    (1..=n).map(|i| RingNode::new(format!("n{i}"))).collect()
}

fn scenes(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("scene-{i}")).collect()
}

fn owners(ring: &Ring, scenes: &[String]) -> Vec<RingNode> {
    scenes
        .iter()
        .map(|s| ring.owner(s).expect("non-empty ring has an owner").clone())
        .collect()
}

/// SplitMix64, for reproducible pseudo-random memberships without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn id(&mut self) -> RingNode {
        // Mixed shapes: names, numeric Raft-style ids, ids with separators.
        match self.below(3) {
            0 => RingNode::new(format!("node-{:x}", self.next())),
            1 => RingNode::new(format!("{}", self.next() % 100_000)),
            _ => RingNode::new(format!("eu#{}#{:x}", self.below(9), self.next() & 0xffff)),
        }
    }
}

/// Checks one add: everything that moved went to `new`, and returns the moved fraction.
fn check_add(old: &[RingNode], new: &RingNode, scenes: &[String]) -> f64 {
    let before = owners(&Ring::new(old).expect("ring"), scenes);
    let mut grown = old.to_vec();
    grown.push(new.clone());
    let after = owners(&Ring::new(&grown).expect("ring"), scenes);
    let mut moved = 0;
    for ((scene, b), a) in scenes.iter().zip(&before).zip(&after) {
        if a != b {
            assert_eq!(a, new, "{scene} moved from {b} to {a}, not to the new node {new}");
            moved += 1;
        }
    }
    moved as f64 / scenes.len() as f64
}

/// Checks one removal: only `gone`'s scenes moved, and all of them. Returns the fraction.
fn check_remove(old: &[RingNode], gone: &RingNode, scenes: &[String]) -> f64 {
    let before = owners(&Ring::new(old).expect("ring"), scenes);
    let rest: Vec<&RingNode> = old.iter().filter(|n| *n != gone).collect();
    let after = owners(&Ring::new(rest).expect("ring"), scenes);
    let mut moved = 0;
    for ((scene, b), a) in scenes.iter().zip(&before).zip(&after) {
        if b == gone {
            assert_ne!(a, gone, "{scene} still on the removed node");
            moved += 1;
        } else {
            assert_eq!(a, b, "{scene} moved from {b} to {a} though {b} stayed");
        }
    }
    moved as f64 / scenes.len() as f64
}

#[test]
fn adding_a_node_moves_about_one_over_n_plus_one_all_onto_it() {
    let scenes = scenes(20_000);
    for n in 1..=10 {
        let new = RingNode::new(format!("n{}", n + 1));
        let moved = check_add(&ids(n), &new, &scenes);
        let ideal = 1.0 / (n + 1) as f64;
        eprintln!("add n{} to {n} nodes: moved {moved:.4} (ideal {ideal:.4})", n + 1);
        assert!(
            (moved / ideal - 1.0).abs() < 0.15,
            "adding to {n} nodes moved {moved:.4}, expected about {ideal:.4}"
        );
    }
}

#[test]
fn removing_a_node_moves_only_its_scenes() {
    let scenes = scenes(20_000);
    for n in 2..=10 {
        let all = ids(n);
        // The last, the first and a middle node.
        for gone in [&all[n - 1], &all[0], &all[n / 2]] {
            let moved = check_remove(&all, gone, &scenes);
            let ideal = 1.0 / n as f64;
            assert!(
                (moved / ideal - 1.0).abs() < 0.15,
                "removing {gone} from {n} nodes moved {moved:.4}, expected about {ideal:.4}"
            );
        }
    }
}

#[test]
fn removing_the_last_node_leaves_no_owner() {
    let ring = Ring::new(Vec::<RingNode>::new()).expect("ring");
    assert_eq!(ring.owner("scene-1"), None);
}

#[test]
fn most_loaded_node_is_within_1_15_of_the_mean_over_100k_scenes() {
    let scenes = scenes(100_000);
    for n in [3, 5, 10] {
        let ring = Ring::new(ids(n)).expect("ring");
        let mut load: HashMap<&RingNode, usize> = HashMap::new();
        for s in &scenes {
            *load.entry(ring.owner(s).expect("owner")).or_default() += 1;
        }
        assert_eq!(load.len(), n, "every node owns something");
        let mean = scenes.len() as f64 / n as f64;
        let max = load.values().copied().max().unwrap_or(0) as f64 / mean;
        let min = load.values().copied().min().unwrap_or(0) as f64 / mean;
        eprintln!("N = {n}: max/mean {max:.3}, min/mean {min:.3}");
        assert!(max <= 1.15, "N = {n}: most loaded node holds {max:.3}x the mean");
    }
}

/// Random memberships, random joins and leaves, shuffled insertion orders: the movement
/// invariants must hold for every one, and placement must not depend on order.
#[test]
fn movement_invariants_hold_for_random_memberships() {
    let scenes = scenes(2_000);
    let mut rng = Rng(0x05ee_d0f7_209e);
    for _ in 0..40 {
        let n = 1 + rng.below(9);
        let mut members: Vec<RingNode> = Vec::new();
        while members.len() < n {
            let id = rng.id();
            if !members.contains(&id) {
                members.push(id);
            }
        }
        let mut new = rng.id();
        while members.contains(&new) {
            new = rng.id();
        }
        check_add(&members, &new, &scenes);
        if n >= 2 {
            let gone = members[rng.below(n)].clone();
            check_remove(&members, &gone, &scenes);
        }

        let mut shuffled = members.clone();
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, rng.below(i + 1));
        }
        let a = Ring::new(&members).expect("ring");
        let b = Ring::new(&shuffled).expect("ring");
        assert_eq!(
            owners(&a, &scenes),
            owners(&b, &scenes),
            "order changed placement"
        );
    }
}

/// A drain followed by a re-add restores the original placement: the ring is a function of
/// the set of active nodes only, with no memory of its history.
#[test]
fn ring_depends_only_on_the_set_of_active_nodes() {
    let scenes = scenes(5_000);
    let full = Ring::new(ids(5)).expect("ring");
    let without: Vec<RingNode> = ids(5).into_iter().filter(|n| n.as_str() != "n3").collect();
    let drained = Ring::new(&without).expect("ring");
    let mut back = without.clone();
    back.push(RingNode::new("n3"));
    let readded = Ring::new(&back).expect("ring");
    assert_ne!(owners(&full, &scenes), owners(&drained, &scenes));
    assert_eq!(owners(&full, &scenes), owners(&readded, &scenes));
}
