//! The bounded queue from a room to one connection's writer task.
//!
//! Apart from the room because it is the one piece both sides hold: the room pushes frames
//! (and at most one close) without ever waiting, the connection drains them. It is bounded
//! in messages and bytes, so a client that stops reading costs a bounded amount of memory
//! before the room drops it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use troupe_proto::CloseCode;

/// What the room sends to a connection's writer.
#[derive(Debug)]
pub enum Outbound {
    Frame(Bytes),
    Close(CloseCode, String),
}

/// The room's side of the queue to one connection, bounded in messages and in bytes, so
/// a client that stops reading holds a bounded amount of memory before it is dropped.
/// A plain deque behind a lock (never held across an await): it takes memory only for
/// what is queued, where a channel would keep a block of slots per connection.
pub struct ClientQueue {
    shared: Arc<QueueShared>,
    max_messages: usize,
    max_bytes: usize,
}

/// The connection's side of a [`ClientQueue`].
pub struct ClientInbox {
    shared: Arc<QueueShared>,
}

struct QueueShared {
    lane: std::sync::Mutex<Lane>,
    /// The connection's task, woken on every push and when the last sender goes. One
    /// receiver, so one waker: registering it again on every poll costs next to nothing
    /// (a `Notify` would queue and unqueue a waiter each time the connection's loop turns).
    ready: AtomicWaker,
}

#[derive(Default)]
struct Lane {
    items: VecDeque<Outbound>,
    /// Bytes of the queued frames.
    bytes: usize,
    /// Live [`ClientQueue`] handles; the inbox ends when none is left.
    senders: usize,
    /// The connection stopped reading for good.
    receiver_gone: bool,
    /// A close is queued: nothing after it matters.
    closing: bool,
}

impl ClientQueue {
    pub fn new(max_messages: usize, max_bytes: usize) -> (Self, ClientInbox) {
        let shared = Arc::new(QueueShared {
            lane: std::sync::Mutex::new(Lane {
                senders: 1,
                ..Lane::default()
            }),
            ready: AtomicWaker::new(),
        });
        let inbox = ClientInbox {
            shared: shared.clone(),
        };
        (
            Self {
                shared,
                max_messages: max_messages.max(1),
                max_bytes,
            },
            inbox,
        )
    }

    /// Queues a frame; false when the client is too far behind or gone.
    pub(crate) fn push(&self, frame: Bytes) -> bool {
        {
            let mut lane = self.shared.lock();
            let full = lane.items.len() >= self.max_messages || lane.bytes + frame.len() > self.max_bytes;
            if full || lane.receiver_gone {
                return false;
            }
            lane.bytes += frame.len();
            lane.items.push_back(Outbound::Frame(frame));
        }
        self.shared.ready.wake();
        true
    }

    /// Queues a close; it goes out even when the queue is full (it is the last message).
    /// Only the first close counts, so the queue stays bounded however often it is asked.
    pub(crate) fn close(&self, code: CloseCode, reason: &str) {
        {
            let mut lane = self.shared.lock();
            if lane.closing || lane.receiver_gone {
                return;
            }
            lane.closing = true;
            lane.items.push_back(Outbound::Close(code, reason.to_string()));
        }
        self.shared.ready.wake();
    }
}

impl Clone for ClientQueue {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Self {
            shared: self.shared.clone(),
            max_messages: self.max_messages,
            max_bytes: self.max_bytes,
        }
    }
}

impl Drop for ClientQueue {
    fn drop(&mut self) {
        let last = {
            let mut lane = self.shared.lock();
            lane.senders = lane.senders.saturating_sub(1);
            lane.senders == 0
        };
        if last {
            self.shared.ready.wake();
        }
    }
}

impl QueueShared {
    /// The lane, even if a thread panicked while holding it (its data stays consistent:
    /// every update is a single push, pop or counter change).
    fn lock(&self) -> std::sync::MutexGuard<'_, Lane> {
        self.lane.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl ClientInbox {
    /// The next message; `None` once every sender is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<Outbound> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Outbound>> {
        // Registered before looking, so that a push in between is not missed.
        self.shared.ready.register(cx.waker());
        let mut lane = self.shared.lock();
        match lane.pop() {
            Some(out) => Poll::Ready(Some(out)),
            None if lane.senders == 0 => Poll::Ready(None),
            None => Poll::Pending,
        }
    }

    pub fn try_recv(&mut self) -> Option<Outbound> {
        self.shared.lock().pop()
    }
}

impl Drop for ClientInbox {
    fn drop(&mut self) {
        let mut lane = self.shared.lock();
        lane.receiver_gone = true;
        lane.items.clear();
        lane.bytes = 0;
    }
}

impl Lane {
    fn pop(&mut self) -> Option<Outbound> {
        let out = self.items.pop_front()?;
        if let Outbound::Frame(frame) = &out {
            self.bytes -= frame.len();
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn frame(n: u8) -> Bytes {
        Bytes::from(vec![n; 10])
    }

    #[tokio::test]
    async fn a_waiting_connection_is_woken_by_a_push_and_ends_after_the_last_sender() {
        let (queue, mut inbox) = ClientQueue::new(8, 1024);
        let waiting = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(out) = inbox.recv().await {
                got.push(out);
            }
            got
        });
        // The receiver is parked before anything is pushed.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(queue.push(frame(1)));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let second = queue.clone();
        assert!(second.push(frame(2)));
        drop(queue);
        second.close(CloseCode::TryAgain, "bye");
        drop(second);
        let got = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the inbox ends once every sender is gone")
            .expect("task");
        assert!(
            matches!(&got[..], [Outbound::Frame(a), Outbound::Frame(b), Outbound::Close(CloseCode::TryAgain, _)] if a == &frame(1) && b == &frame(2))
        );
    }

    #[test]
    fn the_queue_is_bounded_in_messages_and_bytes() {
        let (queue, mut inbox) = ClientQueue::new(2, 25);
        assert!(queue.push(frame(1)));
        assert!(queue.push(frame(2)));
        assert!(!queue.push(frame(3)), "a third message");
        assert!(inbox.try_recv().is_some());
        assert!(!queue.push(Bytes::from(vec![0; 16])), "over the bytes");
        assert!(queue.push(frame(4)));
        drop(inbox);
        assert!(!queue.push(frame(5)), "nobody reads any more");
    }
}
