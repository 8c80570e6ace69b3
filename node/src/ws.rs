//! One client connection: authenticate, join the scene's room, then shuttle frames.
//!
//! The connection task validates every frame before the room sees it (so the room's task
//! spends its time on the document, not on hostile bytes), enforces rate and size limits,
//! writes what the room queues for it, and pings to find dead peers.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::future::OptionFuture;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use smallvec::{smallvec, SmallVec};
use tokio::sync::oneshot;

use crate::frame_reader::{FrameReader, Incoming, ReadError};
use crate::frame_writer::{self, write_frames, OutFrame, MAX_BATCH};
use crate::metrics::UserSession;
use crate::outbox::{ClientInbox, ClientQueue, Outbound};
use crate::protocol::{self, MessageKind, ParseLimits};
use crate::room::{IncomingFrame, JoinRefused, Joiner, RoomCmd};
use crate::rooms::RoomHandle;
use crate::server::App;
use crate::wake_gate::WakeGate;
use troupe_membership::placement::Verdict;
use troupe_proto::token::{AuthError, Claims, Role};
use troupe_proto::CloseCode;

type Socket = TokioIo<Upgraded>;

/// What the client asked for in the upgrade request.
pub struct ConnectRequest {
    pub scene: Option<String>,
    pub token: String,
    pub acks: bool,
}

/// Serves an upgraded connection until it closes.
pub async fn serve(upgraded: Upgraded, request: Box<ConnectRequest>, app: Arc<App>) {
    let mut socket = TokioIo::new(upgraded);
    let mut reader = FrameReader::new(app.settings.limits.max_frame_bytes);
    app.metrics.connections_active.inc();
    let conn_id = app.next_conn_id();
    let outcome = match Box::pin(admit(&mut socket, conn_id, request, &app)).await {
        Ok(session) => run(&mut socket, &mut reader, conn_id, session, &app).await,
        Err(refusal) => Some(refusal),
    };
    if let Some((code, reason)) = outcome {
        // Rare and large: boxed, so that every open connection's task does not carry it.
        let closing = Box::pin(close_with(&mut socket, &mut reader, code, &reason));
        closing.await;
    }
    app.metrics.connections_active.dec();
}

/// Writes `frames` (at most [`MAX_BATCH`]); false when the client does not take them in time.
async fn send(socket: &mut Socket, frames: &[OutFrame], timeout: Duration) -> bool {
    // Most writes are taken at once (the socket has room): those need no timer, no future
    // and no allocation.
    let now = std::future::poll_fn(|cx| Poll::Ready(frame_writer::write_now(socket, frames, cx))).await;
    let written = match now {
        Ok((true, _)) => return true,
        Ok((false, written)) => written,
        Err(_) => return false,
    };
    // The rest waits for the client, bounded in time; boxed, so that every connection's
    // task does not carry room for it.
    let rest = frame_writer::write_frames_after(socket, frames, written);
    matches!(Box::pin(tokio::time::timeout(timeout, rest)).await, Ok(Ok(())))
}

async fn close_with(socket: &mut Socket, reader: &mut FrameReader, code: CloseCode, reason: &str) {
    let close = OutFrame::close(Some((code.code(), reason)));
    // Send our Close, then read (and discard) until the client answers with its own or
    // hangs up: closing with unread data in the socket would reset the connection, and
    // the client might never see the code.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        if write_frames(socket, &[close]).await.is_ok() {
            while let Some(Ok(message)) = reader.next(socket).await {
                if matches!(message, Incoming::Close(_)) {
                    break;
                }
            }
        }
    })
    .await;
}

/// Answers a client's close frame with ours (a normal closure if it gave a code).
async fn answer_close(socket: &mut Socket, code: Option<u16>, timeout: Duration) {
    let normal = code.map(|_| (1000, ""));
    send(socket, &[OutFrame::close(normal)], timeout).await;
}

/// Whether this connection may load `scene`, which is not live on this node: the node has
/// room for one more; a viewer may read a scene, not bring one into being (a scene nobody
/// opened to edit yet, with no lease ever claimed and not in P1, is not loaded, claimed or
/// created for it); an editor bringing one into being counts against its user's quota of new scenes
/// per minute, over the whole cluster (the count is in the store).
async fn may_load(app: &App, scene: &str, claims: &Claims, role: Role) -> Option<(CloseCode, String)> {
    let quotas = app.settings.quotas;
    if app.rooms.len() >= quotas.max_rooms {
        app.metrics.error("max_rooms");
        return Some((
            CloseCode::TryAgain,
            "this node holds too many scenes; try again".into(),
        ));
    }
    let unavailable = || Some((CloseCode::Internal, "scene unavailable, try again".to_string()));
    // A scene exists once someone opened it to edit (it has a lease), or when the P1
    // product has it (its first load seeds it from there).
    let exists = match app.rooms.batches().lease(scene).await {
        Ok(Some(_)) => true,
        Ok(None) => matches!(app.store.p1_version(scene).await, Ok(Some(_)) | Err(_)),
        Err(error) => {
            tracing::warn!(%scene, %error, "looking up the scene's lease failed");
            app.metrics.error("scene_unavailable");
            return unavailable();
        }
    };
    if exists {
        return None;
    }
    if role == Role::View {
        app.metrics.error("no_such_scene");
        return Some((CloseCode::UnknownScene, "no such scene".into()));
    }
    if quotas.new_scenes_per_minute == 0 {
        return None;
    }
    let minute = (troupe_proto::clock::now_secs() / 60) as i64;
    let admitted = app
        .store
        .admit_new_scene(&claims.sub, minute, scene, quotas.new_scenes_per_minute)
        .await;
    match admitted {
        Ok(false) => {
            app.metrics.error("new_scene_quota");
            Some((
                CloseCode::RateLimited,
                format!(
                    "too many new scenes: at most {} a minute per user; try again later",
                    quotas.new_scenes_per_minute
                ),
            ))
        }
        Ok(true) => None,
        Err(error) => {
            tracing::warn!(%scene, %error, "counting the user's new scenes failed");
            app.metrics.error("scene_unavailable");
            unavailable()
        }
    }
}

/// A client admitted to its scene's room: what its connection keeps while it serves.
struct Session {
    scene: String,
    claims: Claims,
    role: Role,
    editing: bool,
    presence: bool,
    flags: tokio::sync::watch::Receiver<Arc<troupe_membership::flags::FlagState>>,
    room: RoomHandle,
    inbox: ClientInbox,
    _counted: UserSession,
}

/// Checks the client's token, the scene's flags and placement, and joins the scene's room;
/// the close code and reason to send when the client may not. Awaited boxed: what it
/// needs on the way (the request, the placement verdict, the join) is freed once it is in.
async fn admit(
    socket: &mut Socket,
    conn_id: u64,
    request: Box<ConnectRequest>,
    app: &Arc<App>,
) -> Result<Box<Session>, (CloseCode, String)> {
    let arrived = Instant::now();
    let ConnectRequest { scene, token, acks } = *request;
    let Some(scene) = scene else {
        app.metrics.error("unknown_scene");
        return Err((CloseCode::UnknownScene, "invalid scene id".into()));
    };
    let claims = match app.settings.verifier.verify(&token) {
        Ok(claims) => claims,
        Err(error) => {
            app.metrics.error("unauthorized");
            let reason = match error {
                AuthError::Missing => "missing token".to_string(),
                AuthError::Invalid(e) => format!("invalid token: {e}"),
                too_long @ AuthError::TooLong(_) => too_long.to_string(),
            };
            return Err((CloseCode::Unauthorized, reason));
        }
    };
    if app.revocations.borrow().refuses(&claims) {
        app.metrics.error("revoked");
        return Err((CloseCode::Unauthorized, "access revoked".into()));
    }
    let Some(role) = claims.role_in(&scene) else {
        app.metrics.error("forbidden");
        return Err((CloseCode::Forbidden, "token does not grant this scene".into()));
    };

    // The feature flags: collaboration may be off for this scene or user (they save with
    // autosave), realtime editing off (editors read only), presence off.
    let mut flags = app.flags.clone();
    let decision = flags.borrow_and_update().decide(&scene, &claims.sub);
    if !decision.enable_yjs {
        app.metrics.error("collaboration_off");
        return Err((CloseCode::CollaborationOff, COLLABORATION_OFF.into()));
    }
    let editing = decision.enable_realtime_editing;
    let presence = decision.enable_presence;

    // Only the owner serves a scene; the others say where it lives.
    let verdict = app.placement.borrow().verdict(app.settings.node_id, &scene);
    match verdict {
        Verdict::Mine { .. } => {}
        Verdict::Elsewhere(route) => {
            app.metrics.error("moved");
            return Err((CloseCode::Moved, route.url));
        }
        Verdict::NoOwner => {
            app.metrics.error("no_owner");
            return Err((
                CloseCode::TryAgain,
                "no node serves this scene yet; try again".into(),
            ));
        }
    }

    // From here a refusal is the cluster's failure, not the client's (rollback trigger).
    app.metrics
        .triggers
        .connection_attempts
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if !app.rooms.is_live(&scene) {
        // Boxed, like every store call on this path: the connection's task would otherwise
        // carry room for these large futures as long as it lives.
        if let Some(refusal) = Box::pin(may_load(app, &scene, &claims, role)).await {
            return Err(refusal);
        }
    }

    let limits = &app.settings.limits;
    // Room enough for at least one full document (a sync step 2), whatever the setting.
    let queue_bytes = limits
        .client_queue_bytes
        .max(limits.max_doc_bytes + limits.max_frame_bytes);
    let (outbox, inbox) = ClientQueue::new(limits.client_queue, queue_bytes);
    let joining = Box::pin(join(app, &scene, conn_id, &claims, role, acks, outbox));
    let room = match joining.await {
        Ok(room) => room,
        Err(JoinRefused::Full) => {
            app.metrics.error("room_full");
            return Err((CloseCode::RateLimited, "scene has too many connections".into()));
        }
        Err(JoinRefused::Unavailable | JoinRefused::StoreDown) => {
            app.metrics.error("scene_unavailable");
            return Err((CloseCode::Internal, "scene unavailable, try again".into()));
        }
        Err(JoinRefused::Moved(url)) => {
            app.metrics.error("moved");
            return Err((CloseCode::Moved, url.unwrap_or_default()));
        }
    };
    let ms = arrived.elapsed().as_millis() as u64;
    tracing::debug!(conn_id, %scene, user = %claims.sub, ?role, ms, "joined");
    let counted = app.metrics.user_session(&claims.sub);
    // A client that may not edit is told so in y-websocket's own terms (an auth message,
    // "permission denied"), so that it can show the scene read-only rather than accept
    // keystrokes that go nowhere.
    if role == Role::View || !editing {
        let denied = read_only_reason(role);
        let told = OutFrame::Binary(troupe_proto::Message::Auth(Some(denied)).encode().into());
        // A socket that cannot take it is found dead by the loop below.
        send(socket, &[told], write_timeout_of(limits)).await;
    }
    Ok(Box::new(Session {
        scene,
        claims: claims.into_identity(),
        role,
        editing,
        presence,
        flags,
        room,
        inbox,
        _counted: counted,
    }))
}

/// Shuttles frames between the client and its room until one side ends; returns the close
/// code and reason to send, or None when the peer already went away.
async fn run(
    socket: &mut Socket,
    reader: &mut FrameReader,
    conn_id: u64,
    session: Box<Session>,
    app: &Arc<App>,
) -> Option<(CloseCode, String)> {
    let Session {
        scene,
        claims,
        role,
        mut editing,
        mut presence,
        flags,
        room,
        mut inbox,
        _counted,
    } = *session;
    let limits = &app.settings.limits;
    let parse_limits = ParseLimits::default();
    let mut messages = TokenBucket::new(limits.message_rate, Instant::now());
    let mut awareness = TokenBucket::new(limits.awareness_rate, Instant::now());
    // Each sync step 1 makes the room encode what the client misses, up to the whole
    // document: a client needs one per connection, and a few more at most.
    let mut sync_requests = TokenBucket::new(SYNC_REQUESTS_PER_SECOND, Instant::now());
    // A client that stops reading must not stall its task in a write forever.
    let write_timeout = write_timeout_of(limits);
    let mut ping = tokio::time::interval(limits.ping_interval);
    ping.reset();
    let mut last_heard = Instant::now();
    // A token is good until it expires: the connection ends then (the client fetches a
    // new token and reconnects), however long it has been open.
    let expiry = tokio::time::sleep(claims.valid_for(troupe_proto::clock::now_secs()));
    tokio::pin!(expiry);
    // An operator revoking the user ends the connection at once, on every node.
    let revoked = troupe_membership::revocation::revoked(app.revocations.clone(), &claims);
    tokio::pin!(revoked);
    // A flag change, awaited by one future that lives across messages (made again only when
    // the flags change), rather than a new one for every turn of the loop.
    let mut flags_changed = Box::pin(changed(flags));
    let mut gate = WakeGate::default();

    let mut written = WrittenBytes::new(Instant::now());

    let outcome = loop {
        tokio::select! {
            // The rarely ready, behind one gate (see `wake_gate`).
            cold = std::future::poll_fn(|cx| gate.poll(cx, |cx| {
                if expiry.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Cold::Expired);
                }
                if revoked.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Cold::Revoked);
                }
                if let Poll::Ready(flags) = flags_changed.as_mut().poll(cx) {
                    return Poll::Ready(Cold::Flags(flags));
                }
                ping.poll_tick(cx).map(|_| Cold::Ping)
            })) => match cold {
                Cold::Expired => {
                    app.metrics.error("token_expired");
                    break Some((CloseCode::Unauthorized, "token expired".into()));
                }
                Cold::Revoked => {
                    app.metrics.error("revoked");
                    tracing::info!(conn_id, user = %claims.sub, "access revoked: closing");
                    break Some((CloseCode::Unauthorized, "access revoked".into()));
                }
                Cold::Flags(mut flags) => {
                    let decision = flags.borrow_and_update().decide(&scene, &claims.sub);
                    flags_changed.set(changed(flags));
                    if !decision.enable_yjs {
                        app.metrics.error("collaboration_off");
                        break Some((CloseCode::CollaborationOff, COLLABORATION_OFF.into()));
                    }
                    if role == Role::Edit && decision.enable_realtime_editing && !editing {
                        // Edits made while they were refused are still in the client: it sends
                        // them with the full sync of a new connection.
                        break Some((CloseCode::Restarting, "realtime editing is on again: reconnect".into()));
                    }
                    if role == Role::Edit && editing && !decision.enable_realtime_editing {
                        let denied = troupe_proto::Message::Auth(Some(read_only_reason(Role::Edit))).encode();
                        if !send(socket, &[OutFrame::Binary(denied.into())], write_timeout).await {
                            break None;
                        }
                    }
                    editing = decision.enable_realtime_editing;
                    presence = decision.enable_presence;
                }
                Cold::Ping => {
                    if last_heard.elapsed() > limits.ping_interval * 2 {
                        app.metrics.error("ping_timeout");
                        tracing::debug!(conn_id, "peer silent for two ping intervals; dropping");
                        break None;
                    }
                    if !send(socket, &[OutFrame::Ping], write_timeout).await {
                        break None;
                    }
                }
            },
            total = OptionFuture::from(written.answer.as_mut()), if written.answer.is_some() => {
                if let Some(over) = written.answered(app, total) {
                    break Some(over);
                }
                // Bytes written while that report was out go now if they are due.
                written.report_if_due(app, &claims.sub, Instant::now());
            }
            out = inbox.recv() => match out {
                Some(Outbound::Frame(frame)) => {
                    // Whatever else is already queued goes out in the same write. One frame
                    // (the usual) needs no allocation; room for more would sit in every
                    // connection's task (the batch is held across the write).
                    let mut batch: SmallVec<[OutFrame; 1]> = smallvec![OutFrame::Binary(frame)];
                    let mut close_after = None;
                    while batch.len() < MAX_BATCH {
                        match inbox.try_recv() {
                            Some(Outbound::Frame(frame)) => batch.push(OutFrame::Binary(frame)),
                            Some(Outbound::Close(code, reason)) => {
                                close_after = Some((code, reason));
                                break;
                            }
                            None => break,
                        }
                    }
                    if !send(socket, &batch, write_timeout).await {
                        app.metrics.error("write_stalled");
                        break None;
                    }
                    if close_after.is_some() {
                        break close_after;
                    }
                }
                Some(Outbound::Close(code, reason)) => break Some((code, reason)),
                None => {
                    // The room dropped our queue: we were too slow, or the room is gone.
                    break Some((CloseCode::TryAgain, "connection too slow or scene reloading".into()));
                }
            },
            incoming = reader.next(socket) => {
                last_heard = Instant::now();
                let message = match incoming {
                    None => break None,
                    Some(Ok(message)) => message,
                    Some(Err(ReadError::TooLarge { .. })) => {
                        app.metrics.error("frame_too_large");
                        break Some((CloseCode::TooLarge, "message too large".into()));
                    }
                    Some(Err(error)) => {
                        tracing::debug!(conn_id, %error, "websocket error");
                        app.metrics.error("websocket_protocol");
                        break None;
                    }
                };
                let frame = match message {
                    Incoming::Binary(frame) => frame,
                    Incoming::Ping(payload) => {
                        // Each ping costs a write: pings count against the message rate too.
                        if !messages.take(Instant::now()) {
                            app.metrics.error("rate_limited");
                            break Some((CloseCode::RateLimited, "too many messages".into()));
                        }
                        if !send(socket, &[OutFrame::Pong(payload)], write_timeout).await {
                            break None;
                        }
                        continue;
                    }
                    Incoming::Pong => continue,
                    Incoming::Text => {
                        app.metrics.error("text_frame");
                        break Some((CloseCode::UnsupportedData, "binary frames only".into()));
                    }
                    Incoming::Close(code) => {
                        // Answer the client's close, as RFC 6455 asks; boxed, being rare.
                        Box::pin(answer_close(socket, code, write_timeout)).await;
                        break None;
                    }
                };
                let now = Instant::now();
                if !messages.take(now) {
                    app.metrics.error("rate_limited");
                    break Some((CloseCode::RateLimited, "too many messages".into()));
                }
                let frame = match protocol::validate_frame(frame, &parse_limits) {
                    Ok(frame) => frame,
                    Err(error) => {
                        app.metrics.error(error.label());
                        break Some((CloseCode::BadMessage, format!("bad message: {error}")));
                    }
                };
                match frame.kind {
                    MessageKind::Awareness if frame.payload().len() > limits.max_awareness_bytes => {
                        app.metrics.error("awareness_too_large");
                        break Some((CloseCode::TooLarge, "awareness message too large".into()));
                    }
                    MessageKind::Awareness | MessageKind::QueryAwareness if !awareness.take(now) => {
                        app.metrics.awareness_dropped.inc();
                        continue;
                    }
                    MessageKind::SyncStep1 if !sync_requests.take(now) => {
                        app.metrics.error("rate_limited");
                        break Some((CloseCode::RateLimited, "too many sync requests".into()));
                    }
                    MessageKind::SyncStep2 | MessageKind::Update if role == Role::Edit && !editing => {
                        app.metrics.viewer_updates_dropped.inc();
                        continue;
                    }
                    MessageKind::Awareness | MessageKind::QueryAwareness if !presence => continue,
                    MessageKind::SyncStep2 | MessageKind::Update if role == Role::Edit => {
                        app.metrics.triggers.sync_attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        written.add(frame.payload().len() as u64);
                        written.report_if_due(app, &claims.sub, now);
                    }
                    _ => {}
                }
                let bytes = u32::try_from(frame.payload().len().max(1)).unwrap_or(u32::MAX);
                let Ok(permit) = room.budget.clone().acquire_many_owned(bytes).await else {
                    break Some((CloseCode::Restarting, "scene reloading".into()));
                };
                let cmd = RoomCmd::Frame(Box::new(IncomingFrame { conn_id, received: now, frame, _permit: permit }));
                if room.tx.send(cmd).await.is_err() {
                    break Some((CloseCode::Restarting, "scene reloading".into()));
                }
            },
        }
    };
    let _ = room.tx.send(RoomCmd::Leave { conn_id }).await;
    written.report_rest(app, &claims.sub);
    outcome
}

/// Bytes of edits a connection wrote, reported to the store now and then (every
/// [`REPORT_BYTES`] or [`REPORT_EVERY`]), where every node's reports for a user add up
/// against `TROUPE_MAX_BYTES_PER_HOUR`. Nothing waits for a report: edits go on, and the
/// connection closes when the store's answer says the user is over the quota.
struct WrittenBytes {
    unreported: u64,
    last_report: Instant,
    /// The answer to the report in flight: the user's total for the hour.
    answer: Option<oneshot::Receiver<Result<u64, String>>>,
}

/// Bytes a connection writes between two reports at most.
const REPORT_BYTES: u64 = 64 * 1024;

/// Longest a connection keeps bytes unreported. A node holds thousands of connections: an
/// hourly quota is checked often enough once a minute (or every [`REPORT_BYTES`]).
const REPORT_EVERY: Duration = Duration::from_secs(60);

impl WrittenBytes {
    fn new(now: Instant) -> Self {
        Self {
            unreported: 0,
            last_report: now,
            answer: None,
        }
    }

    fn add(&mut self, bytes: u64) {
        self.unreported = self.unreported.saturating_add(bytes);
    }

    /// Sends a report when one is due and none is in flight.
    fn report_if_due(&mut self, app: &App, user: &str, now: Instant) {
        let due = self.unreported >= REPORT_BYTES
            || (self.unreported > 0 && now.duration_since(self.last_report) >= REPORT_EVERY);
        if app.settings.quotas.bytes_per_hour == 0 || !due || self.answer.is_some() {
            return;
        }
        let hour = (troupe_proto::clock::now_secs() / 3600) as i64;
        // A full queue keeps the bytes for the next report.
        if let Some(answer) = app.user_bytes.submit(user, hour, self.unreported) {
            self.unreported = 0;
            self.last_report = now;
            self.answer = Some(answer);
        }
    }

    /// The close to send when the store's answer says the user is over the quota. A store
    /// that does not answer costs nobody their connection.
    fn answered(
        &mut self,
        app: &App,
        total: Option<Result<Result<u64, String>, oneshot::error::RecvError>>,
    ) -> Option<(CloseCode, String)> {
        self.answer = None;
        let limit = app.settings.quotas.bytes_per_hour;
        match total {
            Some(Ok(Ok(total))) if total > limit => {
                app.metrics.error("byte_quota");
                Some((
                    CloseCode::RateLimited,
                    format!("too many bytes of edits: at most {limit} an hour per user; try again later"),
                ))
            }
            _ => None,
        }
    }

    /// Reports what is left when the connection ends, without waiting for the store.
    fn report_rest(self, app: &Arc<App>, user: &str) {
        if self.unreported == 0 || app.settings.quotas.bytes_per_hour == 0 {
            return;
        }
        let hour = (troupe_proto::clock::now_secs() / 3600) as i64;
        // Made even though nobody takes the answer.
        let _ = app.user_bytes.submit(user, hour, self.unreported);
    }
}

/// Joins the scene's room, retrying when the room unloaded in between.
async fn join(
    app: &Arc<App>,
    scene: &str,
    conn_id: u64,
    claims: &Claims,
    role: Role,
    acks: bool,
    outbox: ClientQueue,
) -> Result<RoomHandle, JoinRefused> {
    for _ in 0..5 {
        let room = app.rooms.get_or_start(scene);
        let (reply, answer) = oneshot::channel();
        let joiner = Box::new(Joiner {
            conn_id,
            user: claims.sub.clone(),
            name: claims.display_name().to_owned(),
            role,
            publishes_presence: claims.publishes_presence(role),
            acks,
            outbox: outbox.clone(),
            reply,
        });
        if room.tx.send(RoomCmd::Join(joiner)).await.is_err() {
            continue;
        }
        match answer.await {
            Ok(Ok(())) => return Ok(room),
            Ok(Err(refused @ (JoinRefused::Full | JoinRefused::Moved(_) | JoinRefused::StoreDown))) => {
                return Err(refused)
            }
            Ok(Err(JoinRefused::Unavailable)) | Err(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    Err(JoinRefused::Unavailable)
}

/// Sync requests (step 1) per second one connection may make, in bursts of twice that.
const SYNC_REQUESTS_PER_SECOND: u32 = 2;

/// What woke among a connection's rarely ready futures.
enum Cold {
    Expired,
    Revoked,
    Flags(tokio::sync::watch::Receiver<Arc<troupe_membership::flags::FlagState>>),
    Ping,
}

/// The flags' receiver once they changed; never, when the cluster side is gone.
async fn changed(
    mut flags: tokio::sync::watch::Receiver<Arc<troupe_membership::flags::FlagState>>,
) -> tokio::sync::watch::Receiver<Arc<troupe_membership::flags::FlagState>> {
    if flags.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
    flags
}

/// Why a client may not edit, as the auth message says it.
fn read_only_reason(role: Role) -> &'static str {
    match role {
        Role::View => "read-only: the token may only view this scene",
        Role::Edit => "read-only: realtime editing is off for this scene",
    }
}

/// How long one write to a client may take.
fn write_timeout_of(limits: &crate::config::Limits) -> Duration {
    limits.ping_interval * 2
}

/// The reason of a 4410 close.
const COLLABORATION_OFF: &str =
    "collaboration is off for this scene: save with autosave (GET /v1/flags says when it is back)";

/// A token bucket: `rate` per second, bursts of twice that.
struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: u32, now: Instant) -> Self {
        let rate = f64::from(rate);
        Self {
            rate,
            capacity: rate * 2.0,
            tokens: rate * 2.0,
            last: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_allows_bursts_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, start);
        let burst = (0..100).filter(|_| bucket.take(start)).count();
        assert_eq!(burst, 20);
        let later = start + Duration::from_millis(500);
        let refill = (0..100).filter(|_| bucket.take(later)).count();
        assert_eq!(refill, 5);
    }
}
