//! The Raft state machine: applies [`Command`]s to the [`ClusterState`] and publishes every
//! change as a [`ClusterView`] to whoever watches (the node's rooms, the RPC watch endpoint).
//!
//! The state lives in memory. Snapshots are written to `raft-snapshot.json`; at start the
//! state is the last snapshot, and openraft replays the committed log entries after it.

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Entry, TypeConfig};
use crate::raft::disk;
use crate::state::{Applied, ClusterState, CommandError, NodeId};
use crate::view::ClusterView;

/// What a command's log entry answers.
pub type CommandResult = std::result::Result<Applied, CommandError>;

type Meta = SnapshotMeta<NodeId, openraft::BasicNode>;
type Result<T> = std::result::Result<T, StorageError<NodeId>>;

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: Meta,
    state: ClusterState,
}

pub struct StateMachine {
    state: ClusterState,
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, openraft::BasicNode>,
    snapshot_path: Arc<Path>,
    view: watch::Sender<Arc<ClusterView>>,
}

impl StateMachine {
    /// Opens the state machine in `dir` at its last snapshot.
    pub fn open(dir: &Path) -> std::io::Result<(StateMachine, watch::Receiver<Arc<ClusterView>>)> {
        let snapshot_path: Arc<Path> = Arc::from(dir.join("raft-snapshot.json"));
        let stored: Option<StoredSnapshot> = match disk::read_file(&snapshot_path)? {
            Some(bytes) => Some(serde_json::from_slice(&bytes).map_err(std::io::Error::other)?),
            None => None,
        };
        let (state, last_applied, last_membership) = match stored {
            Some(s) => (s.state, s.meta.last_log_id, s.meta.last_membership),
            None => (ClusterState::default(), None, StoredMembership::default()),
        };
        let (view, rx) = watch::channel(Arc::new(ClusterView::default()));
        let sm = StateMachine {
            state,
            last_applied,
            last_membership,
            snapshot_path,
            view,
        };
        sm.publish();
        Ok((sm, rx))
    }

    fn publish(&self) {
        let membership = self.last_membership.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let learners: Vec<NodeId> = membership.learner_ids().collect();
        let view = ClusterView {
            version: self.last_applied.map_or(0, |l| l.index),
            state: self.state.clone(),
            voters,
            learners,
            leader: None,
        };
        self.view.send_replace(Arc::new(view));
    }

    fn snapshot_id(&self) -> String {
        match self.last_applied {
            Some(l) => format!("{}-{}", l.leader_id, l.index),
            None => "empty".into(),
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(
        Option<LogId<NodeId>>,
        StoredMembership<NodeId, openraft::BasicNode>,
    )> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut replies = Vec::new();
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            let reply = match entry.payload {
                EntryPayload::Blank => Ok(self.unchanged()),
                EntryPayload::Normal(command) => {
                    let result = self.state.apply(&command);
                    match &result {
                        Ok(applied) => tracing::info!(?command, epoch = applied.epoch, "membership changed"),
                        Err(error) => tracing::debug!(?command, %error, "membership command refused"),
                    }
                    result
                }
                EntryPayload::Membership(membership) => {
                    self.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    Ok(self.unchanged())
                }
            };
            replies.push(reply);
        }
        self.publish();
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            meta: Meta {
                last_log_id: self.last_applied,
                last_membership: self.last_membership.clone(),
                snapshot_id: self.snapshot_id(),
            },
            state: self.state.clone(),
            path: self.snapshot_path.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(&mut self, meta: &Meta, snapshot: Box<Cursor<Vec<u8>>>) -> Result<()> {
        let state: ClusterState = serde_json::from_slice(snapshot.get_ref())
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            state: state.clone(),
        };
        let bytes = serde_json::to_vec(&stored).map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        disk::replace_file(&self.snapshot_path, &bytes)
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        self.state = state;
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        self.publish();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        let Some(bytes) =
            disk::read_file(&self.snapshot_path).map_err(|e| StorageIOError::read_snapshot(None, &e))?
        else {
            return Ok(None);
        };
        let stored: StoredSnapshot =
            serde_json::from_slice(&bytes).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        let data = serde_json::to_vec(&stored.state).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

impl StateMachine {
    fn unchanged(&self) -> Applied {
        Applied {
            epoch: self.state.epoch,
            epoch_changed: false,
        }
    }
}

/// Builds a snapshot from a copy of the state taken when the build was asked for.
pub struct SnapshotBuilder {
    meta: Meta,
    state: ClusterState,
    path: Arc<Path>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let stored = StoredSnapshot {
            meta: self.meta.clone(),
            state: self.state.clone(),
        };
        let bytes = serde_json::to_vec(&stored).map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        disk::replace_file(&self.path, &bytes).map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let data = serde_json::to_vec(&self.state).map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}
