//! `/v1/scenes/{scene}/content` (`GET`, `PUT`, `PATCH`): the content API, answered by the
//! scene's owner. The router checks the token (the same rule as the other scene endpoints:
//! reading needs the scene, changing it an editor's role), finds the owner in
//! the membership and forwards the request to it; a stale owner answers 421, which the
//! client sees as 503 "try again" once the router's view has moved on. An owner behind the
//! router's pass-through (`…/nodes/{name}`, see [`crate::passthrough`]) is called at its
//! upstream directly, not through the public host.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::http::{error, no_store, Body};
use crate::passthrough::{http_base, NodeUpstream};

/// Largest answer forwarded (a scene is at most a few tens of MiB).
const MAX_ANSWER: usize = 64 << 20;

/// How long the owner may take.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Pooled connections to the nodes' public ports.
#[derive(Clone)]
pub struct Forwarder {
    http: Client<HttpConnector, Full<Bytes>>,
    /// How pass-through owners (`…/nodes/{name}`) are reached; `None`: by their URL.
    upstream: Option<NodeUpstream>,
}

impl Default for Forwarder {
    fn default() -> Self {
        Forwarder::new(None)
    }
}

impl Forwarder {
    /// A forwarder that reaches pass-through owners at `upstream` (TROUPE_NODE_UPSTREAM).
    pub fn new(upstream: Option<NodeUpstream>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        Forwarder {
            http: Client::builder(TokioExecutor::new()).build(connector),
            upstream,
        }
    }

    /// Forwards `method path_and_query` and its body to the node whose WebSocket base is
    /// `owner_url` (reached as [`http_base`] says), with the request's `Authorization` and
    /// `Content-Type`.
    pub async fn forward(
        &self,
        owner_url: &str,
        method: Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Response<Body> {
        let Some(base) = http_base(owner_url, self.upstream.as_ref()) else {
            return no_store(error(
                StatusCode::BAD_GATEWAY,
                "owner_unreachable",
                "the scene's owner is reached over wss:// only; ask it directly",
            ));
        };
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{base}{path_and_query}"));
        for name in [header::AUTHORIZATION, header::CONTENT_TYPE] {
            if let Some(value) = headers.get(&name) {
                request = request.header(name, value);
            }
        }
        let Ok(request) = request.body(Full::new(body)) else {
            return no_store(error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "cannot forward this request",
            ));
        };
        let exchange = async {
            let response = self.http.request(request).await.ok()?;
            let (parts, body) = response.into_parts();
            let bytes = Limited::new(body, MAX_ANSWER).collect().await.ok()?.to_bytes();
            Some((parts, bytes))
        };
        match tokio::time::timeout(TIMEOUT, exchange).await {
            Ok(Some((parts, bytes))) if parts.status == StatusCode::MISDIRECTED_REQUEST => {
                let _ = bytes;
                no_store(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "moving",
                    "the scene is moving to another node; try again",
                ))
            }
            Ok(Some((parts, bytes))) => {
                let mut response = Response::new(Body::from(bytes));
                *response.status_mut() = parts.status;
                for name in [header::CONTENT_TYPE, header::CACHE_CONTROL] {
                    if let Some(value) = parts.headers.get(&name) {
                        response.headers_mut().insert(name, value.clone());
                    }
                }
                response
            }
            _ => {
                let mut refused = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "owner_unreachable",
                    "the scene's owner did not answer; try again",
                );
                refused
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                no_store(refused)
            }
        }
    }
}
