//! Background tasks that stop together. Every long-lived task a process starts is spawned
//! through [`Tasks`], watches its [`CancellationToken`], and is tracked, so shutdown is
//! one sequence everywhere: cancel, then wait for the tasks with a deadline.

use std::future::Future;
use std::time::Duration;

pub use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A group of tasks sharing one cancellation. Cheap to clone: clones share the group.
#[derive(Clone, Default)]
pub struct Tasks {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Tasks {
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// The token every task of the group watches: cancelled when the group stops.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Resolves once the group is asked to stop.
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// Runs `task` in the group. It should end soon after [`cancelled`](Tasks::cancelled)
    /// resolves (or watch [`token`](Tasks::token)).
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Runs `task` until it ends or the group is cancelled, whichever is first: for loops
    /// that have nothing to finish when asked to stop.
    pub fn spawn_until_cancelled<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let token = self.token.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = task => {}
                () = token.cancelled() => {}
            }
        });
    }

    /// Tasks still running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Cancels the group and waits up to `deadline` for its tasks to end. Returns how many
    /// were still running at the deadline (0: all ended).
    pub async fn shutdown(&self, deadline: Duration) -> usize {
        self.token.cancel();
        self.wait(deadline).await
    }

    /// Waits up to `deadline` for every task to end, without cancelling. Returns how many
    /// were still running at the deadline.
    pub async fn wait(&self, deadline: Duration) -> usize {
        self.tracker.close();
        let _ = tokio::time::timeout(deadline, self.tracker.wait()).await;
        self.tracker.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_cancels_and_waits() {
        let tasks = Tasks::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let group = tasks.clone();
        tasks.spawn(async move {
            group.cancelled().await;
            // Finishing work after the cancel still counts.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = tx.send(());
        });
        tasks.spawn_until_cancelled(std::future::pending());
        assert_eq!(tasks.len(), 2);
        assert_eq!(tasks.shutdown(Duration::from_secs(5)).await, 0);
        assert!(rx.await.is_ok());
    }

    #[tokio::test]
    async fn a_task_that_ignores_the_cancel_is_counted_at_the_deadline() {
        let tasks = Tasks::new();
        tasks.spawn(tokio::time::sleep(Duration::from_secs(30)));
        assert_eq!(tasks.shutdown(Duration::from_millis(50)).await, 1);
    }
}
