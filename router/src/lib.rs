//! `troupe-router`: a stateless resolver from scene to owner node.
//!
//! It follows the cluster's membership (long-poll watches on the configured nodes, see
//! [`follow`]) and answers from the newest placement it has: `GET /v1/route/{scene}` with
//! the owner, `GET /ws/scenes/{scene}` with a 307 to it (see [`http`]). It keeps nothing
//! else, so any number of routers can run side by side and restart at will; a router that
//! falls behind only costs clients one extra hop, since nodes send them on (close 4301).

#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod config;
pub mod follow;
pub mod http;
pub mod metrics;
pub mod presence;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub use crate::config::{Config, Settings};
pub use crate::follow::RouterState;
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
    let latest = follower.latest.clone();
    let presence = match &settings.redis_url {
        Some(url) => {
            tokio::spawn(presence::follow_notices(url.clone(), follower.clone()));
            presence::PresenceReader::new(url).ok().map(Arc::new)
        }
        None => None,
    };

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
                let (latest, metrics, presence) = (latest.clone(), metrics.clone(), presence.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        // One snapshot per request: the route and its epoch agree.
                        let state = latest.borrow().clone();
                        let presence = presence.clone();
                        let scene = presence::presence_path(req.uri().path()).map(str::to_string);
                        let response = match scene {
                            Some(_) => None,
                            None => Some(http::handle(&req, state.as_deref(), &metrics)),
                        };
                        async move {
                            let response = match (response, scene) {
                                (Some(r), _) => r,
                                (None, scene) => presence::answer(scene.as_deref().unwrap_or(""), presence.as_deref()).await,
                            };
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            () = &mut shutdown => break,
        }
    }
    tracing::info!("stopped");
    drop(follower);
    Ok(())
}
