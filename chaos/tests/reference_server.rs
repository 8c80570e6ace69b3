//! The client against the y-websocket reference server (`chaos/reference`, npm y-websocket
//! 1.5). Skipped, with a note, when `node` or `chaos/reference/node_modules` is missing
//! (`cd chaos/reference && npm ci`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use troupe_chaos::client::{ClientError, ClientEvent, ClientOptions, EditorClient, Sent};

const T: Duration = Duration::from_secs(5);

/// A reference server process, killed on drop.
struct Reference {
    child: Child,
    url: String,
}

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn reference() -> Option<Reference> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("reference");
    let script = dir.join("node_modules/y-websocket/bin/server.js");
    if !script.exists() {
        eprintln!(
            "skipped: {} missing (run npm ci in chaos/reference)",
            script.display()
        );
        return None;
    }
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
        l.local_addr().ok()?.port()
    };
    let mut child = match Command::new("node")
        .arg(&script)
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skipped: cannot run node: {e}");
            return None;
        }
    };
    let stdout = child.stdout.take()?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(15), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("running at") {
                return true;
            }
        }
        false
    })
    .await;
    assert!(matches!(ready, Ok(true)), "reference server did not start");
    Some(Reference {
        child,
        url: format!("ws://127.0.0.1:{port}"),
    })
}

fn scene() -> String {
    format!("test-{:08x}", rand::random::<u32>())
}

async fn wait_text(c: &EditorClient, want: &str) -> String {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let got = c.text("text").await.expect("text");
        if got == want || tokio::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn two_editors_converge_and_report_updates() {
    let Some(srv) = reference().await else { return };
    let scene = scene();
    let opts = ClientOptions {
        events: true,
        observe_text: Some("text".into()),
        ..ClientOptions::default()
    };
    let a = EditorClient::connect(&srv.url, &scene, "", opts.clone())
        .await
        .expect("a");
    let mut b = EditorClient::connect(&srv.url, &scene, "", opts)
        .await
        .expect("b");
    a.wait_synced(T).await.expect("a synced");
    b.wait_synced(T).await.expect("b synced");
    let mut events = b.take_events().expect("events");

    let sent = a.push("text", "hello").await.expect("push");
    assert!(matches!(sent, Sent::Message { connection: 1, .. }), "{sent:?}");
    assert_eq!(wait_text(&b, "hello").await, "hello");
    b.insert("text", 0, "oh ").await.expect("insert");
    assert_eq!(wait_text(&a, "oh hello").await, "oh hello");
    a.delete("text", 0, 3).await.expect("delete");
    assert_eq!(wait_text(&b, "hello").await, "hello");

    // b saw a's insertion as an update event carrying the inserted string.
    let mut inserted = Vec::new();
    while let Ok(ev) = events.try_recv() {
        if let ClientEvent::Update(u) = ev {
            inserted.extend(u.inserted);
        }
    }
    assert!(inserted.contains(&"hello".to_owned()), "{inserted:?}");

    // An edit that changes nothing sends nothing.
    let ((), sent) = a.edit(|_txn| ()).await.expect("noop");
    assert_eq!(sent, Sent::Nothing);
    assert_eq!(
        a.state_update().await.expect("a"),
        b.state_update().await.expect("b")
    );
    // The reference server knows nothing of acks.
    assert!(matches!(a.wait_acked(T).await, Err(ClientError::AcksDisabled)));
}

#[tokio::test]
async fn awareness_reaches_the_other_editor() {
    let Some(srv) = reference().await else { return };
    let scene = scene();
    let a = EditorClient::connect(&srv.url, &scene, "", ClientOptions::default())
        .await
        .expect("a");
    let b = EditorClient::connect(&srv.url, &scene, "", ClientOptions::default())
        .await
        .expect("b");
    a.wait_synced(T).await.expect("a synced");
    b.wait_synced(T).await.expect("b synced");
    a.set_awareness(Some(&serde_json::json!({"user": {"name": "Ada"}})))
        .await
        .expect("set");
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let states = b.awareness_states().await.expect("states");
        if let Some(json) = states.get(&a.client_id()) {
            assert!(json.contains("Ada"), "{json}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "awareness never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Clearing it removes it on the other side.
    a.set_awareness(None).await.expect("clear");
    let deadline = tokio::time::Instant::now() + T;
    while b
        .awareness_states()
        .await
        .expect("states")
        .contains_key(&a.client_id())
    {
        assert!(tokio::time::Instant::now() < deadline, "awareness never cleared");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    b.query_awareness().await.expect("query");
}

#[tokio::test]
async fn offline_edits_travel_with_the_next_handshake() {
    let Some(srv) = reference().await else { return };
    let scene = scene();
    let a = EditorClient::connect(&srv.url, &scene, "", ClientOptions::default())
        .await
        .expect("a");
    let b = EditorClient::connect(&srv.url, &scene, "", ClientOptions::default())
        .await
        .expect("b");
    a.wait_synced(T).await.expect("a synced");
    b.wait_synced(T).await.expect("b synced");

    a.drop_connection().await.expect("drop");
    let info = a.closed(T).await.expect("closed");
    assert_eq!(info.code, None);
    assert!(!a.status().connected);
    assert_eq!(a.push("text", "offline").await.expect("edit"), Sent::Offline);
    assert_eq!(a.text("text").await.expect("text"), "offline");

    a.reconnect().await.expect("reconnect");
    a.wait_synced(T).await.expect("synced again");
    assert_eq!(a.status().connection, 2);
    assert_eq!(wait_text(&b, "offline").await, "offline");

    // A graceful close is recorded as ours.
    b.close(1000, "bye").await.expect("close");
    let info = b.close_info().expect("close info");
    assert_eq!(info.code, Some(1000));
    assert!(matches!(b.push("text", "x").await, Ok(Sent::Offline)));
}

#[tokio::test]
async fn connect_errors_are_errors() {
    // Nothing listens on this port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = format!("ws://127.0.0.1:{port}");
    let err = EditorClient::connect(&url, "s", "", ClientOptions::default())
        .await
        .err()
        .expect("must fail");
    assert!(matches!(err, ClientError::WebSocket(_)), "{err}");
    let err = EditorClient::connect("http://x", "s", "", ClientOptions::default())
        .await
        .err()
        .expect("must fail");
    assert!(matches!(err, ClientError::Url(_)), "{err}");
}
