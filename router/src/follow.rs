//! Following the membership: a long-poll watch on every configured node, all feeding one
//! view.
//!
//! Each watcher asks its node for a version newer than the router's
//! ([`ClusterClient::view_after`]: the node answers as soon as it applies a change, or after
//! about 25 s with what it has); the first call, before any view is known, is a plain
//! [`ClusterClient::view`]. The newest version any node reports wins. Watching every node at
//! once, rather than one after the other, keeps the router current when the node it was
//! asking freezes (a paused process, a partition): such a node holds the call open until the
//! client's timeout, while the others report the change at once. A failing watcher backs
//! off (200 ms doubling to 2 s) and the router keeps answering from the last view it has.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;
use troupe_membership::rpc::RpcClient;
use troupe_membership::tls::Transport;
use troupe_membership::{ClusterClient, ClusterView, PlacementView};
use troupe_runtime::Backoff;

use crate::metrics::Metrics;

const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// A watch that ends this quickly with nothing new is not repeated at once, so that a
/// misbehaving node cannot make the router spin.
const QUICK_ANSWER: Duration = Duration::from_secs(1);

/// What the router answers from: one membership version and the placement it implies
/// (the same [`PlacementView`] nodes decide with), and when a node last confirmed it.
pub struct RouterState {
    pub current: Arc<PlacementView>,
    /// When a node last confirmed this is the newest membership: this version arrived, or
    /// a watch ended with nothing newer. Stays within ~25 s while the cluster answers.
    pub refreshed: Instant,
}

impl RouterState {
    pub fn new(view: ClusterView) -> RouterState {
        RouterState {
            current: Arc::new(PlacementView::new(Arc::new(view))),
            refreshed: Instant::now(),
        }
    }

    /// The same membership, confirmed now (the placement is not built again).
    fn confirmed(&self) -> RouterState {
        RouterState {
            current: self.current.clone(),
            refreshed: Instant::now(),
        }
    }

    /// Time since a node last confirmed this view.
    pub fn age(&self) -> Duration {
        self.refreshed.elapsed()
    }
}

/// Answers read the view and placement straight through (`state.view`, `state.placement`).
impl std::ops::Deref for RouterState {
    type Target = PlacementView;

    fn deref(&self) -> &PlacementView {
        &self.current
    }
}

/// The latest membership; `None` until some node answered.
pub type Latest = watch::Receiver<Option<Arc<RouterState>>>;

/// The running watches; dropping it stops them.
pub struct Follower {
    pub latest: Latest,
    _watches: JoinSet<()>,
    addrs: Vec<String>,
    tx: Arc<watch::Sender<Option<Arc<RouterState>>>>,
    metrics: Arc<Metrics>,
    /// Pooled connections for the one-off refreshes notices ask for.
    rpc: RpcClient,
}

/// Starts one watch per node address.
pub fn follow(addrs: &[String], transport: &Transport, metrics: Arc<Metrics>) -> Follower {
    let (tx, latest) = watch::channel(None);
    let tx = Arc::new(tx);
    let mut watches = JoinSet::new();
    for addr in addrs {
        let client = ClusterClient::new(vec![addr.clone()], transport);
        watches.spawn(watch_node(addr.clone(), client, tx.clone(), metrics.clone()));
    }
    Follower {
        latest,
        _watches: watches,
        addrs: addrs.to_vec(),
        tx,
        metrics,
        rpc: RpcClient::new(transport),
    }
}

impl Follower {
    /// Asks every followed node, and every member the router knows of, for its membership
    /// now (a failover notice said it changed); the watches go on as they were. Asking the
    /// known members too lets a notice help even when the followed nodes are cut off.
    pub fn refresh_now(&self) {
        let mut addrs = self.addrs.clone();
        if let Some(state) = self.tx.borrow().as_ref() {
            for node in state.view.state.nodes.values() {
                if !addrs.contains(&node.rpc_addr) {
                    addrs.push(node.rpc_addr.clone());
                }
            }
        }
        for addr in addrs {
            let (rpc, tx, metrics) = (self.rpc.clone(), self.tx.clone(), self.metrics.clone());
            tokio::spawn(async move {
                if let Ok(view) = rpc
                    .get::<ClusterView>(&addr, "/cluster/view", Duration::from_secs(5))
                    .await
                {
                    publish(&tx, view, &metrics);
                }
            });
        }
    }
}

async fn watch_node(
    addr: String,
    client: ClusterClient,
    latest: Arc<watch::Sender<Option<Arc<RouterState>>>>,
    metrics: Arc<Metrics>,
) {
    let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
    let mut failing = false;
    loop {
        let known = latest.borrow().as_ref().map(|s| s.view.version);
        let asked = Instant::now();
        let answer = match known {
            None => client.view().await,
            Some(version) => client.view_after(version).await,
        };
        match answer {
            Ok(view) => {
                if failing {
                    tracing::info!(%addr, "membership watch answers again");
                    failing = false;
                }
                backoff.reset();
                if !publish(&latest, view, &metrics) && asked.elapsed() < QUICK_ANSWER {
                    tokio::time::sleep(MIN_BACKOFF).await;
                }
            }
            Err(error) => {
                metrics.watch_errors.inc();
                if failing {
                    tracing::debug!(%addr, %error, "membership watch failed again");
                } else {
                    tracing::warn!(%addr, %error, "membership watch failed; answering from the last view while retrying");
                    failing = true;
                }
                backoff.wait().await;
            }
        }
    }
}

/// Takes `view` if it is newer than the router's, or marks the current view refreshed if
/// it is the same version. Returns whether the view changed.
fn publish(latest: &watch::Sender<Option<Arc<RouterState>>>, view: ClusterView, metrics: &Metrics) -> bool {
    latest.send_if_modified(|current| match current {
        Some(known) if view.version < known.view.version => false,
        Some(known) if view.version == known.view.version => {
            // Same version: only the time changes, nobody needs waking.
            *current = Some(Arc::new(known.confirmed()));
            false
        }
        _ => {
            tracing::info!(
                version = view.version,
                epoch = view.epoch(),
                active = view.state.active_ids().count(),
                "membership updated"
            );
            metrics.membership_updates.inc();
            metrics.epoch.set(i64::try_from(view.epoch()).unwrap_or(i64::MAX));
            *current = Some(Arc::new(RouterState::new(view)));
            true
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn view(version: u64) -> ClusterView {
        ClusterView {
            version,
            ..Default::default()
        }
    }

    fn version(rx: &Latest) -> Option<u64> {
        rx.borrow().as_ref().map(|s| s.view.version)
    }

    #[test]
    fn only_newer_versions_replace_the_view() {
        let (tx, rx) = watch::channel(None);
        let metrics = Metrics::new();
        assert!(publish(&tx, view(5), &metrics));
        assert!(!publish(&tx, view(3), &metrics));
        assert_eq!(version(&rx), Some(5));
        assert!(publish(&tx, view(7), &metrics));
        assert_eq!(version(&rx), Some(7));
        assert!(metrics.encode().contains("router_membership_updates_total 2"));
    }

    #[test]
    fn the_same_version_refreshes_the_view() {
        let (tx, rx) = watch::channel(None);
        let metrics = Metrics::new();
        publish(&tx, view(5), &metrics);
        let first = rx.borrow().as_ref().unwrap().refreshed;
        std::thread::sleep(Duration::from_millis(5));
        assert!(!publish(&tx, view(5), &metrics));
        assert!(rx.borrow().as_ref().unwrap().refreshed > first);
        assert!(!publish(&tx, view(4), &metrics));
        assert!(metrics.encode().contains("router_membership_updates_total 1"));
    }

    /// A stand-in for a node's `GET /cluster/view[?after=V]`, serving the versions sent on
    /// the returned channel.
    async fn fake_node() -> (String, watch::Sender<u64>) {
        use axum::extract::{Query, State};

        #[derive(serde::Deserialize)]
        struct Watch {
            after: Option<u64>,
        }

        async fn view_after(State(mut rx): State<watch::Receiver<u64>>, Query(q): Query<Watch>) -> Vec<u8> {
            if let Some(after) = q.after {
                let newer = rx.wait_for(|v| *v > after);
                let _ = tokio::time::timeout(Duration::from_secs(2), newer).await;
            }
            let version = *rx.borrow();
            serde_json::to_vec(&view(version)).unwrap()
        }

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = watch::channel(1u64);
        let app = axum::Router::new()
            .route("/cluster/view", axum::routing::get(view_after))
            .with_state(rx);
        tokio::spawn(async move { axum::serve(listener, app).await });
        (addr, tx)
    }

    async fn wait_version(latest: &mut Latest, version: u64) {
        let reached = latest.wait_for(|s| s.as_ref().is_some_and(|s| s.view.version >= version));
        tokio::time::timeout(Duration::from_secs(5), reached)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_frozen_node_does_not_hold_the_view_back() {
        // Accepts connections (the kernel does) but never answers: a paused process.
        let frozen = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let frozen_addr = frozen.local_addr().unwrap().to_string();
        let (live_addr, versions) = fake_node().await;
        let metrics = Arc::new(Metrics::new());
        let mut follower = follow(&[frozen_addr, live_addr], &Transport::Insecure, metrics.clone());
        wait_version(&mut follower.latest, 1).await;
        versions.send_replace(2);
        wait_version(&mut follower.latest, 2).await;
        versions.send_replace(5);
        wait_version(&mut follower.latest, 5).await;
        assert!(metrics.encode().contains("router_membership_updates_total 3"));
        drop(frozen);
    }

    #[tokio::test]
    async fn unreachable_nodes_count_errors_and_leave_no_view() {
        // A port nothing listens on: connections are refused at once.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap().to_string();
        drop(free);
        let metrics = Arc::new(Metrics::new());
        let follower = follow(&[addr], &Transport::Insecure, metrics.clone());
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(follower.latest.borrow().is_none());
        assert!(!metrics.encode().contains("router_watch_errors_total 0"));
    }
}
