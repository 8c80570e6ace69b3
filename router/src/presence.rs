//! Presence and notices from Redis: who is in a scene without joining it
//! (`GET /v1/scenes/{scene}/presence`), and failover notices that make the router refresh
//! its membership at once instead of waiting for its watch.
//!
//! Both are optional and best effort: without Redis (or while it is down) presence answers
//! 503 and routes keep coming from the membership watch.

use std::sync::Arc;
use std::time::Duration;

use hyper::{Response, StatusCode};
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use tokio::sync::Mutex;
use troupe_proto::clock::now_ms;
use troupe_proto::presence::{presence_key, PresenceRecord, NOTICES_CHANNEL};
use troupe_runtime::Backoff;

use crate::follow::Follower;
use crate::http::Body;

/// Reads scenes' presence from Redis.
pub struct PresenceReader {
    client: redis::Client,
    conn: Mutex<Option<MultiplexedConnection>>,
}

impl PresenceReader {
    pub fn new(url: &str) -> Result<PresenceReader, redis::RedisError> {
        Ok(PresenceReader {
            client: redis::Client::open(url)?,
            conn: Mutex::new(None),
        })
    }

    async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.as_ref() {
            return Ok(c.clone());
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        let c = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        *conn = Some(c.clone());
        Ok(c)
    }

    /// The scene's presence entries as JSON values, newest state per client.
    async fn read(&self, scene: &str) -> redis::RedisResult<Vec<serde_json::Value>> {
        let mut conn = self.connection().await?;
        let key = presence_key(scene);
        let fields: std::collections::HashMap<String, String> = match conn.hgetall(&key).await {
            Ok(fields) => fields,
            Err(e) => {
                // Reconnect next time.
                *self.conn.lock().await = None;
                return Err(e);
            }
        };
        let now = now_ms();
        let mut users: Vec<serde_json::Value> = fields
            .into_iter()
            .filter_map(|(client, value)| {
                let record: PresenceRecord = serde_json::from_str(&value).ok()?;
                if record.is_stale(now) {
                    return None;
                }
                let state: serde_json::Value =
                    serde_json::from_str(&record.state).unwrap_or(serde_json::Value::Null);
                // Names and states, never the token's subject (often an email).
                Some(serde_json::json!({
                    "client": client.parse::<u64>().ok(),
                    "node": record.node,
                    "state": state,
                    "at_ms": record.at_ms,
                }))
            })
            .collect();
        users.sort_by_key(|u| u["client"].as_u64());
        Ok(users)
    }
}

/// `GET /v1/scenes/{scene}/presence`: `scene` is the checked id, `None` when the path's
/// id breaks the rule.
pub async fn answer(scene: Option<&str>, reader: Option<&PresenceReader>) -> Response<Body> {
    let Some(scene) = scene else {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": "bad_scene", "message": "a scene id is 1-128 characters of letters, digits and -_.:~" }),
        );
    };
    let Some(reader) = reader else {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "error": "presence_unavailable", "message": "this router has no Redis (TROUPE_REDIS_URL)" }),
        );
    };
    match tokio::time::timeout(Duration::from_secs(3), reader.read(scene)).await {
        Ok(Ok(users)) => json(
            StatusCode::OK,
            serde_json::json!({ "scene": scene, "users": users }),
        ),
        Ok(Err(e)) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "error": "presence_unavailable", "message": format!("Redis: {e}") }),
        ),
        Err(_) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "error": "presence_unavailable", "message": "Redis did not answer in time" }),
        ),
    }
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    crate::http::no_store(crate::http::text(
        status,
        "application/json",
        format!("{value}\n"),
    ))
}

/// Listens for failover notices and refreshes the membership on each. A plain pub/sub
/// connection does not reconnect by itself: on any error it is opened again, and the
/// membership refreshed, since notices sent meanwhile were lost.
pub async fn follow_notices(url: String, follower: Arc<Follower>) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
    loop {
        match listen(&url, &follower).await {
            Ok(()) => backoff.reset(),
            Err(error) => tracing::debug!(%error, "notices subscription lost; reconnecting"),
        }
        backoff.wait().await;
        follower.refresh_now();
    }
}

async fn listen(url: &str, follower: &Follower) -> redis::RedisResult<()> {
    use futures_util::StreamExt;
    let client = redis::Client::open(url)?;
    let mut pubsub = tokio::time::timeout(Duration::from_secs(3), client.get_async_pubsub())
        .await
        .map_err(|_| redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))??;
    pubsub.subscribe(NOTICES_CHANNEL).await?;
    tracing::info!("following failover notices on Redis");
    follower.refresh_now();
    let mut messages = pubsub.into_on_message();
    while let Some(message) = messages.next().await {
        let payload: String = message.get_payload().unwrap_or_default();
        tracing::debug!(notice = %payload, "failover notice");
        follower.refresh_now();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_redis_presence_is_unavailable_not_an_error() {
        let r = answer(Some("s1"), None).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let r = answer(None, None).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }
}
