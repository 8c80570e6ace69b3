//! Store requests of many rooms, sent many per statement: the lease reads, lease claims,
//! loads and P1 content reads of the scenes this node is about to open, the lease releases
//! of those it hands off; and the quota reports of many connections ([`UserBytes`]).
//!
//! A node that takes over a failed node's scenes opens thousands at once. Asked one scene
//! at a time, each claim cost the store a commit (and a disk flush) and each read a round
//! trip through a pool of a few connections; the store spent more on statements than on
//! data. Rooms queue their request here and wait for the answer; one task per kind sends
//! whatever is queued when its previous statement returns, together.

use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::store::{P1Content, Store, StoreError, StoredScene};

/// Most requests in one statement.
const MAX_BATCH: usize = 512;

/// How long a quota report waits for others to go with it.
pub const REPORT_PACE: Duration = Duration::from_secs(1);

/// How a batching task gathers its requests.
#[derive(Clone, Copy)]
struct Gathering {
    /// How long a batch's first request waits for others to join it.
    pace: Duration,
    /// Whether a request nobody waits for any more is dropped (a read, a claim given up)
    /// or still made (a report of bytes written).
    skip_abandoned: bool,
}

impl Gathering {
    /// Rooms wait on these: each batch goes as soon as the previous one is done.
    const READS_AND_CLAIMS: Gathering = Gathering {
        pace: Duration::ZERO,
        skip_abandoned: true,
    };
    /// A release is made even if its room stopped waiting: the next owner need not wait.
    const RELEASES: Gathering = Gathering {
        pace: Duration::ZERO,
        skip_abandoned: false,
    };
    const REPORTS: Gathering = Gathering {
        pace: REPORT_PACE,
        skip_abandoned: false,
    };
}

/// What a room waits for: its scene's lease, its claim, its stored state, its release.
#[derive(Clone)]
pub struct StoreBatches {
    leases: Batcher<(), Option<(u64, String)>>,
    claims: Batcher<u64, bool>,
    releases: Batcher<u64, bool>,
    loads: Batcher<(), StoredScene>,
    p1: Batcher<(), Result<Option<P1Content>, String>>,
}

impl StoreBatches {
    /// Starts the five tasks for node `owner`; each ends once every handle is dropped.
    /// `queue` bounds the requests waiting for each.
    pub fn spawn(store: Store, owner: String, queue: usize) -> StoreBatches {
        StoreBatches {
            leases: Batcher::spawn("lease reads", queue, &store, |store, batch| async move {
                store.leases(&scenes_of(batch)).await
            }),
            claims: Batcher::spawn("lease claims", queue, &store, {
                let owner = owner.clone();
                move |store, batch| {
                    let owner = owner.clone();
                    async move { store.claim_leases(&batch, &owner).await }
                }
            }),
            releases: Batcher::spawn_with(
                "lease releases",
                Gathering::RELEASES,
                queue,
                &store,
                move |store, batch| {
                    let owner = owner.clone();
                    async move { store.release_leases(&batch, &owner).await }
                },
            ),
            loads: Batcher::spawn("loads", queue, &store, |store, batch| async move {
                store.load_many(&scenes_of(batch)).await
            }),
            p1: Batcher::spawn("P1 content reads", queue, &store, |store, batch| async move {
                let found = store.p1_contents(&scenes_of(batch)).await?;
                Ok(found
                    .into_iter()
                    .map(|one| one.map_err(|e| e.to_string()))
                    .collect())
            }),
        }
    }

    /// Gives up this node's lease of `scene` at `epoch` (see [`Store::release_lease`]):
    /// false when it did not hold it.
    pub async fn release(&self, scene: &str, epoch: u64) -> Result<bool, String> {
        self.releases.ask(scene, epoch).await
    }

    /// The epoch and owner of the scene's lease, if it has one.
    pub async fn lease(&self, scene: &str) -> Result<Option<(u64, String)>, String> {
        self.leases.ask(scene, ()).await
    }

    /// Claims the lease of `scene` at `epoch` for this node: true when it is ours now,
    /// false when another node holds it at this epoch or a newer one.
    pub async fn claim(&self, scene: &str, epoch: u64) -> Result<bool, String> {
        self.claims.ask(scene, epoch).await
    }

    /// The scene's retained snapshots and log (see [`Store::load`]).
    pub async fn load(&self, scene: &str) -> Result<StoredScene, String> {
        self.loads.ask(scene, ()).await
    }

    /// The scene's content in the P1 product, if it has any (see [`Store::p1_content`]).
    pub async fn p1_content(&self, scene: &str) -> Result<Option<P1Content>, String> {
        self.p1.ask(scene, ()).await?
    }
}

/// Bytes of edits each connection reports for its user (`TROUPE_MAX_BYTES_PER_HOUR`),
/// many users per statement: a node holds thousands of connections, each reporting once a
/// minute while its user types, and one transaction per report would cost the store more
/// than the edits' own group commits do. Reports wait up to [`REPORT_PACE`] for others to
/// go with them; nobody waits for the answer (the connection checks it when it comes).
#[derive(Clone)]
pub struct UserBytes {
    reports: Batcher<(i64, u64), u64>,
}

impl UserBytes {
    /// Starts the batching task; it ends once every handle is dropped.
    pub fn spawn(store: Store, queue: usize) -> UserBytes {
        let run = |store: Store, batch: Vec<(String, (i64, u64))>| async move {
            store.add_user_bytes_many(&batch).await
        };
        UserBytes {
            reports: Batcher::spawn_with("quota reports", Gathering::REPORTS, queue, &store, run),
        }
    }

    /// Queues a report of `bytes` that `user` wrote in `hour` (hours since the Unix
    /// epoch), without waiting; the answer, the user's total for that hour over the whole
    /// cluster, comes on the receiver. None when the queue is full: keep the bytes for the
    /// next report. The report is made even if nobody keeps the receiver.
    pub fn submit(
        &self,
        user: &str,
        hour: i64,
        bytes: u64,
    ) -> Option<oneshot::Receiver<Result<u64, String>>> {
        self.reports.submit(user, (hour, bytes))
    }
}

fn scenes_of(batch: Vec<(String, ())>) -> Vec<String> {
    batch.into_iter().map(|(scene, ())| scene).collect()
}

/// One room's request about its scene.
struct Request<Q, A> {
    scene: String,
    query: Q,
    reply: oneshot::Sender<Result<A, String>>,
}

impl<Q, A> Request<Q, A> {
    /// The request, and where its answer will come.
    fn new(scene: &str, query: Q) -> (Self, oneshot::Receiver<Result<A, String>>) {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            scene: scene.to_string(),
            query,
            reply,
        };
        (request, answer)
    }
}

/// A queue into one batching task, answering `A` to each `(scene, Q)`.
struct Batcher<Q, A> {
    tx: mpsc::Sender<Request<Q, A>>,
}

impl<Q, A> Clone for Batcher<Q, A> {
    fn clone(&self) -> Self {
        Batcher { tx: self.tx.clone() }
    }
}

impl<Q: Send + 'static, A: Send + 'static> Batcher<Q, A> {
    /// `run` answers a batch from `store`, one answer per request in the order given.
    fn spawn<F, Fut>(what: &'static str, queue: usize, store: &Store, run: F) -> Self
    where
        F: Fn(Store, Vec<(String, Q)>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<A>, StoreError>> + Send + 'static,
    {
        Self::spawn_with(what, Gathering::READS_AND_CLAIMS, queue, store, run)
    }

    /// Like [`Self::spawn`], gathering as `gathering` says.
    fn spawn_with<F, Fut>(
        what: &'static str,
        gathering: Gathering,
        queue: usize,
        store: &Store,
        run: F,
    ) -> Self
    where
        F: Fn(Store, Vec<(String, Q)>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<A>, StoreError>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let store = store.clone();
        tokio::spawn(serve(what, gathering, rx, move |batch| run(store.clone(), batch)));
        Batcher { tx }
    }

    /// Queues a request without waiting; None when the queue is full or the task gone.
    fn submit(&self, scene: &str, query: Q) -> Option<oneshot::Receiver<Result<A, String>>> {
        let (request, answer) = Request::new(scene, query);
        self.tx.try_send(request).ok().map(|()| answer)
    }

    async fn ask(&self, scene: &str, query: Q) -> Result<A, String> {
        let (request, answer) = Request::new(scene, query);
        if self.tx.send(request).await.is_err() {
            return Err("the node is shutting down".into());
        }
        answer
            .await
            .unwrap_or_else(|_| Err("the node is shutting down".into()))
    }
}

async fn serve<Q, A, F, Fut>(
    what: &'static str,
    gathering: Gathering,
    mut rx: mpsc::Receiver<Request<Q, A>>,
    mut run: F,
) where
    F: FnMut(Vec<(String, Q)>) -> Fut,
    Fut: Future<Output = Result<Vec<A>, StoreError>>,
{
    let mut batch: Vec<Request<Q, A>> = Vec::with_capacity(MAX_BATCH);
    // A scene already in the batch waits for the next one (a statement may touch a lease
    // row only once).
    let mut deferred: Vec<Request<Q, A>> = Vec::new();
    loop {
        let mut scenes = HashSet::new();
        for request in std::mem::take(&mut deferred) {
            take_into(gathering, request, &mut batch, &mut scenes, &mut deferred);
        }
        if batch.is_empty() {
            match rx.recv().await {
                Some(request) => take_into(gathering, request, &mut batch, &mut scenes, &mut deferred),
                None => return,
            }
        }
        if !gathering.pace.is_zero() {
            tokio::time::sleep(gathering.pace).await;
        }
        while batch.len() < MAX_BATCH {
            let Ok(request) = rx.try_recv() else { break };
            take_into(gathering, request, &mut batch, &mut scenes, &mut deferred);
        }
        let (queries, replies): (Vec<(String, Q)>, Vec<_>) =
            batch.drain(..).map(|r| ((r.scene, r.query), r.reply)).unzip();
        let (count, started) = (queries.len(), Instant::now());
        let outcome = run(queries).await;
        tracing::debug!(count, ms = started.elapsed().as_millis() as u64, "{what} done");
        match outcome {
            Ok(answers) if answers.len() == replies.len() => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(answer));
                }
            }
            Ok(answers) => {
                let error = format!("{what}: {} answers to {count} requests", answers.len());
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
            Err(error) => {
                let error = error.to_string();
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

fn take_into<Q, A>(
    gathering: Gathering,
    request: Request<Q, A>,
    batch: &mut Vec<Request<Q, A>>,
    scenes: &mut HashSet<String>,
    deferred: &mut Vec<Request<Q, A>>,
) {
    // A room that stopped waiting (its load timed out) needs no answer.
    if gathering.skip_abandoned && request.reply.is_closed() {
        return;
    }
    if scenes.insert(request.scene.clone()) {
        batch.push(request);
    } else {
        deferred.push(request);
    }
}
