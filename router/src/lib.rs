//! `troupe-router`: a stateless resolver from scene to owner node.
//!
//! It follows the cluster's membership (long-poll watches on the configured nodes, see
//! [`follow`]) and answers from the newest placement it has: `GET /v1/route/{scene}` with
//! the owner, `GET /ws/scenes/{scene}` with a 307 to it (see [`http`]). It keeps nothing
//! else, so any number of routers can run side by side and restart at will; a router that
//! falls behind only costs clients one extra hop, since nodes send them on (close 4301).
//!
//! For demos it also serves the demo page's files at `/` (see [`assets`]) and, only when
//! asked to, tokens for anyone (see [`dev_token`]).

#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod assets;
pub mod config;
pub mod dev_token;
pub mod follow;
pub mod http;
pub mod metrics;
pub mod presence;

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;

pub use crate::config::{Config, Settings};
pub use crate::follow::RouterState;
use crate::http::Shared;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no cluster address to follow")]
    NoCluster,
}

/// Binds the configured address.
pub async fn bind(settings: &Settings) -> Result<TcpListener, RouterError> {
    TcpListener::bind(settings.listen)
        .await
        .map_err(|source| RouterError::Bind {
            addr: settings.listen,
            source,
        })
}

/// Serves on `listener` until `shutdown` resolves. `on_ready` runs once the membership
/// watches are started (before any node has answered: `/healthz` says when one has).
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    on_ready: impl FnOnce(),
    shutdown: impl Future<Output = ()>,
) -> Result<(), RouterError> {
    if settings.cluster.is_empty() {
        return Err(RouterError::NoCluster);
    }
    let metrics = Arc::new(Metrics::new());
    // Dropped when this function returns, which stops the watches.
    let follower = Arc::new(follow::follow(&settings.cluster, metrics.clone()));
    let presence = match &settings.redis_url {
        Some(url) => {
            tokio::spawn(presence::follow_notices(url.clone(), follower.clone()));
            presence::PresenceReader::new(url).ok().map(Arc::new)
        }
        None => None,
    };

    match &settings.web_dir {
        Some(dir) => tracing::info!(dir = %dir.root().display(), "serving the demo page at /"),
        None => tracing::info!("no demo page to serve (build it with `cd web && npm ci && npm run build`)"),
    }
    if settings.dev_tokens.is_some() {
        tracing::warn!("{}", dev_token::WARNING);
    }
    let shared = Arc::new(Shared {
        latest: follower.latest.clone(),
        metrics,
        presence,
        web_dir: settings.web_dir.clone(),
        dev_tokens: settings.dev_tokens.clone(),
    });

    on_ready();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    // Stops accepting when `shutdown` resolves, then lets the requests in flight finish.
    let server = axum::serve(listener, http::router(shared)).with_graceful_shutdown(async move {
        let _ = stopped.await;
    });
    let signal = async move {
        shutdown.await;
        let _ = stop.send(());
    };
    let ((), served) = tokio::join!(signal, server.into_future());
    if let Err(error) = served {
        tracing::warn!(%error, "serving stopped");
    }
    tracing::info!("stopped");
    drop(follower);
    Ok(())
}
