//! The durable store: an append-only log of each scene's updates plus compaction snapshots.
//!
//! Two backends with one behaviour: Postgres in production and an embedded SQLite file for
//! a local node with nothing to install. Both pass the same test suite (`tests/store.rs`).
//!
//! Retention: a scene keeps its two newest snapshots and the log rows after the older of
//! them, so a snapshot that cannot be read falls back to the one before plus its tail.
//! Everything older is deleted when a new snapshot is written.

use crate::content::blocks::Block;

/// When a claim takes a scene's lease (the `ON CONFLICT` clause of every claim, one scene
/// or many): over an older epoch, or at the same epoch when the claimant holds it or it was
/// released. The fencing rule: one place, so that the two claims cannot drift apart.
macro_rules! claim_wins {
    () => {
        "ON CONFLICT (scene_id) DO UPDATE
         SET epoch = excluded.epoch, owner = excluded.owner, claimed_at_ms = excluded.claimed_at_ms
         WHERE scene_leases.epoch < excluded.epoch
            OR (scene_leases.epoch = excluded.epoch
                AND (scene_leases.owner = excluded.owner OR scene_leases.owner = ''))"
    };
}
use claim_wins;

/// Methods whose SQL is the same on both backends (both accept `$n` placeholders); each
/// backend struct has a `pool` field of its own pool type. `$lock_lease` ends the query
/// that checks a writer's lease: Postgres locks the lease row (`FOR SHARE`) so that a claim
/// of the scene waits for this write to commit instead of overtaking it; SQLite writes
/// one transaction at a time (`BEGIN IMMEDIATE`) and needs nothing.
macro_rules! shared_queries {
    ($lock_lease:literal) => {
        /// The scene's two newest snapshots and the log after the older one, in one
        /// statement: it reads from one snapshot of the database (no transaction, one round
        /// trip — a node taking over thousands of scenes at once does this for each).
        pub async fn load(&self, scene: &str) -> Result<StoredScene, StoreError> {
            let found = sqlx::query(
                "WITH snaps AS (SELECT upto_seq, data FROM scene_snapshots
                                WHERE scene_id = $1 ORDER BY upto_seq DESC LIMIT 2)
                 SELECT 0 AS is_row, upto_seq AS seq, data, 0 AS created_at_ms FROM snaps
                 UNION ALL
                 SELECT 1, seq, data, created_at_ms FROM scene_versions
                 WHERE scene_id = $1 AND seq > COALESCE((SELECT min(upto_seq) FROM snaps), 0)",
            )
            .bind(scene)
            .fetch_all(&self.pool)
            .await?;
            let mut stored = StoredScene { snapshots: Vec::new(), rows: Vec::new() };
            for row in found {
                let seq = row.try_get::<i64, _>(1)? as u64;
                let data = row.try_get(2)?;
                if row.try_get::<i32, _>(0)? == 0 {
                    stored.snapshots.push(Snapshot { upto_seq: seq, data });
                } else {
                    stored.rows.push(LogRow { seq, data, created_at_ms: row.try_get(3)? });
                }
            }
            stored.sort();
            Ok(stored)
        }

        pub async fn write_snapshot(
            &self,
            scene: &str,
            snapshot: &Snapshot,
            owner: &str,
            epoch: u64,
        ) -> Result<bool, StoreError> {
            let mut tx = self.begin_write().await?;
            let holds: Option<i64> = sqlx::query_scalar(concat!(
                "SELECT epoch FROM scene_leases WHERE scene_id = $1 AND epoch = $2 AND owner = $3",
                $lock_lease
            ))
            .bind(scene)
            .bind(epoch as i64)
            .bind(owner)
            .fetch_optional(&mut *tx)
            .await?;
            if holds.is_none() {
                return Ok(false);
            }
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
            Ok(true)
        }

        /// Who wrote a log position, and at which epoch.
        /// Claims a scene for `owner` at `epoch`: succeeds over an older epoch, or renews
        /// the same owner's claim at the same epoch; refused otherwise.
        pub async fn claim_lease(&self, scene: &str, epoch: u64, owner: &str) -> Result<bool, StoreError> {
            let done = sqlx::query(concat!(
                "INSERT INTO scene_leases (scene_id, epoch, owner, claimed_at_ms) VALUES ($1, $2, $3, $4) ",
                super::claim_wins!()
            ))
            .bind(scene)
            .bind(epoch as i64)
            .bind(owner)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
            Ok(done.rows_affected() == 1)
        }

        pub async fn lease(&self, scene: &str) -> Result<Option<(u64, String)>, StoreError> {
            let row: Option<(i64, String)> =
                sqlx::query_as("SELECT epoch, owner FROM scene_leases WHERE scene_id = $1")
                    .bind(scene)
                    .fetch_optional(&self.pool)
                    .await?;
            Ok(row.map(|(epoch, owner)| (epoch.max(0) as u64, owner)))
        }

        pub async fn release_lease(&self, scene: &str, epoch: u64, owner: &str) -> Result<bool, StoreError> {
            let done = sqlx::query(
                "UPDATE scene_leases SET owner = '' WHERE scene_id = $1 AND epoch = $2 AND owner = $3",
            )
            .bind(scene)
            .bind(epoch as i64)
            .bind(owner)
            .execute(&self.pool)
            .await?;
            Ok(done.rows_affected() == 1)
        }

        pub async fn admit_new_scene(
            &self,
            user: &str,
            minute: i64,
            scene: &str,
            limit: u64,
        ) -> Result<bool, StoreError> {
            // One user's new scenes of one minute are decided one at a time, so that
            // arrivals at once on several nodes cannot all find room under the limit.
            let mut tx = self.begin_write().await?;
            self.serialize_new_scenes(&mut tx, user, minute).await?;
            let inserted = sqlx::query(
                "INSERT INTO user_new_scenes (user_id, minute, scene_id)
                 SELECT $1, $2, $3
                 WHERE (SELECT count(*) FROM user_new_scenes WHERE user_id = $1 AND minute = $2) < $4
                 ON CONFLICT (user_id, minute, scene_id) DO NOTHING",
            )
            .bind(user)
            .bind(minute)
            .bind(scene)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?;
            let admitted = inserted.rows_affected() == 1 || {
                // Over the quota, or this scene was admitted already this minute.
                let counted: Option<bool> = sqlx::query_scalar(
                    "SELECT true FROM user_new_scenes WHERE user_id = $1 AND minute = $2 AND scene_id = $3",
                )
                .bind(user)
                .bind(minute)
                .bind(scene)
                .fetch_optional(&mut *tx)
                .await?;
                counted.is_some()
            };
            tx.commit().await?;
            Ok(admitted)
        }

        /// One statement (one snapshot, one round trip): every room load asks, and most
        /// scenes have no P1 row at all.
        pub async fn p1_content(&self, scene: &str) -> Result<Option<super::P1Rows>, StoreError> {
            let rows: Vec<(i64, Option<String>, Option<String>)> = sqlx::query_as(
                "SELECT s.content_version, b.block_type, b.text
                 FROM scenes s LEFT JOIN content_blocks b ON b.scene_id = s.id
                 WHERE s.id = $1 ORDER BY b.position",
            )
            .bind(scene)
            .fetch_all(&self.pool)
            .await?;
            let Some((version, _, _)) = rows.first() else {
                return Ok(None);
            };
            let version = *version;
            // A scene without blocks is one row with no block.
            let blocks = rows
                .into_iter()
                .filter_map(|(_, block_type, text)| Some((block_type?, text.unwrap_or_default())))
                .collect();
            Ok(Some((version, blocks)))
        }

        pub async fn p1_projection(&self, scene: &str, version: i64) -> Result<Option<String>, StoreError> {
            Ok(sqlx::query_scalar("SELECT blocks FROM p1_projections WHERE scene_id = $1 AND version = $2")
                .bind(scene)
                .bind(version)
                .fetch_optional(&self.pool)
                .await?)
        }

        pub async fn latest_p1_projection(&self, scene: &str) -> Result<Option<i64>, StoreError> {
            Ok(sqlx::query_scalar("SELECT MAX(version) FROM p1_projections WHERE scene_id = $1")
                .bind(scene)
                .fetch_one(&self.pool)
                .await?)
        }

        pub async fn record_p1_projection(&self, scene: &str, version: i64, blocks: &str) -> Result<(), StoreError> {
            sqlx::query(
                "INSERT INTO p1_projections (scene_id, version, blocks) VALUES ($1, $2, $3)
                 ON CONFLICT (scene_id, version) DO NOTHING",
            )
            .bind(scene)
            .bind(version)
            .bind(blocks)
            .execute(&self.pool)
            .await?;
            Ok(())
        }

        pub async fn write_p1_blocks(
            &self,
            scene: &str,
            owner: &str,
            epoch: u64,
            expected: i64,
            blocks: &[(String, String)],
            projection: &str,
        ) -> Result<P1Write, StoreError> {
            let mut tx = self.begin_write().await?;
            let holds: Option<i64> = sqlx::query_scalar(concat!(
                "SELECT epoch FROM scene_leases WHERE scene_id = $1 AND epoch = $2 AND owner = $3",
                $lock_lease
            ))
            .bind(scene)
            .bind(epoch as i64)
            .bind(owner)
            .fetch_optional(&mut *tx)
            .await?;
            if holds.is_none() {
                return Ok(P1Write::Fenced);
            }
            let version: Option<i64> = sqlx::query_scalar(
                "UPDATE scenes SET content_version = content_version + 1, updated_at = CURRENT_TIMESTAMP
                 WHERE id = $1 AND content_version = $2 RETURNING content_version",
            )
            .bind(scene)
            .bind(expected)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(version) = version else {
                let current: Option<i64> = sqlx::query_scalar("SELECT content_version FROM scenes WHERE id = $1")
                    .bind(scene)
                    .fetch_optional(&mut *tx)
                    .await?;
                return Ok(P1Write::Stale(current.unwrap_or(0).max(0) as u64));
            };
            sqlx::query("DELETE FROM content_blocks WHERE scene_id = $1")
                .bind(scene)
                .execute(&mut *tx)
                .await?;
            for (position, (block_type, text)) in blocks.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO content_blocks (scene_id, position, block_type, text) VALUES ($1, $2, $3, $4)",
                )
                .bind(scene)
                .bind(position as i32)
                .bind(block_type)
                .bind(text)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(
                "INSERT INTO p1_projections (scene_id, version, blocks) VALUES ($1, $2, $3)
                 ON CONFLICT (scene_id, version) DO UPDATE SET blocks = excluded.blocks",
            )
            .bind(scene)
            .bind(version)
            .bind(projection)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM p1_projections WHERE scene_id = $1 AND version <= $2")
                .bind(scene)
                .bind(version - P1_PROJECTIONS_KEPT)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(P1Write::Written(version.max(0) as u64))
        }

        pub async fn p1_version(&self, scene: &str) -> Result<Option<i64>, StoreError> {
            Ok(sqlx::query_scalar("SELECT content_version FROM scenes WHERE id = $1")
                .bind(scene)
                .fetch_optional(&self.pool)
                .await?)
        }

        pub async fn p1_scene_ids(&self, after: &str, limit: i64) -> Result<Vec<String>, StoreError> {
            Ok(sqlx::query_scalar("SELECT id FROM scenes WHERE id > $1 ORDER BY id LIMIT $2")
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?)
        }

        pub async fn has_state(&self, scene: &str) -> Result<bool, StoreError> {
            let found: Option<i32> = sqlx::query_scalar(
                "SELECT 1 WHERE EXISTS (SELECT 1 FROM scene_versions WHERE scene_id = $1)
                    OR EXISTS (SELECT 1 FROM scene_snapshots WHERE scene_id = $1)",
            )
            .bind(scene)
            .fetch_optional(&self.pool)
            .await?;
            Ok(found.is_some())
        }

        pub async fn add_user_bytes(&self, user: &str, hour: i64, bytes: i64) -> Result<u64, StoreError> {
            let total: i64 = sqlx::query_scalar(
                "INSERT INTO user_bytes (user_id, hour, bytes) VALUES ($1, $2, $3)
                 ON CONFLICT (user_id, hour) DO UPDATE SET bytes = user_bytes.bytes + excluded.bytes
                 RETURNING bytes",
            )
            .bind(user)
            .bind(hour)
            .bind(bytes)
            .fetch_one(&self.pool)
            .await?;
            Ok(total.max(0) as u64)
        }

        pub async fn collect_leases(&self, idle_before_ms: i64, limit: i64) -> Result<u64, StoreError> {
            // The conditions sit on the DELETE itself, so that a row claimed meanwhile (an
            // owner again, a new claim time) is re-checked and kept.
            let done = sqlx::query(
                "DELETE FROM scene_leases
                 WHERE owner = '' AND claimed_at_ms < $1
                   AND NOT EXISTS (SELECT 1 FROM scene_versions v WHERE v.scene_id = scene_leases.scene_id)
                   AND NOT EXISTS (SELECT 1 FROM scene_snapshots s WHERE s.scene_id = scene_leases.scene_id)
                   AND scene_id IN (SELECT scene_id FROM scene_leases
                                    WHERE owner = '' AND claimed_at_ms < $1 LIMIT $2)",
            )
            .bind(idle_before_ms)
            .bind(limit)
            .execute(&self.pool)
            .await?;
            for old_minutes in [
                "DELETE FROM user_new_scenes WHERE minute < $1",
                "DELETE FROM scene_creations WHERE minute < $1",
            ] {
                sqlx::query(old_minutes)
                    .bind(now_ms() / 60_000 - 60)
                    .execute(&self.pool)
                    .await?;
            }
            sqlx::query("DELETE FROM user_bytes WHERE hour < $1")
                .bind(now_ms() / 3_600_000 - 24)
                .execute(&self.pool)
                .await?;
            Ok(done.rows_affected())
        }

        pub async fn writers(&self, scene: &str) -> Result<Vec<(u64, String, u64)>, StoreError> {
            let rows: Vec<(i64, String, i64)> = sqlx::query_as(
                "SELECT seq, writer_node, epoch FROM scene_versions WHERE scene_id = $1 ORDER BY seq",
            )
            .bind(scene)
            .fetch_all(&self.pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|(seq, writer, epoch)| (seq.max(0) as u64, writer, epoch.max(0) as u64))
                .collect())
        }

        /// The row at a log position, as `(writer_node, epoch, data)`.
        pub async fn row_at(&self, scene: &str, seq: u64) -> Result<Option<(String, u64, Vec<u8>)>, StoreError> {
            let row = sqlx::query(
                "SELECT writer_node, epoch, data FROM scene_versions WHERE scene_id = $1 AND seq = $2",
            )
            .bind(scene)
            .bind(seq as i64)
            .fetch_optional(&self.pool)
            .await?;
            Ok(match row {
                Some(row) => Some((row.try_get(0)?, row.try_get::<i64, _>(1)? as u64, row.try_get(2)?)),
                None => None,
            })
        }

        pub async fn ping(&self) -> Result<(), StoreError> {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        }

        pub async fn newest_lease_epoch(&self) -> Result<i64, StoreError> {
            Ok(sqlx::query_scalar("SELECT COALESCE(MAX(epoch), 0) FROM scene_leases")
                .fetch_one(&self.pool)
                .await?)
        }
    };
}
use shared_queries;

/// Brings the schema of the store behind `$pool` up to this release (the migrations in
/// `$folder`). Migrations are additive (a release adds tables or columns and drops or
/// changes nothing an earlier release reads), so the previous release runs on a schema this
/// one migrated: rolling the nodes back needs no rollback of the database, and a rolling
/// upgrade runs both releases at once. An applied migration this release does not know is
/// therefore a later release's, not an error: [`note_newer_schema`] says so at start.
macro_rules! migrate {
    ($pool:expr, $folder:literal) => {{
        let mut migrator = sqlx::migrate!($folder);
        migrator.set_ignore_missing(true);
        migrator.run($pool).await?;
        let newest: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations")
            .fetch_one($pool)
            .await?;
        super::note_newer_schema(&migrator, newest);
    }};
}
use migrate;

pub mod history;
mod postgres;
mod sqlite;

pub use postgres::{connect_options as postgres_connect_options, IDLE_IN_TRANSACTION_LIMIT};

use crate::config::StoreLocation;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("cannot create data folder {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("the store did not answer in time")]
    Timeout,
    #[error("sequence number {0} does not fit the store")]
    SeqRange(u64),
    #[error("P1 content cannot be read: {0}")]
    Content(crate::content::blocks::BlockError),
    #[error("a recorded P1 version cannot be read: {0}")]
    Projection(String),
}

/// One line at start when the store was migrated by a later release than this one.
fn note_newer_schema(migrator: &sqlx::migrate::Migrator, newest_applied: Option<i64>) {
    let known = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    if let Some(applied) = newest_applied.filter(|&applied| applied > known) {
        tracing::warn!(
            applied,
            known,
            "the store's schema is from a later release than this node (a rollback or a rolling upgrade); its migrations are additive, so this node runs on it"
        );
    }
}

/// How many recent P1 content versions of a scene are remembered for merging writes.
pub const P1_PROJECTIONS_KEPT: i64 = 64;

/// A scene's content in the P1 product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct P1Content {
    pub version: u64,
    pub blocks: Vec<Block>,
}

/// A scene's P1 content version and `(block type, text)` rows, as the tables hold them.
pub type P1Rows = (i64, Vec<(String, String)>);

impl P1Content {
    fn from_rows(found: Option<P1Rows>) -> Result<Option<P1Content>, StoreError> {
        found
            .map(|(version, rows)| {
                let blocks = rows
                    .into_iter()
                    .map(|(block_type, text)| Ok(Block::new(block_type.parse()?, text)))
                    .collect::<Result<Vec<_>, crate::content::blocks::BlockError>>()
                    .map_err(StoreError::Content)?;
                Ok(P1Content {
                    version: version.max(0) as u64,
                    blocks,
                })
            })
            .transpose()
    }
}

/// The outcome of writing a scene back into P1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum P1Write {
    /// Written as this content version.
    Written(u64),
    /// This node no longer holds the scene's lease: nothing written.
    Fenced,
    /// P1 has moved on to this version since: nothing written.
    Stale(u64),
}

/// One committed batch of a scene: the unit the group-committer writes.
#[derive(Debug, Clone)]
pub struct LogAppend {
    pub scene: String,
    /// The scene's next log position; only the scene's owner assigns it.
    pub seq: u64,
    /// The placement epoch the writer holds the scene at.
    pub epoch: u64,
    /// yrs update, v1 encoding.
    pub data: Vec<u8>,
}

/// A full-state snapshot covering the log up to and including `upto_seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub upto_seq: u64,
    pub data: Vec<u8>,
}

/// One row of the log as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRow {
    pub seq: u64,
    pub data: Vec<u8>,
    pub created_at_ms: i64,
}

/// Asks the embedded store about many items (scenes, claims, reports) one after the
/// other: its queries cost no round trip, so there is nothing to batch.
async fn one_by_one<'a, I: ?Sized + 'a, T, Fut>(
    items: impl IntoIterator<Item = &'a I>,
    mut ask: impl FnMut(&'a I) -> Fut,
) -> Result<Vec<T>, StoreError>
where
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut answers = Vec::new();
    for item in items {
        answers.push(ask(item).await?);
    }
    Ok(answers)
}

/// What the store holds for a scene: the retained snapshots (newest first) and every log
/// row after the oldest of them, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredScene {
    pub snapshots: Vec<Snapshot>,
    pub rows: Vec<LogRow>,
}

impl StoredScene {
    /// Puts what a query returned in order: newest snapshot first, the log in order.
    fn sort(&mut self) {
        self.snapshots.sort_by_key(|s| std::cmp::Reverse(s.upto_seq));
        self.rows.sort_by_key(|r| r.seq);
    }

    /// The last log position used by this scene (0 when it was never written).
    pub fn last_seq(&self) -> u64 {
        let from_rows = self.rows.last().map_or(0, |r| r.seq);
        let from_snapshot = self.snapshots.first().map_or(0, |s| s.upto_seq);
        from_rows.max(from_snapshot)
    }

    /// Rows after `upto_seq`.
    pub fn tail_after(&self, upto_seq: u64) -> impl Iterator<Item = &LogRow> {
        self.rows.iter().filter(move |r| r.seq > upto_seq)
    }
}

/// The store the node writes to.
#[derive(Clone)]
pub enum Store {
    Postgres(postgres::PgStore),
    Sqlite(sqlite::SqliteStore),
}

impl Store {
    /// Opens the configured store and brings its schema up to date.
    pub async fn open(location: &StoreLocation) -> Result<Self, StoreError> {
        match location {
            StoreLocation::Postgres(url) => Ok(Self::Postgres(postgres::PgStore::open(url).await?)),
            StoreLocation::Sqlite(path) => Ok(Self::Sqlite(sqlite::SqliteStore::open(path).await?)),
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgres",
            Self::Sqlite(_) => "sqlite",
        }
    }

    /// Appends the batches of many scenes at once, each only if its writer holds the
    /// scene's lease at the batch's epoch. Returns the batches that were refused (lease
    /// lost, or position taken): another writer owns that scene now.
    pub async fn append(&self, writer_node: &str, batch: &[LogAppend]) -> Result<Vec<usize>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        for b in batch {
            to_i64(b.seq)?;
            to_i64(b.epoch)?;
        }
        let taken = match self {
            Self::Postgres(s) => s.append(writer_node, batch).await?,
            Self::Sqlite(s) => s.append(writer_node, batch).await?,
        };
        // The backends name the batches that may not have landed. A position holding this
        // very row (same writer, epoch and bytes) is stored, by this commit or by a retried
        // one whose answer was lost; anything else there means the batch is refused.
        let mut refused = Vec::new();
        for i in taken {
            let b = &batch[i];
            let stored = match self {
                Self::Postgres(s) => s.row_at(&b.scene, b.seq).await?,
                Self::Sqlite(s) => s.row_at(&b.scene, b.seq).await?,
            };
            let ours = stored
                .is_some_and(|(node, epoch, data)| node == writer_node && epoch == b.epoch && data == b.data);
            if !ours {
                refused.push(i);
            }
        }
        Ok(refused)
    }

    /// Claims the lease of `scene` for `owner` at `epoch`: over an older epoch, or at the
    /// same epoch when `owner` holds it or it was released (placement names one owner per
    /// epoch, so only that owner claims at it). Appends are accepted only from the lease
    /// holder at its epoch, so once a newer epoch is claimed a former owner (paused,
    /// partitioned) can never write again. Returns false when refused.
    pub async fn claim_lease(&self, scene: &str, epoch: u64, owner: &str) -> Result<bool, StoreError> {
        to_i64(epoch)?;
        match self {
            Self::Postgres(s) => s.claim_lease(scene, epoch, owner).await,
            Self::Sqlite(s) => s.claim_lease(scene, epoch, owner).await,
        }
    }

    /// Claims many leases for `owner` at once, each as [`Store::claim_lease`] would: one
    /// statement and one transaction on Postgres for a node taking over thousands of
    /// scenes. Answers in the order asked. A scene must appear at most once.
    pub async fn claim_leases(&self, claims: &[(String, u64)], owner: &str) -> Result<Vec<bool>, StoreError> {
        for (_, epoch) in claims {
            to_i64(*epoch)?;
        }
        match self {
            Self::Postgres(s) => s.claim_leases(claims, owner).await,
            Self::Sqlite(s) => one_by_one(claims, |(scene, epoch)| s.claim_lease(scene, *epoch, owner)).await,
        }
    }

    /// The lease of `scene` as `(epoch, owner)`; the owner is empty once released.
    pub async fn lease(&self, scene: &str) -> Result<Option<(u64, String)>, StoreError> {
        match self {
            Self::Postgres(s) => s.lease(scene).await,
            Self::Sqlite(s) => s.lease(scene).await,
        }
    }

    /// Gives up `owner`'s lease at `epoch` after its last write, so that the next owner
    /// need not wait for it. The epoch stays, so no older claim can succeed afterwards.
    pub async fn release_lease(&self, scene: &str, epoch: u64, owner: &str) -> Result<bool, StoreError> {
        to_i64(epoch)?;
        match self {
            Self::Postgres(s) => s.release_lease(scene, epoch, owner).await,
            Self::Sqlite(s) => s.release_lease(scene, epoch, owner).await,
        }
    }

    /// Whether `user` may bring `scene` into being in `minute` (minutes since the Unix
    /// epoch) under a quota of `limit` new scenes a minute, counted over every node of the
    /// cluster at once. A scene counts once however often it is asked for (two tabs, a
    /// retry); a refused one is not counted.
    pub async fn admit_new_scene(
        &self,
        user: &str,
        minute: i64,
        scene: &str,
        limit: u64,
    ) -> Result<bool, StoreError> {
        match self {
            Self::Postgres(s) => s.admit_new_scene(user, minute, scene, limit).await,
            Self::Sqlite(s) => s.admit_new_scene(user, minute, scene, limit).await,
        }
    }

    /// The scene's blocks in the P1 product's `content_blocks`, in order, and its content
    /// version; `None` when P1 has no such scene. A block of a type the editor does not
    /// know is an error: seeding without it would lose it.
    pub async fn p1_content(&self, scene: &str) -> Result<Option<P1Content>, StoreError> {
        let found = match self {
            Self::Postgres(s) => s.p1_content(scene).await?,
            Self::Sqlite(s) => s.p1_content(scene).await?,
        };
        P1Content::from_rows(found)
    }

    /// [`Store::p1_content`] for many scenes, in the order asked (one statement on
    /// Postgres); a scene whose blocks cannot be read has its own error.
    pub async fn p1_contents(
        &self,
        scenes: &[String],
    ) -> Result<Vec<Result<Option<P1Content>, StoreError>>, StoreError> {
        let found = match self {
            Self::Postgres(s) => s.p1_contents(scenes).await?,
            Self::Sqlite(s) => one_by_one(scenes, |scene| s.p1_content(scene)).await?,
        };
        Ok(found.into_iter().map(P1Content::from_rows).collect())
    }

    /// The scene's blocks at P1 content version `version`, if Troupe wrote or saw that
    /// version recently (the last [`P1_PROJECTIONS_KEPT`] are kept).
    pub async fn p1_projection(&self, scene: &str, version: u64) -> Result<Option<Vec<Block>>, StoreError> {
        let version = to_i64(version)?;
        let json = match self {
            Self::Postgres(s) => s.p1_projection(scene, version).await?,
            Self::Sqlite(s) => s.p1_projection(scene, version).await?,
        };
        json.map(|json| serde_json::from_str(&json).map_err(|e| StoreError::Projection(e.to_string())))
            .transpose()
    }

    /// The newest P1 content version Troupe recorded for the scene.
    pub async fn latest_p1_projection(&self, scene: &str) -> Result<Option<u64>, StoreError> {
        let version = match self {
            Self::Postgres(s) => s.latest_p1_projection(scene).await?,
            Self::Sqlite(s) => s.latest_p1_projection(scene).await?,
        };
        Ok(version.map(|v| v.max(0) as u64))
    }

    /// Remembers the blocks of P1 content version `version` (when Troupe read it), so that
    /// a write based on it can be merged. An existing record stays.
    pub async fn record_p1_projection(
        &self,
        scene: &str,
        version: u64,
        blocks: &[Block],
    ) -> Result<(), StoreError> {
        let version = to_i64(version)?;
        let json = serde_json::to_string(blocks).map_err(|e| StoreError::Projection(e.to_string()))?;
        match self {
            Self::Postgres(s) => s.record_p1_projection(scene, version, &json).await,
            Self::Sqlite(s) => s.record_p1_projection(scene, version, &json).await,
        }
    }

    /// Writes a live scene's blocks into P1's `content_blocks` (all of them, in order) as
    /// the version after `expected`, only while `owner` holds the scene's lease at `epoch`
    /// (fenced like every other write) and P1 is still at `expected` (a write P1 made in
    /// between is merged first, never overwritten).
    pub async fn write_p1_blocks(
        &self,
        scene: &str,
        owner: &str,
        epoch: u64,
        expected: u64,
        blocks: &[Block],
    ) -> Result<P1Write, StoreError> {
        to_i64(epoch)?;
        let expected = to_i64(expected)?;
        let rows: Vec<(String, String)> = blocks
            .iter()
            .map(|b| (b.block_type.as_str().to_string(), b.text.clone()))
            .collect();
        let json = serde_json::to_string(blocks).map_err(|e| StoreError::Projection(e.to_string()))?;
        match self {
            Self::Postgres(s) => {
                s.write_p1_blocks(scene, owner, epoch, expected, &rows, &json)
                    .await
            }
            Self::Sqlite(s) => {
                s.write_p1_blocks(scene, owner, epoch, expected, &rows, &json)
                    .await
            }
        }
    }

    /// P1's `content_version` of the scene (`None` when P1 has no such scene).
    pub async fn p1_version(&self, scene: &str) -> Result<Option<i64>, StoreError> {
        match self {
            Self::Postgres(s) => s.p1_version(scene).await,
            Self::Sqlite(s) => s.p1_version(scene).await,
        }
    }

    /// The ids of P1's scenes after `after`, in order, at most `limit` (for walking them all).
    pub async fn p1_scene_ids(&self, after: &str, limit: i64) -> Result<Vec<String>, StoreError> {
        match self {
            Self::Postgres(s) => s.p1_scene_ids(after, limit).await,
            Self::Sqlite(s) => s.p1_scene_ids(after, limit).await,
        }
    }

    /// Whether the scene has Yjs state of its own (a log row or a snapshot).
    pub async fn has_state(&self, scene: &str) -> Result<bool, StoreError> {
        match self {
            Self::Postgres(s) => s.has_state(scene).await,
            Self::Sqlite(s) => s.has_state(scene).await,
        }
    }

    /// Adds the bytes of edits each user wrote in an hour (hours since the Unix epoch), for
    /// every node of the cluster at once, and returns each user's total for that hour: one
    /// statement on Postgres; answers in the order asked. A user must appear at most once.
    pub async fn add_user_bytes_many(
        &self,
        reports: &[(String, (i64, u64))],
    ) -> Result<Vec<u64>, StoreError> {
        for (_, (_, bytes)) in reports {
            to_i64(*bytes)?;
        }
        match self {
            Self::Postgres(s) => s.add_user_bytes_many(reports).await,
            Self::Sqlite(s) => {
                one_by_one(reports, |(user, (hour, bytes))| {
                    s.add_user_bytes(user, *hour, *bytes as i64)
                })
                .await
            }
        }
    }

    /// Deletes up to `limit` lease rows of scenes that never got content (no log rows, no
    /// snapshots: opened and left, or opened by a flood of random ids), released and not
    /// claimed since `idle_before_ms`. Safe for the fence: a released lease has no owner
    /// that could still append, and such a scene, claimed again, starts as a new one would.
    /// Also forgets new-scene counts older than an hour and byte counts older than a day. Returns the leases deleted.
    pub async fn collect_leases(&self, idle_before_ms: i64, limit: i64) -> Result<u64, StoreError> {
        match self {
            Self::Postgres(s) => s.collect_leases(idle_before_ms, limit).await,
            Self::Sqlite(s) => s.collect_leases(idle_before_ms, limit).await,
        }
    }

    /// Who wrote each log row still kept, as `(seq, writer_node, epoch)` in log order: the
    /// epochs of one scene's log never go down, and each epoch has one writer.
    pub async fn writers(&self, scene: &str) -> Result<Vec<(u64, String, u64)>, StoreError> {
        match self {
            Self::Postgres(s) => s.writers(scene).await,
            Self::Sqlite(s) => s.writers(scene).await,
        }
    }

    /// Which of `scenes` `owner` no longer holds the lease of (usually none: the answer
    /// stays small however many scenes the node serves).
    pub async fn leases_lost(&self, owner: &str, scenes: &[String]) -> Result<Vec<String>, StoreError> {
        if scenes.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Self::Postgres(s) => s.leases_lost(owner, scenes).await,
            Self::Sqlite(s) => s.leases_lost(owner, scenes).await,
        }
    }

    /// Reads what is needed to rebuild a scene.
    pub async fn load(&self, scene: &str) -> Result<StoredScene, StoreError> {
        match self {
            Self::Postgres(s) => s.load(scene).await,
            Self::Sqlite(s) => s.load(scene).await,
        }
    }

    /// [`Store::load`] for many scenes, in the order asked: one statement on Postgres (a
    /// node taking over a failed node's scenes loads thousands at once), one by one on the
    /// embedded store, whose queries cost no round trip.
    pub async fn load_many(&self, scenes: &[String]) -> Result<Vec<StoredScene>, StoreError> {
        match self {
            Self::Postgres(s) => s.load_many(scenes).await,
            Self::Sqlite(s) => one_by_one(scenes, |scene| s.load(scene)).await,
        }
    }

    /// [`Store::lease`] for many scenes, in the order asked (one statement on Postgres).
    pub async fn leases(&self, scenes: &[String]) -> Result<Vec<Option<(u64, String)>>, StoreError> {
        match self {
            Self::Postgres(s) => s.leases(scenes).await,
            Self::Sqlite(s) => one_by_one(scenes, |scene| s.lease(scene)).await,
        }
    }

    /// [`Store::release_lease`] for many scenes at their epochs, in the order asked (one
    /// statement on Postgres): a node handing a returning node its ~2,000 scenes back would
    /// otherwise queue as many statements on its pool. Each scene at most once.
    pub async fn release_leases(
        &self,
        leases: &[(String, u64)],
        owner: &str,
    ) -> Result<Vec<bool>, StoreError> {
        for (_, epoch) in leases {
            to_i64(*epoch)?;
        }
        match self {
            Self::Postgres(s) => s.release_leases(leases, owner).await,
            Self::Sqlite(s) => {
                one_by_one(leases, |(scene, epoch)| s.release_lease(scene, *epoch, owner)).await
            }
        }
    }

    /// Writes a snapshot and prunes what the retention policy no longer needs.
    /// Only the lease holder at `epoch` writes; returns false when `owner` lost the lease.
    pub async fn write_snapshot(
        &self,
        scene: &str,
        snapshot: &Snapshot,
        owner: &str,
        epoch: u64,
    ) -> Result<bool, StoreError> {
        to_i64(snapshot.upto_seq)?;
        to_i64(epoch)?;
        match self {
            Self::Postgres(s) => s.write_snapshot(scene, snapshot, owner, epoch).await,
            Self::Sqlite(s) => s.write_snapshot(scene, snapshot, owner, epoch).await,
        }
    }

    /// The newest epoch any scene's lease was claimed at (0 for none): a cluster's
    /// placement epoch must be above it for its claims to win (see `epoch_floor`).
    pub async fn newest_lease_epoch(&self) -> Result<u64, StoreError> {
        let newest = match self {
            Self::Postgres(s) => s.newest_lease_epoch().await?,
            Self::Sqlite(s) => s.newest_lease_epoch().await?,
        };
        Ok(u64::try_from(newest).unwrap_or(0))
    }

    /// Whether the store answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Self::Postgres(s) => s.ping().await,
            Self::Sqlite(s) => s.ping().await,
        }
    }
}

fn to_i64(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::SeqRange(value))
}

/// Wall-clock milliseconds as the store's `BIGINT` columns keep them.
fn now_ms() -> i64 {
    i64::try_from(troupe_proto::clock::now_ms()).unwrap_or(i64::MAX)
}
