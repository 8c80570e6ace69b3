//! A small JSON-over-HTTP client for the cluster's internal port: Raft messages between
//! nodes, and the admin and watch calls of routers and `troupectl`. Over mutual TLS when
//! the cluster has certificates ([`Transport`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::tls::Transport;
use crate::view::ErrorBody;

/// How long an unused connection stays pooled.
const POOL_IDLE: Duration = Duration::from_secs(30);

/// How long a new connection may take to be ready: the TCP connect and, on the internal
/// port, the TLS handshake. A frozen process (stopped, or a paused VM) still completes TCP
/// handshakes — its kernel does — but never the TLS one; without this bound a call to it
/// waited out the whole call (10 s for an admin call) before a client tried the next node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Largest response body read (a Raft snapshot of the membership is a few KiB).
const MAX_RESPONSE: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// Nothing answers at the address (connection refused, no route).
    #[error("{addr} is unreachable: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("{addr} did not answer within {0:?}", .timeout)]
    Timeout { addr: String, timeout: Duration },
    /// The peer answered with an error body.
    #[error("{}", .body.message)]
    Refused { status: u16, body: ErrorBody },
    #[error("bad answer from {addr}: {reason}")]
    BadResponse { addr: String, reason: String },
}

impl RpcError {
    /// The leader's address when the peer said it is not the leader.
    pub fn leader_hint(&self) -> Option<&str> {
        match self {
            RpcError::Refused { body, .. } if body.error == "not_leader" => body.leader.as_deref(),
            _ => None,
        }
    }

    /// Whether another node might answer (the peer is down or slow).
    pub fn is_transport(&self) -> bool {
        matches!(self, RpcError::Unreachable { .. } | RpcError::Timeout { .. })
    }
}

/// Shares pooled connections; cheap to clone.
#[derive(Clone)]
pub struct RpcClient {
    http: Http,
}

#[derive(Clone)]
enum Http {
    Tls(Client<ReadyWithin<HttpsConnector<HttpConnector>>, Full<Bytes>>),
    Plain(Client<HttpConnector, Full<Bytes>>),
}

impl RpcClient {
    /// A client of the internal port: presents this process's certificate and checks the
    /// node's against the cluster's CA.
    pub fn new(transport: &Transport) -> RpcClient {
        let Some(config) = transport.client_config() else {
            return RpcClient::plain();
        };
        let mut connector = connector();
        connector.enforce_http(false);
        let https = HttpsConnectorBuilder::new()
            .with_tls_config((*config).clone())
            .https_only()
            .enable_http1()
            .wrap_connector(connector);
        let https = ReadyWithin { inner: https };
        RpcClient {
            http: Http::Tls(
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(POOL_IDLE)
                    .build(https),
            ),
        }
    }

    /// A plain HTTP client (an insecure cluster, or the public port of a router).
    pub fn plain() -> RpcClient {
        RpcClient {
            http: Http::Plain(
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(POOL_IDLE)
                    .build(connector()),
            ),
        }
    }

    /// `POST {addr}{path}` with a JSON body.
    pub async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcError> {
        let bytes = serde_json::to_vec(body).map_err(|e| RpcError::BadResponse {
            addr: addr.into(),
            reason: format!("cannot encode the request: {e}"),
        })?;
        self.call(Method::POST, addr, path, Bytes::from(bytes), timeout)
            .await
    }

    /// `GET {addr}{path}`.
    pub async fn get<Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<Resp, RpcError> {
        self.call(Method::GET, addr, path, Bytes::new(), timeout).await
    }

    async fn call<Resp: DeserializeOwned>(
        &self,
        method: Method,
        addr: &str,
        path: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Resp, RpcError> {
        let bad = |reason: String| RpcError::BadResponse {
            addr: addr.into(),
            reason,
        };
        let request = Request::builder()
            .method(method)
            .uri(format!("{}://{addr}{path}", self.http.scheme()))
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| bad(format!("bad request: {e}")))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| RpcError::Unreachable {
                    addr: addr.into(),
                    reason: error_chain(&e),
                })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| bad(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, RpcError>((status, body))
        };
        let (status, body) =
            tokio::time::timeout(timeout, exchange)
                .await
                .map_err(|_| RpcError::Timeout {
                    addr: addr.into(),
                    timeout,
                })??;
        if status != StatusCode::OK {
            let body = serde_json::from_slice::<ErrorBody>(&body).unwrap_or_else(|_| ErrorBody {
                error: "http".into(),
                message: format!(
                    "{addr} answered {status}: {}",
                    String::from_utf8_lossy(&body).trim()
                ),
                leader: None,
            });
            return Err(RpcError::Refused {
                status: status.as_u16(),
                body,
            });
        }
        serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))
    }
}

impl Http {
    fn scheme(&self) -> &'static str {
        match self {
            Http::Tls(_) => "https",
            Http::Plain(_) => "http",
        }
    }

    async fn request(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error> {
        match self {
            Http::Tls(client) => client.request(request).await,
            Http::Plain(client) => client.request(request).await,
        }
    }
}

/// A connector whose connections must be ready within [`CONNECT_TIMEOUT`], handshake
/// included; a late one fails as unreachable, so that a client moves on to another node.
#[derive(Clone)]
struct ReadyWithin<C> {
    inner: C,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<C> tower_service::Service<hyper::Uri> for ReadyWithin<C>
where
    C: tower_service::Service<hyper::Uri>,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: hyper::Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_) => Err(format!("no connection within {CONNECT_TIMEOUT:?}").into()),
            }
        })
    }
}

fn connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    connector
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
