//! Scenes of the P1 product come into Troupe on first load: a scene with no Yjs state but
//! rows in `content_blocks` is seeded from them, once, with the same bytes wherever it is
//! seeded — so two nodes that seed the same scene independently merge into one copy.

use troupe_node::content::blocks::{self, Block, BlockType};
use troupe_proto::token::Role;
use troupe_tests::p1::*;
use troupe_tests::{token, unique, Backend, NodeProcess, TestClient};
use yrs::updates::decoder::Decode;
use yrs::{ReadTxn, StateVector, Transact};

#[tokio::test]
async fn a_p1_scene_is_seeded_once_on_first_load() {
    for backend in Backend::all() {
        let mut node = NodeProcess::start(&backend, &[("TROUPE_ROOM_IDLE", "300ms")]).unwrap();
        let scene = unique("p1");
        write_p1(&node, &backend, &scene, &rows(&screenplay())).await;
        // A viewer may open it first: the scene exists, in P1.
        let viewer = token("vic", &[(scene.as_str(), Role::View)]);
        let first = TestClient::connect(&node.ws_base(), &scene, &viewer)
            .await
            .unwrap();
        assert_eq!(
            read(&first),
            screenplay(),
            "{backend:?}: a viewer sees the P1 content"
        );
        drop(first);
        let tok = token("ada", &[(scene.as_str(), Role::Edit)]);
        let first = TestClient::connect(&node.ws_base(), &scene, &tok).await.unwrap();
        assert_eq!(
            read(&first),
            screenplay(),
            "{backend:?}: the editor sees the P1 content"
        );
        drop(first);
        // The seed went to the log like an edit: the scene has Yjs state of its own now.
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        let location = match &backend {
            Backend::Sqlite => {
                troupe_node::config::StoreLocation::Sqlite(node.data_dir.join("troupe.sqlite3"))
            }
            Backend::Postgres(url) => troupe_node::config::StoreLocation::Postgres(url.clone()),
        };
        let stored = troupe_node::store::Store::open(&location)
            .await
            .unwrap()
            .load(&scene)
            .await
            .unwrap();
        assert!(
            !(stored.rows.is_empty() && stored.snapshots.is_empty()),
            "{backend:?}: the seed was not stored"
        );
        // Restarted: loaded from the store, not seeded again.
        node = node.restart().unwrap();
        let again = TestClient::connect(&node.ws_base(), &scene, &tok).await.unwrap();
        assert_eq!(read(&again), screenplay(), "{backend:?}: once, after a restart");
    }
}

#[tokio::test]
async fn seeds_made_on_two_nodes_merge_into_one_copy() {
    // Two nodes with stores of their own, the same P1 scene in both: each seeds it.
    let (a, b) = (
        NodeProcess::start(&Backend::Sqlite, &[]).unwrap(),
        NodeProcess::start(&Backend::Sqlite, &[]).unwrap(),
    );
    let scene = unique("twice");
    for node in [&a, &b] {
        write_p1(node, &Backend::Sqlite, &scene, &rows(&screenplay())).await;
    }
    let tok = token("ada", &[(scene.as_str(), Role::Edit)]);
    let on_a = TestClient::connect(&a.ws_base(), &scene, &tok).await.unwrap();
    let mut on_b = TestClient::connect(&b.ws_base(), &scene, &tok).await.unwrap();
    // A's seed reaches B, as a client that saw A's copy would bring it after a move.
    let state_of_a = on_a
        .doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    on_b.doc
        .transact_mut()
        .apply_update(yrs::Update::decode_v1(&state_of_a).unwrap())
        .unwrap();
    on_b.send_raw(troupe_proto::message::encode_update(&state_of_a))
        .await
        .unwrap();
    on_b.sent_updates += 1;
    on_b.wait_acked().await.unwrap();
    assert_eq!(read(&on_b), screenplay(), "the two seeds are one copy");
    let fresh = TestClient::connect(&b.ws_base(), &scene, &tok).await.unwrap();
    assert_eq!(read(&fresh), screenplay());
}

#[tokio::test]
async fn unreadable_p1_content_refuses_the_load_and_writes_nothing() {
    let node = NodeProcess::start(&Backend::Sqlite, &[]).unwrap();
    let scene = unique("odd");
    write_p1(
        &node,
        &Backend::Sqlite,
        &scene,
        &[("marquee".into(), "???".into())],
    )
    .await;
    let tok = token("ada", &[(scene.as_str(), Role::Edit)]);
    let mut client = TestClient::open(&node.ws_base(), &scene, &format!("token={tok}"))
        .await
        .unwrap();
    let closed = client.expect_close().await.unwrap();
    assert_eq!(closed.code, 1011, "{closed}");
    assert!(
        node.metric("websocket_errors_total{reason=\"scene_load_failed\"}")
            .await
            .unwrap()
            >= 1.0
    );
}

#[tokio::test]
async fn troupectl_backfill_converts_verifies_skips_and_reports() {
    use troupe_tests::cluster::TestCluster;
    let cluster = TestCluster::start(3, &[]).await.unwrap();
    let backend = cluster.backend.clone();
    let database = match &backend {
        Backend::Sqlite => format!("sqlite:{}", cluster.dir.join("troupe.sqlite3").display()),
        Backend::Postgres(url) => url.clone(),
    };
    let env = [
        ("TROUPE_DATABASE_URL", database.as_str()),
        ("TROUPE_JWT_SECRET", troupe_tests::SECRET),
    ];
    let good: Vec<String> = (0..6).map(|i| unique(&format!("bf{i}"))).collect();
    for scene in &good {
        write_p1_in(&cluster.dir, &backend, scene, &rows(&screenplay())).await;
    }
    let odd = unique("bf-odd");
    write_p1_in(&cluster.dir, &backend, &odd, &[("marquee".into(), "?".into())]).await;
    let tok = token("ada", &[("*", Role::Edit)]);
    let placement = cluster.view().await.unwrap().placement();
    let owner_base = |scene: &str| format!("{}/ws/scenes", placement.route(scene).unwrap().url);
    // One scene a visitor opened already.
    drop(
        TestClient::connect(&owner_base(&good[0]), &good[0], &tok)
            .await
            .unwrap(),
    );

    let args = |extra: &[&str]| {
        let mut args = vec!["backfill"];
        for scene in good.iter().chain([&odd]) {
            args.extend(["--scene", scene.as_str()]);
        }
        args.extend(extra);
        args.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let run = |extra: &[&str]| {
        let args = args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cluster.troupectl_with(&env, &args).unwrap()
    };

    let dry = run(&["--dry-run"]);
    let said = String::from_utf8_lossy(&dry.stdout).into_owned();
    assert!(said.contains("7 scenes: 5 would convert, 1 skipped"), "{said}");
    assert!(said.contains(&format!("failed {odd}")), "{said}");

    // A visitor opening a scene while the run goes on makes the same seed: one copy.
    let racing = tokio::spawn({
        let (base, scene, tok) = (owner_base(&good[3]), good[3].clone(), tok.clone());
        async move { TestClient::connect(&base, &scene, &tok).await.map(|c| read(&c)) }
    });
    let first = run(&[]);
    let said = String::from_utf8_lossy(&first.stdout).into_owned();
    assert!(
        !first.status.success(),
        "a failed scene makes the run fail: {said}"
    );
    assert!(
        said.contains("7 scenes: 5 converted, 1 skipped (already in Troupe), 1 failed"),
        "{said}"
    );
    assert!(said.contains("unknown block type"), "{said}");
    assert_eq!(racing.await.unwrap().unwrap(), screenplay());

    // Every converted scene reads as P1 had it, once, in a fresh client.
    for scene in &good {
        let fresh = TestClient::connect(&owner_base(scene), scene, &tok)
            .await
            .unwrap();
        assert_eq!(read(&fresh), screenplay(), "{scene}");
    }
    // Again: nothing left to do but the scene that cannot be read.
    let again = run(&[]);
    let said = String::from_utf8_lossy(&again.stdout).into_owned();
    assert!(said.contains("7 scenes: 0 converted, 6 skipped"), "{said}");
}

#[tokio::test]
async fn live_scenes_are_written_back_to_p1() {
    for backend in Backend::all() {
        // Soon after typing stops…
        let node = NodeProcess::start(
            &backend,
            &[("TROUPE_P1_WRITE_DELAY", "200ms"), ("TROUPE_P1_MAX_LAG", "1s")],
        )
        .unwrap();
        let scene = unique("dual");
        write_p1(&node, &backend, &scene, &rows(&screenplay())).await;
        let tok = token("ada", &[(scene.as_str(), Role::Edit)]);
        let mut editor = TestClient::connect(&node.ws_base(), &scene, &tok).await.unwrap();
        let typed = std::time::Instant::now();
        add_block(&mut editor, "action", "The door bangs open.").await;
        let mut expected = rows(&screenplay());
        expected.push(("action".into(), "The door bangs open.".into()));
        let deadline = typed + std::time::Duration::from_secs(10);
        loop {
            let (version, blocks) = read_p1(&node.data_dir, &backend, &scene).await;
            if blocks == expected {
                assert_eq!(version, 2, "{backend:?}: one write, one version");
                println!(
                    "{backend:?}: P1 had the change {:?} after it was typed",
                    typed.elapsed()
                );
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{backend:?}: P1 never got the change: {blocks:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // A writer that does not hold the lease is refused, and P1 stays as it was.
        let location = match &backend {
            Backend::Sqlite => {
                troupe_node::config::StoreLocation::Sqlite(node.data_dir.join("troupe.sqlite3"))
            }
            Backend::Postgres(url) => troupe_node::config::StoreLocation::Postgres(url.clone()),
        };
        let store = troupe_node::store::Store::open(&location).await.unwrap();
        let stale = store
            .write_p1_blocks(
                &scene,
                "a-former-owner",
                1,
                2,
                &[Block::new(BlockType::Action, "stale")],
            )
            .await
            .unwrap();
        assert_eq!(
            stale,
            troupe_node::store::P1Write::Fenced,
            "{backend:?}: a write without the lease was accepted"
        );
        assert_eq!(read_p1(&node.data_dir, &backend, &scene).await.1, expected);
    }
}

#[tokio::test]
async fn an_unloading_scene_writes_its_last_state_to_p1() {
    // The delay is long: only the unload can bring the change to P1 this soon.
    let node = NodeProcess::start(
        &Backend::Sqlite,
        &[
            ("TROUPE_P1_WRITE_DELAY", "60s"),
            ("TROUPE_P1_MAX_LAG", "60s"),
            ("TROUPE_ROOM_IDLE", "300ms"),
        ],
    )
    .unwrap();
    let scene = unique("last");
    write_p1(&node, &Backend::Sqlite, &scene, &rows(&screenplay())).await;
    let tok = token("ada", &[(scene.as_str(), Role::Edit)]);
    let mut editor = TestClient::connect(&node.ws_base(), &scene, &tok).await.unwrap();
    add_block(&mut editor, "transition", "FADE OUT.").await;
    drop(editor);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, blocks) = read_p1(&node.data_dir, &Backend::Sqlite, &scene).await;
        if blocks.last() == Some(&("transition".to_string(), "FADE OUT.".to_string())) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the unload did not write P1: {blocks:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_content_api_answers_through_the_router_from_the_owner() {
    use troupe_tests::cluster::{http_request_with, RouterProcess, TestCluster};
    let cluster = TestCluster::start(3, &[]).await.unwrap();
    let router = RouterProcess::start_with(
        &cluster.rpc_addrs(),
        &[("TROUPE_ALLOWED_ORIGINS", "https://app.example")],
    )
    .await
    .unwrap();
    let backend = cluster.backend.clone();
    let scene = unique("api");
    write_p1_in(&cluster.dir, &backend, &scene, &rows(&screenplay())).await;
    let reader = format!("Bearer {}", token("rita", &[(scene.as_str(), Role::View)]));
    let get = |path: String, auth: Option<String>| {
        let addr = router.addr;
        async move {
            let headers: Vec<(&str, &str)> = auth
                .as_deref()
                .map(|a| vec![("Authorization", a)])
                .unwrap_or_default();
            let (status, _, body) = http_request_with(addr, &path, &headers).await.unwrap();
            (status, body)
        }
    };
    let path = format!("/v1/scenes/{scene}/content");

    // Not loaded anywhere yet: the owner loads (and seeds) it to answer.
    let (status, body) = get(path.clone(), Some(reader.clone())).await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["version"], 1);
    let blocks: Vec<Block> = serde_json::from_value(json["blocks"].clone()).unwrap();
    assert_eq!(blocks, screenplay());
    let (status, body) = get(format!("{path}?format=fountain"), Some(reader.clone())).await;
    assert_eq!(status, 200);
    assert!(
        body.starts_with("INT. DINER - NIGHT\n\nRain on the windows."),
        "{body}"
    );
    assert!(body.contains("ZOË\n(not looking up)\nYou're late.\n"), "{body}");

    // A live edit is in the very next answer.
    let placement = cluster.view().await.unwrap().placement();
    let base = format!("{}/ws/scenes", placement.route(&scene).unwrap().url);
    let mut editor = TestClient::connect(&base, &scene, &token("ada", &[(scene.as_str(), Role::Edit)]))
        .await
        .unwrap();
    add_block(&mut editor, "action", "The jukebox dies.").await;
    let (_, body) = get(format!("{path}?format=text"), Some(reader.clone())).await;
    assert!(body.ends_with("CUT TO:\nThe jukebox dies.\n"), "{body}");

    // Changes go through the router to the owner, for editors only, and reach the editor.
    let patch = r#"{"edits":[{"op":"insert","at":0,"blocks":[{"type":"transition","text":"FADE IN:"}]}]}"#;
    let (status, answer) = troupe_tests::http_send(
        router.addr,
        "PATCH",
        &path,
        &[("Authorization", reader.as_str())],
        patch,
    )
    .await
    .unwrap();
    assert_eq!(status, 403, "a viewer's token changed the scene: {answer}");
    let writer = format!("Bearer {}", token("ada", &[(scene.as_str(), Role::Edit)]));
    let (status, answer) = troupe_tests::http_send(
        router.addr,
        "PATCH",
        &path,
        &[("Authorization", writer.as_str())],
        patch,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{answer}");
    editor
        .pump_until(std::time::Duration::from_secs(5), |c| {
            read(c).first().is_some_and(|b| b.text == "FADE IN:")
        })
        .await
        .unwrap();
    let (_, body) = get(format!("{path}?format=text"), Some(reader.clone())).await;
    assert!(body.starts_with("FADE IN:\n"), "{body}");

    // CORS for the allowed origins only: the answer, and the preflight of a request with a token.
    let with_origin = |origin: &str| {
        let (addr, path, auth, origin) = (router.addr, path.clone(), reader.clone(), origin.to_string());
        async move {
            let (_, headers, _) =
                http_request_with(addr, &path, &[("Authorization", &auth), ("Origin", &origin)])
                    .await
                    .unwrap();
            headers
                .into_iter()
                .find(|(k, _)| k == "access-control-allow-origin")
                .map(|(_, v)| v)
        }
    };
    assert_eq!(
        with_origin("https://app.example").await.as_deref(),
        Some("https://app.example")
    );
    assert_eq!(with_origin("https://evil.example").await, None);
    let preflight = |origin: &str| {
        let (addr, path, origin) = (router.addr, path.clone(), origin.to_string());
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let request = format!(
                "OPTIONS {path} HTTP/1.1\r\nhost: x\r\norigin: {origin}\r\naccess-control-request-method: GET\r\n\
                 access-control-request-headers: authorization\r\nconnection: close\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.unwrap();
            answer.to_ascii_lowercase()
        }
    };
    let allowed = preflight("https://app.example").await;
    assert!(allowed.starts_with("http/1.1 204"), "{allowed}");
    assert!(
        allowed.contains("access-control-allow-headers: authorization"),
        "{allowed}"
    );
    assert!(preflight("https://evil.example")
        .await
        .starts_with("http/1.1 403"));

    // Refusals.
    assert_eq!(get(path.clone(), None).await.0, 401);
    let other = format!("Bearer {}", token("rita", &[("elsewhere", Role::View)]));
    assert_eq!(get(path.clone(), Some(other)).await.0, 403);
    let nobody = unique("nobody");
    let anyone = format!("Bearer {}", token("rita", &[("*", Role::View)]));
    assert_eq!(
        get(format!("/v1/scenes/{nobody}/content"), Some(anyone)).await.0,
        404
    );
    assert_eq!(get(format!("{path}?format=pdf"), Some(reader)).await.0, 400);
}

#[tokio::test]
async fn p1_writes_merge_into_the_live_scene_and_nothing_typed_is_lost() {
    for backend in Backend::all() {
        let node = NodeProcess::start(
            &backend,
            &[
                ("TROUPE_P1_WRITE_DELAY", "100ms"),
                ("TROUPE_P1_MAX_LAG", "1s"),
                ("TROUPE_P1_CHECK_INTERVAL", "200ms"),
            ],
        )
        .unwrap();
        let scene = unique("merge");
        write_p1(&node, &backend, &scene, &rows(&screenplay())).await;
        let editor_token = token("ada", &[(scene.as_str(), Role::Edit)]);
        let mut editor = TestClient::connect(&node.ws_base(), &scene, &editor_token)
            .await
            .unwrap();
        assert_eq!(read(&editor), screenplay());
        let auth = format!("Bearer {editor_token}");
        let headers = [("Authorization", auth.as_str())];
        let path = format!("/v1/scenes/{scene}/content");

        // An autosave based on version 1 while the editor added a block: both stay.
        add_block(&mut editor, "action", "[live-1] The jukebox dies.").await;
        let mut saved = screenplay();
        saved[1].text.push_str(" [p1-1]");
        let body = serde_json::json!({ "base_version": 1, "blocks": saved }).to_string();
        let (status, answer) = troupe_tests::http_send(node.addr, "PUT", &path, &headers, &body)
            .await
            .unwrap();
        assert_eq!(status, 200, "{backend:?}: {answer}");
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
        let version = answer["version"].as_u64().unwrap();
        let seen = until_doc(&mut editor, "PUT", |b| {
            b.iter().any(|b| b.text.contains("[p1-1]"))
        })
        .await;
        assert!(
            seen.iter().any(|b| b.text.contains("[live-1]")),
            "{backend:?}: {seen:?}"
        );
        let (p1_version, p1_rows) = read_p1(&node.data_dir, &backend, &scene).await;
        assert_eq!(p1_version as u64, version, "{backend:?}");
        assert_eq!(p1_rows, rows(&seen), "{backend:?}: P1 holds the merge");

        // A PATCH from a backend, positions in the scene as it is now.
        let body = r#"{"edits":[{"op":"insert","at":0,"blocks":[{"type":"transition","text":"[patch] FADE IN:"}]}]}"#;
        let (status, answer) = troupe_tests::http_send(node.addr, "PATCH", &path, &headers, body)
            .await
            .unwrap();
        assert_eq!(status, 200, "{backend:?}: {answer}");
        until_doc(&mut editor, "PATCH", |b| {
            b.first().is_some_and(|b| b.text == "[patch] FADE IN:")
        })
        .await;

        // The P1 app writes straight into content_blocks, from what it last read, while the
        // editor types into another block: merged within a few seconds, both stay.
        let (_, current) = read_p1(&node.data_dir, &backend, &scene).await;
        let mut direct: Vec<Block> = current
            .iter()
            .map(|(t, x)| Block::new(t.parse().unwrap(), x.clone()))
            .collect();
        direct.push(Block::new(BlockType::Action, "[p1-direct] Thunder."));
        add_block(&mut editor, "dialogue", "[live-2] Who's there?").await;
        p1_app_saves(&node.data_dir, &backend, &scene, &direct).await;
        let end = until_doc(&mut editor, "direct write", |b| {
            b.iter().any(|b| b.text.contains("[p1-direct]"))
        })
        .await;
        for marker in ["[live-1]", "[p1-1]", "[patch]", "[live-2]", "[p1-direct]"] {
            let count = end.iter().filter(|b| b.text.contains(marker)).count();
            assert_eq!(count, 1, "{backend:?}: {marker} present {count} times in {end:?}");
        }
        // P1 converges on the same blocks, and a fresh client reads them too.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (_, p1_rows) = read_p1(&node.data_dir, &backend, &scene).await;
            let fresh = TestClient::connect(&node.ws_base(), &scene, &editor_token)
                .await
                .unwrap();
            if p1_rows == rows(&end) && read(&fresh) == end {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{backend:?}: P1 {p1_rows:?} != {end:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }

        // Bad input changes nothing and says why.
        let (_, before) = read_p1(&node.data_dir, &backend, &scene).await;
        for (method, body, want) in [
            (
                "PUT",
                r#"{"base_version":1,"blocks":[{"type":"slugline","text":"x"}]}"#,
                422,
            ),
            ("PUT", r#"{"base_version":999,"blocks":[]}"#, 409),
            ("PATCH", r#"{"edits":[{"op":"delete","at":99}]}"#, 422),
            ("PUT", "not json", 422),
        ] {
            let (status, answer) = troupe_tests::http_send(node.addr, method, &path, &headers, body)
                .await
                .unwrap();
            assert_eq!(status, want, "{backend:?} {method} {body}: {answer}");
            assert!(answer.contains("\"message\""), "{answer}");
        }
        let viewer = format!("Bearer {}", token("vic", &[(scene.as_str(), Role::View)]));
        let (status, _) = troupe_tests::http_send(
            node.addr,
            "PATCH",
            &path,
            &[("Authorization", viewer.as_str())],
            body,
        )
        .await
        .unwrap();
        assert_eq!(status, 403, "{backend:?}: a viewer changed the scene");
        // A deletion of a block edited live since the base version is refused, naming the version.
        let base_version = read_p1(&node.data_dir, &backend, &scene).await.0;
        let (_, rows_now) = read_p1(&node.data_dir, &backend, &scene).await;
        let last = rows_now.len() - 1;
        {
            use yrs::{GetString, Text, XmlFragment};
            let fragment = editor.doc.get_or_insert_xml_fragment(blocks::FRAGMENT);
            let update = {
                let mut txn = editor.doc.transact_mut();
                let Some(yrs::XmlOut::Element(e)) = fragment.get(&txn, last as u32) else {
                    panic!()
                };
                let Some(yrs::XmlOut::Text(t)) = e.get(&txn, 0) else {
                    panic!()
                };
                let len = t.get_string(&txn).encode_utf16().count() as u32;
                t.insert(&mut txn, len, " [live-3]");
                txn.encode_update_v1()
            };
            editor.sent_updates += 1;
            editor
                .send_raw(troupe_proto::message::encode_update(&update))
                .await
                .unwrap();
            editor.wait_acked().await.unwrap();
        }
        let body = format!(r#"{{"base_version":{base_version},"edits":[{{"op":"delete","at":{last}}}]}}"#);
        let (status, answer) = troupe_tests::http_send(node.addr, "PATCH", &path, &headers, &body)
            .await
            .unwrap();
        assert_eq!(status, 409, "{backend:?}: {answer}");
        assert!(answer.contains("edited live"), "{answer}");
        let _ = before;
        let after = until_doc(&mut editor, "refused", |b| {
            b.iter().any(|b| b.text.contains("[live-3]"))
        })
        .await;
        assert_eq!(
            after.len(),
            end.len(),
            "{backend:?}: a refused change changed the scene"
        );
    }
}
