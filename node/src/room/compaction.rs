//! Compaction: folding the scene's log into one snapshot once it has grown by rows, bytes
//! or age (and once more when the room unloads), so that a reload reads little.
//!
//! Apart because it runs on its own clock and off the room task: the room encodes the
//! state, a spawned task writes it, fenced by the room's lease epoch.

use std::time::Instant;

use yrs::{ReadTxn, StateVector, Transact};

use super::Room;
use crate::store::history::{NewVersion, VersionKind};
use crate::store::{Snapshot, StoredScene};

/// The compaction counters: how much log the latest snapshot does not cover yet.
#[derive(Default)]
pub(super) struct Uncompacted {
    pub(super) rows: u64,
    pub(super) bytes: u64,
    pub(super) since: Option<Instant>,
}

impl Uncompacted {
    /// What the log of a scene just loaded holds beyond its newest snapshot.
    pub(super) fn of(stored: &StoredScene) -> Self {
        let snapshot_seq = stored.snapshots.first().map_or(0, |s| s.upto_seq);
        let tail: Vec<_> = stored.tail_after(snapshot_seq).collect();
        Self {
            rows: tail.len() as u64,
            bytes: tail.iter().map(|r| r.data.len() as u64).sum(),
            since: (!tail.is_empty()).then(Instant::now),
        }
    }
}

impl Room {
    /// Folds the log into a snapshot when it has grown by rows, bytes or age, or (when
    /// `unloading`) whenever anything is uncovered, so reloads read little.
    pub(super) fn maybe_compact(&mut self, unloading: bool) {
        if let Some(write) = self.compaction(unloading) {
            tokio::spawn(write);
        }
    }

    /// The snapshot write that is due, if any.
    pub(super) fn compaction(
        &mut self,
        unloading: bool,
    ) -> Option<impl std::future::Future<Output = ()> + use<>> {
        let limits = &self.ctx.limits;
        let u = &self.uncompacted;
        if u.rows == 0
            || self.log.in_flight.is_some()
            || !self.log.pending.is_empty()
            || self.document.poisoned
        {
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
            .document
            .doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        self.document.bytes = data.len();
        self.uncompacted = Uncompacted::default();
        let snapshot = Snapshot {
            upto_seq: self.log.committed_seq,
            data,
        };
        let store = self.ctx.store.clone();
        let metrics = self.ctx.metrics.clone();
        let scene = self.scene.clone();
        let (owner, epoch) = (self.ctx.node_id.clone(), self.epoch);
        let history_every = limits.history_every;
        Some(async move {
            match store.write_snapshot(&scene, &snapshot, &owner, epoch).await {
                Ok(true) => {
                    metrics.compaction_runs.inc();
                    tracing::debug!(%scene, upto = snapshot.upto_seq, bytes = snapshot.data.len(), "snapshot written");
                    let version = NewVersion {
                        kind: VersionKind::Auto,
                        name: None,
                        created_by: None,
                        upto_seq: snapshot.upto_seq,
                        data: &snapshot.data,
                    };
                    if let Err(error) = store
                        .add_version(&scene, &owner, epoch, &version, history_every)
                        .await
                    {
                        tracing::warn!(%scene, %error, "no history version kept for this snapshot");
                    }
                }
                Ok(false) => tracing::warn!(%scene, "snapshot not written: another node holds the scene"),
                Err(error) => {
                    metrics.compaction_failures.inc();
                    tracing::warn!(%scene, %error, "compaction failed; the log stays as it is");
                }
            }
        })
    }
}
