//! `/nodes/{name}/…`: the router passes requests through to a node's public port, for
//! clusters whose nodes have no address a browser can reach (Kubernetes pods behind one
//! Ingress).
//!
//! Browsers still connect "straight to the owner": each node announces a public URL
//! (`TROUPE_PUBLIC_URL`, what the membership stores and `GET /v1/route/{scene}` answers) of
//! the form `wss://troupe.example.com/nodes/troupe-node-2`; the Ingress sends every path to
//! the routers, and a router set with `TROUPE_NODE_UPSTREAM=http://{name}.troupe-node:4000`
//! forwards `/nodes/troupe-node-2/ws/scenes/s1?token=…` to
//! `http://troupe-node-2.troupe-node:4000/ws/scenes/s1?token=…`: method, headers and body
//! as they came (bodies within the router's `TROUPE_MAX_BODY_BYTES`), the answer as the
//! node gave it. A WebSocket handshake the node accepts (`101`) upgrades both connections
//! and the router copies bytes both ways until either side closes; it never reads the
//! frames. Only a current member is reached — a node of the followed membership whose URL's
//! path is exactly `/nodes/{name}` — so the router is no open proxy: any other name is a
//! 404 and nothing is connected to, and so is any path of a member other than its client
//! endpoints (`/ws/scenes/…`, `/v1/scenes/…`): a node's metrics and health stay inside the
//! cluster. Tokens are the node's to check, as for a direct request. A node that cannot be
//! reached within 2 s is a 502.
//!
//! The content API reaches such owners the same way ([`http_base`] is the one place a
//! node's URL becomes an address the router calls), never through the public host.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body as AxumBody;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http_body_util::{LengthLimitError, Limited};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::follow::Latest;
use crate::http::{error, no_store, SCENES_PREFIX};
use crate::metrics::Metrics;

/// The path prefix of a pass-through URL: `/nodes/{name}`.
pub const PREFIX: &str = "/nodes/";

/// What stands for a node's name in `TROUPE_NODE_UPSTREAM`.
pub const NAME: &str = "{name}";

/// Longest a node may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest a node may take to answer a request's head (its body then streams).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// `TROUPE_NODE_UPSTREAM`: how the router reaches a node's public port from its name, e.g.
/// `http://{name}.troupe-node:4000`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeUpstream {
    template: String,
}

impl NodeUpstream {
    /// A checked template, or one line naming the setting.
    pub fn parse(template: &str) -> Result<NodeUpstream, String> {
        let template = template.trim();
        let bad = |why: &str| {
            Err(format!(
                "TROUPE_NODE_UPSTREAM {template:?} {why}, e.g. http://{{name}}.troupe-node:4000"
            ))
        };
        if !template.starts_with("http://") {
            return bad("must start with http:// (the nodes' public port inside the cluster)");
        }
        if !template.contains(NAME) {
            return bad("must contain {name} (the node's name, from its URL's /nodes/{name})");
        }
        let upstream = NodeUpstream {
            template: template.trim_end_matches('/').to_string(),
        };
        let sample = upstream.base("troupe-node-0");
        let fits = sample.parse::<Uri>().is_ok_and(|uri| {
            let has_port = uri.authority().is_some_and(|a| {
                let after_host = a.as_str().rsplit(']').next().unwrap_or_default();
                !after_host.contains(':') || a.port_u16().is_some()
            });
            uri.host().is_some_and(|h| !h.is_empty())
                && has_port
                && uri.query().is_none()
                && !sample.contains('#')
        });
        if fits {
            Ok(upstream)
        } else {
            bad("must be an http://host[:port] URL once {name} is filled in")
        }
    }

    /// The base URL of node `name` (no trailing slash).
    pub fn base(&self, name: &str) -> String {
        self.template.replace(NAME, name)
    }
}

/// Whether `name` is a DNS label: `[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?`.
pub fn is_node_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let inner = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            bytes.len() <= 63 && inner(first) && inner(last) && bytes.iter().all(|b| inner(b) || *b == b'-')
        }
        _ => false,
    }
}

/// The `{name}` of a pass-through node URL: a `ws://` or `wss://` URL whose path is exactly
/// `/nodes/{name}` (a trailing slash aside), `{name}` being a DNS label.
pub fn pass_through_name(node_url: &str) -> Option<&str> {
    let rest = node_url
        .strip_prefix("wss://")
        .or_else(|| node_url.strip_prefix("ws://"))?;
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let path = &rest[rest.find('/')?..];
    let name = path.strip_prefix(PREFIX)?;
    let name = name.strip_suffix('/').unwrap_or(name);
    is_node_name(name).then_some(name)
}

/// The HTTP base (no trailing slash) the router calls node `node_url` at: the upstream of
/// a pass-through URL when `TROUPE_NODE_UPSTREAM` is set, else the `ws://` URL as
/// `http://`; `None` for a `wss://` URL it cannot reach (the router speaks no TLS to nodes'
/// public ports).
pub fn http_base(node_url: &str, upstream: Option<&NodeUpstream>) -> Option<String> {
    if let (Some(upstream), Some(name)) = (upstream, pass_through_name(node_url)) {
        return Some(upstream.base(name));
    }
    node_url
        .strip_prefix("ws://")
        .map(|rest| format!("http://{}", rest.trim_end_matches('/')))
}

/// What a pass-through request got (the `outcome` label of
/// `router_passthrough_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The node answered (other than a WebSocket upgrade).
    Forwarded,
    /// The node accepted a WebSocket; bytes are copied both ways.
    Upgraded,
    /// Not a member's name: 404, nothing connected.
    UnknownNode,
    /// The node could not be reached or did not answer: 502.
    Unreachable,
    /// The request's body was over the router's limit: 413.
    TooLarge,
    /// Both sides answered the upgrade but one connection could not be taken over.
    UpgradeFailed,
    /// A member's path that is not for clients (`/metrics`, `/healthz`, …): 404.
    NotPassed,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Forwarded,
        Outcome::Upgraded,
        Outcome::UnknownNode,
        Outcome::Unreachable,
        Outcome::TooLarge,
        Outcome::UpgradeFailed,
        Outcome::NotPassed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::Upgraded => "upgraded",
            Outcome::UnknownNode => "unknown_node",
            Outcome::Unreachable => "unreachable",
            Outcome::TooLarge => "too_large",
            Outcome::UpgradeFailed => "upgrade_failed",
            Outcome::NotPassed => "not_passed",
        }
    }
}

/// Passes `/nodes/{name}/…` through to the members' public ports.
#[derive(Clone)]
pub struct Passthrough {
    upstream: NodeUpstream,
    http: Client<HttpConnector, Limited<AxumBody>>,
    max_body: usize,
    metrics: Arc<Metrics>,
}

impl Passthrough {
    /// `max_body`: the largest request body passed on (the port's `TROUPE_MAX_BODY_BYTES`).
    pub fn new(upstream: NodeUpstream, max_body: u64, metrics: Arc<Metrics>) -> Passthrough {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        Passthrough {
            upstream,
            http: Client::builder(TokioExecutor::new()).build(connector),
            max_body: usize::try_from(max_body).unwrap_or(usize::MAX),
            metrics,
        }
    }

    /// Answers `request`, whose path starts with [`PREFIX`], from node `{name}` if it is a
    /// member of the `latest` membership.
    pub async fn handle(&self, latest: &Latest, mut request: Request) -> Response {
        let Some((name, rest, target)) = self.target(latest, request.uri()) else {
            return self.unknown_node();
        };
        if !for_clients(rest) {
            self.count(Outcome::NotPassed);
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                "only a node's scene endpoints are reachable through the router",
            )
            .into_response();
        }
        let Ok(target) = target.parse::<Uri>() else {
            return no_store(error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "cannot pass this path on",
            ))
            .into_response();
        };
        let upgrade = wants_upgrade(request.headers());
        // Taken now: the request itself goes on to the node.
        let client_side = upgrade.then(|| hyper::upgrade::on(&mut request));

        let (parts, body) = request.into_parts();
        let mut forwarded = hyper::Request::new(Limited::new(body, self.max_body));
        *forwarded.method_mut() = parts.method;
        *forwarded.uri_mut() = target;
        copy_end_to_end(&parts.headers, forwarded.headers_mut());
        if upgrade {
            keep_upgrade(&parts.headers, forwarded.headers_mut());
        }

        let answer = match tokio::time::timeout(ANSWER_TIMEOUT, self.http.request(forwarded)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) if over_limit(&e) => {
                self.count(Outcome::TooLarge);
                return no_store(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    "the body is larger than this router passes on",
                ))
                .into_response();
            }
            failed => {
                if let Ok(Err(e)) = failed {
                    tracing::debug!(node = %name, error = %e, "pass-through failed");
                }
                return self.unreachable();
            }
        };

        match client_side {
            Some(client_side) if answer.status() == StatusCode::SWITCHING_PROTOCOLS => {
                self.splice(client_side, answer)
            }
            _ => {
                let (parts, body) = answer.into_parts();
                let mut response = Response::new(AxumBody::new(body));
                *response.status_mut() = parts.status;
                copy_end_to_end(&parts.headers, response.headers_mut());
                self.count(Outcome::Forwarded);
                response
            }
        }
    }

    /// The node's name, the path asked of it and the URL to ask it at, if `uri` names a
    /// member of the `latest` membership.
    fn target<'u>(&self, latest: &Latest, uri: &'u Uri) -> Option<(String, &'u str, String)> {
        let (name, rest) = split(uri.path())?;
        let member = latest.borrow().as_ref().is_some_and(|state| {
            state
                .view
                .state
                .nodes
                .values()
                .any(|node| pass_through_name(&node.url) == Some(name))
        });
        if !member {
            return None;
        }
        let base = self.upstream.base(name);
        let target = match uri.query() {
            Some(query) => format!("{base}{rest}?{query}"),
            None => format!("{base}{rest}"),
        };
        Some((name.to_string(), rest, target))
    }

    /// Answers the client's handshake with the node's `101`, then joins both connections
    /// once hyper hands them over.
    fn splice(
        &self,
        client_side: hyper::upgrade::OnUpgrade,
        mut answer: hyper::Response<hyper::body::Incoming>,
    ) -> Response {
        let node_side = hyper::upgrade::on(&mut answer);
        let mut response = Response::new(AxumBody::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        copy_end_to_end(answer.headers(), response.headers_mut());
        keep_upgrade(answer.headers(), response.headers_mut());
        self.count(Outcome::Upgraded);
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let (client, node) = tokio::join!(client_side, node_side);
            let (Ok(client), Ok(node)) = (client, node) else {
                metrics.passthrough(Outcome::UpgradeFailed);
                return;
            };
            let _open = Open::new(&metrics);
            let (mut client, mut node) = (TokioIo::new(client), TokioIo::new(node));
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut node).await {
                tracing::debug!(error = %e, "pass-through connection ended");
            }
        });
        response
    }

    fn count(&self, outcome: Outcome) {
        self.metrics.passthrough(outcome);
    }

    fn unknown_node(&self) -> Response {
        self.count(Outcome::UnknownNode);
        error(StatusCode::NOT_FOUND, "not_found", "no such node in the cluster").into_response()
    }

    fn unreachable(&self) -> Response {
        self.count(Outcome::Unreachable);
        no_store(error(
            StatusCode::BAD_GATEWAY,
            "node_unreachable",
            "the node did not answer; try again",
        ))
        .into_response()
    }
}

/// An open spliced connection, counted in `router_passthrough_connections`.
struct Open(Arc<Metrics>);

impl Open {
    fn new(metrics: &Arc<Metrics>) -> Open {
        metrics.passthrough_connections.inc();
        Open(metrics.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.passthrough_connections.dec();
    }
}

/// Whether a node URL is one clients use: the WebSocket (`/ws/scenes/…`) and the scene API
/// (`/v1/scenes/…`). The node's operational endpoints (`/metrics`, `/healthz`, `/readyz`)
/// stay inside the cluster: the router is reachable from the internet.
fn for_clients(path: &str) -> bool {
    path.starts_with(SCENES_PREFIX) || path.starts_with("/v1/scenes/")
}

/// `/nodes/{name}/rest` as `(name, /rest)` (`/` when there is no rest); `None` unless the
/// name is a DNS label.
fn split(path: &str) -> Option<(&str, &str)> {
    let after = path.strip_prefix(PREFIX)?;
    let (name, rest) = match after.find('/') {
        Some(slash) => after.split_at(slash),
        None => (after, "/"),
    };
    is_node_name(name).then_some((name, rest))
}

/// Headers that belong to one connection, not to the request (RFC 9110 7.6.1), and the
/// request's `Host` (the client sets the node's).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Copies the end-to-end headers: all but the hop-by-hop ones, those `Connection` names,
/// and `Host`.
fn copy_end_to_end(from: &HeaderMap, to: &mut HeaderMap) {
    let named: Vec<String> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    for (name, value) in from {
        if name == header::HOST || HOP_BY_HOP.contains(name) || named.iter().any(|n| n == name.as_str()) {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

/// Whether a request asks to switch protocols (`Connection: upgrade` and `Upgrade`).
fn wants_upgrade(headers: &HeaderMap) -> bool {
    let connection_says = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    connection_says && headers.contains_key(header::UPGRADE)
}

/// Keeps what a protocol switch needs on the next hop: `Upgrade` and `Connection: upgrade`.
fn keep_upgrade(from: &HeaderMap, to: &mut HeaderMap) {
    if let Some(protocol) = from.get(header::UPGRADE) {
        to.insert(header::UPGRADE, protocol.clone());
        to.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Whether the client's error came from the body limit.
fn over_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<LengthLimitError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_dns_labels() {
        let longest = "a".repeat(63);
        for ok in ["a", "0", "troupe-node-2", "localhost", "a-b", longest.as_str()] {
            assert!(is_node_name(ok), "{ok}");
        }
        let long = "a".repeat(64);
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a.b",
            "a_b",
            "a/b",
            "%61",
            "é",
            long.as_str(),
        ] {
            assert!(!is_node_name(bad), "{bad}");
        }
    }

    #[test]
    fn pass_through_urls_name_their_node() {
        for (url, name) in [
            (
                "wss://troupe.example.com/nodes/troupe-node-2",
                Some("troupe-node-2"),
            ),
            (
                "wss://troupe.example.com/nodes/troupe-node-2/",
                Some("troupe-node-2"),
            ),
            ("ws://127.0.0.1:8080/nodes/localhost", Some("localhost")),
            ("ws://h:1/nodes/a?x=1", Some("a")),
            ("ws://h:1", None),
            ("ws://h:1/", None),
            ("ws://h:1/nodes/", None),
            ("ws://h:1/nodes/a/b", None),
            ("ws://h:1/x/nodes/a", None),
            ("ws://h:1/nodes/A", None),
            ("http://h:1/nodes/a", None),
        ] {
            assert_eq!(pass_through_name(url), name, "{url}");
        }
    }

    #[test]
    fn one_rule_turns_node_urls_into_addresses() {
        let upstream = NodeUpstream::parse("http://{name}.troupe-node:4000/").unwrap();
        let up = Some(&upstream);
        assert_eq!(
            http_base("wss://t.example/nodes/troupe-node-2", up).as_deref(),
            Some("http://troupe-node-2.troupe-node:4000")
        );
        assert_eq!(
            http_base("ws://t.example/nodes/n1/", up).as_deref(),
            Some("http://n1.troupe-node:4000")
        );
        // Without the setting a pass-through URL is an ordinary one.
        assert_eq!(
            http_base("ws://t.example/nodes/n1", None).as_deref(),
            Some("http://t.example/nodes/n1")
        );
        assert_eq!(http_base("wss://t.example/nodes/n1", None), None);
        assert_eq!(
            http_base("ws://10.0.0.5:4000/", up).as_deref(),
            Some("http://10.0.0.5:4000")
        );
        assert_eq!(http_base("wss://10.0.0.5:4000", up), None);
    }

    #[test]
    fn templates_are_checked() {
        assert!(NodeUpstream::parse("http://{name}:4000").is_ok());
        assert!(NodeUpstream::parse("http://{name}.troupe-node.ns.svc.cluster.local:4000").is_ok());
        for bad in [
            "",
            "{name}:4000",
            "https://{name}:4000",
            "http://troupe-node:4000",
            "http://{name}:4000?x=1",
            "http://{name}:port",
            "http://{name} x:4000",
        ] {
            let err = NodeUpstream::parse(bad).unwrap_err();
            assert!(err.starts_with("TROUPE_NODE_UPSTREAM"), "{bad}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn paths_split_into_node_and_rest() {
        assert_eq!(
            split("/nodes/n1/ws/scenes/a%3Ab"),
            Some(("n1", "/ws/scenes/a%3Ab"))
        );
        assert_eq!(split("/nodes/n1"), Some(("n1", "/")));
        assert_eq!(split("/nodes/n1/"), Some(("n1", "/")));
        assert_eq!(split("/nodes//x"), None);
        assert_eq!(split("/nodes/N1/x"), None);
        assert_eq!(split("/nodes/n%31/x"), None);
    }

    #[test]
    fn hop_by_hop_headers_stay_behind() {
        let mut from = HeaderMap::new();
        from.insert(header::HOST, HeaderValue::from_static("public"));
        from.insert(header::CONNECTION, HeaderValue::from_static("Upgrade, X-Private"));
        from.insert("x-private", HeaderValue::from_static("1"));
        from.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        from.insert(header::ORIGIN, HeaderValue::from_static("https://app.example"));
        from.insert("sec-websocket-key", HeaderValue::from_static("k"));
        from.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        assert!(wants_upgrade(&from));
        let mut to = HeaderMap::new();
        copy_end_to_end(&from, &mut to);
        let mut names: Vec<&str> = to.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["origin", "sec-websocket-key"]);
        keep_upgrade(&from, &mut to);
        assert_eq!(to[header::UPGRADE], "websocket");
        assert_eq!(to[header::CONNECTION], "upgrade");
        let mut plain = HeaderMap::new();
        plain.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(!wants_upgrade(&plain), "no Connection: upgrade");
    }
}
