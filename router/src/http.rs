//! The router's HTTP routes: where a scene lives, a redirect to it, health and metrics.
//!
//! | Route | Answer |
//! |---|---|
//! | `GET /v1/route/{scene}` | `{"scene","node","url","epoch"}`, for any origin (CORS `*`) |
//! | `GET /ws/scenes/{scene}[?query]` | 307 to the owner's `/ws/scenes/{scene}[?query]` |
//! | `GET /healthz` | the membership the router answers from, 503 before it has one |
//! | `GET /metrics` | OpenMetrics text |
//!
//! Presence (`/v1/scenes/{scene}/presence`), dev tokens (`/v1/dev/token`) and the demo
//! page's files (any path outside the API, see [`is_api_path`]) have modules of their own.
//!
//! Answers come from one snapshot of the membership, so a route and its epoch always agree.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use troupe_membership::Route;
use troupe_proto::scene::scene_id;

use crate::follow::RouterState;
use crate::metrics::{Metrics, Outcome};

pub type Body = Full<Bytes>;

/// `GET /v1/route/{scene}`.
pub const ROUTE_PREFIX: &str = "/v1/route/";
/// `GET /ws/scenes/{scene}`: the nodes' WebSocket path, redirected as is.
pub const SCENES_PREFIX: &str = "/ws/scenes/";

const JSON: &str = "application/json";

/// Whether a path belongs to the API (answered by [`handle`] and its siblings) rather than
/// to the demo page's files: the API keeps `/v1/…`, `/ws/…`, `/healthz` and `/metrics`
/// whatever files the page has.
pub fn is_api_path(path: &str) -> bool {
    path.starts_with("/v1/") || path.starts_with("/ws/") || path == "/healthz" || path == "/metrics"
}

/// Answers one request from `state`, the latest membership (`None` before the first one
/// arrived). Reads only the method and URI, so it can be called without a network.
pub fn handle<B>(req: &Request<B>, state: Option<&RouterState>, metrics: &Metrics) -> Response<Body> {
    let uri = req.uri();
    match (req.method(), uri.path()) {
        (&Method::GET, "/healthz") => healthz(state),
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        (&Method::GET, path) if path.starts_with(ROUTE_PREFIX) => {
            let mut response = route(&path[ROUTE_PREFIX.len()..], state, metrics);
            // The demo page asks from its own origin; the answer is public anyway.
            response
                .headers_mut()
                .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
            response
        }
        (&Method::GET, path) if path.starts_with(SCENES_PREFIX) => {
            redirect(&path[SCENES_PREFIX.len()..], uri.query(), state, metrics)
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    }
}

/// `GET /v1/route/{scene}`: the owner as JSON.
fn route(raw_scene: &str, state: Option<&RouterState>, metrics: &Metrics) -> Response<Body> {
    match resolve(raw_scene, state) {
        Ok(route) => match serde_json::to_string(&route) {
            Ok(body) => {
                metrics.count(Outcome::Route);
                text(StatusCode::OK, JSON, body + "\n")
            }
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e.to_string()),
        },
        Err(refusal) => refusal.respond(metrics),
    }
}

/// `GET /ws/scenes/{scene}`: a 307 to the owner, so that clients which follow redirects
/// reach it in one step. Not cached: the owner changes with the epoch.
fn redirect(
    raw_scene: &str,
    query: Option<&str>,
    state: Option<&RouterState>,
    metrics: &Metrics,
) -> Response<Body> {
    let route = match resolve(raw_scene, state) {
        Ok(route) => route,
        Err(refusal) => return refusal.respond(metrics),
    };
    let Ok(location) = HeaderValue::from_str(&location(&route.url, raw_scene, query)) else {
        // Only a node registered with an unprintable URL gets here.
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "bad_owner_url",
            &format!("node {} has a URL that cannot be sent in a header", route.node),
        );
    };
    metrics.count(Outcome::Redirect);
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

/// The owner's address for a scene: `raw_scene` is the path segment as the client sent
/// it (still percent-encoded, already checked) and the query is passed on unchanged, so
/// tokens and flags reach the node exactly as written.
pub fn location(owner_url: &str, raw_scene: &str, query: Option<&str>) -> String {
    let base = owner_url.trim_end_matches('/');
    match query {
        Some(q) if !q.is_empty() => format!("{base}{SCENES_PREFIX}{raw_scene}?{q}"),
        _ => format!("{base}{SCENES_PREFIX}{raw_scene}"),
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

/// The scene's owner, with the same scene id rule as the nodes.
fn resolve(raw_scene: &str, state: Option<&RouterState>) -> Result<Route, Refusal> {
    let scene = scene_id(raw_scene).ok_or(Refusal::BadScene)?;
    let state = state.ok_or(Refusal::NoMembership)?;
    state.placement.route(&scene).ok_or(Refusal::NoOwner)
}

fn healthz(state: Option<&RouterState>) -> Response<Body> {
    let (status, body) = match state {
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
    use http_body_util::BodyExt;
    use troupe_membership::state::{ClusterState, Command, NodeId};
    use troupe_membership::ClusterView;

    use super::*;

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

    fn state_of(cluster: ClusterState) -> RouterState {
        RouterState::new(ClusterView {
            version: 9,
            state: cluster,
            ..Default::default()
        })
    }

    fn get(uri: &str, state: Option<&RouterState>, metrics: &Metrics) -> Response<Body> {
        handle(&Request::get(uri).body(()).unwrap(), state, metrics)
    }

    async fn body(response: Response<Body>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    async fn json_body(response: Response<Body>) -> serde_json::Value {
        serde_json::from_str(&body(response).await).unwrap()
    }

    #[test]
    fn scene_ids_follow_the_node_rule() {
        let state = state_of(cluster(3));
        let metrics = Metrics::new();
        let max = "x".repeat(128);
        for ok in ["s1", "film%3As1", "A-b_c.d:e~f", "%41bc", max.as_str()] {
            let r = get(&format!("/v1/route/{ok}"), Some(&state), &metrics);
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
            for prefix in [ROUTE_PREFIX, SCENES_PREFIX] {
                let r = get(&format!("{prefix}{bad}"), Some(&state), &metrics);
                assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{prefix}{bad}");
            }
        }
    }

    #[test]
    fn locations_keep_the_query_and_the_encoding() {
        assert_eq!(location("ws://h:1", "a%3Ab", None), "ws://h:1/ws/scenes/a%3Ab");
        assert_eq!(location("ws://h:1", "s", Some("")), "ws://h:1/ws/scenes/s");
        assert_eq!(
            location("wss://h/", "s", Some("token=a.b%2Bc&acks=1")),
            "wss://h/ws/scenes/s?token=a.b%2Bc&acks=1"
        );
    }

    #[tokio::test]
    async fn route_names_the_owner_for_any_origin() {
        let state = state_of(cluster(3));
        let metrics = Metrics::new();
        let owner = state.placement.route("film:s1").unwrap();
        let r = get("/v1/route/film%3As1", Some(&state), &metrics);
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
        let metrics = Metrics::new();
        let owner = state.placement.route("film:s1").unwrap();
        let r = get(
            "/ws/scenes/film%3As1?token=a.b%2Bc&acks=1",
            Some(&state),
            &metrics,
        );
        assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(
            r.headers()[header::LOCATION],
            format!("{}/ws/scenes/film%3As1?token=a.b%2Bc&acks=1", owner.url).as_str()
        );
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        let r = get("/ws/scenes/s1", Some(&state), &metrics);
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
        let metrics = Metrics::new();
        let state = state_of(cluster(1));

        let r = get("/v1/route/a%2Fb", Some(&state), &metrics);
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(json_body(r).await["error"], "bad_scene");

        for uri in ["/v1/route/s1", "/ws/scenes/s1?token=x"] {
            let r = get(uri, None, &metrics);
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
            let r = get(uri, Some(&empty), &metrics);
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
        let r = get("/ws/scenes/s1", Some(&state), &Metrics::new());
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(json_body(r).await["error"], "bad_owner_url");
    }

    #[tokio::test]
    async fn health_metrics_and_unknown_paths() {
        let metrics = Metrics::new();
        let r = get("/healthz", None, &metrics);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(json_body(r).await, json!({ "status": "no_membership" }));

        let mut drained = cluster(3);
        drained.apply(&Command::Drain { id: NodeId(3) }).unwrap();
        let state = state_of(drained);
        let r = get("/healthz", Some(&state), &metrics);
        assert_eq!(r.status(), StatusCode::OK);
        let json = json_body(r).await;
        assert_eq!(json["status"], "ok");
        assert_eq!(json["epoch"], 4);
        assert_eq!(json["version"], 9);
        assert_eq!(json["nodes"], 3);
        assert_eq!(json["active"], 2);
        assert!(json["age_ms"].as_u64().unwrap() < 60_000);

        let r = get("/metrics", Some(&state), &metrics);
        assert_eq!(r.status(), StatusCode::OK);
        assert!(body(r).await.contains("# TYPE router_epoch gauge"));

        for uri in ["/", "/v1/route", "/ws/scenes", "/v1/routes/s1", "/healthz/x"] {
            assert_eq!(
                get(uri, Some(&state), &metrics).status(),
                StatusCode::NOT_FOUND,
                "{uri}"
            );
        }
        let post = Request::post("/v1/route/s1").body(()).unwrap();
        assert_eq!(
            handle(&post, Some(&state), &metrics).status(),
            StatusCode::NOT_FOUND
        );
    }
}
