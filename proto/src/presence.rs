//! What nodes tell each other and routers through Redis — presence and failover notices —
//! and the keys they use. Redis carries nothing else: losing it degrades presence outside
//! a room, never editing or data.
//!
//! - A scene's presence is the hash [`presence_key`] (field: awareness client id, value: a
//!   JSON [`PresenceRecord`]), kept alive with [`PRESENCE_TTL`] while the scene has people
//!   in it; each batch of changes is published as a [`PresenceChanges`] on the channel of
//!   the same name.
//! - [`Notice`]s on [`NOTICES_CHANNEL`] are hints for routers to refresh their membership
//!   at once; the membership stays the truth.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// How long a scene's presence outlives its last refresh.
pub const PRESENCE_TTL: Duration = Duration::from_secs(30);

/// How often a room republishes everyone present, keeping the TTL alive.
pub const PRESENCE_REFRESH: Duration = Duration::from_secs(10);

/// Records older than this are ignored by readers: their node stopped refreshing them.
pub const STALE_AFTER: Duration = PRESENCE_TTL;

/// The channel of failover notices.
pub const NOTICES_CHANNEL: &str = "troupe:notices";

/// The hash (and channel) of a scene's presence.
pub fn presence_key(scene: &str) -> String {
    format!("troupe:presence:{scene}")
}

/// One client's presence in a scene, as stored and published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceRecord {
    /// The token's subject.
    pub user: String,
    /// The awareness state as the client sent it (JSON: name, colour, cursor, typing…).
    pub state: String,
    /// The node serving the scene.
    pub node: NodeId,
    /// When it was written (ms since the Unix epoch).
    pub at_ms: u64,
}

impl PresenceRecord {
    /// Whether the record is too old to show at `now_ms`.
    pub fn is_stale(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.at_ms) > STALE_AFTER.as_millis() as u64
    }
}

/// A batch of presence changes of one scene, as published on its channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceChanges {
    pub scene: String,
    pub changes: Vec<PresenceChange>,
}

/// One client's new presence; `None` when it left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceChange {
    pub client: u64,
    pub presence: Option<PresenceRecord>,
}

/// A failover notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notice {
    NodeDown {
        node: NodeId,
        epoch: u64,
    },
    EpochChanged {
        epoch: u64,
    },
    SceneMoved {
        scene: String,
        from: NodeId,
        to: Option<NodeId>,
        epoch: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shapes_are_stable() {
        let record = PresenceRecord {
            user: "ada".into(),
            state: "{}".into(),
            node: NodeId(2),
            at_ms: 5,
        };
        let changes = PresenceChanges {
            scene: "s1".into(),
            changes: vec![
                PresenceChange {
                    client: 7,
                    presence: Some(record.clone()),
                },
                PresenceChange {
                    client: 8,
                    presence: None,
                },
            ],
        };
        assert_eq!(
            serde_json::to_string(&changes).unwrap_or_default(),
            r#"{"scene":"s1","changes":[{"client":7,"presence":{"user":"ada","state":"{}","node":2,"at_ms":5}},{"client":8,"presence":null}]}"#
        );
        let notice = Notice::SceneMoved {
            scene: "s1".into(),
            from: NodeId(1),
            to: None,
            epoch: 4,
        };
        assert_eq!(
            serde_json::to_string(&notice).unwrap_or_default(),
            r#"{"kind":"scene_moved","scene":"s1","from":1,"to":null,"epoch":4}"#
        );
        assert_eq!(presence_key("s1"), "troupe:presence:s1");
        assert!(!record.is_stale(5 + 30_000));
        assert!(record.is_stale(5 + 30_001));
    }
}
