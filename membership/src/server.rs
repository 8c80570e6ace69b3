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
//! | `POST /cluster/revocations` | revoke a user's tokens everywhere, or lift it (leader only) |
//! | `POST /cluster/flags` | set a feature flag, cluster-wide or for a scene (leader only) |
//! | `POST /cluster/rollback` | switch realtime editing off, saying why: a node's automatic rollback (leader only) |
//!
//! Anything else, other methods included, is a 404 [`ErrorBody`]. The routes are built in
//! one place, [`router`], and served by [`serve`] over mutual TLS: every request carries
//! the sender's [`Peer`], and each route checks it ([`authorize`]):
//!
//! | sender | may |
//! |---|---|
//! | node N | send Raft messages as N (the vote it carries names N); read; admit itself, or re-admit itself with new addresses; drain, activate or remove itself; roll back |
//! | admin | read; admit new nodes (not change an existing node's addresses); drain, activate, remove; revoke users; set flags |
//! | reader (routers) | read (`/cluster/info`, `/cluster/view`) |
//!
//! Anything else is a 403 [`ErrorBody`] that changes nothing. Without TLS
//! (`TROUPE_INTERNAL_INSECURE=1`, loopback only) every sender may do everything.

use std::future::Future;
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
use axum::{Extension, Router};
use http_body_util::{BodyExt, Limited};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower_service::Service;

use crate::cluster::{AdminError, Cluster};
use crate::raft::network::{APPEND_PATH, SNAPSHOT_PATH, VOTE_PATH};
use crate::raft::TypeConfig;
use crate::state::{Command, CommandError, NodeId};
use crate::tls::{Identity, Peer, Transport};
use crate::view::{AdmitRequest, ErrorBody, FlagRequest, NodeSelf, RevokeRequest, RollbackRequest};

/// Largest request body accepted (Raft snapshots of the membership are small).
const MAX_REQUEST: usize = 16 << 20;

/// Longest a watch call waits for a change.
const MAX_WATCH: Duration = Duration::from_secs(25);

/// Longest a TLS handshake, or the headers of a request, may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most connections open on the internal port at once (nodes, routers and operators hold a
/// few each); beyond, new ones are closed at once, so that a flood of slow handshakes
/// cannot hold the node's descriptors.
const MAX_CONNECTIONS: usize = 1024;

/// Longest the requests in flight may take to finish once the server stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

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
        .route("/cluster/revocations", post_only(revoke))
        .route("/cluster/flags", post_only(set_flag))
        .route("/cluster/rollback", post_only(roll_back))
        .fallback(not_found)
        .with_state(Arc::new(Internal {
            cluster,
            local,
            stopping,
        }))
}

/// Serves the internal endpoint until `shutdown` resolves, then lets the requests in
/// flight finish (watch calls answer at once). With TLS, a connection whose certificate
/// the cluster's CA did not sign, or that names no identity, is closed in the handshake.
pub async fn serve(
    listener: TcpListener,
    transport: Transport,
    cluster: Arc<Cluster>,
    local: Arc<dyn LocalStatus>,
    shutdown: impl Future<Output = ()>,
) {
    let (stop, stopping) = watch::channel(false);
    let app = router(cluster, local, stopping);
    let acceptor = transport.server_config().map(TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let (tcp, from) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors and the like: wait a little instead of spinning.
                    tracing::warn!(%error, "internal endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%from, "internal endpoint: too many connections; closing a new one");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let watcher = graceful.watcher();
        match acceptor.clone() {
            None => {
                tokio::spawn(async move {
                    serve_connection(tcp, Peer::Insecure, app, watcher).await;
                    drop(slot);
                });
            }
            Some(acceptor) => {
                tokio::spawn(async move {
                    let _slot = slot;
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(error)) => {
                            tracing::warn!(%from, %error, "internal endpoint: TLS handshake refused");
                            return;
                        }
                        Err(_) => {
                            tracing::warn!(%from, "internal endpoint: TLS handshake timed out");
                            return;
                        }
                    };
                    let identity = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .map(|cert| Identity::of_certificate(cert));
                    match identity {
                        Some(Ok(identity)) => {
                            serve_connection(tls, Peer::Verified(identity), app, watcher).await;
                        }
                        Some(Err(error)) => {
                            tracing::warn!(%from, %error, "internal endpoint: the peer's certificate names nobody");
                        }
                        None => tracing::warn!(%from, "internal endpoint: the peer sent no certificate"),
                    }
                });
            }
        }
    }
    drop(listener);
    stop.send_replace(true);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("internal endpoint: requests still in flight at shutdown were cut");
    }
}

/// Serves HTTP/1 on one connection, every request tagged with the sender.
async fn serve_connection<I>(io: I, peer: Peer, app: Router, watcher: hyper_util::server::graceful::Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(peer.clone());
        let mut app = app.clone();
        async move { app.call(request.map(Body::new)).await }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    if let Err(error) = watcher.watch(connection).await {
        tracing::debug!(%error, "internal endpoint: connection ended");
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

async fn append(
    State(s): Shared,
    Extension(peer): Extension<Peer>,
    JsonBody(rpc): JsonBody<AppendEntriesRequest<TypeConfig>>,
) -> Response {
    if !speaks_for(&peer, rpc.vote.leader_id().voted_for()) {
        return forbidden(&peer, "send Raft messages for another node");
    }
    json(StatusCode::OK, &s.cluster.raft().append_entries(rpc).await)
}

async fn vote(
    State(s): Shared,
    Extension(peer): Extension<Peer>,
    JsonBody(rpc): JsonBody<VoteRequest<NodeId>>,
) -> Response {
    if !speaks_for(&peer, rpc.vote.leader_id().voted_for()) {
        return forbidden(&peer, "ask for votes for another node");
    }
    json(StatusCode::OK, &s.cluster.raft().vote(rpc).await)
}

async fn snapshot(
    State(s): Shared,
    Extension(peer): Extension<Peer>,
    JsonBody(rpc): JsonBody<InstallSnapshotRequest<TypeConfig>>,
) -> Response {
    if !speaks_for(&peer, rpc.vote.leader_id().voted_for()) {
        return forbidden(&peer, "send Raft messages for another node");
    }
    json(StatusCode::OK, &s.cluster.raft().install_snapshot(rpc).await)
}

async fn info(State(s): Shared) -> Response {
    let opts = s.cluster.options();
    let (raft_term, raft_last_log) = {
        let metrics = s.cluster.raft().metrics();
        let m = metrics.borrow();
        (m.current_term, m.last_log_index)
    };
    json(
        StatusCode::OK,
        &NodeSelf {
            id: opts.id,
            url: opts.url.clone(),
            rpc_addr: opts.rpc_addr.clone(),
            initialized: s.cluster.is_initialized(),
            rooms: s.local.rooms(),
            epoch: s.local.epoch(),
            raft_term,
            raft_last_log,
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

async fn admit(
    State(s): Shared,
    Extension(peer): Extension<Peer>,
    JsonBody(node): JsonBody<AdmitRequest>,
) -> Response {
    let view = s.cluster.view();
    let entry = view.state.nodes.get(&node.id);
    let moves = entry.is_some_and(|n| n.url != node.url || n.rpc_addr != node.rpc_addr);
    let allowed = match &peer {
        Peer::Insecure => true,
        // A node brings itself in (`TROUPE_JOIN`) or refreshes its own entry, never
        // another: its certificate, made by an operator for that id, is the invitation.
        Peer::Verified(Identity::Node(id)) => *id == node.id,
        // Operators bring nodes in, but only a node may say where it now lives.
        Peer::Verified(Identity::Admin(_)) => !moves,
        Peer::Verified(Identity::Reader(_)) => false,
    };
    if !allowed {
        let what = match &peer {
            Peer::Verified(Identity::Admin(_)) => format!(
                "change the addresses of node {} (only the node itself may)",
                node.id
            ),
            _ => format!("admit node {}", node.id),
        };
        return forbidden(&peer, &what);
    }
    admin(s.cluster.admit(&node).await)
}

/// `POST /cluster/nodes/{id}/{action}`: the id is checked before the action.
async fn change(
    State(s): Shared,
    Extension(peer): Extension<Peer>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
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
    let command = match action.as_str() {
        "drain" => Command::Drain { id },
        "activate" => Command::Activate { id },
        "remove" => Command::Remove { id },
        _ => return not_found().await,
    };
    // A node may give up or take back its own place (draining when it stops, rejoining
    // when it starts); only operators change another's.
    let allowed = match &peer {
        Peer::Insecure | Peer::Verified(Identity::Admin(_)) => true,
        Peer::Verified(Identity::Node(me)) => *me == id,
        Peer::Verified(Identity::Reader(_)) => false,
    };
    if !allowed {
        return forbidden(
            &peer,
            &format!("{action} node {id} (an admin certificate, or the node's own, is needed)"),
        );
    }
    match command {
        Command::Remove { id } => admin(s.cluster.remove(id).await),
        command => admin(s.cluster.set_state(command).await),
    }
}

async fn revoke(
    State(s): Shared,
    Extension(peer): Extension<Peer>,
    JsonBody(request): JsonBody<RevokeRequest>,
) -> Response {
    if !matches!(peer, Peer::Insecure | Peer::Verified(Identity::Admin(_))) {
        return forbidden(&peer, "revoke users (an admin certificate is needed)");
    }
    admin(s.cluster.revoke(&request.user, request.not_before).await)
}

async fn set_flag(
    State(s): Shared,
    Extension(peer): Extension<Peer>,
    JsonBody(request): JsonBody<FlagRequest>,
) -> Response {
    if !matches!(peer, Peer::Insecure | Peer::Verified(Identity::Admin(_))) {
        return forbidden(&peer, "set flags (an admin certificate is needed)");
    }
    admin(
        s.cluster
            .set_flag(request.scene.as_deref(), &request.name, &request.value)
            .await,
    )
}

async fn roll_back(
    State(s): Shared,
    Extension(peer): Extension<Peer>,
    JsonBody(request): JsonBody<RollbackRequest>,
) -> Response {
    if !matches!(
        peer,
        Peer::Insecure | Peer::Verified(Identity::Admin(_) | Identity::Node(_))
    ) {
        return forbidden(&peer, "roll back (a node's or an admin certificate is needed)");
    }
    admin(s.cluster.roll_back(&request.why).await)
}

/// Whether `peer` may send a Raft message whose vote names `sender`: only that node.
fn speaks_for(peer: &Peer, sender: Option<NodeId>) -> bool {
    match peer {
        Peer::Insecure => true,
        Peer::Verified(Identity::Node(id)) => sender == Some(*id),
        Peer::Verified(_) => false,
    }
}

/// The 403 of a request its sender may not make; nothing was changed.
fn forbidden(peer: &Peer, what: &str) -> Response {
    tracing::warn!(%peer, what, "internal endpoint: request refused");
    error(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("{peer} may not {what}"),
        None,
    )
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
