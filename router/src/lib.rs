//! `troupe-router`: a stateless resolver from scene to owner node.
//!
//! It follows the cluster's membership (long-poll watches on one or more nodes, see
//! [`follow`]) and answers from the newest placement it has: `GET /v1/route/{scene}` with
//! the owner, `GET /ws/scenes/{scene}` with a 307 to it. Several routers can run side by
//! side: they share nothing but the cluster they follow.

#![deny(clippy::unwrap_used)]

pub mod config;
pub mod follow;
pub mod http;
pub mod metrics;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::http::Shared;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
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

/// Serves until `shutdown` resolves. `on_ready` runs once the watches are started.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    on_ready: impl FnOnce(),
    shutdown: impl Future<Output = ()>,
) -> Result<(), RouterError> {
    let metrics = Arc::new(Metrics::new());
    let latest = follow::follow(&settings.cluster, metrics.clone());
    let shared = Arc::new(Shared { metrics, latest });
    on_ready();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let shared = shared.clone();
                        async move {
                            let state = shared.latest.borrow().clone();
                            http::handle(req.method(), req.uri().path(), req.uri().query(), state.as_deref(), &shared.metrics)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            () = &mut shutdown => return Ok(()),
        }
    }
}
