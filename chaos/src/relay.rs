//! `troupe-chaos relay`: the floor of the bench, a y-websocket server that does nothing but
//! pass frames along.
//!
//! Why it exists: the bench compares Troupe's CPU per delivered update with the y-websocket
//! reference server's, but neither figure says how much of it no server can avoid — reading
//! a WebSocket frame and writing it to the other sockets of its room. The relay does only
//! that, as cheaply as a careful engineer would write it, on the same runtime (one thread by
//! default, like `troupe-node`) and WebSocket library as Troupe, so that every CPU figure of
//! the bench can be read against it ("× floor").
//!
//! What it does: the room is the URL path (any path; the query string, e.g. `?token=…`,
//! is ignored); one task per connection; a sync step 1 is answered with a sync step 2
//! carrying the empty update; updates, sync steps 2 and awareness frames go unchanged to
//! every other connection of the room, each through a bounded queue (a consumer whose queue
//! is full is dropped, closed with 1013); everything else is ignored. It reads no more of a
//! frame than its first two varints.
//!
//! What it cannot do: it holds no document, so a client that joins a room late does not get
//! what was written before it joined (the load tool connects every editor of a scene before
//! anyone types, `--initial-text` included, so its runs are complete), and a client's
//! offline edits reach only those connected when it sends them. No tokens (the query is
//! ignored), no awareness state (a query-awareness goes unanswered), no storage, no pings
//! (a peer that vanishes without a FIN is found only when a write to it fails).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_tungstenite::tungstenite::handshake::server::{Callback, ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use troupe_proto::lib0::Reader;
use troupe_proto::message::{MSG_AWARENESS, MSG_SYNC, SYNC_STEP1, SYNC_STEP2, SYNC_UPDATE};

/// The answer to every sync step 1: a sync step 2 carrying the empty Yjs v1 update `[0, 0]`.
const EMPTY_STEP2: [u8; 5] = [MSG_SYNC as u8, SYNC_STEP2 as u8, 2, 0, 0];

/// How long one batch of writes to a client may take before the client is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the relay does with a frame from a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A sync step 1: answer with [`EMPTY_STEP2`].
    Answer,
    /// A sync step 2, update or awareness: pass it to the room's other connections.
    Forward,
    /// Anything else (query awareness, auth, unknown types, bad varints).
    Ignore,
}

/// Classifies a frame by its first one or two varints; never reads further, never panics.
pub fn classify(frame: &[u8]) -> Action {
    let mut r = Reader::new(frame);
    match r.var_u64() {
        Ok(MSG_SYNC) => match r.var_u64() {
            Ok(SYNC_STEP1) => Action::Answer,
            Ok(SYNC_STEP2 | SYNC_UPDATE) => Action::Forward,
            _ => Action::Ignore,
        },
        Ok(MSG_AWARENESS) => Action::Forward,
        _ => Action::Ignore,
    }
}

/// How the relay listens and what it bounds.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    pub listen: SocketAddr,
    /// Largest WebSocket message accepted (larger ones close the connection with 1009).
    pub max_frame_bytes: usize,
    /// Frames queued for one client before it is dropped as too slow.
    pub queue: usize,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            // troupe-node's defaults (TROUPE_MAX_FRAME_BYTES, TROUPE_CLIENT_QUEUE).
            max_frame_bytes: 1 << 20,
            queue: 1024,
        }
    }
}

/// A bound relay; [`Relay::serve`] runs it.
pub struct Relay {
    listener: TcpListener,
    rooms: Arc<Rooms>,
    config: WebSocketConfig,
    queue: usize,
}

impl Relay {
    pub async fn bind(opts: &RelayOptions) -> io::Result<Relay> {
        let listener = TcpListener::bind(opts.listen).await?;
        // The same socket settings as troupe-node's: a small read buffer (edits are tens of
        // bytes), writes gathered up to 32 KiB before they go to the socket.
        let config = WebSocketConfig::default()
            .max_message_size(Some(opts.max_frame_bytes))
            .max_frame_size(Some(opts.max_frame_bytes))
            .read_buffer_size(1024)
            .write_buffer_size(32 * 1024)
            .max_write_buffer_size(opts.max_frame_bytes.saturating_mul(2).max(1 << 20));
        Ok(Relay {
            listener,
            rooms: Arc::default(),
            config,
            queue: opts.queue.max(1),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections until the future is dropped.
    pub async fn serve(self) {
        loop {
            match self.listener.accept().await {
                Ok((tcp, _)) => {
                    let rooms = self.rooms.clone();
                    tokio::spawn(connection(tcp, rooms, self.config, self.queue));
                }
                Err(e) => {
                    // Out of file descriptors, most likely: let some connections end.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Every open room: its path -> its members.
#[derive(Default)]
struct Rooms {
    map: Mutex<HashMap<String, Arc<Room>>>,
    next_id: AtomicU64,
}

/// The connections of one room. Locked only to join, leave and hand a frame to every
/// member's queue, never across an `.await`.
#[derive(Default)]
struct Room {
    members: Mutex<Vec<Member>>,
}

struct Member {
    id: u64,
    tx: mpsc::Sender<Bytes>,
}

/// A poisoned lock only means a panic elsewhere; the member lists stay consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Rooms {
    /// Adds a connection to the room `path`; returns the room and the connection's id.
    fn join(&self, path: &str, tx: mpsc::Sender<Bytes>) -> (Arc<Room>, u64) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut map = lock(&self.map);
        let room = map.entry(path.to_owned()).or_default().clone();
        lock(&room.members).push(Member { id, tx });
        (room, id)
    }

    /// Removes connection `id` (if still there) and forgets the room once it is empty.
    fn leave(&self, path: &str, room: &Arc<Room>, id: u64) {
        let mut map = lock(&self.map);
        let mut members = lock(&room.members);
        members.retain(|m| m.id != id);
        if members.is_empty() && map.get(path).is_some_and(|r| Arc::ptr_eq(r, room)) {
            map.remove(path);
        }
    }
}

impl Room {
    /// Queues `frame` for every member but `from`; a member whose queue is full (or whose
    /// connection is gone) is removed, which ends its connection once it has written what
    /// was queued.
    fn broadcast(&self, from: u64, frame: &Bytes) {
        lock(&self.members).retain(|m| {
            if m.id == from {
                return true;
            }
            match m.tx.try_send(frame.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    tracing::debug!(connection = m.id, "queue full: dropping a slow client");
                    false
                }
                Err(TrySendError::Closed(_)) => false,
            }
        });
    }
}

/// Records the request's path (the room); the query is left out.
struct RoomPath<'a>(&'a mut String);

impl Callback for RoomPath<'_> {
    fn on_request(self, req: &Request, resp: Response) -> Result<Response, ErrorResponse> {
        self.0.push_str(req.uri().path());
        Ok(resp)
    }
}

async fn connection(tcp: TcpStream, rooms: Arc<Rooms>, config: WebSocketConfig, queue: usize) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY");
    }
    let mut path = String::new();
    let mut ws =
        match tokio_tungstenite::accept_hdr_async_with_config(tcp, RoomPath(&mut path), Some(config)).await {
            Ok(ws) => ws,
            Err(e) => {
                tracing::debug!(error = %e, "handshake failed");
                return;
            }
        };
    let (tx, rx) = mpsc::channel(queue);
    let (room, id) = rooms.join(&path, tx);
    let close = relay(&mut ws, &room, id, rx).await;
    rooms.leave(&path, &room, id);
    if let Some(code) = close {
        let frame = CloseFrame {
            code,
            reason: "".into(),
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            if ws.close(Some(frame)).await.is_ok() {
                while let Some(Ok(_)) = ws.next().await {}
            }
        })
        .await;
    }
}

/// Shuttles frames until the connection ends; returns the close code to send, if any.
async fn relay<S>(
    ws: &mut WebSocketStream<S>,
    room: &Room,
    id: u64,
    mut rx: mpsc::Receiver<Bytes>,
) -> Option<CloseCode>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        tokio::select! {
            queued = rx.recv() => {
                let Some(frame) = queued else {
                    // The room dropped us: our queue was full.
                    return Some(CloseCode::Again);
                };
                // Write whatever else is queued too, then flush once.
                let written = tokio::time::timeout(WRITE_TIMEOUT, async {
                    ws.feed(Message::Binary(frame)).await?;
                    while let Ok(frame) = rx.try_recv() {
                        ws.feed(Message::Binary(frame)).await?;
                    }
                    ws.flush().await
                })
                .await;
                if !matches!(written, Ok(Ok(()))) {
                    return None;
                }
            }
            incoming = ws.next() => match incoming {
                Some(Ok(Message::Binary(frame))) => match classify(&frame) {
                    Action::Forward => room.broadcast(id, &frame),
                    Action::Answer => {
                        let answer = Message::Binary(Bytes::from_static(&EMPTY_STEP2));
                        let sent = tokio::time::timeout(WRITE_TIMEOUT, ws.send(answer)).await;
                        if !matches!(sent, Ok(Ok(()))) {
                            return None;
                        }
                    }
                    Action::Ignore => {}
                },
                // tungstenite answers pings (and a close) by itself.
                Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Err(WsError::Capacity(_))) => return Some(CloseCode::Size),
                Some(Ok(Message::Close(_)) | Err(_)) | None => return None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{ClientOptions, EditorClient};
    use troupe_proto::Message as Y;

    #[test]
    fn frames_are_classified_by_two_varints() {
        let sv: &[u8] = &[0];
        let update: &[u8] = &[1, 1, 5, 0, 4, 1, 4, 116, 101, 120, 116, 1, 120, 0];
        assert_eq!(classify(&Y::SyncStep1(sv).encode()), Action::Answer);
        assert_eq!(classify(&Y::SyncStep2(update).encode()), Action::Forward);
        assert_eq!(classify(&Y::Update(update).encode()), Action::Forward);
        assert_eq!(classify(&Y::Awareness(&[0]).encode()), Action::Forward);
        assert_eq!(classify(&Y::QueryAwareness.encode()), Action::Ignore);
        assert_eq!(classify(&Y::Auth(None).encode()), Action::Ignore);
        assert_eq!(classify(&Y::Ack(3).encode()), Action::Ignore);
        // The payload is never looked at: a truncated update is still forwarded.
        assert_eq!(classify(&[0, 2, 200]), Action::Forward);
        assert_eq!(classify(&[0, 2]), Action::Forward);
        // Junk never panics.
        for junk in [
            &[][..],
            &[0],
            &[0, 3],
            &[0, 0x80],
            &[0x80; 11],
            &[
                0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
            &[42, 1, 2],
        ] {
            assert_eq!(classify(junk), Action::Ignore, "{junk:?}");
        }
        assert_eq!(Y::decode(&EMPTY_STEP2), Ok(Y::SyncStep2(&[0, 0])));
    }

    #[test]
    fn a_full_queue_drops_the_slow_member() {
        let rooms = Rooms::default();
        let (fast_tx, mut fast_rx) = mpsc::channel(8);
        let (slow_tx, mut slow_rx) = mpsc::channel(1);
        let (sender_tx, mut sender_rx) = mpsc::channel(8);
        let (room, fast) = rooms.join("/a", fast_tx);
        let (_, slow) = rooms.join("/a", slow_tx);
        let (_, sender) = rooms.join("/a", sender_tx);
        let frame = Bytes::from_static(&[0, 2, 0]);
        room.broadcast(sender, &frame);
        room.broadcast(sender, &frame);
        assert_eq!(
            (fast_rx.try_recv(), fast_rx.try_recv()),
            (Ok(frame.clone()), Ok(frame.clone()))
        );
        // The slow one keeps what fitted, then its queue ends; the sender hears nothing.
        assert_eq!(slow_rx.try_recv(), Ok(frame.clone()));
        assert_eq!(slow_rx.try_recv(), Err(mpsc::error::TryRecvError::Disconnected));
        assert!(sender_rx.try_recv().is_err());
        rooms.leave("/a", &room, slow);
        rooms.leave("/a", &room, fast);
        assert!(lock(&rooms.map).contains_key("/a"));
        rooms.leave("/a", &room, sender);
        assert!(lock(&rooms.map).is_empty());
    }

    #[tokio::test]
    async fn updates_reach_the_room_and_only_the_room() {
        let relay = Relay::bind(&RelayOptions::default()).await.expect("bind");
        let base = format!("ws://{}", relay.local_addr().expect("addr"));
        let server = tokio::spawn(relay.serve());
        let t = Duration::from_secs(5);
        let connect = |scene: &'static str, token: &'static str| {
            let base = base.clone();
            async move {
                let c = EditorClient::connect(&base, scene, token, ClientOptions::default())
                    .await
                    .expect("connect");
                c.wait_synced(t).await.expect("synced by the empty step 2");
                c
            }
        };
        let ada = connect("scene-1", "").await;
        let bo = connect("scene-1", "some.jwt.token").await;
        let cy = connect("scene-2", "").await;

        ada.push("text", "hello").await.expect("edit");
        bo.push("text", "!").await.expect("edit");
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let (a, b) = (
                ada.text("text").await.expect("read"),
                bo.text("text").await.expect("read"),
            );
            if a.len() == 6 && a == b {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "ada {a:?}, bo {b:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Scene 2 hears nothing of it; its own edit stays its own.
        cy.push("text", "other").await.expect("edit");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(cy.text("text").await.expect("read"), "other");
        assert_eq!(ada.text("text").await.expect("read").len(), 6);
        for c in [&ada, &bo, &cy] {
            assert_eq!(c.status().protocol_errors, 0);
            c.close(1000, "").await.expect("close");
        }
        server.abort();
    }
}
