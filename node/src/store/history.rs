//! A scene's history: whole-document versions to list, read and restore.
//!
//! Compaction snapshots are pruned to the newest two, so history keeps copies of its own
//! (`scene_history`): an `auto` version from a compaction snapshot at most once per
//! `TROUPE_HISTORY_EVERY` (the newest [`AUTO_VERSIONS_KEPT`] kept), a `named` one when an
//! editor saves one, and a `before_restore` one holding what a restore replaced, so that
//! any restore can be undone (of those two, the newest [`KEPT_VERSIONS_KEPT`] are kept). Versions are numbered per scene, counting up; every write is
//! fenced by the scene's lease like the log's.

use super::{to_i64, Store, StoreError};

/// How many automatic versions of a scene are kept.
pub const AUTO_VERSIONS_KEPT: i64 = 100;

/// How many named and before-restore versions of a scene are kept: an editor can save (or
/// restore) as often as they like, each a whole copy of the scene, so the oldest go.
pub const KEPT_VERSIONS_KEPT: i64 = 200;

/// Why a version was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionKind {
    /// Taken from a compaction snapshot.
    Auto,
    /// Saved by an editor, with a name.
    Named,
    /// The document as it was just before a restore replaced it.
    BeforeRestore,
}

impl VersionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Named => "named",
            Self::BeforeRestore => "before_restore",
        }
    }

    fn parse(kind: &str) -> Option<Self> {
        [Self::Auto, Self::Named, Self::BeforeRestore]
            .into_iter()
            .find(|k| k.as_str() == kind)
    }
}

/// A version as listed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VersionInfo {
    pub version: u64,
    pub kind: VersionKind,
    pub name: Option<String>,
    pub created_by: Option<String>,
    /// The last log position the version holds.
    pub upto_seq: u64,
    pub created_at_ms: i64,
    /// Size of the stored document.
    pub bytes: u64,
}

/// A version to keep.
#[derive(Debug, Clone)]
pub struct NewVersion<'a> {
    pub kind: VersionKind,
    pub name: Option<&'a str>,
    pub created_by: Option<&'a str>,
    pub upto_seq: u64,
    /// The whole document, as a yrs update (v1).
    pub data: &'a [u8],
}

/// The history queries, the same SQL on both backends (see `shared_queries`).
macro_rules! history_queries {
    ($lock_lease:literal) => {
        pub async fn add_version(
            &self,
            scene: &str,
            owner: &str,
            epoch: i64,
            new: &crate::store::history::NewVersion<'_>,
            auto_gap_ms: i64,
        ) -> Result<Option<i64>, crate::store::StoreError> {
            use crate::store::history::{VersionKind, AUTO_VERSIONS_KEPT, KEPT_VERSIONS_KEPT};
            let mut tx = self.begin_write().await?;
            let holds: Option<i64> = sqlx::query_scalar(concat!(
                "SELECT epoch FROM scene_leases WHERE scene_id = $1 AND epoch = $2 AND owner = $3",
                $lock_lease
            ))
            .bind(scene)
            .bind(epoch)
            .bind(owner)
            .fetch_optional(&mut *tx)
            .await?;
            if holds.is_none() {
                return Ok(None);
            }
            let now = crate::store::now_ms();
            if new.kind == VersionKind::Auto {
                let last: Option<(i64, i64)> = sqlx::query_as(
                    "SELECT created_at_ms, upto_seq FROM scene_history WHERE scene_id = $1 AND kind = 'auto'
                     ORDER BY version DESC LIMIT 1",
                )
                .bind(scene)
                .fetch_optional(&mut *tx)
                .await?;
                if last.is_some_and(|(at, upto)| now - at < auto_gap_ms || upto >= new.upto_seq as i64) {
                    return Ok(None);
                }
            }
            let version: i64 = sqlx::query_scalar(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM scene_history WHERE scene_id = $1",
            )
            .bind(scene)
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO scene_history (scene_id, version, kind, name, created_by, upto_seq, data, created_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(scene)
            .bind(version)
            .bind(new.kind.as_str())
            .bind(new.name)
            .bind(new.created_by)
            .bind(new.upto_seq as i64)
            .bind(new.data)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            // Each kind of version is bounded: automatic ones by their own count, the others
            // (named, before a restore) together.
            let (is_auto, kept) = if new.kind == VersionKind::Auto {
                (true, AUTO_VERSIONS_KEPT)
            } else {
                (false, KEPT_VERSIONS_KEPT)
            };
            sqlx::query(
                "DELETE FROM scene_history WHERE scene_id = $1 AND (kind = 'auto') = $2 AND version <= (
                     SELECT version FROM scene_history WHERE scene_id = $1 AND (kind = 'auto') = $2
                     ORDER BY version DESC LIMIT 1 OFFSET $3)",
            )
            .bind(scene)
            .bind(is_auto)
            .bind(kept)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Some(version))
        }

        pub async fn versions(
            &self,
            scene: &str,
        ) -> Result<Vec<(i64, String, Option<String>, Option<String>, i64, i64, i64)>, crate::store::StoreError> {
            Ok(sqlx::query_as(
                "SELECT version, kind, name, created_by, upto_seq, created_at_ms, CAST(LENGTH(data) AS BIGINT)
                 FROM scene_history WHERE scene_id = $1 ORDER BY version DESC",
            )
            .bind(scene)
            .fetch_all(&self.pool)
            .await?)
        }

        pub async fn version_data(&self, scene: &str, version: i64) -> Result<Option<Vec<u8>>, crate::store::StoreError> {
            Ok(
                sqlx::query_scalar("SELECT data FROM scene_history WHERE scene_id = $1 AND version = $2")
                    .bind(scene)
                    .bind(version)
                    .fetch_optional(&self.pool)
                    .await?,
            )
        }
    };
}
pub(super) use history_queries;

impl Store {
    /// Keeps a version of the scene, only while `owner` holds its lease at `epoch`. An
    /// automatic one is skipped when the last was taken less than `auto_gap` ago or holds
    /// as much of the log. Returns the version's number, `None` when nothing was kept.
    pub async fn add_version(
        &self,
        scene: &str,
        owner: &str,
        epoch: u64,
        new: &NewVersion<'_>,
        auto_gap: std::time::Duration,
    ) -> Result<Option<u64>, StoreError> {
        let epoch = to_i64(epoch)?;
        to_i64(new.upto_seq)?;
        let gap = i64::try_from(auto_gap.as_millis()).unwrap_or(i64::MAX);
        // Two versions of one scene numbered at once (a save racing a compaction) take
        // the same number; the loser tries again with the next.
        let mut attempts = 0;
        loop {
            let added = match self {
                Self::Postgres(s) => s.add_version(scene, owner, epoch, new, gap).await,
                Self::Sqlite(s) => s.add_version(scene, owner, epoch, new, gap).await,
            };
            match added {
                Err(StoreError::Database(sqlx::Error::Database(e)))
                    if e.is_unique_violation() && attempts < 3 =>
                {
                    attempts += 1;
                }
                other => return other.map(|v| v.map(|v| v.max(0) as u64)),
            }
        }
    }

    /// The scene's versions, newest first.
    pub async fn versions(&self, scene: &str) -> Result<Vec<VersionInfo>, StoreError> {
        let rows = match self {
            Self::Postgres(s) => s.versions(scene).await?,
            Self::Sqlite(s) => s.versions(scene).await?,
        };
        Ok(rows
            .into_iter()
            .filter_map(
                |(version, kind, name, created_by, upto_seq, created_at_ms, bytes)| {
                    Some(VersionInfo {
                        version: version.max(0) as u64,
                        kind: VersionKind::parse(&kind)?,
                        name,
                        created_by,
                        upto_seq: upto_seq.max(0) as u64,
                        created_at_ms,
                        bytes: bytes.max(0) as u64,
                    })
                },
            )
            .collect())
    }

    /// The document of one version (a yrs update, v1), if the scene has it.
    pub async fn version_data(&self, scene: &str, version: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let Ok(version) = i64::try_from(version) else {
            return Ok(None);
        };
        match self {
            Self::Postgres(s) => s.version_data(scene, version).await,
            Self::Sqlite(s) => s.version_data(scene, version).await,
        }
    }
}
