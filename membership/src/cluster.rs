//! One node's membership service: its Raft instance, the bootstrap from seed peers, the
//! admin operations (which run on the leader) and the watch of the applied state.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, SnapshotPolicy};
use tokio::sync::watch;

use troupe_runtime::Backoff;

use crate::health::{self, Detection};
use crate::raft::log_store::LogStore;
use crate::raft::network::Network;
use crate::raft::state_machine::StateMachine;
use crate::raft::Raft;
use crate::rpc::RpcClient;
use crate::state::{Command, CommandError, NodeId, NodeState, AUTO_ROLLBACK};
use crate::view::{AdmitRequest, ClusterView};

/// How long a membership change may wait for a majority.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a flag change waits for every node that is up to have it.
const FLAG_WAIT: Duration = Duration::from_secs(1);

/// Timings of the Raft protocol.
#[derive(Debug, Clone)]
pub struct RaftTiming {
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
}

impl RaftTiming {
    /// Timings from the shortest election timeout `min`: a follower starts an election
    /// after the leader lease (the longest timeout, `2 × min`) plus a random timeout
    /// between `min` and `2 × min`, so after 3 to 4 `min` without a heartbeat; heartbeats
    /// go every `min / 3`, six of them at least within the lease.
    pub fn from_election_timeout(min: Duration) -> Self {
        RaftTiming {
            heartbeat: min / 3,
            election_timeout_min: min,
            election_timeout_max: min * 2,
        }
    }
}

impl Default for RaftTiming {
    /// 150 ms: a dead leader is replaced 0.45-0.6 s after its last heartbeat. The election
    /// decides how soon the scenes of a dead leader move.
    fn default() -> Self {
        RaftTiming::from_election_timeout(Duration::from_millis(150))
    }
}

/// How to start a node's membership service.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub id: NodeId,
    /// This node's public WebSocket base URL.
    pub url: String,
    /// This node's internal address as other nodes reach it.
    pub rpc_addr: String,
    /// The initial voters (`id -> rpc address`), the same on each of them. Empty: this
    /// node forms a cluster of its own.
    pub peers: BTreeMap<NodeId, String>,
    /// Folder of the Raft log, vote and snapshot.
    pub dir: PathBuf,
    pub timing: RaftTiming,
    /// The leader marks an active node `down` after it has not answered for this long.
    pub down_after: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("Raft storage in {dir}: {source}")]
    Storage { dir: PathBuf, source: std::io::Error },
    #[error("Raft: {0}")]
    Raft(String),
}

/// Why an admin operation did not happen. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("this node is not the Raft leader")]
    NotLeader { leader_addr: Option<String> },
    #[error("{0}")]
    Command(#[from] CommandError),
    #[error("{0}")]
    Refused(String),
    #[error("the cluster cannot decide now: {0}")]
    Unavailable(String),
}

pub struct Cluster {
    raft: Raft,
    opts: ClusterOptions,
    view: watch::Receiver<Arc<ClusterView>>,
    detections: tokio::sync::broadcast::Sender<Detection>,
}

impl Cluster {
    /// Opens the durable Raft state and starts Raft. A pristine node that is the lowest id
    /// of its peers (or has none) forms the cluster; the others wait to hear from it.
    pub async fn start(opts: ClusterOptions, client: RpcClient) -> Result<Arc<Cluster>, ClusterError> {
        let storage_err = |source| ClusterError::Storage {
            dir: opts.dir.clone(),
            source,
        };
        std::fs::create_dir_all(&opts.dir).map_err(storage_err)?;
        let log = LogStore::open(&opts.dir).map_err(storage_err)?;
        let (sm, view) = StateMachine::open(&opts.dir).map_err(storage_err)?;
        let config = openraft::Config {
            cluster_name: "troupe".into(),
            heartbeat_interval: millis(opts.timing.heartbeat),
            election_timeout_min: millis(opts.timing.election_timeout_min),
            election_timeout_max: millis(opts.timing.election_timeout_max),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(500),
            max_in_snapshot_log_to_keep: 100,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let raft = Raft::new(
            opts.id,
            Arc::new(config),
            Network {
                client: client.clone(),
            },
            log,
            sm,
        )
        .await
        .map_err(|e| ClusterError::Raft(e.to_string()))?;

        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| ClusterError::Raft(e.to_string()))?;
        let forms_cluster = match opts.peers.keys().next() {
            None => true,
            Some(lowest) => *lowest == opts.id,
        };
        if !initialized && forms_cluster {
            let mut voters: BTreeMap<NodeId, BasicNode> = opts
                .peers
                .iter()
                .map(|(id, addr)| (*id, BasicNode::new(addr)))
                .collect();
            voters
                .entry(opts.id)
                .or_insert_with(|| BasicNode::new(&opts.rpc_addr));
            if voters.len() == 1 {
                tracing::info!("forming a new cluster of one");
                raft.initialize(voters)
                    .await
                    .map_err(|e| ClusterError::Raft(e.to_string()))?;
            } else {
                tokio::spawn(form_cluster(raft.clone(), voters, opts.id, client.clone()));
            }
        }
        let down_after = opts.down_after;
        let (detections, _) = tokio::sync::broadcast::channel(64);
        let cluster = Arc::new(Cluster {
            raft,
            opts,
            view,
            detections,
        });
        tokio::spawn(register_self(Arc::downgrade(&cluster), client.clone()));
        tokio::spawn(health::detect(Arc::downgrade(&cluster), client, down_after));
        Ok(cluster)
    }

    /// Nodes this node marks down while it leads, as it happens.
    pub fn detections(&self) -> tokio::sync::broadcast::Receiver<Detection> {
        self.detections.subscribe()
    }

    pub fn id(&self) -> NodeId {
        self.opts.id
    }

    pub fn options(&self) -> &ClusterOptions {
        &self.opts
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Changes of the applied state (placement included), as they are applied here. Their
    /// `leader` is always `None`: who leads changes apart from the state ([`Self::leaders`]).
    pub fn watch(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view.clone()
    }

    /// The applied state with the leader as this node knows it.
    pub fn view(&self) -> ClusterView {
        let mut view = ClusterView::clone(&self.view.borrow());
        view.leader = self.leader();
        view
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// The leader as this node knows it, woken at each change (elections, a new term).
    /// The views of [`Self::watch`] carry no leader: they change with the applied state.
    pub fn leaders(&self) -> LeaderWatch {
        LeaderWatch {
            server: self.raft.server_metrics(),
        }
    }

    /// Whether this node belongs to a cluster (formed it, or was added).
    pub fn is_initialized(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let initialized = m.membership_config.membership().nodes().next().is_some();
        initialized
    }

    /// The view once its version passes `after`, or the current one after `wait`.
    pub async fn view_after(&self, after: u64, wait: Duration) -> ClusterView {
        let mut rx = self.view.clone();
        let _ = tokio::time::timeout(wait, rx.wait_for(|v| v.version > after)).await;
        self.view()
    }

    fn leader_addr(&self, leader: Option<NodeId>) -> Option<String> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let id = leader?;
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    }

    fn ensure_leader(&self) -> Result<(), AdminError> {
        let leader = self.leader();
        if leader == Some(self.opts.id) {
            Ok(())
        } else {
            Err(AdminError::NotLeader {
                leader_addr: self.leader_addr(leader),
            })
        }
    }

    /// Replicates one command; the state machine's verdict comes back.
    async fn write(&self, command: Command) -> Result<crate::state::Applied, AdminError> {
        self.write_at(command).await.map(|(applied, _)| applied)
    }

    /// Like [`Self::write`], also returning the log index the command was committed at.
    async fn write_at(&self, command: Command) -> Result<(crate::state::Applied, u64), AdminError> {
        // Without a quorum nothing commits: say so instead of waiting forever (the entry
        // may still commit once a majority is back; every command is safe to repeat).
        match tokio::time::timeout(WRITE_TIMEOUT, self.raft.client_write(command)).await {
            Ok(Ok(response)) => Ok((response.data?, response.log_id.index)),
            Ok(Err(error)) => Err(self.map_write_error(error)),
            Err(_) => Err(AdminError::Unavailable(format!(
                "no majority of voters confirmed the change within {WRITE_TIMEOUT:?}"
            ))),
        }
    }

    /// Waits (bounded by `limit`) until each of `nodes` has the log up to `index`, and then
    /// for the next message, which tells them it is committed: after this, they have
    /// applied the entry. False when one of them did not get it in time.
    async fn wait_applied_on(&self, nodes: &[NodeId], index: u64, limit: Duration) -> bool {
        let mut metrics = self.raft.metrics();
        let reached = metrics.wait_for(|m| {
            nodes.iter().all(|node| {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(node).copied().flatten())
                    .is_some_and(|matched| matched.index >= index)
            })
        });
        if tokio::time::timeout(limit, reached).await.is_err() {
            return false;
        }
        tokio::time::sleep(self.opts.timing.heartbeat * 2).await;
        true
    }

    fn map_write_error(&self, error: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> AdminError {
        match error {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => AdminError::NotLeader {
                leader_addr: f.leader_node.map(|n| n.addr),
            },
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                AdminError::Refused(e.to_string())
            }
            RaftError::Fatal(e) => AdminError::Unavailable(e.to_string()),
        }
    }

    /// Admits a node: it becomes a Raft learner, is registered, and goes active. A known
    /// node only has its addresses refreshed (and is activated if it was still joining).
    pub async fn admit(&self, node: &AdmitRequest) -> Result<ClusterView, AdminError> {
        self.ensure_leader()?;
        let register = Command::Register {
            id: node.id,
            url: node.url.clone(),
            rpc_addr: node.rpc_addr.clone(),
        };
        // Check first, so that a bad address changes nothing, not even Raft's membership.
        let current = self.view();
        current.state.clone().apply(&register)?;
        if let Some(other) = current
            .state
            .nodes
            .values()
            .find(|n| n.id != node.id && n.rpc_addr == node.rpc_addr)
        {
            return Err(AdminError::Refused(format!(
                "address {} already belongs to node {}",
                node.rpc_addr, other.id
            )));
        }
        let in_raft = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            m.membership_config.membership().get_node(&node.id).is_some()
        };
        if !in_raft {
            tracing::info!(id = %node.id, addr = %node.rpc_addr, "adding a learner");
            self.raft
                .add_learner(node.id, BasicNode::new(&node.rpc_addr), true)
                .await
                .map_err(|e| self.map_write_error(e))?;
        }
        let before = current.state.nodes.get(&node.id).map(|n| n.state);
        self.write(register).await?;
        if matches!(before, None | Some(NodeState::Joining)) {
            self.write(Command::Activate { id: node.id }).await?;
        }
        Ok(self.view())
    }

    /// Revokes a user's tokens issued before `not_before` on every node (`None` lifts it).
    pub async fn revoke(&self, user: &str, not_before: Option<u64>) -> Result<ClusterView, AdminError> {
        self.ensure_leader()?;
        self.write(Command::Revoke {
            user: user.to_string(),
            not_before,
        })
        .await?;
        Ok(self.view())
    }

    /// Sets one feature flag, cluster-wide or for `scene`.
    pub async fn set_flag(
        &self,
        scene: Option<&str>,
        name: &str,
        value: &str,
    ) -> Result<ClusterView, AdminError> {
        self.ensure_leader()?;
        let (_, index) = self
            .write_at(Command::SetFlag {
                scene: scene.map(str::to_string),
                name: name.to_string(),
                value: value.to_string(),
            })
            .await?;
        // An operator who flips a flag (the kill switch above all) expects it to hold on
        // every node once the command returns, not a heartbeat later.
        let up: Vec<NodeId> = self
            .view()
            .state
            .nodes
            .iter()
            .filter(|(id, node)| **id != self.opts.id && node.state != NodeState::Down)
            .map(|(id, _)| *id)
            .collect();
        if !self.wait_applied_on(&up, index, FLAG_WAIT).await {
            tracing::warn!(index, "not every node has the flag change yet; answering anyway");
        }
        Ok(self.view())
    }

    /// Switches realtime editing off cluster-wide and records why (`autoRollback` in the
    /// settings, shown by `troupectl status`).
    pub async fn roll_back(&self, why: &str) -> Result<ClusterView, AdminError> {
        self.ensure_leader()?;
        self.write(Command::SetFlag {
            scene: None,
            name: "enableRealtimeEditing".into(),
            value: "false".into(),
        })
        .await?;
        let why: String = why.chars().take(1000).collect();
        self.write(Command::SetConfig {
            key: AUTO_ROLLBACK.into(),
            value: Some(why),
        })
        .await?;
        Ok(self.view())
    }

    /// Lifts the placement epoch above `above`, the newest epoch the store has seen
    /// ([`Command::RaiseEpoch`]); the leader only.
    pub async fn raise_epoch_above(&self, above: u64) -> Result<ClusterView, AdminError> {
        self.ensure_leader()?;
        self.write(Command::RaiseEpoch { above }).await?;
        Ok(self.view())
    }

    /// Drains (`Drain`), reactivates (`Activate`) or marks down a node.
    pub async fn set_state(&self, command: Command) -> Result<ClusterView, AdminError> {
        self.ensure_leader()?;
        self.write(command).await?;
        Ok(self.view())
    }

    /// Forgets a node: off the ring and out of Raft. A voter is replaced by a learner so
    /// that the number of voters stays the same; without one the removal is refused.
    pub async fn remove(&self, id: NodeId) -> Result<ClusterView, AdminError> {
        self.ensure_leader()?;
        let view = self.view();
        let (voters, learners, in_raft) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let membership = m.membership_config.membership();
            let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
            let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
            (voters, learners, membership.get_node(&id).is_some())
        };
        let in_state = view.state.nodes.contains_key(&id);
        if !in_state && !in_raft {
            return Err(CommandError::UnknownNode { id }.into());
        }
        if in_state {
            view.state.clone().apply(&Command::Remove { id })?;
        }
        let mut change: Option<ChangeMembers<NodeId, BasicNode>> = None;
        if voters.contains(&id) {
            // Prefer an active learner as the replacement, then any other learner.
            let rank = |n: &NodeId| match view.state.nodes.get(n).map(|n| n.state) {
                Some(NodeState::Active) => 0,
                Some(NodeState::Joining | NodeState::Draining) => 1,
                _ => 2,
            };
            let replacement = learners.iter().copied().min_by_key(|n| (rank(n), *n));
            let mut remaining: BTreeSet<NodeId> = voters.iter().copied().filter(|v| *v != id).collect();
            if let Some(r) = replacement {
                remaining.insert(r);
            }
            if remaining.len() < voters.len() {
                return Err(AdminError::Refused(format!(
                    "node {id} is one of {} voters and no other node can take its place; \
                     add a node first (it becomes a learner and then replaces {id})",
                    voters.len()
                )));
            }
            change = Some(ChangeMembers::ReplaceAllVoters(remaining));
        } else if in_raft {
            change = Some(ChangeMembers::RemoveNodes([id].into()));
        }
        if in_state {
            let (_, index) = self.write_at(Command::Remove { id }).await?;
            // Let the node hear that it owns nothing before it stops hearing anything.
            if id != self.opts.id
                && in_raft
                && !self.wait_applied_on(&[id], index, Duration::from_secs(3)).await
            {
                tracing::warn!(%id, index, "node did not receive its removal in time; removing it anyway");
            }
        }
        if let Some(change) = change {
            tracing::info!(%id, ?change, "changing Raft membership");
            self.raft
                .change_membership(change, false)
                .await
                .map_err(|e| self.map_write_error(e))?;
        }
        Ok(self.view())
    }

    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

/// How long the node that forms the cluster waits for the other voters to listen.
const FORM_WAIT: Duration = Duration::from_secs(10);

/// Forms the cluster once every other initial voter answers on its internal port (or after
/// [`FORM_WAIT`], with whoever is there): an election among peers that are still starting
/// only fills the logs with refused connections.
async fn form_cluster(raft: Raft, voters: BTreeMap<NodeId, BasicNode>, me: NodeId, client: RpcClient) {
    let deadline = tokio::time::Instant::now() + FORM_WAIT;
    loop {
        let mut waiting = Vec::new();
        for (id, node) in voters.iter().filter(|(id, _)| **id != me) {
            let answer = client
                .get::<serde_json::Value>(&node.addr, "/cluster/info", Duration::from_millis(500))
                .await;
            if answer.is_err() {
                waiting.push(*id);
            }
        }
        if waiting.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                ?waiting,
                "forming the cluster without voters that do not answer yet"
            );
            break;
        }
        tracing::debug!(?waiting, "waiting for the other voters to listen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::info!(voters = ?voters.keys().collect::<Vec<_>>(), "forming a new cluster");
    if let Err(error) = raft.initialize(voters).await {
        tracing::error!(%error, "cannot form the cluster");
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().max(1) as u64
}

/// Makes sure this node's entry in the state names its current addresses. An initial
/// peer registers itself once it is a voter; a node added by an operator was registered by
/// `add`, and only refreshes its entry if its addresses changed since.
async fn register_self(cluster: std::sync::Weak<Cluster>, client: RpcClient) {
    let mut delay = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        delay.wait().await;
        let Some(cluster) = cluster.upgrade() else { return };
        let view = cluster.view();
        let me = cluster.opts.id;
        let entry = view.state.nodes.get(&me);
        if entry.is_some_and(|n| n.url == cluster.opts.url && n.rpc_addr == cluster.opts.rpc_addr) {
            return;
        }
        let member = view.voters.contains(&me) || view.learners.contains(&me);
        let initial_peer = cluster.opts.peers.is_empty() || cluster.opts.peers.contains_key(&me);
        if !member || (entry.is_none() && !initial_peer) {
            continue;
        }
        let request = AdmitRequest {
            id: me,
            url: cluster.opts.url.clone(),
            rpc_addr: cluster.opts.rpc_addr.clone(),
        };
        let result = match view.leader {
            None => continue,
            Some(leader) if leader == me => cluster
                .admit(&request)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Some(leader) => {
                let Some(addr) = cluster.leader_addr(Some(leader)) else {
                    continue;
                };
                client
                    .post::<_, ClusterView>(&addr, "/cluster/nodes", &request, Duration::from_secs(10))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        };
        match result {
            Ok(()) => tracing::info!(id = %me, "registered with the cluster"),
            Err(error) => tracing::debug!(%error, "registering with the cluster; will retry"),
        }
    }
}

impl health::Watched for Cluster {
    type Error = AdminError;

    fn id(&self) -> NodeId {
        Cluster::id(self)
    }

    fn leader(&self) -> Option<NodeId> {
        Cluster::leader(self)
    }

    fn view(&self) -> ClusterView {
        Cluster::view(self)
    }

    async fn set_state(&self, command: Command) -> Result<(), AdminError> {
        Cluster::set_state(self, command).await.map(|_| ())
    }

    fn detected(&self, detection: Detection) {
        let _ = self.detections.send(detection);
    }
}

/// Follows who leads the cluster, as this node knows it.
pub struct LeaderWatch {
    server: watch::Receiver<openraft::metrics::RaftServerMetrics<NodeId, BasicNode>>,
}

impl LeaderWatch {
    /// The leader now; a later [`Self::changed`] waits for the next change after this.
    pub fn current(&mut self) -> Option<NodeId> {
        self.server.borrow_and_update().current_leader
    }

    /// Waits until the leader (or this node's Raft role or term) may have changed; false
    /// once the cluster has stopped.
    pub async fn changed(&mut self) -> bool {
        self.server.changed().await.is_ok()
    }
}
