//! This node's own place in the cluster: it puts itself on the ring when it starts
//! (`TROUPE_JOIN`), drains or leaves when it is told to stop (`TROUPE_ON_STOP`), and says
//! whether it is serving at the current epoch (`/readyz`). What a StatefulSet relies on:
//! pods come and go by themselves, and their scenes move by planned handoff, not failover.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use troupe_membership::placement::PlacementView;
use troupe_membership::state::{NodeId, NodeState};
use troupe_membership::tls::Transport;
use troupe_membership::view::{AdmitRequest, ClusterView};
use troupe_membership::{Cluster, ClusterClient};
use troupe_runtime::Backoff;

use crate::rooms::Rooms;

/// What a node does with its place in the cluster when it is told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OnStop {
    /// Close clients (1001) and flush; the leader marks the node down and its scenes fail
    /// over to the others.
    #[default]
    Stop,
    /// Move its scenes to the other nodes by planned handoff first; the node stays in the
    /// membership, draining, until it is activated (or starts again with `TROUPE_JOIN`).
    Drain,
    /// Drain, then remove itself from the membership.
    Leave,
    /// `leave` when its StatefulSet was scaled below this pod, `drain` otherwise.
    Kubernetes,
}

/// How long a drain may take to be decided by the cluster.
const DECIDE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long stopping waits for this node's rooms to hand their scenes over.
const HANDOFF_WAIT: Duration = Duration::from_secs(20);

/// The host name: `HOSTNAME` (set in every container), else the kernel's.
pub fn host_name() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// A StatefulSet pod's name split into the set's name and the pod's ordinal:
/// `troupe-node-2` -> (`troupe-node`, 2).
pub fn ordinal(host: &str) -> Option<(&str, u64)> {
    // A pod's host name is its name, never dotted; a full domain name is cut at the first dot.
    let host = host.split('.').next()?;
    let (set, number) = host.rsplit_once('-')?;
    if set.is_empty() || number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((set, number.parse().ok()?))
}

/// Internal addresses to reach the cluster at: the members this node knows of, then the
/// initial voters, never itself.
fn contacts(view: &ClusterView, seeds: &[String], me: NodeId) -> Vec<String> {
    let mut addrs: Vec<String> = view
        .state
        .nodes
        .values()
        .filter(|n| n.id != me)
        .map(|n| n.rpc_addr.clone())
        .collect();
    for seed in seeds {
        if !addrs.contains(seed) {
            addrs.push(seed.clone());
        }
    }
    addrs
}

/// Puts this node on the ring and returns once it is active there: admitted through the
/// other nodes (the members it knows, else the initial voters) if the cluster does not know
/// it, activated if it was drained. An initial voter unknown to the state registers itself
/// (see the membership's `register_self`); this only waits for it.
pub async fn join(cluster: Arc<Cluster>, transport: Transport) {
    let me = cluster.id();
    let peers = &cluster.options().peers;
    let initial_voter = peers.is_empty() || peers.contains_key(&me);
    let seeds: Vec<String> = peers
        .iter()
        .filter(|(id, _)| **id != me)
        .map(|(_, addr)| addr.clone())
        .collect();
    let mut delay = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let view = cluster.view();
        let client = ClusterClient::new(contacts(&view, &seeds, me), &transport);
        let asked = match view.state.nodes.get(&me).map(|n| n.state) {
            Some(NodeState::Active) => {
                tracing::info!(epoch = view.epoch(), "on the ring");
                return;
            }
            Some(state) => {
                tracing::info!(?state, "asking the cluster to put this node back on the ring");
                client.activate(me).await
            }
            None if initial_voter => {
                let _ = cluster.view_after(view.version, Duration::from_secs(5)).await;
                continue;
            }
            None => {
                tracing::info!("asking the cluster to admit this node");
                let options = cluster.options();
                client
                    .admit(&AdmitRequest {
                        id: me,
                        url: options.url.clone(),
                        rpc_addr: options.rpc_addr.clone(),
                    })
                    .await
            }
        };
        match asked {
            // The change reaches this node's own state through Raft.
            Ok(_) => {
                let _ = cluster.view_after(view.version, Duration::from_secs(5)).await;
            }
            Err(error) => {
                tracing::warn!(%error, "joining the cluster; will retry");
                delay.wait().await;
            }
        }
    }
}

/// Gives up this node's place as `mode` says, before it stops serving: its scenes move to
/// the other nodes by planned handoff (clients are told where with 4301), then, when it
/// leaves, it is removed from the membership. Anything that fails is logged and stopping
/// goes on: the cluster's failover covers what a drain did not.
pub async fn on_stop(mode: OnStop, cluster: &Cluster, transport: &Transport, rooms: &Rooms) {
    let mode = match mode {
        OnStop::Kubernetes => match crate::kubernetes::scaled_below_this_pod().await {
            Ok(true) => OnStop::Leave,
            Ok(false) => OnStop::Drain,
            Err(error) => {
                tracing::warn!(%error, "cannot tell a scale-down from a restart; draining only");
                OnStop::Drain
            }
        },
        mode => mode,
    };
    if mode == OnStop::Stop {
        return;
    }
    let me = cluster.id();
    let view = cluster.view();
    let client = ClusterClient::new(contacts(&view, &[], me), transport);
    let already = view.state.nodes.get(&me).map(|n| n.state);
    if already.is_none() {
        return;
    }
    if already == Some(NodeState::Active) {
        tracing::info!(
            rooms = rooms.len(),
            "draining: moving this node's scenes to the others"
        );
        match tokio::time::timeout(DECIDE_TIMEOUT, client.drain(me)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, "the cluster refused the drain; stopping without it");
                return;
            }
            Err(_) => {
                tracing::warn!("the cluster did not decide the drain in time; stopping without it");
                return;
            }
        }
        let started = tokio::time::Instant::now();
        let handed_over = async {
            while !rooms.is_empty() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        match tokio::time::timeout(HANDOFF_WAIT, handed_over).await {
            Ok(()) => tracing::info!(took = ?started.elapsed(), "drained: every scene handed over"),
            Err(_) => tracing::warn!(
                rooms = rooms.len(),
                "rooms still open after the drain; flushing them"
            ),
        }
    }
    if mode == OnStop::Leave {
        match tokio::time::timeout(DECIDE_TIMEOUT, client.remove(me)).await {
            Ok(Ok(_)) => tracing::info!("left the cluster"),
            Ok(Err(error)) => {
                tracing::warn!(%error, "the cluster refused to remove this node; it stays drained")
            }
            Err(_) => {
                tracing::warn!("the cluster did not decide the removal in time; this node stays drained")
            }
        }
    }
}

/// `GET /readyz`'s answer: ready when this node serves at the current epoch.
#[derive(Debug, Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// Why not, in a few words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    pub node: NodeId,
    pub state: Option<NodeState>,
    pub epoch: u64,
    pub leader: Option<NodeId>,
}

/// Ready means: a Raft leader is known, this node is active on the ring, and the placement
/// its rooms follow is the one of the membership it has applied. A rolling update waits
/// for it before it stops the next pod, so that scenes only ever move by planned handoff.
pub fn readiness(cluster: &Cluster, placement: &watch::Receiver<Arc<PlacementView>>) -> Readiness {
    let me = cluster.id();
    let view = cluster.view();
    let state = view.state.nodes.get(&me).map(|n| n.state);
    let reason = if view.leader.is_none() {
        Some("no Raft leader is known")
    } else if state != Some(NodeState::Active) {
        Some("not active on the ring")
    } else if placement.borrow().epoch() != view.epoch() {
        Some("placement is behind the membership")
    } else {
        None
    };
    Readiness {
        ready: reason.is_none(),
        reason,
        node: me,
        state,
        epoch: view.epoch(),
        leader: view.leader,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_ordinal_comes_from_the_end_of_its_name() {
        assert_eq!(ordinal("troupe-node-0"), Some(("troupe-node", 0)));
        assert_eq!(
            ordinal("troupe-node-12.troupe-node.ns.svc"),
            Some(("troupe-node", 12))
        );
        assert_eq!(ordinal("troupe-node"), None);
        assert_eq!(ordinal("node-"), None);
        assert_eq!(ordinal("-3"), None);
        assert_eq!(ordinal("node-3a"), None);
        assert_eq!(ordinal("node-99999999999999999999999"), None);
    }
}
