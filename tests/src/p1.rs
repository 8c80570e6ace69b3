//! The P1 product's side of a scene for tests: its tables written and read as the P1 app
//! does, and blocks typed into a client's document as the editor does.

use sqlx::Connection;
use troupe_node::content::blocks::{self, Block, BlockType};
use yrs::Transact;

use crate::{Backend, NodeProcess, TestClient};

pub fn screenplay() -> Vec<Block> {
    vec![
        Block::new(BlockType::SceneHeading, "INT. DINER - NIGHT"),
        Block::new(
            BlockType::Action,
            "Rain on the windows. ZOË (30s) stirs a coffee ☕.",
        ),
        Block::new(BlockType::Character, "ZOË"),
        Block::new(BlockType::Parenthetical, "(not looking up)"),
        Block::new(BlockType::Dialogue, "You're late."),
        Block::new(BlockType::Action, ""),
        Block::new(BlockType::Transition, "CUT TO:"),
    ]
}

/// Writes `blocks` as P1 would: a `scenes` row and its `content_blocks`.
pub async fn write_p1(node: &NodeProcess, backend: &Backend, scene: &str, blocks: &[(String, String)]) {
    write_p1_in(&node.data_dir, backend, scene, blocks).await
}

/// [`write_p1`] for the store of the nodes whose data folder is `dir`.
pub async fn write_p1_in(dir: &std::path::Path, backend: &Backend, scene: &str, blocks: &[(String, String)]) {
    const SCENE: &str = "INSERT INTO scenes (id, title, content_version) VALUES ($1, 'Diner', 1)";
    const BLOCK: &str =
        "INSERT INTO content_blocks (scene_id, position, block_type, text) VALUES ($1, $2, $3, $4)";
    match backend {
        Backend::Sqlite => {
            let url = format!("sqlite://{}", dir.join("troupe.sqlite3").display());
            let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::query(SCENE).bind(scene).execute(&mut db).await.unwrap();
            for (i, (block_type, text)) in blocks.iter().enumerate() {
                sqlx::query(BLOCK)
                    .bind(scene)
                    .bind(i as i64)
                    .bind(block_type)
                    .bind(text)
                    .execute(&mut db)
                    .await
                    .unwrap();
            }
        }
        Backend::Postgres(url) => {
            let mut db = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query(SCENE).bind(scene).execute(&mut db).await.unwrap();
            for (i, (block_type, text)) in blocks.iter().enumerate() {
                sqlx::query(BLOCK)
                    .bind(scene)
                    .bind(i as i32)
                    .bind(block_type)
                    .bind(text)
                    .execute(&mut db)
                    .await
                    .unwrap();
            }
        }
    }
}

pub fn rows(blocks: &[Block]) -> Vec<(String, String)> {
    blocks
        .iter()
        .map(|b| (b.block_type.as_str().to_string(), b.text.clone()))
        .collect()
}

pub fn read(client: &TestClient) -> Vec<Block> {
    blocks::read(&client.doc.transact()).unwrap()
}

/// P1's view of a scene: its content version and blocks.
pub async fn read_p1(dir: &std::path::Path, backend: &Backend, scene: &str) -> (i64, Vec<(String, String)>) {
    const VERSION: &str = "SELECT content_version FROM scenes WHERE id = $1";
    const BLOCKS: &str = "SELECT block_type, text FROM content_blocks WHERE scene_id = $1 ORDER BY position";
    match backend {
        Backend::Sqlite => {
            let url = format!("sqlite://{}", dir.join("troupe.sqlite3").display());
            let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
            let version: i64 = sqlx::query_scalar(VERSION)
                .bind(scene)
                .fetch_one(&mut db)
                .await
                .unwrap();
            let rows = sqlx::query_as(BLOCKS)
                .bind(scene)
                .fetch_all(&mut db)
                .await
                .unwrap();
            (version, rows)
        }
        Backend::Postgres(url) => {
            let mut db = sqlx::PgConnection::connect(url).await.unwrap();
            let version: i64 = sqlx::query_scalar(VERSION)
                .bind(scene)
                .fetch_one(&mut db)
                .await
                .unwrap();
            let rows = sqlx::query_as(BLOCKS)
                .bind(scene)
                .fetch_all(&mut db)
                .await
                .unwrap();
            (version, rows)
        }
    }
}

/// Appends a block to the client's document, as the editor would, and sends it.
pub async fn add_block(client: &mut TestClient, block_type: &str, text: &str) {
    use yrs::{XmlElementPrelim, XmlFragment, XmlTextPrelim};
    let update = {
        let fragment = client.doc.get_or_insert_xml_fragment(blocks::FRAGMENT);
        let mut txn = client.doc.transact_mut();
        let element = fragment.push_back(&mut txn, XmlElementPrelim::empty(block_type));
        element.push_back(&mut txn, XmlTextPrelim::new(text));
        txn.encode_update_v1()
    };
    client.sent_updates += 1;
    client
        .send_raw(troupe_proto::message::encode_update(&update))
        .await
        .unwrap();
    client.wait_acked().await.unwrap();
}

/// Sets the scene's P1 content as the P1 app does: its blocks replaced, its version bumped.
pub async fn p1_app_saves(dir: &std::path::Path, backend: &Backend, scene: &str, blocks: &[Block]) {
    let statements = |db_blocks: &[Block]| {
        let mut all = vec![
            (
                "UPDATE scenes SET content_version = content_version + 1 WHERE id = $1",
                None,
            ),
            ("DELETE FROM content_blocks WHERE scene_id = $1", None),
        ];
        for (i, b) in db_blocks.iter().enumerate() {
            all.push((
                "INSERT INTO content_blocks (scene_id, position, block_type, text) VALUES ($1, $2, $3, $4)",
                Some((i as i32, b.block_type.as_str().to_string(), b.text.clone())),
            ));
        }
        all
    };
    match backend {
        Backend::Sqlite => {
            let url = format!("sqlite://{}", dir.join("troupe.sqlite3").display());
            let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
            for (sql, args) in statements(blocks) {
                let q = sqlx::query(sql).bind(scene);
                let q = match args {
                    Some((i, t, x)) => q.bind(i).bind(t).bind(x),
                    None => q,
                };
                q.execute(&mut db).await.unwrap();
            }
        }
        Backend::Postgres(url) => {
            let mut db = sqlx::PgConnection::connect(url).await.unwrap();
            for (sql, args) in statements(blocks) {
                let q = sqlx::query(sql).bind(scene);
                let q = match args {
                    Some((i, t, x)) => q.bind(i).bind(t).bind(x),
                    None => q,
                };
                q.execute(&mut db).await.unwrap();
            }
        }
    }
}

/// Waits until the client's document reads `expected`.
pub async fn until_doc(
    client: &mut TestClient,
    what: &str,
    expected: impl Fn(&[Block]) -> bool,
) -> Vec<Block> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let blocks = read(client);
        if expected(&blocks) {
            return blocks;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: the editor never saw it: {blocks:?}"
        );
        let _ = client.pump(std::time::Duration::from_millis(100)).await;
    }
}
