//! The cluster with real processes: three voters formed from `TROUPE_PEERS`, nodes added,
//! drained and removed with `troupectl` while editors type, a router, restarts, a paused
//! former owner, and a router that fell behind.
//!
//! Editors here use durable acks and follow moves (4301 names the new owner; any other
//! loss asks the router). Every test ends with the same proof: each token any editor typed
//! is in its scene's text as the editor sees it, as a fresh client sees it, and as the
//! store rebuilds it.

use std::collections::BTreeMap;
use std::time::Duration;

use troupe_membership::{NodeId, NodeState, Placement};
use troupe_tests::cluster::{
    editor_token, finish_editors, http_request, signal, start_editors, FinishedEditor, FollowingEditor,
    RouterProcess, TestCluster,
};
use troupe_tests::{unique, TestClient};

const TYPING: Duration = Duration::from_millis(40);

/// Starts one editor per scene through the router.
async fn editors(router: &RouterProcess, scenes: &[String], token: &str) -> Vec<FollowingEditor> {
    start_editors(router.addr, scenes, token, "e", TYPING).await
}

/// Stops the editors and proves every token they typed is stored and served.
async fn finish_and_check(
    cluster: &TestCluster,
    router: &RouterProcess,
    editors: Vec<FollowingEditor>,
    token: &str,
) -> Vec<FinishedEditor> {
    let finished = finish_editors(router.addr, editors, token).await;
    for done in &finished {
        let stored = cluster.stored_text(&done.scene).await.unwrap();
        assert_eq!(stored, done.text, "{}: the store holds other text", done.scene);
    }
    finished
}

fn scenes(n: usize) -> Vec<String> {
    let base = unique("scene");
    (0..n).map(|i| format!("{base}-{i}")).collect()
}

fn owners(placement: &Placement, scenes: &[String]) -> BTreeMap<String, u64> {
    scenes
        .iter()
        .map(|s| (s.clone(), placement.route(s).map_or(0, |r| r.node.0)))
        .collect()
}

#[tokio::test]
async fn routes_moved_closes_and_redirects() {
    let cluster = TestCluster::start(3, &[]).await.unwrap();
    let router = RouterProcess::start(&cluster.rpc_addrs()).await.unwrap();
    let view = cluster.view().await.unwrap();
    let scene = unique("route");
    let (owner, url, epoch) = router.route(&scene).await.unwrap();
    let expected = view.placement().route(&scene).unwrap();
    assert_eq!(
        (owner, url.as_str(), epoch),
        (expected.node.0, expected.url.as_str(), view.epoch())
    );

    // troupectl agrees, for people and for scripts.
    let text = cluster.troupectl_ok(&["route", &scene]).unwrap();
    assert!(text.contains(&format!("node {owner}")), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&cluster.troupectl_ok(&["--json", "route", &scene]).unwrap()).unwrap();
    assert_eq!(json["node"], owner);

    // A client at the wrong node is closed with 4301 and the owner's URL…
    let tok = editor_token(&[&scene]);
    let other = cluster
        .nodes
        .iter()
        .find(|(id, _)| **id != owner)
        .map(|(_, n)| n)
        .unwrap();
    let mut lost = TestClient::open(&other.ws_base(), &scene, &format!("token={tok}"))
        .await
        .unwrap();
    let closed = lost.expect_close().await.unwrap();
    assert_eq!((closed.code, closed.reason.as_str()), (4301, url.as_str()));
    // …and follows it to the owner, where editing works.
    let mut found = TestClient::connect(&format!("{}/ws/scenes", closed.reason), &scene, &tok)
        .await
        .unwrap();
    found.type_text("INT. ROUTER - NIGHT").await.unwrap();
    found.wait_acked().await.unwrap();

    // A plain GET to the wrong node, or to the router, is redirected to the owner.
    // The token is never copied into the Location (proxies log it); other parameters are.
    let (status, headers, _) = http_request(other.addr, &format!("/ws/scenes/{scene}?token=x&acks=1"))
        .await
        .unwrap();
    assert_eq!(status, 307);
    let location = headers
        .iter()
        .find(|(k, _)| k == "location")
        .map(|(_, v)| v.clone());
    assert_eq!(location, Some(format!("{url}/ws/scenes/{scene}?acks=1")));
    let (status, headers, _) = http_request(router.addr, &format!("/ws/scenes/{scene}?token=x"))
        .await
        .unwrap();
    assert_eq!(status, 307);
    let location = headers
        .iter()
        .find(|(k, _)| k == "location")
        .map(|(_, v)| v.clone());
    assert_eq!(location, Some(format!("{url}/ws/scenes/{scene}")));
    let (status, _, body) = http_request(router.addr, "/healthz").await.unwrap();
    assert_eq!(status, 200, "{body}");
    // Routers share nothing: a second one, following other nodes, answers the same.
    let second = RouterProcess::start(&cluster.rpc_addrs()[1..]).await.unwrap();
    assert_eq!(second.route(&scene).await.unwrap(), (owner, url.clone(), epoch));

    // Bad input gets a clear answer, not a crash.
    let (status, _, _) = http_request(router.addr, "/v1/route/bad%2Fscene").await.unwrap();
    assert_eq!(status, 400);
    for args in [&["drain", "99"][..], &["remove", "99"], &["activate", "99"]] {
        let out = cluster.troupectl(args).unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("node 99 is not a member"), "{args:?}: {err}");
    }
    let out = cluster.troupectl(&["remove", "2"]).unwrap();
    assert!(
        !out.status.success(),
        "removing a voter with no replacement must be refused"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("add a node first"));
    let after = cluster.view().await.unwrap();
    assert_eq!(
        (after.epoch(), after.state.nodes.len()),
        (view.epoch(), 3),
        "refusals changed nothing"
    );
}

#[tokio::test]
async fn adding_a_node_moves_scenes_onto_it_and_loses_nothing() {
    let mut cluster = TestCluster::start(3, &[]).await.unwrap();
    let router = RouterProcess::start(&cluster.rpc_addrs()).await.unwrap();
    let scenes = scenes(20);
    let names: Vec<&str> = scenes.iter().map(String::as_str).collect();
    let token = editor_token(&names);
    let before = owners(&cluster.view().await.unwrap().placement(), &scenes);
    let editors = editors(&router, &scenes, &token).await;
    tokio::time::sleep(Duration::from_millis(800)).await;

    let new = cluster.start_node(4).unwrap().rpc_addr.to_string();
    let out = cluster.troupectl_ok(&["add", &new]).unwrap();
    assert!(out.contains("node 4 added"), "{out}");
    let view = cluster
        .wait_for(Duration::from_secs(10), |v| {
            v.state
                .nodes
                .get(&NodeId(4))
                .is_some_and(|n| n.state == NodeState::Active)
        })
        .await
        .unwrap();
    assert_eq!(
        view.role(NodeId(4)),
        "learner",
        "nodes beyond the voters follow as learners"
    );
    cluster.wait_all_at(view.epoch()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let finished = finish_and_check(&cluster, &router, editors, &token).await;
    let after = owners(&view.placement(), &scenes);
    let moved: Vec<&String> = scenes.iter().filter(|s| before[*s] != after[*s]).collect();
    assert!(!moved.is_empty(), "20 scenes and not one moved to the new node");
    for s in &moved {
        assert_eq!(after[*s], 4, "{s} moved between old nodes");
    }
    let rooms_on_4 = cluster
        .node(4)
        .unwrap()
        .metric("scenes_collaborative_active")
        .await
        .unwrap();
    assert_eq!(
        rooms_on_4 as usize,
        moved.len(),
        "the moved scenes are served by node 4"
    );
    let gaps: Vec<Duration> = finished
        .iter()
        .flat_map(|f| f.outages.iter().map(|o| o.lasted))
        .collect();
    assert!(gaps.len() >= moved.len(), "moved editors reconnected: {gaps:?}");
    let worst = gaps.iter().max().copied().unwrap_or_default();
    eprintln!(
        "add node: {} of 20 scenes moved; editors back within {worst:?} (worst)",
        moved.len()
    );
    assert!(
        worst < Duration::from_secs(1),
        "an editor took {worst:?} to edit again"
    );
}

#[tokio::test]
async fn draining_and_removing_nodes_while_editing_loses_nothing() {
    let mut cluster = TestCluster::start(3, &[]).await.unwrap();
    let router = RouterProcess::start(&cluster.rpc_addrs()).await.unwrap();
    let scenes = scenes(12);
    let names: Vec<&str> = scenes.iter().map(String::as_str).collect();
    let token = editor_token(&names);
    for id in [4, 5] {
        let addr = cluster.start_node(id).unwrap().rpc_addr.to_string();
        cluster.troupectl_ok(&["add", &addr]).unwrap();
    }
    let editors = editors(&router, &scenes, &token).await;
    tokio::time::sleep(Duration::from_millis(600)).await;

    // Drain a voter: its scenes move, it stays up and owns nothing.
    let out = cluster.troupectl_ok(&["drain", "2"]).unwrap();
    assert!(out.contains("node 2 draining"), "{out}");
    let view = cluster.view().await.unwrap();
    cluster.wait_all_at(view.epoch()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let rooms_on_2 = cluster
        .node(2)
        .unwrap()
        .metric("scenes_collaborative_active")
        .await
        .unwrap();
    assert_eq!(rooms_on_2, 0.0, "a drained node serves nothing");

    // Remove it: a learner takes its vote, so there are still three voters.
    cluster.troupectl_ok(&["remove", "2"]).unwrap();
    let view = cluster
        .wait_for(Duration::from_secs(10), |v| {
            !v.state.nodes.contains_key(&NodeId(2)) && v.voters.len() == 3
        })
        .await
        .unwrap();
    assert!(!view.voters.contains(&NodeId(2)));
    let learner = *view.learners.first().unwrap();

    // Remove an active node in one step while its scenes are being edited.
    cluster.troupectl_ok(&["remove", &learner.to_string()]).unwrap();
    let view = cluster
        .wait_for(Duration::from_secs(10), |v| !v.state.nodes.contains_key(&learner))
        .await
        .unwrap();
    assert!(view.learners.is_empty());
    cluster.wait_all_at(view.epoch()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    // No replacement left: removing another voter is refused and changes nothing.
    let voter = view.voters[0].to_string();
    let refused = cluster.troupectl(&["remove", &voter]).unwrap();
    assert!(!refused.status.success());
    assert_eq!(cluster.view().await.unwrap().state, view.state);

    finish_and_check(&cluster, &router, editors, &token).await;
    let placement = cluster.view().await.unwrap().placement();
    for s in &scenes {
        let owner = placement.route(s).unwrap().node;
        assert!(view.voters.contains(&owner), "{s} is on node {owner}");
    }
}

#[tokio::test]
async fn restarted_voters_keep_the_membership() {
    let mut cluster = TestCluster::start(3, &[]).await.unwrap();
    let new = cluster.start_node(4).unwrap().rpc_addr.to_string();
    cluster.troupectl_ok(&["add", &new]).unwrap();
    cluster.troupectl_ok(&["drain", "3"]).unwrap();
    let before = cluster.view().await.unwrap();

    // One voter killed and restarted: it comes back with the same state.
    let node = cluster.nodes.remove(&2).unwrap();
    cluster.nodes.insert(2, node.restart().unwrap());
    // Every voter killed at once, then restarted: the state is on their disks.
    for id in [1, 2, 3] {
        cluster.node_mut(id).unwrap().kill9();
    }
    for id in [1, 2, 3] {
        cluster.nodes.remove(&id);
        cluster.start_node(id).unwrap();
    }
    let after = cluster
        .wait_for(Duration::from_secs(20), |v| {
            v.leader.is_some() && v.version >= before.version
        })
        .await
        .unwrap();
    assert_eq!(after.state, before.state, "membership changed across restarts");
    assert_eq!(after.voters, before.voters);
    // And the cluster still decides: a change commits.
    cluster.troupectl_ok(&["activate", "3"]).unwrap();
    let view = cluster.view().await.unwrap();
    assert_eq!(view.epoch(), before.epoch() + 1);
    assert_eq!(view.state.nodes[&NodeId(3)].state, NodeState::Active);
}

/// A cluster started anew on the store a former cluster wrote (every node's Raft folder
/// wiped, the database kept) counts placement epochs from the start again, below the
/// epochs the store's leases were claimed at, and a claim wins only over an older epoch:
/// its leader raises the epoch above the newest lease, and every former scene opens with
/// its text and takes new edits.
#[tokio::test]
async fn a_cluster_started_anew_on_an_old_store_serves_its_scenes() {
    let mut cluster = TestCluster::start(3, &[]).await.unwrap();
    let scenes = scenes(6);
    let token = editor_token(&scenes.iter().map(String::as_str).collect::<Vec<_>>());
    let router = RouterProcess::start(&cluster.rpc_addrs()).await.unwrap();
    let editors = editors(&router, &scenes, &token).await;
    // Node 1's scenes move away and back: their leases are claimed at epochs 4 and 5,
    // beyond the 3 a fresh cluster of three starts at.
    cluster.troupectl_ok(&["drain", "1"]).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.troupectl_ok(&["activate", "1"]).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = finish_and_check(&cluster, &router, editors, &token).await;
    drop(router);
    // (The test store may be shared with other clusters, whose leases raise this one's
    // epochs too: compare with where a fresh cluster of three starts, not with this one.)
    let newest = cluster.store().await.unwrap().newest_lease_epoch().await.unwrap();
    let fresh_start = 3;
    assert!(
        newest > fresh_start,
        "no lease beyond epoch {fresh_start} (newest {newest})"
    );

    // Every node stops and loses its Raft state; the store stays.
    for id in [1, 2, 3] {
        cluster.nodes.remove(&id);
        std::fs::remove_dir_all(cluster.dir.join(format!("raft-{id}"))).unwrap();
    }
    for id in [1, 2, 3] {
        cluster.start_node(id).unwrap();
    }
    cluster
        .wait_for(Duration::from_secs(20), |v| {
            v.state.active_ids().count() == 3 && v.epoch() > newest
        })
        .await
        .unwrap_or_else(|e| panic!("the new cluster's epoch never rose above the store's {newest}: {e:#}"));

    let router = RouterProcess::start(&cluster.rpc_addrs()).await.unwrap();
    let editors = start_editors(router.addr, &scenes, &token, "again", TYPING).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = finish_and_check(&cluster, &router, editors, &token).await;
    for (old, new) in before.iter().zip(&after) {
        for item in &old.typed {
            assert!(new.text.contains(item.as_str()), "{}: {item} lost", new.scene);
        }
    }
}

/// Waits until the router answers for `scene` at `epoch` or later.
async fn wait_router_epoch(router: &RouterProcess, scene: &str, epoch: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while router.route(scene).await.map(|r| r.2).unwrap_or(0) < epoch {
        assert!(
            std::time::Instant::now() < deadline,
            "the router never reached epoch {epoch}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_paused_former_owner_can_never_write_again() {
    let cluster = TestCluster::start(3, &[]).await.unwrap();
    let view = cluster.view().await.unwrap();
    let leader = view.leader.unwrap();
    // A scene whose owner is not the leader, so that the cluster keeps deciding.
    let scene = (0..)
        .map(|i| format!("{}-{i}", unique("zombie")))
        .find(|s| view.placement().route(s).unwrap().node != leader)
        .unwrap();
    let router = RouterProcess::start(&cluster.rpc_addrs()).await.unwrap();
    let zombie_id = view.placement().route(&scene).unwrap().node.0;
    let token = editor_token(&[&scene]);
    let editor = FollowingEditor::start(router.addr, &scene, &token, "z", TYPING)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;

    // The owner freezes mid-session; what the editor types now sits unread in its socket.
    let zombie = cluster.node(zombie_id).unwrap();
    signal(zombie, "STOP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.troupectl_ok(&["drain", &zombie_id.to_string()]).unwrap();
    let drained = cluster.view().await.unwrap();
    let new_owner = drained.placement().route(&scene).unwrap().node.0;
    assert_ne!(new_owner, zombie_id);

    // The editor gives up on the frozen node (as a client's heartbeat would) and goes to
    // the new owner, which takes the scene over at the new epoch.
    wait_router_epoch(&router, &scene, drained.epoch()).await;
    editor.move_on().await.unwrap();
    let finished_while_paused = editor.finish();
    // Thaw the former owner while the editor settles on the new one.
    let thaw = async {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        signal(zombie, "CONT");
    };
    let (done, ()) = tokio::join!(finished_while_paused, thaw);
    let done = done.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // Nothing the former owner did after the handoff reached the store.
    let store = cluster.store().await.unwrap();
    let (lease_epoch, lease_owner) = store.lease(&scene).await.unwrap().unwrap();
    assert_eq!(lease_owner, new_owner.to_string());
    assert!(lease_epoch >= drained.epoch());
    let stored = store.load(&scene).await.unwrap();
    assert!(!stored.rows.is_empty() || !stored.snapshots.is_empty());
    let writers = store.writers(&scene).await.unwrap();
    let mut last_epoch = 0;
    for (seq, writer, epoch) in &writers {
        assert!(*epoch >= last_epoch, "row {seq}: the log's epochs went back");
        last_epoch = *epoch;
        if *writer == zombie_id.to_string() {
            assert!(
                *epoch < lease_epoch,
                "the paused owner wrote row {seq} at epoch {epoch} after the handoff"
            );
        }
    }
    let fenced = zombie
        .metric("websocket_errors_total{reason=\"fenced\"}")
        .await
        .unwrap();
    eprintln!("zombie: {fenced} appends refused by the lease after it resumed");
    for item in &done.typed {
        assert_eq!(done.text.matches(item.as_str()).count(), 1, "{item} lost");
    }
    assert_eq!(cluster.stored_text(&scene).await.unwrap(), done.text);
}

#[tokio::test]
async fn a_stale_router_still_gets_clients_to_the_owner() {
    let mut cluster = TestCluster::start(3, &[]).await.unwrap();
    let view = cluster.view().await.unwrap();
    let leader = view.leader.unwrap().0;
    // The router follows one node only; freezing that node freezes the router's view.
    let followed = *cluster.nodes.keys().find(|id| **id != leader).unwrap();
    let router = RouterProcess::start(&[cluster.node(followed).unwrap().rpc_addr.to_string()])
        .await
        .unwrap();
    let scenes = scenes(40);
    signal(cluster.node(followed).unwrap(), "STOP");

    let fresh = cluster.add_node_avoiding(4, followed).await.unwrap();
    // A scene that moved to node 4 from a node that still answers.
    let moved = scenes
        .iter()
        .find(|s| {
            fresh.placement().route(s).unwrap().node == NodeId(4)
                && view.placement().route(s).unwrap().node != NodeId(followed)
        })
        .unwrap()
        .clone();
    // The router still answers with the old epoch…
    let (stale_node, stale_url, stale_epoch) = router.route(&moved).await.unwrap();
    assert!(stale_epoch < fresh.epoch());
    assert_ne!(stale_node, 4);
    // …and a client that follows it is sent on by the old owner.
    let token = editor_token(&[&moved]);
    let mut at_old = TestClient::open(
        &format!("{stale_url}/ws/scenes"),
        &moved,
        &format!("token={token}"),
    )
    .await
    .unwrap();
    let closed = at_old.expect_close().await.unwrap();
    assert_eq!(closed.code, 4301);
    assert_eq!(closed.reason, format!("ws://{}", cluster.node(4).unwrap().addr));
    let mut at_new = TestClient::connect(&format!("{}/ws/scenes", closed.reason), &moved, &token)
        .await
        .unwrap();
    at_new.type_text("EXT. NEW NODE - DAY").await.unwrap();
    at_new.wait_acked().await.unwrap();

    // Once the followed node is back, the router catches up within moments. (On a busy
    // machine the freeze may outlast `TROUPE_DOWN_AFTER`: the node is marked down and
    // back up, two epochs later, with the same owners as `fresh`.)
    signal(cluster.node(followed).unwrap(), "CONT");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (node, _, epoch) = router.route(&moved).await.unwrap();
        if node == 4 && epoch >= fresh.epoch() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the router never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A paused member (SIGSTOP: its kernel still accepts connections, the process never
/// answers) costs a client with the member first in its list about a second — the bound on
/// a new connection's TLS handshake — before it asks the next node, not the whole call
/// timeout (10 s), as `troupectl` and the routers' admin calls would otherwise wait.
#[tokio::test]
async fn a_paused_member_costs_a_cluster_client_a_second_not_the_call() {
    let cluster = TestCluster::start(3, &[]).await.unwrap();
    let first = cluster.rpc_addrs()[0].clone();
    let paused = cluster.node(1).unwrap();
    assert_eq!(
        paused.rpc_addr.to_string(),
        first,
        "node 1 is first in the client's list"
    );
    signal(paused, "STOP");
    let started = std::time::Instant::now();
    let view = cluster.client().view().await;
    let took = started.elapsed();
    signal(paused, "CONT");
    let view = view.expect("the next node answers");
    // By now the leader may have marked the paused member down; it is a member still.
    assert_eq!(view.state.nodes.len(), 3, "{view:?}");
    assert!(
        took < Duration::from_secs(5),
        "the call waited {took:?} on the paused member (10 s, the call timeout, before the bound)"
    );
}
