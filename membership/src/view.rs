//! What a node tells the outside about the cluster: the replicated state at a version,
//! the Raft roles and the leader. Routers and `troupectl` read this over RPC.

use serde::{Deserialize, Serialize};

use crate::placement::Placement;
use crate::state::{ClusterState, NodeId};

/// The membership state as applied on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// The Raft log index of the last applied entry: grows with every change.
    pub version: u64,
    pub state: ClusterState,
    /// Raft voters and learners (ids).
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// The current leader as the answering node knows it.
    #[serde(default)]
    pub leader: Option<NodeId>,
}

impl ClusterView {
    pub fn epoch(&self) -> u64 {
        self.state.epoch
    }

    /// The placement at this view's epoch (an empty one if the ring cannot be built, which
    /// only happens for ids the state machine never admits).
    pub fn placement(&self) -> Placement {
        self.state.placement().unwrap_or_else(|_| Placement::empty())
    }

    /// The node's role in Raft: `voter`, `learner` or `none`.
    pub fn role(&self, id: NodeId) -> &'static str {
        if self.voters.contains(&id) {
            "voter"
        } else if self.learners.contains(&id) {
            "learner"
        } else {
            "none"
        }
    }
}

/// A revocation as an operator asks for it (`POST /cluster/revocations`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeRequest {
    /// The user (a token's `sub`).
    pub user: String,
    /// Tokens issued before this (seconds since the Unix epoch) are refused; `None` lifts
    /// the revocation.
    pub not_before: Option<u64>,
}

/// `POST /cluster/flags`: one flag, cluster-wide or for one scene.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlagRequest {
    pub scene: Option<String>,
    pub name: String,
    pub value: String,
}

/// `POST /cluster/rollback`: a node's automatic rollback, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackRequest {
    pub why: String,
}

/// What a node says about itself (`GET /cluster/info`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSelf {
    pub id: NodeId,
    pub url: String,
    pub rpc_addr: String,
    /// Whether this node belongs to a cluster yet.
    pub initialized: bool,
    /// Rooms loaded on this node.
    pub rooms: u64,
    /// The epoch this node serves at.
    pub epoch: u64,
    /// This node's Raft term and the index of the last entry in its log (what an
    /// operator, or a test, watches to see that nothing moved).
    #[serde(default)]
    pub raft_term: u64,
    #[serde(default)]
    pub raft_last_log: Option<u64>,
}

/// An admin call's failure as sent over RPC.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A stable machine-readable kind: `not_leader`, `unknown_node`, `refused`, `unavailable`, `bad_request`.
    pub error: String,
    pub message: String,
    /// For `not_leader`: the leader's RPC address, when known.
    #[serde(default)]
    pub leader: Option<String>,
}

/// `POST /cluster/nodes`: admit a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdmitRequest {
    pub id: NodeId,
    pub url: String,
    pub rpc_addr: String,
}
