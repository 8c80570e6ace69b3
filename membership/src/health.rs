//! Failure detection: the Raft leader probes every member and marks an active node `down`
//! once it has not answered for `down_after` — or sooner, after a quarter of that, when its
//! internal port refuses connections, which means its process is gone. Marking a node down
//! bumps the epoch and moves its scenes to the survivors; a `down` node that answers again is made `active`, and its scenes move
//! back by planned handoff. Whoever is leader runs the detector, so a new leader takes it
//! over; without a quorum nothing can be committed and placement stays as it is.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::rpc::{RpcClient, RpcError};
use crate::state::{Command, NodeId, NodeState};
use crate::view::{ClusterView, NodeSelf};

/// What the detector needs of the cluster it watches (the [`Cluster`](crate::Cluster)
/// handle), so that the detector depends on this and not on the Raft wiring.
pub trait Watched: Send + Sync + 'static {
    type Error: Display;

    /// This node's id.
    fn id(&self) -> NodeId;
    /// The Raft leader as this node knows it.
    fn leader(&self) -> Option<NodeId>;
    /// The membership as applied here.
    fn view(&self) -> ClusterView;
    /// Commits `Activate` or `MarkDown` for a node.
    fn set_state(&self, command: Command) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Tells whoever listens that this node marked a member down.
    fn detected(&self, detection: Detection);
}

/// A node this node, as the leader, marked down.
#[derive(Debug, Clone, Copy)]
pub struct Detection {
    pub node: NodeId,
    /// How long the node had been silent (or refusing) when the epoch changed.
    pub after: Duration,
}

/// Runs for as long as the cluster handle lives.
pub async fn detect<C: Watched>(cluster: Weak<C>, client: RpcClient, down_after: Duration) {
    let interval = (down_after / 10).max(Duration::from_millis(50));
    let probe_timeout = (interval * 2).min(down_after);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When each node last answered a probe; empty while this node is not the leader.
    let mut last_ok: HashMap<NodeId, Instant> = HashMap::new();
    // Since when each node's port has refused every probe.
    let mut refused_since: HashMap<NodeId, Instant> = HashMap::new();
    let mut leading = false;
    // The leader this node last followed: when it becomes leader itself, most likely
    // because that one went silent.
    let mut followed: Option<NodeId> = None;
    loop {
        tick.tick().await;
        let Some(cluster) = cluster.upgrade() else { return };
        let me = cluster.id();
        let leader = cluster.leader();
        if leader != Some(me) {
            if leader.is_some() {
                followed = leader;
            }
            leading = false;
            last_ok.clear();
            refused_since.clear();
            continue;
        }
        let view = cluster.view();
        let now = Instant::now();
        if !leading {
            // A new leader has not heard from anyone yet. A node that died with the old
            // leader has been silent for a while already (the election took at least an
            // election timeout): two missed probes are enough to call it down.
            leading = true;
            tracing::info!(former = ?followed, "leading the cluster");
            let heard = now
                .checked_sub(down_after.saturating_sub(interval * 2))
                .unwrap_or(now);
            for id in view.state.nodes.keys() {
                last_ok.insert(*id, heard);
            }
            // The former leader went silent long enough for an election: if its port
            // refuses this first probe, its process is gone and it is down at once, not
            // after a quarter of `down_after` of refusals watched again. (Others may just
            // be starting, as when a whole cluster restarts: they get the usual time.)
            if let Some(former) = followed.take() {
                refused_since.insert(former, now.checked_sub(down_after / 4).unwrap_or(now));
            }
        }
        let probes = probe_all(&cluster, &client, probe_timeout).await;
        let now = Instant::now();
        for (id, node) in &view.state.nodes {
            if *id == me {
                continue;
            }
            let probe = probes.get(id).copied().unwrap_or(Probe::Silent);
            if probe == Probe::Answered {
                last_ok.insert(*id, now);
                refused_since.remove(id);
                if node.state == NodeState::Down {
                    tracing::info!(node = %id, "node answers again: back on the ring");
                    report(cluster.set_state(Command::Activate { id: *id }).await);
                }
                continue;
            }
            let silent = now.duration_since(*last_ok.entry(*id).or_insert(now));
            let refused = match probe {
                Probe::Refused => now.duration_since(*refused_since.entry(*id).or_insert(now)),
                _ => {
                    refused_since.remove(id);
                    Duration::ZERO
                }
            };
            if node.state == NodeState::Active && (silent >= down_after || refused >= down_after / 4) {
                tracing::warn!(
                    node = %id,
                    silent_ms = silent.as_millis() as u64,
                    refused_ms = refused.as_millis() as u64,
                    "node is down: moving its scenes"
                );
                if cluster.set_state(Command::MarkDown { id: *id }).await.is_ok() {
                    cluster.detected(Detection {
                        node: *id,
                        // From its last answer until the change was committed.
                        after: silent + now.elapsed(),
                    });
                }
            }
        }
    }
}

/// How a member answered a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Probe {
    Answered,
    /// Its port refused the connection: nothing listens there.
    Refused,
    /// No answer in time, or a wrong one.
    Silent,
}

/// Probes every member other than this node, all at once.
async fn probe_all<C: Watched>(
    cluster: &Arc<C>,
    client: &RpcClient,
    timeout: Duration,
) -> HashMap<NodeId, Probe> {
    let me = cluster.id();
    let mut probes = JoinSet::new();
    for node in cluster.view().state.nodes.values().filter(|n| n.id != me) {
        let (client, addr, id) = (client.clone(), node.rpc_addr.clone(), node.id);
        probes.spawn(async move {
            let answer: Result<NodeSelf, RpcError> = client.get(&addr, "/cluster/info", timeout).await;
            let probe = match answer {
                // The node at that address must be the member we asked for.
                Ok(info) if info.id == id => Probe::Answered,
                Err(RpcError::Unreachable { .. }) => Probe::Refused,
                _ => Probe::Silent,
            };
            (id, probe)
        });
    }
    let mut answers = HashMap::new();
    while let Some(result) = probes.join_next().await {
        if let Ok((id, probe)) = result {
            answers.insert(id, probe);
        }
    }
    answers
}

fn report<E: Display>(result: Result<(), E>) {
    if let Err(error) = result {
        tracing::debug!(%error, "failure detector: change not committed");
    }
}
