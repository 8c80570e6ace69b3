//! HTTP routes of a node, in one table ([`router`]):
//!
//! | Route | Answer |
//! |---|---|
//! | `GET /ws/scenes/{scene}?token=JWT[&acks=1]` | WebSocket upgrade, then one connection (see [`ws`]); the token may instead come as the subprotocol `troupe.bearer.JWT` beside `troupe` |
//! | the same, without an upgrade | 307 to the scene's owner when it is another node, else 426 |
//! | `GET /v1/scenes/{scene}/content[?format=json\|text\|fountain]` | the scene's blocks (and P1's content version) as they are now, for a `Bearer` token that may read it; served by the owner only (421 elsewhere) |
//! | `PUT /v1/scenes/{scene}/content` `{"base_version": V, "blocks": [...]}` | an autosave made against P1 version V, merged into the live scene; answers the version that holds it (409 when it cannot be merged, naming the current version) |
//! | `PATCH /v1/scenes/{scene}/content` `{"base_version"?: V, "edits": [...]}` | block edits (insert, replace, delete) by positions in version V, or in the scene as it is now; merged the same way |
//! | `GET /healthz` | store, rooms, epoch and leader as JSON; 503 while the store does not answer |
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
use axum::routing::{get, MethodRouter};
use axum::Router;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use troupe_proto::scene::is_scene_id;

use crate::server::App;
use crate::ws::{self, ConnectRequest};
use troupe_membership::placement::Verdict;
use troupe_proto::token::Role;

/// Path prefix of the WebSocket endpoint: `/ws/scenes/{scene_id}`.
pub const SCENES_PREFIX: &str = "/ws/scenes/";

type Ctx = State<Arc<App>>;

/// Every route of the node's public port.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get_only(healthz))
        .route("/metrics", get_only(metrics))
        // The scene is the rest of the path, empty or with slashes: a bad id is told with
        // a close code after the upgrade, like any other.
        .route(SCENES_PREFIX, get_only(websocket))
        .route("/ws/scenes/{*scene}", get_only(websocket))
        .route(
            "/v1/scenes/{scene}/content",
            get(content)
                .put(change_content)
                .patch(change_content)
                .head(not_found)
                .fallback(not_found),
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

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[derive(Debug, Default, Deserialize)]
pub struct ContentQuery {
    pub format: Option<String>,
}

/// `GET /v1/scenes/{scene}/content`: the scene as it is now. The owner reads it from the
/// live room, loading the scene if it is not (as a viewer's connection would, so it is never
/// a stale copy and a scene nobody has is not brought into being).
async fn content(
    State(app): Ctx,
    scene: Result<Path<String>, PathRejection>,
    query: Result<Query<ContentQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let Some(scene) = scene.ok().map(|Path(s)| s).filter(|s| is_scene_id(s)) else {
        return json_error(StatusCode::NOT_FOUND, "bad_scene", "not a scene id");
    };
    let format = query
        .ok()
        .and_then(|Query(q)| q.format)
        .unwrap_or_else(|| "json".into());
    if !matches!(format.as_str(), "json" | "text" | "fountain") {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_format",
            "format is json, text or fountain",
        );
    }
    if let Err(refused) = content_access(&app, &headers, &scene, Role::View).await {
        return refused;
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    let room = app.rooms.get_or_start(&scene);
    let asked = room.tx.send(crate::room::RoomCmd::Read { reply }).await.is_ok();
    let blocks = match tokio::time::timeout(Duration::from_secs(10), answer).await {
        Ok(Ok(Ok(blocks))) if asked => blocks,
        Ok(Ok(Err(error))) => return json_error(StatusCode::CONFLICT, "not_blocks", &error),
        _ => {
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the scene is loading or moving; try again",
            )
        }
    };
    let mut response = match format.as_str() {
        "text" => text(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            crate::content::fountain::plain_text(&blocks),
        ),
        "fountain" => text(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            crate::content::fountain::fountain(&blocks),
        ),
        _ => {
            let version = app.store.p1_version(&scene).await.ok().flatten();
            let body =
                serde_json::json!({ "scene": scene, "version": version, "blocks": blocks }).to_string();
            text(StatusCode::OK, "application/json", body)
        }
    };
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn json_error(status: StatusCode, kind: &str, message: &str) -> Response {
    json_answer(status, serde_json::json!({ "error": kind, "message": message }))
}

fn json_answer(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response = text(status, "application/json", body.to_string());
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The checks every content request passes: a token that grants the scene (`need`: an
/// editor's role to change it), this node its owner, and a scene that exists (here or in
/// P1). A refusal is the answer to send.
async fn content_access(app: &App, headers: &HeaderMap, scene: &str, need: Role) -> Result<(), Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(troupe_proto::token::bearer);
    let Some(claims) = token.and_then(|t| app.settings.verifier.verify(t).ok()) else {
        return Err(json_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send a valid token as Authorization: Bearer <token>",
        ));
    };
    if app.revocations.borrow().refuses(&claims) {
        return Err(json_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "access revoked",
        ));
    }
    let role = claims.role_in(scene);
    if role.is_none() || (need == Role::Edit && role != Some(Role::Edit)) {
        return Err(json_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            if role.is_none() {
                "the token does not grant this scene"
            } else {
                "the token may only read this scene"
            },
        ));
    }
    let verdict = app.placement.borrow().verdict(app.settings.node_id, scene);
    match verdict {
        Verdict::Mine { .. } => {}
        Verdict::Elsewhere(route) => {
            return Err(json_error(
                StatusCode::MISDIRECTED_REQUEST,
                "moved",
                &format!("served by {}", route.url),
            ))
        }
        Verdict::NoOwner => {
            return Err(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_owner",
                "no node serves this scene yet",
            ))
        }
    }
    if !app.rooms.is_live(scene) {
        let exists = match app.store.lease(scene).await {
            Ok(Some(_)) => true,
            Ok(None) => matches!(app.store.p1_version(scene).await, Ok(Some(_)) | Err(_)),
            Err(_) => {
                return Err(json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the store does not answer",
                ))
            }
        };
        if !exists {
            return Err(json_error(
                StatusCode::NOT_FOUND,
                "no_such_scene",
                "no such scene",
            ));
        }
    }
    Ok(())
}

/// A `PUT` body: the whole scene, as saved against a P1 version.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    base_version: u64,
    blocks: Vec<crate::content::blocks::Block>,
}

/// A `PATCH` body: block edits against a P1 version, or against the scene as it is now.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    base_version: Option<u64>,
    edits: Vec<crate::room::BlockEdit>,
}

/// `PUT` and `PATCH /v1/scenes/{scene}/content`: a change merged into the live scene by its
/// owner (loaded if needed), answered once durable with the P1 version that holds it.
async fn change_content(
    State(app): Ctx,
    method: axum::http::Method,
    scene: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    use crate::room::{Change, MergeRefused, MergeRequest, RoomCmd};
    let Some(scene) = scene.ok().map(|Path(s)| s).filter(|s| is_scene_id(s)) else {
        return json_error(StatusCode::NOT_FOUND, "bad_scene", "not a scene id");
    };
    if let Err(refused) = content_access(&app, &headers, &scene, Role::Edit).await {
        return refused;
    }
    let Ok(body) = body else {
        return json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the body is too large",
        );
    };
    let parsed = if method == axum::http::Method::PUT {
        serde_json::from_slice::<PutBody>(&body).map(|b| (Some(b.base_version), Change::Blocks(b.blocks)))
    } else {
        serde_json::from_slice::<PatchBody>(&body).map(|b| (b.base_version, Change::Edits(b.edits)))
    };
    let (base_version, change) = match parsed {
        Ok(parsed) => parsed,
        Err(error) => return json_error(StatusCode::UNPROCESSABLE_ENTITY, "bad_body", &error.to_string()),
    };
    let base = match base_version {
        None => None,
        Some(version) => match app.store.p1_projection(&scene, version).await {
            Ok(Some(blocks)) => Some(blocks),
            Ok(None) => {
                let current = app.store.p1_version(&scene).await.ok().flatten();
                return json_answer(
                    StatusCode::CONFLICT,
                    serde_json::json!({
                        "error": "unknown_version",
                        "message": format!("version {version} of this scene is not known; read the scene again and redo the change"),
                        "version": current,
                    }),
                );
            }
            Err(error) => {
                return json_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &error.to_string())
            }
        },
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let room = app.rooms.get_or_start(&scene);
    let request = MergeRequest { base, change, reply };
    let asked = room.tx.send(RoomCmd::Merge(Box::new(request))).await.is_ok();
    match tokio::time::timeout(Duration::from_secs(15), answer).await {
        Ok(Ok(Ok(merged))) if asked => json_answer(
            StatusCode::OK,
            serde_json::json!({
                "scene": scene,
                "version": merged.version,
                "inserted": merged.outcome.inserted,
                "changed": merged.outcome.changed,
                "deleted": merged.outcome.deleted,
            }),
        ),
        Ok(Ok(Err(MergeRefused::Conflict { message, version }))) => json_answer(
            StatusCode::CONFLICT,
            serde_json::json!({ "error": "conflict", "message": message, "version": version }),
        ),
        Ok(Ok(Err(refused @ MergeRefused::BadEdit(_)))) => {
            json_error(StatusCode::UNPROCESSABLE_ENTITY, "bad_edit", &refused.to_string())
        }
        Ok(Ok(Err(refused @ MergeRefused::TooLarge))) => {
            json_error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", &refused.to_string())
        }
        _ => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the scene is loading or moving; try again (a change already merged is not merged twice)",
        ),
    }
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
    let request = ConnectRequest { scene, acks, token };
    // The handshake is ours so that `ws` keeps tokio-tungstenite's socket and its limits.
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
