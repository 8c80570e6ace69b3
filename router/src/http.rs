//! The router's HTTP routes, all in one table ([`router`]):
//!
//! | Route | Answer |
//! |---|---|
//! | `GET /v1/route/{scene}[?unless=URL[&wait=MS]]` | `{"scene","node","url","epoch"}`, for any origin (CORS `*`); with `unless`, held until the owner is another than `URL`, or `MS` milliseconds, or 25 s (see [`route_watches`]) |
//! | `GET /ws/scenes/{scene}[?query]` | 307 to the owner's `/ws/scenes/{scene}[?query]` |
//! | `/v1/scenes/{scene}/presence` | who is in the scene (see [`presence`]) |
//! | `/v1/scenes/{scene}/content`, `…/versions`, `…/versions/{v}/content`, `…/restore` | the scene API, checked here and answered by the owner |
//! | `GET /v1/flags?scene=S&user=U` | what a client should do by the feature flags (CORS `*`) |
//! | `GET /v1/dev/token?user=NAME` | a token for anyone, when enabled (see [`dev_token`]) |
//! | `GET /healthz` | the membership the router answers from, 503 before it has one |
//! | `GET /metrics` | OpenMetrics text |
//! | `/nodes/{name}/…` (any method) | passed through to that node, with TROUPE_NODE_UPSTREAM (see [`passthrough`]) |
//!
//! Any other path under the API (see [`is_api_path`]), and any other method on an API
//! path, is a 404 JSON error; the rest are the demo page's files (see [`assets`]).
//!
//! Answers come from one snapshot of the membership, so a route and its epoch always agree.
//!
//! [`presence`]: crate::presence
//! [`passthrough`]: crate::passthrough
//! [`dev_token`]: crate::dev_token
//! [`assets`]: crate::assets

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::handler::Handler;
use axum::routing::{any, get, post, MethodRouter};
use axum::Router;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Response, StatusCode, Uri};
use serde_json::json;
use troupe_membership::Route;
use troupe_proto::scene::is_scene_id;
use troupe_proto::token::Verifier;

use crate::access::{self, Need};
use crate::assets::{self, WebDir};
use crate::dev_token::{self, DevTokens, TokenQuery};
use crate::follow;
use crate::metrics::{Metrics, Outcome};
use crate::presence::{self, PresenceReader};

pub type Body = Full<Bytes>;

/// `GET /ws/scenes/{scene}`: the nodes' WebSocket path, redirected as is.
pub const SCENES_PREFIX: &str = "/ws/scenes/";

const JSON: &str = "application/json";

/// Longest a route look-up with `?unless=` is held (below the idle limits of common proxies).
pub const ROUTE_WATCH: Duration = Duration::from_secs(25);

/// What every request may need.
pub struct Shared {
    pub latest: follow::Latest,
    pub metrics: Arc<Metrics>,
    pub presence: Option<Arc<PresenceReader>>,
    pub web_dir: Option<WebDir>,
    pub dev_tokens: Option<DevTokens>,
    /// Checks the tokens of scene-scoped REST requests (see [`crate::access`]).
    pub verifier: Option<Verifier>,
    /// What `/metrics` requires, if anything.
    pub metrics_token: Option<String>,
    /// Forwards content requests to the scenes' owners.
    pub content: crate::content::Forwarder,
    /// Pages of other origins allowed to call the content API (CORS); `None`: none.
    pub origins: Option<troupe_proto::origin::OriginPolicy>,
    /// Passes `/nodes/{name}/…` through to members; `None`: those paths are the page's.
    pub passthrough: Option<crate::passthrough::Passthrough>,
    /// Bounds the route look-ups held at once ([`route_watches`]).
    pub route_watches: Arc<tokio::sync::Semaphore>,
    /// Turns true when the router stops: held look-ups are answered then.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// The bound of [`Shared::route_watches`] for a router of at most `max_connections`:
/// three quarters of them, so that held look-ups (each keeps its connection, ~12 KiB of the
/// router's memory, measured) always leave room for new clients to ask. Beyond it a
/// look-up is answered at once, and the client asks again a little later.
pub fn route_watches(max_connections: usize) -> Arc<tokio::sync::Semaphore> {
    Arc::new(tokio::sync::Semaphore::new((max_connections / 4 * 3).max(1)))
}

type Ctx = State<Arc<Shared>>;

/// The scene id of a `{scene}` capture, checked (`None` if it breaks the rule, or is not
/// UTF-8 once decoded). A capture that is not one segment (`a/b`, or empty) breaks it too:
/// the routes capture the rest of the path for that reason.
type SceneParam = Result<Path<String>, PathRejection>;

fn scene_of(param: SceneParam) -> Option<String> {
    param.ok().map(|Path(scene)| scene).filter(|s| is_scene_id(s))
}

/// Every route of the router.
pub fn router(shared: Arc<Shared>) -> Router {
    let routes = Router::new();
    // Registered only when on, so that without it these paths are what they always were.
    let routes = if shared.passthrough.is_some() {
        routes.route("/nodes/{*path}", any(passthrough))
    } else {
        routes
    };
    routes
        // An empty id gets the same 400 as any bad one.
        .route("/v1/route/", get_only(route))
        .route("/v1/route/{*scene}", get_only(route))
        .route(SCENES_PREFIX, get_only(redirect))
        .route("/ws/scenes/{*scene}", get_only(redirect))
        .route("/v1/scenes/{scene}/presence", any(presence))
        .route(
            "/v1/scenes/{scene}/content",
            get(scene_api)
                .put(scene_api)
                .patch(scene_api)
                .options(content_preflight)
                .head(not_found)
                .fallback(not_found),
        )
        .route(
            "/v1/scenes/{scene}/versions",
            get(scene_api)
                .post(scene_api)
                .options(content_preflight)
                .head(not_found)
                .fallback(not_found),
        )
        .route(
            "/v1/scenes/{scene}/versions/{version}/content",
            get(scene_api)
                .options(content_preflight)
                .head(not_found)
                .fallback(not_found),
        )
        .route(
            "/v1/scenes/{scene}/restore",
            post(scene_api).options(content_preflight).fallback(not_found),
        )
        .route("/v1/flags", get_only(flags))
        .route(dev_token::PATH, get_only(dev_token))
        .route("/healthz", get_only(healthz))
        .route("/metrics", get_only(metrics))
        .fallback(fallback)
        .with_state(shared)
}

/// Other methods than GET (HEAD included) get the API's 404.
fn get_only<H, T>(handler: H) -> MethodRouter<Arc<Shared>>
where
    H: Handler<T, Arc<Shared>>,
    T: 'static,
{
    get(handler).head(not_found).fallback(not_found)
}

/// Whether a path belongs to the API rather than to the demo page's files: the API keeps
/// `/v1/…`, `/ws/…`, `/healthz` and `/metrics` whatever files the page has.
pub fn is_api_path(path: &str) -> bool {
    path.starts_with("/v1/") || path.starts_with("/ws/") || path == "/healthz" || path == "/metrics"
}

/// Unknown API paths get a JSON 404; the rest are the demo page's files.
async fn fallback(State(s): Ctx, method: Method, uri: Uri) -> Response<Body> {
    if is_api_path(uri.path()) {
        return not_found().await;
    }
    assets::answer(s.web_dir.as_ref(), &method, uri.path()).await
}

async fn not_found() -> Response<Body> {
    error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn healthz(State(s): Ctx) -> Response<Body> {
    let state = s.latest.borrow().clone();
    let (status, body) = match state.as_deref() {
        Some(s) => (
            StatusCode::OK,
            json!({
                "status": "ok",
                "epoch": s.view.epoch(),
                "version": s.view.version,
                "nodes": s.view.state.nodes.len(),
                "active": s.placement.active_nodes(),
                "age_ms": u64::try_from(s.age().as_millis()).unwrap_or(u64::MAX),
            }),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "status": "no_membership" }),
        ),
    };
    text(status, JSON, format!("{body}\n"))
}

async fn metrics(State(s): Ctx, headers: HeaderMap) -> Response<Body> {
    if let Some(token) = &s.metrics_token {
        let presented = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if !troupe_proto::token::has_static_bearer(presented, token) {
            return access::unauthorized("metrics need a token");
        }
    }
    text(
        StatusCode::OK,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        s.metrics.encode(),
    )
}

/// `?unless=URL&wait=MS` of a route look-up.
#[derive(Debug, serde::Deserialize)]
struct RouteQuery {
    unless: Option<String>,
    /// The longest the caller wants the answer held, in milliseconds (at most [`ROUTE_WATCH`]):
    /// a client between two reconnect attempts holds it for its pause.
    wait: Option<u64>,
}

/// `GET /v1/route/{scene}`: the owner as JSON, for any origin (the demo page asks from its
/// own; the answer is public anyway). With `?unless=URL` the answer waits until the owner
/// is another than `URL`, or `?wait=` milliseconds, or [`ROUTE_WATCH`]: a client connected
/// to that owner learns of a move at once, without an edit of its own — a paused or cut-off
/// owner cannot tell it — and a client waiting to reconnect to an owner that refused it
/// learns of the takeover the moment the router does.
async fn route(
    State(s): Ctx,
    scene: SceneParam,
    query: Result<Query<RouteQuery>, QueryRejection>,
) -> Response<Body> {
    let scene = scene_of(scene);
    if let (
        Some(scene),
        Ok(Query(RouteQuery {
            unless: Some(owner),
            wait,
        })),
    ) = (&scene, &query)
    {
        let hold = wait.map_or(ROUTE_WATCH, |ms| Duration::from_millis(ms).min(ROUTE_WATCH));
        if let Ok(_held) = s.route_watches.clone().try_acquire_owned() {
            wait_for_move(scene, owner, hold, &s).await;
        }
    }
    let mut response = match resolve(scene, &s) {
        Ok(route) => match serde_json::to_string(&route) {
            Ok(body) => {
                s.metrics.count(Outcome::Route);
                text(StatusCode::OK, JSON, body + "\n")
            }
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e.to_string()),
        },
        Err(refusal) => refusal.respond(&s.metrics),
    };
    response
        .headers_mut()
        .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

/// `GET /v1/flags?scene=S&user=U`.
#[derive(Debug, serde::Deserialize)]
struct FlagsQuery {
    scene: String,
    #[serde(default)]
    user: String,
}

/// `GET /v1/flags?scene=S&user=U`: what a client of the scene acting as the user should do
/// (`mode`: `live`, `read_only`, `autosave` or `off`), from the same replicated flags the
/// nodes enforce. Polled by clients to know when to switch modes.
async fn flags(State(s): Ctx, query: Result<Query<FlagsQuery>, QueryRejection>) -> Response<Body> {
    let mut response = match query {
        Ok(Query(q)) if is_scene_id(&q.scene) && q.user.len() <= 256 => match s.latest.borrow().as_ref() {
            Some(latest) => {
                let decision = latest.view.state.decide(&q.scene, &q.user);
                let body =
                    json!({ "scene": q.scene, "user": q.user, "flags": decision, "mode": decision.mode });
                no_store(text(StatusCode::OK, JSON, body.to_string() + "\n"))
            }
            None => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_membership",
                "the router has not heard from the cluster yet",
            ),
        },
        _ => error(
            StatusCode::BAD_REQUEST,
            "bad_query",
            "give ?scene=<scene id>&user=<user id>",
        ),
    };
    response
        .headers_mut()
        .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

/// `GET /ws/scenes/{scene}`: a 307 to the owner, so that clients which follow redirects
/// reach it in one step. Not cached: the owner changes with the epoch.
async fn redirect(State(s): Ctx, scene: SceneParam, uri: Uri) -> Response<Body> {
    let route = match resolve(scene_of(scene), &s) {
        Ok(route) => route,
        Err(refusal) => return refusal.respond(&s.metrics),
    };
    let Ok(location) = HeaderValue::from_str(&location(&route.url, uri.path(), uri.query())) else {
        // Only a node registered with an unprintable URL gets here.
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "bad_owner_url",
            &format!("node {} has a URL that cannot be sent in a header", route.node),
        );
    };
    s.metrics.count(Outcome::Redirect);
    let mut response = text(
        StatusCode::TEMPORARY_REDIRECT,
        "text/plain; charset=utf-8",
        format!(
            "scene {} is served by node {} at {} (epoch {})\n",
            route.scene, route.node, route.url, route.epoch
        ),
    );
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, location);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `/v1/scenes/{scene}/presence`, whatever the method (as it always was), for a token
/// that may read the scene.
async fn presence(State(s): Ctx, headers: HeaderMap, scene: SceneParam) -> Response<Body> {
    let Some(scene) = scene_of(scene) else {
        return presence::answer(None, None).await;
    };
    let latest = s.latest.borrow().clone();
    let state = latest.as_ref().map(|l| &l.view.state);
    if let Err(refused) = access::authorize(&headers, s.verifier.as_ref(), state, &scene, Need::Read) {
        return no_store(refused.response());
    }
    presence::answer(Some(&scene), s.presence.as_deref()).await
}

/// The scene API (`/v1/scenes/{scene}/content`, `…/versions`, `…/versions/{v}/content`,
/// `…/restore`): checked here (reading needs the scene, anything else an editor's role),
/// answered by the scene's owner. The body (at most the API's limit) is passed on as it came.
async fn scene_api(
    State(s): Ctx,
    method: Method,
    headers: HeaderMap,
    params: Result<Path<std::collections::HashMap<String, String>>, PathRejection>,
    uri: hyper::Uri,
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response<Body> {
    let scene = params.map(|Path(mut params)| Path(params.remove("scene").unwrap_or_default()));
    let Some(scene) = scene_of(scene) else {
        return no_store(error(StatusCode::NOT_FOUND, "bad_scene", "not a scene id"));
    };
    let latest = s.latest.borrow().clone();
    let state = latest.as_ref().map(|l| &l.view.state);
    let need = if method == Method::GET {
        Need::Read
    } else {
        Need::Write
    };
    if let Err(refused) = access::authorize(&headers, s.verifier.as_ref(), state, &scene, need) {
        return with_cors(no_store(refused.response()), &headers, &s);
    }
    let Ok(body) = body else {
        return with_cors(
            no_store(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "the body is larger than the content API takes",
            )),
            &headers,
            &s,
        );
    };
    let owner = match resolve(Some(scene), &s) {
        Ok(owner) => owner,
        Err(refusal) => return refusal.respond(&s.metrics),
    };
    let path = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let answer = s.content.forward(&owner.url, method, path, &headers, body).await;
    with_cors(answer, &headers, &s)
}

/// The origin of a page allowed to call the content API from another origin.
fn allowed_origin<'a>(headers: &'a HeaderMap, s: &Shared) -> Option<&'a HeaderValue> {
    let origin = headers.get(hyper::header::ORIGIN)?;
    let allowed = s.origins.as_ref()?.allows(origin.to_str().ok()?);
    allowed.then_some(origin)
}

/// Adds CORS headers for an allowed page's origin (none for any other).
fn with_cors(mut response: Response<Body>, headers: &HeaderMap, s: &Shared) -> Response<Body> {
    use hyper::header::{ACCESS_CONTROL_ALLOW_ORIGIN, VARY};
    if let Some(origin) = allowed_origin(headers, s) {
        response
            .headers_mut()
            .insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    }
    response
        .headers_mut()
        .insert(VARY, HeaderValue::from_static("Origin"));
    response
}

/// The browser's preflight for a content request with a token: allowed origins only.
async fn content_preflight(State(s): Ctx, headers: HeaderMap) -> Response<Body> {
    use hyper::header::{
        ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
        ACCESS_CONTROL_MAX_AGE, VARY,
    };
    let Some(origin) = allowed_origin(&headers, &s) else {
        return error(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this origin may not call the content API",
        );
    };
    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let h = response.headers_mut();
    h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    h.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, PUT, PATCH, POST"),
    );
    h.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type"),
    );
    h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    h.insert(VARY, HeaderValue::from_static("Origin"));
    response
}

/// `/nodes/{name}/…`, any method: passed through to node `{name}` if it is a member.
async fn passthrough(State(s): Ctx, request: axum::extract::Request) -> axum::response::Response {
    use axum::response::IntoResponse;
    match &s.passthrough {
        Some(passthrough) => passthrough.handle(&s.latest, request).await,
        None => not_found().await.into_response(),
    }
}

/// `GET /v1/dev/token?user=NAME`.
async fn dev_token(State(s): Ctx, query: Result<Query<TokenQuery>, QueryRejection>) -> Response<Body> {
    dev_token::answer(dev_token::user_of(query), s.dev_tokens.as_ref())
}

/// The owner's address for a request to `path` (`/ws/scenes/{scene}` as the client sent
/// it: still percent-encoded, already checked); the query is passed on as written, less
/// any token: a `Location` header is recorded by proxies and browsers, so the client
/// presents its token again to the owner.
pub fn location(owner_url: &str, path: &str, query: Option<&str>) -> String {
    let base = owner_url.trim_end_matches('/');
    let query = query
        .map(troupe_proto::token::query_without_token)
        .unwrap_or_default();
    if query.is_empty() {
        format!("{base}{path}")
    } else {
        format!("{base}{path}?{query}")
    }
}

/// Why a scene request gets no owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    BadScene,
    NoMembership,
    NoOwner,
}

impl Refusal {
    fn respond(self, metrics: &Metrics) -> Response<Body> {
        let (outcome, status, kind, message) = match self {
            Refusal::BadScene => (
                Outcome::Bad,
                StatusCode::BAD_REQUEST,
                "bad_scene",
                "a scene id is 1-128 bytes of letters, digits and -_.:~ (percent-encoded or not)",
            ),
            Refusal::NoMembership => (
                Outcome::Unavailable,
                StatusCode::SERVICE_UNAVAILABLE,
                "no_membership",
                "the router has not heard from the cluster yet",
            ),
            Refusal::NoOwner => (
                Outcome::Unavailable,
                StatusCode::SERVICE_UNAVAILABLE,
                "no_owner",
                "no node of the cluster is active",
            ),
        };
        metrics.count(outcome);
        error(status, kind, message)
    }
}

/// Returns once `scene`'s owner is another than `owner` (or it has none, or the router
/// lost its membership), or after `hold`.
async fn wait_for_move(scene: &str, owner: &str, hold: Duration, s: &Shared) {
    let mut latest = s.latest.clone();
    let mut stopping = s.stopping.clone();
    let deadline = tokio::time::Instant::now() + hold;
    loop {
        let moved = match latest.borrow_and_update().as_ref() {
            Some(state) => state
                .placement
                .route(scene)
                .is_none_or(|r| ws_base(&r.url) != ws_base(owner)),
            None => true,
        };
        if moved {
            return;
        }
        tokio::select! {
            changed = latest.changed() => if changed.is_err() { return },
            _ = stopping.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep_until(deadline) => return,
        }
    }
}

/// An owner's URL as clients compare them: `http(s)` read as `ws(s)`, no trailing slash
/// (the browser client turns the router's answer into that form).
fn ws_base(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let scheme = scheme.to_ascii_lowercase();
            let scheme = match scheme.as_str() {
                "http" => "ws",
                "https" => "wss",
                other => other,
            };
            format!("{scheme}://{rest}")
        }
        None => url.to_string(),
    }
}

/// The scene's owner in the latest membership (one snapshot per request).
fn resolve(scene: Option<String>, s: &Shared) -> Result<Route, Refusal> {
    let scene = scene.ok_or(Refusal::BadScene)?;
    let state = s.latest.borrow().clone();
    let state = state.ok_or(Refusal::NoMembership)?;
    state.placement.route(&scene).ok_or(Refusal::NoOwner)
}

pub(crate) fn error(status: StatusCode, kind: &str, message: &str) -> Response<Body> {
    let body = json!({ "error": kind, "message": message });
    text(status, JSON, format!("{body}\n"))
}

/// Marks an answer that must not linger in caches (tokens, refusals).
pub(crate) fn no_store(mut response: Response<Body>) -> Response<Body> {
    response.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    response
}

pub(crate) fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use axum::body::Body as AxumBody;
    use axum::response::Response as Answer;
    use hyper::Request;
    use tower::ServiceExt;
    use troupe_membership::state::{ClusterState, Command, NodeId};
    use troupe_membership::ClusterView;
    use troupe_proto::token::{Claims, Role, Signer};

    use std::time::Duration;

    use super::*;
    use crate::follow::RouterState;

    /// `n` active nodes at `ws://127.0.0.1:40NN`, epoch `n`.
    fn cluster(n: u64) -> ClusterState {
        let mut cluster = ClusterState::default();
        for id in 1..=n {
            cluster
                .apply(&Command::Register {
                    id: NodeId(id),
                    url: format!("ws://127.0.0.1:40{id:02}"),
                    rpc_addr: format!("127.0.0.1:41{id:02}"),
                })
                .unwrap();
            cluster.apply(&Command::Activate { id: NodeId(id) }).unwrap();
        }
        cluster
    }

    fn state_of(cluster: ClusterState) -> Arc<RouterState> {
        Arc::new(RouterState::new(ClusterView {
            version: 9,
            state: cluster,
            ..Default::default()
        }))
    }

    /// What the router answers with `state` as its latest membership (no Redis, no page).
    async fn request(
        req: Request<AxumBody>,
        state: Option<&Arc<RouterState>>,
        metrics: &Arc<Metrics>,
    ) -> Answer {
        let (_keep, latest) = tokio::sync::watch::channel(state.cloned());
        let (_running, stopping) = tokio::sync::watch::channel(false);
        let app = router(Arc::new(Shared {
            latest,
            metrics: metrics.clone(),
            presence: None,
            web_dir: None,
            dev_tokens: None,
            verifier: Some(Verifier::from_secret(TEST_SECRET, "troupe")),
            metrics_token: Some("scrape-me".into()),
            content: crate::content::Forwarder::default(),
            origins: Some(troupe_proto::origin::OriginPolicy::new(&["https://app.example".into()]).unwrap()),
            passthrough: None,
            route_watches: route_watches(20_000),
            stopping,
        }));
        app.oneshot(req).await.unwrap()
    }

    async fn get(uri: &str, state: Option<&Arc<RouterState>>, metrics: &Arc<Metrics>) -> Answer {
        request(Request::get(uri).body(AxumBody::empty()).unwrap(), state, metrics).await
    }

    fn new_metrics() -> Arc<Metrics> {
        Arc::new(Metrics::new())
    }

    async fn body(response: Answer) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    async fn json_body(response: Answer) -> serde_json::Value {
        serde_json::from_str(&body(response).await).unwrap()
    }

    /// The route look-up of `s1` held `?unless=` the owner at `unless`, `more` appended.
    fn route_unless_uri(unless: &str, more: &str) -> String {
        let unless = unless.replace(':', "%3A").replace('/', "%2F");
        format!("/v1/route/s1?unless={unless}{more}")
    }

    /// A router answering from `latest`, holding at most `watches` route look-ups.
    fn watching_router(
        latest: follow::Latest,
        stopping: tokio::sync::watch::Receiver<bool>,
        watches: Arc<tokio::sync::Semaphore>,
    ) -> Router {
        router(Arc::new(Shared {
            latest,
            metrics: new_metrics(),
            presence: None,
            web_dir: None,
            dev_tokens: None,
            verifier: None,
            metrics_token: None,
            content: crate::content::Forwarder::default(),
            origins: None,
            passthrough: None,
            route_watches: watches,
            stopping,
        }))
    }

    #[tokio::test]
    async fn route_look_ups_beyond_the_bound_are_answered_at_once() {
        let owner = state_of(cluster(3)).placement.route("s1").unwrap();
        let (_membership, latest) = tokio::sync::watch::channel(Some(state_of(cluster(3))));
        let (_running, stopping) = tokio::sync::watch::channel(false);
        // A router of 1 connection holds 1 look-up (three quarters, at least one).
        let app = watching_router(latest, stopping, route_watches(1));
        let uri = route_unless_uri(&owner.url, "");
        let ask = || {
            app.clone()
                .oneshot(Request::get(uri.clone()).body(AxumBody::empty()).unwrap())
        };
        let held = tokio::spawn(ask());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!held.is_finished());
        let beyond = tokio::time::timeout(Duration::from_secs(1), ask()).await;
        assert_eq!(
            json_body(beyond.unwrap().unwrap()).await["url"],
            owner.url.as_str()
        );
        held.abort();
    }

    #[tokio::test]
    async fn a_held_route_look_up_ends_after_the_wait_its_caller_asked_for() {
        let owner = state_of(cluster(3)).placement.route("s1").unwrap();
        let (_membership, latest) = tokio::sync::watch::channel(Some(state_of(cluster(3))));
        let (_running, stopping) = tokio::sync::watch::channel(false);
        let app = watching_router(latest, stopping, route_watches(20_000));
        let ask = |wait: &str| {
            let uri = route_unless_uri(&owner.url, &format!("&wait={wait}"));
            app.clone()
                .oneshot(Request::get(uri).body(AxumBody::empty()).unwrap())
        };
        let asked = tokio::time::Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(5), ask("300")).await;
        let held = asked.elapsed();
        assert_eq!(
            json_body(answer.unwrap().unwrap()).await["url"],
            owner.url.as_str()
        );
        assert!(held >= Duration::from_millis(300), "held {held:?}");
        // A wait that is not a number is a plain look-up.
        let answer = tokio::time::timeout(Duration::from_millis(200), ask("soon")).await;
        assert_eq!(
            json_body(answer.unwrap().unwrap()).await["url"],
            owner.url.as_str()
        );
    }

    #[tokio::test]
    async fn a_route_look_up_with_unless_waits_for_the_scene_to_move() {
        let before = cluster(3);
        let owner = state_of(before.clone()).placement.route("s1").unwrap();
        let (membership, latest) = tokio::sync::watch::channel(Some(state_of(before.clone())));
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let app = watching_router(latest, stopping, route_watches(20_000));
        let ask = |unless: &str| {
            let uri = route_unless_uri(unless, "");
            app.clone()
                .oneshot(Request::get(uri).body(AxumBody::empty()).unwrap())
        };
        assert_eq!(ws_base("HTTPS://a.example:443/"), "wss://a.example:443");
        assert_eq!(ws_base(&owner.url), ws_base(&format!("{}/", owner.url)));
        // Another owner than the one named: answered at once.
        let at_once = tokio::time::timeout(Duration::from_secs(1), ask("ws://elsewhere:1")).await;
        assert_eq!(
            json_body(at_once.unwrap().unwrap()).await["url"],
            owner.url.as_str()
        );
        // The owner named: held while the membership does not move the scene…
        let held = tokio::spawn(ask(&owner.url));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!held.is_finished(), "answered before the scene moved");
        let mut renamed = before.clone();
        renamed
            .apply(&Command::Register {
                id: NodeId(9),
                url: "ws://127.0.0.1:4009".into(),
                rpc_addr: "127.0.0.1:4109".into(),
            })
            .unwrap();
        membership.send_replace(Some(state_of(renamed)));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !held.is_finished(),
            "a change that leaves the owner in place answers nothing"
        );
        // …and answered with the new owner as soon as it does.
        let mut drained = before.clone();
        drained.apply(&Command::Drain { id: owner.node }).unwrap();
        membership.send_replace(Some(state_of(drained)));
        let answer = tokio::time::timeout(Duration::from_secs(1), held)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let moved = json_body(answer).await;
        assert_ne!(moved["url"], owner.url.as_str(), "{moved}");
        assert_eq!(moved["scene"], "s1");
        // A held look-up is answered when the router stops.
        let owner_now = moved["url"].as_str().unwrap().to_string();
        let held = tokio::spawn(ask(&owner_now));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!held.is_finished());
        stop.send_replace(true);
        let answer = tokio::time::timeout(Duration::from_secs(1), held)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(json_body(answer).await["url"], owner_now.as_str());
    }

    #[tokio::test]
    async fn scene_ids_follow_the_node_rule() {
        let state = state_of(cluster(3));
        let metrics = new_metrics();
        let max = "x".repeat(128);
        for ok in ["s1", "film%3As1", "A-b_c.d:e~f", "%41bc", max.as_str()] {
            let r = get(&format!("/v1/route/{ok}"), Some(&state), &metrics).await;
            assert_eq!(r.status(), StatusCode::OK, "{ok}");
        }
        let long = "x".repeat(129);
        for bad in [
            "",
            "a/b",
            "a%2Fb",
            "a%20b",
            "%zz",
            "%",
            "%4",
            "%e9",
            "a+b",
            "a,b",
            long.as_str(),
        ] {
            for prefix in ["/v1/route/", SCENES_PREFIX] {
                let r = get(&format!("{prefix}{bad}"), Some(&state), &metrics).await;
                assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{prefix}{bad}");
            }
        }
    }

    #[test]
    fn locations_keep_the_query_and_the_encoding() {
        assert_eq!(
            location("ws://h:1", "/ws/scenes/a%3Ab", None),
            "ws://h:1/ws/scenes/a%3Ab"
        );
        assert_eq!(
            location("ws://h:1", "/ws/scenes/s", Some("")),
            "ws://h:1/ws/scenes/s"
        );
        assert_eq!(
            location("wss://h/", "/ws/scenes/s", Some("token=a.b%2Bc&acks=1&x=%2F")),
            "wss://h/ws/scenes/s?acks=1&x=%2F",
            "a token is never copied into Location"
        );
        assert_eq!(
            location("wss://h/", "/ws/scenes/s", Some("token=a.b")),
            "wss://h/ws/scenes/s"
        );
    }

    #[tokio::test]
    async fn route_names_the_owner_for_any_origin() {
        let state = state_of(cluster(3));
        let metrics = new_metrics();
        let owner = state.placement.route("film:s1").unwrap();
        let r = get("/v1/route/film%3As1", Some(&state), &metrics).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(r.headers()[header::CONTENT_TYPE], JSON);
        let json = json_body(r).await;
        assert_eq!(
            json,
            json!({ "scene": "film:s1", "node": owner.node, "url": owner.url, "epoch": 3 })
        );
        // Scenes spread over the nodes.
        let owners: std::collections::BTreeSet<NodeId> = (0..64)
            .map(|i| state.placement.route(&format!("s{i}")).unwrap().node)
            .collect();
        assert_eq!(owners.len(), 3);
        assert!(metrics
            .encode()
            .contains("router_requests_total{kind=\"route\"} 1"));
    }

    #[tokio::test]
    async fn scenes_redirect_to_the_owner_as_sent() {
        let state = state_of(cluster(3));
        let metrics = new_metrics();
        let owner = state.placement.route("film:s1").unwrap();
        let r = get(
            "/ws/scenes/film%3As1?token=a.b%2Bc&acks=1",
            Some(&state),
            &metrics,
        )
        .await;
        assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(
            r.headers()[header::LOCATION],
            format!("{}/ws/scenes/film%3As1?acks=1", owner.url).as_str()
        );
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        let r = get("/ws/scenes/s1", Some(&state), &metrics).await;
        let owner = state.placement.route("s1").unwrap();
        assert_eq!(
            r.headers()[header::LOCATION],
            format!("{}/ws/scenes/s1", owner.url).as_str()
        );
        assert!(metrics
            .encode()
            .contains("router_requests_total{kind=\"redirect\"} 2"));
    }

    #[tokio::test]
    async fn refusals_say_why() {
        let metrics = new_metrics();
        let state = state_of(cluster(1));

        let r = get("/v1/route/a%2Fb", Some(&state), &metrics).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(json_body(r).await["error"], "bad_scene");

        for uri in ["/v1/route/s1", "/ws/scenes/s1?token=x"] {
            let r = get(uri, None, &metrics).await;
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{uri}");
            assert!(r.headers().get(header::LOCATION).is_none());
            assert_eq!(json_body(r).await["error"], "no_membership", "{uri}");
        }

        // Every node drained or down: the membership is known but owns nothing.
        let mut none_active = cluster(2);
        none_active.apply(&Command::MarkDown { id: NodeId(1) }).unwrap();
        none_active.apply(&Command::MarkDown { id: NodeId(2) }).unwrap();
        let empty = state_of(none_active);
        for uri in ["/v1/route/s1", "/ws/scenes/s1"] {
            let r = get(uri, Some(&empty), &metrics).await;
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{uri}");
            let json = json_body(r).await;
            assert_eq!(json["error"], "no_owner", "{uri}");
            assert!(json["message"].is_string());
        }
        let text = metrics.encode();
        assert!(text.contains("router_requests_total{kind=\"bad\"} 1"), "{text}");
        assert!(
            text.contains("router_requests_total{kind=\"unavailable\"} 4"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn presence_takes_any_method_and_the_scene_rule() {
        let metrics = new_metrics();
        let reader = bearer(&[("film:s1", Role::View)]);
        for method in [Method::GET, Method::POST] {
            let req = Request::builder()
                .method(method)
                .uri("/v1/scenes/film%3As1/presence")
                .header(header::AUTHORIZATION, &reader)
                .body(AxumBody::empty())
                .unwrap();
            let r = request(req, None, &metrics).await;
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(r.headers().get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
            assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
            assert_eq!(json_body(r).await["error"], "presence_unavailable");
        }
        for bad in ["a%2Fb", "a%20b", "%e9"] {
            let r = get(&format!("/v1/scenes/{bad}/presence"), None, &metrics).await;
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(json_body(r).await["error"], "bad_scene", "{bad}");
        }
    }

    const TEST_SECRET: &[u8] = b"router-test-secret-0123456789abcdef";

    /// An `Authorization` header value for a token with these grants.
    fn bearer(scenes: &[(&str, Role)]) -> String {
        let claims = Claims::grant(
            "ada@example.com",
            "troupe",
            scenes,
            std::time::Duration::from_secs(60),
        );
        format!(
            "Bearer {}",
            Signer::from_secret(TEST_SECRET).sign(&claims).unwrap()
        )
    }

    #[tokio::test]
    async fn presence_needs_a_token_that_may_read_the_scene() {
        let metrics = new_metrics();
        let ask = |auth: Option<String>| {
            let mut req = Request::get("/v1/scenes/s1/presence");
            if let Some(auth) = auth {
                req = req.header(header::AUTHORIZATION, auth);
            }
            req.body(AxumBody::empty()).unwrap()
        };
        let r = request(ask(None), None, &metrics).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let r = request(ask(Some("Bearer not-a-token".into())), None, &metrics).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let r = request(ask(Some(bearer(&[("s2", Role::Edit)]))), None, &metrics).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(json_body(r).await["error"], "forbidden");
        // A view grant reads; so does `*`. (No Redis here: readable, but unavailable.)
        for grant in [("s1", Role::View), ("*", Role::Edit)] {
            let r = request(ask(Some(bearer(&[grant]))), None, &metrics).await;
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{grant:?}");
        }
    }

    #[test]
    fn the_api_keeps_its_paths() {
        for api in [
            "/v1/route/s",
            "/v1/dev/token",
            "/v1/scenes/s/presence",
            "/ws/scenes/s",
            "/healthz",
            "/metrics",
        ] {
            assert!(is_api_path(api), "{api}");
        }
        for page in [
            "/",
            "/index.html",
            "/assets/app.js",
            "/v1",
            "/healthz.html",
            "/metrics/x",
            "/wsx",
        ] {
            assert!(!is_api_path(page), "{page}");
        }
    }

    #[tokio::test]
    async fn an_unprintable_owner_url_is_a_server_error() {
        let mut odd = ClusterState::default();
        odd.apply(&Command::Register {
            id: NodeId(1),
            url: "ws://h:1\u{1}".into(),
            rpc_addr: "h:2".into(),
        })
        .unwrap();
        odd.apply(&Command::Activate { id: NodeId(1) }).unwrap();
        let state = state_of(odd);
        let r = get("/ws/scenes/s1", Some(&state), &new_metrics()).await;
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(json_body(r).await["error"], "bad_owner_url");
    }

    #[tokio::test]
    async fn health_metrics_and_unknown_paths() {
        let metrics = new_metrics();
        let r = get("/healthz", None, &metrics).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(json_body(r).await, json!({ "status": "no_membership" }));

        let mut drained = cluster(3);
        drained.apply(&Command::Drain { id: NodeId(3) }).unwrap();
        let state = state_of(drained);
        let r = get("/healthz", Some(&state), &metrics).await;
        assert_eq!(r.status(), StatusCode::OK);
        let json = json_body(r).await;
        assert_eq!(json["status"], "ok");
        assert_eq!(json["epoch"], 4);
        assert_eq!(json["version"], 9);
        assert_eq!(json["nodes"], 3);
        assert_eq!(json["active"], 2);
        assert!(json["age_ms"].as_u64().unwrap() < 60_000);

        // With TROUPE_METRICS_TOKEN set, /metrics wants it.
        let r = get("/metrics", Some(&state), &metrics).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let wrong = Request::get("/metrics")
            .header(header::AUTHORIZATION, "Bearer scrape-you")
            .body(AxumBody::empty())
            .unwrap();
        assert_eq!(
            request(wrong, Some(&state), &metrics).await.status(),
            StatusCode::UNAUTHORIZED
        );
        let scrape = Request::get("/metrics")
            .header(header::AUTHORIZATION, "Bearer scrape-me")
            .body(AxumBody::empty())
            .unwrap();
        let r = request(scrape, Some(&state), &metrics).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(body(r).await.contains("# TYPE router_epoch gauge"));

        for uri in ["/", "/v1/route", "/ws/scenes", "/v1/routes/s1", "/healthz/x"] {
            assert_eq!(
                get(uri, Some(&state), &metrics).await.status(),
                StatusCode::NOT_FOUND,
                "{uri}"
            );
        }
        // Other methods on API paths, HEAD included, are unknown endpoints.
        for method in [Method::POST, Method::HEAD, Method::PUT] {
            for uri in [
                "/v1/route/s1",
                "/ws/scenes/s1",
                "/healthz",
                "/metrics",
                "/v1/dev/token",
            ] {
                let req = Request::builder()
                    .method(method.clone())
                    .uri(uri)
                    .body(AxumBody::empty())
                    .unwrap();
                let r = request(req, Some(&state), &metrics).await;
                assert_eq!(r.status(), StatusCode::NOT_FOUND, "{method} {uri}");
                assert_eq!(r.headers()[header::CONTENT_TYPE], JSON, "{method} {uri}");
            }
        }
        // Unknown API paths answer JSON; others are the (unbuilt) demo page's.
        let r = get("/v1/routes/s1", Some(&state), &metrics).await;
        assert_eq!(json_body(r).await["error"], "not_found");
        let r = get("/nothing.js", Some(&state), &metrics).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "text/plain; charset=utf-8");
    }
}
