//! Presence on Redis, read through the router without joining the scene: it appears with
//! a client's awareness, follows its cursor, disappears when the client leaves, leaves no
//! ghost when the node serving the scene dies, and comes back by itself after a Redis
//! outage — during which editing carries on untouched.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use troupe_chaos::client::{ClientOptions, EditorClient};
use troupe_proto::token::Role;
use troupe_tests::cluster::{http_request, http_request_with, resolve, RouterProcess, TestCluster};
use troupe_tests::redis::{skip_without_redis, RedisProcess};
use troupe_tests::{token, unique};

/// The users the router reports in `scene` (`None` while presence is unavailable).
/// The scene's presence as a viewer of it sees it through the router.
async fn presence(router: &RouterProcess, scene: &str) -> Option<Vec<Value>> {
    let viewer = format!("Bearer {}", token("viewer", &[(scene, Role::View)]));
    let (status, _, body) = http_request_with(
        router.addr,
        &format!("/v1/scenes/{scene}/presence"),
        &[("Authorization", &viewer)],
    )
    .await
    .ok()?;
    if status != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    v["users"].as_array().cloned()
}

/// Polls presence until `done` holds.
async fn wait_presence(
    router: &RouterProcess,
    scene: &str,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(users) = presence(router, scene).await {
            if done(&users) {
                return users;
            }
        }
        assert!(
            Instant::now() < deadline,
            "presence never showed {what}: {:?}",
            presence(router, scene).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn editor(url: &str, scene: &str, token: &str) -> EditorClient {
    let client = EditorClient::connect(
        &format!("{url}/ws/scenes"),
        scene,
        token,
        ClientOptions {
            acks: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    client.wait_synced(Duration::from_secs(10)).await.unwrap();
    client
}

fn cursor(users: &[Value], name: &str) -> Option<i64> {
    users
        .iter()
        .find(|u| u["state"]["user"]["name"] == name)
        .and_then(|u| u["state"]["cursor"]["anchor"].as_i64())
}

#[tokio::test]
async fn presence_follows_clients_and_survives_a_redis_outage() {
    if skip_without_redis("presence_follows_clients_and_survives_a_redis_outage") {
        return;
    }
    let mut redis = RedisProcess::start().unwrap();
    let url = redis.url();
    let cluster = TestCluster::start(1, &[("TROUPE_REDIS_URL", &url)])
        .await
        .unwrap();
    let router = RouterProcess::start_with(&cluster.rpc_addrs(), &[("TROUPE_REDIS_URL", &url)])
        .await
        .unwrap();
    let scene = unique("presence");
    let grant = [(scene.as_str(), Role::Edit)];
    let (_, owner, _) = resolve(router.addr, &scene).await.unwrap();

    // Appears, with the awareness state as the client sent it and the token's user.
    let alice = editor(&owner, &scene, &token("Alice", &grant)).await;
    alice
        .set_awareness(Some(
            &json!({ "user": { "name": "Alice", "color": "#ee3333" }, "cursor": { "anchor": 3 } }),
        ))
        .await
        .unwrap();
    let users = wait_presence(&router, &scene, "Alice", |u| cursor(u, "Alice") == Some(3)).await;
    assert_eq!(users.len(), 1);
    // Names and states; never the token's subject.
    assert!(users[0].get("user").is_none(), "{}", users[0]);
    // Only for a token that may read the scene.
    let path = format!("/v1/scenes/{scene}/presence");
    let (status, _, _) = http_request(router.addr, &path).await.unwrap();
    assert_eq!(status, 401, "presence without a token");
    let elsewhere = format!("Bearer {}", token("nosy", &[("another-scene", Role::Edit)]));
    let (status, _, _) = http_request_with(router.addr, &path, &[("Authorization", &elsewhere)])
        .await
        .unwrap();
    assert_eq!(status, 403, "presence with another scene's token");
    assert_eq!(users[0]["state"]["user"]["color"], "#ee3333");
    assert_eq!(users[0]["client"], alice.client_id());

    // Moves with the cursor.
    alice
        .set_awareness(Some(
            &json!({ "user": { "name": "Alice", "color": "#ee3333" }, "cursor": { "anchor": 42 } }),
        ))
        .await
        .unwrap();
    wait_presence(&router, &scene, "Alice's cursor at 42", |u| {
        cursor(u, "Alice") == Some(42)
    })
    .await;

    // A second user, who poses as Alice with a colour carrying CSS: everyone sees Bob, with
    // no colour. Then the first leaves and only she disappears.
    let bob = editor(&owner, &scene, &token("Bob", &grant)).await;
    bob.set_awareness(Some(
        &json!({ "user": { "name": "Alice", "color": "red; background: url(//evil)" }, "cursor": { "anchor": 1 } }),
    ))
    .await
    .unwrap();
    let users = wait_presence(&router, &scene, "two users", |u| u.len() == 2).await;
    let posed = users.iter().find(|u| u["client"] == bob.client_id()).unwrap();
    assert_eq!(posed["state"]["user"], json!({ "name": "Bob" }), "{posed}");
    alice.close(1000, "bye").await.unwrap();
    let users = wait_presence(&router, &scene, "Bob alone", |u| u.len() == 1).await;
    assert_eq!(users[0]["state"]["user"]["name"], "Bob");

    // Redis goes away: presence outside the room is unavailable, editing is not.
    redis.stop().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while presence(&router, &scene).await.is_some() {
        assert!(Instant::now() < deadline, "presence still answered without Redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bob.push("text", "INT. NO REDIS - DAY").await.unwrap();
    bob.wait_acked(Duration::from_secs(10)).await.unwrap();

    // Redis comes back (empty): presence returns by itself with the next change or refresh.
    redis.start_again().unwrap();
    bob.set_awareness(Some(
        &json!({ "user": { "name": "Bob" }, "cursor": { "anchor": 7 } }),
    ))
    .await
    .unwrap();
    wait_presence(&router, &scene, "Bob after the outage", |u| {
        cursor(u, "Bob") == Some(7)
    })
    .await;
    assert_eq!(bob.text("text").await.unwrap(), "INT. NO REDIS - DAY");
}

#[tokio::test]
async fn a_dead_nodes_presence_leaves_no_ghost() {
    if skip_without_redis("a_dead_nodes_presence_leaves_no_ghost") {
        return;
    }
    let redis = RedisProcess::start().unwrap();
    let url = redis.url();
    let mut cluster = TestCluster::start(3, &[("TROUPE_REDIS_URL", &url)])
        .await
        .unwrap();
    let router = RouterProcess::start_with(&cluster.rpc_addrs(), &[("TROUPE_REDIS_URL", &url)])
        .await
        .unwrap();
    let view = cluster.view().await.unwrap();
    let leader = view.leader.unwrap();
    let scene = (0..)
        .map(|i| format!("{}-{i}", unique("ghost")))
        .find(|s| view.placement().route(s).unwrap().node != leader)
        .unwrap();
    let victim = view.placement().route(&scene).unwrap();
    let grant = [(scene.as_str(), Role::Edit)];
    let token = token("Stays", &grant);

    // Two users on the doomed node; only one of them will come back.
    let stays = editor(&victim.url, &scene, &token).await;
    stays
        .set_awareness(Some(
            &json!({ "user": { "name": "Stays" }, "cursor": { "anchor": 1 } }),
        ))
        .await
        .unwrap();
    let leaves = editor(&victim.url, &scene, &troupe_tests::token("Gone", &grant)).await;
    leaves
        .set_awareness(Some(
            &json!({ "user": { "name": "Gone" }, "cursor": { "anchor": 2 } }),
        ))
        .await
        .unwrap();
    wait_presence(&router, &scene, "both users", |u| u.len() == 2).await;

    cluster.node_mut(victim.node.0).unwrap().kill9();
    drop(leaves);
    // The scene moves; the user who stays reconnects to its new owner.
    let deadline = Instant::now() + Duration::from_secs(10);
    let new_owner = loop {
        let (node, url, _) = resolve(router.addr, &scene).await.unwrap();
        if node != victim.node.0 {
            break url;
        }
        assert!(Instant::now() < deadline, "the scene never moved");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stays
        .reconnect_to(&format!("{new_owner}/ws/scenes/{scene}?token={token}&acks=1"))
        .await
        .unwrap();
    stays.wait_synced(Duration::from_secs(10)).await.unwrap();
    let users = wait_presence(&router, &scene, "only the user who came back", |u| {
        u.len() == 1 && u[0]["state"]["user"]["name"] == "Stays" && u[0]["node"] != victim.node.0
    })
    .await;
    assert_eq!(users.len(), 1);
}

#[tokio::test]
async fn failover_notices_bring_a_cut_off_router_up_to_date() {
    if skip_without_redis("failover_notices_bring_a_cut_off_router_up_to_date") {
        return;
    }
    let redis = RedisProcess::start().unwrap();
    let url = redis.url();
    let mut cluster = TestCluster::start(3, &[("TROUPE_REDIS_URL", &url)])
        .await
        .unwrap();
    let view = cluster.view().await.unwrap();
    let leader = view.leader.unwrap().0;
    // The router follows one node only, and that node freezes: its watch learns nothing.
    let followed = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    let router = RouterProcess::start_with(
        &[cluster.node(followed).unwrap().rpc_addr.to_string()],
        &[("TROUPE_REDIS_URL", &url)],
    )
    .await
    .unwrap();
    troupe_tests::cluster::signal(cluster.node(followed).unwrap(), "STOP");

    // A node is added through the others: the leader announces the new epoch on Redis.
    let fresh = cluster.add_node_avoiding(4, followed).await.unwrap();
    // The notice makes the router ask the members it knows: it catches up while the node it
    // follows is still frozen.
    let added = Instant::now();
    let deadline = added + Duration::from_secs(5);
    loop {
        let (_, _, body) = http_request(router.addr, "/healthz").await.unwrap();
        let health: Value = serde_json::from_str(&body).unwrap();
        if health["epoch"].as_u64() >= Some(fresh.epoch()) {
            break;
        }
        assert!(Instant::now() < deadline, "the router never caught up: {health}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "notices: the router caught up {:?} after the change",
        added.elapsed()
    );
    troupe_tests::cluster::signal(cluster.node(followed).unwrap(), "CONT");
}
