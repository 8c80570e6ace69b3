//! The group committer: one task that writes the pending batches of every room to the
//! store in a single transaction, then tells each room how far it is committed.
//!
//! Each room keeps at most one batch in flight, so the queue holds at most one job per
//! room and a room never waits on the store: while a commit runs, new edits gather in the
//! room and go out together in its next batch. A failed commit is retried with backoff,
//! never dropped; rooms keep serving from memory meanwhile and acks wait.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use troupe_runtime::Backoff;

use crate::metrics::Metrics;
use crate::store::{LogAppend, Store};

/// How far a room's log is committed, as the writer last saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStatus {
    /// Every batch with `seq <= committed_seq` is durable.
    pub committed_seq: u64,
    /// The store refused a batch: another writer holds this scene now.
    pub refused: bool,
}

/// A batch for the store and where to report the outcome.
pub struct WriteJob {
    pub append: LogAppend,
    pub status: Arc<watch::Sender<CommitStatus>>,
}

/// Queue into the writer task.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<WriteJob>,
}

/// Why a job could not be queued.
#[derive(Debug, PartialEq, Eq)]
pub enum QueueError {
    /// The queue is full: keep the batch and try again shortly.
    Full,
    /// The writer has stopped (shutdown).
    Closed,
}

impl WriterHandle {
    /// Queues a job without waiting; on error the job is handed back.
    pub fn try_queue(&self, job: WriteJob) -> Result<(), (WriteJob, QueueError)> {
        self.tx.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(job) => (job, QueueError::Full),
            mpsc::error::TrySendError::Closed(job) => (job, QueueError::Closed),
        })
    }
}

/// A commit stops gathering batches at this many bytes: one statement stays quick, and
/// the store client's buffers (kept at their largest size) stay small.
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Starts the writer. It ends once every handle is dropped and the queue is drained.
pub fn spawn(
    store: Store,
    node_id: String,
    metrics: Arc<Metrics>,
    max_batch: usize,
    interval: Duration,
    queue: usize,
) -> (WriterHandle, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(queue.max(1));
    let task = tokio::spawn(run(store, node_id, metrics, max_batch.max(1), interval, rx));
    (WriterHandle { tx }, task)
}

async fn run(
    store: Store,
    node_id: String,
    metrics: Arc<Metrics>,
    max_batch: usize,
    interval: Duration,
    mut rx: mpsc::Receiver<WriteJob>,
) {
    let mut appends = Vec::with_capacity(max_batch);
    let mut statuses = Vec::with_capacity(max_batch);
    let mut last_start: Option<tokio::time::Instant> = None;
    while let Some(first) = rx.recv().await {
        // Paced: what arrives until the interval is over joins this commit.
        if let Some(due) = last_start.map(|t| t + interval) {
            if tokio::time::Instant::now() < due {
                tokio::time::sleep_until(due).await;
            }
        }
        last_start = Some(tokio::time::Instant::now());
        let mut next = Some(first);
        let mut bytes = 0;
        while let Some(job) = next {
            bytes += job.append.data.len();
            metrics.pending_bytes.inc_by(job.append.data.len() as i64);
            appends.push(job.append);
            statuses.push(job.status);
            next = if appends.len() < max_batch && bytes < MAX_BATCH_BYTES {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        let refused = commit_with_retry(&store, &node_id, &metrics, &appends).await;
        for (i, (append, status)) in appends.iter().zip(&statuses).enumerate() {
            metrics.pending_bytes.dec_by(append.data.len() as i64);
            if refused.contains(&i) {
                status.send_modify(|s| s.refused = true);
            } else {
                metrics.updates_stored.inc();
                status.send_modify(|s| s.committed_seq = s.committed_seq.max(append.seq));
            }
        }
        appends.clear();
        statuses.clear();
    }
}

/// Commits until the store answers; returns the indexes the store refused.
async fn commit_with_retry(
    store: &Store,
    node_id: &str,
    metrics: &Metrics,
    appends: &[LogAppend],
) -> Vec<usize> {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        let started = Instant::now();
        match store.append(node_id, appends).await {
            Ok(refused) => {
                metrics.store_up.set(1);
                metrics
                    .store_commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                tracing::debug!(
                    rows = appends.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "group commit done"
                );
                for &i in &refused {
                    tracing::warn!(scene = %appends[i].scene, seq = appends[i].seq, "store refused a batch: scene has another writer");
                }
                return refused;
            }
            Err(error) => {
                metrics.store_up.set(0);
                metrics.store_commit_failures.inc();
                let delay = backoff.next_delay();
                tracing::warn!(%error, batches = appends.len(), retry_in_ms = delay.as_millis() as u64, "group commit failed; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}
