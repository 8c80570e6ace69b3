//! The room task's loop: one `select!` over the inbox, the writer's reports, and behind a
//! gate housekeeping, placement and shutdown; and the dispatch of each command to the
//! concern that handles it.
//!
//! Apart so that the loop reads at a glance: what wakes a room, and what it does then.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use troupe_membership::placement::PlacementView;

use super::inbox::Inbox;
use crate::wake_gate::WakeGate;

use troupe_proto::CloseCode;

use super::{IncomingFrame, Room, RoomCmd};
use crate::protocol::{MessageKind, ValidFrame};
use troupe_proto::presence::PRESENCE_REFRESH;

/// How often a room with work waiting retries a deferred flush and publishes presence.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(250);

/// The longest a quiet room sleeps between housekeeping rounds: a safety net, since what
/// falls due sooner (compaction by age, unloading, presence refresh, a P1 check) sets the
/// wake itself. Ten thousand quiet rooms wake 330 times a second at this, not 5,000.
const QUIET_HOUSEKEEPING: Duration = Duration::from_secs(30);

/// What woke among a room's rarely ready futures.
enum Cold {
    Shutdown,
    Placement,
    Housekeeping,
}

/// Ready once placement changed; never, when the cluster side is gone.
async fn changed(mut placement: watch::Receiver<Arc<PlacementView>>) {
    if placement.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl Room {
    pub(super) async fn serve(&mut self, inbox: &mut Inbox<RoomCmd>) {
        let mut told_to_stop = false;
        self.placement.mark_unchanged();
        // Placement may have moved on while the scene loaded.
        self.on_placement();
        // Housekeeping runs every HOUSEKEEPING_INTERVAL while there is work waiting, and
        // otherwise only when something falls due: a thousand quiet rooms must not wake
        // four thousand times a second.
        let housekeeping = tokio::time::sleep(HOUSEKEEPING_INTERVAL);
        tokio::pin!(housekeeping);
        // The rarely ready live across the turns of the loop, behind one gate (see
        // `wake_gate`): made anew on every turn, the waits for placement and shutdown
        // joined and left the waiter lists every room shares, twice for every edit.
        let mut placement_changed = Box::pin(changed(self.placement.clone()));
        let shutdown = self.ctx.shutdown.clone().cancelled_owned();
        tokio::pin!(shutdown);
        let mut gate = WakeGate::default();
        loop {
            tokio::select! {
                cmd = inbox.recv() => match cmd {
                    Some(cmd) => self.handle(cmd),
                    None => break,
                },
                status = std::future::poll_fn(|cx| {
                    self.log.progress.poll_report(cx, &mut self.log.reports_seen)
                }) => self.on_commit(status),
                cold = std::future::poll_fn(|cx| gate.poll(cx, |cx| {
                    if !told_to_stop && shutdown.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Cold::Shutdown);
                    }
                    if placement_changed.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Cold::Placement);
                    }
                    housekeeping.as_mut().poll(cx).map(|()| Cold::Housekeeping)
                })) => match cold {
                    Cold::Shutdown => {
                        told_to_stop = true;
                        self.stop(CloseCode::GoingAway, "server shutting down");
                    }
                    Cold::Placement => {
                        self.on_placement();
                        placement_changed.set(changed(self.placement.clone()));
                    }
                    Cold::Housekeeping => {
                        self.flush();
                        self.maybe_compact(false);
                        self.p1_housekeeping();
                        self.presence.publish(&self.ctx, &self.scene);
                        let next = tokio::time::Instant::now() + self.next_housekeeping();
                        housekeeping.as_mut().reset(next);
                    }
                },
            }
            if (self.stopping.is_some() || self.is_idle_long_enough()) && self.finish(inbox).await {
                break;
            }
            // What this turn did may have brought something due sooner (work waiting, the
            // last client gone): housekeeping never sleeps past the first thing due.
            let due = tokio::time::Instant::now() + self.next_housekeeping();
            if housekeeping.deadline() > due {
                housekeeping.as_mut().reset(due);
            }
        }
    }

    /// Work the next housekeeping round must do: a batch to hand to the writer, presence
    /// to publish, or a stop to finish.
    fn has_waiting_work(&self) -> bool {
        !self.log.pending.is_empty()
            || !self.presence.dirty.is_empty()
            || self.stopping.is_some()
            || self.p1_waiting()
    }

    /// How long housekeeping may sleep: until the first thing falls due (compaction by
    /// age, unloading when idle, refreshing presence), at most [`QUIET_HOUSEKEEPING`].
    fn next_housekeeping(&self) -> Duration {
        if self.has_waiting_work() {
            return HOUSEKEEPING_INTERVAL;
        }
        let limits = &self.ctx.limits;
        let until = |since: Instant, after: Duration| after.saturating_sub(since.elapsed());
        let mut next = QUIET_HOUSEKEEPING;
        if let Some(since) = self.uncompacted.since {
            next = next.min(until(since, limits.compact_age));
        }
        if let Some(since) = self.idle_since {
            next = next.min(until(since, limits.room_idle));
        }
        if let Some(check) = self.p1_next_check() {
            next = next.min(check);
        }
        if self.ctx.presence.is_some() && !self.presence.is_empty() {
            next = next.min(until(self.presence.published, PRESENCE_REFRESH));
        }
        next.max(HOUSEKEEPING_INTERVAL)
    }

    fn is_idle_long_enough(&self) -> bool {
        self.idle_since
            .is_some_and(|since| since.elapsed() >= self.ctx.limits.room_idle)
    }

    fn handle(&mut self, cmd: RoomCmd) {
        match cmd {
            RoomCmd::Join(joiner) => self.join(*joiner),
            RoomCmd::Frame(incoming) => {
                let IncomingFrame {
                    conn_id,
                    received,
                    frame,
                    _permit,
                } = *incoming;
                self.on_frame(conn_id, &frame);
                let ms = received.elapsed().as_secs_f64() * 1000.0;
                self.ctx.metrics.latency_ms.observe(ms);
                self.ctx.metrics.triggers.latency_ms(ms);
            }
            RoomCmd::Leave { conn_id } => self.leave(conn_id),
            RoomCmd::LeaseLost { checked_at } => self.on_lease_lost(checked_at),
            RoomCmd::Merge(request) => self.p1_merge_request(*request),
            RoomCmd::SaveVersion(save) => self.save_version(*save),
            RoomCmd::Read { reply } => {
                let blocks = {
                    use yrs::Transact;
                    crate::content::blocks::read(&self.document.doc.transact()).map_err(|e| e.to_string())
                };
                let _ = reply.send(blocks);
            }
        }
    }

    fn on_frame(&mut self, conn_id: u64, frame: &ValidFrame) {
        // While handing off nothing new is taken: clients resend it to the new owner in
        // their sync handshake.
        if !self.peers.contains_key(&conn_id) || self.handoff.is_some() {
            return;
        }
        match frame.kind {
            MessageKind::SyncStep1 => self.on_sync_step1(conn_id, frame.payload()),
            MessageKind::SyncStep2 | MessageKind::Update => self.on_update(conn_id, frame),
            MessageKind::Awareness => self.on_awareness(conn_id, frame.payload()),
            MessageKind::QueryAwareness => {
                if !self.presence.is_empty() {
                    self.send(conn_id, self.presence.encode_all());
                }
            }
            MessageKind::Auth => {}
        }
    }
}
