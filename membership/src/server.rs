//! The internal HTTP endpoint of a node: Raft messages from peers, and the admin and
//! watch calls of `troupectl` and routers. JSON in, JSON out.
//!
//! | route | what |
//! |---|---|
//! | `POST /raft/append`, `/raft/vote`, `/raft/snapshot` | Raft between nodes |
//! | `GET /cluster/info` | this node: id, addresses, rooms, epoch |
//! | `GET /cluster/view?after=V` | the membership; with `after`, waits (up to 25 s) for a newer version |
//! | `POST /cluster/nodes` | admit a node (leader only) |
//! | `POST /cluster/nodes/{id}/drain`, `/activate`, `/remove` | operator changes (leader only) |

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::cluster::{AdminError, Cluster};
use crate::raft::network::{APPEND_PATH, SNAPSHOT_PATH, VOTE_PATH};
use crate::state::{Command, CommandError, NodeId};
use crate::view::{AdmitRequest, ErrorBody, NodeSelf};

/// Largest request body accepted (Raft snapshots of the membership are small).
const MAX_REQUEST: usize = 16 << 20;

/// Longest a watch call waits for a change.
const MAX_WATCH: Duration = Duration::from_secs(25);

/// What the node reports about itself besides membership.
pub trait LocalStatus: Send + Sync + 'static {
    /// Rooms loaded right now.
    fn rooms(&self) -> u64;
    /// The epoch the node serves at.
    fn epoch(&self) -> u64;
}

type Body = Full<Bytes>;

/// Serves the internal endpoint until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    cluster: Arc<Cluster>,
    local: Arc<dyn LocalStatus>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (cluster, local) = (cluster.clone(), local.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, cluster.clone(), local.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            () = &mut shutdown => return,
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    cluster: Arc<Cluster>,
    local: Arc<dyn LocalStatus>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let method = req.method().clone();
    let raft = cluster.raft();
    let response = match (&method, path.as_str()) {
        (&Method::POST, APPEND_PATH) => match body(req).await {
            Ok(rpc) => json(StatusCode::OK, &raft.append_entries(rpc).await),
            Err(r) => r,
        },
        (&Method::POST, VOTE_PATH) => match body(req).await {
            Ok(rpc) => json(StatusCode::OK, &raft.vote(rpc).await),
            Err(r) => r,
        },
        (&Method::POST, SNAPSHOT_PATH) => match body(req).await {
            Ok(rpc) => json(StatusCode::OK, &raft.install_snapshot(rpc).await),
            Err(r) => r,
        },
        (&Method::GET, "/cluster/info") => {
            let opts = cluster.options();
            json(
                StatusCode::OK,
                &NodeSelf {
                    id: opts.id,
                    url: opts.url.clone(),
                    rpc_addr: opts.rpc_addr.clone(),
                    initialized: cluster.is_initialized(),
                    rooms: local.rooms(),
                    epoch: local.epoch(),
                },
            )
        }
        (&Method::GET, "/cluster/view") => {
            let after = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("after="))
                .and_then(|v| v.parse::<u64>().ok());
            let view = match after {
                Some(after) => cluster.view_after(after, MAX_WATCH).await,
                None => cluster.view(),
            };
            json(StatusCode::OK, &view)
        }
        (&Method::POST, "/cluster/nodes") => match body::<AdmitRequest>(req).await {
            Ok(node) => admin(cluster.admit(&node).await),
            Err(r) => r,
        },
        (&Method::POST, p) if p.starts_with("/cluster/nodes/") => {
            let rest = &p["/cluster/nodes/".len()..];
            match rest.split_once('/') {
                Some((id, action)) => match id.parse::<NodeId>() {
                    Ok(id) => match action {
                        "drain" => admin(cluster.set_state(Command::Drain { id }).await),
                        "activate" => admin(cluster.set_state(Command::Activate { id }).await),
                        "remove" => admin(cluster.remove(id).await),
                        _ => not_found(),
                    },
                    Err(_) => error(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        format!("{id:?} is not a node id"),
                        None,
                    ),
                },
                None => not_found(),
            }
        }
        _ => not_found(),
    };
    Ok(response)
}

async fn body<T: DeserializeOwned>(req: Request<Incoming>) -> Result<T, Response<Body>> {
    let bytes = match Limited::new(req.into_body(), MAX_REQUEST).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return Err(error(StatusCode::BAD_REQUEST, "bad_request", e.to_string(), None)),
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("bad JSON body: {e}"),
            None,
        )
    })
}

fn admin<T: Serialize>(result: Result<T, AdminError>) -> Response<Body> {
    match result {
        Ok(value) => json(StatusCode::OK, &value),
        Err(e) => {
            let message = e.to_string();
            match e {
                AdminError::NotLeader { leader_addr } => error(
                    StatusCode::MISDIRECTED_REQUEST,
                    "not_leader",
                    message,
                    leader_addr,
                ),
                AdminError::Command(CommandError::UnknownNode { .. }) => {
                    error(StatusCode::NOT_FOUND, "unknown_node", message, None)
                }
                AdminError::Command(_) | AdminError::Refused(_) => {
                    error(StatusCode::CONFLICT, "refused", message, None)
                }
                AdminError::Unavailable(_) => {
                    error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message, None)
                }
            }
        }
    }
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            let mut response = Response::new(Full::new(Bytes::from(bytes)));
            *response.status_mut() = status;
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string(), None),
    }
}

fn error(status: StatusCode, kind: &str, message: String, leader: Option<String>) -> Response<Body> {
    let body = ErrorBody {
        error: kind.into(),
        message,
        leader,
    };
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn not_found() -> Response<Body> {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint".into(),
        None,
    )
}
