//! Where a load run connects: straight to one y-websocket server (a Troupe node or the
//! reference server), or through a Troupe router to whichever node owns each scene.

use std::time::Duration;

use troupe_membership::rpc::RpcClient;
use troupe_membership::Route;

/// The server side of a load run.
#[derive(Clone)]
pub enum Target {
    /// Every scene at `{base}/{scene}` (`ws://host:port/ws/scenes`, `ws://host:port`).
    Direct(String),
    /// A router at `host:port`: each scene's owner comes from `GET /v1/route/{scene}`.
    Router { addr: String, rpc: RpcClient },
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("--url {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("routing scene {scene}")]
    Route {
        scene: String,
        #[source]
        source: troupe_membership::rpc::RpcError,
    },
}

impl Target {
    /// A `ws://` or `wss://` URL is a WebSocket base; an `http://` URL is a router.
    pub fn parse(url: &str) -> Result<Target, TargetError> {
        let bad = |reason: &str| TargetError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        match parsed.scheme() {
            "ws" | "wss" => Ok(Target::Direct(url.trim_end_matches('/').to_owned())),
            "http" => {
                if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() {
                    return Err(bad("a router URL is http://host:port, without a path"));
                }
                let host = parsed.host_str().ok_or_else(|| bad("no host"))?;
                let port = parsed.port_or_known_default().unwrap_or(80);
                Ok(Target::Router {
                    addr: format!("{host}:{port}"),
                    rpc: RpcClient::plain(),
                })
            }
            "https" => Err(bad(
                "https routers are not supported; use http:// or a node's ws:// URL",
            )),
            _ => Err(bad("expected ws://, wss:// (a server) or http:// (a router)")),
        }
    }

    /// The WebSocket base that serves `scene` now (its URL is `{base}/{scene}`).
    pub async fn base_for(&self, scene: &str) -> Result<String, TargetError> {
        match self {
            Target::Direct(base) => Ok(base.clone()),
            Target::Router { addr, rpc } => {
                let route: Route = rpc
                    .get(addr, &format!("/v1/route/{scene}"), Duration::from_secs(5))
                    .await
                    .map_err(|source| TargetError::Route {
                        scene: scene.to_owned(),
                        source,
                    })?;
                Ok(node_base(&route.url))
            }
        }
    }
}

/// The scenes endpoint of a node named by a route or a 4301 close reason: its base URL
/// (`ws://host:port`, or `http://…`, taken as `ws://…`) followed by `/ws/scenes`.
pub fn node_base(url: &str) -> String {
    let url = url.trim_end_matches('/');
    let ws = if let Some(rest) = url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        url.to_owned()
    };
    format!("{ws}/ws/scenes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_of_url() {
        assert!(matches!(
            Target::parse("ws://127.0.0.1:4000/ws/scenes/"),
            Ok(Target::Direct(base)) if base == "ws://127.0.0.1:4000/ws/scenes"
        ));
        assert!(matches!(
            Target::parse("http://127.0.0.1:8080"),
            Ok(Target::Router { addr, .. }) if addr == "127.0.0.1:8080"
        ));
        assert!(matches!(
            Target::parse("http://localhost/"),
            Ok(Target::Router { addr, .. }) if addr == "localhost:80"
        ));
        for bad in ["http://r:1/v1", "https://r", "ftp://x", "nonsense"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn node_bases() {
        assert_eq!(node_base("ws://n:4001"), "ws://n:4001/ws/scenes");
        assert_eq!(node_base("http://n:4001/"), "ws://n:4001/ws/scenes");
        assert_eq!(node_base("https://n"), "wss://n/ws/scenes");
    }
}
