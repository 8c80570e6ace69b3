//! Webhooks reach a real HTTP receiver: `scene.backfilled` when a P1 scene is seeded, one
//! debounced `scene.changed` for a burst of edits, `scene.restored` after a restore; each
//! signed (HMAC-SHA256 of the body), retried with the same id and body after a 5xx, and a
//! receiver that is down never slows the room.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use troupe_proto::token::Role;
use troupe_tests::p1::*;
use troupe_tests::{token, unique, Backend, NodeProcess, TestClient};

const SECRET: &str = "webhook-secret-for-tests";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Delivery {
    headers: HashMap<String, String>,
    body: String,
    json: serde_json::Value,
}

/// A plain HTTP receiver: records every request and answers 500 to the first `fail_first`.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Delivery>>>,
}

impl Receiver {
    async fn start(fail_first: usize) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/troupe", listener.local_addr().unwrap());
        let got = Arc::new(Mutex::new(Vec::new()));
        let record = got.clone();
        tokio::spawn(async move {
            let mut seen = 0usize;
            while let Ok((mut socket, _)) = listener.accept().await {
                let Some(delivery) = read_request(&mut socket).await else {
                    continue;
                };
                seen += 1;
                record.lock().unwrap().push(delivery);
                let status = if seen <= fail_first {
                    "500 Internal Server Error"
                } else {
                    "204 No Content"
                };
                let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        Receiver { url, got }
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until some delivery of `event` for `scene` satisfies `check`.
    async fn until(&self, event: &str, scene: &str, check: impl Fn(&Delivery) -> bool) -> Delivery {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(d) = self
                .deliveries()
                .into_iter()
                .find(|d| d.json["event"] == event && d.json["scene"] == scene && check(d))
            {
                return d;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {event} for {scene}: {:#?}",
                self.deliveries()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<Delivery> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        let n = socket.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    let length: usize = headers.get("content-length")?.parse().ok()?;
    while raw.len() < head_end + length {
        let n = socket.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&raw[head_end..head_end + length]).into_owned();
    let json = serde_json::from_str(&body).ok()?;
    Some(Delivery { headers, body, json })
}

#[tokio::test]
async fn signed_debounced_retried_and_never_in_the_way() {
    // The first delivery is refused with a 500: it comes again, the same.
    let receiver = Receiver::start(1).await;
    let backend = Backend::Sqlite;
    let node = NodeProcess::start(
        &backend,
        &[
            ("TROUPE_WEBHOOK_URL", receiver.url.as_str()),
            ("TROUPE_WEBHOOK_SECRET", SECRET),
            ("TROUPE_WEBHOOK_DEBOUNCE", "300ms"),
            ("TROUPE_WEBHOOK_RETRY", "100ms"),
        ],
    )
    .unwrap();
    let scene = unique("hook");
    write_p1(&node, &backend, &scene, &rows(&screenplay())).await;
    let ada = token("ada", &[(scene.as_str(), Role::Edit)]);
    let mut editor = TestClient::connect(&node.ws_base(), &scene, &ada).await.unwrap();

    // Seeded from P1: backfilled.
    let backfilled = receiver.until("scene.backfilled", &scene, |_| true).await;
    assert_eq!(backfilled.json["p1_version"], 1);

    // A burst of edits: one `scene.changed`, sent once they stopped, naming the last commit.
    for i in 0..5 {
        add_block(&mut editor, "action", &format!("[burst-{i}]")).await;
    }
    let changed = receiver.until("scene.changed", &scene, |_| true).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let all_changed: Vec<Delivery> = receiver
        .deliveries()
        .into_iter()
        .filter(|d| d.json["event"] == "scene.changed" && d.json["scene"] == scene.as_str())
        .collect();
    let distinct: std::collections::BTreeSet<String> =
        all_changed.iter().map(|d| d.json["id"].to_string()).collect();
    assert_eq!(distinct.len(), 1, "one event for the burst: {all_changed:#?}");
    assert!(changed.json["seq"].as_u64().unwrap() >= 5, "{:?}", changed.json);

    // A restore: `scene.restored`, saying by whom.
    let auth = format!("Bearer {ada}");
    let (status, answer) = troupe_tests::http_send(
        node.addr,
        "POST",
        &format!("/v1/scenes/{scene}/restore"),
        &[("Authorization", auth.as_str())],
        r#"{"from_p1": true}"#,
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{answer}");
    let restored = receiver.until("scene.restored", &scene, |_| true).await;
    assert_eq!(restored.json["restored"], "p1");
    assert_eq!(restored.json["by"], "ada");

    // Every delivery is signed over its exact body; the refused one came again, the same.
    let deliveries = receiver.deliveries();
    for d in &deliveries {
        assert_eq!(
            d.headers.get("x-troupe-signature"),
            Some(&troupe_node::webhooks::signature(
                SECRET.as_bytes(),
                d.body.as_bytes()
            )),
            "{d:?}"
        );
        assert_eq!(
            d.headers.get("x-troupe-event").map(String::as_str),
            d.json["event"].as_str()
        );
        assert_eq!(
            d.headers.get("x-troupe-delivery").map(String::as_str),
            d.json["id"].as_str()
        );
    }
    let first = &deliveries[0];
    let again: Vec<&Delivery> = deliveries
        .iter()
        .filter(|d| d.json["id"] == first.json["id"])
        .collect();
    assert_eq!(
        again.len(),
        2,
        "the refused delivery was retried once: {deliveries:#?}"
    );
    assert_eq!(again[0].body, again[1].body);
    let wrong = troupe_node::webhooks::signature(b"another-secret-entirely", first.body.as_bytes());
    assert_ne!(first.headers.get("x-troupe-signature"), Some(&wrong));
    drop(editor);

    // A receiver that is down: edits are acknowledged as fast as ever, the node counts the
    // failures and stays up.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}/", closed.local_addr().unwrap());
    drop(closed);
    let node = NodeProcess::start(
        &backend,
        &[
            ("TROUPE_WEBHOOK_URL", dead_url.as_str()),
            ("TROUPE_WEBHOOK_SECRET", SECRET),
            ("TROUPE_WEBHOOK_DEBOUNCE", "20ms"),
            ("TROUPE_WEBHOOK_RETRY", "20ms"),
        ],
    )
    .unwrap();
    let scene = unique("hook-down");
    let ada = token("ada", &[(scene.as_str(), Role::Edit)]);
    let mut editor = TestClient::connect(&node.ws_base(), &scene, &ada).await.unwrap();
    let started = std::time::Instant::now();
    for i in 0..20 {
        add_block(&mut editor, "action", &format!("[down-{i}]")).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "edits slowed down: {:?}",
        started.elapsed()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while node
        .metric("troupe_webhook_deliveries_total{outcome=\"retried\"}")
        .await
        .unwrap_or(0.0)
        < 1.0
    {
        assert!(std::time::Instant::now() < deadline, "no failed attempt counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(read(&editor).len(), 20);
}
