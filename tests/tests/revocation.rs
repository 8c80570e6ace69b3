//! Revoking a user (`troupectl revoke`) cuts them off on every node within moments: their
//! open connections close with 4401, their old tokens are refused on the WebSocket and the
//! router's REST endpoints, other users keep editing, and a token issued after the
//! revocation (or lifting it) lets them back in.

use std::time::{Duration, Instant};

use troupe_proto::token::Role;
use troupe_tests::cluster::{http_request_with, RouterProcess, TestCluster};
use troupe_tests::{token, TestClient};

/// One scene owned by each node of the cluster.
async fn one_scene_per_node(cluster: &TestCluster) -> Vec<(u64, String)> {
    let placement = cluster.view().await.unwrap().placement();
    let mut scenes: Vec<(u64, String)> = Vec::new();
    for i in 0.. {
        let scene = format!("revoke-{i}");
        let owner = placement.route(&scene).unwrap().node.0;
        if !scenes.iter().any(|(node, _)| *node == owner) {
            scenes.push((owner, scene));
        }
        if scenes.len() == cluster.nodes.len() {
            break;
        }
    }
    scenes
}

#[tokio::test]
async fn a_revoked_user_is_cut_off_on_every_node_and_others_keep_editing() {
    let cluster = TestCluster::start(3, &[]).await.unwrap();
    let router = RouterProcess::start(&cluster.rpc_addrs()).await.unwrap();
    let scenes = one_scene_per_node(&cluster).await;
    let old_token = token("mallory", &[("*", Role::Edit)]);
    let alice_token = token("alice", &[("*", Role::Edit)]);

    let mut mallory = Vec::new();
    let mut alice = Vec::new();
    for (node, scene) in &scenes {
        let base = cluster.node(*node).unwrap().ws_base();
        let mut m = TestClient::connect(&base, scene, &old_token).await.unwrap();
        m.type_text("before ").await.unwrap();
        m.wait_acked().await.unwrap();
        mallory.push(m);
        alice.push(TestClient::connect(&base, scene, &alice_token).await.unwrap());
    }
    let presence = |scene: &str, token: &str| {
        let (addr, path, auth) = (
            router.addr,
            format!("/v1/scenes/{scene}/presence"),
            format!("Bearer {token}"),
        );
        async move {
            http_request_with(addr, &path, &[("Authorization", &auth)])
                .await
                .unwrap()
                .0
        }
    };
    assert_ne!(presence(&scenes[0].1, &old_token).await, 401, "not revoked yet");

    // Tokens carry their issue time in seconds: the revocation must come a second later.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let revoked_at = Instant::now();
    let said = cluster.troupectl_ok(&["revoke", "mallory"]).unwrap();
    assert!(said.contains("mallory"), "{said}");

    let mut cut_off = Vec::new();
    for m in &mut mallory {
        let closed = m.expect_close().await.unwrap();
        assert_eq!(
            (closed.code, closed.reason.as_str()),
            (4401, "access revoked"),
            "{closed}"
        );
        cut_off.push(revoked_at.elapsed());
    }
    let slowest = cut_off.iter().max().copied().unwrap_or_default();
    println!(
        "revoked user cut off on {} nodes; slowest after {slowest:?}",
        cut_off.len()
    );
    assert!(slowest < Duration::from_secs(5), "cut off after {slowest:?}");

    // Everyone else goes on editing, on every node.
    for a in &mut alice {
        a.type_text("alice still types ").await.unwrap();
        a.wait_acked().await.unwrap();
    }

    // The old token no longer opens anything, anywhere.
    for (node, scene) in &scenes {
        let base = cluster.node(*node).unwrap().ws_base();
        let mut again = TestClient::open(&base, scene, &format!("token={old_token}"))
            .await
            .unwrap();
        let closed = again.expect_close().await.unwrap();
        assert_eq!(closed.code, 4401, "{closed}");
    }
    assert_eq!(presence(&scenes[0].1, &old_token).await, 401);

    // A token issued now is good again.
    let new_token = token("mallory", &[("*", Role::Edit)]);
    let (node, scene) = &scenes[1];
    let mut back = TestClient::connect(&cluster.node(*node).unwrap().ws_base(), scene, &new_token)
        .await
        .unwrap();
    back.type_text("after").await.unwrap();
    back.wait_acked().await.unwrap();
    assert_ne!(presence(scene, &new_token).await, 401);

    // Listed, then lifted: the old token works again.
    let listed = cluster.troupectl_ok(&["revoked"]).unwrap();
    assert!(listed.contains("mallory"), "{listed}");
    cluster.troupectl_ok(&["revoke", "--lift", "mallory"]).unwrap();
    assert!(cluster
        .troupectl_ok(&["revoked"])
        .unwrap()
        .contains("no user is revoked"));
    let (node, scene) = &scenes[2];
    let base = cluster.node(*node).unwrap().ws_base();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TestClient::connect(&base, scene, &old_token).await {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => panic!("the lifted user still cannot connect: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
