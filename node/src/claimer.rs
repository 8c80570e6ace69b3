//! The lease claimer: one task that claims the leases of every scene this node is about to
//! load, many in one statement.
//!
//! A node that takes over a failed node's scenes loads thousands at once; claiming each
//! lease in a transaction of its own costs the store a commit (and a disk flush) per scene,
//! which is most of its work during a failover. Rooms queue their claim here and wait for
//! the answer; whatever is queued when the previous statement returns goes out together.

use std::collections::HashSet;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::store::Store;

/// Most claims in one statement.
const MAX_CLAIMS: usize = 512;

/// One room's request: its scene at its placement epoch.
struct Claim {
    scene: String,
    epoch: u64,
    reply: oneshot::Sender<Result<bool, String>>,
}

/// Queue into the claimer task.
#[derive(Clone)]
pub struct LeaseClaimer {
    tx: mpsc::Sender<Claim>,
}

impl LeaseClaimer {
    /// Starts the claimer for `owner`. It ends once every handle is dropped.
    pub fn spawn(store: Store, owner: String, queue: usize) -> (LeaseClaimer, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        (LeaseClaimer { tx }, tokio::spawn(run(store, owner, rx)))
    }

    /// Claims the lease of `scene` at `epoch` for this node: true when it is ours now,
    /// false when another node holds it at this epoch or a newer one.
    pub async fn claim(&self, scene: &str, epoch: u64) -> Result<bool, String> {
        let (reply, answer) = oneshot::channel();
        let claim = Claim {
            scene: scene.to_string(),
            epoch,
            reply,
        };
        if self.tx.send(claim).await.is_err() {
            return Err("the node is shutting down".into());
        }
        answer
            .await
            .unwrap_or_else(|_| Err("the node is shutting down".into()))
    }
}

async fn run(store: Store, owner: String, mut rx: mpsc::Receiver<Claim>) {
    let mut batch: Vec<Claim> = Vec::with_capacity(MAX_CLAIMS);
    // A scene already in the batch waits for the next one (a statement may touch a lease
    // row only once).
    let mut deferred: Vec<Claim> = Vec::new();
    loop {
        let mut scenes = HashSet::new();
        for claim in std::mem::take(&mut deferred) {
            take_into(claim, &mut batch, &mut scenes, &mut deferred);
        }
        if batch.is_empty() {
            match rx.recv().await {
                Some(claim) => take_into(claim, &mut batch, &mut scenes, &mut deferred),
                None => return,
            }
        }
        while batch.len() < MAX_CLAIMS {
            let Ok(claim) = rx.try_recv() else { break };
            take_into(claim, &mut batch, &mut scenes, &mut deferred);
        }
        let claims: Vec<(String, u64)> = batch.iter().map(|c| (c.scene.clone(), c.epoch)).collect();
        let started = Instant::now();
        let outcome = store.claim_leases(&claims, &owner).await;
        tracing::debug!(
            claims = claims.len(),
            ms = started.elapsed().as_millis() as u64,
            "leases claimed"
        );
        match outcome {
            Ok(claimed) => {
                for (claim, ours) in batch.drain(..).zip(claimed) {
                    let _ = claim.reply.send(Ok(ours));
                }
            }
            Err(error) => {
                let error = error.to_string();
                for claim in batch.drain(..) {
                    let _ = claim.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

fn take_into(claim: Claim, batch: &mut Vec<Claim>, scenes: &mut HashSet<String>, deferred: &mut Vec<Claim>) {
    // A room that stopped waiting (its load timed out) needs no claim.
    if claim.reply.is_closed() {
        return;
    }
    if scenes.insert(claim.scene.clone()) {
        batch.push(claim);
    } else {
        deferred.push(claim);
    }
}
