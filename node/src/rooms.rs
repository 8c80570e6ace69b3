//! The directory of live rooms on this node: scene id -> the room task's inbox.
//!
//! A room is created on first join and removes itself once it has flushed and unloaded,
//! through the `room::Directory` trait it defines (so `room` never imports this module).
//! The lock guards only the map and is never held across an await.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use troupe_runtime::Tasks;

use crate::batch::StoreBatches;
use crate::room::inbox::{self, Sender};
use crate::room::{Directory, Room, RoomCmd, RoomContext};

/// Messages a room's inbox holds before senders wait.
const ROOM_INBOX: usize = 1024;

/// Bytes of frames a room's inbox may hold (at least two of the largest frames).
const ROOM_INBOX_BYTES: usize = 8 << 20;

/// The inbox of one room incarnation.
#[derive(Clone)]
pub struct RoomHandle {
    pub id: u64,
    pub tx: Sender<RoomCmd>,
    /// Byte budget of queued frames: senders wait for room rather than pile up memory.
    pub budget: Arc<Semaphore>,
}

pub struct Rooms {
    ctx: Arc<RoomContext>,
    /// Every room's task; shutdown cancels them (`ctx.shutdown`) and waits for them.
    tasks: Tasks,
    live: Mutex<HashMap<String, RoomHandle>>,
    next_id: AtomicU64,
}

impl Rooms {
    /// A directory whose rooms run in `tasks` (whose token is `ctx.shutdown`).
    pub fn new(ctx: Arc<RoomContext>, tasks: Tasks) -> Arc<Self> {
        Arc::new(Self {
            ctx,
            tasks,
            live: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        })
    }

    /// The room for `scene`, started (and loading) if it is not live.
    pub fn get_or_start(self: &Arc<Self>, scene: &str) -> RoomHandle {
        let mut live = self.lock();
        if let Some(handle) = live.get(scene).filter(|h| !h.tx.is_closed()) {
            return handle.clone();
        }
        let (tx, rx) = inbox::channel(ROOM_INBOX);
        let budget = ROOM_INBOX_BYTES.max(2 * self.ctx.limits.max_frame_bytes);
        let handle = RoomHandle {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            tx,
            budget: Arc::new(Semaphore::new(budget)),
        };
        live.insert(scene.to_string(), handle.clone());
        drop(live);
        self.tasks.spawn(Room::run(
            scene.to_string(),
            handle.id,
            self.ctx.clone(),
            self.clone(),
            rx,
        ));
        handle
    }

    /// The store requests the rooms make, batched: connections asking about a scene they
    /// are about to open use them too, so that thousands arriving at once (a failover)
    /// cost a few statements rather than one each.
    pub fn batches(&self) -> &StoreBatches {
        &self.ctx.batches
    }

    /// Whether `scene` has a room on this node now.
    pub fn is_live(&self, scene: &str) -> bool {
        self.lock().get(scene).is_some_and(|h| !h.tx.is_closed())
    }

    /// The scenes with a room on this node now.
    pub fn scenes(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// The inbox of `scene`'s room, if it has one now.
    pub fn handle(&self, scene: &str) -> Option<RoomHandle> {
        self.lock().get(scene).cloned()
    }

    /// Number of live rooms.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, RoomHandle>> {
        // A panic elsewhere cannot leave the map half-updated: recover it.
        self.live.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Directory for Rooms {
    fn remove(&self, scene: &str, id: u64) {
        let mut live = self.lock();
        if live.get(scene).is_some_and(|h| h.id == id) {
            live.remove(scene);
        }
    }
}
