//! A room: one live scene. A single task owns the scene's yrs document, its clients and
//! their presence; everything else talks to it through its bounded inbox.
//!
//! Order of work for an edit: apply to the document, fan out to the other clients at once,
//! then hand it to the group committer; a client that asked for acks hears back once the
//! batch holding its edit is committed. A client whose queue fills up is disconnected
//! rather than allowed to hold memory.

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit};
use troupe_membership::rpc::RpcClient;
use troupe_membership::{NodeId, NodeSelf};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

use crate::auth::Role;
use crate::config::Limits;
use crate::metrics::Metrics;
use crate::outbox::ClientQueue;
use crate::placement::{PlacementView, Verdict};
use crate::presence::{Notice, PresenceRecord, RedisHandle, PRESENCE_REFRESH};
use crate::protocol::{self, MessageKind, ValidFrame};
use crate::store::{LogAppend, Snapshot, Store, StoreError, StoredScene};
use crate::update_check::{self, CheckLimits};
use crate::writer::{CommitStatus, QueueError, WriteJob, WriterHandle};

/// WebSocket close codes (see README, "Close codes").
pub mod close {
    /// This node does not own the scene (the reason carries the owner's URL when known).
    pub const MOVED: u16 = 4301;
    pub const BAD_MESSAGE: u16 = 4400;
    pub const UNAUTHORIZED: u16 = 4401;
    pub const FORBIDDEN: u16 = 4403;
    pub const UNKNOWN_SCENE: u16 = 4404;
    pub const TOO_LARGE: u16 = 4413;
    pub const RATE_LIMITED: u16 = 4429;
    pub const GOING_AWAY: u16 = 1001;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const INTERNAL: u16 = 1011;
    pub const RESTARTING: u16 = 1012;
    pub const TRY_AGAIN: u16 = 1013;
}

/// How often a room with work waiting retries a deferred flush and publishes presence.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(250);

/// The longest a quiet room sleeps between housekeeping rounds (a safety net: what falls
/// due sooner wakes it sooner).
const QUIET_HOUSEKEEPING: Duration = Duration::from_secs(2);

/// Most awareness client ids one connection may speak for (one per Yjs doc it syncs).
const MAX_CLIENT_IDS_PER_CONNECTION: usize = 4;

/// Most out-of-order updates a room holds, and their bytes, before it asks the sender to
/// resync instead.
const MAX_HELD_UPDATES: usize = 256;
const MAX_HELD_BYTES: usize = 4 << 20;

/// Most out-of-order updates one connection may have held at once.
const MAX_HELD_PER_PEER: usize = 64;

/// An update waiting for what it follows.
struct Held {
    conn_id: u64,
    /// Its number among the sender's update-bearing messages (for the ack).
    count: u64,
    update: Vec<u8>,
}

/// What a peer's update means for its acks.
enum AckMark {
    /// The update with this count was applied now.
    Applied(u64),
    /// The update with this count waits, out of order.
    Held(u64),
    /// The held update with this count was applied now.
    Released(u64),
}

/// A connection asking to join.
pub struct Joiner {
    pub conn_id: u64,
    /// The token's subject.
    pub user: String,
    pub role: Role,
    pub acks: bool,
    pub outbox: ClientQueue,
}

/// Why a join was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinRefused {
    Full,
    /// The room is unloading: try a fresh one.
    Unavailable,
    /// The scene could not be claimed or read from the store.
    StoreDown,
    /// Another node owns the scene: its URL when known.
    Moved(Option<String>),
}

/// What a room's inbox carries. Kept small (the large parts boxed): every room's inbox
/// holds a block of 32 of these from the start.
pub enum RoomCmd {
    Join {
        joiner: Box<Joiner>,
        reply: oneshot::Sender<Result<(), JoinRefused>>,
    },
    Frame(Box<IncomingFrame>),
    Leave {
        conn_id: u64,
    },
    /// The store says another node holds the scene's lease (checked at `checked_at`).
    LeaseLost {
        checked_at: Instant,
    },
}

/// A validated frame from one of the room's connections.
pub struct IncomingFrame {
    pub conn_id: u64,
    pub received: Instant,
    pub frame: ValidFrame,
    /// The frame's share of the inbox byte budget, released once handled.
    pub _permit: OwnedSemaphorePermit,
}

/// What a room needs from the directory that started it: to take itself out once it
/// unloads. A trait, so that the room does not depend on the directory (which starts rooms
/// and so depends on the room): [`crate::rooms::Rooms`] implements it.
pub trait Directory: Send + Sync {
    /// Removes `scene` if it is still served by room incarnation `id`.
    fn remove(&self, scene: &str, id: u64);
}

/// What every room shares.
pub struct RoomContext {
    pub store: Store,
    pub writer: WriterHandle,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// This node's cluster id.
    pub node: NodeId,
    /// The same id as the store records it: the lease owner and log writer.
    pub node_id: String,
    /// The cluster's placement: a room serves its scene only while it names this node.
    pub placement: watch::Receiver<Arc<PlacementView>>,
    /// Presence and notices on Redis, when configured.
    pub presence: Option<RedisHandle>,
    /// Turns true when the node shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Asks a former owner whether it is alive before waiting for its release.
    pub rpc: RpcClient,
}

struct Peer {
    user: String,
    role: Role,
    acks: bool,
    outbox: ClientQueue,
    /// Update-bearing messages received from this peer.
    updates_received: u64,
    /// `(seq that must be committed, updates_received at the time)`, oldest first; the
    /// seq is unknown (None) while that update is held out of order.
    ack_marks: VecDeque<(Option<u64>, u64)>,
    /// Awareness client ids this connection speaks for.
    client_ids: Vec<u64>,
}

struct PresenceEntry {
    clock: u64,
    state: String,
    /// The token subject of the connection that speaks for this client id.
    user: String,
}

/// The compaction counters: how much log the latest snapshot does not cover yet.
#[derive(Default)]
struct Uncompacted {
    rows: u64,
    bytes: u64,
    since: Option<Instant>,
}

pub struct Room {
    scene: String,
    id: u64,
    ctx: Arc<RoomContext>,
    directory: Arc<dyn Directory>,
    doc: Doc,
    peers: HashMap<u64, Peer>,
    presence: HashMap<u64, PresenceEntry>,
    /// Approximate encoded size of the document: its size at load plus every change since.
    doc_bytes: usize,
    /// Highest log position handed to the writer.
    last_seq: u64,
    committed_seq: u64,
    in_flight: Option<u64>,
    in_flight_bytes: u64,
    /// Changes applied but not yet handed to the writer.
    pending: Vec<Vec<u8>>,
    /// Updates that arrived before what they follow, oldest first.
    held: VecDeque<Held>,
    held_bytes: usize,
    status_tx: Arc<watch::Sender<CommitStatus>>,
    status_rx: watch::Receiver<CommitStatus>,
    uncompacted: Uncompacted,
    idle_since: Option<Instant>,
    /// Set when the document can no longer be trusted or written: the room closes.
    stopping: Option<(u16, &'static str)>,
    /// yrs panicked inside this document: it must never be snapshotted.
    poisoned: bool,
    /// Another node owns the scene now: this room writes nothing more, lease included.
    fenced: bool,
    /// The epoch of this room's lease: its appends and snapshots are fenced by it.
    epoch: u64,
    /// Set when placement moved the scene away: the new owner's URL (if any). The room
    /// takes no more updates, flushes, releases its lease, then closes its clients with 4301.
    handoff: Option<Option<String>>,
    /// Awareness client ids whose presence changed since it was last published to Redis.
    presence_dirty: HashSet<u64>,
    presence_published: Instant,
    placement: watch::Receiver<Arc<PlacementView>>,
    /// When this room claimed its lease: older lease checks do not concern it.
    claimed_at: Instant,
}

impl Room {
    /// Runs a room until it unloads: load the scene, then serve its inbox.
    pub async fn run(
        scene: String,
        id: u64,
        ctx: Arc<RoomContext>,
        directory: Arc<dyn Directory>,
        mut inbox: mpsc::Receiver<RoomCmd>,
    ) {
        ctx.metrics.scenes_active.inc();
        let started = Instant::now();
        // Serve only what placement gives this node, and claim the scene first: from
        // here on no former owner's append is accepted.
        let mut refusal = JoinRefused::StoreDown;
        let mut epoch = 0;
        let current = ctx.placement.borrow().clone();
        let claimed = match current.verdict(ctx.node, &scene) {
            Verdict::Elsewhere(route) => {
                refusal = JoinRefused::Moved(Some(route.url));
                Err(format!("node {} owns the scene", route.node))
            }
            Verdict::NoOwner => {
                refusal = JoinRefused::Unavailable;
                Err("no node owns the scene at this epoch".to_string())
            }
            Verdict::Mine { epoch: e } => {
                epoch = e;
                // Boxed, like every rare store call here: a room task lives as long as its
                // scene is open, and would otherwise carry room for these large futures.
                let claim = Box::pin(async {
                    wait_for_release(&ctx, &scene, epoch, &current).await;
                    ctx.store.claim_lease(&scene, epoch, &ctx.node_id).await
                });
                // A store that does not answer must not leave joining clients waiting.
                match tokio::time::timeout(LOAD_TIMEOUT, claim).await {
                    Ok(Ok(true)) => Ok(()),
                    Ok(Ok(false)) => {
                        refusal = JoinRefused::Moved(None);
                        Err(
                            "the scene's lease is held by another node at this epoch or a newer one"
                                .to_string(),
                        )
                    }
                    Ok(Err(error)) => Err(error.to_string()),
                    Err(_) => Err(StoreError::Timeout.to_string()),
                }
            }
        };
        let loaded = match claimed {
            Err(error) => Err(error),
            Ok(()) => match load_in_time(&ctx.store, &scene).await {
                // Rebuilding a large scene takes a while: off the thread that serves the rooms.
                Ok(stored) => tokio::task::spawn_blocking(move || {
                    rebuild(&stored).map(|(doc, bytes)| (doc, bytes, stored))
                })
                .await
                .unwrap_or_else(|_| Err("rebuilding the scene panicked".into())),
                Err(error) => Err(error.to_string()),
            },
        };
        match loaded {
            Ok((doc, doc_bytes, stored)) => {
                ctx.metrics
                    .rehydration_seconds
                    .observe(started.elapsed().as_secs_f64());
                tracing::debug!(%scene, rows = stored.rows.len(), doc_bytes, "scene loaded");
                // Whatever a former owner said about this scene's presence is stale now.
                if let Some(presence) = &ctx.presence {
                    presence.clear(&scene);
                }
                let mut room = Room::new(scene, id, ctx.clone(), directory.clone(), doc, doc_bytes, &stored);
                // The rows it was rebuilt from are not needed while the room serves.
                drop(stored);
                room.epoch = epoch;
                room.serve(&mut inbox).await;
            }
            Err(error) if matches!(refusal, JoinRefused::Moved(_)) => {
                tracing::debug!(%scene, %error, "not serving the scene here");
                directory.remove(&scene, id);
            }
            Err(error) => {
                tracing::error!(%scene, %error, "cannot load scene");
                ctx.metrics.error("scene_load_failed");
                directory.remove(&scene, id);
            }
        }
        // Joins that raced with the unload are refused; their connections try a new room.
        inbox.close();
        while let Ok(cmd) = inbox.try_recv() {
            if let RoomCmd::Join { reply, .. } = cmd {
                let _ = reply.send(Err(refusal.clone()));
            }
        }
        ctx.metrics.scenes_active.dec();
    }

    fn new(
        scene: String,
        id: u64,
        ctx: Arc<RoomContext>,
        directory: Arc<dyn Directory>,
        doc: Doc,
        doc_bytes: usize,
        stored: &StoredScene,
    ) -> Self {
        let last_seq = stored.last_seq();
        let (status_tx, status_rx) = watch::channel(CommitStatus {
            committed_seq: last_seq,
            refused: false,
        });
        let snapshot_seq = stored.snapshots.first().map_or(0, |s| s.upto_seq);
        let tail: Vec<_> = stored.tail_after(snapshot_seq).collect();
        let uncompacted = Uncompacted {
            rows: tail.len() as u64,
            bytes: tail.iter().map(|r| r.data.len() as u64).sum(),
            since: (!tail.is_empty()).then(Instant::now),
        };
        Self {
            scene,
            id,
            directory,
            doc,
            peers: HashMap::new(),
            presence: HashMap::new(),
            doc_bytes,
            last_seq,
            committed_seq: last_seq,
            in_flight: None,
            in_flight_bytes: 0,
            pending: Vec::new(),
            held: VecDeque::new(),
            held_bytes: 0,
            status_tx: Arc::new(status_tx),
            status_rx,
            uncompacted,
            idle_since: Some(Instant::now()),
            stopping: None,
            poisoned: false,
            fenced: false,
            epoch: 0,
            handoff: None,
            presence_dirty: HashSet::new(),
            presence_published: Instant::now(),
            claimed_at: Instant::now(),
            placement: ctx.placement.clone(),
            ctx,
        }
    }

    async fn serve(&mut self, inbox: &mut mpsc::Receiver<RoomCmd>) {
        let mut shutdown = self.ctx.shutdown.clone();
        self.placement.mark_unchanged();
        // Placement may have moved on while the scene loaded.
        self.on_placement();
        // Housekeeping runs every HOUSEKEEPING_INTERVAL while there is work waiting, and
        // otherwise only when something falls due: a thousand quiet rooms must not wake
        // four thousand times a second.
        let housekeeping = tokio::time::sleep(HOUSEKEEPING_INTERVAL);
        tokio::pin!(housekeeping);
        loop {
            tokio::select! {
                cmd = inbox.recv() => match cmd {
                    Some(cmd) => self.handle(cmd),
                    None => break,
                },
                Ok(()) = self.status_rx.changed() => self.on_commit(),
                () = &mut housekeeping => {
                    self.flush();
                    self.maybe_compact(false);
                    self.publish_presence();
                    let next = tokio::time::Instant::now() + self.next_housekeeping();
                    housekeeping.as_mut().reset(next);
                }
                Ok(()) = self.placement.changed() => self.on_placement(),
                Ok(()) = shutdown.changed() => {
                    if *shutdown.borrow() {
                        self.stop(close::GOING_AWAY, "server shutting down");
                    }
                }
            }
            if (self.stopping.is_some() || self.is_idle_long_enough()) && self.finish(inbox).await {
                break;
            }
            if self.has_waiting_work() {
                let soon = tokio::time::Instant::now() + HOUSEKEEPING_INTERVAL;
                if housekeeping.deadline() > soon {
                    housekeeping.as_mut().reset(soon);
                }
            }
        }
    }

    /// Work the next housekeeping round must do: a batch to hand to the writer, presence
    /// to publish, or a stop to finish.
    fn has_waiting_work(&self) -> bool {
        !self.pending.is_empty() || !self.presence_dirty.is_empty() || self.stopping.is_some()
    }

    /// How long housekeeping may sleep: until the first thing falls due (compaction by
    /// age, unloading when idle, refreshing presence), at most [`QUIET_HOUSEKEEPING`].
    fn next_housekeeping(&self) -> Duration {
        if self.has_waiting_work() {
            return HOUSEKEEPING_INTERVAL;
        }
        let limits = &self.ctx.limits;
        let until = |since: Instant, after: Duration| after.saturating_sub(since.elapsed());
        let mut next = QUIET_HOUSEKEEPING;
        if let Some(since) = self.uncompacted.since {
            next = next.min(until(since, limits.compact_age));
        }
        if let Some(since) = self.idle_since {
            next = next.min(until(since, limits.room_idle));
        }
        if self.ctx.presence.is_some() && !self.presence.is_empty() {
            next = next.min(until(self.presence_published, PRESENCE_REFRESH));
        }
        next.max(HOUSEKEEPING_INTERVAL)
    }

    fn is_idle_long_enough(&self) -> bool {
        self.idle_since
            .is_some_and(|since| since.elapsed() >= self.ctx.limits.room_idle)
    }

    /// Starts a handoff when placement no longer names this node.
    fn on_placement(&mut self) {
        let current = self.placement.borrow_and_update().clone();
        let url = match current.verdict(self.ctx.node, &self.scene) {
            Verdict::Mine { .. } => return,
            Verdict::Elsewhere(route) => Some(route.url),
            Verdict::NoOwner => None,
        };
        if self.stopping.is_some() {
            return;
        }
        tracing::info!(scene = %self.scene, epoch = current.epoch(), to = ?url, "handing the scene off");
        self.ctx.metrics.handoffs.inc();
        if let Some(presence) = &self.ctx.presence {
            presence.notice(Notice::SceneMoved {
                scene: self.scene.clone(),
                from: self.ctx.node,
                to: current.placement.route(&self.scene).map(|r| r.node),
                epoch: current.epoch(),
            });
        }
        self.handoff = Some(url);
        self.stopping = Some((close::MOVED, ""));
        self.flush();
    }

    /// The lease check found another node holding the scene's lease.
    fn on_lease_lost(&mut self, checked_at: Instant) {
        if checked_at >= self.claimed_at && self.stopping.is_none() {
            self.fence("another node holds the scene's lease");
        }
    }

    /// Another node took the scene over (this node was cut off, paused, or behind on
    /// placement): nothing more is taken or written, the lease is not touched, and clients
    /// go to the owner placement names now (or ask the router).
    fn fence(&mut self, why: &str) {
        if self.fenced {
            return;
        }
        tracing::warn!(scene = %self.scene, why, "fenced: closing the room");
        self.ctx.metrics.error("fenced");
        self.fenced = true;
        self.pending.clear();
        self.held.clear();
        self.held_bytes = 0;
        self.in_flight = None;
        self.stopping = Some((close::MOVED, ""));
        let url = match self.placement.borrow().verdict(self.ctx.node, &self.scene) {
            Verdict::Elsewhere(route) => route.url,
            _ => String::new(),
        };
        let ids: Vec<u64> = self.peers.keys().copied().collect();
        for id in ids {
            self.kick(id, close::MOVED, &url);
        }
    }

    /// Closes every client with `code` and unloads once the log is flushed.
    fn stop(&mut self, code: u16, reason: &'static str) {
        if self.stopping.is_none() {
            self.stopping = Some((code, reason));
        }
        let ids: Vec<u64> = self.peers.keys().copied().collect();
        for id in ids {
            self.kick(id, code, reason);
        }
    }

    /// Flushes and unloads. Returns false while the log still has unwritten changes and
    /// the room should keep running (it keeps retrying; shutdown waits for it).
    async fn finish(&mut self, inbox: &mut mpsc::Receiver<RoomCmd>) -> bool {
        let refused = self.fenced;
        let clean = self.pending.is_empty() && self.in_flight.is_none();
        if !clean && !refused {
            self.flush();
            return false;
        }
        if self.stopping.is_none() && !self.peers.is_empty() {
            return false;
        }
        if !refused {
            // Last snapshot, then let the lease go, so that whoever serves the scene next
            // loads little and need not wait for this node.
            // Boxed in statements of their own: a bare future (even a temporary of the
            // statement that awaits) would keep its room in every room task.
            let write = self.compaction(true).map(Box::pin);
            if let Some(write) = write {
                write.await;
            }
            let release = Box::pin(
                self.ctx
                    .store
                    .release_lease(&self.scene, self.epoch, &self.ctx.node_id),
            );
            match release.await {
                Ok(_) => {}
                Err(error) => tracing::warn!(scene = %self.scene, %error, "cannot release the lease"),
            }
        }
        if let Some(url) = self.handoff.take() {
            let reason = url.unwrap_or_default();
            let ids: Vec<u64> = self.peers.keys().copied().collect();
            for id in ids {
                self.kick(id, close::MOVED, &reason);
            }
        }
        // Drop out of the directory first, then refuse whatever is still queued.
        self.directory.remove(&self.scene, self.id);
        while let Ok(cmd) = inbox.try_recv() {
            match cmd {
                RoomCmd::Join { reply, .. } => {
                    let _ = reply.send(Err(JoinRefused::Unavailable));
                }
                RoomCmd::Frame(_) | RoomCmd::Leave { .. } | RoomCmd::LeaseLost { .. } => {}
            }
        }
        self.publish_presence();
        tracing::debug!(scene = %self.scene, "room unloaded");
        true
    }

    fn handle(&mut self, cmd: RoomCmd) {
        match cmd {
            RoomCmd::Join { joiner, reply } => self.join(*joiner, reply),
            RoomCmd::Frame(incoming) => {
                let IncomingFrame {
                    conn_id,
                    received,
                    frame,
                    _permit,
                } = *incoming;
                self.on_frame(conn_id, &frame);
                self.ctx
                    .metrics
                    .latency_ms
                    .observe(received.elapsed().as_secs_f64() * 1000.0);
            }
            RoomCmd::Leave { conn_id } => self.leave(conn_id),
            RoomCmd::LeaseLost { checked_at } => self.on_lease_lost(checked_at),
        }
    }

    fn join(&mut self, joiner: Joiner, reply: oneshot::Sender<Result<(), JoinRefused>>) {
        if let Some(url) = &self.handoff {
            let _ = reply.send(Err(JoinRefused::Moved(url.clone())));
            return;
        }
        if self.stopping.is_some() {
            let _ = reply.send(Err(JoinRefused::Unavailable));
            return;
        }
        if self.peers.len() >= self.ctx.limits.max_connections_per_room {
            let _ = reply.send(Err(JoinRefused::Full));
            return;
        }
        if reply.send(Ok(())).is_err() {
            return;
        }
        let conn_id = joiner.conn_id;
        self.peers.insert(
            conn_id,
            Peer {
                user: joiner.user,
                role: joiner.role,
                acks: joiner.acks,
                outbox: joiner.outbox,
                updates_received: 0,
                ack_marks: VecDeque::new(),
                client_ids: Vec::new(),
            },
        );
        self.idle_since = None;
        self.ctx.metrics.users_collaborating.inc();
        // Like the reference server: our state vector first, then everyone's presence.
        let sv = self.doc.transact().state_vector().encode_v1();
        self.send(conn_id, protocol::encode_sync_step1(&sv));
        if !self.presence.is_empty() {
            self.send(conn_id, self.encode_all_presence());
        }
    }

    fn leave(&mut self, conn_id: u64) {
        let Some(peer) = self.peers.remove(&conn_id) else {
            return;
        };
        // Its held updates go too: the client resends them in its next sync handshake.
        let before = self.held.len();
        self.held.retain(|h| h.conn_id != conn_id);
        if self.held.len() != before {
            self.held_bytes = self.held.iter().map(|h| h.update.len()).sum();
        }
        // Remove the leaver's presence for everyone else (clock + 1, state null).
        let mut removed = Vec::new();
        for client in peer.client_ids {
            if let Some(entry) = self.presence.remove(&client) {
                removed.push((client, entry.clock + 1));
                self.presence_dirty.insert(client);
            }
        }
        if !removed.is_empty() {
            let frame = protocol::encode_awareness(removed.iter().map(|&(c, clock)| (c, clock, "null")));
            self.broadcast(frame.into(), None);
        }
        if self.peers.is_empty() {
            self.idle_since = Some(Instant::now());
        }
    }

    fn on_frame(&mut self, conn_id: u64, frame: &ValidFrame) {
        // While handing off nothing new is taken: clients resend it to the new owner in
        // their sync handshake.
        if !self.peers.contains_key(&conn_id) || self.handoff.is_some() {
            return;
        }
        match frame.kind {
            MessageKind::SyncStep1 => self.on_sync_step1(conn_id, frame.payload()),
            MessageKind::SyncStep2 | MessageKind::Update => self.on_update(conn_id, frame.payload()),
            MessageKind::Awareness => self.on_awareness(conn_id, frame.payload()),
            MessageKind::QueryAwareness => {
                if !self.presence.is_empty() {
                    self.send(conn_id, self.encode_all_presence());
                }
            }
            MessageKind::Auth => {}
        }
    }

    fn on_sync_step1(&mut self, conn_id: u64, state_vector: &[u8]) {
        let diff = match StateVector::decode_v1(state_vector) {
            Ok(sv) => self.doc.transact().encode_diff_v1(&sv),
            Err(_) => {
                self.ctx.metrics.error("invalid_state_vector");
                self.kick(conn_id, close::BAD_MESSAGE, "invalid state vector");
                return;
            }
        };
        self.send(conn_id, protocol::encode_sync_step2(&diff));
    }

    fn on_update(&mut self, conn_id: u64, update: &[u8]) {
        let Some(peer) = self.peers.get_mut(&conn_id) else {
            return;
        };
        peer.updates_received += 1;
        let count = peer.updates_received;
        if peer.role == Role::View {
            self.ctx.metrics.viewer_updates_dropped.inc();
            return;
        }
        if self.follows_the_document(update) {
            if self.apply(conn_id, update) {
                self.mark_for_ack(conn_id, AckMark::Applied(count));
                if self.apply_held() {
                    // A released update may have been a no-op whose mark is already covered.
                    self.release_acks();
                }
            }
        } else {
            self.hold(conn_id, update, count);
        }
        self.flush();
    }

    /// Whether `update` leaves no hole in any client's clock sequence of the document.
    /// yrs mishandles the holes it would otherwise stash (see `update_check`), so such an
    /// update waits until the missing part arrives, e.g. an edit a reconnecting client sent
    /// before its sync step 2.
    fn follows_the_document(&self, update: &[u8]) -> bool {
        follows(update, &self.doc.transact().state_vector())
    }

    /// Keeps an out-of-order update until what it follows has been applied.
    fn hold(&mut self, conn_id: u64, update: &[u8], count: u64) {
        let from_peer = self.held.iter().filter(|h| h.conn_id == conn_id).count();
        if from_peer >= MAX_HELD_PER_PEER
            || self.held.len() >= MAX_HELD_UPDATES
            || self.held_bytes + update.len() > self.ctx.limits.max_frame_bytes.max(MAX_HELD_BYTES)
        {
            // Too much out of order: the client resyncs through the handshake on return.
            self.ctx.metrics.error("out_of_order_overflow");
            self.kick(conn_id, close::TRY_AGAIN, "too many updates out of order; resync");
            return;
        }
        self.held_bytes += update.len();
        self.held.push_back(Held {
            conn_id,
            count,
            update: update.to_vec(),
        });
        self.mark_for_ack(conn_id, AckMark::Held(count));
    }

    /// Applies held updates that now follow the document, until none does. Returns
    /// whether any was released.
    fn apply_held(&mut self) -> bool {
        let mut released = false;
        while !self.held.is_empty() {
            let known = self.doc.transact().state_vector();
            let ready = self.held.iter().position(|h| follows(&h.update, &known));
            let Some(held) = ready.and_then(|i| self.held.remove(i)) else {
                break;
            };
            self.held_bytes -= held.update.len();
            if self.peers.contains_key(&held.conn_id) && self.apply(held.conn_id, &held.update) {
                self.mark_for_ack(held.conn_id, AckMark::Released(held.count));
                released = true;
            }
        }
        released
    }

    /// Applies an update and fans out what it changed. Returns false when the sender was
    /// disconnected instead.
    fn apply(&mut self, conn_id: u64, update: &[u8]) -> bool {
        if self.doc_bytes.saturating_add(update.len()) > self.ctx.limits.max_doc_bytes {
            self.ctx.metrics.error("document_too_large");
            self.kick(conn_id, close::TOO_LARGE, "scene document is at its size limit");
            return false;
        }
        let doc = &self.doc;
        let applied = catch_unwind(AssertUnwindSafe(|| {
            let update = Update::decode_v1(update).map_err(|e| e.to_string())?;
            let mut txn = doc.transact_mut();
            txn.apply_update(update).map_err(|e| e.to_string())?;
            Ok::<_, String>(txn.encode_update_v1())
        }));
        let change = match applied {
            Ok(Ok(change)) => change,
            Ok(Err(error)) => {
                tracing::debug!(scene = %self.scene, %error, "update refused");
                self.ctx.metrics.error("invalid_update");
                self.kick(conn_id, close::BAD_MESSAGE, "invalid update");
                return false;
            }
            Err(_) => {
                // yrs panicked half-way through a transaction: the in-memory document can
                // no longer be trusted. Reload it from the store.
                tracing::error!(scene = %self.scene, "update panicked the document; reloading the scene");
                self.ctx.metrics.error("update_panic");
                self.kick(conn_id, close::BAD_MESSAGE, "invalid update");
                self.pending.clear();
                self.held.clear();
                self.poisoned = true;
                self.stop(close::RESTARTING, "scene reloading");
                return false;
            }
        };
        if is_empty_update(&change) {
            self.ctx.metrics.conflicts_resolved.inc();
        } else {
            if change.as_slice() != update {
                self.ctx.metrics.conflicts_resolved.inc();
            }
            self.doc_bytes += change.len();
            let frame: Bytes = protocol::encode_update(&change).into();
            self.broadcast(frame, Some(conn_id));
            self.pending.push(change);
        }
        true
    }

    /// Records what must be committed before a peer's update can be acknowledged.
    fn mark_for_ack(&mut self, conn_id: u64, mark: AckMark) {
        // Everything applied so far is in the pending batch or an earlier one.
        let needed = if self.pending.is_empty() {
            self.last_seq
        } else {
            self.last_seq + 1
        };
        let committed = self.committed_seq;
        let Some(peer) = self.peers.get_mut(&conn_id) else {
            return;
        };
        if !peer.acks {
            return;
        }
        match mark {
            AckMark::Applied(count) if needed <= committed && peer.ack_marks.is_empty() => {
                self.send(conn_id, protocol::encode_ack(count));
            }
            AckMark::Applied(count) => peer.ack_marks.push_back((Some(needed), count)),
            AckMark::Held(count) => peer.ack_marks.push_back((None, count)),
            AckMark::Released(count) => {
                if let Some(slot) = peer.ack_marks.iter_mut().find(|mark| **mark == (None, count)) {
                    slot.0 = Some(needed);
                }
            }
        }
    }

    fn on_awareness(&mut self, conn_id: u64, payload: &[u8]) {
        let Ok(entries) = update_check::parse_awareness_v1(payload, usize::MAX) else {
            return;
        };
        let mut accepted: Vec<(u64, u64, &str)> = Vec::new();
        for entry in entries {
            if !self.claim_client_id(conn_id, entry.client_id, entry.state == "null") {
                self.ctx.metrics.awareness_dropped.inc();
                continue;
            }
            if self
                .presence
                .get(&entry.client_id)
                .is_some_and(|current| entry.clock < current.clock)
            {
                continue;
            }
            if entry.state == "null" {
                self.presence.remove(&entry.client_id);
            } else {
                let user = self
                    .peers
                    .get(&conn_id)
                    .map(|p| p.user.clone())
                    .unwrap_or_default();
                self.presence.insert(
                    entry.client_id,
                    PresenceEntry {
                        clock: entry.clock,
                        state: entry.state.to_string(),
                        user,
                    },
                );
            }
            self.presence_dirty.insert(entry.client_id);
            accepted.push((entry.client_id, entry.clock, entry.state));
        }
        if !accepted.is_empty() {
            // To everyone, the sender included, as the reference server does: stock clients
            // count their own renewed presence as a sign of life and reconnect without it.
            let frame = protocol::encode_awareness(accepted.into_iter());
            self.broadcast(frame.into(), None);
        }
    }

    /// Whether `conn_id` may speak for `client_id`, claiming it if it is free.
    fn claim_client_id(&mut self, conn_id: u64, client_id: u64, removal: bool) -> bool {
        let Some(user) = self.peers.get(&conn_id).map(|p| p.user.clone()) else {
            return false;
        };
        let holder = self
            .peers
            .iter()
            .find(|(_, p)| p.client_ids.contains(&client_id))
            .map(|(id, p)| (*id, p.user == user));
        match holder {
            Some((id, _)) if id == conn_id => true,
            Some((id, true)) => {
                // The same user on a newer connection: move the id over.
                if let Some(old) = self.peers.get_mut(&id) {
                    old.client_ids.retain(|c| *c != client_id);
                }
                self.add_client_id(conn_id, client_id)
            }
            Some((_, false)) => false,
            None if removal => false,
            None => self.add_client_id(conn_id, client_id),
        }
    }

    fn add_client_id(&mut self, conn_id: u64, client_id: u64) -> bool {
        match self.peers.get_mut(&conn_id) {
            Some(peer) if peer.client_ids.len() < MAX_CLIENT_IDS_PER_CONNECTION => {
                peer.client_ids.push(client_id);
                true
            }
            _ => false,
        }
    }

    fn encode_all_presence(&self) -> Bytes {
        protocol::encode_awareness(
            self.presence
                .iter()
                .map(|(client, e)| (*client, e.clock, e.state.as_str())),
        )
        .into()
    }

    /// Hands pending changes to the writer when no batch is in flight.
    fn flush(&mut self) {
        if self.in_flight.is_some() || self.pending.is_empty() || self.fenced {
            return;
        }
        let data = if self.pending.len() == 1 {
            self.pending.remove(0)
        } else {
            match yrs::merge_updates_v1(&self.pending) {
                Ok(merged) => {
                    self.pending.clear();
                    merged
                }
                Err(error) => {
                    // Not expected for updates yrs produced itself. The document's full
                    // state holds every pending change, so the batch is still complete.
                    tracing::warn!(scene = %self.scene, %error, "merge failed; writing the full state");
                    self.pending.clear();
                    self.doc
                        .transact()
                        .encode_state_as_update_v1(&StateVector::default())
                }
            }
        };
        let seq = self.last_seq + 1;
        let bytes = data.len() as u64;
        let job = WriteJob {
            append: LogAppend {
                scene: self.scene.clone(),
                seq,
                epoch: self.epoch,
                data,
            },
            status: self.status_tx.clone(),
        };
        match self.ctx.writer.try_queue(job) {
            Ok(()) => {
                self.last_seq = seq;
                self.in_flight = Some(seq);
                self.in_flight_bytes = bytes;
            }
            Err((job, error)) => {
                // Keep the changes; the next tick tries again.
                self.pending.insert(0, job.append.data);
                if error == QueueError::Closed {
                    tracing::error!(scene = %self.scene, "writer stopped with changes pending");
                }
            }
        }
    }

    fn on_commit(&mut self) {
        let status = *self.status_rx.borrow_and_update();
        if status.refused {
            self.fence("the store refused our write");
            return;
        }
        if status.committed_seq > self.committed_seq {
            let newly = status.committed_seq - self.committed_seq;
            self.committed_seq = status.committed_seq;
            self.uncompacted.rows += newly;
            self.uncompacted.bytes += std::mem::take(&mut self.in_flight_bytes);
            self.uncompacted.since.get_or_insert_with(Instant::now);
        }
        if self.in_flight.is_some_and(|seq| seq <= self.committed_seq) {
            self.in_flight = None;
        }
        self.release_acks();
        self.flush();
        self.maybe_compact(false);
    }

    fn release_acks(&mut self) {
        let committed = self.committed_seq;
        let mut acks = Vec::new();
        for (id, peer) in self.peers.iter_mut() {
            let mut count = None;
            while let Some(&(needed, n)) = peer.ack_marks.front() {
                if needed.is_none_or(|seq| seq > committed) {
                    break;
                }
                count = Some(n);
                peer.ack_marks.pop_front();
            }
            if let Some(n) = count {
                acks.push((*id, n));
            }
        }
        for (id, n) in acks {
            self.send(id, protocol::encode_ack(n));
        }
    }

    /// Folds the log into a snapshot when it has grown by rows, bytes or age, or (when
    /// `unloading`) whenever anything is uncovered, so reloads read little.
    fn maybe_compact(&mut self, unloading: bool) {
        if let Some(write) = self.compaction(unloading) {
            tokio::spawn(write);
        }
    }

    /// The snapshot write that is due, if any.
    fn compaction(&mut self, unloading: bool) -> Option<impl std::future::Future<Output = ()> + use<>> {
        let limits = &self.ctx.limits;
        let u = &self.uncompacted;
        if u.rows == 0 || self.in_flight.is_some() || !self.pending.is_empty() || self.poisoned {
            return None;
        }
        let due = unloading
            || u.rows >= limits.compact_rows
            || u.bytes >= limits.compact_bytes
            || u.since.is_some_and(|t| t.elapsed() >= limits.compact_age);
        if !due {
            return None;
        }
        let data = self
            .doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        self.doc_bytes = data.len();
        self.uncompacted = Uncompacted::default();
        let snapshot = Snapshot {
            upto_seq: self.committed_seq,
            data,
        };
        let store = self.ctx.store.clone();
        let metrics = self.ctx.metrics.clone();
        let scene = self.scene.clone();
        let (owner, epoch) = (self.ctx.node_id.clone(), self.epoch);
        Some(async move {
            match store.write_snapshot(&scene, &snapshot, &owner, epoch).await {
                Ok(true) => {
                    metrics.compaction_runs.inc();
                    tracing::debug!(%scene, upto = snapshot.upto_seq, bytes = snapshot.data.len(), "snapshot written");
                }
                Ok(false) => tracing::warn!(%scene, "snapshot not written: another node holds the scene"),
                Err(error) => tracing::warn!(%scene, %error, "compaction failed; the log stays as it is"),
            }
        })
    }

    /// Publishes presence changes to Redis (at most once per housekeeping tick), and
    /// everyone present now and then so that the scene's entry does not expire.
    fn publish_presence(&mut self) {
        let Some(redis) = &self.ctx.presence else {
            self.presence_dirty.clear();
            return;
        };
        let refresh = !self.presence.is_empty() && self.presence_published.elapsed() >= PRESENCE_REFRESH;
        if self.presence_dirty.is_empty() && !refresh {
            return;
        }
        let mut ids: Vec<u64> = self.presence_dirty.drain().collect();
        if refresh {
            ids.extend(
                self.presence
                    .keys()
                    .filter(|c| !ids.contains(c))
                    .copied()
                    .collect::<Vec<_>>(),
            );
            self.presence_published = Instant::now();
        }
        let at_ms = crate::presence::now_ms();
        let changes = ids
            .into_iter()
            .map(|client| {
                let record = self.presence.get(&client).map(|e| PresenceRecord {
                    user: e.user.clone(),
                    state: e.state.clone(),
                    node: self.ctx.node,
                    at_ms,
                });
                (client, record)
            })
            .collect();
        redis.presence(&self.scene, changes);
    }

    /// Queues a frame for one peer; a peer that cannot keep up is disconnected.
    fn send(&mut self, conn_id: u64, frame: impl Into<Bytes>) {
        let ok = self
            .peers
            .get(&conn_id)
            .is_some_and(|p| p.outbox.push(frame.into()));
        if !ok {
            self.drop_slow(conn_id);
        }
    }

    fn broadcast(&mut self, frame: Bytes, except: Option<u64>) {
        let mut slow = Vec::new();
        for (id, peer) in &self.peers {
            if Some(*id) == except {
                continue;
            }
            if !peer.outbox.push(frame.clone()) {
                slow.push(*id);
            }
        }
        for id in slow {
            self.drop_slow(id);
        }
    }

    /// Dropping the peer's queue makes its connection close with 1013; it resyncs on return.
    fn drop_slow(&mut self, conn_id: u64) {
        if self.peers.contains_key(&conn_id) {
            self.ctx.metrics.error("slow_consumer");
            self.leave(conn_id);
        }
    }

    fn kick(&mut self, conn_id: u64, code: u16, reason: &str) {
        if let Some(peer) = self.peers.get(&conn_id) {
            peer.outbox.close(code, reason);
            self.leave(conn_id);
        }
    }
}

/// How long a new owner waits for the former owner to flush and release a scene it is
/// handing over (planned moves take milliseconds; a former owner that is down, or does not
/// answer, is not waited for, and after this long the claim goes ahead: fencing keeps it safe).
const HANDOFF_WAIT: Duration = Duration::from_secs(2);

/// How long a former owner may take to answer "are you alive?" before it is not waited for.
const LIVENESS_PROBE: Duration = Duration::from_millis(250);

/// How long claiming and loading a scene may each take before its clients are told to
/// come back later (1011).
const LOAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Loads `scene`, giving up after [`LOAD_TIMEOUT`]. Its own function, boxed: the store's
/// future is large and must not stay in the room task's state.
fn load_in_time<'a>(
    store: &'a Store,
    scene: &'a str,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<StoredScene, StoreError>> + Send + 'a>> {
    Box::pin(async move {
        tokio::time::timeout(LOAD_TIMEOUT, store.load(scene))
            .await
            .unwrap_or(Err(StoreError::Timeout))
    })
}

/// Waits until the scene's lease is free for this node: released, already ours, or held
/// by a node that is not up. Returns early on any store error (the claim reports it).
async fn wait_for_release(ctx: &RoomContext, scene: &str, epoch: u64, placement: &PlacementView) {
    let deadline = Instant::now() + HANDOFF_WAIT;
    let mut probed = false;
    loop {
        match ctx.store.lease(scene).await {
            Ok(Some((held_epoch, owner)))
                if held_epoch < epoch
                    && !owner.is_empty()
                    && owner != ctx.node_id
                    && placement.is_up(&owner) =>
            {
                if Instant::now() >= deadline {
                    tracing::warn!(%scene, %owner, "former owner did not release the scene in time; taking it over");
                    return;
                }
                // A frozen or cut-off owner is still "up" in the membership for a while, but
                // it will never release: ask it once.
                if !probed {
                    probed = true;
                    if !answers(ctx, placement, &owner).await {
                        tracing::info!(%scene, %owner, "former owner does not answer; taking the scene over");
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            _ => return,
        }
    }
}

/// Whether member `owner` answers on its internal address within [`LIVENESS_PROBE`].
async fn answers(ctx: &RoomContext, placement: &PlacementView, owner: &str) -> bool {
    let Some(addr) = placement.rpc_addr(owner) else {
        return false;
    };
    let answer: Result<NodeSelf, _> = ctx.rpc.get(&addr, "/cluster/info", LIVENESS_PROBE).await;
    answer.is_ok_and(|me| me.id.to_string() == owner)
}

/// Whether `update` leaves no hole in any client's clock sequence after `known`.
fn follows(update: &[u8], known: &StateVector) -> bool {
    update_check::check_update_in_order_v1(update, CheckLimits::default(), known).is_ok()
}

/// An encoded update with no structs and no deletions: nothing changed.
fn is_empty_update(update: &[u8]) -> bool {
    update == [0, 0]
}

/// A scene's document. Text positions count UTF-16 code units, as Yjs does in browsers:
/// with yrs's default (bytes), a remote edit that splits a surrogate pair corrupts lengths.
fn new_doc() -> Doc {
    Doc::with_options(yrs::Options {
        offset_kind: yrs::OffsetKind::Utf16,
        ..yrs::Options::default()
    })
}

/// Rebuilds a document from the newest readable snapshot plus the log after it.
fn rebuild(stored: &StoredScene) -> Result<(Doc, usize), String> {
    let mut last_error = String::new();
    let bases: Vec<Option<&Snapshot>> = stored
        .snapshots
        .iter()
        .map(Some)
        .chain(stored.snapshots.is_empty().then_some(None))
        .collect();
    for base in bases {
        let doc = new_doc();
        let upto = base.map_or(0, |s| s.upto_seq);
        let attempt = catch_unwind(AssertUnwindSafe(|| {
            let mut txn = doc.transact_mut();
            let mut bytes = 0;
            for data in base
                .map(|s| &s.data)
                .into_iter()
                .chain(stored.tail_after(upto).map(|r| &r.data))
            {
                bytes += data.len();
                let update = Update::decode_v1(data).map_err(|e| e.to_string())?;
                txn.apply_update(update).map_err(|e| e.to_string())?;
            }
            Ok::<usize, String>(bytes)
        }));
        match attempt {
            Ok(Ok(bytes)) => return Ok((doc, bytes)),
            Ok(Err(error)) => last_error = error,
            Err(_) => last_error = "stored update panicked the decoder".into(),
        }
        tracing::error!(upto, error = %last_error, "stored state unreadable; trying an older snapshot");
    }
    Err(last_error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{GetString, Text};

    #[test]
    fn a_transaction_that_changes_nothing_encodes_as_empty() {
        let source = Doc::new();
        let text = source.get_or_insert_text("text");
        let update = {
            let mut txn = source.transact_mut();
            text.insert(&mut txn, 0, "FADE IN:");
            txn.encode_update_v1()
        };
        let doc = Doc::new();
        let apply = |bytes: &[u8]| {
            let mut txn = doc.transact_mut();
            txn.apply_update(Update::decode_v1(bytes).unwrap()).unwrap();
            txn.encode_update_v1()
        };
        assert!(!is_empty_update(&apply(&update)));
        assert!(
            is_empty_update(&apply(&update)),
            "a duplicate update changed the doc"
        );
    }

    #[test]
    fn rebuild_falls_back_to_the_older_snapshot() {
        let source = Doc::new();
        let text = source.get_or_insert_text("text");
        let mut rows = Vec::new();
        for (seq, word) in ["INT. ", "HOUSE ", "- DAY"].into_iter().enumerate() {
            let mut txn = source.transact_mut();
            let len = text.len(&txn);
            text.insert(&mut txn, len, word);
            rows.push(crate::store::LogRow {
                seq: seq as u64 + 1,
                data: txn.encode_update_v1(),
                created_at_ms: 0,
            });
        }
        let stored = StoredScene {
            snapshots: vec![
                Snapshot {
                    upto_seq: 2,
                    data: vec![0xff, 0xff, 0xff],
                },
                Snapshot {
                    upto_seq: 0,
                    data: vec![0, 0],
                },
            ],
            rows,
        };
        let (doc, _) = rebuild(&stored).unwrap();
        let text = doc.get_or_insert_text("text");
        assert_eq!(text.get_string(&doc.transact()), "INT. HOUSE - DAY");
    }
}
