//! The replicated membership state: the node list, the placement epoch and cluster config.
//!
//! Every voter and learner applies the same [`Command`]s in the same order (Raft decides
//! the order), so [`ClusterState::apply`] must be deterministic: it checks a command against
//! the state and either changes the state or returns a [`CommandError`] and changes nothing.
//! The epoch is bumped by exactly the commands that change the set of active nodes or an
//! active node's address, that is, whenever placement or routes change, and raised by
//! [`Command::RaiseEpoch`] above the epochs a store kept from an earlier cluster.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use troupe_proto::flags::{Decision, FlagOverrides, Flags};

pub use troupe_proto::NodeId;

use crate::placement::Placement;
use crate::ring::RingError;

/// Where a node stands in placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Known to the cluster, following its state, not serving scenes yet.
    Joining,
    /// On the ring: owns the scenes the ring gives it.
    Active,
    /// Off the ring by an operator's request; stays up and owns nothing.
    Draining,
    /// Off the ring because it stopped answering.
    Down,
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeState::Joining => "joining",
            NodeState::Active => "active",
            NodeState::Draining => "draining",
            NodeState::Down => "down",
        })
    }
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    /// The WebSocket base URL clients use, e.g. `ws://10.0.0.5:4000`.
    pub url: String,
    /// The internal address for Raft and admin calls, e.g. `10.0.0.5:4100`.
    pub rpc_addr: String,
    pub state: NodeState,
}

/// A change to the membership state, replicated through the Raft log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Command {
    /// Adds a node as `joining`, or updates a known node's addresses.
    Register {
        id: NodeId,
        url: String,
        rpc_addr: String,
    },
    /// Puts a node on the ring (from joining, draining or down).
    Activate { id: NodeId },
    /// Takes a node off the ring at an operator's request.
    Drain { id: NodeId },
    /// Takes a node that stopped answering off the ring.
    MarkDown { id: NodeId },
    /// Forgets a node.
    Remove { id: NodeId },
    /// Sets (or, with `None`, clears) a cluster setting.
    SetConfig { key: String, value: Option<String> },
    /// Refuses `user`'s tokens issued before `not_before` (seconds since the Unix epoch)
    /// on every node, open connections included; `None` lifts the revocation.
    Revoke { user: String, not_before: Option<u64> },
    /// Sets one feature flag: cluster-wide (`scene: None`) or a scene's own (`value`
    /// `default` clears a scene's override). Names and values as `troupectl flags` takes
    /// them ([`troupe_proto::flags`]).
    SetFlag {
        scene: Option<String>,
        name: String,
        value: String,
    },
    /// Lifts the epoch above `above` (nothing when it is there already). Leases in the
    /// store carry the epoch they were claimed at and a claim wins only over an older one:
    /// a cluster started anew on a store that outlived the former cluster counts epochs
    /// from the start again, and must first rise above every epoch the store has seen.
    RaiseEpoch { above: u64 },
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The epoch after the command.
    pub epoch: u64,
    /// Whether the command changed placement (and so bumped the epoch).
    pub epoch_changed: bool,
}

/// Why a command was refused. The state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case", tag = "error")]
pub enum CommandError {
    #[error("node {id} is not a member of this cluster")]
    UnknownNode { id: NodeId },
    #[error("node {id} is the last active node: its scenes would have no owner")]
    LastActiveNode { id: NodeId },
    #[error("node {id} is the last node of the cluster")]
    LastNode { id: NodeId },
    #[error("invalid address for node {id}: {reason}")]
    BadAddress { id: NodeId, reason: String },
    #[error("invalid cluster setting: {reason}")]
    BadConfig { reason: String },
    #[error("invalid revocation: {reason}")]
    BadRevocation { reason: String },
    #[error("invalid flag change: {reason}")]
    BadFlag { reason: String },
}

/// Longest user id a revocation names (a token's `sub`).
pub const MAX_USER_LEN: usize = 256;

/// Most users revoked at once: the list is part of every node's state.
pub const MAX_REVOKED: usize = 100_000;

/// The cluster setting that records the last automatic rollback (why, by which node, when).
pub const AUTO_ROLLBACK: &str = "autoRollback";

/// Most scenes with flags of their own: every node and router holds them all, and a
/// change reaches them all within a second.
pub const MAX_SCENE_FLAGS: usize = 10_000;

/// The replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Bumped on every change of placement or of an active node's URL.
    pub epoch: u64,
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    /// Cluster-wide settings (feature flags), by name.
    pub config: BTreeMap<String, String>,
    /// Revoked users (a token's `sub`) and the time before which their tokens are refused
    /// (seconds since the Unix epoch).
    #[serde(default)]
    pub revoked: BTreeMap<String, u64>,
    /// Feature flags: the cluster's defaults…
    #[serde(default)]
    pub flags: Flags,
    /// …and the scenes with values of their own.
    #[serde(default)]
    pub scene_flags: BTreeMap<String, FlagOverrides>,
}

impl ClusterState {
    /// Applies `command`, or refuses it and changes nothing.
    pub fn apply(&mut self, command: &Command) -> Result<Applied, CommandError> {
        let changed = match command {
            Command::Register { id, url, rpc_addr } => self.register(*id, url, rpc_addr)?,
            Command::Activate { id } => self.set_state(*id, NodeState::Active)?,
            Command::Drain { id } => self.set_state(*id, NodeState::Draining)?,
            Command::MarkDown { id } => self.set_state(*id, NodeState::Down)?,
            Command::Remove { id } => self.remove(*id)?,
            Command::SetConfig { key, value } => {
                if key.is_empty() || key.len() > 64 || value.as_ref().is_some_and(|v| v.len() > 1024) {
                    return Err(CommandError::BadConfig {
                        reason: "names are 1-64 bytes and values at most 1024".into(),
                    });
                }
                match value {
                    Some(value) => self.config.insert(key.clone(), value.clone()),
                    None => self.config.remove(key),
                };
                false
            }
            Command::Revoke { user, not_before } => {
                self.revoke(user, *not_before)?;
                false
            }
            Command::SetFlag { scene, name, value } => {
                self.set_flag(scene.as_deref(), name, value)?;
                false
            }
            Command::RaiseEpoch { above } => {
                let below = self.epoch <= *above;
                if below {
                    // Bumped once more below, like every change.
                    self.epoch = *above;
                }
                below
            }
        };
        if changed {
            self.epoch += 1;
        }
        Ok(Applied {
            epoch: self.epoch,
            epoch_changed: changed,
        })
    }

    fn register(&mut self, id: NodeId, url: &str, rpc_addr: &str) -> Result<bool, CommandError> {
        check_url(id, url)?;
        check_rpc_addr(id, rpc_addr)?;
        match self.nodes.get_mut(&id) {
            Some(node) => {
                let moved = node.url != url;
                node.url = url.to_string();
                node.rpc_addr = rpc_addr.to_string();
                // Routes to an active node changed: clients must be told.
                Ok(moved && node.state == NodeState::Active)
            }
            None => {
                self.nodes.insert(
                    id,
                    NodeInfo {
                        id,
                        url: url.to_string(),
                        rpc_addr: rpc_addr.to_string(),
                        state: NodeState::Joining,
                    },
                );
                Ok(false)
            }
        }
    }

    fn set_state(&mut self, id: NodeId, to: NodeState) -> Result<bool, CommandError> {
        let from = self.nodes.get(&id).ok_or(CommandError::UnknownNode { id })?.state;
        if from == to {
            return Ok(false);
        }
        // Draining the only active node would leave its scenes nowhere to go. A node that
        // died is marked down regardless: nobody can serve its scenes either way.
        if from == NodeState::Active && to == NodeState::Draining && self.active_count() == 1 {
            return Err(CommandError::LastActiveNode { id });
        }
        if let Some(node) = self.nodes.get_mut(&id) {
            node.state = to;
        }
        Ok(from == NodeState::Active || to == NodeState::Active)
    }

    fn remove(&mut self, id: NodeId) -> Result<bool, CommandError> {
        let node = self.nodes.get(&id).ok_or(CommandError::UnknownNode { id })?;
        if self.nodes.len() == 1 {
            return Err(CommandError::LastNode { id });
        }
        let was_active = node.state == NodeState::Active;
        if was_active && self.active_count() == 1 {
            return Err(CommandError::LastActiveNode { id });
        }
        self.nodes.remove(&id);
        Ok(was_active)
    }

    fn set_flag(&mut self, scene: Option<&str>, name: &str, value: &str) -> Result<(), CommandError> {
        let bad = |reason: String| CommandError::BadFlag { reason };
        let Some(scene) = scene else {
            return self.flags.set(name, value).map_err(|e| bad(e.to_string()));
        };
        if !troupe_proto::scene::is_scene_id(scene) {
            return Err(bad(format!("{scene:?} is not a scene id")));
        }
        let mut overrides = self.scene_flags.get(scene).copied().unwrap_or_default();
        overrides.set(name, value).map_err(|e| bad(e.to_string()))?;
        if overrides.is_empty() {
            self.scene_flags.remove(scene);
        } else {
            if !self.scene_flags.contains_key(scene) && self.scene_flags.len() >= MAX_SCENE_FLAGS {
                return Err(bad(format!(
                    "{MAX_SCENE_FLAGS} scenes have flags of their own; clear some, or use the rollout"
                )));
            }
            self.scene_flags.insert(scene.to_string(), overrides);
        }
        Ok(())
    }

    /// What a client of `scene` acting as `user` should do, by the flags.
    pub fn decide(&self, scene: &str, user: &str) -> Decision {
        troupe_proto::flags::decide(&self.flags, self.scene_flags.get(scene), scene, user)
    }

    fn revoke(&mut self, user: &str, not_before: Option<u64>) -> Result<(), CommandError> {
        let bad = |reason: &str| CommandError::BadRevocation {
            reason: reason.into(),
        };
        if user.is_empty() || user.len() > MAX_USER_LEN {
            return Err(bad("a user id is 1-256 bytes"));
        }
        match not_before {
            Some(at) => {
                if !self.revoked.contains_key(user) && self.revoked.len() >= MAX_REVOKED {
                    return Err(bad("too many revoked users; lift old revocations first"));
                }
                // A revocation only ever moves forward: an older one changes nothing.
                let entry = self.revoked.entry(user.to_string()).or_insert(at);
                *entry = (*entry).max(at);
            }
            None => {
                self.revoked.remove(user);
            }
        }
        Ok(())
    }

    fn active_count(&self) -> usize {
        self.nodes
            .values()
            .filter(|n| n.state == NodeState::Active)
            .count()
    }

    /// The ids of the nodes on the ring.
    pub fn active_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes
            .values()
            .filter(|n| n.state == NodeState::Active)
            .map(|n| n.id)
    }

    /// Whether a revocation refuses the token with these claims.
    pub fn revokes(&self, claims: &troupe_proto::token::Claims) -> bool {
        self.revoked
            .get(&claims.sub)
            .is_some_and(|at| claims.revoked_by(*at))
    }

    /// The placement this state implies.
    pub fn placement(&self) -> Result<Placement, RingError> {
        Placement::new(self)
    }
}

fn check_url(id: NodeId, url: &str) -> Result<(), CommandError> {
    let ok = (url.starts_with("ws://") || url.starts_with("wss://"))
        && url.len() <= 200
        && !url.contains(char::is_whitespace);
    if ok {
        Ok(())
    } else {
        Err(CommandError::BadAddress {
            id,
            reason: format!("{url:?} is not a ws:// or wss:// URL"),
        })
    }
}

/// Whether `addr` is an internal address as the cluster accepts it: `host:port`, port not
/// zero, no path or spaces. Nodes, routers and `troupectl` check settings with it too.
pub fn is_host_port(addr: &str) -> bool {
    addr.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0))
        && addr.len() <= 200
        && !addr.contains(['/', ' '])
}

fn check_rpc_addr(id: NodeId, addr: &str) -> Result<(), CommandError> {
    if is_host_port(addr) {
        Ok(())
    } else {
        Err(CommandError::BadAddress {
            id,
            reason: format!("{addr:?} is not host:port"),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn register(state: &mut ClusterState, id: u64) {
        state
            .apply(&Command::Register {
                id: NodeId(id),
                url: format!("ws://127.0.0.1:40{id:02}"),
                rpc_addr: format!("127.0.0.1:41{id:02}"),
            })
            .unwrap();
    }

    fn cluster(n: u64) -> ClusterState {
        let mut state = ClusterState::default();
        for id in 1..=n {
            register(&mut state, id);
            state.apply(&Command::Activate { id: NodeId(id) }).unwrap();
        }
        state
    }

    #[test]
    fn joining_then_active_bumps_the_epoch_once() {
        let mut state = ClusterState::default();
        register(&mut state, 1);
        assert_eq!(state.epoch, 0);
        assert_eq!(state.nodes[&NodeId(1)].state, NodeState::Joining);
        let applied = state.apply(&Command::Activate { id: NodeId(1) }).unwrap();
        assert_eq!(
            applied,
            Applied {
                epoch: 1,
                epoch_changed: true
            }
        );
        // Repeating is harmless and changes nothing.
        let again = state.apply(&Command::Activate { id: NodeId(1) }).unwrap();
        assert_eq!(
            again,
            Applied {
                epoch: 1,
                epoch_changed: false
            }
        );
    }

    #[test]
    fn raising_the_epoch_lifts_it_above_the_floor_once() {
        let mut state = cluster(3);
        assert_eq!(state.epoch, 3);
        let before = state.placement().unwrap();
        let raised = state.apply(&Command::RaiseEpoch { above: 11 }).unwrap();
        assert_eq!(
            raised,
            Applied {
                epoch: 12,
                epoch_changed: true
            }
        );
        // Already above: nothing changes, whatever the floor.
        for above in [11, 5, 0] {
            let again = state.apply(&Command::RaiseEpoch { above }).unwrap();
            assert_eq!(
                again,
                Applied {
                    epoch: 12,
                    epoch_changed: false
                }
            );
        }
        // At the floor itself it still rises: a claim needs an epoch newer than the lease's.
        assert_eq!(state.apply(&Command::RaiseEpoch { above: 12 }).unwrap().epoch, 13);
        // The same owners at the new epoch: no scene moves.
        let after = state.placement().unwrap();
        for scene in (0..50).map(|i| format!("scene-{i}")) {
            for id in 1..=3 {
                assert_eq!(before.owns(NodeId(id), &scene), after.owns(NodeId(id), &scene));
            }
        }
    }

    #[test]
    fn drain_and_down_take_nodes_off_the_ring() {
        let mut state = cluster(3);
        assert_eq!(state.epoch, 3);
        state.apply(&Command::Drain { id: NodeId(2) }).unwrap();
        assert_eq!(state.epoch, 4);
        state.apply(&Command::MarkDown { id: NodeId(3) }).unwrap();
        assert_eq!(state.epoch, 5);
        assert_eq!(state.active_ids().collect::<Vec<_>>(), vec![NodeId(1)]);
        // A drained node that goes down changes no placement.
        state.apply(&Command::MarkDown { id: NodeId(2) }).unwrap();
        assert_eq!(state.epoch, 5);
        let placement = state.placement().unwrap();
        assert!(placement.owns(NodeId(1), "any-scene"));
    }

    #[test]
    fn invalid_commands_change_nothing() {
        let mut state = cluster(1);
        let before = state.clone();
        assert_eq!(
            state.apply(&Command::Drain { id: NodeId(1) }),
            Err(CommandError::LastActiveNode { id: NodeId(1) })
        );
        assert_eq!(
            state.apply(&Command::Remove { id: NodeId(1) }),
            Err(CommandError::LastNode { id: NodeId(1) })
        );
        assert_eq!(
            state.apply(&Command::Activate { id: NodeId(9) }),
            Err(CommandError::UnknownNode { id: NodeId(9) })
        );
        assert_eq!(
            state.apply(&Command::Remove { id: NodeId(9) }),
            Err(CommandError::UnknownNode { id: NodeId(9) })
        );
        for (url, rpc) in [
            ("http://x:1", "x:1"),
            ("ws://x:1", "x"),
            ("ws://x:1", "x:0"),
            ("ws://a b", "x:1"),
        ] {
            let err = state.apply(&Command::Register {
                id: NodeId(2),
                url: url.into(),
                rpc_addr: rpc.into(),
            });
            assert!(matches!(err, Err(CommandError::BadAddress { .. })), "{url} {rpc}");
        }
        assert!(state
            .apply(&Command::SetConfig {
                key: String::new(),
                value: None
            })
            .is_err());
        assert_eq!(state, before);
    }

    #[test]
    fn removing_the_last_active_node_is_refused_while_others_drain() {
        let mut state = cluster(2);
        state.apply(&Command::Drain { id: NodeId(2) }).unwrap();
        assert_eq!(
            state.apply(&Command::Remove { id: NodeId(1) }),
            Err(CommandError::LastActiveNode { id: NodeId(1) })
        );
        let epoch = state.epoch;
        state.apply(&Command::Remove { id: NodeId(2) }).unwrap();
        assert_eq!(state.epoch, epoch, "removing a drained node moves no scene");
        assert_eq!(state.nodes.len(), 1);
    }

    #[test]
    fn a_new_url_for_an_active_node_bumps_the_epoch() {
        let mut state = cluster(2);
        let epoch = state.epoch;
        let applied = state
            .apply(&Command::Register {
                id: NodeId(2),
                url: "ws://10.0.0.2:4000".into(),
                rpc_addr: "10.0.0.2:4100".into(),
            })
            .unwrap();
        assert!(applied.epoch_changed);
        assert_eq!(state.epoch, epoch + 1);
        let route = state.placement().unwrap();
        assert_eq!(route.active_nodes(), 2);
    }

    #[test]
    fn placement_follows_the_active_nodes_only() {
        let mut state = cluster(3);
        let before = state.placement().unwrap();
        state.apply(&Command::Drain { id: NodeId(3) }).unwrap();
        let after = state.placement().unwrap();
        for i in 0..2000 {
            let scene = format!("scene-{i}");
            let old = before.route(&scene).unwrap();
            let new = after.route(&scene).unwrap();
            assert_ne!(new.node, NodeId(3));
            if old.node != NodeId(3) {
                assert_eq!(old.node, new.node, "only the drained node's scenes move");
            }
            assert_eq!(new.epoch, state.epoch);
        }
        assert!(Placement::empty().route("x").is_none());
    }

    #[test]
    fn commands_round_trip_through_json() {
        let command = Command::Register {
            id: NodeId(4),
            url: "ws://h:1".into(),
            rpc_addr: "h:2".into(),
        };
        let json = serde_json::to_string(&command).unwrap();
        assert_eq!(
            json,
            r#"{"op":"register","id":4,"url":"ws://h:1","rpc_addr":"h:2"}"#
        );
        assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), command);
    }

    #[test]
    fn revocations_only_move_forward_and_can_be_lifted() {
        let mut state = ClusterState::default();
        let revoke = |user: &str, at: Option<u64>| Command::Revoke {
            user: user.into(),
            not_before: at,
        };
        let epoch = state.epoch;
        state.apply(&revoke("mallory", Some(100))).unwrap();
        state.apply(&revoke("mallory", Some(50))).unwrap();
        assert_eq!(
            state.revoked["mallory"], 100,
            "an older revocation changes nothing"
        );
        state.apply(&revoke("mallory", Some(200))).unwrap();
        assert_eq!(state.revoked["mallory"], 200);
        assert_eq!(state.epoch, epoch, "placement is untouched");
        state.apply(&revoke("mallory", None)).unwrap();
        assert!(state.revoked.is_empty());
        let before = state.clone();
        assert!(state.apply(&revoke("", Some(1))).is_err());
        assert!(state
            .apply(&revoke(&"x".repeat(MAX_USER_LEN + 1), Some(1)))
            .is_err());
        assert_eq!(state, before);
        // A state written before revocations existed still reads.
        let old: ClusterState = serde_json::from_str(r#"{"epoch":3,"nodes":{},"config":{}}"#).unwrap();
        assert!(old.revoked.is_empty());
    }
}
