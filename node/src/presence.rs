//! Presence and failover notices on Redis — and nothing else: losing Redis degrades
//! presence outside a room (the router's presence answer), never editing or data.
//!
//! The keys and records are the shared ones ([`troupe_proto::presence`]). Rooms batch their
//! presence changes (a few publishes per second at most); a new owner clears a scene's hash
//! when it loads the scene, so a crashed owner leaves no ghosts (and entries expire anyway).
//! Failover notices (`node_down`, `epoch_changed`, `scene_moved`) are hints for routers to
//! refresh at once; the membership stays the truth.
//!
//! One task owns the connection (a `ConnectionManager`, which reconnects by itself); rooms
//! hand it work through a bounded queue and never wait for Redis. When the queue is full or
//! Redis is down, work is dropped and counted: presence heals with the next change or
//! refresh, and notices are only hints.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use tokio::sync::mpsc;
pub use troupe_proto::clock::now_ms;
use troupe_proto::presence::{presence_key, PresenceChange, PresenceChanges, NOTICES_CHANNEL, PRESENCE_TTL};
pub use troupe_proto::presence::{Notice, PresenceRecord, PRESENCE_REFRESH};

use crate::metrics::Metrics;

const QUEUE: usize = 4096;

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
            for (client, record) in &changes {
                match record {
                    Some(record) => {
                        let json = serde_json::to_string(record).unwrap_or_default();
                        pipe.hset(&key, client, &json).ignore();
                    }
                    None => {
                        pipe.hdel(&key, client).ignore();
                    }
                }
            }
            pipe.expire(&key, PRESENCE_TTL.as_secs() as i64).ignore();
            let changes = changes
                .into_iter()
                .map(|(client, presence)| PresenceChange { client, presence })
                .collect();
            let message = serde_json::to_string(&PresenceChanges { scene, changes }).unwrap_or_default();
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
