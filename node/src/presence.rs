//! Presence and failover notices on Redis — and nothing else: losing Redis degrades
//! presence outside a room (the router's presence answer), never editing or data.
//!
//! - Presence of a scene: the hash `troupe:presence:{scene}` (field: awareness client id,
//!   value: a JSON [`PresenceRecord`]), kept alive with a TTL while the scene has people in
//!   it, and each change published on the channel of the same name. Rooms batch their
//!   changes (a few publishes per second at most); a new owner clears the hash when it
//!   loads a scene, so a crashed owner leaves no ghosts (and entries expire anyway).
//! - Notices on `troupe:notices`: `node_down`, `epoch_changed`, `scene_moved`. They are
//!   hints for routers to refresh at once; the membership stays the truth.
//!
//! One task owns the connection (a `ConnectionManager`, which reconnects by itself); rooms
//! hand it work through a bounded queue and never wait for Redis. When the queue is full or
//! Redis is down, work is dropped and counted: presence heals with the next change or
//! refresh, and notices are only hints.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// How long a scene's presence outlives its last refresh.
pub const PRESENCE_TTL: Duration = Duration::from_secs(30);

/// How often a room republishes everyone present, keeping the TTL alive.
pub const PRESENCE_REFRESH: Duration = Duration::from_secs(10);

const QUEUE: usize = 4096;

pub const NOTICES_CHANNEL: &str = "troupe:notices";

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
    pub node: u64,
    /// When it was written (ms since the epoch).
    pub at_ms: u64,
}

/// A failover notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notice {
    NodeDown {
        node: u64,
        epoch: u64,
    },
    EpochChanged {
        epoch: u64,
    },
    SceneMoved {
        scene: String,
        from: u64,
        to: Option<u64>,
        epoch: u64,
    },
}

enum Work {
    /// Presence changes of one scene: `None` removes the client.
    Presence {
        scene: String,
        changes: Vec<(u64, Option<PresenceRecord>)>,
    },
    /// Forget everything said about a scene's presence (a new owner takes it over).
    Clear {
        scene: String,
    },
    Notice(Notice),
}

/// Where rooms and the node send presence and notices. Cheap to clone.
#[derive(Clone)]
pub struct RedisHandle {
    tx: mpsc::Sender<Work>,
    metrics: std::sync::Arc<Metrics>,
}

impl RedisHandle {
    /// Starts the task that talks to Redis at `url`.
    pub fn spawn(url: String, metrics: std::sync::Arc<Metrics>) -> RedisHandle {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(url, rx, metrics.clone()));
        RedisHandle { tx, metrics }
    }

    fn send(&self, work: Work) {
        if self.tx.try_send(work).is_err() {
            self.metrics.presence_dropped.inc();
        }
    }

    pub fn presence(&self, scene: &str, changes: Vec<(u64, Option<PresenceRecord>)>) {
        if !changes.is_empty() {
            self.send(Work::Presence {
                scene: scene.to_string(),
                changes,
            });
        }
    }

    pub fn clear(&self, scene: &str) {
        self.send(Work::Clear {
            scene: scene.to_string(),
        });
    }

    pub fn notice(&self, notice: Notice) {
        self.send(Work::Notice(notice));
    }
}

async fn run(url: String, mut rx: mpsc::Receiver<Work>, metrics: std::sync::Arc<Metrics>) {
    let mut conn: Option<ConnectionManager> = None;
    let mut failures = 0u64;
    while let Some(work) = rx.recv().await {
        if conn.is_none() {
            conn = connect(&url).await;
        }
        let Some(c) = conn.as_mut() else {
            metrics.redis_up.set(0);
            metrics.presence_dropped.inc();
            failures += 1;
            if failures.is_power_of_two() {
                tracing::warn!(
                    failures,
                    "Redis unreachable: presence and notices are dropped meanwhile"
                );
            }
            // Do not hammer a Redis that is down: drain what queued up meanwhile.
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        match apply(c, work).await {
            Ok(()) => {
                metrics.redis_up.set(1);
                metrics.presence_published.inc();
                if failures > 0 {
                    tracing::info!("Redis is back");
                    failures = 0;
                }
            }
            Err(error) => {
                metrics.redis_up.set(0);
                metrics.presence_dropped.inc();
                failures += 1;
                if failures.is_power_of_two() {
                    tracing::warn!(%error, failures, "Redis write failed");
                }
            }
        }
    }
}

async fn connect(url: &str) -> Option<ConnectionManager> {
    let client = redis::Client::open(url).ok()?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    match tokio::time::timeout(
        Duration::from_secs(3),
        client.get_connection_manager_with_config(config),
    )
    .await
    {
        Ok(Ok(conn)) => Some(conn),
        _ => None,
    }
}

async fn apply(conn: &mut ConnectionManager, work: Work) -> redis::RedisResult<()> {
    match work {
        Work::Presence { scene, changes } => {
            let key = presence_key(&scene);
            let mut pipe = redis::pipe();
            let mut published = Vec::with_capacity(changes.len());
            for (client, record) in &changes {
                match record {
                    Some(record) => {
                        let json = serde_json::to_string(record).unwrap_or_default();
                        pipe.hset(&key, client, &json).ignore();
                        published.push(serde_json::json!({ "client": client, "presence": record }));
                    }
                    None => {
                        pipe.hdel(&key, client).ignore();
                        published.push(serde_json::json!({ "client": client, "presence": null }));
                    }
                }
            }
            pipe.expire(&key, PRESENCE_TTL.as_secs() as i64).ignore();
            let message = serde_json::json!({ "scene": scene, "changes": published }).to_string();
            pipe.publish(&key, message).ignore();
            pipe.query_async::<()>(conn).await
        }
        Work::Clear { scene } => conn.del::<_, ()>(presence_key(&scene)).await,
        Work::Notice(notice) => {
            let message = serde_json::to_string(&notice).unwrap_or_default();
            conn.publish::<_, _, ()>(NOTICES_CHANNEL, message).await
        }
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
