//! The scene's document: the yrs `Doc`, its approximate size, and the updates that arrived
//! before what they follow. Applying an edit, answering a sync request, holding and
//! releasing out-of-order updates all happen here.
//!
//! Apart because this is where clients' bytes meet yrs: an update that panics yrs is
//! caught here, and a document that panicked is never trusted (or snapshotted) again.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::Bytes;
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

use troupe_proto::CloseCode;

use super::acks::AckMark;
use super::Room;
use crate::protocol::ValidFrame;
use crate::update_check::{self, CheckLimits, Placement};
use troupe_proto::message;
use troupe_proto::token::Role;

/// Most out-of-order updates a room holds, and their bytes, before it asks the sender to
/// resync instead.
const MAX_HELD_UPDATES: usize = 256;
const MAX_HELD_BYTES: usize = 4 << 20;

/// Most out-of-order updates one connection may have held at once.
const MAX_HELD_PER_PEER: usize = 64;

/// An update waiting for what it follows.
pub(super) struct Held {
    conn_id: u64,
    /// Its number among the sender's update-bearing messages (for the ack).
    count: u64,
    update: Vec<u8>,
}

/// The scene's document and what belongs to it alone.
pub(super) struct Document {
    pub(super) doc: Doc,
    /// Approximate encoded size of the document: its size at load plus every change since.
    pub(super) bytes: usize,
    /// Updates that arrived before what they follow, oldest first.
    pub(super) held: VecDeque<Held>,
    pub(super) held_bytes: usize,
    /// yrs panicked inside this document: it must never be snapshotted.
    pub(super) poisoned: bool,
    /// The answer to a client that has nothing yet (an empty state vector), kept for a large
    /// document until it changes: a crowd joining at once then shares one encoding (and its
    /// bytes in every outbox) instead of each costing a copy of the whole scene.
    full_state: Option<Bytes>,
}

/// Documents at least this large keep their answer to new clients (see `full_state`);
/// smaller ones encode it per join, which costs less than keeping a second copy.
const SHARE_FULL_STATE_FROM: usize = 64 * 1024;

impl Document {
    pub(super) fn new(doc: Doc, bytes: usize) -> Self {
        Self {
            doc,
            bytes,
            held: VecDeque::new(),
            held_bytes: 0,
            poisoned: false,
            full_state: None,
        }
    }

    /// A transaction that may change the document: every change goes through here, so the
    /// shared answer to new clients is forgotten whenever the document may have moved on.
    pub(super) fn write(&mut self) -> yrs::TransactionMut<'_> {
        self.full_state = None;
        self.doc.transact_mut()
    }

    /// Drops the updates held for `conn_id`.
    pub(super) fn forget_held_from(&mut self, conn_id: u64) {
        let before = self.held.len();
        self.held.retain(|h| h.conn_id != conn_id);
        if self.held.len() != before {
            self.held_bytes = self.held.iter().map(|h| h.update.len()).sum();
        }
    }
}

impl Room {
    pub(super) fn on_sync_step1(&mut self, conn_id: u64, state_vector: &[u8]) {
        let Ok(sv) = StateVector::decode_v1(state_vector) else {
            self.ctx.metrics.error("invalid_state_vector");
            self.kick(conn_id, CloseCode::BadMessage, "invalid state vector");
            return;
        };
        if !sv.is_empty() {
            let diff = self.document.doc.transact().encode_diff_v1(&sv);
            self.send(conn_id, message::encode_sync_step2(&diff));
            return;
        }
        let frame = match &self.document.full_state {
            Some(frame) => frame.clone(),
            None => {
                let state = self.document.doc.transact().encode_diff_v1(&sv);
                let frame = Bytes::from(message::encode_sync_step2(&state));
                if state.len() >= SHARE_FULL_STATE_FROM {
                    self.document.full_state = Some(frame.clone());
                }
                frame
            }
        };
        self.send(conn_id, frame);
    }

    /// An update from a client. One that would leave a hole in some client's clock sequence
    /// of the document waits until the missing part arrives (yrs mishandles the holes it
    /// would otherwise stash, see `update_check`), e.g. an edit a reconnecting client sent
    /// before its sync step 2.
    pub(super) fn on_update(&mut self, conn_id: u64, frame: &ValidFrame) {
        let update = frame.payload();
        let Some(peer) = self.peers.get_mut(&conn_id) else {
            return;
        };
        peer.acks.updates_received += 1;
        let count = peer.acks.updates_received;
        if peer.role == Role::View {
            self.ctx.metrics.viewer_updates_dropped.inc();
            return;
        }
        let known = self.document.doc.transact().state_vector();
        let placement = frame
            .starts()
            .place(&known)
            .unwrap_or_else(|| walk(update, &known));
        if placement != Placement::Gap {
            let as_sent = (placement == Placement::Extends).then_some(frame);
            if self.apply(conn_id, update, as_sent) {
                self.mark_for_ack(conn_id, AckMark::Applied(count));
                if self.apply_held() {
                    // A released update may have been a no-op whose mark is already covered.
                    self.release_acks();
                }
            }
        } else {
            self.hold(conn_id, update, count);
        }
        self.flush();
    }

    /// Keeps an out-of-order update until what it follows has been applied.
    fn hold(&mut self, conn_id: u64, update: &[u8], count: u64) {
        let from_peer = self.document.held.iter().filter(|h| h.conn_id == conn_id).count();
        if from_peer >= MAX_HELD_PER_PEER
            || self.document.held.len() >= MAX_HELD_UPDATES
            || self.document.held_bytes + update.len() > self.ctx.limits.max_frame_bytes.max(MAX_HELD_BYTES)
        {
            // Too much out of order: the client resyncs through the handshake on return.
            self.ctx.metrics.error("out_of_order_overflow");
            self.kick(
                conn_id,
                CloseCode::TryAgain,
                "too many updates out of order; resync",
            );
            return;
        }
        self.document.held_bytes += update.len();
        self.document.held.push_back(Held {
            conn_id,
            count,
            update: update.to_vec(),
        });
        self.mark_for_ack(conn_id, AckMark::Held(count));
    }

    /// Applies held updates that now follow the document, until none does. Returns
    /// whether any was released.
    fn apply_held(&mut self) -> bool {
        let mut released = false;
        while !self.document.held.is_empty() {
            let known = self.document.doc.transact().state_vector();
            let ready = self
                .document
                .held
                .iter()
                .position(|h| walk(&h.update, &known) != Placement::Gap);
            let Some(held) = ready.and_then(|i| self.document.held.remove(i)) else {
                break;
            };
            self.document.held_bytes -= held.update.len();
            if self.peers.contains_key(&held.conn_id) && self.apply(held.conn_id, &held.update, None) {
                self.mark_for_ack(held.conn_id, AckMark::Released(held.count));
                released = true;
            }
        }
        released
    }

    /// Seeds a scene that had no state (the P1 product's content): applied as the first
    /// change and written to the log like any edit, under the scene's lease.
    pub(super) fn seed(&mut self, update: Vec<u8>) {
        let applied = catch_unwind(AssertUnwindSafe(|| {
            let update = Update::decode_v1(&update).map_err(|e| e.to_string())?;
            self.document
                .write()
                .apply_update(update)
                .map_err(|e| e.to_string())
        }));
        if !matches!(applied, Ok(Ok(()))) {
            tracing::error!(scene = %self.scene, "the seed from P1 did not apply");
            return;
        }
        tracing::info!(scene = %self.scene, bytes = update.len(), "seeded from P1 content");
        self.document.bytes += update.len();
        self.log.pending.push(update);
        // The seed is P1's own content: nothing to write back.
    }

    /// A change the room made itself (a merge through the content API or from P1): fanned
    /// out to every client and logged like an edit.
    pub(super) fn record_own_change(&mut self, change: Vec<u8>) {
        self.publish_change(change, None, None);
    }

    /// A change to the document: counted, fanned out (to all but `except`, its sender) as
    /// `message` or else as a new update message, handed to the log and marked for the P1
    /// write-back.
    fn publish_change(&mut self, mut change: Vec<u8>, message: Option<Bytes>, except: Option<u64>) {
        // The encoder grows its buffer by doubling, and a change waits in the log until it
        // is committed: a large one would hold up to twice its size meanwhile.
        if change.capacity() - change.len() > 1024 {
            change.shrink_to_fit();
        }
        self.document.bytes += change.len();
        self.p1_changed();
        let message = message.unwrap_or_else(|| message::encode_update(&change).into());
        self.broadcast(message, except);
        self.log.pending.push(change);
    }

    /// Applies an update and fans out what it changed. `as_sent` is the update's frame when
    /// it extends the document exactly (see [`Placement::Extends`]): unless something in it
    /// or in the document waits for a missing part, what changed is the update itself, so
    /// it is passed on and logged as it came instead of encoded again. Returns false when
    /// the sender was disconnected instead.
    fn apply(&mut self, conn_id: u64, update: &[u8], as_sent: Option<&ValidFrame>) -> bool {
        if self.document.bytes.saturating_add(update.len()) > self.ctx.limits.max_doc_bytes {
            self.ctx.metrics.error("document_too_large");
            self.kick(
                conn_id,
                CloseCode::TooLarge,
                "scene document is at its size limit",
            );
            return false;
        }
        let document = &mut self.document;
        let applied = catch_unwind(AssertUnwindSafe(|| {
            let decoded = Update::decode_v1(update).map_err(|e| e.to_string())?;
            let mut txn = document.write();
            let settled_before = !txn.has_missing_updates();
            txn.apply_update(decoded).map_err(|e| e.to_string())?;
            if as_sent.is_some() && settled_before && !txn.has_missing_updates() {
                return Ok(None);
            }
            Ok::<_, String>(Some(txn.encode_update_v1()))
        }));
        let change = match applied {
            Ok(Ok(Some(change))) => change,
            Ok(Ok(None)) => {
                let message = as_sent.and_then(ValidFrame::as_update_message);
                self.publish_change(update.to_vec(), message, Some(conn_id));
                return true;
            }
            Ok(Err(error)) => {
                tracing::debug!(scene = %self.scene, %error, "update refused");
                self.ctx.metrics.error("invalid_update");
                self.kick(conn_id, CloseCode::BadMessage, "invalid update");
                return false;
            }
            Err(_) => {
                // yrs panicked half-way through a transaction: the in-memory document can
                // no longer be trusted. Reload it from the store.
                tracing::error!(scene = %self.scene, "update panicked the document; reloading the scene");
                self.ctx.metrics.error("update_panic");
                self.kick(conn_id, CloseCode::BadMessage, "invalid update");
                self.log.pending.clear();
                self.document.held.clear();
                self.document.poisoned = true;
                self.stop(CloseCode::Restarting, "scene reloading");
                return false;
            }
        };
        if is_empty_update(&change) {
            self.ctx.metrics.conflicts_resolved.inc();
        } else {
            if change.as_slice() != update {
                self.ctx.metrics.conflicts_resolved.inc();
            }
            self.publish_change(change, None, Some(conn_id));
        }
        true
    }
}

/// Places `update` against `known` by walking it: for an update whose starts cannot tell
/// (see [`update_check::Starts::place`]), or one held without them.
fn walk(update: &[u8], known: &StateVector) -> Placement {
    match update_check::check_update_in_order_v1(update, CheckLimits::default(), known) {
        Ok(_) => Placement::Follows,
        Err(_) => Placement::Gap,
    }
}

/// An encoded update with no structs and no deletions: nothing changed.
fn is_empty_update(update: &[u8]) -> bool {
    update == [0, 0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::Text;

    #[test]
    fn a_transaction_that_changes_nothing_encodes_as_empty() {
        let source = Doc::new();
        let text = source.get_or_insert_text("text");
        let update = {
            let mut txn = source.transact_mut();
            text.insert(&mut txn, 0, "FADE IN:");
            txn.encode_update_v1()
        };
        let doc = Doc::new();
        let apply = |bytes: &[u8]| {
            let mut txn = doc.transact_mut();
            txn.apply_update(Update::decode_v1(bytes).unwrap()).unwrap();
            txn.encode_update_v1()
        };
        assert!(!is_empty_update(&apply(&update)));
        assert!(
            is_empty_update(&apply(&update)),
            "a duplicate update changed the doc"
        );
    }
}
