//! Running a router: bind, serve until the shutdown signal, stop its background work.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use troupe_membership::tls::Transport;
use troupe_runtime::Tasks;

use crate::assets::WebDir;
use crate::config::Settings;
use crate::http::Shared;
use crate::metrics::{KindLabels, Metrics};
use crate::{dev_token, follow, http, presence};

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no cluster address to follow")]
    NoCluster,
    #[error(transparent)]
    Keys(#[from] troupe_proto::token::KeyError),
    #[error(transparent)]
    Internal(#[from] troupe_membership::tls::TlsError),
}

/// Binds the configured address.
pub async fn bind(settings: &Settings) -> Result<TcpListener, RouterError> {
    troupe_runtime::listen::bind(settings.listen).map_err(|source| RouterError::Bind {
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
    let verifier = match &settings.token_keys {
        // The router takes back the dev tokens it mints.
        Some(keys) if settings.dev_tokens.is_some() => Some(keys.verifier()?.with_dev_tokens()),
        Some(keys) => Some(keys.verifier()?),
        None => {
            tracing::warn!("no TROUPE_JWT_SECRET or TROUPE_JWT_PUBLIC_KEY_FILE: presence answers 503");
            None
        }
    };
    let metrics = Arc::new(Metrics::new());
    // Dropped when this function returns, which stops the watches.
    let transport = Transport::load(&settings.internal)?;
    let follower = Arc::new(follow::follow(&settings.cluster, &transport, metrics.clone()));
    // Background work that ends with the server.
    let tasks = Tasks::new();
    let presence = match &settings.redis_url {
        Some(url) => {
            tasks.spawn_until_cancelled(presence::follow_notices(url.clone(), follower.clone()));
            presence::PresenceReader::new(url).ok().map(Arc::new)
        }
        None => None,
    };

    WebDir::announce(settings.web_dir.as_ref());
    if settings.dev_tokens.is_some() {
        tracing::warn!("{}", dev_token::WARNING);
    }
    let passthrough = settings.node_upstream.clone().map(|upstream| {
        tracing::info!(?upstream, "passing /nodes/{{name}}/... through to the members");
        crate::passthrough::Passthrough::new(upstream, settings.port.max_body_bytes, metrics.clone())
    });
    let refusals = metrics.clone();
    // Held route look-ups are answered as the router stops, not waited out.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    let shared = Arc::new(Shared {
        latest: follower.latest.clone(),
        metrics,
        presence,
        web_dir: settings.web_dir.clone(),
        dev_tokens: settings.dev_tokens.clone(),
        verifier,
        metrics_token: settings.metrics_token.as_ref().map(|t| t.0.clone()),
        content: crate::content::Forwarder::new(settings.node_upstream.clone()),
        origins: settings.origins.clone(),
        passthrough,
        route_watches: http::route_watches(settings.port.max_connections),
        stopping,
    });

    on_ready();
    // Stops accepting when `shutdown` resolves, then lets the requests in flight finish.
    troupe_runtime::listen::serve(
        listener,
        http::router(shared),
        settings.port,
        move |why| {
            refusals
                .requests
                .get_or_create(&KindLabels { kind: why.label() })
                .inc();
        },
        shutdown,
    )
    .await;
    tasks.shutdown(std::time::Duration::from_secs(1)).await;
    tracing::info!("stopped");
    drop(follower);
    Ok(())
}
