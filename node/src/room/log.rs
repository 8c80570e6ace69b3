//! The room's end of the scene's log: changes applied but not yet handed to the group
//! committer, the one batch in flight, and how far the store has committed.
//!
//! Apart because it is the durability pipeline (invariant 2): broadcast first, then one
//! batch at a time to the writer, fenced by the room's lease epoch.

use std::sync::Arc;
use std::time::Instant;

use yrs::{ReadTxn, StateVector, Transact};

use super::Room;
use crate::store::LogAppend;
use crate::writer::{CommitProgress, CommitStatus, QueueError, WriteJob};

/// Where the room's changes are on their way to the store.
pub(super) struct Log {
    /// Changes applied but not yet handed to the writer.
    pub(super) pending: Vec<Vec<u8>>,
    /// Highest log position handed to the writer.
    pub(super) last_seq: u64,
    pub(super) committed_seq: u64,
    pub(super) in_flight: Option<u64>,
    pub(super) in_flight_bytes: u64,
    /// Where the writer reports this log's commits.
    pub(super) progress: Arc<CommitProgress>,
    /// The writer's reports the room has seen (see [`CommitProgress::poll_report`]).
    pub(super) reports_seen: u64,
}

impl Log {
    /// The log of a scene loaded with everything up to `last_seq` committed.
    pub(super) fn new(last_seq: u64) -> Self {
        Self {
            pending: Vec::new(),
            last_seq,
            committed_seq: last_seq,
            in_flight: None,
            in_flight_bytes: 0,
            progress: Arc::new(CommitProgress::new(last_seq)),
            reports_seen: 0,
        }
    }
}

impl Room {
    /// Hands pending changes to the writer when no batch is in flight.
    pub(super) fn flush(&mut self) {
        if self.log.in_flight.is_some() || self.log.pending.is_empty() || self.fenced {
            return;
        }
        let data = if self.log.pending.len() == 1 {
            self.log.pending.remove(0)
        } else {
            match yrs::merge_updates_v1(&self.log.pending) {
                Ok(merged) => {
                    self.log.pending.clear();
                    merged
                }
                Err(error) => {
                    // Not expected for updates yrs produced itself. The document's full
                    // state holds every pending change, so the batch is still complete.
                    tracing::warn!(scene = %self.scene, %error, "merge failed; writing the full state");
                    self.log.pending.clear();
                    self.document
                        .doc
                        .transact()
                        .encode_state_as_update_v1(&StateVector::default())
                }
            }
        };
        let seq = self.log.last_seq + 1;
        let bytes = data.len() as u64;
        let job = WriteJob {
            append: LogAppend {
                scene: self.scene.clone(),
                seq,
                epoch: self.epoch,
                data,
            },
            progress: self.log.progress.clone(),
        };
        match self.ctx.writer.try_queue(job) {
            Ok(()) => {
                self.log.last_seq = seq;
                self.log.in_flight = Some(seq);
                self.log.in_flight_bytes = bytes;
            }
            Err((job, error)) => {
                // Keep the changes; the next tick tries again.
                self.log.pending.insert(0, job.append.data);
                if error == QueueError::Closed {
                    tracing::error!(scene = %self.scene, "writer stopped with changes pending");
                }
            }
        }
    }

    /// The writer reported `status`.
    pub(super) fn on_commit(&mut self, status: CommitStatus) {
        if status.refused {
            self.fence("the store refused our write");
            return;
        }
        if status.committed_seq > self.log.committed_seq {
            let newly = status.committed_seq - self.log.committed_seq;
            self.log.committed_seq = status.committed_seq;
            self.uncompacted.rows += newly;
            self.uncompacted.bytes += std::mem::take(&mut self.log.in_flight_bytes);
            self.uncompacted.since.get_or_insert_with(Instant::now);
            self.ctx.webhooks.changed(&self.scene, self.log.committed_seq);
        }
        if self
            .log
            .in_flight
            .is_some_and(|seq| seq <= self.log.committed_seq)
        {
            self.log.in_flight = None;
        }
        self.release_acks();
        self.flush();
        self.maybe_compact(false);
        if self.p1_waiting() {
            // A write-back waiting for this commit, or a change API caller waiting for it.
            self.p1_housekeeping();
        }
    }
}
