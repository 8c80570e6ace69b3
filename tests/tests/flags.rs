//! Feature flags on a 3-node cluster: `troupectl flags` shows and sets them (refusing bad
//! ones, changing nothing), every node enforces a change at once — collaboration off closes
//! open connections with 4410 and refuses new ones, realtime editing off makes editors
//! read-only (and on again, they reconnect), presence off keeps awareness in — and the
//! router's `GET /v1/flags` answers what a client should do.

use std::time::{Duration, Instant};

use troupe_proto::message as protocol;
use troupe_proto::token::Role;
use troupe_tests::cluster::{RouterProcess, TestCluster};
use troupe_tests::{token, unique, TestClient};

fn run(cluster: &TestCluster, args: &[&str]) -> (bool, String) {
    let out = cluster.troupectl(args).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn flags_of(router: &RouterProcess, scene: &str, user: &str) -> serde_json::Value {
    let (status, body) = troupe_tests::http_send(
        router.addr,
        "GET",
        &format!("/v1/flags?scene={scene}&user={user}"),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn flags_are_set_shown_and_enforced_on_every_node() {
    let cluster = TestCluster::start(3, &[]).await.unwrap();
    let addrs: Vec<String> = cluster.nodes.values().map(|n| n.rpc_addr.to_string()).collect();
    let router = RouterProcess::start(&addrs).await.unwrap();
    let placement = cluster.view().await.unwrap().placement();
    let base = |scene: &str| format!("{}/ws/scenes", placement.route(scene).unwrap().url);

    let (ok, shown) = run(&cluster, &["flags"]);
    assert!(
        ok && shown.contains("enableYjs              true") && shown.contains("rolloutPercent         100"),
        "{shown}"
    );
    let scene = unique("flags");
    assert_eq!(flags_of(&router, &scene, "ada").await["mode"], "live");

    // Bad changes are refused with a reason and change nothing (all checked before any is sent).
    for bad in [
        &["flags", "set", "enableYJS=false"][..],
        &["flags", "set", "enableYjs=maybe"],
        &["flags", "set", "rolloutPercent=101"],
        &["flags", "set", "enablePresence=false", "rolloutBy=team"],
        &["flags", "set", "enableYjs"],
        &["flags", "set", "--scene", &scene, "rolloutPercent=5"],
        &["flags", "set", "--scene", "not a scene", "enableYjs=false"],
    ] {
        let (ok, said) = run(&cluster, bad);
        assert!(!ok, "{bad:?} was accepted: {said}");
        assert!(
            said.lines().count() <= 2 && said.contains("troupectl:"),
            "{bad:?}: {said}"
        );
    }
    let (_, after) = run(&cluster, &["flags"]);
    assert_eq!(after, shown, "a refused change changed something");

    // Many editors on several scenes (so on every node); the kill switch closes them all.
    let mut editors = Vec::new();
    for i in 0..12 {
        let s = format!("{scene}-{i}");
        let tok = token(&format!("w{i}"), &[(s.as_str(), Role::Edit)]);
        editors.push(TestClient::connect(&base(&s), &s, &tok).await.unwrap());
    }
    let flipped = Instant::now();
    let (ok, said) = run(&cluster, &["flags", "set", "enableYjs=false"]);
    assert!(ok, "{said}");
    assert_eq!(said.trim(), "cluster: enableYjs true -> false");
    let mut slowest = Duration::ZERO;
    for editor in &mut editors {
        let closed = tokio::time::timeout(Duration::from_secs(3), editor.expect_close())
            .await
            .expect("closed within a second or so")
            .unwrap();
        assert_eq!(closed.code, 4410, "{closed}");
        assert!(closed.reason.contains("autosave"), "{closed}");
        slowest = slowest.max(flipped.elapsed());
    }
    println!("kill switch: 12 editors on 3 nodes closed with 4410 within {slowest:?} of the command");
    assert_eq!(flags_of(&router, &scene, "ada").await["mode"], "autosave");
    let tok = token("ada", &[(scene.as_str(), Role::Edit)]);
    let refused = TestClient::connect(&base(&scene), &scene, &tok)
        .await
        .err()
        .map(|e| e.to_string());
    assert!(
        refused.as_deref().is_some_and(|e| e.contains("4410")),
        "{refused:?}"
    );
    // One scene switched on by name works while the rest are off.
    let (ok, said) = run(&cluster, &["flags", "set", "--scene", &scene, "enableYjs=true"]);
    assert!(
        ok && said.contains(&format!("scene {scene}: enableYjs default -> true")),
        "{said}"
    );
    let mut ada = TestClient::connect(&base(&scene), &scene, &tok).await.unwrap();
    assert_eq!(flags_of(&router, &scene, "ada").await["mode"], "live");
    assert_eq!(
        flags_of(&router, &format!("{scene}-0"), "ada").await["mode"],
        "autosave"
    );
    let (ok, _) = run(&cluster, &["flags", "set", "enableYjs=true"]);
    assert!(ok);

    // Realtime editing off for the scene: an editor's update reaches nobody; on again, the
    // editor is asked to reconnect (its full sync brings what it typed meanwhile).
    let bob_tok = token("bob", &[(scene.as_str(), Role::Edit)]);
    let mut bob = TestClient::connect(&base(&scene), &scene, &bob_tok)
        .await
        .unwrap();
    let (ok, _) = run(
        &cluster,
        &["flags", "set", "--scene", &scene, "enableRealtimeEditing=false"],
    );
    assert!(ok);
    assert_eq!(flags_of(&router, &scene, "ada").await["mode"], "read_only");
    // The editors are told, in y-websocket's terms ("permission denied"), so a page can
    // turn read-only; a viewer is told so when it joins.
    ada.pump_until(Duration::from_secs(3), |c| !c.denied.is_empty())
        .await
        .unwrap();
    assert!(ada.denied[0].starts_with("read-only"), "{:?}", ada.denied);
    let vic = token("vic", &[(scene.as_str(), Role::View)]);
    let mut viewer = TestClient::connect(&base(&scene), &scene, &vic).await.unwrap();
    viewer
        .pump_until(Duration::from_secs(3), |c| !c.denied.is_empty())
        .await
        .unwrap();
    assert!(viewer.denied[0].contains("may only view"), "{:?}", viewer.denied);
    ada.type_text("[typed while read-only]").await.unwrap();
    bob.pump(Duration::from_millis(500)).await.unwrap();
    assert!(
        !bob.text().contains("read-only"),
        "an update got through: {}",
        bob.text()
    );
    let (ok, _) = run(
        &cluster,
        &["flags", "set", "--scene", &scene, "enableRealtimeEditing=default"],
    );
    assert!(ok);
    for editor in [&mut ada, &mut bob] {
        let closed = tokio::time::timeout(Duration::from_secs(3), editor.expect_close())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(closed.code, 1012, "{closed}");
    }
    let mut ada = TestClient::connect(&base(&scene), &scene, &tok).await.unwrap();
    let mut bob = TestClient::connect(&base(&scene), &scene, &bob_tok)
        .await
        .unwrap();
    ada.type_text("[live again]").await.unwrap();
    bob.pump_until(Duration::from_secs(5), |c| c.text().contains("[live again]"))
        .await
        .unwrap();

    // Presence off: awareness stays in.
    let (ok, _) = run(&cluster, &["flags", "set", "enablePresence=false"]);
    assert!(ok);
    tokio::time::sleep(Duration::from_millis(300)).await;
    bob.awareness_seen.clear();
    ada.send_raw(protocol::encode_awareness(
        [(4242u64, 1u64, r#"{"user":{"name":"Ada"}}"#)].into_iter(),
    ))
    .await
    .unwrap();
    bob.pump(Duration::from_millis(500)).await.unwrap();
    assert!(bob.awareness_seen.is_empty(), "awareness left the node");
    let (ok, _) = run(&cluster, &["flags", "set", "enablePresence=true"]);
    assert!(ok);

    // The rollout: 0 % keeps everyone out but a scene switched on by name.
    let (ok, said) = run(&cluster, &["flags", "set", "rolloutPercent=0"]);
    assert!(ok && said.contains("rolloutPercent 100 -> 0"), "{said}");
    let other = format!("{scene}-1");
    let tok = token("cy", &[(other.as_str(), Role::Edit)]);
    let refused = TestClient::connect(&base(&other), &other, &tok)
        .await
        .err()
        .map(|e| e.to_string());
    assert!(
        refused.as_deref().is_some_and(|e| e.contains("4410")),
        "{refused:?}"
    );
    let (_, shown) = run(&cluster, &["flags", "show", "--scene", &scene, "--user", "ada"]);
    assert!(
        shown.contains(&format!("{scene}: enableYjs=true")) && shown.contains("mode Live"),
        "{shown}"
    );
}
