//! A room's inbox: the bounded queue that connections, the scene API and the node send a
//! room's commands through; the room's task alone receives them.
//!
//! Why not `tokio::sync::mpsc`: its channel pads its parts to cache lines and allocates its
//! slots 32 at a time, about 1 KiB for every room, busy or idle, on a node that holds
//! thousands of rooms. This one is a deque behind a lock (never held across an await), a
//! waker for the room and a semaphore for the bound: under 200 bytes, plus the commands
//! queued, and a burst's memory is given back once the room has caught up.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::sync::Semaphore;

/// Capacity a drained queue keeps; a larger one (after a burst) is given back.
const KEEP: usize = 16;

/// A new inbox holding at most `capacity` commands: senders wait for a place beyond that.
pub fn channel<T>(capacity: usize) -> (Sender<T>, Inbox<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            senders: 1,
        }),
        places: Semaphore::new(capacity.max(1)),
        receiver: AtomicWaker::new(),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Inbox { shared },
    )
}

/// Sends to the room; cloned by everyone who talks to it.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// The room's end.
pub struct Inbox<T> {
    shared: Arc<Shared<T>>,
}

/// The room takes no more commands (it is unloading or gone); the command is handed back.
#[derive(Debug)]
pub struct Closed<T>(pub T);

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Free places: a sender takes one before it queues, the room gives it back when it
    /// takes the command. Closed (under the state's lock) once the room takes no more.
    places: Semaphore,
    /// The room's task, woken when a command arrives or the last sender goes.
    receiver: AtomicWaker,
}

struct State<T> {
    queue: VecDeque<T>,
    senders: usize,
}

impl<T> Shared<T> {
    /// The state, even if a thread panicked while holding it: every change is a single
    /// push, pop or flag, so it stays consistent.
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<T> Sender<T> {
    /// Queues `command`, waiting for a place while the inbox is full.
    pub async fn send(&self, command: T) -> Result<(), Closed<T>> {
        match self.shared.places.acquire().await {
            Ok(place) => place.forget(),
            Err(_) => return Err(Closed(command)),
        }
        self.queue(command)
    }

    /// Queues `command` if there is a place now; hands it back otherwise.
    pub fn try_send(&self, command: T) -> Result<(), T> {
        match self.shared.places.try_acquire() {
            Ok(place) => place.forget(),
            Err(_) => return Err(command),
        }
        self.queue(command).map_err(|Closed(command)| command)
    }

    /// Whether the room has stopped taking commands.
    pub fn is_closed(&self) -> bool {
        self.shared.places.is_closed()
    }

    fn queue(&self, command: T) -> Result<(), Closed<T>> {
        {
            let mut state = self.shared.lock();
            // Checked under the lock `close` takes: nothing is queued after the room drained.
            if self.shared.places.is_closed() {
                return Err(Closed(command));
            }
            state.queue.push_back(command);
        }
        self.shared.receiver.wake();
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let last = {
            let mut state = self.shared.lock();
            state.senders -= 1;
            state.senders == 0
        };
        if last {
            self.shared.receiver.wake();
        }
    }
}

impl<T> Inbox<T> {
    /// The next command; `None` once the inbox is closed, or every sender gone, and empty.
    pub async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        // Each command takes from the task's budget, as with tokio's channels: on a
        // runtime with several threads, senders that never stop cannot keep the room's
        // thread from its other tasks.
        let budget = ready!(tokio::task::coop::poll_proceed(cx));
        // Registered before looking, so that a command queued in between is not missed.
        self.shared.receiver.register(cx.waker());
        if let Some(command) = self.try_recv() {
            budget.made_progress();
            return Poll::Ready(Some(command));
        }
        let state = self.shared.lock();
        if self.shared.places.is_closed() || state.senders == 0 {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }

    /// The next command if one is queued (also after [`Inbox::close`]).
    pub fn try_recv(&mut self) -> Option<T> {
        let command = {
            let mut state = self.shared.lock();
            let command = state.queue.pop_front()?;
            if state.queue.is_empty() && state.queue.capacity() > KEEP {
                state.queue = VecDeque::new();
            }
            command
        };
        self.shared.places.add_permits(1);
        Some(command)
    }

    /// Takes no more commands: senders get theirs back, waiting ones too. What is queued
    /// can still be taken with [`Inbox::try_recv`].
    pub fn close(&mut self) {
        let _state = self.shared.lock();
        self.shared.places.close();
    }
}

impl<T> Drop for Inbox<T> {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn commands_arrive_in_order_and_a_full_inbox_makes_senders_wait() {
        let (tx, mut inbox) = channel(2);
        tx.send(1).await.expect("open");
        assert!(tx.try_send(2).is_ok());
        assert_eq!(tx.try_send(3), Err(3), "full");
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(3).await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "waits for a place");
        assert_eq!(inbox.recv().await, Some(1));
        assert!(waiting.await.expect("task"), "a place was given back");
        assert_eq!(inbox.recv().await, Some(2));
        assert_eq!(inbox.recv().await, Some(3));
        drop(tx);
        assert_eq!(inbox.recv().await, None, "every sender gone");
    }

    #[tokio::test]
    async fn a_closed_inbox_hands_commands_back_and_still_gives_what_was_queued() {
        let (tx, mut inbox) = channel(1);
        tx.send("queued").await.expect("open");
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send("waiting").await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        inbox.close();
        assert!(tx.is_closed());
        assert!(matches!(waiting.await.expect("task"), Err(Closed("waiting"))));
        assert!(matches!(tx.send("late").await, Err(Closed("late"))));
        assert_eq!(tx.try_send("late"), Err("late"));
        assert_eq!(inbox.try_recv(), Some("queued"));
        assert_eq!(inbox.try_recv(), None);
        assert_eq!(inbox.recv().await, None);
    }

    #[tokio::test]
    async fn the_room_is_woken_by_a_command() {
        let (tx, mut inbox) = channel(8);
        let room = tokio::spawn(async move { inbox.recv().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.send(7).await.expect("open");
        let got = tokio::time::timeout(Duration::from_secs(5), room).await;
        assert_eq!(got.expect("woken").expect("task"), Some(7));
    }

    #[tokio::test]
    async fn the_room_yields_to_other_tasks_under_a_flood_of_commands() {
        let (tx, mut inbox) = channel(4096);
        for i in 0..4096 {
            tx.try_send(i).expect("room");
        }
        let other = tokio::spawn(async {});
        // Taking every command without a pause would starve `other` on this one thread;
        // the budget makes the receiver yield, so `other` runs before the flood is drained.
        let mut taken = 0;
        while !other.is_finished() {
            inbox.recv().await.expect("queued");
            taken += 1;
            assert!(taken < 4096, "never yielded");
        }
    }

    #[test]
    fn a_burst_gives_its_memory_back_once_drained() {
        let (tx, mut inbox) = channel(1024);
        for i in 0..500 {
            tx.try_send(i).expect("room");
        }
        while inbox.try_recv().is_some() {}
        assert!(inbox.shared.lock().queue.capacity() <= KEEP);
        // And every place is free again.
        for i in 0..1024 {
            tx.try_send(i).expect("room");
        }
        assert_eq!(tx.try_send(0), Err(0));
    }
}
