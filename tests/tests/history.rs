//! A scene's history and restore: named and automatic versions, each readable; a restore
//! turns the live document into a version's content (or P1's) through ordinary edits, so
//! connected editors converge without reloading and find the notice; what it replaced is
//! kept as a version; bad requests change nothing.

use std::time::Duration;

use troupe_node::content::blocks::Block;
use troupe_node::content::notice;
use troupe_proto::token::Role;
use troupe_tests::p1::*;
use troupe_tests::{token, unique, Backend, NodeProcess, TestClient};
use yrs::Transact;

/// `method path` with a token: the status and the JSON answer.
async fn call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    tok: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {tok}");
    let (status, answer) =
        troupe_tests::http_send(addr, method, path, &[("Authorization", auth.as_str())], body)
            .await
            .unwrap();
    let json = serde_json::from_str(&answer).unwrap_or_else(|_| serde_json::json!({ "raw": answer }));
    (status, json)
}

fn texts(blocks: &[Block]) -> String {
    blocks
        .iter()
        .map(|b| b.text.as_str())
        .collect::<Vec<_>>()
        .join(" | ")
}

#[tokio::test]
async fn versions_are_kept_read_and_restored_into_the_live_scene() {
    for backend in Backend::all() {
        let node = NodeProcess::start(
            &backend,
            &[
                ("TROUPE_HISTORY_EVERY", "0s"),
                ("TROUPE_COMPACT_ROWS", "2"),
                ("TROUPE_P1_WRITE_DELAY", "100ms"),
                ("TROUPE_P1_MAX_LAG", "1s"),
            ],
        )
        .unwrap();
        let scene = unique("hist");
        write_p1(&node, &backend, &scene, &rows(&screenplay())).await;
        let ada = token("ada", &[(scene.as_str(), Role::Edit)]);
        let bob = token("bob", &[(scene.as_str(), Role::Edit)]);
        let viewer = token("vic", &[(scene.as_str(), Role::View)]);
        let mut editor = TestClient::connect(&node.ws_base(), &scene, &ada).await.unwrap();
        let mut other = TestClient::connect(&node.ws_base(), &scene, &bob).await.unwrap();
        let versions = format!("/v1/scenes/{scene}/versions");

        add_block(&mut editor, "action", "[draft-1] The neon sign flickers.").await;
        let draft = read(&editor);
        let (status, saved) = call(node.addr, "POST", &versions, &ada, r#"{"name": "Draft 1"}"#).await;
        assert_eq!(status, 201, "{backend:?}: {saved}");
        let draft_version = saved["version"].as_u64().unwrap();
        for i in 0..4 {
            add_block(&mut editor, "dialogue", &format!("[after-{i}] Another coffee.")).await;
        }
        let later = read(&editor);

        // The list: the named version by ada, and automatic ones from compaction snapshots.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let list = loop {
            let (status, list) = call(node.addr, "GET", &versions, &viewer, "").await;
            assert_eq!(status, 200, "{backend:?}: {list}");
            let autos = list["versions"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|v| v["kind"] == "auto")
                .count();
            if autos >= 2 {
                break list;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{backend:?}: no automatic versions: {list}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let named = list["versions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["version"] == draft_version)
            .unwrap_or_else(|| panic!("{backend:?}: {list}"));
        assert_eq!(named["kind"], "named");
        assert_eq!(named["name"], "Draft 1");
        assert_eq!(named["created_by"], "ada");
        let numbers: Vec<u64> = list["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["version"].as_u64().unwrap())
            .collect();
        assert!(
            numbers.windows(2).all(|w| w[0] > w[1]),
            "{backend:?}: newest first: {numbers:?}"
        );

        // One version's content, as blocks and as Fountain.
        let path = format!("{versions}/{draft_version}/content");
        let (status, content) = call(node.addr, "GET", &path, &viewer, "").await;
        assert_eq!(status, 200, "{backend:?}: {content}");
        let blocks: Vec<Block> = serde_json::from_value(content["blocks"].clone()).unwrap();
        assert_eq!(
            blocks, draft,
            "{backend:?}: the named version holds the scene as it was"
        );
        let auth = format!("Bearer {viewer}");
        let (status, fountain) = troupe_tests::http_send(
            node.addr,
            "GET",
            &format!("{path}?format=fountain"),
            &[("Authorization", auth.as_str())],
            "",
        )
        .await
        .unwrap();
        assert_eq!(status, 200);
        assert!(
            fountain.contains("INT. DINER - NIGHT") && fountain.contains("[draft-1]"),
            "{fountain}"
        );

        // Restore it while both editors are connected: both converge, without reloading,
        // and find the notice.
        let restore = format!("/v1/scenes/{scene}/restore");
        let body = serde_json::json!({ "version": draft_version }).to_string();
        let (status, restored) = call(node.addr, "POST", &restore, &ada, &body).await;
        assert_eq!(status, 200, "{backend:?}: {restored}");
        assert_eq!(restored["restored"], draft_version);
        assert_eq!(restored["deleted"], 4, "{backend:?}: {restored}");
        let before = restored["before_restore_version"].as_u64().unwrap();
        for client in [&mut editor, &mut other] {
            let seen = until_doc(client, "restore", |b| b == draft.as_slice()).await;
            assert_eq!(seen, draft);
            let said = notice::read(&client.doc.transact()).expect("a notice");
            assert_eq!(said.kind, "restored");
            assert_eq!(
                said.message,
                format!("Restored to version {draft_version} by ada")
            );
        }
        // P1 follows: the restored content is what `content_blocks` holds.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while read_p1(&node.data_dir, &backend, &scene).await.1 != rows(&draft) {
            assert!(
                std::time::Instant::now() < deadline,
                "{backend:?}: P1 never got the restore"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // What the restore replaced is a version of its own: restoring it undoes the restore.
        let (status, content) = call(
            node.addr,
            "GET",
            &format!("{versions}/{before}/content"),
            &viewer,
            "",
        )
        .await;
        assert_eq!(status, 200, "{backend:?}: {content}");
        let replaced: Vec<Block> = serde_json::from_value(content["blocks"].clone()).unwrap();
        assert_eq!(replaced, later, "{backend:?}: {}", texts(&replaced));
        let body = serde_json::json!({ "version": before }).to_string();
        let (status, undone) = call(node.addr, "POST", &restore, &bob, &body).await;
        assert_eq!(status, 200, "{backend:?}: {undone}");
        until_doc(&mut editor, "undo", |b| b == later.as_slice()).await;
        let said = notice::read(&editor.doc.transact()).unwrap();
        assert_eq!(said.message, format!("Restored to version {before} by bob"));
        // A fresh client reads the same, every typed block once.
        let fresh = TestClient::connect(&node.ws_base(), &scene, &viewer)
            .await
            .unwrap();
        assert_eq!(read(&fresh), later, "{backend:?}");

        // Bad requests are refused and change nothing.
        let refused = [
            (
                "POST",
                restore.clone(),
                viewer.clone(),
                r#"{"version": 1}"#.to_string(),
                403,
            ),
            (
                "POST",
                restore.clone(),
                ada.clone(),
                r#"{"version": 999}"#.to_string(),
                404,
            ),
            ("POST", restore.clone(), ada.clone(), "{}".to_string(), 422),
            (
                "POST",
                restore.clone(),
                ada.clone(),
                r#"{"version": 1, "from_p1": true}"#.to_string(),
                422,
            ),
            (
                "POST",
                restore.clone(),
                ada.clone(),
                r#"{"version": "one"}"#.to_string(),
                422,
            ),
            ("POST", restore.clone(), ada.clone(), "not json".to_string(), 422),
            (
                "POST",
                versions.clone(),
                ada.clone(),
                r#"{"name": ""}"#.to_string(),
                422,
            ),
            (
                "POST",
                versions.clone(),
                ada.clone(),
                format!(r#"{{"name": "{}"}}"#, "x".repeat(201)),
                422,
            ),
            (
                "POST",
                versions.clone(),
                ada.clone(),
                r#"{"name": "a\nb"}"#.to_string(),
                422,
            ),
            (
                "POST",
                versions.clone(),
                viewer.clone(),
                r#"{"name": "mine"}"#.to_string(),
                403,
            ),
            (
                "GET",
                format!("{versions}/abc/content"),
                viewer.clone(),
                String::new(),
                404,
            ),
            (
                "GET",
                format!("{versions}/999/content"),
                viewer.clone(),
                String::new(),
                404,
            ),
            (
                "GET",
                format!("{versions}/1/content?format=pdf"),
                viewer.clone(),
                String::new(),
                400,
            ),
            (
                "GET",
                versions.clone(),
                token("eve", &[("elsewhere", Role::Edit)]),
                String::new(),
                403,
            ),
            ("GET", versions.clone(), "garbage".to_string(), String::new(), 401),
        ];
        let count = list_len(&node, &versions, &viewer).await;
        for (method, path, tok, body, expected) in refused {
            let (status, answer) = call(node.addr, method, &path, &tok, &body).await;
            assert_eq!(status, expected, "{backend:?}: {method} {path} {body}: {answer}");
            if status != 401 {
                assert!(
                    answer["error"].is_string() && answer["message"].is_string(),
                    "{answer}"
                );
            }
        }
        assert_eq!(
            list_len(&node, &versions, &viewer).await,
            count,
            "{backend:?}: a refused request kept a version"
        );
        let _ = editor.pump(Duration::from_millis(300)).await;
        assert_eq!(
            read(&editor),
            later,
            "{backend:?}: a refused request changed the scene"
        );
        let nobody = unique("nobody");
        let (status, _) = call(
            node.addr,
            "POST",
            &format!("/v1/scenes/{nobody}/restore"),
            &token("ada", &[(nobody.as_str(), Role::Edit)]),
            r#"{"from_p1": true}"#,
        )
        .await;
        assert_eq!(status, 404, "{backend:?}: a scene nobody has");
    }
}

async fn list_len(node: &NodeProcess, versions: &str, tok: &str) -> usize {
    let (_, list) = call(node.addr, "GET", versions, tok, "").await;
    list["versions"].as_array().map_or(0, Vec::len)
}

#[tokio::test]
async fn troupectl_restores_p1_content_through_the_cluster_and_the_router_forwards_history() {
    use troupe_tests::cluster::{RouterProcess, TestCluster};
    // Write-back is slow here: what the editor types stays out of P1, as after a loss.
    let cluster = TestCluster::start(
        3,
        &[("TROUPE_P1_WRITE_DELAY", "60s"), ("TROUPE_P1_MAX_LAG", "60s")],
    )
    .await
    .unwrap();
    let backend = cluster.backend.clone();
    let scene = unique("rp1");
    write_p1_in(&cluster.dir, &backend, &scene, &rows(&screenplay())).await;
    let placement = cluster.view().await.unwrap().placement();
    let owner = format!("{}/ws/scenes", placement.route(&scene).unwrap().url);
    let ada = token("ada", &[(scene.as_str(), Role::Edit)]);
    let mut editor = TestClient::connect(&owner, &scene, &ada).await.unwrap();
    add_block(&mut editor, "action", "[unsaved] A stray line.").await;

    let env = [("TROUPE_JWT_SECRET", troupe_tests::SECRET)];
    let out = cluster
        .troupectl_with(&env, &["restore", &scene, "--from-p1", "--by", "Ops"])
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("restored to the P1 content: 0 blocks inserted, 0 changed, 1 deleted"),
        "{said}"
    );
    let seen = until_doc(&mut editor, "restore from P1", |b| b == screenplay().as_slice()).await;
    assert_eq!(seen, screenplay());
    let said_to_editor = notice::read(&editor.doc.transact()).unwrap();
    assert_eq!(
        said_to_editor.message,
        "Restored to the P1 content (version 1) by Ops"
    );

    let out = cluster.troupectl_with(&env, &["versions", &scene]).unwrap();
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{listed}");
    assert!(
        listed.contains("before_restore") && listed.contains("by Ops"),
        "{listed}"
    );
    let out = cluster
        .troupectl_with(&env, &["restore", &scene, "--version", "77"])
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no version 77"),
        "{:?}",
        out
    );

    // Through the router: the list for a reader, a restore refused to a viewer.
    let addrs: Vec<String> = cluster.nodes.values().map(|n| n.rpc_addr.to_string()).collect();
    let router = RouterProcess::start(&addrs).await.unwrap();
    let viewer = token("vic", &[(scene.as_str(), Role::View)]);
    let (status, list) = call(
        router.addr,
        "GET",
        &format!("/v1/scenes/{scene}/versions"),
        &viewer,
        "",
    )
    .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["versions"][0]["kind"], "before_restore", "{list}");
    let (status, _) = call(
        router.addr,
        "POST",
        &format!("/v1/scenes/{scene}/restore"),
        &viewer,
        r#"{"from_p1": true}"#,
    )
    .await;
    assert_eq!(status, 403);
    let (status, content) = call(
        router.addr,
        "GET",
        &format!("/v1/scenes/{scene}/versions/1/content"),
        &viewer,
        "",
    )
    .await;
    assert_eq!(status, 200, "{content}");
    assert!(
        texts(&serde_json::from_value::<Vec<Block>>(content["blocks"].clone()).unwrap())
            .contains("[unsaved]")
    );
}
