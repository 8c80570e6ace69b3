//! The P1 product's tables in the run's Postgres: scenes seeded as P1 has them before
//! anyone opens them, and a scene read back as P1 sees it — `content_blocks` and the
//! scene's `content_version` from one snapshot, so the blocks are those of that version.

use sqlx::postgres::{PgPool, PgPoolOptions};
use troupe_node::content::blocks::{Block, BlockError, BlockType};

#[derive(Debug, thiserror::Error)]
pub enum TablesError {
    #[error("Postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("content_blocks holds a block the editor cannot read: {0}")]
    Block(#[from] BlockError),
}

/// What a scene of the P1 product holds before the run: a short screenplay.
pub fn first_draft() -> Vec<Block> {
    vec![
        Block::new(BlockType::SceneHeading, "INT. ROOFTOP - NIGHT"),
        Block::new(BlockType::Action, "Wind. Neon. The city hums below."),
        Block::new(BlockType::Character, "MARA"),
        Block::new(BlockType::Dialogue, "We have until sunrise."),
    ]
}

/// A scene as P1 has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct P1Scene {
    pub version: u64,
    pub blocks: Vec<Block>,
}

/// A few connections to the run's Postgres.
#[derive(Debug, Clone)]
pub struct P1Tables {
    pool: PgPool,
}

impl P1Tables {
    pub async fn connect(url: &str) -> Result<P1Tables, TablesError> {
        let pool = PgPoolOptions::new().max_connections(4).connect(url).await?;
        Ok(P1Tables { pool })
    }

    /// Makes `scene` a P1 scene at content version 1 holding `blocks` (the tables exist
    /// once a node has started).
    pub async fn seed(&self, scene: &str, blocks: &[Block]) -> Result<(), TablesError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO scenes (id, title, content_version) VALUES ($1, $2, 1)")
            .bind(scene)
            .bind(format!("Chaos {scene}"))
            .execute(&mut *tx)
            .await?;
        for (position, block) in blocks.iter().enumerate() {
            sqlx::query(
                "INSERT INTO content_blocks (scene_id, position, block_type, text) VALUES ($1, $2, $3, $4)",
            )
            .bind(scene)
            .bind(position as i32)
            .bind(block.block_type.as_str())
            .bind(&block.text)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The scene's content version and blocks from one snapshot (`REPEATABLE READ`: a
    /// write-back committing between the two reads cannot mix versions); `None` when P1
    /// has no such scene.
    pub async fn read(&self, scene: &str) -> Result<Option<P1Scene>, TablesError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        let version: Option<i64> = sqlx::query_scalar("SELECT content_version FROM scenes WHERE id = $1")
            .bind(scene)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(version) = version else {
            return Ok(None);
        };
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT block_type, text FROM content_blocks WHERE scene_id = $1 ORDER BY position",
        )
        .bind(scene)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let blocks = rows
            .into_iter()
            .map(|(block_type, text)| Ok(Block::new(block_type.parse()?, text)))
            .collect::<Result<Vec<_>, BlockError>>()?;
        Ok(Some(P1Scene {
            version: version.max(0) as u64,
            blocks,
        }))
    }
}
