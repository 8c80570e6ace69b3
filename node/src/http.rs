//! HTTP routes of a node: the WebSocket endpoint, `/healthz` and `/metrics`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::server::App;
use crate::ws::{self, ConnectRequest};
use troupe_membership::placement::Verdict;

pub type Body = Full<Bytes>;

/// Path prefix of the WebSocket endpoint: `/ws/scenes/{scene_id}`.
pub const SCENES_PREFIX: &str = "/ws/scenes/";

/// Routes one request.
pub async fn handle(req: Request<Incoming>, app: Arc<App>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let response = match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => healthz(&app).await,
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            app.metrics.encode(),
        ),
        (&Method::GET, p) if p.starts_with(SCENES_PREFIX) => websocket(req, &app),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    };
    Ok(response)
}

async fn healthz(app: &App) -> Response<Body> {
    let store_ok = matches!(
        tokio::time::timeout(Duration::from_secs(2), app.store.ping()).await,
        Ok(Ok(()))
    );
    let body = serde_json::json!({
        "status": if store_ok { "ok" } else { "degraded" },
        "node": app.settings.node_id,
        "store": { "backend": app.store.backend(), "ok": store_ok },
        "rooms": app.rooms.len(),
        "epoch": app.placement.borrow().epoch(),
        "leader": app.cluster.leader(),
    });
    let status = if store_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    text(status, "application/json", format!("{body}\n"))
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Upgrades `/ws/scenes/{scene}` to a WebSocket. Token and scene problems are reported
/// with a close code after the upgrade, since browsers cannot read an HTTP refusal.
fn websocket(mut req: Request<Incoming>, app: &Arc<App>) -> Response<Body> {
    let headers = req.headers();
    let is_upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let (true, Some(key)) = (is_upgrade, key) else {
        // A plain GET (a tool, a curl) is sent to the owner, as the router would.
        let raw_scene = &req.uri().path()[SCENES_PREFIX.len()..];
        if let Some(scene) = scene_id(raw_scene) {
            if let Verdict::Elsewhere(route) = app.placement.borrow().verdict(app.settings.node_id, &scene) {
                let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
                let location = format!("{}{SCENES_PREFIX}{raw_scene}{query}", route.url);
                let mut response = text(
                    StatusCode::TEMPORARY_REDIRECT,
                    "text/plain",
                    format!(
                        "scene {scene} is served by node {} at {}\n",
                        route.node, route.url
                    ),
                );
                if let Ok(value) = HeaderValue::from_str(&location) {
                    response.headers_mut().insert(header::LOCATION, value);
                }
                response
                    .headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                return response;
            }
        }
        return text(
            StatusCode::UPGRADE_REQUIRED,
            "text/plain",
            "this endpoint speaks the y-websocket protocol over WebSocket\n".into(),
        );
    };
    if let Some(origin) = headers.get(header::ORIGIN) {
        let allowed = origin.to_str().is_ok_and(|o| app.settings.origins.allows(o));
        if !allowed {
            app.metrics.error("origin_refused");
            return text(StatusCode::FORBIDDEN, "text/plain", "origin not allowed\n".into());
        }
    }
    let query = parse_query(req.uri().query().unwrap_or(""));
    let request = ConnectRequest {
        scene: scene_id(&req.uri().path()[SCENES_PREFIX.len()..]),
        token: query.get("token").cloned().unwrap_or_default(),
        acks: query.get("acks").is_some_and(|v| v == "1" || v == "true"),
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let app = app.clone();
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => ws::serve(upgraded, request, app).await,
            Err(error) => tracing::debug!(%error, "websocket upgrade failed"),
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

use troupe_proto::scene::percent_decode;
pub use troupe_proto::scene::scene_id;

fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((percent_decode(k)?, percent_decode(&v.replace('+', " "))?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        let q = parse_query("token=a.b.c&acks=1&x");
        assert_eq!(q.get("token").map(String::as_str), Some("a.b.c"));
        assert_eq!(q.get("acks").map(String::as_str), Some("1"));
        assert_eq!(q.get("x").map(String::as_str), Some(""));
    }
}
