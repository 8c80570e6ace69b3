//! Raft messages between nodes: JSON over HTTP to the peer's internal port.

use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::TypeConfig;
use crate::rpc::{RpcClient, RpcError};
use crate::state::NodeId;

pub const APPEND_PATH: &str = "/raft/append";
pub const VOTE_PATH: &str = "/raft/vote";
pub const SNAPSHOT_PATH: &str = "/raft/snapshot";

/// Makes one connection handle per peer; all share the pooled HTTP client.
pub struct Network {
    pub client: RpcClient,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConnection {
        PeerConnection {
            client: self.client.clone(),
            target,
            addr: node.addr.clone(),
            timeouts_in_a_row: 0,
        }
    }
}

pub struct PeerConnection {
    client: RpcClient,
    target: NodeId,
    addr: String,
    /// Tries in a row the peer did not answer in time.
    timeouts_in_a_row: u32,
}

impl PeerConnection {
    async fn send<Req, Resp, E>(
        &mut self,
        path: &str,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let timeout = option.hard_ttl().max(Duration::from_millis(50));
        let answer = self.client.post(&self.addr, path, request, timeout).await;
        self.timeouts_in_a_row = match &answer {
            Err(RpcError::Timeout { .. }) => self.timeouts_in_a_row.saturating_add(1),
            _ => 0,
        };
        let frozen = self.timeouts_in_a_row > TIMEOUTS_BEFORE_BACKOFF;
        let answer: Result<Resp, RaftError<NodeId, E>> = answer.map_err(|error| match error {
            // Dead peers get openraft's backoff instead of a retry storm; so do peers that
            // keep not answering in time (frozen or cut off: connections open, nothing
            // answers), which would otherwise be tried again at once, an error line in
            // the leader's log every 50 ms for as long as that lasts. A slow peer (busy,
            // starting) that misses a few is still tried at once.
            RpcError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&error)),
            RpcError::Timeout { .. } if frozen => RPCError::Unreachable(Unreachable::new(&error)),
            other => RPCError::Network(NetworkError::new(&other)),
        })?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        request: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.send(APPEND_PATH, &request, &option).await
    }

    async fn install_snapshot(
        &mut self,
        request: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.send(SNAPSHOT_PATH, &request, &option).await
    }

    async fn vote(
        &mut self,
        request: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.send(VOTE_PATH, &request, &option).await
    }

    /// A peer that does not answer is tried again every 100 ms for its first few seconds
    /// away (openraft's default is 500 ms): a voter that a supervisor restarts at once
    /// then hears the leader before its election timer (250-500 ms) runs out, instead of
    /// starting an election the cluster does not need. After that, every 500 ms: each
    /// failed try is an error line in the leader's log, and a node down for an hour must
    /// not write 36,000 of them.
    fn backoff(&self) -> Backoff {
        Backoff::new(
            std::iter::repeat_n(PEER_RETRY_SOON, PEER_TRIES_SOON).chain(std::iter::repeat(PEER_RETRY_LATER)),
        )
    }
}

/// Tries in a row a peer may leave unanswered (50 ms each, the heartbeat's time to live)
/// before it is tried only as often as a dead one: half a second.
const TIMEOUTS_BEFORE_BACKOFF: u32 = 10;

/// How often the leader tries a peer that has just stopped answering, and how many times.
const PEER_RETRY_SOON: Duration = Duration::from_millis(100);
const PEER_TRIES_SOON: usize = 50;
/// How often it tries a peer that has been away longer.
const PEER_RETRY_LATER: Duration = Duration::from_millis(500);
