//! HTTP routes of a node, in one table ([`router`]):
//!
//! | Route | Answer |
//! |---|---|
//! | `GET /ws/scenes/{scene}?token=JWT[&acks=1]` | WebSocket upgrade, then one connection (see [`ws`]); the token may instead come as the subprotocol `troupe.bearer.JWT` beside `troupe` |
//! | the same, without an upgrade | 307 to the scene's owner when it is another node, else 426 |
//! | `GET /v1/scenes/{scene}/content[?format=json\|text\|fountain]` | the scene's blocks (and P1's content version) as they are now, for a `Bearer` token that may read it; served by the owner only (421 elsewhere) |
//! | `PUT /v1/scenes/{scene}/content` `{"base_version": V, "blocks": [...]}` | an autosave made against P1 version V, merged into the live scene; answers the version that holds it (409 when it cannot be merged, naming the current version) |
//! | `PATCH /v1/scenes/{scene}/content` `{"base_version"?: V, "edits": [...]}` | block edits (insert, replace, delete) by positions in version V, or in the scene as it is now; merged the same way |
//! | `GET /v1/scenes/{scene}/versions` | the scene's history, newest first (automatic, named and before-restore versions) |
//! | `POST /v1/scenes/{scene}/versions` `{"name": …}` | saves the scene as it is now as a named version (201, its number) |
//! | `GET /v1/scenes/{scene}/versions/{v}/content[?format=…]` | one version's blocks, text or Fountain |
//! | `POST /v1/scenes/{scene}/restore` `{"version": V}` or `{"from_p1": true}` | the live scene becomes that content through ordinary edits, with a notice to its editors; what it replaced is saved first |
//! | `GET /healthz` | store, rooms, epoch and leader as JSON; 503 while the store does not answer |
//! | `GET /readyz` | 200 when serving at the current epoch (a leader known, this node active on the ring, its placement caught up), else 503; JSON |
//! | `GET /livez` | 200 while the process serves HTTP (a liveness probe that a store outage does not fail) |
//! | `GET /metrics` | OpenMetrics text |
//!
//! Anything else, other methods included, is a plain `404 not found`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, Request, State};
use axum::handler::Handler;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use troupe_proto::scene::is_scene_id;

use crate::api;
use crate::server::App;
use crate::ws::{self, ConnectRequest};
use troupe_membership::placement::Verdict;

/// Path prefix of the WebSocket endpoint: `/ws/scenes/{scene_id}`.
pub const SCENES_PREFIX: &str = "/ws/scenes/";

type Ctx = State<Arc<App>>;

/// Every route of the node's public port.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get_only(healthz))
        .route("/readyz", get_only(readyz))
        .route("/livez", get_only(livez))
        .route("/metrics", get_only(metrics))
        // The scene is the rest of the path, empty or with slashes: a bad id is told with
        // a close code after the upgrade, like any other.
        .route(SCENES_PREFIX, get_only(websocket))
        .route("/ws/scenes/{*scene}", get_only(websocket))
        .route(
            "/v1/scenes/{scene}/content",
            get(api::content::get)
                .put(api::content::change)
                .patch(api::content::change)
                .head(not_found)
                .fallback(not_found),
        )
        .route(
            "/v1/scenes/{scene}/versions",
            get(api::history::list)
                .post(api::history::save)
                .head(not_found)
                .fallback(not_found),
        )
        .route(
            "/v1/scenes/{scene}/versions/{version}/content",
            get_only(api::history::content),
        )
        .route(
            "/v1/scenes/{scene}/restore",
            post(api::history::restore).fallback(not_found),
        )
        .fallback(not_found)
        .with_state(app)
}

/// Other methods than GET (HEAD included) get the usual 404.
fn get_only<H, T>(handler: H) -> MethodRouter<Arc<App>>
where
    H: Handler<T, Arc<App>>,
    T: 'static,
{
    get(handler).head(not_found).fallback(not_found)
}

async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "text/plain", "not found\n".into())
}

async fn metrics(State(app): Ctx, headers: HeaderMap) -> Response {
    if let Some(token) = &app.settings.metrics_token {
        let presented = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if !troupe_proto::token::has_static_bearer(presented, token) {
            let mut refused = text(
                StatusCode::UNAUTHORIZED,
                "text/plain",
                "metrics need a token\n".into(),
            );
            refused
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return refused;
        }
    }
    text(
        StatusCode::OK,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        app.metrics.encode(),
    )
}

async fn healthz(State(app): Ctx) -> Response {
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

async fn readyz(State(app): Ctx) -> Response {
    let readiness = crate::self_membership::readiness(&app.cluster, &app.placement);
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::to_string(&readiness).unwrap_or_default();
    text(status, "application/json", format!("{body}\n"))
}

async fn livez() -> Response {
    text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into())
}

pub(crate) fn text(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// The query of the WebSocket endpoint (other parameters are ignored).
#[derive(Debug, Default, Deserialize)]
pub struct ConnectQuery {
    /// The access token; stock y-websocket sends it as `params: { token }`.
    pub token: Option<String>,
    /// `1` (or `true`) asks for durable acks.
    pub acks: Option<String>,
}

/// The query of the WebSocket endpoint, from the raw query string (what follows `?`); one
/// that does not parse (a token given twice, say) carries nothing.
pub fn connect_query(raw: &str) -> ConnectQuery {
    format!("/?{raw}")
        .parse::<axum::http::Uri>()
        .ok()
        .and_then(|uri| Query::<ConnectQuery>::try_from_uri(&uri).ok())
        .map(|Query(query)| query)
        .unwrap_or_default()
}

impl ConnectQuery {
    fn wants_acks(&self) -> bool {
        matches!(self.acks.as_deref(), Some("1" | "true"))
    }
}

/// Upgrades `/ws/scenes/{scene}` to a WebSocket. Token and scene problems are reported
/// with a close code after the upgrade, since browsers cannot read an HTTP refusal; so
/// path and query never refuse the request here (a query that does not parse, such as a
/// token given twice, carries no token).
async fn websocket(
    State(app): Ctx,
    scene: Result<Path<String>, PathRejection>,
    mut req: Request,
) -> Response {
    // Decoded by the extractor; a capture that is not UTF-8 is no scene either.
    let scene = scene.ok().map(|Path(s)| s).filter(|s| is_scene_id(s));
    let headers = req.headers();
    let is_upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let (true, Some(key)) = (is_upgrade, key) else {
        return plain_get(&app, scene.as_deref(), &req);
    };
    if let Some(origin) = headers.get(header::ORIGIN) {
        let allowed = origin.to_str().is_ok_and(|o| app.settings.origins.allows(o));
        if !allowed {
            app.metrics.error("origin_refused");
            return text(StatusCode::FORBIDDEN, "text/plain", "origin not allowed\n".into());
        }
    }
    let query = connect_query(req.uri().query().unwrap_or(""));
    // The token may come in an offered subprotocol instead of the URL (browsers can set no
    // other header): `troupe, troupe.bearer.<token>`; the answer then selects `troupe`.
    let (selects_troupe, header_token) = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .map(troupe_proto::token::offered_protocols)
        .unwrap_or_default();
    let acks = query.wants_acks();
    let token = header_token
        .map(str::to_owned)
        .or(query.token)
        .unwrap_or_default();
    // Boxed: the connection's task keeps what it is given for as long as it lives.
    let request = Box::new(ConnectRequest { scene, acks, token });
    // The handshake is ours: after it, `ws` reads and writes the frames itself (`frame_reader`,
    // `frame_writer`), keeping no buffer between messages.
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => ws::serve(upgraded, request, app).await,
            Err(error) => tracing::debug!(%error, "websocket upgrade failed"),
        }
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    if selects_troupe {
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(troupe_proto::token::PROTOCOL),
        );
    }
    response
}

/// A plain GET (a tool, a curl) is sent to the owner, as the router would: the same path
/// and query as sent, on the owner's URL, less any token (the client presents it again).
fn plain_get(app: &App, scene: Option<&str>, req: &Request) -> Response {
    let verdict = scene.map(|scene| app.placement.borrow().verdict(app.settings.node_id, scene));
    if let (Some(scene), Some(Verdict::Elsewhere(route))) = (scene, verdict) {
        let uri = req.uri();
        let query = uri
            .query()
            .map(troupe_proto::token::query_without_token)
            .filter(|q| !q.is_empty())
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        let location = format!("{}{}{query}", route.url, uri.path());
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
    text(
        StatusCode::UPGRADE_REQUIRED,
        "text/plain",
        "this endpoint speaks the y-websocket protocol over WebSocket\n".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(uri: &str) -> ConnectQuery {
        connect_query(uri.split_once('?').map_or("", |(_, q)| q))
    }

    #[test]
    fn queries() {
        let q = query("/ws/scenes/s?token=a.b.c&acks=1&x");
        assert_eq!(q.token.as_deref(), Some("a.b.c"));
        assert!(q.wants_acks());
        assert!(query("/ws/scenes/s?acks=true").wants_acks());
        let q = query("/ws/scenes/s?acks=0&token=a%2Eb+c");
        assert!(!q.wants_acks());
        assert_eq!(q.token.as_deref(), Some("a.b c"));
        assert_eq!(query("/ws/scenes/s").token, None);
    }
}
