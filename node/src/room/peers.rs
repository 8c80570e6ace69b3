//! The room's connections: who joined (with what role), joining and leaving, and the
//! sending of frames to them through their bounded queues.
//!
//! Apart because every other concern sends through here, and here alone a client that
//! cannot keep up is dropped (closing its socket; never dropping its messages).

use std::time::Instant;

use bytes::Bytes;
use yrs::updates::encoder::Encode;
use yrs::{ReadTxn, Transact};

use troupe_proto::CloseCode;

use super::acks::PeerAcks;
use super::{JoinRefused, Joiner, Room};
use crate::outbox::ClientQueue;
use troupe_proto::message;
use troupe_proto::token::Role;

/// One joined connection.
pub(super) struct Peer {
    pub(super) user: String,
    /// The name this connection's presence carries, whatever the client says.
    pub(super) name: String,
    pub(super) role: Role,
    pub(super) publishes_presence: bool,
    outbox: ClientQueue,
    pub(super) acks: PeerAcks,
    /// Awareness client ids this connection speaks for.
    pub(super) client_ids: Vec<u64>,
}

impl Room {
    pub(super) fn join(&mut self, joiner: Joiner) {
        let Joiner {
            conn_id,
            user,
            name,
            role,
            publishes_presence,
            acks,
            outbox,
            reply,
        } = joiner;
        if let Some(url) = &self.handoff {
            let _ = reply.send(Err(JoinRefused::Moved(url.clone())));
            return;
        }
        if self.stopping.is_some() {
            let _ = reply.send(Err(JoinRefused::Unavailable));
            return;
        }
        if self.peers.len() >= self.ctx.limits.max_connections_per_room {
            let _ = reply.send(Err(JoinRefused::Full));
            return;
        }
        if reply.send(Ok(())).is_err() {
            return;
        }
        self.peers.insert(
            conn_id,
            Peer {
                user,
                name,
                role,
                publishes_presence,
                outbox,
                acks: PeerAcks::new(acks),
                client_ids: Vec::new(),
            },
        );
        self.idle_since = None;
        self.ctx.metrics.sessions_joined.inc();
        let users: std::collections::HashSet<&str> = self.peers.values().map(|p| p.user.as_str()).collect();
        self.ctx.metrics.users_per_scene.observe(users.len() as f64);
        // Like the reference server: our state vector first, then everyone's presence.
        let sv = self.document.doc.transact().state_vector().encode_v1();
        self.send(conn_id, message::encode_sync_step1(&sv));
        if !self.presence.is_empty() {
            self.send(conn_id, self.presence.encode_all());
        }
    }

    pub(super) fn leave(&mut self, conn_id: u64) {
        let Some(peer) = self.peers.remove(&conn_id) else {
            return;
        };
        // Its held updates go too: the client resends them in its next sync handshake.
        self.document.forget_held_from(conn_id);
        // Remove the leaver's presence for everyone else (clock + 1, state null).
        let removed = self.presence.remove(peer.client_ids);
        if !removed.is_empty() {
            let frame = message::encode_awareness(removed.iter().map(|&(c, clock)| (c, clock, "null")));
            self.broadcast(frame.into(), None);
        }
        if self.peers.is_empty() {
            self.idle_since = Some(Instant::now());
        }
    }

    /// Queues a frame for one peer; a peer that cannot keep up is disconnected.
    pub(super) fn send(&mut self, conn_id: u64, frame: impl Into<Bytes>) {
        let ok = self
            .peers
            .get(&conn_id)
            .is_some_and(|p| p.outbox.push(frame.into()));
        if !ok {
            self.drop_slow(conn_id);
        }
    }

    pub(super) fn broadcast(&mut self, frame: Bytes, except: Option<u64>) {
        let mut slow = Vec::new();
        for (id, peer) in &self.peers {
            if Some(*id) == except {
                continue;
            }
            if !peer.outbox.push(frame.clone()) {
                slow.push(*id);
            }
        }
        for id in slow {
            self.drop_slow(id);
        }
    }

    /// Dropping the peer's queue makes its connection close with 1013; it resyncs on return.
    fn drop_slow(&mut self, conn_id: u64) {
        if self.peers.contains_key(&conn_id) {
            self.ctx.metrics.error("slow_consumer");
            self.leave(conn_id);
        }
    }

    pub(super) fn kick(&mut self, conn_id: u64, code: CloseCode, reason: &str) {
        if let Some(peer) = self.peers.get(&conn_id) {
            peer.outbox.close(code, reason);
            self.leave(conn_id);
        }
    }
}
