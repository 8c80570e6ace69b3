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

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::assets::WebDir;
pub use crate::config::{Config, Settings};
use crate::dev_token::DevTokens;
pub use crate::follow::RouterState;
use crate::http::Body;
use crate::metrics::Metrics;
use crate::presence::PresenceReader;

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

    WebDir::announce(settings.web_dir.as_ref());
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
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let shared = shared.clone();
                        // No route reads a body.
                        let req = Request::from_parts(req.into_parts().0, ());
                        async move { Ok::<_, Infallible>(shared.respond(&req).await) }
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

/// What every request may need.
struct Shared {
    latest: follow::Latest,
    metrics: Arc<Metrics>,
    presence: Option<Arc<PresenceReader>>,
    web_dir: Option<WebDir>,
    dev_tokens: Option<DevTokens>,
}

impl Shared {
    /// Routes one request: the API paths first, whatever files the page has.
    async fn respond(&self, req: &Request<()>) -> Response<Body> {
        let path = req.uri().path();
        if let Some(scene) = presence::presence_path(path) {
            return presence::answer(scene, self.presence.as_deref()).await;
        }
        if path == dev_token::PATH && req.method() == hyper::Method::GET {
            return dev_token::answer(req.uri().query(), self.dev_tokens.as_ref());
        }
        if http::is_api_path(path) {
            // One snapshot per request: the route and its epoch agree.
            let state = self.latest.borrow().clone();
            return http::handle(req, state.as_deref(), &self.metrics);
        }
        assets::answer(self.web_dir.as_ref(), req.method(), path).await
    }
}
