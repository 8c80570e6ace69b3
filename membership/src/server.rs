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
//!
//! Anything else, other methods included, is a 404 [`ErrorBody`]. The routes are built in
//! one place, [`router`], and served by [`serve`], so that transport security can be
//! layered over the listener without touching them.

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::handler::Handler;
use axum::http::header::{self, HeaderValue};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post, MethodRouter};
use axum::serve::ListenerExt;
use axum::Router;
use http_body_util::{BodyExt, Limited};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cluster::{AdminError, Cluster};
use crate::raft::network::{APPEND_PATH, SNAPSHOT_PATH, VOTE_PATH};
use crate::raft::TypeConfig;
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

/// What the handlers share.
struct Internal {
    cluster: Arc<Cluster>,
    local: Arc<dyn LocalStatus>,
    /// Turns true when the server shuts down: watch calls then answer at once, so that a
    /// graceful shutdown never waits out a router's long poll.
    stopping: watch::Receiver<bool>,
}

type Shared = State<Arc<Internal>>;

/// The internal endpoint's routes. `stopping` ends pending watch calls when it turns true.
pub fn router(cluster: Arc<Cluster>, local: Arc<dyn LocalStatus>, stopping: watch::Receiver<bool>) -> Router {
    Router::new()
        .route(APPEND_PATH, post_only(append))
        .route(VOTE_PATH, post_only(vote))
        .route(SNAPSHOT_PATH, post_only(snapshot))
        .route("/cluster/info", get_only(info))
        .route("/cluster/view", get_only(view))
        .route("/cluster/nodes", post_only(admit))
        .route("/cluster/nodes/{id}/{action}", post_only(change))
        .fallback(not_found)
        .with_state(Arc::new(Internal {
            cluster,
            local,
            stopping,
        }))
}

/// Serves the internal endpoint until `shutdown` resolves, then lets the requests in
/// flight finish (watch calls answer at once).
pub async fn serve(
    listener: TcpListener,
    cluster: Arc<Cluster>,
    local: Arc<dyn LocalStatus>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop, stopping) = watch::channel(false);
    let app = router(cluster, local, stopping.clone());
    let mut stopped = stopping;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    });
    let signal = async move {
        shutdown.await;
        stop.send_replace(true);
    };
    let ((), served) = tokio::join!(signal, server.into_future());
    if let Err(error) = served {
        tracing::warn!(%error, "internal endpoint stopped");
    }
}

/// Other methods than POST get the endpoint's 404.
fn post_only<H, T>(handler: H) -> MethodRouter<Arc<Internal>>
where
    H: Handler<T, Arc<Internal>>,
    T: 'static,
{
    post(handler).fallback(not_found)
}

/// Other methods than GET (HEAD included) get the endpoint's 404.
fn get_only<H, T>(handler: H) -> MethodRouter<Arc<Internal>>
where
    H: Handler<T, Arc<Internal>>,
    T: 'static,
{
    get(handler).head(not_found).fallback(not_found)
}

async fn append(State(s): Shared, JsonBody(rpc): JsonBody<AppendEntriesRequest<TypeConfig>>) -> Response {
    json(StatusCode::OK, &s.cluster.raft().append_entries(rpc).await)
}

async fn vote(State(s): Shared, JsonBody(rpc): JsonBody<VoteRequest<NodeId>>) -> Response {
    json(StatusCode::OK, &s.cluster.raft().vote(rpc).await)
}

async fn snapshot(State(s): Shared, JsonBody(rpc): JsonBody<InstallSnapshotRequest<TypeConfig>>) -> Response {
    json(StatusCode::OK, &s.cluster.raft().install_snapshot(rpc).await)
}

async fn info(State(s): Shared) -> Response {
    let opts = s.cluster.options();
    json(
        StatusCode::OK,
        &NodeSelf {
            id: opts.id,
            url: opts.url.clone(),
            rpc_addr: opts.rpc_addr.clone(),
            initialized: s.cluster.is_initialized(),
            rooms: s.local.rooms(),
            epoch: s.local.epoch(),
        },
    )
}

#[derive(Deserialize)]
struct ViewQuery {
    after: Option<u64>,
}

/// A watch (`after` given) waits for a newer version; an unreadable `after` is no watch.
async fn view(State(s): Shared, query: Result<Query<ViewQuery>, QueryRejection>) -> Response {
    let after = query.ok().and_then(|Query(q)| q.after);
    let view = match after {
        Some(after) => {
            let mut stopping = s.stopping.clone();
            let stopped = async move {
                if stopping.wait_for(|stop| *stop).await.is_err() {
                    // No server to stop: only the watch's own limit ends it.
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                view = s.cluster.view_after(after, MAX_WATCH) => view,
                () = stopped => s.cluster.view(),
            }
        }
        None => s.cluster.view(),
    };
    json(StatusCode::OK, &view)
}

async fn admit(State(s): Shared, JsonBody(node): JsonBody<AdmitRequest>) -> Response {
    admin(s.cluster.admit(&node).await)
}

/// `POST /cluster/nodes/{id}/{action}`: the id is checked before the action.
async fn change(State(s): Shared, path: Result<Path<(String, String)>, PathRejection>) -> Response {
    let Ok(Path((id, action))) = path else {
        return not_found().await;
    };
    let Ok(id) = id.parse::<NodeId>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{id:?} is not a node id"),
            None,
        );
    };
    match action.as_str() {
        "drain" => admin(s.cluster.set_state(Command::Drain { id }).await),
        "activate" => admin(s.cluster.set_state(Command::Activate { id }).await),
        "remove" => admin(s.cluster.remove(id).await),
        _ => not_found().await,
    }
}

/// A JSON request body of at most [`MAX_REQUEST`] bytes; a refusal is the endpoint's
/// usual 400 [`ErrorBody`] (axum's own extractors answer in plain text).
struct JsonBody<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(req: Request, _: &S) -> Result<Self, Response> {
        let bytes = match Limited::new(req.into_body(), MAX_REQUEST).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => return Err(error(StatusCode::BAD_REQUEST, "bad_request", e.to_string(), None)),
        };
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("bad JSON body: {e}"),
                None,
            )
        })
    }
}

fn admin<T: Serialize>(result: Result<T, AdminError>) -> Response {
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

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => json_bytes(status, bytes),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string(), None),
    }
}

fn error(status: StatusCode, kind: &str, message: String, leader: Option<String>) -> Response {
    let body = ErrorBody {
        error: kind.into(),
        message,
        leader,
    };
    json_bytes(status, serde_json::to_vec(&body).unwrap_or_default())
}

fn json_bytes(status: StatusCode, bytes: Vec<u8>) -> Response {
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint".into(),
        None,
    )
}
