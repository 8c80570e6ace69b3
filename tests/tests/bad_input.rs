//! Every kind of bad input closes that one connection with a clear code and a metric;
//! the node and the room's other clients carry on.

use std::time::Duration;

use troupe_proto::clock::now_secs;
use troupe_proto::lib0::{write_var_bytes, write_var_u64};
use troupe_proto::message as protocol;
use troupe_proto::token::Role;
use troupe_tests::{token, token_with, unique, Backend, NodeProcess, TestClient, SECRET};

fn node() -> NodeProcess {
    NodeProcess::start(
        &Backend::Sqlite,
        &[
            ("TROUPE_MAX_FRAME_BYTES", "65536"),
            ("TROUPE_MAX_AWARENESS_BYTES", "2048"),
        ],
    )
    .expect("start node")
}

/// Base64url without padding, to forge tokens.
fn b64(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |acc, &b| (acc << 8) | b as u32) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

async fn close_code(node: &NodeProcess, scene: &str, query: &str) -> u16 {
    let mut client = TestClient::open(&node.ws_base(), scene, query)
        .await
        .expect("open");
    client.expect_close().await.expect("closed").code
}

#[tokio::test]
async fn bad_tokens_close_with_4401_and_missing_scene_grants_with_4403() {
    let node = node();
    let scene = unique("s");
    let edit = [(scene.as_str(), Role::Edit)];
    let claims = format!(
        r#"{{"sub":"mallory","exp":{},"aud":"troupe","scenes":{{"{scene}":"edit"}}}}"#,
        now_secs() + 3600
    );
    let unsigned = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims.as_bytes())
    );
    let cases = [
        ("missing", String::new()),
        (
            "expired",
            token_with("a", &edit, now_secs() - 3600, "troupe", SECRET),
        ),
        ("alg none", unsigned),
        (
            "wrong key",
            token_with("a", &edit, now_secs() + 3600, "troupe", "another-secret-entirely"),
        ),
        (
            "wrong audience",
            token_with("a", &edit, now_secs() + 3600, "someone-else", SECRET),
        ),
        ("malformed", "not.a.jwt".to_string()),
        ("garbage", "%%%".to_string()),
    ];
    for (what, token) in cases {
        assert_eq!(
            close_code(&node, &scene, &format!("token={token}")).await,
            4401,
            "{what}"
        );
    }
    let other = token("a", &[("another-scene", Role::Edit)]);
    assert_eq!(close_code(&node, &scene, &format!("token={other}")).await, 4403);
    let invalid_scene = token("a", &[("*", Role::Edit)]);
    assert_eq!(
        close_code(&node, "bad%2Fscene", &format!("token={invalid_scene}")).await,
        4404
    );
    assert!(
        node.metric("websocket_errors_total{reason=\"unauthorized\"}")
            .await
            .unwrap()
            >= 7.0
    );
    assert!(
        node.metric("websocket_errors_total{reason=\"forbidden\"}")
            .await
            .unwrap()
            >= 1.0
    );
}

#[tokio::test]
async fn a_connection_closes_with_4401_when_its_token_expires() {
    let node = node();
    let scene = unique("s");
    // Valid for one more second (plus the 5 s leeway every check allows).
    let short = token_with(
        "a",
        &[(scene.as_str(), Role::Edit)],
        now_secs() + 1,
        "troupe",
        SECRET,
    );
    let mut client = TestClient::connect(&node.ws_base(), &scene, &short)
        .await
        .unwrap();
    client.type_text("before it expires").await.unwrap();
    client.wait_acked().await.unwrap();
    let started = std::time::Instant::now();
    let closed = client
        .expect_close()
        .await
        .expect("closed when the token expired");
    assert_eq!(closed.code, 4401, "{closed}");
    assert_eq!(closed.reason, "token expired");
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "closed after {:?}",
        started.elapsed()
    );
    assert!(
        node.metric("websocket_errors_total{reason=\"token_expired\"}")
            .await
            .unwrap()
            >= 1.0
    );
    // A token with time left is not cut off.
    let long = token("b", &[(scene.as_str(), Role::Edit)]);
    let mut other = TestClient::connect(&node.ws_base(), &scene, &long).await.unwrap();
    other.type_text("still here").await.unwrap();
    other.wait_acked().await.unwrap();
}

#[tokio::test]
async fn garbage_frames_close_only_their_connection() {
    let node = node();
    let scene = unique("s");
    let tok = token("alice", &[(scene.as_str(), Role::Edit)]);
    let mut bystander = TestClient::connect(&node.ws_base(), &scene, &tok).await.unwrap();
    // A sync update whose one struct (client 7, clock 0) is an Item with ContentAny
    // (ref 8) under the root type "x", holding one Any nested 5,000 arrays deep.
    let mut deep_any = vec![0u8, 2];
    let mut update = vec![1, 1, 7, 0, 8, 1, 1, b'x', 1];
    update.extend(std::iter::repeat_n(117u8, 5000).flat_map(|tag| [tag, 1]));
    update.push(126);
    update.push(0);
    write_var_bytes(&mut deep_any, &update);

    let mut huge_claim = vec![0u8, 2];
    write_var_u64(&mut huge_claim, 1 << 40);

    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("bad varint", vec![0xff; 11], 4400),
        ("unknown message type", vec![42], 4400),
        ("unknown sync type", vec![0, 9, 0], 4400),
        (
            "truncated update",
            protocol::encode_update(&[1, 1, 200, 1, 0, 4])[..5].to_vec(),
            4400,
        ),
        (
            "corrupt update",
            protocol::encode_update(&[1, 1, 1, 0, 31, 0, 0, 0]),
            4400,
        ),
        ("length prefix past the frame", huge_claim, 4400),
        ("hostile nesting", deep_any, 4400),
        ("empty frame", vec![], 4400),
    ];
    for (what, frame, code) in cases {
        let mut attacker = TestClient::connect(&node.ws_base(), &scene, &tok).await.unwrap();
        attacker.send_raw(frame).await.unwrap();
        assert_eq!(attacker.expect_close().await.unwrap().code, code, "{what}");
    }
    // A text frame.
    let mut attacker = TestClient::connect(&node.ws_base(), &scene, &tok).await.unwrap();
    use futures_util::SinkExt;
    attacker
        .socket
        .send(tokio_tungstenite::tungstenite::Message::text("hello"))
        .await
        .unwrap();
    assert_eq!(attacker.expect_close().await.unwrap().code, 1003);

    // A frame over the size limit.
    let mut attacker = TestClient::connect(&node.ws_base(), &scene, &tok).await.unwrap();
    attacker.send_raw(vec![0u8; 70_000]).await.unwrap();
    let code = attacker.expect_close().await.unwrap().code;
    assert!(code == 4413 || code == 1009, "oversized frame closed with {code}");

    // The bystander never noticed: it still edits and is acknowledged.
    bystander.type_text("still here").await.unwrap();
    bystander.wait_acked().await.unwrap();
    let mut fresh = TestClient::connect(&node.ws_base(), &scene, &tok).await.unwrap();
    fresh.pump(Duration::from_millis(100)).await.unwrap();
    assert_eq!(fresh.text(), "still here");
    assert!(
        node.metric("websocket_errors_total{reason=\"text_frame\"}")
            .await
            .unwrap()
            >= 1.0
    );
    assert!(
        node.metric("websocket_errors_total{reason=\"invalid_payload\"}")
            .await
            .unwrap()
            >= 2.0
    );
    assert!(
        node.metric("websocket_errors_total{reason=\"truncated\"}")
            .await
            .unwrap()
            >= 2.0
    );
    assert!(
        node.metric("websocket_errors_total{reason=\"frame_too_large\"}")
            .await
            .unwrap()
            >= 1.0
    );
}

#[tokio::test]
async fn a_view_token_cannot_bring_a_scene_into_being() {
    let node = node();
    let scene = unique("never-opened");
    // Even a token that may view every scene (or a prefix of them) opens none that an
    // editor has not opened: no room, no lease row, nothing created.
    for grant in ["*", "never-opened*"] {
        let viewer = token("vi", &[(grant, Role::View)]);
        assert_eq!(
            close_code(&node, &scene, &format!("token={viewer}")).await,
            4404,
            "{grant}"
        );
    }
    assert!(
        node.metric("websocket_errors_total{reason=\"no_such_scene\"}")
            .await
            .unwrap()
            >= 2.0
    );
    // Once an editor has opened it, viewers read it; also after the room unloaded (the
    // scene exists in the store, its lease says so).
    let mut editor = TestClient::connect(
        &node.ws_base(),
        &scene,
        &token("ed", &[(scene.as_str(), Role::Edit)]),
    )
    .await
    .unwrap();
    editor.type_text("FADE IN.").await.unwrap();
    editor.wait_acked().await.unwrap();
    let viewer = token("vi", &[("*", Role::View)]);
    let reader = TestClient::connect(&node.ws_base(), &scene, &viewer)
        .await
        .unwrap();
    assert_eq!(reader.text(), "FADE IN.");
}

#[tokio::test]
async fn viewers_cannot_edit() {
    let node = node();
    let scene = unique("s");
    let editor_token = token("ed", &[(scene.as_str(), Role::Edit)]);
    let viewer_token = token("vi", &[(scene.as_str(), Role::View)]);
    let mut editor = TestClient::connect(&node.ws_base(), &scene, &editor_token)
        .await
        .unwrap();
    let mut viewer = TestClient::connect(&node.ws_base(), &scene, &viewer_token)
        .await
        .unwrap();
    editor.type_text("FADE IN:").await.unwrap();
    editor.wait_acked().await.unwrap();
    viewer
        .pump_until(Duration::from_secs(5), |c| c.text() == "FADE IN:")
        .await
        .unwrap();
    viewer.type_text(" vandalism").await.unwrap();
    viewer.pump(Duration::from_millis(300)).await.unwrap();
    editor.pump(Duration::from_millis(300)).await.unwrap();
    assert_eq!(editor.text(), "FADE IN:");
    let fresh = TestClient::connect(&node.ws_base(), &scene, &editor_token)
        .await
        .unwrap();
    assert_eq!(fresh.text(), "FADE IN:");
    assert!(node.metric("troupe_viewer_updates_dropped_total").await.unwrap() >= 1.0);
}

#[tokio::test]
async fn awareness_is_limited_to_own_ids_size_and_rate() {
    let node = node();
    let scene = unique("s");
    let tok = token("a", &[(scene.as_str(), Role::Edit)]);
    let mut alice = TestClient::connect(&node.ws_base(), &scene, &tok).await.unwrap();
    let mut bob = TestClient::connect(
        &node.ws_base(),
        &scene,
        &token("b", &[(scene.as_str(), Role::Edit)]),
    )
    .await
    .unwrap();
    alice
        .send_raw(protocol::encode_awareness(
            [(111u64, 1u64, r#"{"user":{"name":"Alice"}}"#)].into_iter(),
        ))
        .await
        .unwrap();
    bob.pump_until(Duration::from_secs(5), |c| !c.awareness_seen.is_empty())
        .await
        .unwrap();
    // Like the reference server, the sender hears its own presence back.
    alice
        .pump_until(Duration::from_secs(5), |c| !c.awareness_seen.is_empty())
        .await
        .unwrap();
    alice.awareness_seen.clear();
    // Bob tries to speak for Alice's client id: dropped, Alice hears nothing of it.
    bob.send_raw(protocol::encode_awareness(
        [(111u64, 9u64, r#"{"user":{"name":"Mallory"}}"#)].into_iter(),
    ))
    .await
    .unwrap();
    alice.pump(Duration::from_millis(300)).await.unwrap();
    assert!(alice.awareness_seen.is_empty(), "forged presence reached alice");
    assert!(node.metric("troupe_awareness_dropped_total").await.unwrap() >= 1.0);
    // Invalid JSON in a state never reaches other clients.
    bob.send_raw(protocol::encode_awareness(
        [(222u64, 1u64, "{not json")].into_iter(),
    ))
    .await
    .unwrap();
    assert_eq!(bob.expect_close().await.unwrap().code, 4400);
    // Oversized awareness closes with 4413.
    let big = format!(r#"{{"junk":"{}"}}"#, "x".repeat(4096));
    alice
        .send_raw(protocol::encode_awareness(
            [(111u64, 2u64, big.as_str())].into_iter(),
        ))
        .await
        .unwrap();
    assert_eq!(alice.expect_close().await.unwrap().code, 4413);
    // A flood of awareness is thinned to the rate limit, not fanned out.
    let mut carol = TestClient::connect(&node.ws_base(), &scene, &tok).await.unwrap();
    let mut dave = TestClient::connect(&node.ws_base(), &scene, &tok).await.unwrap();
    for clock in 1..=200u64 {
        carol
            .send_raw(protocol::encode_awareness(
                [(333u64, clock, r#"{"cursor":1}"#)].into_iter(),
            ))
            .await
            .unwrap();
    }
    dave.pump(Duration::from_millis(500)).await.unwrap();
    assert!(
        dave.awareness_seen.len() < 100,
        "{} of 200 awareness messages were fanned out",
        dave.awareness_seen.len()
    );
}

/// A view-only token for `user` in `scene`, granted presence or not.
fn viewer_token(user: &str, scene: &str, presence: bool) -> String {
    let mut claims =
        troupe_proto::token::Claims::grant(user, "troupe", &[(scene, Role::View)], Duration::from_secs(600));
    claims.presence = presence;
    troupe_proto::token::Signer::from_secret(SECRET.as_bytes())
        .sign(&claims)
        .unwrap()
}

#[tokio::test]
async fn viewers_publish_presence_only_when_granted() {
    let node = node();
    let scene = unique("s");
    let mut alice = TestClient::connect(
        &node.ws_base(),
        &scene,
        &token("alice", &[(scene.as_str(), Role::Edit)]),
    )
    .await
    .unwrap();
    let mut viewer = TestClient::connect(&node.ws_base(), &scene, &viewer_token("vic", &scene, false))
        .await
        .unwrap();
    let dropped_before = node.metric("troupe_awareness_dropped_total").await.unwrap_or(0.0);
    viewer
        .send_raw(protocol::encode_awareness(
            [(
                501u64,
                1u64,
                r#"{"user":{"name":"Alice","color":"red; background: url(//evil)"}}"#,
            )]
            .into_iter(),
        ))
        .await
        .unwrap();
    // The viewer hears itself (stock clients need that), Alice hears nothing.
    viewer
        .pump_until(Duration::from_secs(5), |c| !c.awareness_seen.is_empty())
        .await
        .unwrap();
    alice.pump(Duration::from_millis(400)).await.unwrap();
    assert!(
        alice.awareness_seen.is_empty(),
        "an ungranted viewer's presence reached an editor"
    );
    assert!(node.metric("troupe_awareness_dropped_total").await.unwrap() > dropped_before);

    // Granted: the presence reaches Alice, with the token's name and without the CSS.
    let mut reviewer = TestClient::connect(&node.ws_base(), &scene, &viewer_token("rita", &scene, true))
        .await
        .unwrap();
    reviewer
        .send_raw(protocol::encode_awareness(
            [(
                502u64,
                1u64,
                r#"{"user":{"name":"Alice","color":"red; background: url(//evil)"}}"#,
            )]
            .into_iter(),
        ))
        .await
        .unwrap();
    alice
        .pump_until(Duration::from_secs(5), |c| !c.awareness_seen.is_empty())
        .await
        .unwrap();
    let seen = String::from_utf8_lossy(&alice.awareness_seen.concat()).into_owned();
    assert!(seen.contains("rita"), "{seen}");
    assert!(
        !seen.contains("evil") && !seen.contains("\"name\":\"Alice\""),
        "{seen}"
    );
}

#[tokio::test]
async fn the_token_can_ride_in_the_subprotocol_header_instead_of_the_url() {
    let node = node();
    let scene = unique("s");
    let good = token("ada", &[(scene.as_str(), Role::Edit)]);
    let (mut client, selected) = TestClient::open_offering(
        &node.ws_base(),
        &scene,
        "acks=1",
        &format!("troupe, troupe.bearer.{good}"),
    )
    .await
    .unwrap();
    assert_eq!(
        selected.as_deref(),
        Some("troupe"),
        "the node selects the protocol offered"
    );
    client
        .send_raw(protocol::encode_sync_step1(
            &yrs::updates::encoder::Encode::encode_v1(&yrs::StateVector::default()),
        ))
        .await
        .unwrap();
    client
        .pump_until(Duration::from_secs(5), |c| c.synced)
        .await
        .unwrap();
    client.type_text("FADE IN:").await.unwrap();
    client.wait_acked().await.unwrap();

    // Refused like a token in the URL: bad, expired, for another scene.
    let expired = token_with(
        "ada",
        &[(scene.as_str(), Role::Edit)],
        now_secs() - 60,
        "troupe",
        SECRET,
    );
    let other = token("ada", &[("elsewhere", Role::Edit)]);
    for (bad, code) in [
        ("not-a-jwt", 4401),
        (expired.as_str(), 4401),
        (other.as_str(), 4403),
    ] {
        let (mut refused, _) = TestClient::open_offering(
            &node.ws_base(),
            &scene,
            "",
            &format!("troupe, troupe.bearer.{bad}"),
        )
        .await
        .unwrap();
        assert_eq!(refused.expect_close().await.unwrap().code, code, "{bad}");
    }
}

#[tokio::test]
async fn browsers_from_other_origins_are_refused() {
    let node = node();
    let scene = unique("s");
    let tok = token("a", &[(scene.as_str(), Role::Edit)]);
    let url = format!("{}/{scene}?token={tok}", node.ws_base());
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url.as_str()).unwrap();
    request
        .headers_mut()
        .insert("Origin", "https://evil.example".parse().unwrap());
    let refused = tokio_tungstenite::connect_async(request).await;
    assert!(refused.is_err(), "upgrade from a foreign origin was accepted");
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url.as_str()).unwrap();
    request
        .headers_mut()
        .insert("Origin", "http://localhost:5173".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(request).await.is_ok());
}

#[tokio::test]
async fn rooms_cap_their_connections() {
    let node = NodeProcess::start(&Backend::Sqlite, &[("TROUPE_MAX_CONNECTIONS_PER_ROOM", "2")]).unwrap();
    let scene = unique("s");
    let tok = token("a", &[(scene.as_str(), Role::Edit)]);
    let _one = TestClient::connect(&node.ws_base(), &scene, &tok).await.unwrap();
    let _two = TestClient::connect(&node.ws_base(), &scene, &tok).await.unwrap();
    assert_eq!(close_code(&node, &scene, &format!("token={tok}")).await, 4429);
    // Another scene is unaffected.
    let other = unique("s");
    TestClient::connect(
        &node.ws_base(),
        &other,
        &token("a", &[(other.as_str(), Role::Edit)]),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn out_of_order_updates_wait_for_what_they_follow() {
    use yrs::{Doc, Text, Transact};
    let node = node();
    let scene = unique("s");
    let tok = token("a", &[(scene.as_str(), Role::Edit)]);
    let mut writer = TestClient::connect(&node.ws_base(), &scene, &tok).await.unwrap();
    let mut reader = TestClient::connect(&node.ws_base(), &scene, &tok).await.unwrap();
    writer.pump(Duration::from_millis(100)).await.unwrap();
    let acked_before = writer.acked;
    // Two edits of one client; the second is sent first, as a reconnecting client may do.
    let doc = Doc::new();
    let text = doc.get_or_insert_text("text");
    let first = {
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "INT. ");
        txn.encode_update_v1()
    };
    let second = {
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 5, "DINER - NIGHT");
        txn.encode_update_v1()
    };
    writer.send_raw(protocol::encode_update(&second)).await.unwrap();
    writer.pump(Duration::from_millis(300)).await.unwrap();
    reader.pump(Duration::from_millis(100)).await.unwrap();
    assert_eq!(reader.text(), "", "an update was applied before what it follows");
    assert_eq!(writer.acked, acked_before, "a held update was acknowledged");
    writer.send_raw(protocol::encode_update(&first)).await.unwrap();
    writer
        .pump_until(Duration::from_secs(5), |c| c.acked >= acked_before + 2)
        .await
        .unwrap();
    reader
        .pump_until(Duration::from_secs(5), |c| c.text() == "INT. DINER - NIGHT")
        .await
        .unwrap();
    let fresh = TestClient::connect(&node.ws_base(), &scene, &tok).await.unwrap();
    assert_eq!(fresh.text(), "INT. DINER - NIGHT");
}

#[tokio::test]
async fn subdocuments_are_refused() {
    use yrs::{Doc, Map, Transact};
    let node = node();
    let scene = unique("s");
    let tok = token("a", &[(scene.as_str(), Role::Edit)]);
    let mut client = TestClient::connect(&node.ws_base(), &scene, &tok).await.unwrap();
    let doc = Doc::new();
    let map = doc.get_or_insert_map("docs");
    let update = {
        let mut txn = doc.transact_mut();
        map.insert(&mut txn, "sub", Doc::new());
        txn.encode_update_v1()
    };
    client.send_raw(protocol::encode_update(&update)).await.unwrap();
    assert_eq!(client.expect_close().await.unwrap().code, 4400);
}

#[tokio::test]
async fn a_flood_of_sync_requests_is_refused() {
    use yrs::updates::encoder::Encode;
    let node = node();
    let scene = unique("s");
    let tok = token("a", &[(scene.as_str(), Role::Edit)]);
    let mut client = TestClient::connect(&node.ws_base(), &scene, &tok).await.unwrap();
    let sv = yrs::StateVector::default().encode_v1();
    for _ in 0..10 {
        client.send_raw(protocol::encode_sync_step1(&sv)).await.unwrap();
    }
    assert_eq!(client.expect_close().await.unwrap().code, 4429);
}

#[tokio::test]
async fn metrics_can_require_a_token() {
    let node =
        NodeProcess::start(&Backend::Sqlite, &[("TROUPE_METRICS_TOKEN", "scrape-me")]).expect("start node");
    let status = |raw: String| raw.split_whitespace().nth(1).unwrap_or_default().to_string();
    let open = troupe_tests::http_get(node.addr, "/metrics").await.unwrap();
    assert_eq!(status(open), "401");
    let wrong = troupe_tests::http_get_with(node.addr, "/metrics", &[("Authorization", "Bearer guess")])
        .await
        .unwrap();
    assert_eq!(status(wrong), "401");
    let scraped =
        troupe_tests::http_get_with(node.addr, "/metrics", &[("Authorization", "Bearer scrape-me")])
            .await
            .unwrap();
    assert_eq!(status(scraped.clone()), "200");
    assert!(scraped.contains("websocket_connections_active"), "{scraped}");
}
