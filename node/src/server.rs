//! Wiring of a node: store, writer, rooms and the HTTP listener, with graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::room::RoomContext;
use crate::rooms::Rooms;
use crate::store::{Store, StoreError};
use crate::writer;

/// How long shutdown waits for rooms to flush before giving up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
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
    pub rooms: Arc<Rooms>,
    pub metrics: Arc<Metrics>,
    conn_ids: AtomicU64,
}

impl App {
    pub fn next_conn_id(&self) -> u64 {
        self.conn_ids.fetch_add(1, Ordering::Relaxed)
    }
}

/// Binds the configured address.
pub async fn bind(settings: &Settings) -> Result<TcpListener, ServerError> {
    TcpListener::bind(settings.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: settings.listen,
            source,
        })
}

/// Serves until `shutdown` resolves, then closes clients with 1001, flushes every room
/// and waits for the last group commit. `on_ready` runs once the store is open and
/// connections are about to be served.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    on_ready: impl FnOnce(),
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let store = Store::open(&settings.store).await?;
    let metrics = Arc::new(Metrics::new());
    let (writer, writer_task) = writer::spawn(
        store.clone(),
        settings.node_id.clone(),
        metrics.clone(),
        settings.commit_batch,
        65_536,
    );
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let ctx = Arc::new(RoomContext {
        store: store.clone(),
        writer,
        metrics: metrics.clone(),
        limits: settings.limits.clone(),
        node_id: settings.node_id.clone(),
        epoch: 0,
        shutdown: shutdown_rx,
    });
    let rooms = Rooms::new(ctx);
    let app = Arc::new(App {
        settings,
        store,
        rooms: rooms.clone(),
        metrics,
        conn_ids: AtomicU64::new(1),
    });

    on_ready();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| crate::http::handle(req, app.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
            () = &mut shutdown => break,
        }
    }

    tracing::info!(rooms = rooms.len(), "shutting down: flushing rooms");
    drop(listener);
    let _ = shutdown_tx.send(true);
    let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    while !rooms.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !rooms.is_empty() {
        tracing::error!(rooms = rooms.len(), "rooms still unflushed at shutdown");
    }
    drop(app);
    drop(rooms);
    // The writer ends once the last room let go of its handle.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, writer_task).await;
    Ok(())
}
