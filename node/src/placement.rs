//! Which scenes this node may serve: the cluster's placement at its current epoch.
//!
//! The membership service publishes every applied change; this module turns changes that
//! move scenes (a new epoch) into a new [`PlacementView`], which rooms and connections
//! consult before serving a scene and watch to hand scenes off when the epoch moves.

use std::sync::Arc;

use tokio::sync::watch;
use troupe_membership::{ClusterView, NodeId, NodeInfo, NodeState, Placement, Route};

/// The placement at one epoch plus the membership it was built from.
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

/// Follows the membership and publishes a new placement whenever the epoch changes.
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
