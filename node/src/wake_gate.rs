//! Futures that are rarely ready, polled again only after one of them woke.
//!
//! A connection's loop turns on every message it reads or writes; its other futures (the
//! token's expiry, a revocation, a flag change, the next ping) are ready once in a long
//! while. `tokio::select!` polls every branch on every turn, and those polls (a timer's
//! state, a watch channel's waiter list) cost a tenth of the node's CPU per delivered
//! update. Behind a gate they are polled with the gate's own waker, and only again once it
//! has fired.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// The gate in front of a group of futures; one per task that polls it.
pub struct WakeGate {
    shared: Arc<Shared>,
    /// The gate's waker, made once: the futures behind it keep clones of it.
    waker: Waker,
    /// The wake count when the group last returned `Pending`.
    seen: u64,
}

struct Shared {
    /// How often a future behind the gate woke it (from 1, so the first poll goes through).
    wakes: AtomicU64,
    /// The task polling the gate.
    task: AtomicWaker,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::AcqRel);
        self.task.wake();
    }
}

impl Default for WakeGate {
    fn default() -> Self {
        let shared = Arc::new(Shared {
            wakes: AtomicU64::new(1),
            task: AtomicWaker::new(),
        });
        WakeGate {
            waker: Waker::from(shared.clone()),
            shared,
            seen: 0,
        }
    }
}

impl WakeGate {
    /// Runs `poll` (which polls the group) with the gate's waker if one of the group woke
    /// since it last returned `Pending`, or on the first call; `Pending` otherwise. A
    /// `Ready` leaves the gate open: the group is polled again on the next call.
    pub fn poll<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        // Registered before the count is read: a wake in between still reaches the task.
        self.shared.task.register(cx.waker());
        let wakes = self.shared.wakes.load(Ordering::Acquire);
        if wakes == self.seen {
            return Poll::Pending;
        }
        let result = poll(&mut Context::from_waker(&self.waker));
        if result.is_pending() {
            // A wake during `poll` counted past `wakes`: the next call polls again.
            self.seen = wakes;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_group_is_polled_first_then_only_after_it_woke() {
        let (tx, mut rx) = tokio::sync::watch::channel(0);
        let mut gate = WakeGate::default();
        let mut polls = 0;
        let mut changed = Box::pin(async move {
            rx.changed().await.expect("sender alive");
            *rx.borrow()
        });
        // The first turn polls the group; the next ones do not, nothing having woken it.
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        for _ in 0..3 {
            let turn = gate.poll(&mut cx, |cx| {
                polls += 1;
                changed.as_mut().poll(cx)
            });
            assert!(turn.is_pending());
        }
        assert_eq!(polls, 1);
        // A change wakes the task through the gate; the group is polled and ready.
        let value = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                tx.send(7).expect("receiver alive");
                tx
            });
            std::future::poll_fn(|cx| {
                gate.poll(cx, |cx| {
                    polls += 1;
                    changed.as_mut().poll(cx)
                })
            })
            .await
        })
        .await
        .expect("woken through the gate");
        assert_eq!(value, 7);
        assert_eq!(polls, 2, "polled once more, after the wake");
    }
}
