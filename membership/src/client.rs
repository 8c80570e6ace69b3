//! A client of the cluster for routers and operators: asks any of a few known nodes,
//! moves on when one is down, and follows "not the leader" answers to the leader.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::rpc::{RpcClient, RpcError};
use crate::state::NodeId;
use crate::tls::Transport;
use crate::view::{AdmitRequest, ClusterView, FlagRequest, NodeSelf, RevokeRequest, RollbackRequest};

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct ClusterClient {
    rpc: RpcClient,
    addrs: Arc<Vec<String>>,
    /// The address that answered last; tried first next time.
    preferred: Arc<AtomicUsize>,
}

impl ClusterClient {
    /// `addrs`: internal (RPC) addresses of one or more nodes; `transport`: this process's
    /// credentials for the internal port.
    pub fn new(addrs: Vec<String>, transport: &Transport) -> ClusterClient {
        ClusterClient {
            rpc: RpcClient::new(transport),
            addrs: Arc::new(addrs),
            preferred: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    pub fn rpc(&self) -> &RpcClient {
        &self.rpc
    }

    /// Tries each known node in turn, starting with the one that answered last.
    async fn any<T, F, Fut>(&self, call: F) -> Result<T, RpcError>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, RpcError>>,
    {
        let n = self.addrs.len();
        let start = self.preferred.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..n {
            let at = (start + i) % n;
            match call(self.addrs[at].clone()).await {
                Ok(value) => {
                    self.preferred.store(at, Ordering::Relaxed);
                    return Ok(value);
                }
                Err(e) if e.is_transport() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| RpcError::Unreachable {
            addr: "(none)".into(),
            reason: "no cluster address given".into(),
        }))
    }

    /// The membership as the first reachable node has applied it.
    pub async fn view(&self) -> Result<ClusterView, RpcError> {
        self.any(|addr| async move { self.rpc.get(&addr, "/cluster/view", CALL_TIMEOUT).await })
            .await
    }

    /// Waits (up to about 25 s) for a membership newer than `after`.
    pub async fn view_after(&self, after: u64) -> Result<ClusterView, RpcError> {
        let path = format!("/cluster/view?after={after}");
        self.any(|addr| {
            let path = path.clone();
            async move { self.rpc.get(&addr, &path, Duration::from_secs(35)).await }
        })
        .await
    }

    /// What the node at `addr` says about itself.
    pub async fn node_info(&self, addr: &str) -> Result<NodeSelf, RpcError> {
        self.rpc.get(addr, "/cluster/info", Duration::from_secs(3)).await
    }

    /// Runs an admin call on the leader, following redirects from followers.
    async fn on_leader<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
    ) -> Result<Resp, RpcError> {
        let first = self
            .any(|addr| async move { self.rpc.post::<_, Resp>(&addr, path, body, CALL_TIMEOUT).await })
            .await;
        let mut result = first;
        // A new leader may still be settling: follow a few hints, waiting a little between.
        for _ in 0..10 {
            let hint = match &result {
                Err(e) if e.leader_hint().is_some() => e.leader_hint().map(str::to_string),
                Err(RpcError::Refused { body, .. }) if body.error == "not_leader" => None,
                _ => return result,
            };
            match hint {
                Some(addr) => result = self.rpc.post(&addr, path, body, CALL_TIMEOUT).await,
                None => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    result =
                        self.any(|addr| async move {
                            self.rpc.post::<_, Resp>(&addr, path, body, CALL_TIMEOUT).await
                        })
                        .await;
                }
            }
        }
        result
    }

    pub async fn admit(&self, node: &AdmitRequest) -> Result<ClusterView, RpcError> {
        self.on_leader("/cluster/nodes", node).await
    }

    pub async fn drain(&self, id: NodeId) -> Result<ClusterView, RpcError> {
        self.on_leader(&format!("/cluster/nodes/{id}/drain"), &()).await
    }

    pub async fn activate(&self, id: NodeId) -> Result<ClusterView, RpcError> {
        self.on_leader(&format!("/cluster/nodes/{id}/activate"), &())
            .await
    }

    /// Revokes `user`'s tokens issued before `not_before` (`None`: lifts the revocation).
    pub async fn revoke(&self, user: &str, not_before: Option<u64>) -> Result<ClusterView, RpcError> {
        let request = RevokeRequest {
            user: user.to_string(),
            not_before,
        };
        self.on_leader("/cluster/revocations", &request).await
    }

    /// Sets one feature flag, cluster-wide or for `scene`.
    pub async fn set_flag(
        &self,
        scene: Option<&str>,
        name: &str,
        value: &str,
    ) -> Result<ClusterView, RpcError> {
        let request = FlagRequest {
            scene: scene.map(str::to_string),
            name: name.to_string(),
            value: value.to_string(),
        };
        self.on_leader("/cluster/flags", &request).await
    }

    /// Switches realtime editing off for the cluster, saying why (a node's automatic
    /// rollback).
    pub async fn roll_back(&self, why: &str) -> Result<ClusterView, RpcError> {
        let request = RollbackRequest { why: why.to_string() };
        self.on_leader("/cluster/rollback", &request).await
    }

    pub async fn remove(&self, id: NodeId) -> Result<ClusterView, RpcError> {
        self.on_leader(&format!("/cluster/nodes/{id}/remove"), &()).await
    }
}
