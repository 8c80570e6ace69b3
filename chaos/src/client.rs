//! A y-websocket client (y-protocols v1) for tests, benchmarks and simulated editors.
//!
//! [`EditorClient`] is a handle to one task that owns both the WebSocket and the editor's
//! `yrs::Doc`: every edit and read is a closure run inside that task, so no yrs transaction is
//! ever held across an `.await` and the doc is never touched from two threads.
//!
//! ```no_run
//! # async fn demo() -> Result<(), troupe_chaos::client::ClientError> {
//! use std::time::Duration;
//! use troupe_chaos::client::{mint_token, Access, ClientOptions, EditorClient};
//! let token = mint_token(b"0123456789abcdef", "ada", &[("*", Access::Edit)], Duration::from_secs(600))
//!     .expect("sign");
//! let opts = ClientOptions { acks: true, ..ClientOptions::default() };
//! let client = EditorClient::connect("ws://127.0.0.1:4000/ws/scenes", "scene-1", &token, opts).await?;
//! client.wait_synced(Duration::from_secs(5)).await?;
//! client.push("text", "INT. KITCHEN - NIGHT").await?;
//! client.wait_acked(Duration::from_secs(5)).await?; // committed to the store
//! println!("{}", client.text("text").await?);
//! # Ok(()) }
//! ```
//!
//! The connection can drop (server close, network error, [`EditorClient::drop_connection`])
//! while the doc lives on: edits made while offline are applied locally and travel with the
//! sync handshake of the next [`EditorClient::reconnect`].

pub mod token;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::types::text::TextEvent;
use yrs::types::Delta;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{
    Any, ClientID, Doc, GetString, Observable, OffsetKind, Options, Out, ReadTxn, StateVector, Text,
    Transact, Transaction, TransactionMut, Update, WriteTxn,
};

pub use token::{mint_claims, mint_token, Access, Claims, AUDIENCE};
use troupe_proto::message::{decode_awareness, encode_awareness, AwarenessEntry, Message};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a client connects and what it reports.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Ask for Troupe's durable acks (`&acks=1`); enables [`EditorClient::wait_acked`].
    pub acks: bool,
    /// Deliver [`ClientEvent`]s (take the receiver with [`EditorClient::take_events`]).
    /// Off by default: an event stream nobody reads grows without bound.
    pub events: bool,
    /// Name of a `Y.Text` whose remote insertions are reported in
    /// [`ReceivedUpdate::inserted`] (needs `events`).
    pub observe_text: Option<String>,
    /// The doc's client id (random 53-bit id by default).
    pub client_id: Option<u64>,
    /// Bound on the TCP connect + WebSocket handshake.
    pub connect_timeout: Duration,
    /// Largest message accepted from the server.
    pub max_message_bytes: usize,
    /// Disable Nagle's algorithm (latency measurements want this).
    pub nodelay: bool,
    /// Shared by clients that join one scene together (see [`SharedFirstSync`]).
    pub shared_first_sync: Option<SharedFirstSync>,
}

/// The first sync answer that one client of a scene integrated, shared with the other
/// clients of one process that join the same scene. A client whose first sync step 2 is
/// byte-for-byte that answer (same bytes: same document) keeps the bytes and integrates them
/// only when it first needs its document (an update, an edit, a read, a reconnect). Every
/// client's sync is still checked, and 500 simulated joiners of a 2 MB scene do not cost the
/// load tool 500 documents at once: a browser integrates its copy on its own machine.
/// The [`ReceivedUpdate`] of a deferred sync has no `inserted` strings.
#[derive(Debug, Clone, Default)]
pub struct SharedFirstSync(Arc<Mutex<Option<Bytes>>>);

impl SharedFirstSync {
    /// The shared answer, if `update` is that answer (so the received copy can be dropped).
    fn same_as(&self, update: &Bytes) -> Option<Bytes> {
        let known = self.0.lock().ok()?;
        known.as_ref().filter(|known| *known == update).cloned()
    }

    fn offer(&self, update: &Bytes) {
        if let Ok(mut known) = self.0.lock() {
            if known.is_none() {
                *known = Some(update.clone());
            }
        }
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            acks: false,
            events: false,
            observe_text: None,
            client_id: None,
            connect_timeout: Duration::from_secs(10),
            max_message_bytes: 16 << 20,
            nodelay: true,
            shared_first_sync: None,
        }
    }
}

/// Who ended a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseInitiator {
    /// The server sent a close frame.
    Server,
    /// This client closed (or was dropped).
    Client,
    /// The connection broke without a close frame (reset, EOF, protocol violation).
    Transport(String),
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    /// Close code, when a close frame carried one (4401, 4403, 4301, 1001, …).
    pub code: Option<u16>,
    /// Close reason (for 4301 `moved`: the owner's URL).
    pub reason: String,
    pub initiator: CloseInitiator,
    pub at: Instant,
}

impl fmt::Display for CloseInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.initiator {
            CloseInitiator::Server => write!(f, "closed by server")?,
            CloseInitiator::Client => write!(f, "closed by client")?,
            CloseInitiator::Transport(e) => write!(f, "connection lost ({e})")?,
        }
        if let Some(code) = self.code {
            write!(f, " with code {code}")?;
        }
        if !self.reason.is_empty() {
            write!(f, ": {}", self.reason)?;
        }
        Ok(())
    }
}

/// A snapshot of the client's connection state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// Connection generation: 1 for the first connection, +1 per reconnect.
    pub connection: u64,
    /// Whether a WebSocket is open.
    pub connected: bool,
    /// The server's sync step 2 has arrived on this connection.
    pub synced: bool,
    /// Update-bearing messages (sync step 2 + update) sent on this connection.
    pub sent_updates: u64,
    /// Of those, how many the server acknowledged as committed.
    pub acked: u64,
    /// Frames from the server that could not be decoded or applied.
    pub protocol_errors: u64,
    /// How the current connection ended, once it has.
    pub closed: Option<CloseInfo>,
}

/// Which sync message carried a received update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateKind {
    SyncStep2,
    Update,
}

/// A document update received from the server.
#[derive(Debug, Clone)]
pub struct ReceivedUpdate {
    /// When its frame was read off the socket.
    pub at: Instant,
    pub kind: UpdateKind,
    /// The v1 update as received.
    pub update: Bytes,
    /// Strings it inserted into [`ClientOptions::observe_text`] (empty without it).
    pub inserted: Vec<String>,
}

/// Things that happen on a client, in order (enable with [`ClientOptions::events`]).
#[derive(Debug, Clone)]
pub enum ClientEvent {
    /// A (re)connection opened.
    Connected {
        at: Instant,
        connection: u64,
    },
    /// The server's sync step 2 arrived.
    Synced {
        at: Instant,
        connection: u64,
    },
    Update(ReceivedUpdate),
    /// The server acknowledged the first `acked` update-bearing messages.
    Ack {
        at: Instant,
        acked: u64,
    },
    /// Remote awareness states changed (added, updated or removed).
    Awareness {
        at: Instant,
        changed: Vec<u64>,
    },
    /// The server denied permission (y-protocols auth message).
    AuthDenied {
        at: Instant,
        reason: String,
    },
    /// A frame that could not be decoded or applied; the connection stays up.
    ProtocolError {
        at: Instant,
        error: String,
    },
    Closed(CloseInfo),
}

/// What happened to the update an edit produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The edit changed nothing.
    Nothing,
    /// Sent as the `n`-th update-bearing message of connection `connection`
    /// (acknowledged once [`Status::acked`] reaches `n`).
    Message { connection: u64, n: u64 },
    /// Applied locally while disconnected; it goes out with the next sync handshake.
    Offline,
}

impl Sent {
    /// The message number, if the update went out.
    pub fn seq(&self) -> Option<u64> {
        match self {
            Sent::Message { n, .. } => Some(*n),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid url: {0}")]
    Url(String),
    #[error("websocket: {0}")]
    WebSocket(Box<tungstenite::Error>),
    #[error("server refused the upgrade with HTTP {status}: {body}")]
    Http { status: u16, body: String },
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("{0}")]
    Closed(CloseInfo),
    #[error("not connected")]
    NotConnected,
    #[error("durable acks were not requested (ClientOptions::acks)")]
    AcksDisabled,
    #[error("client task stopped")]
    Stopped,
}

impl From<tungstenite::Error> for ClientError {
    fn from(e: tungstenite::Error) -> Self {
        match e {
            tungstenite::Error::Http(resp) => ClientError::Http {
                status: resp.status().as_u16(),
                body: resp
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default(),
            },
            e => ClientError::WebSocket(Box::new(e)),
        }
    }
}

/// `{base}/{scene}?token={token}[&acks=1]`; `scene` is percent-encoded as one path segment.
/// An empty token is left out (the reference server needs none).
pub fn scene_url(base: &str, scene: &str, token: &str, acks: bool) -> Result<String, ClientError> {
    let mut url = url::Url::parse(base).map_err(|e| ClientError::Url(format!("{base}: {e}")))?;
    if url.scheme() != "ws" && url.scheme() != "wss" {
        return Err(ClientError::Url(format!("{base}: scheme must be ws or wss")));
    }
    url.path_segments_mut()
        .map_err(|_| ClientError::Url(format!("{base}: cannot have a path")))?
        .pop_if_empty()
        .push(scene);
    if !token.is_empty() {
        url.query_pairs_mut().append_pair("token", token);
    }
    if acks {
        url.query_pairs_mut().append_pair("acks", "1");
    }
    Ok(url.into())
}

type Finish = Box<dyn FnOnce(Sent) + Send>;
type EditJob = Box<dyn FnOnce(&mut TransactionMut<'_>) -> Finish + Send>;
type ReadJob = Box<dyn FnOnce(&Transaction<'_>) + Send>;

enum Command {
    Edit(EditJob),
    Read(ReadJob),
    SetAwareness(Option<String>, oneshot::Sender<bool>),
    QueryAwareness(oneshot::Sender<bool>),
    AwarenessStates(oneshot::Sender<HashMap<u64, String>>),
    SendRaw(Vec<u8>, oneshot::Sender<bool>),
    Close(u16, String, oneshot::Sender<()>),
    DropConnection(oneshot::Sender<()>),
    Reconnect(Option<String>, oneshot::Sender<Result<(), ClientError>>),
}

/// One simulated editor: a yrs doc kept in sync with a y-websocket server.
pub struct EditorClient {
    cmds: mpsc::UnboundedSender<Command>,
    status: watch::Receiver<Status>,
    events: Option<mpsc::UnboundedReceiver<ClientEvent>>,
    client_id: u64,
    acks: bool,
}

impl EditorClient {
    /// Connects to `{base}/{scene}?token=…` (base like `ws://host:port/ws/scenes`) and starts
    /// the sync handshake. Returns once the WebSocket is open; see [`Self::wait_synced`].
    pub async fn connect(
        base: &str,
        scene: &str,
        token: &str,
        opts: ClientOptions,
    ) -> Result<Self, ClientError> {
        let url = scene_url(base, scene, token, opts.acks)?;
        Self::connect_url(&url, opts).await
    }

    /// Connects to a full URL (query string included; add `acks=1` yourself if `opts.acks`).
    pub async fn connect_url(url: &str, opts: ClientOptions) -> Result<Self, ClientError> {
        let ws = open(url, &opts).await?;
        let client_id = opts
            .client_id
            .map(|id| id & ((1 << 53) - 1))
            .unwrap_or_else(|| ClientID::random().get());
        let doc = Doc::with_options(Options {
            client_id: ClientID::new(client_id),
            // What JavaScript clients use, so indexes mean the same on both sides.
            offset_kind: OffsetKind::Utf16,
            ..Options::default()
        });
        let (events_tx, events_rx) = if opts.events {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let inserted = match (&opts.observe_text, opts.events) {
            (Some(name), true) => {
                let buf = Arc::new(Mutex::new(Vec::new()));
                let sink = buf.clone();
                let text = doc.get_or_insert_text(name.as_str());
                text.observe("troupe-chaos", move |txn, event: &TextEvent| {
                    let mut out = match sink.lock() {
                        Ok(g) => g,
                        Err(poisoned) => poisoned.into_inner(),
                    };
                    for delta in event.delta(txn) {
                        if let Delta::Inserted(Out::Any(Any::String(s)), _) = delta {
                            out.push(s.to_string());
                        }
                    }
                });
                Some(buf)
            }
            _ => None,
        };
        let (status_tx, status_rx) = watch::channel(Status {
            connection: 1,
            connected: true,
            ..Status::default()
        });
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let actor = Actor {
            ws: Some(ws),
            url: url.to_owned(),
            opts: opts.clone(),
            doc,
            deferred_sync: None,
            status: status_tx,
            events: events_tx,
            inserted,
            local_awareness: None,
            awareness_clock: 0,
            remote_awareness: HashMap::new(),
            client_id,
        };
        tokio::spawn(actor.run(cmd_rx));
        Ok(Self {
            cmds: cmd_tx,
            status: status_rx,
            events: events_rx,
            client_id,
            acks: opts.acks,
        })
    }

    /// The doc's client id (also the awareness client id).
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// The event stream (once; `None` without [`ClientOptions::events`] or when taken).
    pub fn take_events(&mut self) -> Option<mpsc::UnboundedReceiver<ClientEvent>> {
        self.events.take()
    }

    /// The current connection state.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// A watch on the connection state, for waiting on custom conditions.
    pub fn watch_status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    pub fn is_synced(&self) -> bool {
        self.status.borrow().synced
    }

    /// How the current connection ended, if it has.
    pub fn close_info(&self) -> Option<CloseInfo> {
        self.status.borrow().closed.clone()
    }

    /// Waits until the server's sync step 2 has arrived on the current connection.
    /// Fails with [`ClientError::Closed`] if the connection ends first.
    pub async fn wait_synced(&self, timeout: Duration) -> Result<(), ClientError> {
        let st = self
            .wait_status(timeout, "sync", |s| s.synced || s.closed.is_some())
            .await?;
        match st.closed {
            Some(info) if !st.synced => Err(ClientError::Closed(info)),
            _ => Ok(()),
        }
    }

    /// Waits until every update-bearing message sent so far on this connection is acked
    /// (committed to the server's store). Returns the acked count.
    pub async fn wait_acked(&self, timeout: Duration) -> Result<u64, ClientError> {
        let (connection, target) = {
            let s = self.status.borrow();
            (s.connection, s.sent_updates)
        };
        self.wait_acked_through(connection, target, timeout).await
    }

    /// Waits until message `n` of connection `connection` (see [`Sent`]) is acked.
    pub async fn wait_acked_through(
        &self,
        connection: u64,
        n: u64,
        timeout: Duration,
    ) -> Result<u64, ClientError> {
        if !self.acks {
            return Err(ClientError::AcksDisabled);
        }
        let st = self
            .wait_status(timeout, "acks", |s| {
                s.connection != connection || s.acked >= n || s.closed.is_some()
            })
            .await?;
        if st.connection == connection && st.acked >= n {
            return Ok(st.acked);
        }
        Err(match st.closed {
            Some(info) if st.connection == connection => ClientError::Closed(info),
            _ => ClientError::NotConnected,
        })
    }

    /// Waits until the current connection ends and says how (e.g. a 4401 close).
    pub async fn closed(&self, timeout: Duration) -> Result<CloseInfo, ClientError> {
        let st = self.wait_status(timeout, "close", |s| s.closed.is_some()).await?;
        st.closed.ok_or(ClientError::Stopped)
    }

    async fn wait_status(
        &self,
        timeout: Duration,
        what: &'static str,
        mut pred: impl FnMut(&Status) -> bool,
    ) -> Result<Status, ClientError> {
        let mut rx = self.status.clone();
        let res = tokio::time::timeout(timeout, async {
            let waited = rx.wait_for(|s| pred(s)).await.map(|s| s.clone());
            match waited {
                Ok(s) => Ok(s),
                // The task ended: its last state is final.
                Err(_) => {
                    let s = rx.borrow().clone();
                    if pred(&s) {
                        Ok(s)
                    } else {
                        Err(ClientError::Stopped)
                    }
                }
            }
        })
        .await;
        res.map_err(|_| ClientError::Timeout(what))?
    }

    /// Runs `f` in a write transaction on the doc and sends the update it produced.
    /// The closure runs on the client's task: it must not block.
    pub async fn edit<R, F>(&self, f: F) -> Result<(R, Sent), ClientError>
    where
        F: FnOnce(&mut TransactionMut<'_>) -> R + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: EditJob = Box::new(move |txn| {
            let value = f(txn);
            Box::new(move |sent| {
                let _ = tx.send((value, sent));
            })
        });
        self.command(Command::Edit(job))?;
        rx.await.map_err(|_| ClientError::Stopped)
    }

    /// Inserts `content` at `index` (UTF-16 units, clamped to the length) of the text `text`.
    pub async fn insert(&self, text: &str, index: u32, content: &str) -> Result<Sent, ClientError> {
        let (name, content) = (text.to_owned(), content.to_owned());
        let ((), sent) = self
            .edit(move |txn| {
                let t = txn.get_or_insert_text(name.as_str());
                let index = index.min(t.len(txn));
                t.insert(txn, index, &content);
            })
            .await?;
        Ok(sent)
    }

    /// Appends `content` to the text `text`.
    pub async fn push(&self, text: &str, content: &str) -> Result<Sent, ClientError> {
        self.insert(text, u32::MAX, content).await
    }

    /// Deletes `len` units at `index` of the text `text` (clamped to the length).
    pub async fn delete(&self, text: &str, index: u32, len: u32) -> Result<Sent, ClientError> {
        let name = text.to_owned();
        let ((), sent) = self
            .edit(move |txn| {
                let t = txn.get_or_insert_text(name.as_str());
                let total = t.len(txn);
                let index = index.min(total);
                let len = len.min(total - index);
                if len > 0 {
                    t.remove_range(txn, index, len);
                }
            })
            .await?;
        Ok(sent)
    }

    /// Runs `f` in a read transaction on the doc.
    pub async fn read<R, F>(&self, f: F) -> Result<R, ClientError>
    where
        F: FnOnce(&Transaction<'_>) -> R + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Read(Box::new(move |txn| {
            let _ = tx.send(f(txn));
        })))?;
        rx.await.map_err(|_| ClientError::Stopped)
    }

    /// The current content of the text `text` ("" if it does not exist).
    pub async fn text(&self, text: &str) -> Result<String, ClientError> {
        let name = text.to_owned();
        self.read(move |txn| {
            txn.get_text(name.as_str())
                .map(|t| t.get_string(txn))
                .unwrap_or_default()
        })
        .await
    }

    /// The whole doc as one v1 update (for convergence checks).
    pub async fn state_update(&self) -> Result<Vec<u8>, ClientError> {
        self.read(|txn| txn.encode_state_as_update_v1(&StateVector::default()))
            .await
    }

    /// The doc's v1-encoded state vector.
    pub async fn state_vector(&self) -> Result<Vec<u8>, ClientError> {
        self.read(|txn| txn.state_vector().encode_v1()).await
    }

    /// Sets this client's awareness state (any JSON) and sends it; `None` clears it
    /// (sends `null`, as y-protocols does on disconnect). Offline this returns
    /// [`ClientError::NotConnected`], but the state is kept and sent on reconnect.
    pub async fn set_awareness(&self, state: Option<&serde_json::Value>) -> Result<(), ClientError> {
        let json = state.map(|v| v.to_string());
        let (tx, rx) = oneshot::channel();
        self.command(Command::SetAwareness(json, tx))?;
        sent_or_not_connected(rx.await)
    }

    /// Asks the server for every awareness state in the scene.
    pub async fn query_awareness(&self) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::QueryAwareness(tx))?;
        sent_or_not_connected(rx.await)
    }

    /// Remote awareness states received on this connection: client id -> JSON text.
    pub async fn awareness_states(&self) -> Result<HashMap<u64, String>, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::AwarenessStates(tx))?;
        rx.await.map_err(|_| ClientError::Stopped)
    }

    /// Sends an arbitrary binary frame (malformed input for robustness tests). Raw frames do
    /// not count towards acks.
    pub async fn send_raw(&self, frame: Vec<u8>) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::SendRaw(frame, tx))?;
        sent_or_not_connected(rx.await)
    }

    /// Closes the connection with `code` and waits (briefly) for the server's answer.
    /// The doc stays usable offline; [`Self::reconnect`] opens a new connection.
    pub async fn close(&self, code: u16, reason: &str) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Close(code, reason.to_owned(), tx))?;
        rx.await.map_err(|_| ClientError::Stopped)
    }

    /// Drops the TCP connection without a close handshake (a crashed browser tab).
    pub async fn drop_connection(&self) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::DropConnection(tx))?;
        rx.await.map_err(|_| ClientError::Stopped)
    }

    /// Opens a new connection to the same URL (closing the current one if open) and starts
    /// the sync handshake; whatever the doc gained offline is sent as sync step 2.
    pub async fn reconnect(&self) -> Result<(), ClientError> {
        self.reconnect_inner(None).await
    }

    /// Like [`Self::reconnect`] but to another full URL (e.g. the owner named by a 4301 close).
    pub async fn reconnect_to(&self, url: &str) -> Result<(), ClientError> {
        self.reconnect_inner(Some(url.to_owned())).await
    }

    async fn reconnect_inner(&self, url: Option<String>) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Reconnect(url, tx))?;
        rx.await.map_err(|_| ClientError::Stopped)?
    }

    fn command(&self, cmd: Command) -> Result<(), ClientError> {
        self.cmds.send(cmd).map_err(|_| ClientError::Stopped)
    }
}

fn sent_or_not_connected(r: Result<bool, oneshot::error::RecvError>) -> Result<(), ClientError> {
    match r {
        Ok(true) => Ok(()),
        Ok(false) => Err(ClientError::NotConnected),
        Err(_) => Err(ClientError::Stopped),
    }
}

async fn open(url: &str, opts: &ClientOptions) -> Result<Ws, ClientError> {
    // tungstenite's read buffer (128 KiB by default) is allocated and zeroed per connection:
    // thousands of simulated editors reconnecting at once paid for that more than for
    // anything they read.
    let config = WebSocketConfig::default()
        .max_message_size(Some(opts.max_message_bytes))
        .max_frame_size(Some(opts.max_message_bytes))
        .read_buffer_size(16 * 1024);
    let connecting = tokio_tungstenite::connect_async_with_config(url, Some(config), opts.nodelay);
    let (ws, _response) = tokio::time::timeout(opts.connect_timeout, connecting)
        .await
        .map_err(|_| ClientError::Timeout("connect"))??;
    Ok(ws)
}

fn apply_remote(doc: &Doc, update: &[u8]) -> Result<(), String> {
    let update = Update::decode_v1(update).map_err(|e| e.to_string())?;
    let mut txn = doc.transact_mut_with("remote");
    txn.apply_update(update).map_err(|e| e.to_string())
}

/// The task that owns the socket and the doc.
struct Actor {
    ws: Option<Ws>,
    url: String,
    opts: ClientOptions,
    /// Read through [`Actor::doc`], which first integrates a deferred first sync.
    doc: Doc,
    /// A first sync step 2 equal to the [`SharedFirstSync`], not integrated yet.
    deferred_sync: Option<Bytes>,
    status: watch::Sender<Status>,
    events: Option<mpsc::UnboundedSender<ClientEvent>>,
    /// Filled by the text observer while a remote update is applied.
    inserted: Option<Arc<Mutex<Vec<String>>>>,
    local_awareness: Option<String>,
    awareness_clock: u64,
    remote_awareness: HashMap<u64, (u64, String)>,
    client_id: u64,
}

impl Actor {
    async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Command>) {
        self.emit(ClientEvent::Connected {
            at: Instant::now(),
            connection: 1,
        });
        self.open_handshake().await;
        loop {
            tokio::select! {
                frame = next_frame(&mut self.ws) => {
                    let at = Instant::now();
                    match frame {
                        Some(Ok(msg)) => self.on_frame(msg, at).await,
                        Some(Err(e)) => self.lost(e.to_string()),
                        None => self.lost("connection closed without a close frame".into()),
                    }
                }
                cmd = cmds.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd).await,
                    None => {
                        // Every handle is gone: leave politely.
                        self.close(1000, String::new()).await;
                        return;
                    }
                }
            }
        }
    }

    /// Sends our sync step 1 (and our awareness, if set) on a fresh connection.
    async fn open_handshake(&mut self) {
        let sv = self.doc().transact().state_vector().encode_v1();
        self.send(&Message::SyncStep1(&sv)).await;
        if let Some(state) = self.local_awareness.clone() {
            self.send_frame(self.awareness_frame(&state)).await;
        }
    }

    async fn on_frame(&mut self, msg: WsMessage, at: Instant) {
        match msg {
            WsMessage::Binary(frame) => match Message::decode(&frame) {
                Ok(m) => self.on_message(m, &frame, at).await,
                Err(e) => self.protocol_error(at, format!("undecodable frame: {e}")),
            },
            WsMessage::Close(frame) => {
                let (code, reason) = match frame {
                    Some(f) => (Some(u16::from(f.code)), f.reason.to_string()),
                    None => (None, String::new()),
                };
                self.set_closed(code, reason, CloseInitiator::Server, at);
                // Keep reading: tungstenite answers the close and then ends the stream.
            }
            // Pings are answered by tungstenite; y-websocket servers send no text frames.
            _ => {}
        }
    }

    /// Handles one message of `frame` (its payloads are slices of the frame).
    async fn on_message(&mut self, msg: Message<'_>, frame: &Bytes, at: Instant) {
        match msg {
            Message::SyncStep1(sv) => {
                let diff = match StateVector::decode_v1(sv) {
                    Ok(sv) => self.doc().transact().encode_diff_v1(&sv),
                    Err(e) => return self.protocol_error(at, format!("bad state vector: {e}")),
                };
                self.send(&Message::SyncStep2(&diff)).await;
            }
            Message::SyncStep2(update) => self.on_update(UpdateKind::SyncStep2, frame.slice_ref(update), at),
            Message::Update(update) => self.on_update(UpdateKind::Update, frame.slice_ref(update), at),
            // A server speaks for every client in the scene: no limit but the frame's size.
            Message::Awareness(payload) => match decode_awareness(payload, usize::MAX) {
                Ok(entries) => self.on_awareness(entries, at),
                Err(e) => self.protocol_error(at, format!("undecodable awareness: {e}")),
            },
            Message::QueryAwareness => {
                if let Some(state) = self.local_awareness.clone() {
                    self.send_frame(self.awareness_frame(&state)).await;
                }
            }
            Message::Auth(Some(reason)) => self.emit(ClientEvent::AuthDenied {
                at,
                reason: reason.to_owned(),
            }),
            Message::Auth(None) => {}
            Message::Ack(n) => {
                let mut changed = false;
                self.status.send_if_modified(|s| {
                    changed = n > s.acked;
                    if changed {
                        s.acked = n;
                    }
                    changed
                });
                if changed {
                    self.emit(ClientEvent::Ack { at, acked: n });
                }
            }
        }
    }

    fn on_update(&mut self, kind: UpdateKind, update: Bytes, at: Instant) {
        let first_sync = kind == UpdateKind::SyncStep2
            && self.deferred_sync.is_none()
            && self.doc.transact().state_vector().is_empty();
        let shared = first_sync.then(|| self.opts.shared_first_sync.clone()).flatten();
        let known = shared.as_ref().and_then(|shared| shared.same_as(&update));
        let inserted = match known {
            Some(known) => {
                self.deferred_sync = Some(known);
                Vec::new()
            }
            _ => {
                let applied = apply_remote(self.doc(), &update);
                let inserted = self.take_inserted();
                if let Err(e) = applied {
                    return self.protocol_error(at, format!("update not applied: {e}"));
                }
                if let Some(shared) = &shared {
                    shared.offer(&update);
                }
                inserted
            }
        };
        if kind == UpdateKind::SyncStep2 && !self.status.borrow().synced {
            let mut connection = 0;
            self.status.send_modify(|s| {
                s.synced = true;
                connection = s.connection;
            });
            self.emit(ClientEvent::Synced { at, connection });
        }
        self.emit(ClientEvent::Update(ReceivedUpdate {
            at,
            kind,
            update,
            inserted,
        }));
    }

    fn on_awareness(&mut self, entries: Vec<AwarenessEntry<'_>>, at: Instant) {
        let mut changed = Vec::new();
        for e in entries {
            if e.client_id == self.client_id {
                continue; // our own state, echoed back
            }
            let newer = self
                .remote_awareness
                .get(&e.client_id)
                .is_none_or(|(clock, _)| e.clock >= *clock);
            if !newer {
                continue;
            }
            if e.is_removal() {
                if self.remote_awareness.remove(&e.client_id).is_some() {
                    changed.push(e.client_id);
                }
            } else {
                self.remote_awareness
                    .insert(e.client_id, (e.clock, e.state.to_owned()));
                changed.push(e.client_id);
            }
        }
        if !changed.is_empty() {
            self.emit(ClientEvent::Awareness { at, changed });
        }
    }

    async fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Edit(job) => {
                let (finish, update) = {
                    let mut txn = self.doc().transact_mut();
                    let finish = job(&mut txn);
                    let update = txn.has_changes().then(|| txn.encode_update_v1());
                    (finish, update)
                };
                self.take_inserted(); // local insertions are not news
                let sent = match update {
                    None => Sent::Nothing,
                    Some(u) => match self.send(&Message::Update(&u)).await {
                        Some(n) => Sent::Message {
                            connection: self.status.borrow().connection,
                            n,
                        },
                        None => Sent::Offline,
                    },
                };
                finish(sent);
            }
            Command::Read(job) => job(&self.doc().transact()),
            Command::SetAwareness(state, reply) => {
                self.awareness_clock += 1;
                let frame = self.awareness_frame(state.as_deref().unwrap_or("null"));
                self.local_awareness = state;
                let ok = self.send_frame(frame).await;
                let _ = reply.send(ok);
            }
            Command::QueryAwareness(reply) => {
                let ok = self.send(&Message::QueryAwareness).await.is_some();
                let _ = reply.send(ok);
            }
            Command::AwarenessStates(reply) => {
                let states = self
                    .remote_awareness
                    .iter()
                    .map(|(id, (_, json))| (*id, json.clone()))
                    .collect();
                let _ = reply.send(states);
            }
            Command::SendRaw(frame, reply) => {
                let ok = self.send_frame(frame).await;
                let _ = reply.send(ok);
            }
            Command::Close(code, reason, reply) => {
                self.close(code, reason).await;
                let _ = reply.send(());
            }
            Command::DropConnection(reply) => {
                if self.ws.take().is_some() {
                    self.set_closed(
                        None,
                        String::new(),
                        CloseInitiator::Transport("dropped by client".into()),
                        Instant::now(),
                    );
                }
                let _ = reply.send(());
            }
            Command::Reconnect(url, reply) => {
                let _ = reply.send(self.reconnect(url).await);
            }
        }
    }

    async fn reconnect(&mut self, url: Option<String>) -> Result<(), ClientError> {
        if self.ws.is_some() {
            self.close(1000, String::new()).await;
        }
        if let Some(url) = url {
            self.url = url;
        }
        let ws = open(&self.url, &self.opts).await?;
        self.ws = Some(ws);
        self.remote_awareness.clear();
        let mut connection = 0;
        self.status.send_modify(|s| {
            connection = s.connection + 1;
            *s = Status {
                connection,
                connected: true,
                protocol_errors: s.protocol_errors,
                ..Status::default()
            };
        });
        self.emit(ClientEvent::Connected {
            at: Instant::now(),
            connection,
        });
        self.open_handshake().await;
        Ok(())
    }

    /// Closes the socket with a close frame and drains until the server answers (≤ 2 s).
    async fn close(&mut self, code: u16, reason: String) {
        let Some(ws) = self.ws.as_mut() else { return };
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.clone().into(),
        };
        let _ = ws.close(Some(frame)).await;
        let drained = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        let _ = drained;
        self.ws = None;
        if self.status.borrow().closed.is_none() {
            self.set_closed(Some(code), reason, CloseInitiator::Client, Instant::now());
        }
    }

    /// Encodes and sends a message; returns the update-bearing count after it (or 0 for
    /// other messages), or `None` if there is no open connection.
    async fn send(&mut self, msg: &Message<'_>) -> Option<u64> {
        if !self.send_frame(msg.encode()).await {
            return None;
        }
        let mut n = 0;
        if msg.is_update_bearing() {
            self.status.send_modify(|s| {
                s.sent_updates += 1;
                n = s.sent_updates;
            });
        }
        Some(n)
    }

    async fn send_frame(&mut self, frame: Vec<u8>) -> bool {
        let Some(ws) = self.ws.as_mut() else {
            return false;
        };
        match ws.send(WsMessage::Binary(frame.into())).await {
            Ok(()) => true,
            Err(e) => {
                self.lost(e.to_string());
                false
            }
        }
    }

    /// Our presence as one awareness frame.
    fn awareness_frame(&self, state: &str) -> Vec<u8> {
        encode_awareness([(self.client_id, self.awareness_clock, state)].into_iter())
    }

    /// The connection broke: forget the socket and record why (unless a close frame did).
    fn lost(&mut self, why: String) {
        self.ws = None;
        if self.status.borrow().closed.is_none() {
            self.set_closed(
                None,
                String::new(),
                CloseInitiator::Transport(why),
                Instant::now(),
            );
        } else {
            self.status.send_modify(|s| s.connected = false);
        }
    }

    fn set_closed(&mut self, code: Option<u16>, reason: String, initiator: CloseInitiator, at: Instant) {
        let info = CloseInfo {
            code,
            reason,
            initiator,
            at,
        };
        self.status.send_modify(|s| {
            s.closed = Some(info.clone());
            s.connected = self.ws.is_some();
        });
        self.emit(ClientEvent::Closed(info));
    }

    fn protocol_error(&mut self, at: Instant, error: String) {
        tracing::debug!(client = self.client_id, %error, "protocol error from server");
        self.status.send_modify(|s| s.protocol_errors += 1);
        self.emit(ClientEvent::ProtocolError { at, error });
    }

    /// The editor's document, with a deferred first sync integrated.
    fn doc(&mut self) -> &Doc {
        if let Some(update) = self.deferred_sync.take() {
            // The same bytes were integrated by another client: they apply.
            if let Err(e) = apply_remote(&self.doc, &update) {
                tracing::warn!(client = self.client_id, %e, "a shared first sync did not apply");
            }
            self.take_inserted();
        }
        &self.doc
    }

    fn take_inserted(&self) -> Vec<String> {
        match &self.inserted {
            Some(buf) => match buf.lock() {
                Ok(mut g) => std::mem::take(&mut *g),
                Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
            },
            None => Vec::new(),
        }
    }

    fn emit(&self, event: ClientEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(event);
        }
    }
}

/// The next frame of the connection, or never when there is none.
async fn next_frame(ws: &mut Option<Ws>) -> Option<Result<WsMessage, tungstenite::Error>> {
    match ws {
        Some(ws) => ws.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scene_urls() {
        assert_eq!(
            scene_url("ws://127.0.0.1:4000/ws/scenes", "s-1", "a.b.c", true).unwrap(),
            "ws://127.0.0.1:4000/ws/scenes/s-1?token=a.b.c&acks=1"
        );
        assert_eq!(
            scene_url("ws://127.0.0.1:4000/ws/scenes/", "s 1/x", "t", false).unwrap(),
            "ws://127.0.0.1:4000/ws/scenes/s%201%2Fx?token=t"
        );
        assert_eq!(
            scene_url("ws://127.0.0.1:1234", "doc", "", false).unwrap(),
            "ws://127.0.0.1:1234/doc"
        );
        assert!(scene_url("http://x", "doc", "", false).is_err());
        assert!(scene_url("nonsense", "doc", "", false).is_err());
    }

    #[test]
    fn close_info_reads_well() {
        let info = CloseInfo {
            code: Some(troupe_proto::CloseCode::Moved.code()),
            reason: "ws://other:4000/ws/scenes".into(),
            initiator: CloseInitiator::Server,
            at: Instant::now(),
        };
        assert_eq!(
            info.to_string(),
            "closed by server with code 4301: ws://other:4000/ws/scenes"
        );
    }
}
