//! Embedded SQLite backend: a file under the data folder, WAL journal with full fsync, so a
//! local node needs no server and still loses nothing it acknowledged.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row;

use super::{now_ms, LogAppend, LogRow, P1Write, Snapshot, StoreError, StoredScene, P1_PROJECTIONS_KEPT};

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            // Each pooled connection has its own page cache (2 MiB by default); the rooms
            // hold the documents and the OS caches the file, so a small one does.
            .pragma("cache_size", "-256");
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        super::migrate!(&pool, "../migrations/sqlite");
        Ok(Self { pool })
    }

    /// A transaction that writes: it takes the write lock at once (`BEGIN IMMEDIATE`), so
    /// that nodes sharing the file wait for each other (busy timeout) instead of failing
    /// when a read inside the transaction would have to be upgraded.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Nothing to do: a write transaction (`BEGIN IMMEDIATE`) holds the database's write
    /// lock, which serializes every writer.
    async fn serialize_new_scenes(
        &self,
        _tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        _user: &str,
        _minute: i64,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    pub async fn leases_lost(&self, owner: &str, scenes: &[String]) -> Result<Vec<String>, StoreError> {
        let list = serde_json::to_string(scenes).unwrap_or_else(|_| "[]".into());
        Ok(sqlx::query_scalar(
            "SELECT value FROM json_each($2)
             WHERE NOT EXISTS (SELECT 1 FROM scene_leases WHERE scene_id = value AND owner = $1)",
        )
        .bind(owner)
        .bind(list)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn append(&self, writer_node: &str, batch: &[LogAppend]) -> Result<Vec<usize>, StoreError> {
        let now = now_ms();
        let mut refused = Vec::new();
        let mut tx = self.begin_write().await?;
        for (i, b) in batch.iter().enumerate() {
            let done = sqlx::query(
                "INSERT INTO scene_versions (scene_id, seq, epoch, writer_node, data, created_at_ms)
                 SELECT $1, $2, $3, $4, $5, $6
                 WHERE EXISTS (SELECT 1 FROM scene_leases
                               WHERE scene_id = $1 AND epoch = $3 AND owner = $4)
                 ON CONFLICT (scene_id, seq) DO NOTHING",
            )
            .bind(&b.scene)
            .bind(b.seq as i64)
            .bind(b.epoch as i64)
            .bind(writer_node)
            .bind(&b.data)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                refused.push(i);
            }
        }
        tx.commit().await?;
        Ok(refused)
    }

    super::shared_queries!("");
    super::history::history_queries!("");
}
