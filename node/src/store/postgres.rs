//! Postgres backend: the whole group commit is one `INSERT … SELECT FROM UNNEST`, a single
//! round trip and a single transaction for the pending batches of every room.
//!
//! The lease check locks each lease row it reads (`FOR SHARE`). Under READ COMMITTED a
//! plain `EXISTS` reads the lease as of the statement's start and locks nothing, so a new
//! owner's claim could commit while a former owner's append was still running, and the
//! append commit after it. With the lock, a claim waits until such an append has
//! committed (it happened before the claim), and an append that starts after a claim
//! re-reads the claimed row and is refused.

use std::time::Duration;

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::postgres::{PgArguments, PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Arguments, ConnectOptions, Connection, Row};
use tokio::sync::Mutex;

use super::{now_ms, LogAppend, LogRow, P1Write, Snapshot, StoreError, StoredScene, P1_PROJECTIONS_KEPT};

/// A group commit that takes longer than this is abandoned and retried on a new connection.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest one of this node's transactions may sit idle in Postgres before Postgres ends
/// the session. A write transaction locks its scene's lease row (`FOR SHARE`) and then
/// sends statement after statement, never waiting on anything else in between; a node
/// frozen inside one (a stopped process, a paused VM) would keep that lock, and the new
/// owner's claim would wait until the frozen node resumed, however long. A second is far
/// above the gap between two statements and below the time a frozen node is declared dead.
pub const IDLE_IN_TRANSACTION_LIMIT: Duration = Duration::from_secs(1);

/// How every connection of the store is made: `url` plus the session settings the store
/// relies on (see [`IDLE_IN_TRANSACTION_LIMIT`]). Other settings in the URL's own
/// `options` parameter are kept; this one is the store's.
pub fn connect_options(url: &str) -> Result<PgConnectOptions, StoreError> {
    let options: PgConnectOptions = url.parse()?;
    let idle_ms = IDLE_IN_TRANSACTION_LIMIT.as_millis().to_string();
    Ok(options.options([("idle_in_transaction_session_timeout", idle_ms.as_str())]))
}

/// The group commit: every row whose writer holds its scene's lease at the row's epoch, in
/// one statement. `$1`–`$6`: scenes, positions, epochs, writer, update bytes, time.
macro_rules! append_sql {
    () => {
        "INSERT INTO scene_versions (scene_id, seq, epoch, writer_node, data, created_at_ms)
         SELECT s, q, e, $4, d, $6
         FROM UNNEST($1::text[], $2::int8[], $3::int8[], $5::bytea[]) AS t(s, q, e, d)
         WHERE EXISTS (SELECT 1 FROM scene_leases l
                       WHERE l.scene_id = t.s AND l.epoch = t.e AND l.owner = $4
                       FOR SHARE)"
    };
}
const APPEND: &str = append_sql!();
/// The group commit again after a taken position failed it: the taken rows are skipped.
const APPEND_SKIPPING_TAKEN: &str = concat!(append_sql!(), " ON CONFLICT (scene_id, seq) DO NOTHING");

/// The group commit's arguments (`$1`–`$6`), their buffer sized once for the whole batch:
/// bound one by one, it would grow by doubling, a reallocation each time.
fn append_arguments(
    scenes: &[&str],
    seqs: &[i64],
    epochs: &[i64],
    writer_node: &str,
    data: &[&[u8]],
) -> Result<PgArguments, StoreError> {
    // Each array element has a 4-byte length; each array a header of at most 24 bytes.
    let bytes = scenes.iter().map(|s| s.len() + 4).sum::<usize>()
        + data.iter().map(|d| d.len() + 4).sum::<usize>()
        + 2 * 12 * seqs.len()
        + writer_node.len()
        + 6 * 4
        + 4 * 24
        + 8;
    let mut arguments = PgArguments::default();
    arguments.reserve(6, bytes);
    let encoded = |e| StoreError::Database(sqlx::Error::Encode(e));
    arguments.add(scenes).map_err(encoded)?;
    arguments.add(seqs).map_err(encoded)?;
    arguments.add(epochs).map_err(encoded)?;
    arguments.add(writer_node).map_err(encoded)?;
    arguments.add(data).map_err(encoded)?;
    arguments.add(now_ms()).map_err(encoded)?;
    Ok(arguments)
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.is_unique_violation())
}

/// The group committer's connection: as [`connect_options`], and the commit's plan is made
/// once. Left to choose, Postgres plans the statement anew for every commit (its estimate
/// for a plan made for the batch's own arrays is lower than for one made for any arrays),
/// although both plans are the same: a lease probe by key and an insert per row. Planning
/// cost as much as running a five-row commit.
fn appender_options(options: &PgConnectOptions) -> PgConnectOptions {
    options
        .clone()
        .options([("plan_cache_mode", "force_generic_plan")])
}

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// How the group committer (re)connects: [`appender_options`].
    appender_options: Arc<PgConnectOptions>,
    /// The group committer's own connection: pool check-out and check-in would add work
    /// (and a round trip) to every commit. Reconnected after an error.
    appender: Arc<Mutex<Option<PgConnection>>>,
}

impl PgStore {
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = connect_options(url)?;
        // One direct connection first: its error says why (refused, auth, unknown
        // database), where the pool would only report a time-out.
        let appender_options = appender_options(&options);
        let first = tokio::time::timeout(Duration::from_secs(10), appender_options.connect())
            .await
            .map_err(|_| StoreError::Timeout)??;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            // A failed query surfaces as an error and is retried by the caller; a ping
            // before every group commit would double its round trips.
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        super::migrate!(&pool, "../migrations/postgres");
        Ok(Self {
            pool,
            appender_options: Arc::new(appender_options),
            appender: Arc::new(Mutex::new(Some(first))),
        })
    }

    pub async fn append(&self, writer_node: &str, batch: &[LogAppend]) -> Result<Vec<usize>, StoreError> {
        // In scene order, as lease claims lock them (see `claim_leases`).
        let mut sorted: Vec<&LogAppend> = batch.iter().collect();
        sorted.sort_by(|a, b| a.scene.cmp(&b.scene));
        let scenes: Vec<&str> = sorted.iter().map(|b| b.scene.as_str()).collect();
        let seqs: Vec<i64> = sorted.iter().map(|b| b.seq as i64).collect();
        let epochs: Vec<i64> = sorted.iter().map(|b| b.epoch as i64).collect();
        let data: Vec<&[u8]> = sorted.iter().map(|b| b.data.as_slice()).collect();
        let mut appender = self.appender.lock().await;
        let conn = match appender.as_mut() {
            Some(conn) => conn,
            None => appender.insert(self.appender_options.connect().await?),
        };
        // Most commits take only free positions: the plain insert skips the speculative
        // insertion `ON CONFLICT` costs on every row (an index probe and a WAL record).
        // A taken position (a retried batch that had landed, another writer's row) fails
        // it whole, and the batch goes again skipping the taken ones.
        let mut skip_taken = false;
        let inserted = loop {
            let sql = if skip_taken { APPEND_SKIPPING_TAKEN } else { APPEND };
            let arguments = append_arguments(&scenes, &seqs, &epochs, writer_node, &data)?;
            let inserted = sqlx::query_with(sql, arguments).execute(&mut *conn);
            match tokio::time::timeout(COMMIT_TIMEOUT, inserted).await {
                Ok(Ok(done)) => break done.rows_affected(),
                Ok(Err(error)) if !skip_taken && is_unique_violation(&error) => skip_taken = true,
                Ok(Err(error)) => {
                    // The connection may be broken; the next commit opens a fresh one.
                    if let Some(conn) = appender.take() {
                        let _ = tokio::time::timeout(Duration::from_secs(1), conn.close()).await;
                    }
                    return Err(error.into());
                }
                Err(_) => {
                    // No answer: the outcome is unknown, so the caller retries the batch
                    // (rows that did land are then recognised as ours, see `Store::append`).
                    appender.take();
                    return Err(StoreError::Timeout);
                }
            }
        };
        // The common case: every row landed. Otherwise a position was taken or a lease
        // lost, and `Store::append` looks up which rows are not ours.
        if inserted == batch.len() as u64 {
            Ok(Vec::new())
        } else {
            Ok((0..batch.len()).collect())
        }
    }

    pub async fn claim_leases(&self, claims: &[(String, u64)], owner: &str) -> Result<Vec<bool>, StoreError> {
        // In scene order, as the group commit locks them: two statements that lock several
        // lease rows never wait on each other in a cycle.
        let mut order: Vec<usize> = (0..claims.len()).collect();
        order.sort_by(|&a, &b| claims[a].0.cmp(&claims[b].0));
        let scenes: Vec<&str> = order.iter().map(|&i| claims[i].0.as_str()).collect();
        let epochs: Vec<i64> = order.iter().map(|&i| claims[i].1 as i64).collect();
        let claimed: Vec<String> = sqlx::query_scalar(concat!(
            "INSERT INTO scene_leases (scene_id, epoch, owner, claimed_at_ms)
             SELECT s, e, $3, $4 FROM UNNEST($1::text[], $2::int8[]) WITH ORDINALITY AS t(s, e, n)
             ORDER BY n ",
            super::claim_wins!(),
            " RETURNING scene_id"
        ))
        .bind(&scenes)
        .bind(&epochs)
        .bind(owner)
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await?;
        let claimed: std::collections::HashSet<String> = claimed.into_iter().collect();
        Ok(claims.iter().map(|(scene, _)| claimed.contains(scene)).collect())
    }

    /// Releases many leases in one statement, locking their rows in scene order as every
    /// statement that locks several does.
    pub async fn release_leases(
        &self,
        leases: &[(String, u64)],
        owner: &str,
    ) -> Result<Vec<bool>, StoreError> {
        let scenes: Vec<&str> = leases.iter().map(|(scene, _)| scene.as_str()).collect();
        let epochs: Vec<i64> = leases.iter().map(|(_, epoch)| *epoch as i64).collect();
        let released: Vec<String> = sqlx::query_scalar(
            "WITH mine AS (
                 SELECT l.scene_id FROM scene_leases l
                 JOIN UNNEST($1::text[], $2::int8[]) AS r(s, e) ON l.scene_id = r.s AND l.epoch = r.e
                 WHERE l.owner = $3
                 ORDER BY l.scene_id
                 FOR UPDATE OF l
             )
             UPDATE scene_leases SET owner = '' FROM mine
             WHERE scene_leases.scene_id = mine.scene_id
             RETURNING scene_leases.scene_id",
        )
        .bind(&scenes)
        .bind(&epochs)
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        let released: std::collections::HashSet<String> = released.into_iter().collect();
        Ok(scenes.iter().map(|scene| released.contains(*scene)).collect())
    }

    /// Quota reports of many users in one statement (each user once), in the order asked.
    pub async fn add_user_bytes_many(
        &self,
        reports: &[(String, (i64, u64))],
    ) -> Result<Vec<u64>, StoreError> {
        let users: Vec<&str> = reports.iter().map(|(user, _)| user.as_str()).collect();
        let hours: Vec<i64> = reports.iter().map(|(_, (hour, _))| *hour).collect();
        let bytes: Vec<i64> = reports.iter().map(|(_, (_, bytes))| *bytes as i64).collect();
        let totals: Vec<(String, i64)> = sqlx::query_as(
            "INSERT INTO user_bytes (user_id, hour, bytes)
             SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[])
             ON CONFLICT (user_id, hour) DO UPDATE SET bytes = user_bytes.bytes + excluded.bytes
             RETURNING user_id, bytes",
        )
        .bind(&users)
        .bind(&hours)
        .bind(&bytes)
        .fetch_all(&self.pool)
        .await?;
        let totals: HashMap<String, i64> = totals.into_iter().collect();
        Ok(users
            .iter()
            .map(|user| totals.get(*user).map_or(0, |total| (*total).max(0) as u64))
            .collect())
    }

    /// The leases of many scenes in one statement, in the order asked.
    pub async fn leases(&self, scenes: &[String]) -> Result<Vec<Option<(u64, String)>>, StoreError> {
        let found: Vec<(String, i64, String)> =
            sqlx::query_as("SELECT scene_id, epoch, owner FROM scene_leases WHERE scene_id = ANY($1)")
                .bind(scenes)
                .fetch_all(&self.pool)
                .await?;
        let found = found
            .into_iter()
            .map(|(scene, epoch, owner)| (scene, Some((epoch.max(0) as u64, owner))))
            .collect();
        Ok(in_order(scenes, found))
    }

    /// [`p1_content`](Self::p1_content) for many scenes in one statement, in the order asked.
    pub async fn p1_contents(&self, scenes: &[String]) -> Result<Vec<Option<super::P1Rows>>, StoreError> {
        let rows: Vec<(String, i64, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT s.id, s.content_version, b.block_type, b.text
             FROM scenes s LEFT JOIN content_blocks b ON b.scene_id = s.id
             WHERE s.id = ANY($1) ORDER BY s.id, b.position",
        )
        .bind(scenes)
        .fetch_all(&self.pool)
        .await?;
        let mut found: HashMap<String, Option<super::P1Rows>> = HashMap::new();
        for (scene, version, block_type, text) in rows {
            let (_, blocks) = found
                .entry(scene)
                .or_default()
                .get_or_insert_with(|| (version, Vec::new()));
            // A scene without blocks is one row with no block.
            if let Some(block_type) = block_type {
                blocks.push((block_type, text.unwrap_or_default()));
            }
        }
        Ok(in_order(scenes, found))
    }

    /// [`load`](Self::load) for many scenes in one statement (one snapshot of the
    /// database), in the order asked.
    pub async fn load_many(&self, scenes: &[String]) -> Result<Vec<StoredScene>, StoreError> {
        let found = sqlx::query(
            "WITH snaps AS (
                 SELECT scene_id, upto_seq, data FROM (
                     SELECT scene_id, upto_seq, data,
                            row_number() OVER (PARTITION BY scene_id ORDER BY upto_seq DESC) AS newest
                     FROM scene_snapshots WHERE scene_id = ANY($1)) ranked
                 WHERE newest <= 2),
             covered AS (SELECT scene_id, min(upto_seq) AS upto FROM snaps GROUP BY scene_id)
             SELECT scene_id, 0 AS is_row, upto_seq AS seq, data, 0::int8 AS created_at_ms FROM snaps
             UNION ALL
             SELECT v.scene_id, 1, v.seq, v.data, v.created_at_ms
             FROM scene_versions v LEFT JOIN covered c ON c.scene_id = v.scene_id
             WHERE v.scene_id = ANY($1) AND v.seq > COALESCE(c.upto, 0)",
        )
        .bind(scenes)
        .fetch_all(&self.pool)
        .await?;
        let mut stored: HashMap<String, StoredScene> = HashMap::new();
        for row in found {
            let scene: String = row.try_get(0)?;
            let seq = row.try_get::<i64, _>(2)? as u64;
            let data = row.try_get(3)?;
            let entry = stored.entry(scene).or_default();
            if row.try_get::<i32, _>(1)? == 0 {
                entry.snapshots.push(Snapshot { upto_seq: seq, data });
            } else {
                entry.rows.push(LogRow {
                    seq,
                    data,
                    created_at_ms: row.try_get(4)?,
                });
            }
        }
        for scene in stored.values_mut() {
            scene.sort();
        }
        Ok(in_order(scenes, stored))
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        Ok(self.pool.begin().await?)
    }

    /// Holds, until `tx` ends, the lock on `user`'s new scenes of `minute` (an advisory
    /// lock: the count's rows are not there to lock until they are inserted).
    async fn serialize_new_scenes(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        user: &str,
        minute: i64,
    ) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, $2))")
            .bind(user)
            .bind(minute)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    pub async fn leases_lost(&self, owner: &str, scenes: &[String]) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT s FROM UNNEST($2::text[]) AS s
             WHERE NOT EXISTS (SELECT 1 FROM scene_leases l WHERE l.scene_id = s AND l.owner = $1)",
        )
        .bind(owner)
        .bind(scenes)
        .fetch_all(&self.pool)
        .await?)
    }

    super::shared_queries!(" FOR SHARE");
    super::history::history_queries!(" FOR SHARE");
}

/// The answers to `scenes`, in the order asked, from what one statement `found` for each
/// scene: a scene found nothing for gets the default (none, empty), and a scene asked twice
/// gets a copy (only the last asking takes the found value itself, so that large answers
/// are not copied in the usual case).
fn in_order<T: Clone + Default>(scenes: &[String], mut found: HashMap<String, T>) -> Vec<T> {
    let mut left: HashMap<&str, usize> = HashMap::new();
    for scene in scenes {
        *left.entry(scene).or_default() += 1;
    }
    scenes
        .iter()
        .map(|scene| {
            let left = left.entry(scene).or_default();
            *left = left.saturating_sub(1);
            if *left == 0 {
                found.remove(scene).unwrap_or_default()
            } else {
                found.get(scene).cloned().unwrap_or_default()
            }
        })
        .collect()
}
