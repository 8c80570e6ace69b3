//! The life of the Kubernetes StatefulSet (`deploy/kubernetes/`), played with real node
//! processes while editors type: pods named `troupe-node-<ordinal>` take their node id from
//! the host name (`TROUPE_NODE_ID=from-hostname`) and their certificate from a path with
//! `{id}` in it; the first three form the cluster, a fourth joins by itself
//! (`TROUPE_JOIN`); a pod stopped for a rolling restart drains first, so its scenes move by
//! planned handoff, and comes back by itself; a pod removed by a scale-down leaves the
//! membership. `/readyz` tells when each is serving at the current epoch.
//!
//! What Kubernetes itself does (restart the pod, ask the API server for the replicas) is
//! not here: there is no cluster on this machine. `TROUPE_ON_STOP=kubernetes` picks
//! `leave` or `drain` from the StatefulSet's replicas; this test runs those two directly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use troupe_membership::tls::Identity;
use troupe_membership::{ClusterClient, ClusterView, NodeId, NodeState};
use troupe_tests::cluster::{
    cluster_backend, editor_token, finish_editors, free_addr, http_request, signal, start_editors,
    RouterProcess,
};
use troupe_tests::{certs, unique, Backend, NodeProcess};

const TYPING: Duration = Duration::from_millis(40);

/// One pod's fixed parts: its name, addresses and what it does when stopped.
struct Pod {
    ordinal: u64,
    listen: SocketAddr,
    rpc: SocketAddr,
}

struct StatefulSet {
    backend: Backend,
    dir: PathBuf,
    pods: Vec<Pod>,
    peers: String,
    ca: PathBuf,
    certs: PathBuf,
}

impl StatefulSet {
    /// Addresses and certificates for `max` pods; the first three are the initial voters.
    fn new(max: u64) -> StatefulSet {
        let dir = std::env::temp_dir().join(unique("troupe-statefulset"));
        std::fs::create_dir_all(&dir).unwrap();
        let pods: Vec<Pod> = (0..max)
            .map(|ordinal| Pod {
                ordinal,
                listen: free_addr(),
                rpc: free_addr(),
            })
            .collect();
        let peers = pods
            .iter()
            .take(3)
            .map(|p| format!("{}={}", p.ordinal + 1, p.rpc))
            .collect::<Vec<_>>()
            .join(",");
        // Every pod's certificate in one folder, as the Secret mounted at /certs holds them.
        let mut ca = PathBuf::new();
        for id in 1..=max {
            let files = certs::files(&Identity::Node(NodeId(id))).unwrap();
            ca = files.ca.unwrap();
        }
        let certs = certs::dir().unwrap().path().to_path_buf();
        StatefulSet {
            backend: cluster_backend(),
            dir,
            pods,
            peers,
            ca,
            certs,
        }
    }

    /// Starts pod `ordinal` with the settings every pod of the StatefulSet shares.
    fn start(&self, ordinal: u64, on_stop: &str) -> NodeProcess {
        let pod = &self.pods[ordinal as usize];
        let host = format!("troupe-node-{ordinal}");
        let cert = self.certs.join("node-{id}.crt");
        let key = self.certs.join("node-{id}.key");
        let env: Vec<(&str, String)> = vec![
            ("HOSTNAME", host),
            ("TROUPE_NODE_ID", "from-hostname".into()),
            ("TROUPE_PEERS", self.peers.clone()),
            ("TROUPE_JOIN", "true".into()),
            ("TROUPE_ON_STOP", on_stop.into()),
            ("TROUPE_INTERNAL_CA", path(&self.ca)),
            ("TROUPE_INTERNAL_CERT", path(&cert)),
            ("TROUPE_INTERNAL_KEY", path(&key)),
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut last = None;
        // A port just released by a stopped pod may linger for a moment.
        for _ in 0..50 {
            match NodeProcess::start_at(&self.backend, &self.dir, pod.listen, pod.rpc, &env) {
                Ok(node) => return node,
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("pod {ordinal} did not start: {last:?}");
    }

    fn rpc_addrs(&self) -> Vec<String> {
        self.pods.iter().map(|p| p.rpc.to_string()).collect()
    }

    fn client(&self) -> ClusterClient {
        ClusterClient::new(self.rpc_addrs(), &certs::admin().unwrap())
    }

    async fn wait_for(&self, what: &str, done: impl Fn(&ClusterView) -> bool) -> ClusterView {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(view) = self.client().view().await {
                if done(&view) {
                    return view;
                }
                assert!(Instant::now() < deadline, "{what}: never happened: {view:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for StatefulSet {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// `/readyz`: its status and body.
async fn readyz(node: &NodeProcess) -> (u16, String) {
    match http_request(node.addr, "/readyz").await {
        Ok((status, _, body)) => (status, body),
        Err(e) => (0, e.to_string()),
    }
}

async fn wait_ready(node: &NodeProcess, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        let (status, body) = readyz(node).await;
        if status == 200 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} never became ready: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM, and the exit status once the pod stopped. Waited for on another thread: the
/// editors share this test's runtime and must go on answering meanwhile.
async fn stop(mut pod: NodeProcess) -> (NodeProcess, std::process::ExitStatus) {
    tokio::task::spawn_blocking(move || {
        let status = pod.terminate().unwrap();
        (pod, status)
    })
    .await
    .unwrap()
}

fn state_of(view: &ClusterView, id: u64) -> Option<NodeState> {
    view.state.nodes.get(&NodeId(id)).map(|n| n.state)
}

#[tokio::test]
async fn pods_join_drain_restart_and_leave_by_themselves_while_editors_type() {
    let set = StatefulSet::new(4);
    let mut pods: Vec<Option<NodeProcess>> = Vec::new();
    for ordinal in 0..3 {
        pods.push(Some(set.start(ordinal, "drain")));
    }
    for (ordinal, pod) in pods.iter().enumerate() {
        let pod = pod.as_ref().unwrap();
        let took = wait_ready(pod, &format!("pod {ordinal}")).await;
        let (_, body) = readyz(pod).await;
        let node = ordinal as u64 + 1;
        assert!(
            body.contains(&format!("\"node\":{node}")),
            "pod {ordinal} is node {node}: {body}"
        );
        println!("pod {ordinal} (node {node}) ready after {took:?} more");
    }
    let view = set
        .wait_for("three active nodes", |v| {
            (1..=3).all(|id| state_of(v, id) == Some(NodeState::Active))
        })
        .await;
    assert_eq!(view.voters.len(), 3, "{view:?}");

    let router = RouterProcess::start(&set.rpc_addrs()).await.unwrap();
    let t0 = Instant::now();
    let base = unique("sts");
    let scenes: Vec<String> = (0..24).map(|i| format!("{base}-{i}")).collect();
    let names: Vec<&str> = scenes.iter().map(String::as_str).collect();
    let token = editor_token(&names);
    let editors = start_editors(router.addr, &scenes, &token, "e", TYPING).await;
    tokio::time::sleep(Duration::from_millis(600)).await;

    // Scale up: pod 3 is no initial voter, and nobody runs `troupectl add`.
    println!("scale up at {:?}", t0.elapsed());
    pods.push(Some(set.start(3, "leave")));
    let took = wait_ready(pods[3].as_ref().unwrap(), "pod 3").await;
    let view = set
        .wait_for("node 4 active", |v| state_of(v, 4) == Some(NodeState::Active))
        .await;
    assert!(view.learners.contains(&NodeId(4)), "{view:?}");
    println!("scale up: pod 3 joined by itself, ready after {took:?}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let on_4 = pods[3]
        .as_ref()
        .unwrap()
        .metric("scenes_collaborative_active")
        .await
        .unwrap();
    println!("scenes moved onto node 4: {on_4}");

    // A rolling restart of pod 1: SIGTERM drains it (not ready, its scenes handed over
    // while it still serves), then it stops; started again, it puts itself back.
    println!("rolling restart of pod 1 at {:?}", t0.elapsed());
    let stopping = pods[1].take().unwrap();
    let rooms_before = stopping.metric("scenes_collaborative_active").await.unwrap();
    assert!(rooms_before > 0.0, "pod 1 served no scene to move");
    signal(&stopping, "TERM");
    let mut saw_not_ready = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let (status, body) = readyz(&stopping).await;
        if status == 503 {
            saw_not_ready = Some(body);
            break;
        }
        if status == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let view = set
        .wait_for("node 2 off the ring", |v| {
            state_of(v, 2) != Some(NodeState::Active)
        })
        .await;
    assert_eq!(
        state_of(&view, 2),
        Some(NodeState::Draining),
        "a stopped pod drains: {view:?}"
    );
    let (_stopped, status) = stop(stopping).await;
    assert!(status.success(), "pod 1 stopped with {status}");
    let not_ready = saw_not_ready.expect("pod 1 never said it was not ready while it drained");
    assert!(not_ready.contains("not active"), "{not_ready}");
    println!("rolling restart: pod 1 drained {rooms_before} scenes and stopped");
    let restarted = set.start(1, "drain");
    let took = wait_ready(&restarted, "restarted pod 1").await;
    pods[1] = Some(restarted);
    set.wait_for("node 2 active again", |v| {
        state_of(v, 2) == Some(NodeState::Active)
    })
    .await;
    println!("rolling restart: pod 1 back on the ring, ready after {took:?}");
    tokio::time::sleep(Duration::from_millis(800)).await;

    // Scale down by one: pod 3 leaves the membership.
    println!("scale down at {:?}", t0.elapsed());
    let (_left, status) = stop(pods[3].take().unwrap()).await;
    assert!(status.success(), "pod 3 stopped with {status}");
    let view = set
        .wait_for("node 4 gone", |v| !v.state.nodes.contains_key(&NodeId(4)))
        .await;
    assert!(
        !view.learners.contains(&NodeId(4)) && !view.voters.contains(&NodeId(4)),
        "{view:?}"
    );
    assert_eq!(view.voters.len(), 3);
    println!("scale down: pod 3 left the membership");
    tokio::time::sleep(Duration::from_millis(600)).await;

    // Nothing lost, and every move was a planned one: no node was ever marked down.
    let mut outages = Vec::new();
    for done in finish_editors(router.addr, editors, &token).await {
        for o in &done.outages {
            println!(
                "  {} moved at {:?} for {:?}",
                done.scene,
                o.began.duration_since(t0),
                o.lasted
            );
        }
        outages.extend(done.outages.iter().map(|o| o.lasted));
    }
    let mut failovers = 0.0;
    for pod in pods.iter().flatten() {
        failovers += pod.metric("troupe_failovers_total").await.unwrap();
    }
    assert_eq!(failovers, 0.0, "a node was marked down: a move was not planned");
    outages.sort();
    let longest = outages.last().copied().unwrap_or_default();
    println!(
        "editors moved {} times; median {:?}, longest {:?}",
        outages.len(),
        outages.get(outages.len() / 2).copied().unwrap_or_default(),
        longest
    );
    assert!(!outages.is_empty(), "no scene moved");
    assert!(
        longest < Duration::from_secs(3),
        "a planned move took {longest:?}"
    );
}
