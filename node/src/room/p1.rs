//! The live scene and the P1 product's `content_blocks`, kept in step both ways.
//!
//! - **Writing back** (dual-write): the document's blocks are written into P1
//!   `TROUPE_P1_WRITE_DELAY` after the last change, or `TROUPE_P1_MAX_LAG` after the first
//!   unwritten one while people keep typing, and once more when the room unloads, hands
//!   off or shuts down. Only what the scene's log has committed is written (a write waits
//!   for the log), fenced by the lease, as the version after the one the room knows P1 to
//!   be at: should P1 have moved on, nothing is overwritten.
//! - **Taking P1's writes in**: the room checks P1's `content_version` every
//!   `TROUPE_P1_CHECK_INTERVAL` (and at once on load and after a refused write). A version
//!   the room did not write is merged into the document ([`crate::content::merge`]) from
//!   the version it was based on, so that what was typed live meanwhile stays.
//! - **Merges through the content API** (`PUT`/`PATCH`): merged the same way at once; the
//!   caller hears back with the P1 version that holds the change once it is written.
//!
//! One P1 operation runs at a time, beside the room (never blocking it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use yrs::Transact;

use super::Room;
use crate::content::blocks::{self, Block};
use crate::content::merge::{self, MergeError};
use crate::content::notice::{self, Notice};
use crate::store::{P1Content, P1Write, StoreError};

/// What a caller of the content API asks the room to merge.
pub struct MergeRequest {
    /// The blocks the change was made against; `None`: the document as it is now.
    pub base: Option<Vec<Block>>,
    pub change: Change,
    /// Told to everyone in the scene with the change (a restore).
    pub notice: Option<Notice>,
    pub reply: oneshot::Sender<Result<Merged, MergeRefused>>,
}

/// A change to merge.
pub enum Change {
    /// The whole scene as the caller wants it (an autosave).
    Blocks(Vec<Block>),
    /// Edits by block position in the base.
    Edits(Vec<BlockEdit>),
}

/// One edit of a `PATCH`, by block position in the version it is based on (positions of
/// the edits in one request all refer to that version, before any of them).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum BlockEdit {
    Insert { at: usize, blocks: Vec<Block> },
    Replace { at: usize, block: Block },
    Delete { at: usize, count: Option<usize> },
}

/// A merged change, once durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Merged {
    /// The P1 content version that holds it (`None` for a scene P1 does not have).
    pub version: Option<u64>,
    pub outcome: merge::Merged,
}

/// Why a change was not merged; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeRefused {
    #[error("{message} (the scene is at version {version}); read it again and redo the change")]
    Conflict { message: String, version: u64 },
    #[error("{0}")]
    BadEdit(String),
    #[error("the change would make the scene larger than its limit")]
    TooLarge,
    #[error("the scene is moving to another node; try again")]
    Moving,
}

/// What the room knows of the scene's P1 content.
#[derive(Default)]
pub(super) struct Projection {
    /// P1 has this scene: it is kept in step.
    pub(super) tracked: bool,
    /// The P1 content version the document is known to hold.
    pub(super) version: u64,
    /// What `content_blocks` held at `version` when the room wrote or read it; a check
    /// finding other blocks at the same version means they changed behind P1's versioning
    /// (data loss, or a write that bypassed it).
    known_blocks: Option<Arc<Vec<Block>>>,
    /// The first change not written back yet, and the last change.
    unwritten: Option<(Instant, Instant)>,
    busy: Option<Busy>,
    last_check: Option<Instant>,
    /// Merged API changes waiting for the write that will hold them, and those the write in
    /// flight holds.
    waiting: Vec<Waiter>,
    covered: Vec<Waiter>,
    /// For a scene P1 does not have: merged API changes waiting for the log to commit them.
    committing: Vec<(u64, Waiter)>,
}

type Waiter = (oneshot::Sender<Result<Merged, MergeRefused>>, merge::Merged);

/// The P1 operation in flight.
enum Busy {
    Writing {
        outcome: oneshot::Receiver<Result<P1Write, StoreError>>,
        first: Instant,
        blocks: Arc<Vec<Block>>,
    },
    Checking(oneshot::Receiver<Result<Checked, StoreError>>),
}

/// What a check of P1 found.
enum Checked {
    /// P1 is at the version the room knows, holding what the room knows.
    Unchanged,
    /// A version the room did not write.
    Moved(Found),
    /// The version the room knows, with other blocks: they changed without a version bump.
    Disagrees,
}

/// A P1 version the room did not write, and the blocks of the version it knew before.
struct Found {
    content: P1Content,
    base: Option<Vec<Block>>,
}

impl Room {
    /// The document changed.
    pub(super) fn p1_changed(&mut self) {
        if !self.p1.tracked {
            return;
        }
        let now = Instant::now();
        let first = self.p1.unwritten.map_or(now, |(first, _)| first);
        self.p1.unwritten = Some((first, now));
    }

    /// A write is due or an operation is in flight: housekeeping must come back soon.
    pub(super) fn p1_waiting(&self) -> bool {
        self.p1.unwritten.is_some() || self.p1.busy.is_some() || !self.p1.committing.is_empty()
    }

    /// The next check for P1's own writes, for housekeeping's sleep.
    pub(super) fn p1_next_check(&self) -> Option<Duration> {
        let interval = self.ctx.limits.p1_check_interval;
        (self.p1.tracked && !interval.is_zero()).then(|| {
            self.p1
                .last_check
                .map_or(Duration::ZERO, |at| interval.saturating_sub(at.elapsed()))
        })
    }

    /// Whether a write back should start now: a change waits long enough, and the log has
    /// committed everything (what P1 is given must survive a crash of this node).
    fn p1_due(&self) -> bool {
        let limits = &self.ctx.limits;
        let committed = self.log.pending.is_empty() && self.log.in_flight.is_none();
        match self.p1.unwritten {
            Some((first, last)) => {
                committed
                    && (!self.p1.waiting.is_empty()
                        || last.elapsed() >= limits.p1_write_delay
                        || first.elapsed() >= limits.p1_max_lag)
            }
            None => false,
        }
    }

    /// Housekeeping: collects a finished operation, then starts a due write or check.
    pub(super) fn p1_housekeeping(&mut self) {
        self.p1_answer_committed();
        if !self.p1.tracked || !self.p1_collect() || self.fenced || self.handoff.is_some() {
            return;
        }
        // A due write goes first (it is refused if P1 moved on), except right after a
        // refusal or on load, when P1's write must be taken in first.
        let check_due = self.p1_next_check().is_some_and(|d| d.is_zero());
        if self.p1.last_check.is_none() || (check_due && !self.p1_due()) {
            self.p1_start_check();
        } else if self.p1_due() {
            self.p1_start_write();
        }
    }

    /// Collects the operation in flight if it finished. Returns whether none is in flight.
    fn p1_collect(&mut self) -> bool {
        match &mut self.p1.busy {
            None => true,
            Some(Busy::Writing {
                outcome,
                first,
                blocks,
            }) => {
                let (first, blocks) = (*first, blocks.clone());
                match outcome.try_recv() {
                    Err(oneshot::error::TryRecvError::Empty) => false,
                    Ok(result) => {
                        self.p1.busy = None;
                        self.p1_written(result.map_err(|e| e.to_string()), first, blocks);
                        true
                    }
                    Err(oneshot::error::TryRecvError::Closed) => {
                        self.p1.busy = None;
                        self.p1_written(Err("the write stopped".into()), first, blocks);
                        true
                    }
                }
            }
            Some(Busy::Checking(outcome)) => match outcome.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => false,
                Ok(result) => {
                    self.p1.busy = None;
                    match result {
                        Ok(Checked::Moved(found)) => self.p1_take_in(found),
                        Ok(Checked::Unchanged) => {}
                        Ok(Checked::Disagrees) => self.p1_disagrees(),
                        Err(error) => {
                            tracing::warn!(scene = %self.scene, %error, "checking P1 for changes failed; will retry");
                            self.ctx.metrics.error("p1_check_failed");
                        }
                    }
                    true
                }
                Err(oneshot::error::TryRecvError::Closed) => {
                    self.p1.busy = None;
                    true
                }
            },
        }
    }

    fn p1_start_write(&mut self) {
        let Some((first, _)) = self.p1.unwritten.take() else {
            return;
        };
        let Some(blocks) = self.p1_blocks() else { return };
        let blocks = Arc::new(blocks);
        self.p1.covered.append(&mut self.p1.waiting);
        let (done, outcome) = oneshot::channel();
        let (store, scene, owner, epoch, expected) = (
            self.ctx.store.clone(),
            self.scene.clone(),
            self.ctx.node_id.clone(),
            self.epoch,
            self.p1.version,
        );
        let written_blocks = blocks.clone();
        tokio::spawn(async move {
            let written = store
                .write_p1_blocks(&scene, &owner, epoch, expected, &written_blocks)
                .await;
            let _ = done.send(written);
        });
        self.p1.busy = Some(Busy::Writing {
            outcome,
            first,
            blocks,
        });
    }

    /// A write back of `blocks` finished.
    fn p1_written(&mut self, result: Result<P1Write, String>, first: Instant, blocks: Arc<Vec<Block>>) {
        match result {
            Ok(P1Write::Written(version)) => {
                self.ctx
                    .metrics
                    .p1_lag_seconds
                    .observe(first.elapsed().as_secs_f64());
                self.p1.version = version;
                self.p1.known_blocks = Some(blocks);
                for (reply, outcome) in self.p1.covered.drain(..) {
                    let _ = reply.send(Ok(Merged {
                        version: Some(version),
                        outcome,
                    }));
                }
            }
            Ok(P1Write::Fenced) => {
                for (reply, _) in self.p1.covered.drain(..) {
                    let _ = reply.send(Err(MergeRefused::Moving));
                }
            }
            Ok(P1Write::Stale(current)) => {
                // P1 wrote meanwhile: take its write in first, then write again.
                tracing::info!(scene = %self.scene, known = self.p1.version, current, "P1 changed the scene; merging it before writing back");
                self.p1_rewrite_later(first);
                self.p1.last_check = None;
            }
            Err(error) => {
                tracing::warn!(scene = %self.scene, %error, "writing the scene back to P1 failed; will retry");
                self.ctx.metrics.error("p1_write_failed");
                self.p1_rewrite_later(first);
            }
        }
    }

    /// The write did not happen: its changes are still to be written.
    fn p1_rewrite_later(&mut self, first: Instant) {
        let last = self.p1.unwritten.map_or(first, |(_, last)| last);
        self.p1.unwritten = Some((first, last));
        self.p1.covered.append(&mut self.p1.waiting);
        self.p1.waiting = std::mem::take(&mut self.p1.covered);
    }

    /// Looks for a P1 version the room did not write.
    fn p1_start_check(&mut self) {
        self.p1.last_check = Some(Instant::now());
        let (done, outcome) = oneshot::channel();
        let (store, scene, known) = (self.ctx.store.clone(), self.scene.clone(), self.p1.version);
        let expected = self.p1.known_blocks.clone();
        tokio::spawn(async move {
            let found = async {
                let Some(content) = store.p1_content(&scene).await? else {
                    return Ok(Checked::Unchanged);
                };
                if content.version == known {
                    let same = expected.is_none_or(|blocks| *blocks == content.blocks);
                    return Ok(if same {
                        Checked::Unchanged
                    } else {
                        Checked::Disagrees
                    });
                }
                let base = store.p1_projection(&scene, known).await?;
                Ok(Checked::Moved(Found { content, base }))
            };
            let _ = done.send(found.await);
        });
        self.p1.busy = Some(Busy::Checking(outcome));
    }

    /// P1 holds a version the room did not write: merge it into the document.
    fn p1_take_in(&mut self, found: Found) {
        let Found { content, base } = found;
        let version = content.version;
        match base {
            Some(base) => match self.p1_merge(&base, &content.blocks, None) {
                Ok(merged) => {
                    tracing::info!(scene = %self.scene, from = self.p1.version, to = version,
                        inserted = merged.inserted, changed = merged.changed, deleted = merged.deleted,
                        "merged a write P1 made into the live scene");
                }
                Err(error) => {
                    // Both sides are kept: the document as it is, P1's write in its history.
                    tracing::error!(scene = %self.scene, version, %error,
                        "a write P1 made cannot be merged into the live scene; the live scene is kept and written back over it");
                    self.ctx.metrics.error("p1_write_unmergeable");
                    self.p1_changed();
                }
            },
            None => {
                tracing::error!(scene = %self.scene, known = self.p1.version, version,
                    "P1 moved on from a version Troupe does not remember; the live scene is written back over it");
                self.ctx.metrics.error("p1_write_unmergeable");
                self.p1_changed();
            }
        }
        self.p1.version = version;
        let blocks = Arc::new(content.blocks);
        self.p1.known_blocks = Some(blocks.clone());
        let (store, scene) = (self.ctx.store.clone(), self.scene.clone());
        tokio::spawn(async move {
            if let Err(error) = store.record_p1_projection(&scene, version, &blocks).await {
                tracing::warn!(%scene, %error, "recording a P1 version failed");
            }
        });
    }

    /// `content_blocks` no longer holds what the room wrote (or read) at the version it
    /// knows: changed without a version bump. Reported as data loss (a rollback trigger),
    /// and repaired by writing the document back as the next version; P1's blocks are not
    /// merged (a truncation merged in would delete the scene's content).
    fn p1_disagrees(&mut self) {
        tracing::error!(scene = %self.scene, version = self.p1.version,
            "data loss detected: content_blocks changed without a version bump and no longer hold the scene; writing the document back");
        self.ctx.metrics.error("data_loss_detected");
        self.p1.known_blocks = None;
        self.p1_changed();
    }

    /// Merges `base -> theirs` into the document as an edit of the room's own, fanned out
    /// and logged like any other.
    fn p1_merge(
        &mut self,
        base: &[Block],
        theirs: &[Block],
        notice: Option<&Notice>,
    ) -> Result<merge::Merged, MergeRefused> {
        let conflict = |error: MergeError, version: u64| MergeRefused::Conflict {
            message: error.to_string(),
            version,
        };
        let text_bytes: usize = theirs.iter().map(|b| b.text.len() + 16).sum();
        if self.document.bytes.saturating_add(text_bytes) > self.ctx.limits.max_doc_bytes {
            return Err(MergeRefused::TooLarge);
        }
        let (merged, change) = {
            let mut txn = self.document.write();
            let merged = merge::merge(&mut txn, base, theirs).map_err(|e| conflict(e, self.p1.version))?;
            if let Some(notice) = notice {
                notice::write(&mut txn, notice);
            }
            (merged, txn.encode_update_v1())
        };
        if !merged.is_empty() || notice.is_some() {
            self.record_own_change(change);
        }
        Ok(merged)
    }

    /// `PUT` or `PATCH` through the content API.
    pub(super) fn p1_merge_request(&mut self, request: MergeRequest) {
        let MergeRequest {
            base,
            change,
            notice,
            reply,
        } = request;
        if self.fenced || self.handoff.is_some() || self.stopping.is_some() {
            let _ = reply.send(Err(MergeRefused::Moving));
            return;
        }
        let base = match base {
            Some(base) => base,
            None => match blocks::read(&self.document.doc.transact()) {
                Ok(blocks) => blocks,
                Err(error) => {
                    let _ = reply.send(Err(MergeRefused::BadEdit(error.to_string())));
                    return;
                }
            },
        };
        let theirs = match change {
            Change::Blocks(blocks) => blocks,
            Change::Edits(edits) => match apply_edits(&base, &edits) {
                Ok(blocks) => blocks,
                Err(message) => {
                    let _ = reply.send(Err(MergeRefused::BadEdit(message)));
                    return;
                }
            },
        };
        match self.p1_merge(&base, &theirs, notice.as_ref()) {
            Err(refused) => {
                let _ = reply.send(Err(refused));
            }
            Ok(outcome) if self.p1.tracked => {
                if outcome.is_empty() && self.p1.unwritten.is_none() && self.p1.busy.is_none() {
                    // Nothing new: P1 already holds it.
                    let _ = reply.send(Ok(Merged {
                        version: Some(self.p1.version),
                        outcome,
                    }));
                    return;
                }
                // Written back as soon as the log has it.
                let now = Instant::now();
                let first = self.p1.unwritten.map_or(now, |(first, _)| first);
                self.p1.unwritten = Some((first, now));
                self.p1.waiting.push((reply, outcome));
            }
            Ok(outcome) => {
                let target = self.log.last_seq + u64::from(!self.log.pending.is_empty());
                self.p1.committing.push((target, (reply, outcome)));
                self.p1_answer_committed();
            }
        }
        self.flush();
    }

    /// Answers the API changes (of a scene P1 does not have) the log has committed.
    pub(super) fn p1_answer_committed(&mut self) {
        let committed = self.log.committed_seq;
        let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.p1.committing)
            .into_iter()
            .partition(|(target, _)| *target <= committed);
        self.p1.committing = waiting;
        for (_, (reply, outcome)) in done {
            let _ = reply.send(Ok(Merged {
                version: None,
                outcome,
            }));
        }
    }

    /// Unloading: waits for the operation in flight, then writes what is left.
    pub(super) async fn p1_final_write(&mut self) {
        match self.p1.busy.take() {
            Some(Busy::Writing {
                outcome,
                first,
                blocks,
            }) => {
                let result = outcome.await.unwrap_or_else(|_| Err(StoreError::Timeout));
                self.p1_written(result.map_err(|e| e.to_string()), first, blocks);
            }
            Some(Busy::Checking(outcome)) => match outcome.await {
                Ok(Ok(Checked::Moved(found))) => self.p1_take_in(found),
                Ok(Ok(Checked::Disagrees)) => self.p1_disagrees(),
                _ => {}
            },
            None => {}
        }
        if self.fenced || self.p1.unwritten.take().is_none() {
            self.p1_refuse_waiting();
            return;
        }
        let Some(blocks) = self.p1_blocks() else {
            self.p1_refuse_waiting();
            return;
        };
        self.p1.covered.append(&mut self.p1.waiting);
        let write = Box::pin(self.ctx.store.write_p1_blocks(
            &self.scene,
            &self.ctx.node_id,
            self.epoch,
            self.p1.version,
            &blocks,
        ));
        match write.await {
            Ok(P1Write::Written(version)) => {
                self.p1_written(Ok(P1Write::Written(version)), Instant::now(), Arc::new(blocks))
            }
            Ok(other) => {
                tracing::warn!(scene = %self.scene, outcome = ?other, "the last write back to P1 was refused; the next owner merges and writes it");
            }
            Err(error) => {
                tracing::warn!(scene = %self.scene, %error, "the last write back to P1 failed; the next owner writes it");
                self.ctx.metrics.error("p1_write_failed");
            }
        }
        self.p1_refuse_waiting();
    }

    /// The room is going: callers still waiting are told to retry (their change is in the
    /// log, so the next owner has it; retrying merges it once).
    fn p1_refuse_waiting(&mut self) {
        for (reply, _) in self.p1.waiting.drain(..).chain(self.p1.covered.drain(..)) {
            let _ = reply.send(Err(MergeRefused::Moving));
        }
        for (_, (reply, _)) in self.p1.committing.drain(..) {
            let _ = reply.send(Err(MergeRefused::Moving));
        }
    }

    /// The document's blocks, or `None` (logged) when it holds something that is not one.
    fn p1_blocks(&self) -> Option<Vec<Block>> {
        match blocks::read(&self.document.doc.transact()) {
            Ok(blocks) => Some(blocks),
            Err(error) => {
                tracing::error!(scene = %self.scene, %error, "the document cannot be written back to P1");
                self.ctx.metrics.error("p1_unprojectable");
                None
            }
        }
    }
}

/// The blocks after `edits`, all by positions in `base`.
pub fn apply_edits(base: &[Block], edits: &[BlockEdit]) -> Result<Vec<Block>, String> {
    let len = base.len();
    let mut deleted = vec![false; len];
    let mut replaced: Vec<Option<&Block>> = vec![None; len];
    let mut inserted: Vec<Vec<&Block>> = vec![Vec::new(); len + 1];
    for (n, edit) in edits.iter().enumerate() {
        let n = n + 1;
        match edit {
            BlockEdit::Insert { at, blocks } => {
                let slot = inserted
                    .get_mut(*at)
                    .ok_or_else(|| format!("edit {n}: cannot insert at {at}: the scene has {len} blocks"))?;
                slot.extend(blocks);
            }
            BlockEdit::Replace { at, block } => {
                if *at >= len || deleted[*at] || replaced[*at].is_some() {
                    return Err(format!("edit {n}: no block {at} to replace (the scene has {len}, counted from 0, each changed once)"));
                }
                replaced[*at] = Some(block);
            }
            BlockEdit::Delete { at, count } => {
                let count = count.unwrap_or(1);
                let end = at.checked_add(count).filter(|end| *end <= len && count > 0);
                let Some(end) = end else {
                    return Err(format!(
                        "edit {n}: cannot delete {count} blocks at {at}: the scene has {len}"
                    ));
                };
                for i in *at..end {
                    if deleted[i] || replaced[i].is_some() {
                        return Err(format!("edit {n}: block {i} is changed twice"));
                    }
                    deleted[i] = true;
                }
            }
        }
    }
    let mut out = Vec::with_capacity(len);
    for i in 0..=len {
        out.extend(inserted[i].iter().map(|b| (*b).clone()));
        if i < len && !deleted[i] {
            out.push(replaced[i].unwrap_or(&base[i]).clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::blocks::BlockType::*;

    #[test]
    fn edits_refer_to_the_base_positions() {
        let base = vec![
            Block::new(Action, "a"),
            Block::new(Action, "b"),
            Block::new(Action, "c"),
        ];
        let edits: Vec<BlockEdit> = serde_json::from_str(
            r#"[{"op":"insert","at":0,"blocks":[{"type":"scene_heading","text":"INT."}]},
                {"op":"replace","at":1,"block":{"type":"dialogue","text":"B"}},
                {"op":"delete","at":2},
                {"op":"insert","at":3,"blocks":[{"type":"transition","text":"CUT TO:"}]}]"#,
        )
        .unwrap();
        let out = apply_edits(&base, &edits).unwrap();
        assert_eq!(
            out,
            vec![
                Block::new(SceneHeading, "INT."),
                Block::new(Action, "a"),
                Block::new(Dialogue, "B"),
                Block::new(Transition, "CUT TO:"),
            ]
        );
        for bad in [
            r#"[{"op":"replace","at":3,"block":{"type":"action","text":""}}]"#,
            r#"[{"op":"delete","at":1,"count":5}]"#,
            r#"[{"op":"delete","at":1},{"op":"replace","at":1,"block":{"type":"action","text":""}}]"#,
            r#"[{"op":"insert","at":4,"blocks":[]}]"#,
        ] {
            let edits: Vec<BlockEdit> = serde_json::from_str(bad).unwrap();
            assert!(apply_edits(&base, &edits).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<Vec<BlockEdit>>(r#"[{"op":"move","at":1}]"#).is_err());
        assert!(serde_json::from_str::<Vec<BlockEdit>>(
            r#"[{"op":"insert","at":0,"blocks":[{"type":"slug","text":""}]}]"#
        )
        .is_err());
    }
}
