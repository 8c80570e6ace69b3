//! A Postgres outage: rooms keep serving from memory (edits fan out at once), no edit is
//! acknowledged while the store is down, `/healthz` says 503; once the store is back every
//! edit is committed and acknowledged, and a fresh client and a restarted node see them all.
//!
//! The test starts a Postgres of its own (`tests/pg.sh` with its own `PG_STATE_DIR`), so that
//! stopping it disturbs no other test.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use troupe_proto::token::Role;
use troupe_tests::cluster::http_request;
use troupe_tests::{token, unique, Backend, NodeProcess, TestClient};

/// A Postgres of this test's own, run by `tests/pg.sh`; stopped (and its data deleted) when
/// dropped, also when the test panics.
struct OwnPostgres {
    state_dir: PathBuf,
    url: String,
}

impl OwnPostgres {
    fn start() -> anyhow::Result<Self> {
        let state_dir = std::env::temp_dir().join(unique("troupe-outage-pg"));
        std::fs::create_dir_all(&state_dir)?;
        let mut pg = OwnPostgres {
            state_dir,
            url: String::new(),
        };
        pg.url = pg.pg_sh("start")?;
        Ok(pg)
    }

    /// Stops the server but keeps its data and port: the outage.
    fn pause(&self) -> anyhow::Result<()> {
        self.pg_sh("pause").map(drop)
    }

    /// Starts the paused server again (same data, same port); returns its URL.
    fn restart(&self) -> anyhow::Result<String> {
        self.pg_sh("restart")
    }

    /// `bash tests/pg.sh CMD` with this server's state dir; returns its stdout, trimmed.
    fn pg_sh(&self, cmd: &str) -> anyhow::Result<String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = Command::new("bash")
            .arg("tests/pg.sh")
            .arg(cmd)
            .current_dir(&root)
            .env("PG_STATE_DIR", &self.state_dir)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .context("running tests/pg.sh")?;
        if !out.status.success() {
            bail!("tests/pg.sh {cmd} failed ({})", out.status);
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        if let Err(e) = self.pg_sh("stop") {
            eprintln!("store_outage: stopping the test's Postgres: {e:#}");
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// The status of `GET /healthz`.
async fn healthz(node: &NodeProcess) -> u16 {
    http_request(node.addr, "/healthz")
        .await
        .map(|(status, _, _)| status)
        .unwrap_or(0)
}

/// Waits until `/healthz` answers `want`.
async fn wait_healthz(node: &NodeProcess, want: u16, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let status = healthz(node).await;
        if status == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("/healthz answered {status}, not {want}, for {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn marker(phase: &str, n: usize) -> String {
    format!("[{phase}{n}]")
}

#[tokio::test]
async fn postgres_outage_holds_acks_and_loses_nothing() {
    let pg = OwnPostgres::start().expect("starting the test's own Postgres with tests/pg.sh");
    let node = NodeProcess::start(&Backend::Postgres(pg.url.clone()), &[]).unwrap();
    wait_healthz(&node, 200, Duration::from_secs(10)).await.unwrap();

    let scene = unique("scene");
    let tok = token("writer", &[(scene.as_str(), Role::Edit)]);
    let mut writer = TestClient::connect(&node.ws_base(), &scene, &tok).await.unwrap();
    let mut reader = TestClient::connect(&node.ws_base(), &scene, &tok).await.unwrap();

    // Before the outage: typed, acknowledged, seen by the other client.
    let mut expected = String::new();
    for n in 0..5 {
        let m = marker("before", n);
        writer.type_text(&m).await.unwrap();
        expected.push_str(&m);
    }
    writer.wait_acked().await.unwrap();
    let want = expected.clone();
    reader
        .pump_until(Duration::from_secs(5), |c| c.text() == want)
        .await
        .unwrap();

    // The outage.
    pg.pause().unwrap();
    wait_healthz(&node, 503, Duration::from_secs(10))
        .await
        .expect("/healthz while Postgres is down");
    let acked_before = writer.acked;
    assert_eq!(acked_before, writer.sent_updates);

    // Edits still fan out at once: the room serves from memory.
    let during: Vec<String> = (0..10).map(|n| marker("during", n)).collect();
    let typed_at = Instant::now();
    for m in &during {
        writer.type_text(m).await.unwrap();
        expected.push_str(m);
        writer.pump(Duration::from_millis(20)).await.unwrap();
    }
    let want = expected.clone();
    reader
        .pump_until(Duration::from_secs(2), |c| c.text() == want)
        .await
        .expect("edits typed during the outage did not reach the other client within 2 s");
    eprintln!(
        "store_outage: edits during the outage reached the other client in {:?}",
        typed_at.elapsed()
    );

    // …but none is acknowledged while the store is down.
    writer.pump(Duration::from_secs(2)).await.unwrap();
    assert_eq!(
        writer.acked, acked_before,
        "an ack arrived while Postgres was down (acked {} of {} sent, {} before the outage)",
        writer.acked, writer.sent_updates, acked_before
    );
    assert_eq!(healthz(&node).await, 503, "/healthz after 2 s of outage");
    assert_eq!(writer.text(), expected);

    // A scene that is not loaded cannot be read from the store: its client is told to come
    // back later (1011) instead of waiting without an answer.
    let cold = unique("cold");
    let cold_token = token("w", &[(cold.as_str(), Role::Edit)]);
    let mut cold_client = TestClient::open(&node.ws_base(), &cold, &format!("token={cold_token}"))
        .await
        .unwrap();
    assert_eq!(cold_client.expect_close().await.unwrap().code, 1011);

    // The store comes back (same data, same port): every edit is committed and acknowledged.
    let url = pg.restart().unwrap();
    assert_eq!(url, pg.url, "Postgres came back at another URL");
    let back_at = Instant::now();
    let sent = writer.sent_updates;
    writer
        .pump_until(Duration::from_secs(30), |c| c.acked >= sent)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "acks after Postgres came back: {e:#} (acked {} of {sent}, {} before the outage)",
                writer.acked, acked_before
            )
        });
    eprintln!(
        "store_outage: all acks {:?} after Postgres came back",
        back_at.elapsed()
    );
    let acked = writer.acked_texts();
    for m in &during {
        assert!(
            acked.contains(m),
            "{m} typed during the outage is not acknowledged"
        );
    }
    wait_healthz(&node, 200, Duration::from_secs(10))
        .await
        .expect("/healthz after Postgres came back");

    // A fresh client sees every edit.
    let fresh = TestClient::connect(&node.ws_base(), &scene, &tok).await.unwrap();
    assert_eq!(fresh.text(), expected, "a fresh client after the outage");
    drop(fresh);
    drop(reader);
    drop(writer);

    // So does a restarted node: everything reached the store.
    let node = node.restart().unwrap();
    let mut fresh = TestClient::connect(&node.ws_base(), &scene, &tok).await.unwrap();
    assert_eq!(fresh.text(), expected, "a fresh client of the restarted node");

    // And the node edits and acknowledges as usual.
    let m = marker("after", 0);
    fresh.type_text(&m).await.unwrap();
    fresh.wait_acked().await.unwrap();
    assert_eq!(healthz(&node).await, 200);
}
