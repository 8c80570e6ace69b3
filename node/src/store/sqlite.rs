//! Embedded SQLite backend: a file under the data folder, WAL journal with full fsync, so a
//! local node needs no server and still loses nothing it acknowledged.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row;

use super::{now_ms, LogAppend, LogRow, Snapshot, StoreError, StoredScene};

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
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }

    pub async fn append(&self, writer_node: &str, batch: &[LogAppend]) -> Result<Vec<usize>, StoreError> {
        let now = now_ms();
        let mut refused = Vec::new();
        let mut tx = self.pool.begin().await?;
        for (i, b) in batch.iter().enumerate() {
            let done = sqlx::query(
                "INSERT INTO scene_versions (scene_id, seq, epoch, writer_node, data, created_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (scene_id, seq) DO NOTHING",
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
