//! What one user and one node may take: new scenes per user per minute (counted over every
//! node that shares the store), live scenes per node, and the lease rows of scenes that
//! never got content, collected once released and idle.

use std::time::{Duration, Instant};

use troupe_node::store::Store;
use troupe_proto::token::Role;
use troupe_tests::{token, unique, Backend, NodeProcess, TestClient};

async fn close_of(node: &NodeProcess, scene: &str, tok: &str) -> (u16, String) {
    let mut client = TestClient::open(&node.ws_base(), scene, &format!("token={tok}"))
        .await
        .unwrap();
    let closed = client.expect_close().await.unwrap();
    (closed.code, closed.reason)
}

#[tokio::test]
async fn new_scenes_per_user_are_limited_across_nodes() {
    let Ok(url) = std::env::var("TROUPE_TEST_DATABASE_URL") else {
        assert!(
            std::env::var_os("TROUPE_TEST_SKIP_POSTGRES").is_some(),
            "TROUPE_TEST_DATABASE_URL is not set"
        );
        return;
    };
    // Two nodes on one store (each a cluster of its own here): the count is the store's.
    let env = [("TROUPE_MAX_NEW_SCENES_PER_MINUTE", "3")];
    let a = NodeProcess::start(&Backend::Postgres(url.clone()), &env).unwrap();
    let b = NodeProcess::start(&Backend::Postgres(url), &env).unwrap();
    let user = unique("mallory");
    let tok = token(&user, &[("*", Role::Edit)]);
    let scenes: Vec<String> = (0..4).map(|i| unique(&format!("new{i}"))).collect();
    // The count is per clock minute: start early in one, so that all four fall in it.
    let into_minute = troupe_proto::clock::now_secs() % 60;
    if into_minute > 45 {
        tokio::time::sleep(Duration::from_secs(61 - into_minute)).await;
    }
    let mut open = Vec::new();
    for (node, scene) in [(&a, &scenes[0]), (&b, &scenes[1])] {
        open.push(TestClient::connect(&node.ws_base(), scene, &tok).await.unwrap());
    }
    // Two tabs opening the same new scene at once count it once.
    let base = a.ws_base();
    let (first, second) = tokio::join!(
        TestClient::connect(&base, &scenes[2], &tok),
        TestClient::connect(&base, &scenes[2], &tok)
    );
    open.extend([first.unwrap(), second.unwrap()]);
    // The fourth new scene of the minute, on either node, is refused.
    let (code, reason) = close_of(&b, &scenes[3], &tok).await;
    assert_eq!(code, 4429, "{reason}");
    assert!(reason.contains("too many new scenes"), "{reason}");
    assert!(
        b.metric("websocket_errors_total{reason=\"new_scene_quota\"}")
            .await
            .unwrap()
            >= 1.0
    );
    // Scenes that exist open as before; another user is not affected.
    drop(open);
    assert!(TestClient::connect(&b.ws_base(), &scenes[0], &tok).await.is_ok());
    let other = token(&unique("alice"), &[("*", Role::Edit)]);
    assert!(TestClient::connect(&b.ws_base(), &scenes[3], &other)
        .await
        .is_ok());
}

#[tokio::test]
async fn a_node_holds_at_most_its_live_scenes() {
    let node = NodeProcess::start(&Backend::Sqlite, &[("TROUPE_MAX_ROOMS", "2")]).unwrap();
    let tok = token("ada", &[("*", Role::Edit)]);
    let _one = TestClient::connect(&node.ws_base(), &unique("r"), &tok)
        .await
        .unwrap();
    let _two = TestClient::connect(&node.ws_base(), &unique("r"), &tok)
        .await
        .unwrap();
    let (code, reason) = close_of(&node, &unique("r"), &tok).await;
    assert_eq!(code, 1013, "{reason}");
}

#[tokio::test]
async fn leases_of_scenes_that_never_got_content_are_collected() {
    for backend in Backend::all() {
        let node = NodeProcess::start(
            &backend,
            &[
                ("TROUPE_ROOM_IDLE", "200ms"),
                ("TROUPE_LEASE_RETENTION", "500ms"),
                ("TROUPE_LEASE_GC_INTERVAL", "200ms"),
            ],
        )
        .unwrap();
        let tok = token("ada", &[("*", Role::Edit)]);
        let (empty, written, live) = (unique("empty"), unique("written"), unique("live"));
        drop(TestClient::connect(&node.ws_base(), &empty, &tok).await.unwrap());
        let mut writer = TestClient::connect(&node.ws_base(), &written, &tok)
            .await
            .unwrap();
        writer.type_text("FADE IN:").await.unwrap();
        writer.wait_acked().await.unwrap();
        drop(writer);
        let _stays = TestClient::connect(&node.ws_base(), &live, &tok).await.unwrap();

        let store = match &backend {
            Backend::Sqlite => Store::open(&troupe_node::config::StoreLocation::Sqlite(
                node.data_dir.join("troupe.sqlite3"),
            ))
            .await
            .unwrap(),
            Backend::Postgres(url) => Store::open(&troupe_node::config::StoreLocation::Postgres(url.clone()))
                .await
                .unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.lease(&empty).await.unwrap().is_some() {
            assert!(
                Instant::now() < deadline,
                "{backend:?}: the empty scene's lease was never collected"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Released but written, or live: kept.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            store.lease(&written).await.unwrap().is_some(),
            "{backend:?}: a scene with content lost its lease"
        );
        assert!(
            store.lease(&live).await.unwrap().is_some(),
            "{backend:?}: a live scene lost its lease"
        );
        assert!(node.metric("troupe_leases_collected_total").await.unwrap() >= 1.0);
        // The collected scene opens again like a new one.
        let mut again = TestClient::connect(&node.ws_base(), &empty, &tok).await.unwrap();
        again.type_text("back").await.unwrap();
        again.wait_acked().await.unwrap();
    }
}

#[tokio::test]
async fn bytes_of_edits_per_user_are_limited() {
    let node = NodeProcess::start(&Backend::Sqlite, &[("TROUPE_MAX_BYTES_PER_HOUR", "150000")]).unwrap();
    let user = unique("bulk");
    let tok = token(&user, &[("*", Role::Edit)]);
    let mut writer = TestClient::connect(&node.ws_base(), &unique("big"), &tok)
        .await
        .unwrap();
    let chunk = "x".repeat(20_000);
    let mut refused = None;
    for _ in 0..20 {
        if writer.type_text(&chunk).await.is_err() {
            break;
        }
        if let Err(e) = writer.pump(Duration::from_millis(20)).await {
            refused = e.downcast::<troupe_tests::Closed>().ok();
            break;
        }
    }
    let refused = match refused {
        Some(closed) => closed,
        None => writer.expect_close().await.unwrap(),
    };
    assert_eq!(refused.code, 4429, "{refused}");
    assert!(refused.reason.contains("bytes of edits"), "{refused}");
    // The user stays over the quota on any connection this hour; others are unaffected.
    let mut again = TestClient::connect(&node.ws_base(), &unique("big"), &tok)
        .await
        .unwrap();
    again.type_text(&"y".repeat(70_000)).await.unwrap();
    assert_eq!(again.expect_close().await.unwrap().code, 4429);
    let other = token(&unique("light"), &[("*", Role::Edit)]);
    let mut light = TestClient::connect(&node.ws_base(), &unique("big"), &other)
        .await
        .unwrap();
    light.type_text(&chunk).await.unwrap();
    light.wait_acked().await.unwrap();
}
