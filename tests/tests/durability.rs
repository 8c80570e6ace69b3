//! Durability: acknowledged edits survive `kill -9`, compaction and unloading lose nothing,
//! shutdown flushes, and dead peers are dropped.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use troupe_node::store::Store;
use troupe_proto::token::Role;
use troupe_tests::{token, unique, Backend, NodeProcess, TestClient};

fn marker(client: usize, edit: u64) -> String {
    format!("[c{client}e{edit}]")
}

#[tokio::test]
async fn kill9_loses_no_acknowledged_edit() {
    for backend in Backend::all() {
        let mut node = NodeProcess::start(&backend, &[]).unwrap();
        let scenes: Vec<String> = (0..3).map(|_| unique("scene")).collect();
        let grants: Vec<(&str, Role)> = scenes.iter().map(|s| (s.as_str(), Role::Edit)).collect();
        let tok = token("writer", &grants);
        let mut clients = Vec::new();
        for (i, scene) in scenes.iter().enumerate() {
            for _ in 0..2 {
                clients.push((
                    i,
                    TestClient::connect(&node.ws_base(), scene, &tok).await.unwrap(),
                ));
            }
        }
        // A first wave, fully acknowledged.
        for (c, (_, client)) in clients.iter_mut().enumerate() {
            for e in 0..20 {
                client.type_text(&marker(c, e)).await.unwrap();
            }
        }
        for (_, client) in clients.iter_mut() {
            client.wait_acked().await.unwrap();
        }
        // A second wave cut short by kill -9: whatever was acked must survive.
        for (c, (_, client)) in clients.iter_mut().enumerate() {
            for e in 20..40 {
                client.type_text(&marker(c, e)).await.unwrap();
            }
            client.pump(Duration::from_millis(2)).await.unwrap();
        }
        node.kill9();
        let acked: Vec<(usize, Vec<String>)> = clients
            .iter()
            .map(|(scene, c)| (*scene, c.acked_texts()))
            .collect();
        drop(clients);
        let node = node.restart().unwrap();
        for (c, (scene, acked)) in acked.into_iter().enumerate() {
            assert!(
                acked.len() >= 20,
                "{backend:?}: client {c} had only {} acks",
                acked.len()
            );
            let fresh = TestClient::connect(&node.ws_base(), &scenes[scene], &tok)
                .await
                .unwrap();
            let text = fresh.text();
            for m in acked {
                assert!(text.contains(&m), "{backend:?}: acked edit {m} lost");
            }
        }
    }
}

#[tokio::test]
async fn compaction_folds_the_log_and_loses_nothing() {
    for backend in Backend::all() {
        let node = NodeProcess::start(&backend, &[("TROUPE_COMPACT_ROWS", "5")]).unwrap();
        let scene = unique("scene");
        let tok = token("w", &[(scene.as_str(), Role::Edit)]);
        let mut client = TestClient::connect(&node.ws_base(), &scene, &tok).await.unwrap();
        let mut expected = String::new();
        for e in 0..30 {
            let m = marker(0, e);
            expected.push_str(&m);
            client.type_text(&m).await.unwrap();
            client.wait_acked().await.unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while node.metric("yjs_compaction_runs_total").await.unwrap() < 2.0 {
            assert!(
                std::time::Instant::now() < deadline,
                "{backend:?}: no compaction ran"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The store now holds snapshots and only the retained tail of the log.
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
        let stored = store.load(&scene).await.unwrap();
        assert!(!stored.snapshots.is_empty(), "{backend:?}: no snapshot");
        assert!(
            stored.rows.len() < 30,
            "{backend:?}: log not pruned ({} rows)",
            stored.rows.len()
        );
        assert_eq!(stored.last_seq(), 30);
        drop(client);
        let node = node.restart().unwrap();
        let fresh = TestClient::connect(&node.ws_base(), &scene, &tok).await.unwrap();
        assert_eq!(fresh.text(), expected, "{backend:?}");
    }
}

#[tokio::test]
async fn idle_rooms_unload_and_come_back() {
    let node = NodeProcess::start(&Backend::Sqlite, &[("TROUPE_ROOM_IDLE", "300ms")]).unwrap();
    let scene = unique("scene");
    let tok = token("w", &[(scene.as_str(), Role::Edit)]);
    let mut client = TestClient::connect(&node.ws_base(), &scene, &tok).await.unwrap();
    client.type_text("EXT. ROOFTOP - DAWN").await.unwrap();
    client.wait_acked().await.unwrap();
    assert_eq!(node.metric("scenes_collaborative_active").await.unwrap(), 1.0);
    // The room's housekeeping after the edit has run and found nothing due: the leave
    // itself must set the wake that unloads it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(client);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while node.metric("scenes_collaborative_active").await.unwrap() != 0.0 {
        assert!(std::time::Instant::now() < deadline, "room never unloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        node.metric("yjs_compaction_runs_total").await.unwrap() >= 1.0,
        "unload did not snapshot"
    );
    let fresh = TestClient::connect(&node.ws_base(), &scene, &tok).await.unwrap();
    assert_eq!(fresh.text(), "EXT. ROOFTOP - DAWN");
}

#[tokio::test]
async fn shutdown_flushes_and_closes_clients_with_1001() {
    for backend in Backend::all() {
        let mut node = NodeProcess::start(&backend, &[]).unwrap();
        let scene = unique("scene");
        let tok = token("w", &[(scene.as_str(), Role::Edit)]);
        let mut client = TestClient::connect(&node.ws_base(), &scene, &tok).await.unwrap();
        for e in 0..50 {
            client.type_text(&marker(0, e)).await.unwrap();
        }
        // Make sure the node has read them (echo of nothing: wait for the acks).
        client.wait_acked().await.unwrap();
        let status = node.terminate().unwrap();
        assert!(status.success(), "{backend:?}: exit {status}");
        assert_eq!(client.expect_close().await.unwrap().code, 1001);
        let node = node.restart().unwrap();
        let fresh = TestClient::connect(&node.ws_base(), &scene, &tok).await.unwrap();
        assert!(fresh.text().contains(&marker(0, 49)), "{backend:?}");
    }
}

#[tokio::test]
async fn silent_peers_are_dropped_by_the_heartbeat() {
    let node = NodeProcess::start(&Backend::Sqlite, &[("TROUPE_PING_INTERVAL", "200ms")]).unwrap();
    let scene = unique("scene");
    let tok = token("w", &[(scene.as_str(), Role::Edit)]);
    // A raw WebSocket handshake, then silence: no reads, no pongs.
    let mut stream = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let request = format!(
        "GET /ws/scenes/{scene}?token={tok} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        node.addr
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while node
        .metric("websocket_errors_total{reason=\"ping_timeout\"}")
        .await
        .unwrap()
        < 1.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "silent peer was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(node.metric("websocket_connections_active").await.unwrap(), 0.0);
    drop(stream);
}

#[tokio::test]
async fn a_second_node_cannot_take_a_leased_scene_at_the_same_epoch() {
    let Some(backend) = Backend::all()
        .into_iter()
        .find(|b| matches!(b, Backend::Postgres(_)))
    else {
        return; // TROUPE_TEST_SKIP_POSTGRES: only one node can share the embedded store
    };
    let first = NodeProcess::start(&backend, &[("TROUPE_NODE_ID", "1")]).unwrap();
    let second = NodeProcess::start(&backend, &[("TROUPE_NODE_ID", "2")]).unwrap();
    let scene = unique("scene");
    let tok = token("w", &[(scene.as_str(), Role::Edit)]);
    let mut owner = TestClient::connect(&first.ws_base(), &scene, &tok).await.unwrap();
    owner.type_text("only one writer").await.unwrap();
    owner.wait_acked().await.unwrap();
    let mut intruder = TestClient::open(&second.ws_base(), &scene, &format!("token={tok}"))
        .await
        .unwrap();
    assert_eq!(intruder.expect_close().await.unwrap().code, 4301);
    // The owner carries on.
    owner.type_text("!").await.unwrap();
    owner.wait_acked().await.unwrap();
}
