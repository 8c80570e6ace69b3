//! A room: one live scene. A single task owns the scene's yrs document, its clients and
//! their presence; everything else talks to it through its bounded inbox.
//!
//! Order of work for an edit: apply to the document, fan out to the other clients at once,
//! then hand it to the group committer; a client that asked for acks hears back once the
//! batch holding its edit is committed. A client whose queue fills up is disconnected
//! rather than allowed to hold memory.
//!
//! One concern a file, each working on its own part of the `Room`:
//! - `lifecycle`: claim, load and rebuild the scene; hand it off, get fenced, release it
//!   and unload;
//! - `serve`: the serve loop, its housekeeping, and the dispatch of the inbox;
//! - [`inbox`]: the bounded queue of commands to the room;
//! - `peers`: the joined connections: join, leave, send, and drop the slow ones;
//! - `document`: the yrs document, its size, and the updates held out of order;
//! - `log`: changes on their way to the group committer, and how far it has committed;
//! - `acks`: durable acks for the clients that asked;
//! - `presence`: the clients' awareness states, and publishing them to Redis (through
//!   [`crate::presence`], the Redis side);
//! - `compaction`: folding the log into a snapshot;
//! - `history`: saving the document as a version of the scene's history;
//! - `p1`: keeping the P1 product's `content_blocks` and the document in step.
//!
//! A connection ([`crate::ws`]) sees only what is public here: [`Joiner`], [`JoinRefused`],
//! [`RoomCmd`], [`IncomingFrame`], the [`inbox`] and the [`close`] codes; the directory
//! ([`crate::rooms`]) starts a room with a [`RoomContext`] and a `Directory` to leave.

mod acks;
mod compaction;
mod document;
mod history;
pub mod inbox;
mod lifecycle;
mod log;
mod p1;

pub use history::SaveVersion;
pub use p1::{apply_edits, BlockEdit, Change, MergeRefused, MergeRequest, Merged};
mod peers;
mod presence;
mod serve;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{oneshot, watch, OwnedSemaphorePermit};
use troupe_membership::rpc::RpcClient;
use troupe_membership::NodeId;
use yrs::Doc;

use troupe_proto::token::Role;
use troupe_proto::CloseCode;
use troupe_runtime::tasks::CancellationToken;

use crate::batch::StoreBatches;
use crate::config::Limits;
use crate::metrics::Metrics;
use crate::outbox::ClientQueue;
use crate::presence::RedisHandle;
use crate::protocol::ValidFrame;
use crate::store::{Store, StoredScene};
use crate::writer::WriterHandle;
use troupe_membership::placement::PlacementView;

use self::compaction::Uncompacted;
use self::document::Document;
use self::log::Log;
use self::peers::Peer;
use self::presence::RoomPresence;

/// A connection asking to join.
pub struct Joiner {
    pub conn_id: u64,
    /// The token's subject.
    pub user: String,
    /// The name collaborators see (the token's `name`, or its subject).
    pub name: String,
    pub role: Role,
    /// Whether others see this connection's presence (editors, and viewers granted it).
    pub publishes_presence: bool,
    pub acks: bool,
    pub outbox: ClientQueue,
    /// The room's answer: joined, or why not.
    pub reply: oneshot::Sender<Result<(), JoinRefused>>,
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
    Join(Box<Joiner>),
    Frame(Box<IncomingFrame>),
    Leave {
        conn_id: u64,
    },
    /// The store says another node holds the scene's lease (checked at `checked_at`).
    LeaseLost {
        checked_at: Instant,
    },
    /// A change through the content API, merged into the document.
    Merge(Box<p1::MergeRequest>),
    /// The scene's blocks as they are now (the content API).
    Read {
        reply: oneshot::Sender<Result<Vec<crate::content::blocks::Block>, String>>,
    },
    /// Keep the document as it is now in the scene's history.
    SaveVersion(Box<SaveVersion>),
}

// A room's inbox holds its commands by value, up to a thousand of them in a busy room: the
// large ones ride in boxes, so that a command stays two words.
const _: () = assert!(std::mem::size_of::<RoomCmd>() <= 16);

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
pub(crate) trait Directory: Send + Sync {
    /// Removes `scene` if it is still served by room incarnation `id`.
    fn remove(&self, scene: &str, id: u64);
}

/// What every room shares.
pub struct RoomContext {
    pub store: Store,
    /// Change notifications for the app's backend.
    pub webhooks: crate::webhooks::Webhooks,
    pub writer: WriterHandle,
    /// Reads and claims the leases of scenes about to load, and loads them, many at once.
    pub batches: StoreBatches,
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
    pub shutdown: CancellationToken,
    /// Asks a former owner whether it is alive before waiting for its release.
    pub rpc: RpcClient,
}

/// One live scene, owned by its room task (see the module docs).
pub(crate) struct Room {
    scene: String,
    id: u64,
    ctx: Arc<RoomContext>,
    directory: Arc<dyn Directory>,
    peers: HashMap<u64, Peer>,
    document: Document,
    log: Log,
    presence: RoomPresence,
    uncompacted: Uncompacted,
    idle_since: Option<Instant>,
    /// Set when the document can no longer be trusted or written: the room closes.
    stopping: Option<(CloseCode, &'static str)>,
    /// Another node owns the scene now: this room writes nothing more, lease included.
    fenced: bool,
    /// The epoch of this room's lease: its appends and snapshots are fenced by it.
    epoch: u64,
    /// Set when placement moved the scene away: the new owner's URL (if any). The room
    /// takes no more updates, flushes, releases its lease, then closes its clients with 4301.
    handoff: Option<Option<String>>,
    placement: watch::Receiver<Arc<PlacementView>>,
    /// Writing the document back into the P1 product's tables.
    p1: p1::Projection,
    /// When this room claimed its lease: older lease checks do not concern it.
    claimed_at: Instant,
}

impl Room {
    fn new(
        scene: String,
        id: u64,
        ctx: Arc<RoomContext>,
        directory: Arc<dyn Directory>,
        doc: Doc,
        doc_bytes: usize,
        stored: &StoredScene,
    ) -> Self {
        Self {
            scene,
            id,
            directory,
            peers: HashMap::new(),
            document: Document::new(doc, doc_bytes),
            log: Log::new(stored.last_seq()),
            presence: RoomPresence::new(),
            uncompacted: Uncompacted::of(stored),
            idle_since: Some(Instant::now()),
            stopping: None,
            fenced: false,
            epoch: 0,
            handoff: None,
            claimed_at: Instant::now(),
            placement: ctx.placement.clone(),
            p1: p1::Projection::default(),
            ctx,
        }
    }
}
