//! Failure detection: the Raft leader probes every member and marks an active node `down`
//! once it has not answered for `down_after` — or sooner when its internal port refuses
//! connections, which means its process is gone: at the second refusal in a row for a node
//! that answered this leader before (it died), after a quarter of `down_after` for one that
//! never did (it may still be starting, as when a whole cluster restarts). Marking a node down
//! bumps the epoch and moves its scenes to the survivors; a `down` node that answers again is made `active`, and its scenes move
//! back by planned handoff. Whoever is leader runs the detector, so a new leader takes it
//! over; without a quorum nothing can be committed and placement stays as it is.

use std::collections::{HashMap, HashSet};
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
    // The nodes that answered a probe since this node leads: one of them refusing has died.
    let mut answered: HashSet<NodeId> = HashSet::new();
    // Two probes in a row refused, one `interval` apart (measured after each round's
    // answers, so allow for their jitter).
    let refused_twice = interval / 2;
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
            answered.clear();
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
                answered.insert(*id);
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
            let refused_enough = if answered.contains(id) {
                refused >= refused_twice
            } else {
                refused >= down_after / 4
            };
            if node.state == NodeState::Active && (silent >= down_after || refused_enough) {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Mutex;

    use tokio::sync::oneshot;

    use super::*;
    use crate::state::ClusterState;

    /// A leader's view of members 1 (itself), 2 and 3, recording when each was marked down.
    struct Leader {
        view: Mutex<ClusterView>,
        marked_down: Mutex<Vec<(NodeId, Instant)>>,
    }

    impl Watched for Leader {
        type Error = String;

        fn id(&self) -> NodeId {
            NodeId(1)
        }

        fn leader(&self) -> Option<NodeId> {
            Some(NodeId(1))
        }

        fn view(&self) -> ClusterView {
            self.view.lock().unwrap().clone()
        }

        async fn set_state(&self, command: Command) -> Result<(), String> {
            if let Command::MarkDown { id } = command {
                self.marked_down.lock().unwrap().push((id, Instant::now()));
            }
            self.view
                .lock()
                .unwrap()
                .state
                .apply(&command)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }

        fn detected(&self, _: Detection) {}
    }

    /// A member's internal port answering probes as `id` until `stop` is sent; then nothing
    /// listens there.
    async fn member(id: u64) -> (String, oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let me = NodeSelf {
            id: NodeId(id),
            url: String::new(),
            rpc_addr: addr.clone(),
            initialized: true,
            rooms: 0,
            epoch: 1,
            raft_term: 1,
            raft_last_log: None,
        };
        let body = serde_json::to_string(&me).unwrap();
        let app = axum::Router::new().route(
            "/cluster/info",
            axum::routing::get(move || async move {
                ([(axum::http::header::CONTENT_TYPE, "application/json")], body)
            }),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        (addr, stop)
    }

    /// A port nothing listens on.
    async fn closed_port() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string()
    }

    #[tokio::test]
    async fn a_member_that_answered_is_down_at_its_second_refusal() {
        // Probes every 2 s; a quarter of `down_after` is 5 s.
        let down_after = Duration::from_secs(20);
        let (two, stop_two) = member(2).await;
        let three = closed_port().await;
        let mut state = ClusterState::default();
        for (id, rpc_addr) in [(1, closed_port().await), (2, two), (3, three)] {
            let id = NodeId(id);
            let url = format!("ws://{rpc_addr}");
            state.apply(&Command::Register { id, url, rpc_addr }).unwrap();
            state.apply(&Command::Activate { id }).unwrap();
        }
        let leader = Arc::new(Leader {
            view: Mutex::new(ClusterView {
                version: 1,
                state,
                voters: vec![NodeId(1), NodeId(2), NodeId(3)],
                learners: vec![],
                leader: Some(NodeId(1)),
            }),
            marked_down: Mutex::new(Vec::new()),
        });
        tokio::spawn(detect(Arc::downgrade(&leader), RpcClient::plain(), down_after));
        // Node 2 answers the first probes, then its process is gone.
        tokio::time::sleep(Duration::from_millis(3_000)).await;
        let stopped = Instant::now();
        stop_two.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(5_500)).await;

        let marked = leader.marked_down.lock().unwrap().clone();
        let at = |id| marked.iter().find(|(n, _)| *n == NodeId(id)).map(|(_, at)| *at);
        let two_after = at(2).expect("node 2 marked down").duration_since(stopped);
        // The first probe after the stop finds it refusing, the next one marks it down:
        // within two probe intervals, before a quarter of `down_after` of refusals.
        assert!(
            two_after <= Duration::from_millis(4_500),
            "node 2 marked down {two_after:?} after it stopped"
        );
        // Node 3 refused from the first probe: a new leader counts a member it never heard
        // as silent since long before, and two missed probes mark it down.
        assert!(at(3).is_some(), "node 3 not marked down: {marked:?}");
        assert_eq!(marked.len(), 2, "{marked:?}");
    }
}
