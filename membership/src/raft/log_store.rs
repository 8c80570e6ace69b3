//! The Raft log and vote, durable on this node's disk.
//!
//! The log is small (membership changes only), so it lives in memory and every change is
//! also written as a record to `raft-log` before it is acknowledged. Records replay in
//! order at start: appends, truncations, purges and the committed position. The vote is
//! its own file, replaced atomically.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use serde::{Deserialize, Serialize};

use super::disk::{self, RecordFile};
use super::{Entry, TypeConfig};
use crate::state::NodeId;

/// Purged history is dropped from the file once this many records accumulated.
const REWRITE_AFTER_RECORDS: usize = 4096;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Record {
    Append(Entry),
    /// Deletes entries from this index on.
    Truncate(u64),
    /// Deletes entries up to and including this id.
    Purge(LogId<NodeId>),
    Committed(Option<LogId<NodeId>>),
}

struct Inner {
    file: RecordFile,
    records: usize,
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId<NodeId>>,
    committed: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
}

/// The log store; clones share the same log.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
    vote_path: Arc<Path>,
}

type Result<T> = std::result::Result<T, StorageError<NodeId>>;

impl LogStore {
    /// Opens the log in `dir`, replaying what was written before.
    pub fn open(dir: &Path) -> std::io::Result<LogStore> {
        let (file, raw) = RecordFile::open(&dir.join("raft-log"))?;
        let vote_path: Arc<Path> = Arc::from(dir.join("raft-vote.json"));
        let vote = match disk::read_file(&vote_path)? {
            Some(bytes) => Some(serde_json::from_slice(&bytes).map_err(std::io::Error::other)?),
            None => None,
        };
        let mut inner = Inner {
            file,
            records: raw.len(),
            entries: BTreeMap::new(),
            last_purged: None,
            committed: None,
            vote,
        };
        for bytes in raw {
            let record: Record = serde_json::from_slice(&bytes).map_err(std::io::Error::other)?;
            inner.replay(record);
        }
        Ok(LogStore {
            inner: Arc::new(Mutex::new(inner)),
            vote_path,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    fn replay(&mut self, record: Record) {
        match record {
            Record::Append(entry) => {
                self.entries.insert(entry.log_id.index, entry);
            }
            Record::Truncate(from) => {
                self.entries.split_off(&from);
            }
            Record::Purge(upto) => {
                self.entries = self.entries.split_off(&(upto.index + 1));
                self.last_purged = Some(upto);
            }
            Record::Committed(c) => self.committed = c,
        }
    }

    /// Writes records durably, then applies them to memory.
    fn write(&mut self, records: Vec<Record>) -> std::io::Result<()> {
        let encoded: Vec<Vec<u8>> = records
            .iter()
            .map(serde_json::to_vec)
            .collect::<std::result::Result<_, _>>()
            .map_err(std::io::Error::other)?;
        self.file.append(encoded.iter().map(Vec::as_slice))?;
        self.records += records.len();
        for record in records {
            self.replay(record);
        }
        if self.records > REWRITE_AFTER_RECORDS {
            self.compact()?;
        }
        Ok(())
    }

    /// Rewrites the file as the records that reproduce the current log.
    fn compact(&mut self) -> std::io::Result<()> {
        let mut records = Vec::new();
        if let Some(p) = self.last_purged {
            records.push(serde_json::to_vec(&Record::Purge(p)));
        }
        records.push(serde_json::to_vec(&Record::Committed(self.committed)));
        for entry in self.entries.values() {
            records.push(serde_json::to_vec(&Record::Append(entry.clone())));
        }
        let records: Vec<Vec<u8>> = records
            .into_iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(std::io::Error::other)?;
        self.file.rewrite(records.iter().map(Vec::as_slice))?;
        self.records = records.len();
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>> {
        Ok(self.lock().entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let inner = self.lock();
        let last = inner.entries.values().next_back().map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: inner.last_purged,
            last_log_id: last.or(inner.last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        let bytes = serde_json::to_vec(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        disk::replace_file(&self.vote_path, &bytes).map_err(|e| StorageIOError::write_vote(&e))?;
        self.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        let mut inner = self.lock();
        if inner.committed == committed {
            return Ok(());
        }
        inner
            .write(vec![Record::Committed(committed)])
            .map_err(|e| StorageIOError::write(&e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let records: Vec<Record> = entries.into_iter().map(Record::Append).collect();
        let written = self.lock().write(records);
        match written {
            Ok(()) => {
                // Durable: the file was synced before `write` returned.
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                let message = error.to_string();
                callback.log_io_completed(Err(error));
                Err(StorageIOError::write_logs(&std::io::Error::other(message)).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        self.lock()
            .write(vec![Record::Truncate(log_id.index)])
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        self.lock()
            .write(vec![Record::Purge(log_id)])
            .map_err(|e| StorageIOError::write_logs(&e).into())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, NodeId(1)), index),
            payload: EntryPayload::Blank,
        }
    }

    fn indexes(store: &LogStore) -> Vec<(u64, u64)> {
        store
            .lock()
            .entries
            .values()
            .map(|e| (e.log_id.index, e.log_id.leader_id.term))
            .collect()
    }

    #[test]
    fn a_reopened_log_replays_appends_truncations_purges_and_commits() {
        let dir = std::env::temp_dir().join(format!("troupe-raft-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        {
            let store = LogStore::open(&dir).unwrap();
            let mut inner = store.lock();
            inner
                .write((1..=5).map(|i| Record::Append(entry(i, 1))).collect())
                .unwrap();
            // A new leader overwrites the uncommitted tail.
            inner.write(vec![Record::Truncate(4)]).unwrap();
            inner.write(vec![Record::Append(entry(4, 2))]).unwrap();
            inner.write(vec![Record::Purge(entry(2, 1).log_id)]).unwrap();
            inner
                .write(vec![Record::Committed(Some(entry(3, 1).log_id))])
                .unwrap();
        }
        let store = LogStore::open(&dir).unwrap();
        assert_eq!(indexes(&store), vec![(3, 1), (4, 2)]);
        assert_eq!(store.lock().last_purged, Some(entry(2, 1).log_id));
        assert_eq!(store.lock().committed, Some(entry(3, 1).log_id));
        // Rewriting the file keeps exactly the same log.
        store.lock().compact().unwrap();
        drop(store);
        let store = LogStore::open(&dir).unwrap();
        assert_eq!(indexes(&store), vec![(3, 1), (4, 2)]);
        assert_eq!(store.lock().committed, Some(entry(3, 1).log_id));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
