//! The room's presence: the awareness state of each client id, which connection speaks
//! for it, and publishing changes to Redis.
//!
//! The in-room half of presence (what y-websocket calls awareness); the Redis half, shared
//! across nodes, is [`crate::presence`]. Apart because it has its own rules: a connection
//! speaks for a few client ids of its own user, stale clocks are ignored, and what a state
//! says about its user is vouched for ([`vouch`]): the name is the token's, and colours are
//! plain `#rrggbb` (editors put them into `style` attributes).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::time::Instant;

use bytes::Bytes;

use super::{Room, RoomContext};
use troupe_proto::message;
use troupe_proto::presence::{PresenceRecord, PRESENCE_REFRESH};

/// Most awareness client ids one connection may speak for (one per Yjs doc it syncs).
const MAX_CLIENT_IDS_PER_CONNECTION: usize = 4;

/// What a client id last announced, and for whom.
struct PresenceEntry {
    clock: u64,
    state: String,
    /// The token subject of the connection that speaks for this client id.
    user: String,
}

/// The presence of the room's clients, by awareness client id.
pub(super) struct RoomPresence {
    entries: HashMap<u64, PresenceEntry>,
    /// Awareness client ids whose presence changed since it was last published to Redis.
    pub(super) dirty: HashSet<u64>,
    pub(super) published: Instant,
}

impl RoomPresence {
    pub(super) fn new() -> Self {
        Self {
            entries: HashMap::new(),
            dirty: HashSet::new(),
            published: Instant::now(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Removes these clients' presence; returns the ids removed, each with the clock that
    /// announces its removal (its last clock + 1).
    pub(super) fn remove(&mut self, clients: Vec<u64>) -> Vec<(u64, u64)> {
        let mut removed = Vec::new();
        for client in clients {
            if let Some(entry) = self.entries.remove(&client) {
                removed.push((client, entry.clock + 1));
                self.dirty.insert(client);
            }
        }
        removed
    }

    pub(super) fn encode_all(&self) -> Bytes {
        message::encode_awareness(
            self.entries
                .iter()
                .map(|(client, e)| (*client, e.clock, e.state.as_str())),
        )
        .into()
    }

    /// Publishes presence changes to Redis (at most once per housekeeping tick), and
    /// everyone present now and then so that the scene's entry does not expire.
    pub(super) fn publish(&mut self, ctx: &RoomContext, scene: &str) {
        let Some(redis) = &ctx.presence else {
            self.dirty.clear();
            return;
        };
        let refresh = !self.entries.is_empty() && self.published.elapsed() >= PRESENCE_REFRESH;
        if self.dirty.is_empty() && !refresh {
            return;
        }
        let mut ids: Vec<u64> = self.dirty.drain().collect();
        if refresh {
            ids.extend(
                self.entries
                    .keys()
                    .filter(|c| !ids.contains(c))
                    .copied()
                    .collect::<Vec<_>>(),
            );
            self.published = Instant::now();
        }
        let at_ms = troupe_proto::clock::now_ms();
        let changes = ids
            .into_iter()
            .map(|client| {
                let record = self.entries.get(&client).map(|e| PresenceRecord {
                    user: e.user.clone(),
                    state: e.state.clone(),
                    node: ctx.node,
                    at_ms,
                });
                (client, record)
            })
            .collect();
        redis.presence(scene, changes);
    }
}

/// Colour fields of an awareness `user` (y-prosemirror's `color`, the Yjs demos' `colorLight`).
const COLOUR_FIELDS: [&str; 2] = ["color", "colorLight"];

/// What a connection may say about its user in an awareness state: the name is `name` (its
/// token's), and colours are `#rrggbb` (others are dropped, since editors put them into
/// `style` attributes). Returns the state rewritten, or `None` when it already complies
/// (then it is passed on byte for byte). States without a `user` object are left alone.
fn vouch(state: &str, name: &str) -> Option<String> {
    let mut value: serde_json::Value = serde_json::from_str(state).ok()?;
    let user = value.get_mut("user")?.as_object_mut()?;
    let mut changed = false;
    if user.get("name").and_then(serde_json::Value::as_str) != Some(name) {
        user.insert("name".to_owned(), serde_json::Value::from(name));
        changed = true;
    }
    for field in COLOUR_FIELDS {
        if user
            .get(field)
            .is_some_and(|c| !c.as_str().is_some_and(is_hex_colour))
        {
            user.remove(field);
            changed = true;
        }
    }
    changed.then(|| value.to_string())
}

/// `#` and six hex digits.
fn is_hex_colour(colour: &str) -> bool {
    colour.len() == 7 && colour.starts_with('#') && colour[1..].bytes().all(|b| b.is_ascii_hexdigit())
}

impl Room {
    pub(super) fn on_awareness(&mut self, conn_id: u64, payload: &[u8]) {
        // The connection validated the entries (ids, clocks, JSON) before they came here;
        // the room only needs them split.
        let Ok(entries) = message::decode_awareness(payload, usize::MAX) else {
            return;
        };
        // A connection that already left claims no id below, so its entries are dropped.
        let (user, name, publishes) = self
            .peers
            .get(&conn_id)
            .map(|p| (p.user.clone(), p.name.clone(), p.publishes_presence))
            .unwrap_or_default();
        if !publishes {
            // A viewer without the grant: nobody else sees it, nothing is stored, but the
            // sender hears it back, as stock clients take their own presence as a sign of life.
            self.ctx.metrics.awareness_dropped.inc();
            let echo = message::encode_awareness(entries.iter().map(|e| (e.client_id, e.clock, e.state)));
            self.send(conn_id, echo);
            return;
        }
        let mut accepted: Vec<(u64, u64, Cow<'_, str>)> = Vec::new();
        for entry in entries {
            if !self.claim_client_id(conn_id, entry.client_id, entry.state == "null") {
                self.ctx.metrics.awareness_dropped.inc();
                continue;
            }
            if self
                .presence
                .entries
                .get(&entry.client_id)
                .is_some_and(|current| entry.clock < current.clock)
            {
                continue;
            }
            let mut state = Cow::Borrowed(entry.state);
            if entry.state == "null" {
                self.presence.entries.remove(&entry.client_id);
            } else {
                if let Some(vouched) = vouch(entry.state, &name) {
                    self.ctx.metrics.awareness_rewritten.inc();
                    state = Cow::Owned(vouched);
                }
                self.presence.entries.insert(
                    entry.client_id,
                    PresenceEntry {
                        clock: entry.clock,
                        state: state.to_string(),
                        user: user.clone(),
                    },
                );
            }
            self.presence.dirty.insert(entry.client_id);
            accepted.push((entry.client_id, entry.clock, state));
        }
        if !accepted.is_empty() {
            // To everyone, the sender included, as the reference server does: stock clients
            // count their own renewed presence as a sign of life and reconnect without it.
            let frame = message::encode_awareness(
                accepted
                    .iter()
                    .map(|(id, clock, state)| (*id, *clock, state.as_ref())),
            );
            self.broadcast(frame.into(), None);
        }
    }

    /// Whether `conn_id` may speak for `client_id`, claiming it if it is free.
    fn claim_client_id(&mut self, conn_id: u64, client_id: u64, removal: bool) -> bool {
        let Some(user) = self.peers.get(&conn_id).map(|p| p.user.clone()) else {
            return false;
        };
        let holder = self
            .peers
            .iter()
            .find(|(_, p)| p.client_ids.contains(&client_id))
            .map(|(id, p)| (*id, p.user == user));
        match holder {
            Some((id, _)) if id == conn_id => true,
            Some((id, true)) => {
                // The same user on a newer connection: move the id over.
                if let Some(old) = self.peers.get_mut(&id) {
                    old.client_ids.retain(|c| *c != client_id);
                }
                self.add_client_id(conn_id, client_id)
            }
            Some((_, false)) => false,
            None if removal => false,
            None => self.add_client_id(conn_id, client_id),
        }
    }

    fn add_client_id(&mut self, conn_id: u64, client_id: u64) -> bool {
        match self.peers.get_mut(&conn_id) {
            Some(peer) if peer.client_ids.len() < MAX_CLIENT_IDS_PER_CONNECTION => {
                peer.client_ids.push(client_id);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_says_its_tokens_name_and_plain_colours() {
        // Complying states pass unchanged, byte for byte.
        let ok = r##"{"user":{"name":"Ada","color":"#e6194b"},"cursor":{"anchor":3}}"##;
        assert_eq!(vouch(ok, "Ada"), None);
        assert_eq!(vouch(r#"{"cursor":{"anchor":3}}"#, "Ada"), None);
        // Another name is replaced by the token's; a colour carrying CSS is dropped.
        let forged = r##"{"user":{"name":"The Producer","color":"red;background:url(x)","colorLight":"#aabbcc"},"typing":1}"##;
        let vouched: serde_json::Value =
            serde_json::from_str(&vouch(forged, "Ada").unwrap_or_default()).unwrap_or_default();
        assert_eq!(vouched["user"]["name"], "Ada");
        assert!(vouched["user"].get("color").is_none());
        assert_eq!(vouched["user"]["colorLight"], "#aabbcc");
        assert_eq!(vouched["typing"], 1);
        // A user without a name gets the token's; short or non-string colours go.
        let bare: serde_json::Value =
            serde_json::from_str(&vouch(r##"{"user":{"color":"#e33"}}"##, "Ada").unwrap_or_default())
                .unwrap_or_default();
        assert_eq!(bare, serde_json::json!({ "user": { "name": "Ada" } }));
        assert!(vouch(r##"{"user":{"name":"Ada","color":7}}"##, "Ada").is_some());
        assert!(is_hex_colour("#00FFaa") && !is_hex_colour("#00FFa") && !is_hex_colour("00FFaa0"));
    }
}
