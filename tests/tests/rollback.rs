//! The rollback triggers and the automatic rollback: `content_blocks` changed behind P1's
//! versioning is detected as data loss (and repaired from the live document), the trigger
//! shows in the metrics, and with `TROUPE_AUTO_ROLLBACK` the node switches realtime editing
//! off for the cluster, which `troupectl status` and `troupectl flags` show.

use std::time::{Duration, Instant};

use sqlx::Connection;
use troupe_proto::token::Role;
use troupe_tests::cluster::TestCluster;
use troupe_tests::p1::*;
use troupe_tests::{token, unique, Backend, TestClient};

/// Deletes the scene's `content_blocks` without bumping its version: what a bad migration,
/// a bug in another writer or a restore of the wrong backup would do.
async fn lose_p1_content(dir: &std::path::Path, backend: &Backend, scene: &str) {
    const LOSE: &str = "DELETE FROM content_blocks WHERE scene_id = $1 AND position > 0";
    match backend {
        Backend::Sqlite => {
            let url = format!("sqlite://{}", dir.join("troupe.sqlite3").display());
            let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
            sqlx::query(LOSE).bind(scene).execute(&mut db).await.unwrap();
        }
        Backend::Postgres(url) => {
            let mut db = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query(LOSE).bind(scene).execute(&mut db).await.unwrap();
        }
    }
}

#[tokio::test]
async fn data_loss_is_detected_repaired_and_rolls_back_realtime_editing() {
    let cluster = TestCluster::start(
        1,
        &[
            ("TROUPE_P1_WRITE_DELAY", "100ms"),
            ("TROUPE_P1_MAX_LAG", "500ms"),
            ("TROUPE_P1_CHECK_INTERVAL", "200ms"),
            ("TROUPE_AUTO_ROLLBACK", "1s"),
        ],
    )
    .await
    .unwrap();
    let node = cluster.nodes.values().next().unwrap();
    let backend = cluster.backend.clone();
    let scene = unique("loss");
    write_p1_in(&cluster.dir, &backend, &scene, &rows(&screenplay())).await;
    let tok = token("ada", &[(scene.as_str(), Role::Edit)]);
    let mut editor = TestClient::connect(&node.ws_base(), &scene, &tok).await.unwrap();
    add_block(&mut editor, "action", "[written back]").await;
    let mut expected = rows(&screenplay());
    expected.push(("action".into(), "[written back]".into()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while read_p1(&cluster.dir, &backend, &scene).await.1 != expected {
        assert!(Instant::now() < deadline, "the block never reached P1");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (version, _) = read_p1(&cluster.dir, &backend, &scene).await;
    assert_eq!(
        node.metric("troupe_rollback_trigger{trigger=\"data_loss\"}")
            .await
            .unwrap(),
        0.0
    );

    // The blocks vanish behind P1's back: detected, and written back from the document.
    lose_p1_content(&cluster.dir, &backend, &scene).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (now, blocks) = read_p1(&cluster.dir, &backend, &scene).await;
        if blocks == expected && now == version + 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never repaired: version {now}, {blocks:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        node.metric("websocket_errors_total{reason=\"data_loss_detected\"}")
            .await
            .unwrap(),
        1.0
    );

    // The trigger holds (sampled every 5 s) and, after a second, rolls back: realtime
    // editing is off for the whole cluster, and the operator is told why.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let view = cluster.view().await.unwrap();
        if !view.state.flags.enable_realtime_editing {
            let why = &view.state.config[troupe_membership::state::AUTO_ROLLBACK];
            assert!(why.contains("data loss detected 1 times"), "{why}");
            break;
        }
        assert!(Instant::now() < deadline, "no automatic rollback");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        node.metric("troupe_rollback_trigger{trigger=\"data_loss\"}")
            .await
            .unwrap(),
        1.0
    );
    let out = cluster.troupectl(&["status"]).unwrap();
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        status.contains("ROLLED BACK: realtime editing is off") && status.contains("data loss"),
        "{status}"
    );
    let out = cluster.troupectl(&["flags"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("enableRealtimeEditing  false"));
    // The editor is read-only now: what it sends is dropped, and counted.
    editor.type_text("[after the rollback]").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(node.metric("troupe_viewer_updates_dropped_total").await.unwrap() >= 1.0);
}
