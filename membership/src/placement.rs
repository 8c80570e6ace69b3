//! Placement: which node owns a scene at an epoch, and whether this node may serve it.
//!
//! The one place nodes and routers turn a membership view into owners:
//! - [`Placement`]: the [`Ring`] over the active nodes at one epoch, plus their URLs;
//! - [`PlacementView`]: a placement with the membership it was built from, answering a
//!   node's "may I serve this scene?" ([`Verdict`]) and "is that lease owner still up?";
//! - [`follow`]: a new view whenever the epoch (or a member) changes.
//!
//! The ring labels each active node with its id in decimal; the exact placement function
//! is documented (and pinned) in [`crate::ring`].

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::ring::{Ring, RingError};
use crate::state::{ClusterState, NodeId, NodeInfo, NodeState};
use crate::view::ClusterView;

/// Who owns what at one epoch: the ring over the active nodes plus their URLs.
#[derive(Debug)]
pub struct Placement {
    pub epoch: u64,
    ring: Ring,
    urls: BTreeMap<NodeId, String>,
}

/// The owner of a scene at an epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub scene: String,
    pub node: NodeId,
    pub url: String,
    pub epoch: u64,
}

impl Placement {
    pub fn new(state: &ClusterState) -> Result<Placement, RingError> {
        let ring = Ring::new(state.active_ids().map(|id| id.to_string()))?;
        let urls = state
            .nodes
            .values()
            .filter(|n| n.state == NodeState::Active)
            .map(|n| (n.id, n.url.clone()))
            .collect();
        Ok(Placement {
            epoch: state.epoch,
            ring,
            urls,
        })
    }

    /// A placement with no nodes: nothing is served.
    pub fn empty() -> Placement {
        Placement {
            epoch: 0,
            ring: Ring::new(Vec::<String>::new()).unwrap_or_else(|_| unreachable!("an empty ring is valid")),
            urls: BTreeMap::new(),
        }
    }

    /// The owner of `scene`, or `None` when no node is active.
    pub fn route(&self, scene: &str) -> Option<Route> {
        let owner = self.ring.owner(scene)?;
        let node: NodeId = owner.as_str().parse().ok()?;
        Some(Route {
            scene: scene.to_string(),
            node,
            url: self.urls.get(&node)?.clone(),
            epoch: self.epoch,
        })
    }

    /// Whether `node` owns `scene`.
    pub fn owns(&self, node: NodeId, scene: &str) -> bool {
        self.route(scene).is_some_and(|r| r.node == node)
    }

    pub fn active_nodes(&self) -> usize {
        self.urls.len()
    }
}

/// The placement at one epoch plus the membership it was built from.
#[derive(Debug)]
pub struct PlacementView {
    pub view: Arc<ClusterView>,
    pub placement: Placement,
}

/// The answer to "may this node serve that scene?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Yes, at this epoch.
    Mine { epoch: u64 },
    /// No: another node owns it.
    Elsewhere(Route),
    /// No node owns it now (the cluster is forming).
    NoOwner,
}

impl PlacementView {
    pub fn new(view: Arc<ClusterView>) -> PlacementView {
        PlacementView {
            placement: view.placement(),
            view,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.placement.epoch
    }

    pub fn verdict(&self, me: NodeId, scene: &str) -> Verdict {
        match self.placement.route(scene) {
            Some(route) if route.node == me => Verdict::Mine { epoch: route.epoch },
            Some(route) => Verdict::Elsewhere(route),
            None => Verdict::NoOwner,
        }
    }

    /// Whether `node` (a lease owner as written in the store) is a member that is up, and
    /// so may still be flushing a scene it is handing over.
    pub fn is_up(&self, node: &str) -> bool {
        self.member(node).is_some_and(|n| {
            matches!(
                n.state,
                NodeState::Active | NodeState::Draining | NodeState::Joining
            )
        })
    }

    /// The internal address of member `node` (a lease owner as written in the store).
    pub fn rpc_addr(&self, node: &str) -> Option<String> {
        self.member(node).map(|n| n.rpc_addr.clone())
    }

    /// The member a lease owner string names, if it is one.
    fn member(&self, node: &str) -> Option<&NodeInfo> {
        let id = node.parse::<NodeId>().ok()?;
        self.view.state.nodes.get(&id)
    }
}

/// Follows the membership and publishes a new placement whenever the epoch changes (or a
/// member's addresses or state do). Ends when every receiver is gone.
pub fn follow(mut cluster: watch::Receiver<Arc<ClusterView>>) -> watch::Receiver<Arc<PlacementView>> {
    let first = Arc::new(PlacementView::new(cluster.borrow_and_update().clone()));
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        while cluster.changed().await.is_ok() {
            let view = cluster.borrow_and_update().clone();
            let moved =
                tx.borrow().epoch() != view.epoch() || tx.borrow().view.state.nodes != view.state.nodes;
            if moved {
                tracing::info!(epoch = view.epoch(), "placement changed");
                tx.send_replace(Arc::new(PlacementView::new(view)));
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}
