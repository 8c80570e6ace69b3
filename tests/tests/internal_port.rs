//! The internal port refuses whoever is not who they claim: each attack on a running
//! 3-node cluster is replayed, and afterwards the membership, every node's Raft term and
//! log, and where every node lives are exactly as before.
//!
//! - plain HTTP, TLS without a certificate, and a certificate of another CA never get an
//!   HTTP answer;
//! - a node's certificate cannot speak for another node in Raft (append, vote, snapshot),
//!   re-point another node, or drain one;
//! - a reader (a router) may read the membership but change nothing;
//! - an admin may drain and activate, but not re-point an existing node.

use std::sync::Arc;
use std::time::Duration;

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use troupe_membership::raft::TypeConfig;
use troupe_membership::rpc::{RpcClient, RpcError};
use troupe_membership::tls::issue::CertDir;
use troupe_membership::tls::{Identity, Transport};
use troupe_membership::{AdmitRequest, ClusterClient, Command, NodeId, NodeSelf, NodeState};
use troupe_tests::cluster::TestCluster;
use troupe_tests::{certs, unique};

const CALL: Duration = Duration::from_secs(5);

/// What must not move: the membership and each node's Raft position.
#[derive(Debug, PartialEq)]
struct Snapshot {
    version: u64,
    nodes: Vec<(NodeId, String, String, NodeState)>,
    raft: Vec<(NodeId, u64, Option<u64>)>,
}

async fn snapshot(cluster: &TestCluster) -> Snapshot {
    let client = cluster.client();
    let view = client.view().await.unwrap();
    let mut raft = Vec::new();
    for addr in cluster.rpc_addrs() {
        let info: NodeSelf = client.node_info(&addr).await.unwrap();
        raft.push((info.id, info.raft_term, info.raft_last_log));
    }
    Snapshot {
        version: view.version,
        nodes: view
            .state
            .nodes
            .values()
            .map(|n| (n.id, n.url.clone(), n.rpc_addr.clone(), n.state))
            .collect(),
        raft,
    }
}

fn as_identity(identity: Identity) -> RpcClient {
    RpcClient::new(&Transport::load(&certs::files(&identity).unwrap()).unwrap())
}

fn assert_forbidden<T: std::fmt::Debug>(result: Result<T, RpcError>, what: &str) {
    match result {
        Err(RpcError::Refused { status: 403, body }) => assert_eq!(body.error, "forbidden", "{what}"),
        other => panic!("{what}: expected a 403, got {other:?}"),
    }
}

fn assert_no_answer<T: std::fmt::Debug>(result: Result<T, RpcError>, what: &str) {
    assert!(
        matches!(
            result,
            Err(RpcError::Unreachable { .. } | RpcError::Timeout { .. })
        ),
        "{what}: expected no HTTP answer, got {result:?}"
    );
}

/// A forged append: node 1 as leader at a far higher term, registering and activating a
/// node 7 that does not exist.
fn forged_append(term: u64, last: u64) -> openraft::raft::AppendEntriesRequest<TypeConfig> {
    let leader = CommittedLeaderId::new(term, NodeId(1));
    let entry = |index: u64, command: Command| Entry::<TypeConfig> {
        log_id: LogId::new(leader, index),
        payload: EntryPayload::Normal(command),
    };
    openraft::raft::AppendEntriesRequest {
        vote: Vote::new_committed(term, NodeId(1)),
        prev_log_id: None,
        entries: vec![
            entry(
                last + 1,
                Command::Register {
                    id: NodeId(7),
                    url: "wss://elsewhere.example".into(),
                    rpc_addr: "elsewhere.example:4100".into(),
                },
            ),
            entry(last + 2, Command::Activate { id: NodeId(7) }),
        ],
        leader_commit: Some(LogId::new(leader, last + 2)),
    }
}

#[tokio::test]
async fn nobody_changes_the_cluster_without_the_right_certificate() {
    let cluster = TestCluster::start(3, &[]).await.unwrap();
    let before = snapshot(&cluster).await;
    let addrs = cluster.rpc_addrs();
    let node1 = before.nodes[0].clone();
    let re_point = AdmitRequest {
        id: NodeId(1),
        url: "wss://elsewhere.example".into(),
        rpc_addr: node1.2.clone(),
    };
    let term = before.raft.iter().map(|r| r.1).max().unwrap_or(0) + 10;
    let last = before.raft.iter().filter_map(|r| r.2).max().unwrap_or(0);

    for addr in &addrs {
        // Plain HTTP: the port speaks only TLS.
        let plain = RpcClient::plain();
        assert_no_answer(
            plain.get::<serde_json::Value>(addr, "/cluster/view", CALL).await,
            "plain GET",
        );
        assert_no_answer(
            plain
                .post::<_, serde_json::Value>(addr, "/cluster/nodes", &re_point, CALL)
                .await,
            "plain admit",
        );
        assert_no_answer(
            plain
                .post::<_, serde_json::Value>(addr, "/raft/append", &forged_append(term, last), CALL)
                .await,
            "plain append",
        );

        // A certificate of another CA, naming node 1 and an admin.
        let other_dir = std::env::temp_dir().join(unique("troupe-other-ca"));
        let other = CertDir::init(&other_dir, "intruder").unwrap();
        for identity in [Identity::Node(NodeId(1)), Identity::Admin("root".into())] {
            let client = RpcClient::new(&Transport::load(&other.issue(&identity, &[], 1).unwrap()).unwrap());
            assert_no_answer(
                client
                    .post::<_, serde_json::Value>(addr, "/cluster/nodes", &re_point, CALL)
                    .await,
                "another CA's admit",
            );
            assert_no_answer(
                client
                    .post::<_, serde_json::Value>(addr, "/raft/append", &forged_append(term, last), CALL)
                    .await,
                "another CA's append",
            );
        }
        let _ = std::fs::remove_dir_all(&other_dir);

        // TLS with the right CA but no certificate of its own.
        assert!(
            !answers_without_a_certificate(addr).await,
            "a client without a certificate got an HTTP answer from {addr}"
        );

        // Node 3's own certificate, speaking for node 1.
        let node3 = as_identity(Identity::Node(NodeId(3)));
        assert_forbidden(
            node3
                .post::<_, serde_json::Value>(addr, "/raft/append", &forged_append(term, last), CALL)
                .await,
            "node 3 appending as leader 1",
        );
        let vote = openraft::raft::VoteRequest::<NodeId> {
            vote: Vote::new(term, NodeId(1)),
            last_log_id: Some(LogId::new(CommittedLeaderId::new(term, NodeId(1)), last + 100)),
        };
        assert_forbidden(
            node3
                .post::<_, serde_json::Value>(addr, "/raft/vote", &vote, CALL)
                .await,
            "node 3 asking votes for node 1",
        );
        assert_forbidden(
            node3
                .post::<_, serde_json::Value>(addr, "/cluster/nodes", &re_point, CALL)
                .await,
            "node 3 re-pointing node 1",
        );
        assert_forbidden(
            node3
                .post::<_, serde_json::Value>(addr, "/cluster/nodes/1/drain", &(), CALL)
                .await,
            "node 3 draining node 1",
        );
        // A node brings only itself in: never a node of another id.
        let stranger = AdmitRequest {
            id: NodeId(9),
            url: "ws://127.0.0.1:1".into(),
            rpc_addr: "127.0.0.1:2".into(),
        };
        assert_forbidden(
            node3
                .post::<_, serde_json::Value>(addr, "/cluster/nodes", &stranger, CALL)
                .await,
            "node 3 admitting node 9",
        );

        // A reader (routers) reads but changes nothing.
        let reader = as_identity(Identity::Reader("router".into()));
        assert!(reader
            .get::<serde_json::Value>(addr, "/cluster/view", CALL)
            .await
            .is_ok());
        for path in [
            "/cluster/nodes/1/drain",
            "/cluster/nodes/1/remove",
            "/cluster/nodes/2/activate",
        ] {
            assert_forbidden(
                reader.post::<_, serde_json::Value>(addr, path, &(), CALL).await,
                &format!("a reader posting {path}"),
            );
        }
        assert_forbidden(
            reader
                .post::<_, serde_json::Value>(addr, "/cluster/nodes", &re_point, CALL)
                .await,
            "a reader admitting",
        );

        // An admin may not say that node 1 lives elsewhere: only node 1 may.
        let admin = as_identity(Identity::Admin("tests".into()));
        assert_forbidden(
            admin
                .post::<_, serde_json::Value>(addr, "/cluster/nodes", &re_point, CALL)
                .await,
            "an admin re-pointing node 1",
        );
    }

    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = snapshot(&cluster).await;
    assert_eq!(before, after, "an attack changed the cluster");
    let routes = cluster.troupectl_ok(&["nodes"]).unwrap();
    assert!(!routes.contains("elsewhere"), "{routes}");

    // The positive control: the admin certificate does change the cluster.
    let admin = ClusterClient::new(addrs.clone(), &certs::admin().unwrap());
    let drained = admin.drain(NodeId(2)).await.unwrap();
    assert_eq!(drained.state.nodes[&NodeId(2)].state, NodeState::Draining);
    let back = admin.activate(NodeId(2)).await.unwrap();
    assert_eq!(back.state.nodes[&NodeId(2)].state, NodeState::Active);
}

/// Whether the port answers HTTP to a TLS client that trusts the cluster's CA but presents
/// no certificate (it must not).
async fn answers_without_a_certificate(addr: &str) -> bool {
    let mut roots = rustls::RootCertStore::empty();
    let ca_path = certs::dir().unwrap().path().join("ca.crt");
    let ca = std::fs::read(&ca_path).unwrap();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(troupe_membership::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let Ok(mut tls) = connector.connect(name, tcp).await else {
        return false;
    };
    let request = "GET /cluster/view HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    if tls.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(CALL, tls.read_to_end(&mut answer)).await;
    answer.starts_with(b"HTTP/")
}
