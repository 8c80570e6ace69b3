//! The membership state machine under random command sequences (seeded, reproducible):
//!
//! * a refused command changes nothing;
//! * the epoch goes up by exactly one when the set of active nodes (or an active node's
//!   URL) changes, and stays put otherwise;
//! * once a node was active, some node stays active unless nodes are marked down (drain
//!   and remove refuse to empty the ring);
//! * the same commands applied twice from scratch give the same state (replicas agree).

use std::collections::BTreeMap;

use troupe_membership::state::{ClusterState, Command, NodeId, NodeState};

/// SplitMix64: reproducible sequences without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_command(rng: &mut Rng) -> Command {
    let id = NodeId(1 + rng.below(7));
    match rng.below(7) {
        0 | 1 => Command::Register {
            id,
            url: format!("ws://10.0.0.{id}:{}", 4000 + rng.below(2)),
            rpc_addr: format!("10.0.0.{id}:4100"),
        },
        2 => Command::Activate { id },
        3 => Command::Drain { id },
        4 => Command::MarkDown { id },
        5 => Command::Remove { id },
        _ => Command::SetConfig {
            key: ["flag", ""][rng.below(2) as usize].to_string(),
            value: Some("on".into()),
        },
    }
}

fn active(state: &ClusterState) -> BTreeMap<NodeId, String> {
    state
        .nodes
        .values()
        .filter(|n| n.state == NodeState::Active)
        .map(|n| (n.id, n.url.clone()))
        .collect()
}

#[test]
fn random_command_sequences_keep_the_invariants() {
    for seed in 0..100 {
        let mut rng = Rng(seed);
        let mut state = ClusterState::default();
        let mut log = Vec::new();
        let mut marked_down = false;
        for _ in 0..200 {
            let command = random_command(&mut rng);
            let before = state.clone();
            let result = state.apply(&command);
            log.push(command.clone());
            match result {
                Err(_) => assert_eq!(
                    state, before,
                    "seed {seed}: a refused {command:?} changed the state"
                ),
                Ok(applied) => {
                    let moved = active(&before) != active(&state);
                    assert_eq!(applied.epoch_changed, moved, "seed {seed}: {command:?}");
                    assert_eq!(
                        state.epoch,
                        before.epoch + u64::from(moved),
                        "seed {seed}: {command:?}"
                    );
                    if matches!(command, Command::MarkDown { .. }) {
                        marked_down = true;
                    }
                }
            }
            if !active(&before).is_empty() && !marked_down {
                assert!(
                    !active(&state).is_empty(),
                    "seed {seed}: {command:?} emptied the ring"
                );
            }
            // Every new placement names only active nodes.
            if state.epoch != before.epoch {
                let placement = state.placement().unwrap();
                if let Some(route) = placement.route("scene-1") {
                    assert!(active(&state).contains_key(&route.node), "seed {seed}");
                }
            }
        }
        let mut replica = ClusterState::default();
        for command in &log {
            let _ = replica.apply(command);
        }
        assert_eq!(
            replica, state,
            "seed {seed}: replaying the log gave another state"
        );
    }
}
