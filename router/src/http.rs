//! The router's routes: where a scene lives, redirects to it, health and metrics.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Response, StatusCode};
use serde_json::json;
use troupe_membership::scene::scene_id;

use crate::follow::RouterState;
use crate::metrics::Metrics;

pub type Body = Full<Bytes>;

const ROUTE_PREFIX: &str = "/v1/route/";
const SCENES_PREFIX: &str = "/ws/scenes/";

/// Answers one request from the latest membership (`None` before the first one arrived).
pub fn handle(
    method: &Method,
    path: &str,
    query: Option<&str>,
    state: Option<&RouterState>,
    metrics: &Metrics,
) -> Result<Response<Body>, Infallible> {
    let response = match (method, path) {
        (&Method::GET, "/healthz") => healthz(state),
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        (&Method::GET, p) if p.starts_with(ROUTE_PREFIX) => {
            let mut response = route(&p[ROUTE_PREFIX.len()..], state, metrics);
            response
                .headers_mut()
                .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
            response
        }
        (&Method::GET, p) if p.starts_with(SCENES_PREFIX) => {
            redirect(&p[SCENES_PREFIX.len()..], query, state, metrics)
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint".into()),
    };
    Ok(response)
}

/// `GET /v1/route/{scene}`: `{scene, node, url, epoch}`.
fn route(raw: &str, state: Option<&RouterState>, metrics: &Metrics) -> Response<Body> {
    match resolve(raw, state) {
        Ok(route) => {
            metrics.count("route");
            json_response(StatusCode::OK, &json!(route))
        }
        Err(refusal) => refusal.respond(metrics),
    }
}

/// `GET /ws/scenes/{scene}`: 307 to the owner, query kept, path segment kept as sent.
fn redirect(
    raw: &str,
    query: Option<&str>,
    state: Option<&RouterState>,
    metrics: &Metrics,
) -> Response<Body> {
    match resolve(raw, state) {
        Ok(route) => {
            metrics.count("redirect");
            let location = location(&route.url, raw, query);
            let mut response = text(
                StatusCode::TEMPORARY_REDIRECT,
                "text/plain",
                format!(
                    "scene {} is served by node {} at {}\n",
                    route.scene, route.node, route.url
                ),
            );
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(refusal) => refusal.respond(metrics),
    }
}

/// The owner's URL for a scene path segment (as sent, still percent-encoded).
pub fn location(owner_url: &str, raw_scene: &str, query: Option<&str>) -> String {
    let query = query
        .filter(|q| !q.is_empty())
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    format!("{owner_url}{SCENES_PREFIX}{raw_scene}{query}")
}

enum Refusal {
    BadScene,
    NoMembership,
    NoOwner,
}

impl Refusal {
    fn respond(self, metrics: &Metrics) -> Response<Body> {
        match self {
            Refusal::BadScene => {
                metrics.count("bad");
                error(
                    StatusCode::BAD_REQUEST,
                    "bad_scene",
                    "a scene id is 1-128 characters of letters, digits and -_.:~".into(),
                )
            }
            Refusal::NoMembership => {
                metrics.count("unavailable");
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no_membership",
                    "the router has not heard from the cluster yet".into(),
                )
            }
            Refusal::NoOwner => {
                metrics.count("unavailable");
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no_owner",
                    "no node is active in the cluster".into(),
                )
            }
        }
    }
}

fn resolve(raw: &str, state: Option<&RouterState>) -> Result<troupe_membership::Route, Refusal> {
    let scene = scene_id(raw).ok_or(Refusal::BadScene)?;
    let state = state.ok_or(Refusal::NoMembership)?;
    state.placement.route(&scene).ok_or(Refusal::NoOwner)
}

fn healthz(state: Option<&RouterState>) -> Response<Body> {
    match state {
        Some(s) => json_response(
            StatusCode::OK,
            &json!({
                "status": "ok",
                "epoch": s.view.epoch(),
                "version": s.view.version,
                "nodes": s.view.state.nodes.len(),
                "active": s.placement.active_nodes(),
                "age_ms": s.received.elapsed().as_millis() as u64,
            }),
        ),
        None => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "status": "no_membership" }),
        ),
    }
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    text(status, "application/json", format!("{value}\n"))
}

fn error(status: StatusCode, kind: &str, message: String) -> Response<Body> {
    json_response(status, &json!({ "error": kind, "message": message }))
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Shared by connections: the metrics and the latest membership.
pub struct Shared {
    pub metrics: Arc<Metrics>,
    pub latest: crate::follow::Latest,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use http_body_util::BodyExt;
    use troupe_membership::state::{ClusterState, Command};
    use troupe_membership::ClusterView;

    use super::*;

    fn state(n: u64) -> RouterState {
        let mut cluster = ClusterState::default();
        for id in 1..=n {
            cluster
                .apply(&Command::Register {
                    id,
                    url: format!("ws://127.0.0.1:40{id:02}"),
                    rpc_addr: format!("127.0.0.1:41{id:02}"),
                })
                .unwrap();
            cluster.apply(&Command::Activate { id }).unwrap();
        }
        RouterState::new(ClusterView {
            version: 9,
            state: cluster,
            ..Default::default()
        })
    }

    async fn body(response: Response<Body>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn routes_and_redirects_name_the_owner() {
        let state = state(3);
        let metrics = Metrics::new();
        let owner = state.placement.route("film:s1").unwrap();
        let r = handle(&Method::GET, "/v1/route/film%3As1", None, Some(&state), &metrics).unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        let json: serde_json::Value = serde_json::from_str(&body(r).await).unwrap();
        assert_eq!(json["node"], owner.node);
        assert_eq!(json["url"], owner.url);
        assert_eq!(json["epoch"], 3);
        assert_eq!(json["scene"], "film:s1");

        let r = handle(
            &Method::GET,
            "/ws/scenes/film%3As1",
            Some("token=a.b&acks=1"),
            Some(&state),
            &metrics,
        )
        .unwrap();
        assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(
            r.headers()[header::LOCATION],
            format!("{}/ws/scenes/film%3As1?token=a.b&acks=1", owner.url).as_str()
        );
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        assert!(metrics
            .encode()
            .contains("router_requests_total{kind=\"redirect\"} 1"));
    }

    #[tokio::test]
    async fn bad_scenes_and_missing_membership_get_clear_answers() {
        let metrics = Metrics::new();
        let state = state(1);
        for path in ["/v1/route/a%2Fb", "/v1/route/", "/ws/scenes/%zz"] {
            let r = handle(&Method::GET, path, None, Some(&state), &metrics).unwrap();
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{path}");
        }
        let r = handle(&Method::GET, "/v1/route/s1", None, None, &metrics).unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(body(r).await.contains("no_membership"));
        let empty = RouterState::new(ClusterView::default());
        let r = handle(&Method::GET, "/ws/scenes/s1", None, Some(&empty), &metrics).unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(body(r).await.contains("no_owner"));
        let r = handle(&Method::GET, "/healthz", None, None, &metrics).unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let r = handle(&Method::GET, "/healthz", None, Some(&state), &metrics).unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let r = handle(&Method::POST, "/v1/route/s1", None, Some(&state), &metrics).unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn locations_keep_the_query_and_the_encoding() {
        assert_eq!(location("ws://h:1", "a%3Ab", None), "ws://h:1/ws/scenes/a%3Ab");
        assert_eq!(location("ws://h:1", "s", Some("")), "ws://h:1/ws/scenes/s");
        assert_eq!(
            location("wss://h", "s", Some("token=x")),
            "wss://h/ws/scenes/s?token=x"
        );
    }
}
