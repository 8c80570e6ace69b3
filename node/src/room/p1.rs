//! Dual-write: while a scene of the P1 product is live, its owner writes the document's
//! blocks back into P1's `content_blocks`, so that everything else the adopting team runs
//! (search, exports, the mobile app) reads a recent projection.
//!
//! A write happens `TROUPE_P1_WRITE_DELAY` after the last change, or `TROUPE_P1_MAX_LAG`
//! after the first unwritten one while people keep typing, and once more when the room
//! unloads, hands off or shuts down. Each write replaces the scene's blocks and bumps its
//! `content_version` in one transaction fenced by the scene's lease; it runs beside the
//! room, never blocking it.

use std::time::Instant;

use tokio::sync::oneshot;

use super::Room;
use crate::content::blocks;

/// What the room knows of its P1 projection.
#[derive(Default)]
pub(super) struct Projection {
    /// P1 has this scene: its changes are written back.
    pub(super) tracked: bool,
    /// The first change not written yet, and the last change.
    unwritten: Option<(Instant, Instant)>,
    /// The write in flight: its outcome, and when its first change was made.
    in_flight: Option<(oneshot::Receiver<bool>, Instant)>,
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

    /// A write is due or in flight: housekeeping must come back soon.
    pub(super) fn p1_waiting(&self) -> bool {
        self.p1.unwritten.is_some() || self.p1.in_flight.is_some()
    }

    /// Whether a write should start now.
    fn p1_due(&self) -> bool {
        let limits = &self.ctx.limits;
        match self.p1.unwritten {
            Some((first, last)) => {
                last.elapsed() >= limits.p1_write_delay || first.elapsed() >= limits.p1_max_lag
            }
            None => false,
        }
    }

    /// Housekeeping: collects a finished write, starts a due one.
    pub(super) fn p1_housekeeping(&mut self) {
        if let Some((outcome, first)) = &mut self.p1.in_flight {
            match outcome.try_recv() {
                Ok(written) => {
                    if written {
                        self.ctx
                            .metrics
                            .p1_lag_seconds
                            .observe(first.elapsed().as_secs_f64());
                    }
                    self.p1.in_flight = None;
                }
                Err(oneshot::error::TryRecvError::Empty) => return,
                Err(oneshot::error::TryRecvError::Closed) => self.p1.in_flight = None,
            }
        }
        if self.fenced || !self.p1_due() {
            return;
        }
        let Some((first, _)) = self.p1.unwritten.take() else {
            return;
        };
        let Some(blocks) = self.p1_blocks() else { return };
        let (done, outcome) = oneshot::channel();
        let (store, scene, owner, epoch) = (
            self.ctx.store.clone(),
            self.scene.clone(),
            self.ctx.node_id.clone(),
            self.epoch,
        );
        let metrics = self.ctx.metrics.clone();
        tokio::spawn(async move {
            let written = match store.write_p1_blocks(&scene, &owner, epoch, &blocks).await {
                Ok(written) => written,
                Err(error) => {
                    tracing::warn!(%scene, %error, "writing the scene back to P1 failed; will retry");
                    metrics.error("p1_write_failed");
                    false
                }
            };
            let _ = done.send(written);
        });
        self.p1.in_flight = Some((outcome, first));
    }

    /// Unloading: waits for a write in flight, then writes what is left.
    pub(super) async fn p1_final_write(&mut self) {
        if let Some((outcome, _)) = self.p1.in_flight.take() {
            let _ = outcome.await;
        }
        if self.fenced || self.p1.unwritten.take().is_none() {
            return;
        }
        let Some(blocks) = self.p1_blocks() else { return };
        let write = Box::pin(self.ctx.store.write_p1_blocks(
            &self.scene,
            &self.ctx.node_id,
            self.epoch,
            &blocks,
        ));
        if let Err(error) = write.await {
            tracing::warn!(scene = %self.scene, %error, "the last write back to P1 failed");
            self.ctx.metrics.error("p1_write_failed");
        }
    }

    /// The document's blocks, or `None` (logged) when it holds something that is not one.
    fn p1_blocks(&self) -> Option<Vec<blocks::Block>> {
        use yrs::Transact;
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
