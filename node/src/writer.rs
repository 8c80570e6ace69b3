//! The group committer: one task that writes the pending batches of every room to the
//! store in a single transaction, then tells each room how far it is committed.
//!
//! Each room keeps at most one batch in flight, so the queue holds at most one job per
//! room and a room never waits on the store: while a commit runs, new edits gather in the
//! room and go out together in its next batch. A failed commit is retried with backoff,
//! never dropped; rooms keep serving from memory meanwhile and acks wait.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use tokio::sync::mpsc;
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

/// Where the writer reports a room's commits, and the room learns of them: the status
/// itself, a count of reports and the room's waker. Every commit reports to each room in
/// it; a watch channel did the same with a lock per report and a waiter list the room
/// joined and left on every turn of its loop.
#[derive(Debug, Default)]
pub struct CommitProgress {
    committed_seq: AtomicU64,
    refused: AtomicBool,
    /// Bumped by every report, so that the room sees each one.
    reports: AtomicU64,
    room: AtomicWaker,
}

impl CommitProgress {
    /// The progress of a log loaded with everything up to `committed_seq` committed.
    pub fn new(committed_seq: u64) -> Self {
        Self {
            committed_seq: AtomicU64::new(committed_seq),
            ..Self::default()
        }
    }

    /// The status as last reported.
    pub fn status(&self) -> CommitStatus {
        CommitStatus {
            committed_seq: self.committed_seq.load(Ordering::Acquire),
            refused: self.refused.load(Ordering::Acquire),
        }
    }

    /// Batches up to `seq` are durable.
    pub fn committed(&self, seq: u64) {
        self.committed_seq.fetch_max(seq, Ordering::AcqRel);
        self.report();
    }

    /// The store refused a batch.
    pub fn refused(&self) {
        self.refused.store(true, Ordering::Release);
        self.report();
    }

    fn report(&self) {
        self.reports.fetch_add(1, Ordering::AcqRel);
        self.room.wake();
    }

    /// The room's side: the status once the writer reported since `seen` (which it
    /// updates); `Pending` until then, the room's task woken by the next report.
    pub fn poll_report(&self, cx: &mut Context<'_>, seen: &mut u64) -> Poll<CommitStatus> {
        // Registered before the count is read: a report in between still wakes the room.
        self.room.register(cx.waker());
        let reports = self.reports.load(Ordering::Acquire);
        if reports == *seen {
            return Poll::Pending;
        }
        *seen = reports;
        Poll::Ready(self.status())
    }
}

/// A batch for the store and where to report the outcome.
pub struct WriteJob {
    pub append: LogAppend,
    pub progress: Arc<CommitProgress>,
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
    let mut progresses = Vec::with_capacity(max_batch);
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
            progresses.push(job.progress);
            next = if appends.len() < max_batch && bytes < MAX_BATCH_BYTES {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        let refused = commit_with_retry(&store, &node_id, &metrics, &appends).await;
        for (i, (append, progress)) in appends.iter().zip(&progresses).enumerate() {
            metrics.pending_bytes.dec_by(append.data.len() as i64);
            if refused.contains(&i) {
                progress.refused();
            } else {
                metrics.updates_stored.inc();
                progress.committed(append.seq);
            }
        }
        appends.clear();
        progresses.clear();
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

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_room_sees_each_report_once_and_is_woken_by_the_next() {
        let progress = Arc::new(CommitProgress::new(4));
        let mut seen = 0;
        assert_eq!(
            progress.status(),
            CommitStatus {
                committed_seq: 4,
                refused: false
            }
        );
        // Nothing reported yet: the room waits.
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(progress.poll_report(&mut cx, &mut seen).is_pending());

        // A commit wakes the waiting room, which then reads it, once.
        let writer = progress.clone();
        let report = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                writer.committed(6);
            });
            poll_fn(|cx| progress.poll_report(cx, &mut seen)).await
        })
        .await
        .expect("woken by the report");
        assert_eq!(
            report,
            CommitStatus {
                committed_seq: 6,
                refused: false
            }
        );
        assert!(progress.poll_report(&mut cx, &mut seen).is_pending());

        // A late report of an older batch never moves the status back; it is still a report.
        progress.committed(5);
        let Poll::Ready(status) = progress.poll_report(&mut cx, &mut seen) else {
            panic!("a report is seen");
        };
        assert_eq!(status.committed_seq, 6);

        progress.refused();
        let Poll::Ready(status) = progress.poll_report(&mut cx, &mut seen) else {
            panic!("a refusal is seen");
        };
        assert!(status.refused);
        assert!(progress.poll_report(&mut cx, &mut seen).is_pending());
    }
}
