//! Durable acks: a client that opted in hears, for each of its updates, once the batch
//! holding it is committed, in the order it sent them (held updates included).
//!
//! Apart because the bookkeeping (what each peer is owed, and what must commit first) is
//! its own small state machine, fed by the document and released by the log.

use std::collections::VecDeque;

use super::Room;
use troupe_proto::message;

/// What a peer's update means for its acks.
pub(super) enum AckMark {
    /// The update with this count was applied now.
    Applied(u64),
    /// The update with this count waits, out of order.
    Held(u64),
    /// The held update with this count was applied now.
    Released(u64),
}

/// One peer's acks.
pub(super) struct PeerAcks {
    /// The peer asked for acks.
    wanted: bool,
    /// Update-bearing messages received from this peer.
    pub(super) updates_received: u64,
    /// `(seq that must be committed, updates_received at the time)`, oldest first; the
    /// seq is unknown (None) while that update is held out of order.
    marks: VecDeque<(Option<u64>, u64)>,
}

impl PeerAcks {
    pub(super) fn new(wanted: bool) -> Self {
        Self {
            wanted,
            updates_received: 0,
            marks: VecDeque::new(),
        }
    }
}

impl Room {
    /// Records what must be committed before a peer's update can be acknowledged.
    pub(super) fn mark_for_ack(&mut self, conn_id: u64, mark: AckMark) {
        // Everything applied so far is in the pending batch or an earlier one.
        let needed = if self.log.pending.is_empty() {
            self.log.last_seq
        } else {
            self.log.last_seq + 1
        };
        let committed = self.log.committed_seq;
        let Some(peer) = self.peers.get_mut(&conn_id) else {
            return;
        };
        if !peer.acks.wanted {
            return;
        }
        match mark {
            AckMark::Applied(count) if needed <= committed && peer.acks.marks.is_empty() => {
                self.send(conn_id, message::encode_ack(count));
            }
            AckMark::Applied(count) => peer.acks.marks.push_back((Some(needed), count)),
            AckMark::Held(count) => peer.acks.marks.push_back((None, count)),
            AckMark::Released(count) => {
                if let Some(slot) = peer.acks.marks.iter_mut().find(|mark| **mark == (None, count)) {
                    slot.0 = Some(needed);
                }
            }
        }
    }

    pub(super) fn release_acks(&mut self) {
        let committed = self.log.committed_seq;
        let mut acks = Vec::new();
        for (id, peer) in self.peers.iter_mut() {
            let mut count = None;
            while let Some(&(needed, n)) = peer.acks.marks.front() {
                if needed.is_none_or(|seq| seq > committed) {
                    break;
                }
                count = Some(n);
                peer.acks.marks.pop_front();
            }
            if let Some(n) = count {
                acks.push((*id, n));
            }
        }
        for (id, n) in acks {
            self.send(id, message::encode_ack(n));
        }
    }
}
