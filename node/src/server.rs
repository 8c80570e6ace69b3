//! Wiring of a node: store, writer, rooms and the HTTP listener, with graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use troupe_membership::revocation::Revocations;
use troupe_membership::rpc::RpcClient;
use troupe_membership::server::LocalStatus;
use troupe_membership::{Cluster, ClusterError, ClusterOptions};

use crate::batch::{StoreBatches, UserBytes};
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::presence::RedisHandle;
use crate::room::RoomContext;
use crate::rooms::Rooms;
use crate::store::{Store, StoreError};
use crate::webhooks::Webhooks;
use crate::writer;
use troupe_membership::placement::{self, PlacementView};
use troupe_proto::presence::Notice;
use troupe_runtime::tasks::CancellationToken;
use troupe_runtime::Tasks;

/// How long shutdown waits for rooms to flush before giving up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("membership: {0}")]
    Cluster(#[from] ClusterError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What request handlers share.
pub struct App {
    pub settings: Settings,
    pub store: Store,
    /// Connections' quota reports, many per statement.
    pub user_bytes: UserBytes,
    pub rooms: Arc<Rooms>,
    pub metrics: Arc<Metrics>,
    pub cluster: Arc<Cluster>,
    pub placement: watch::Receiver<Arc<PlacementView>>,
    /// Revoked users: their connections close, and they cannot connect again.
    pub revocations: watch::Receiver<Arc<Revocations>>,
    /// Feature flags: collaboration, editing and presence, per scene and user.
    pub flags: watch::Receiver<Arc<troupe_membership::flags::FlagState>>,
    /// Change notifications for the app's backend.
    pub webhooks: Webhooks,
    conn_ids: AtomicU64,
}

/// What the internal endpoint reports about this node.
struct NodeStatus {
    /// Weak: a watch call held open by a router must not keep the rooms (and with them the
    /// writer) alive past shutdown.
    rooms: std::sync::Weak<Rooms>,
    placement: watch::Receiver<Arc<PlacementView>>,
}

impl LocalStatus for NodeStatus {
    fn rooms(&self) -> u64 {
        self.rooms.upgrade().map_or(0, |r| r.len() as u64)
    }

    fn epoch(&self) -> u64 {
        self.placement.borrow().epoch()
    }
}

impl App {
    pub fn next_conn_id(&self) -> u64 {
        self.conn_ids.fetch_add(1, Ordering::Relaxed)
    }
}

/// The node's two listeners: clients (WebSocket, health, metrics) and internal (Raft, admin).
pub struct Listeners {
    pub public: TcpListener,
    pub rpc: TcpListener,
}

/// Binds the configured addresses.
pub async fn bind(settings: &Settings) -> Result<Listeners, ServerError> {
    let bind = |addr: SocketAddr| {
        troupe_runtime::listen::bind(addr).map_err(|source| ServerError::Bind { addr, source })
    };
    Ok(Listeners {
        public: bind(settings.listen)?,
        rpc: bind(settings.rpc_listen)?,
    })
}

/// How long a node that forms a cluster of its own waits to serve before it says so.
const SELF_CLUSTER_WAIT: Duration = Duration::from_secs(10);

/// Serves until `shutdown` resolves, then closes clients with 1001, flushes every room
/// and waits for the last group commit. `on_ready` runs once the store is open and
/// connections are about to be served.
pub async fn run(
    settings: Settings,
    listeners: Listeners,
    on_ready: impl FnOnce(),
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let Listeners {
        public: listener,
        rpc,
    } = listeners;
    if settings.transport.identity().is_none() {
        tracing::warn!(
            rpc_listen = %settings.rpc_listen,
            "TROUPE_INTERNAL_INSECURE=1: the internal port is plain HTTP and UNAUTHENTICATED; \
             anything on this machine can change the cluster. Never run this in production."
        );
    }
    let store = Store::open(&settings.store).await?;
    let metrics = Arc::new(Metrics::new());
    metrics.store_up.set(1);
    let public_addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: settings.listen,
        source,
    })?;
    let rpc_addr = rpc.local_addr().map_err(|source| ServerError::Bind {
        addr: settings.rpc_listen,
        source,
    })?;
    let cluster = Cluster::start(
        ClusterOptions {
            id: settings.node_id,
            url: settings
                .public_url
                .clone()
                .unwrap_or_else(|| format!("ws://{public_addr}")),
            rpc_addr: settings
                .rpc_advertise
                .clone()
                .or_else(|| settings.peers.get(&settings.node_id).cloned())
                .unwrap_or_else(|| rpc_addr.to_string()),
            peers: settings.peers.clone(),
            dir: settings.raft_dir.clone(),
            timing: settings.raft_timing.clone(),
            down_after: settings.down_after,
        },
        RpcClient::new(&settings.transport),
    )
    .await?;
    let placement = placement::follow(cluster.watch());
    let presence = settings
        .redis_url
        .clone()
        .map(|url| RedisHandle::spawn(url, metrics.clone()));
    // Two groups stop in turn at shutdown: the rooms (each flushes, then closes its
    // clients with 1001), then the node's background work.
    let room_tasks = Tasks::new();
    let background = Tasks::new();
    if settings.join {
        background.spawn_until_cancelled(crate::self_membership::join(
            cluster.clone(),
            settings.transport.clone(),
        ));
    }
    background.spawn_until_cancelled(report_failovers(
        cluster.clone(),
        placement.clone(),
        presence.clone(),
        metrics.clone(),
    ));
    {
        let (mut leaders, gauge) = (cluster.leaders(), metrics.raft_leader_known.clone());
        background.spawn_until_cancelled(async move {
            loop {
                gauge.set(i64::from(leaders.current().is_some()));
                if !leaders.changed().await {
                    return;
                }
            }
        });
    }
    {
        let (mut watch, gauge) = (placement.clone(), metrics.ring_epoch.clone());
        background.spawn_until_cancelled(async move {
            loop {
                gauge.set(watch.borrow_and_update().epoch() as i64);
                if watch.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    let (writer, writer_task) = writer::spawn(
        store.clone(),
        settings.node_id.to_string(),
        metrics.clone(),
        settings.commit_batch,
        settings.commit_interval,
        65_536,
    );
    let webhooks = match &settings.webhooks {
        Some(hooks) => Webhooks::start(
            hooks.clone(),
            settings.node_id.0,
            metrics.clone(),
            room_tasks.token().clone(),
        ),
        None => Webhooks::default(),
    };
    {
        let roll_back = settings.auto_rollback.map(|after| {
            let (placement, transport) = (placement.clone(), settings.transport.clone());
            let roll_back: crate::triggers::RollBack = Arc::new(move |why: String| {
                let addrs: Vec<String> = placement
                    .borrow()
                    .view
                    .state
                    .nodes
                    .values()
                    .map(|n| n.rpc_addr.clone())
                    .collect();
                let client = troupe_membership::ClusterClient::new(addrs, &transport);
                Box::pin(async move {
                    client
                        .roll_back(&why)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
            });
            (after, roll_back)
        });
        background.spawn_until_cancelled(crate::triggers::run(
            metrics.triggers.clone(),
            metrics.trigger_metrics.clone(),
            roll_back,
            settings.node_id.0,
        ));
    }
    // Ends with the rooms, which hold its only handles.
    let batches = StoreBatches::spawn(store.clone(), settings.node_id.to_string(), 65_536);
    let ctx = Arc::new(RoomContext {
        store: store.clone(),
        webhooks: webhooks.clone(),
        writer,
        batches,
        metrics: metrics.clone(),
        limits: settings.limits.clone(),
        node: settings.node_id,
        node_id: settings.node_id.to_string(),
        placement: placement.clone(),
        presence,
        shutdown: room_tasks.token().clone(),
        rpc: RpcClient::new(&settings.transport),
    });
    let rooms = Rooms::new(ctx, room_tasks.clone());
    // With the rooms, so that it lets go of them (and the writer) when they stop.
    room_tasks.spawn_until_cancelled(check_leases(
        store.clone(),
        rooms.clone(),
        settings.node_id.to_string(),
    ));
    let status = Arc::new(NodeStatus {
        rooms: Arc::downgrade(&rooms),
        placement: placement.clone(),
    });
    background.spawn_until_cancelled(collect_leases(store.clone(), settings.quotas, metrics.clone()));
    background.spawn_until_cancelled(crate::epoch_floor::keep_above_store(
        cluster.clone(),
        store.clone(),
    ));
    // The internal port closes when the rooms start to flush.
    background.spawn(troupe_membership::server::serve(
        rpc,
        settings.transport.clone(),
        cluster.clone(),
        status,
        room_tasks.token().clone().cancelled_owned(),
    ));
    if settings.peers.is_empty() {
        // A node of its own serves every scene as soon as it has put itself on the ring.
        let me = settings.node_id;
        let mut watch = placement.clone();
        let on_ring = watch.wait_for(|p| p.view.state.active_ids().any(|id| id == me));
        if tokio::time::timeout(SELF_CLUSTER_WAIT, on_ring).await.is_err() {
            tracing::warn!("this node is not on the ring yet; scenes are refused until it is");
        }
    }
    let app = Arc::new(App {
        settings,
        user_bytes: UserBytes::spawn(store.clone(), 65_536),
        store,
        rooms: rooms.clone(),
        metrics,
        revocations: troupe_membership::revocation::follow(cluster.watch()),
        flags: troupe_membership::flags::follow(cluster.watch()),
        cluster: cluster.clone(),
        placement,
        webhooks,
        conn_ids: AtomicU64::new(1),
    });

    on_ready();
    // Served apart, so that shutdown goes on with the rooms as soon as it stops accepting:
    // upgraded connections are the rooms' to close (1001), and requests still in flight
    // finish on their own.
    let accepting = CancellationToken::new();
    let refusals = app.metrics.clone();
    background.spawn(troupe_runtime::listen::serve(
        listener,
        crate::http::router(app.clone()),
        app.settings.port,
        move |why| refusals.error(why.label()),
        accepting.clone().cancelled_owned(),
    ));
    shutdown.await;
    // While it still serves, so that its clients are told where their scenes went.
    crate::self_membership::on_stop(app.settings.on_stop, &cluster, &app.settings.transport, &rooms).await;
    accepting.cancel();

    tracing::info!(rooms = rooms.len(), "shutting down: flushing rooms");
    let unflushed = room_tasks.shutdown(SHUTDOWN_GRACE).await;
    if unflushed > 0 {
        tracing::error!(rooms = unflushed, "rooms still unflushed at shutdown");
    }
    drop(app);
    drop(rooms);
    // The writer ends once the last room let go of its handle.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, writer_task).await;
    // The servers let their last requests finish; a client that never completes one is
    // not waited for past the grace period.
    background.shutdown(SHUTDOWN_GRACE).await;
    cluster.shutdown().await;
    Ok(())
}

/// While this node leads: counts and times the nodes it marks down, and tells routers of
/// every epoch change and node loss on Redis (hints; the membership stays the truth).
async fn report_failovers(
    cluster: Arc<Cluster>,
    mut placement: watch::Receiver<Arc<PlacementView>>,
    presence: Option<RedisHandle>,
    metrics: Arc<Metrics>,
) {
    let mut detections = cluster.detections();
    let mut epoch = placement.borrow().epoch();
    loop {
        tokio::select! {
            detection = detections.recv() => match detection {
                Ok(d) => {
                    metrics.failovers.inc();
                    metrics.failover_detection_seconds.observe(d.after.as_secs_f64());
                    let epoch = cluster.view().epoch();
                    if let Some(p) = &presence {
                        p.notice(Notice::NodeDown { node: d.node, epoch });
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            },
            changed = placement.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = placement.borrow_and_update().epoch();
                if now != epoch && cluster.leader() == Some(cluster.id()) {
                    if let Some(p) = &presence {
                        p.notice(Notice::EpochChanged { epoch: now });
                    }
                }
                epoch = now;
            }
        }
    }
}

/// How often this node checks that it still holds the leases of its rooms.
const LEASE_CHECK: Duration = Duration::from_secs(1);

/// Closes rooms whose lease another node has claimed: a node cut off from the cluster (or
/// paused, or behind on placement) stops serving within about a second of the new owner
/// taking over, even if none of its clients writes. The store decides, not Raft contact:
/// while nobody claims a scene — no quorum anywhere, say — its room keeps serving.
/// Deletes, now and then, the lease rows of scenes that never got content and have been
/// released and idle for `TROUPE_LEASE_RETENTION` (see [`Store::collect_leases`]). Every
/// node runs it; the deletes are idempotent.
async fn collect_leases(store: Store, quotas: crate::config::Quotas, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(quotas.lease_gc_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now_ms = troupe_proto::clock::now_secs() as i64 * 1000;
        let before = now_ms - quotas.lease_retention.as_millis() as i64;
        match store.collect_leases(before, 1000).await {
            Ok(0) => {}
            Ok(n) => {
                metrics.leases_collected.inc_by(n);
                tracing::info!(leases = n, "collected the leases of empty idle scenes");
            }
            Err(error) => tracing::warn!(%error, "collecting idle leases failed; will retry"),
        }
    }
}

async fn check_leases(store: Store, rooms: Arc<Rooms>, node_id: String) {
    let mut tick = tokio::time::interval(LEASE_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let scenes = rooms.scenes();
        if scenes.is_empty() {
            continue;
        }
        let checked_at = std::time::Instant::now();
        let Ok(lost) = store.leases_lost(&node_id, &scenes).await else {
            continue;
        };
        // A room started for the scene since the check ignores the notice: it claimed the
        // lease after `checked_at`.
        for scene in lost {
            if let Some(handle) = rooms.handle(&scene) {
                let _ = handle.tx.try_send(crate::room::RoomCmd::LeaseLost { checked_at });
            }
        }
    }
}
