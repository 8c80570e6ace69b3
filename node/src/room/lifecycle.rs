//! A room's life: claim the scene under a fenced lease, load and rebuild its document,
//! serve it, and leave: hand it off when placement moves it, stop when fenced by a newer
//! owner, or flush, snapshot, release the lease and unload.
//!
//! Apart from the serve loop because every step here talks to the store or the cluster,
//! and each decides whether the room may keep writing the scene (invariants 1 and 3).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::inbox::Inbox;
use troupe_membership::NodeSelf;
use yrs::updates::decoder::Decode;
use yrs::{Doc, Transact, Update};

use troupe_proto::CloseCode;

use super::{Directory, JoinRefused, Room, RoomCmd, RoomContext};
use crate::batch::StoreBatches;
use crate::store::{Snapshot, Store, StoreError, StoredScene};
use troupe_membership::placement::{PlacementView, Verdict};
use troupe_proto::presence::Notice;

impl Room {
    /// Runs a room until it unloads: load the scene, then serve its inbox.
    pub(crate) async fn run(
        scene: String,
        id: u64,
        ctx: Arc<RoomContext>,
        directory: Arc<dyn Directory>,
        mut inbox: Inbox<RoomCmd>,
    ) {
        ctx.metrics.scenes_active.inc();
        // Boxed: the task lives as long as the scene is open, and would otherwise keep room
        // for everything loading needs (the claim, the rows, the rebuild) all that time.
        // The room itself is boxed too: the task's future then holds only the serve loop.
        let mut loaded = Box::pin(Self::load(scene, id, ctx.clone(), directory)).await;
        let refusal = match &mut loaded {
            Ok(room) => {
                room.serve(&mut inbox).await;
                JoinRefused::StoreDown
            }
            Err(refusal) => refusal.clone(),
        };
        drop(loaded);
        // Joins that raced with the unload are refused; their connections try a new room.
        inbox.close();
        while let Some(cmd) = inbox.try_recv() {
            if let RoomCmd::Join(joiner) = cmd {
                let _ = joiner.reply.send(Err(refusal.clone()));
            }
        }
        ctx.metrics.scenes_active.dec();
    }

    /// Claims the scene and rebuilds its document: the room, ready to serve, or why joins
    /// are refused (the room is then out of the directory).
    async fn load(
        scene: String,
        id: u64,
        ctx: Arc<RoomContext>,
        directory: Arc<dyn Directory>,
    ) -> Result<Box<Room>, JoinRefused> {
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
                    ctx.batches.claim(&scene, epoch).await
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
                    Ok(Err(error)) => Err(error),
                    Err(_) => Err(StoreError::Timeout.to_string()),
                }
            }
        };
        let loaded = match claimed {
            Err(error) => Err(error),
            Ok(()) => match Box::pin(load_in_time(&ctx.batches, &scene)).await {
                Ok(stored) => match Box::pin(p1_load(&ctx.store, &ctx.batches, &scene, &stored)).await {
                    // Rebuilding a large scene takes a while: off the thread that serves the rooms.
                    Ok(p1) => tokio::task::spawn_blocking(move || {
                        rebuild(&stored).map(|(doc, bytes)| (doc, bytes, stored, p1))
                    })
                    .await
                    .unwrap_or_else(|_| Err("rebuilding the scene panicked".into())),
                    Err(error) => Err(error),
                },
                Err(error) => Err(error),
            },
        };
        match loaded {
            Ok((doc, doc_bytes, stored, p1)) => {
                ctx.metrics
                    .rehydration_seconds
                    .observe(started.elapsed().as_secs_f64());
                let ms = started.elapsed().as_millis() as u64;
                tracing::debug!(%scene, rows = stored.rows.len(), doc_bytes, ms, "scene loaded");
                // Whatever a former owner said about this scene's presence is stale now.
                if let Some(presence) = &ctx.presence {
                    presence.clear(&scene);
                }
                let mut room = Box::new(Room::new(
                    scene,
                    id,
                    ctx.clone(),
                    directory.clone(),
                    doc,
                    doc_bytes,
                    &stored,
                ));
                // The rows it was rebuilt from are not needed while the room serves.
                drop(stored);
                room.epoch = epoch;
                if let Some(version) = p1.version {
                    room.p1.tracked = true;
                    room.p1.version = version;
                }
                if let Some(seed) = p1.seed {
                    room.seed(seed);
                    let version = p1.version;
                    room.ctx
                        .webhooks
                        .backfilled(&room.scene, serde_json::json!({ "p1_version": version }));
                }
                Ok(room)
            }
            Err(error) if matches!(refusal, JoinRefused::Moved(_)) => {
                tracing::debug!(%scene, %error, "not serving the scene here");
                directory.remove(&scene, id);
                Err(refusal)
            }
            Err(error) => {
                tracing::error!(%scene, %error, "cannot load scene");
                ctx.metrics.error("scene_load_failed");
                directory.remove(&scene, id);
                Err(refusal)
            }
        }
    }

    /// Starts a handoff when placement no longer names this node.
    pub(super) fn on_placement(&mut self) {
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
        self.stopping = Some((CloseCode::Moved, ""));
        self.flush();
    }

    /// The lease check found another node holding the scene's lease.
    pub(super) fn on_lease_lost(&mut self, checked_at: Instant) {
        if checked_at >= self.claimed_at && self.stopping.is_none() {
            self.fence("another node holds the scene's lease");
        }
    }

    /// Another node took the scene over (this node was cut off, paused, or behind on
    /// placement): nothing more is taken or written, the lease is not touched, and clients
    /// go to the owner placement names now (or ask the router).
    pub(super) fn fence(&mut self, why: &str) {
        if self.fenced {
            return;
        }
        tracing::warn!(scene = %self.scene, why, "fenced: closing the room");
        self.ctx.metrics.error("fenced");
        self.fenced = true;
        self.log.pending.clear();
        self.document.held.clear();
        self.document.held_bytes = 0;
        self.log.in_flight = None;
        self.stopping = Some((CloseCode::Moved, ""));
        let url = match self.placement.borrow().verdict(self.ctx.node, &self.scene) {
            Verdict::Elsewhere(route) => route.url,
            _ => String::new(),
        };
        let ids: Vec<u64> = self.peers.keys().copied().collect();
        for id in ids {
            self.kick(id, CloseCode::Moved, &url);
        }
    }

    /// Closes every client with `code` and unloads once the log is flushed.
    pub(super) fn stop(&mut self, code: CloseCode, reason: &'static str) {
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
    pub(super) async fn finish(&mut self, inbox: &mut Inbox<RoomCmd>) -> bool {
        let refused = self.fenced;
        let clean = self.log.pending.is_empty() && self.log.in_flight.is_none();
        if !clean && !refused {
            self.flush();
            return false;
        }
        if self.stopping.is_none() && !self.peers.is_empty() {
            return false;
        }
        if !refused {
            // Last snapshot, then let the lease go, so that whoever serves the scene next
            // loads little and need not wait for this node. A handoff snapshots only when
            // compaction is due anyway: the next owner then loads no more log than after a
            // crash, and a node handing ~2,000 scenes back to a returning one does not
            // first make two commits for each (1.3 s for all of them on the bench).
            // Boxed in statements of their own: a bare future (even a temporary of the
            // statement that awaits) would keep its room in every room task.
            let write = self.compaction(self.handoff.is_none()).map(Box::pin);
            if let Some(write) = write {
                write.await;
            }
            // P1 reads the last state, before the lease goes.
            Box::pin(self.p1_final_write()).await;
            let release = Box::pin(self.ctx.batches.release(&self.scene, self.epoch));
            match release.await {
                Ok(_) => {}
                Err(error) => tracing::warn!(scene = %self.scene, %error, "cannot release the lease"),
            }
        }
        if let Some(url) = self.handoff.take() {
            let reason = url.unwrap_or_default();
            let ids: Vec<u64> = self.peers.keys().copied().collect();
            for id in ids {
                self.kick(id, CloseCode::Moved, &reason);
            }
        }
        // Drop out of the directory first, then refuse whatever is still queued.
        self.directory.remove(&self.scene, self.id);
        while let Some(cmd) = inbox.try_recv() {
            match cmd {
                RoomCmd::Join(joiner) => {
                    let _ = joiner.reply.send(Err(JoinRefused::Unavailable));
                }
                RoomCmd::Merge(request) => {
                    let _ = request.reply.send(Err(super::MergeRefused::Moving));
                }
                RoomCmd::SaveVersion(save) => {
                    let _ = save
                        .reply
                        .send(Err("the scene is moving to another node; try again".into()));
                }
                RoomCmd::Frame(_)
                | RoomCmd::Leave { .. }
                | RoomCmd::LeaseLost { .. }
                | RoomCmd::Read { .. } => {}
            }
        }
        self.presence.publish(&self.ctx, &self.scene);
        tracing::debug!(scene = %self.scene, "room unloaded");
        true
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
    batches: &'a StoreBatches,
    scene: &'a str,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<StoredScene, String>> + Send + 'a>> {
    Box::pin(async move {
        tokio::time::timeout(LOAD_TIMEOUT, batches.load(scene))
            .await
            .unwrap_or_else(|_| Err(StoreError::Timeout.to_string()))
    })
}

/// Waits until the scene's lease is free for this node: released, already ours, or held
/// by a node that is not up. Returns early on any store error (the claim reports it).
async fn wait_for_release(ctx: &RoomContext, scene: &str, epoch: u64, placement: &PlacementView) {
    let deadline = Instant::now() + HANDOFF_WAIT;
    let mut probed = false;
    // A planned move releases within milliseconds; a node taking over thousands of scenes
    // at once must not ask about each a hundred times a second meanwhile.
    let mut pause = Duration::from_millis(10);
    loop {
        match ctx.batches.lease(scene).await {
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
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(160));
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

/// What a loading scene takes from the P1 product.
struct P1Load {
    /// The P1 content version the document holds; `None`: P1 does not have the scene (or
    /// cannot be read, and the scene has state of its own: it is not kept in step then).
    version: Option<u64>,
    /// The update that seeds a scene with no state from its P1 content.
    seed: Option<Vec<u8>>,
}

/// The P1 side of loading a scene. A scene with no Yjs state is seeded from its P1
/// content (the same bytes on every node, so racing seeds merge into one copy). A scene
/// with state holds the P1 version Troupe last wrote or took in; should P1 be further
/// along, the room's first check merges the difference. A scene P1 has but Troupe never
/// recorded starts from P1's current version.
async fn p1_load(
    store: &Store,
    batches: &StoreBatches,
    scene: &str,
    stored: &StoredScene,
) -> Result<P1Load, String> {
    let empty = stored.snapshots.is_empty() && stored.rows.is_empty();
    let content = match batches.p1_content(scene).await {
        Ok(Some(content)) => content,
        Ok(None) => {
            return Ok(P1Load {
                version: None,
                seed: None,
            })
        }
        Err(error) if empty => return Err(format!("cannot seed the scene from P1: {error}")),
        Err(error) => {
            tracing::warn!(%scene, %error, "P1 content cannot be read; this scene is not kept in step with it");
            return Ok(P1Load {
                version: None,
                seed: None,
            });
        }
    };
    let known = if empty {
        None
    } else {
        store
            .latest_p1_projection(scene)
            .await
            .map_err(|e| e.to_string())?
    };
    let version = match known {
        Some(version) => version,
        None => {
            store
                .record_p1_projection(scene, content.version, &content.blocks)
                .await
                .map_err(|e| e.to_string())?;
            content.version
        }
    };
    let seed =
        (empty && !content.blocks.is_empty()).then(|| crate::content::blocks::seed_update(&content.blocks));
    Ok(P1Load {
        version: Some(version),
        seed,
    })
}

/// A scene's document. Text positions count UTF-16 code units, as Yjs does in browsers:
/// with yrs's default (bytes), a remote edit that splits a surrogate pair corrupts lengths.
/// The room's own edits (merges through the content API and from P1) are made as a client
/// id above the 32-bit range browsers draw from, fresh for each room, so they never share
/// one with an editor or with another owner of the scene.
fn new_doc() -> Doc {
    let own_client = rand::random_range((1u64 << 32)..crate::content::blocks::SEED_CLIENT);
    Doc::with_options(yrs::Options {
        client_id: yrs::ClientID::new(own_client),
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
