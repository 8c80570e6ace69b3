//! The router's pass-through (`TROUPE_NODE_UPSTREAM`), as on Kubernetes: a node announces
//! `ws://<router>/nodes/<name>` as its public URL and is only reached through the router,
//! which passes `/nodes/<name>/…` on to the node's port. Browsers' path, end to end: the
//! route names that URL, WebSocket editors sync and see each other through it, the content
//! API reaches the owner (straight at its upstream, not back through the router), bodies
//! and queries pass, and names that are not members, or nodes that are down, get 404 and
//! 502 without the router connecting anywhere it should not.
//!
//! The node is named `localhost`, so that the template `http://{name}:<port>` resolves here.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use troupe_proto::token::Role;
use troupe_tests::cluster::{free_addr, http_request, http_request_with, RouterProcess};
use troupe_tests::p1::{add_block, read};
use troupe_tests::{http_send, token, unique, Backend, NodeProcess, TestClient};

/// The router's `/metrics` value for a series, 0 when absent.
async fn metric(router: SocketAddr, series: &str) -> f64 {
    let (_, _, text) = http_request(router, "/metrics").await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap_or(0.0))
        .unwrap_or(0.0)
}

fn outcome(name: &str) -> String {
    format!("router_passthrough_requests_total{{outcome=\"{name}\"}}")
}

const CONNECTIONS: &str = "router_passthrough_connections";

#[tokio::test]
async fn browsers_reach_nodes_through_the_router_by_name() {
    let router_addr = free_addr();
    let public = format!("ws://{router_addr}/nodes/localhost");
    let mut node = NodeProcess::start(&Backend::Sqlite, &[("TROUPE_PUBLIC_URL", &public)]).unwrap();
    let upstream = format!("http://{{name}}:{}", node.addr.port());
    let router = RouterProcess::start_with(
        &[node.rpc_addr.to_string()],
        &[
            ("TROUPE_LISTEN", &router_addr.to_string()),
            ("TROUPE_NODE_UPSTREAM", &upstream),
        ],
    )
    .await
    .unwrap();
    assert_eq!(router.addr, router_addr);

    // (a) The route names the pass-through URL.
    let scene = unique("through");
    let (_, url, _) = router.route(&scene).await.unwrap();
    assert_eq!(url, public);

    // (b) Two editors connect as browsers do (to the route's URL), sync, and see each other.
    let base = format!("{url}/ws/scenes");
    let edit = token("ada", &[(scene.as_str(), Role::Edit)]);
    let mut ada = TestClient::connect(&base, &scene, &edit).await.unwrap();
    let mut bob = TestClient::connect(&base, &scene, &token("bob", &[(scene.as_str(), Role::Edit)]))
        .await
        .unwrap();
    ada.type_text("hello through the router").await.unwrap();
    ada.wait_acked().await.unwrap();
    bob.pump_until(Duration::from_secs(5), |c| c.text() == "hello through the router")
        .await
        .unwrap();
    bob.type_text("!").await.unwrap();
    ada.pump_until(Duration::from_secs(5), |c| c.text().ends_with('!'))
        .await
        .unwrap();
    assert_eq!(metric(router.addr, &outcome("upgraded")).await, 2.0);
    assert_eq!(metric(router.addr, CONNECTIONS).await, 2.0);

    // (c) The content API through the router reaches the owner at its upstream directly:
    // no pass-through request is made for it.
    add_block(&mut ada, "action", "Rain on the windows.").await;
    let forwarded = metric(router.addr, &outcome("forwarded")).await;
    let reader = format!("Bearer {}", token("rita", &[(scene.as_str(), Role::View)]));
    let content = format!("/v1/scenes/{scene}/content");
    let (status, _, body) = http_request_with(
        router.addr,
        &format!("{content}?format=text"),
        &[("Authorization", &reader)],
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Rain on the windows."), "{body}");
    assert_eq!(metric(router.addr, &outcome("forwarded")).await, forwarded);

    // Any request to the node passes too, query and body included.
    let (status, _, body) = http_request_with(
        router.addr,
        &format!("/nodes/localhost{content}?format=text"),
        &[("Authorization", &reader)],
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Rain on the windows."), "{body}");
    let writer = format!("Bearer {edit}");
    let patch = r#"{"edits":[{"op":"insert","at":0,"blocks":[{"type":"transition","text":"FADE IN:"}]}]}"#;
    let (status, answer) = http_send(
        router.addr,
        "PATCH",
        &format!("/nodes/localhost{content}"),
        &[("Authorization", &writer)],
        patch,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{answer}");
    ada.pump_until(Duration::from_secs(5), |c| {
        read(c).first().is_some_and(|b| b.text == "FADE IN:")
    })
    .await
    .unwrap();
    assert_eq!(metric(router.addr, &outcome("forwarded")).await, forwarded + 2.0);
    // The node's own answers come back as they are (its 401 here).
    let (status, _, _) = http_request(router.addr, &format!("/nodes/localhost{content}"))
        .await
        .unwrap();
    assert_eq!(status, 401);
    // A chunked body over the router's limit (TROUPE_MAX_BODY_BYTES) is cut off at it.
    assert_eq!(
        chunked_put(
            router.addr,
            &format!("/nodes/localhost{content}"),
            &writer,
            200_000
        )
        .await,
        413
    );

    assert_eq!(metric(router.addr, &outcome("too_large")).await, 1.0);

    // Leaving closes the spliced connections.
    drop(ada);
    drop(bob);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while metric(router.addr, CONNECTIONS).await != 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections still counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // (e) A member that is down: 502, and the content API says so as before.
    node.kill9();
    let (status, _, body) = http_request(router.addr, &format!("/nodes/localhost{content}"))
        .await
        .unwrap();
    assert_eq!(status, 502, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"], "node_unreachable");
    assert!(metric(router.addr, &outcome("unreachable")).await >= 1.0);
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        TestClient::open(&base, &scene, &format!("token={edit}")),
    )
    .await
    .unwrap();
    assert!(result.is_err(), "a WebSocket to a node that is down opened");
}

/// (d) Only members' names are passed on, and nothing is connected to for any other.
#[tokio::test]
async fn only_members_are_reached() {
    let router_addr = free_addr();
    let public = format!("ws://{router_addr}/nodes/localhost/");
    let node = NodeProcess::start(&Backend::Sqlite, &[("TROUPE_PUBLIC_URL", &public)]).unwrap();
    // The upstream is a listener of this test's that counts the connections it gets.
    let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let probe_port = probe.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let probing = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = probe.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut head = [0u8; 1024];
            let _ = tcp.read(&mut head).await;
            let _ = tcp
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nprobed")
                .await;
        }
    });
    let router = RouterProcess::start_with(
        &[node.rpc_addr.to_string()],
        &[
            ("TROUPE_LISTEN", &router_addr.to_string()),
            ("TROUPE_NODE_UPSTREAM", &format!("http://{{name}}:{probe_port}")),
        ],
    )
    .await
    .unwrap();

    for path in [
        "/nodes/not-a-member/ws/scenes/s1?token=x",
        "/nodes/not-a-member/healthz",
        "/nodes/Localhost/healthz",
        "/nodes/localhost.evil/healthz",
        "/nodes/local%68ost/healthz",
        "/nodes/-localhost/healthz",
        "/nodes//healthz",
    ] {
        let (status, headers, body) = http_request(router.addr, path).await.unwrap();
        assert_eq!(status, 404, "{path}: {body}");
        assert!(
            headers
                .iter()
                .any(|(k, v)| k == "content-type" && v == "application/json"),
            "{path}: {headers:?}"
        );
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["error"], "not_found", "{path}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "the router connected for a non-member"
    );
    assert!(metric(router.addr, &outcome("unknown_node")).await >= 6.0);

    // A member's operational endpoints stay inside the cluster: 404, nothing connected.
    for path in [
        "/nodes/localhost/metrics",
        "/nodes/localhost/healthz",
        "/nodes/localhost/readyz",
    ] {
        let (status, _, body) = http_request(router.addr, path).await.unwrap();
        assert_eq!(status, 404, "{path}: {body}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "the router passed an operational path on"
    );
    assert_eq!(metric(router.addr, &outcome("not_passed")).await, 3.0);

    // The member's name does reach the upstream (so the probe is what the router would call).
    let (status, _, body) = http_request(router.addr, "/nodes/localhost/v1/scenes/s1/content")
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "probed"));
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    // (e) The upstream goes away: 502 with the router's JSON error.
    probing.abort();
    let _ = probing.await;
    let (status, _, body) = http_request(router.addr, "/nodes/localhost/v1/scenes/s1/content")
        .await
        .unwrap();
    assert_eq!(status, 502, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"], "node_unreachable");
    drop(node);
}

/// A router without the setting keeps `/nodes/…` as it was: no pass-through.
#[tokio::test]
async fn without_the_setting_nothing_is_passed_through() {
    let router_addr = free_addr();
    let public = format!("ws://{router_addr}/nodes/localhost");
    let node = NodeProcess::start(&Backend::Sqlite, &[("TROUPE_PUBLIC_URL", &public)]).unwrap();
    let router = RouterProcess::start_with(
        &[node.rpc_addr.to_string()],
        &[
            ("TROUPE_LISTEN", &router_addr.to_string()),
            ("TROUPE_WEB_DIR", ""),
        ],
    )
    .await
    .unwrap();
    let (status, _, _) = http_request(router.addr, "/nodes/localhost/healthz")
        .await
        .unwrap();
    assert_eq!(status, 404);
    assert_eq!(metric(router.addr, &outcome("forwarded")).await, 0.0);
}

/// A `PUT` whose body of `size` bytes comes in chunks (no `Content-Length` to refuse it by);
/// the answer's status.
async fn chunked_put(addr: SocketAddr, path: &str, auth: &str, size: usize) -> u16 {
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b' '; 8192];
        let mut sent = 0;
        while sent < size {
            let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
            // The router may answer and close before the whole body is sent.
            if tcp.write_all(&frame).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
        let _ = tcp.write_all(b"0\r\n\r\n").await;
        let mut answer = Vec::new();
        let _ = tcp.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        answer
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .unwrap()
}
