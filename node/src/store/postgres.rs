//! Postgres backend: the whole group commit is one `INSERT … SELECT FROM UNNEST`, a single
//! round trip and a single transaction for the pending batches of every room.

use std::collections::HashSet;
use std::time::Duration;

use std::sync::Arc;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, Row};
use tokio::sync::Mutex;

use super::{now_ms, LogAppend, LogRow, Snapshot, StoreError, StoredScene};

/// A group commit that takes longer than this is abandoned and retried on a new connection.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    options: PgConnectOptions,
    /// The group committer's own connection: pool check-out and check-in would add work
    /// (and a round trip) to every commit. Reconnected after an error.
    appender: Arc<Mutex<Option<PgConnection>>>,
}

impl PgStore {
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            // A failed query surfaces as an error and is retried by the caller; a ping
            // before every group commit would double its round trips.
            .test_before_acquire(false)
            .connect(url)
            .await?;
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        let options: PgConnectOptions = url.parse()?;
        Ok(Self {
            pool,
            options,
            appender: Arc::new(Mutex::new(None)),
        })
    }

    pub async fn append(&self, writer_node: &str, batch: &[LogAppend]) -> Result<Vec<usize>, StoreError> {
        let scenes: Vec<&str> = batch.iter().map(|b| b.scene.as_str()).collect();
        let seqs: Vec<i64> = batch.iter().map(|b| b.seq as i64).collect();
        let epochs: Vec<i64> = batch.iter().map(|b| b.epoch as i64).collect();
        let data: Vec<&[u8]> = batch.iter().map(|b| b.data.as_slice()).collect();
        let mut appender = self.appender.lock().await;
        let conn = match appender.as_mut() {
            Some(conn) => conn,
            None => appender.insert(self.options.connect().await?),
        };
        let inserted = sqlx::query(
            "INSERT INTO scene_versions (scene_id, seq, epoch, writer_node, data, created_at_ms)
             SELECT s, q, e, $4, d, $6
             FROM UNNEST($1::text[], $2::int8[], $3::int8[], $5::bytea[]) AS t(s, q, e, d)
             ON CONFLICT (scene_id, seq) DO NOTHING
             RETURNING scene_id, seq",
        )
        .bind(&scenes)
        .bind(&seqs)
        .bind(&epochs)
        .bind(writer_node)
        .bind(&data)
        .bind(now_ms())
        .fetch_all(&mut *conn);
        let inserted = match tokio::time::timeout(COMMIT_TIMEOUT, inserted).await {
            Ok(Ok(rows)) => rows,
            Ok(Err(error)) => {
                // The connection may be broken; the next commit opens a fresh one.
                if let Some(conn) = appender.take() {
                    let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
                }
                return Err(error.into());
            }
            Err(_) => {
                // No answer: the outcome is unknown, so the caller retries the batch (rows
                // that did land are then recognised as ours, see `Store::append`).
                appender.take();
                return Err(StoreError::Timeout);
            }
        };
        let stored: HashSet<(String, i64)> = inserted
            .iter()
            .map(|row| Ok((row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?)))
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(batch
            .iter()
            .enumerate()
            .filter(|(_, b)| !stored.contains(&(b.scene.clone(), b.seq as i64)))
            .map(|(i, _)| i)
            .collect())
    }

    pub async fn load(&self, scene: &str) -> Result<StoredScene, StoreError> {
        let mut tx = self.pool.begin().await?;
        let snapshots = sqlx::query(
            "SELECT upto_seq, data FROM scene_snapshots WHERE scene_id = $1 ORDER BY upto_seq DESC LIMIT 2",
        )
        .bind(scene)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|row| {
            Ok(Snapshot {
                upto_seq: row.try_get::<i64, _>(0)? as u64,
                data: row.try_get(1)?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let from = snapshots.last().map_or(0, |s| s.upto_seq as i64);
        let rows = sqlx::query(
            "SELECT seq, data, created_at_ms FROM scene_versions WHERE scene_id = $1 AND seq > $2 ORDER BY seq",
        )
        .bind(scene)
        .bind(from)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|row| {
            Ok(LogRow {
                seq: row.try_get::<i64, _>(0)? as u64,
                data: row.try_get(1)?,
                created_at_ms: row.try_get(2)?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        tx.commit().await?;
        Ok(StoredScene { snapshots, rows })
    }

    pub async fn write_snapshot(&self, scene: &str, snapshot: &Snapshot) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO scene_snapshots (scene_id, upto_seq, data, created_at_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT (scene_id, upto_seq) DO NOTHING",
        )
        .bind(scene)
        .bind(snapshot.upto_seq as i64)
        .bind(&snapshot.data)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        let older: Option<i64> = sqlx::query_scalar(
            "SELECT upto_seq FROM scene_snapshots WHERE scene_id = $1 ORDER BY upto_seq DESC LIMIT 1 OFFSET 1",
        )
        .bind(scene)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(older) = older {
            sqlx::query("DELETE FROM scene_snapshots WHERE scene_id = $1 AND upto_seq < $2")
                .bind(scene)
                .bind(older)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM scene_versions WHERE scene_id = $1 AND seq <= $2")
                .bind(scene)
                .bind(older)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Who wrote a log position, and at which epoch.
    pub async fn writer_of(&self, scene: &str, seq: u64) -> Result<Option<(String, u64)>, StoreError> {
        let row =
            sqlx::query("SELECT writer_node, epoch FROM scene_versions WHERE scene_id = $1 AND seq = $2")
                .bind(scene)
                .bind(seq as i64)
                .fetch_optional(&self.pool)
                .await?;
        Ok(match row {
            Some(row) => Some((row.try_get(0)?, row.try_get::<i64, _>(1)? as u64)),
            None => None,
        })
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
