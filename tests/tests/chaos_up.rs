//! `troupe dev` (and its alias `troupe-chaos up`), the one command that starts a local
//! cluster: it prints the router and a working token first, the cluster serves, start-up logs
//! no refused connections, and SIGTERM stops every process it started.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use troupe_tests::cluster::{free_addr, http_request};
use troupe_tests::{bin_dir, unique, TestClient};

/// Stops `troupe dev` (and with it its cluster) when the test ends, also on failure.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn dev_starts_a_working_cluster_and_stops_it() {
    starts_a_working_cluster_and_stops_it("troupe", "dev").await;
}

#[tokio::test]
async fn up_is_the_same_command() {
    starts_a_working_cluster_and_stops_it("troupe-chaos", "up").await;
}

async fn starts_a_working_cluster_and_stops_it(program: &str, command: &str) {
    let data = std::env::temp_dir().join(unique("troupe-up"));
    // Nodes listen on base+i and base+100+i: all of them must be free, not just the base
    // (another test's process may hold one).
    let base = loop {
        let port = free_addr().port();
        let all_free = [1, 2, 3, 101, 102, 103]
            .iter()
            .all(|i| std::net::TcpListener::bind(("127.0.0.1", port + i)).is_ok());
        if all_free {
            break port;
        }
    };
    let router_port = free_addr().port();
    let mut child = Command::new(bin_dir().join(program))
        .args([
            command,
            "--no-build",
            "--nodes",
            "3",
            "--base-port",
            &base.to_string(),
        ])
        .args(["--router-port", &router_port.to_string(), "--data-dir"])
        .arg(&data)
        .env_remove("TROUPE_DATABASE_URL")
        .env_remove("TROUPE_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let mut guard = Guard(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut router, mut token) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    while router.is_none() || token.is_none() {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("no router and token printed");
        // The addresses come first: the router, then the editor.
        assert_eq!(router.is_none(), line.starts_with("router"), "{line}");
        if let Some(url) = line.strip_prefix("router   http://") {
            router = Some(url.trim().to_string());
        }
        if let Some(t) = line.strip_prefix("token    ") {
            token = Some(t.trim().to_string());
        }
    }
    let (router, token) = (router.unwrap(), token.unwrap());
    let router_addr = router.parse().unwrap();
    let (status, _, body) = http_request(router_addr, "/v1/route/s1").await.unwrap();
    assert_eq!(status, 200, "{body}");
    let route: serde_json::Value = serde_json::from_str(&body).unwrap();
    let owner = route["url"].as_str().unwrap();
    let mut client = TestClient::connect(&format!("{owner}/ws/scenes"), "s1", &token)
        .await
        .unwrap();
    client.type_text("FADE IN:").await.unwrap();
    client.wait_acked().await.unwrap();

    let _ = Command::new("kill")
        .args(["-TERM", &guard.0.id().to_string()])
        .status();
    let stopped = Instant::now();
    let status = loop {
        if let Some(status) = guard.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(20),
            "{program} did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    // Its nodes are gone: their ports refuse connections.
    let node_port = owner.rsplit(':').next().unwrap();
    assert!(std::net::TcpStream::connect(format!("127.0.0.1:{node_port}")).is_err());
    let _ = std::fs::remove_dir_all(&data);
    // Logs are the processes', named; a start-up runs into no peer that is not listening yet.
    let stderr = stderr.join().unwrap();
    assert!(stderr.iter().any(|l| l.starts_with("node 1 | ")), "{stderr:#?}");
    assert!(
        !stderr.iter().any(|l| l.contains("Connection refused")),
        "{stderr:#?}"
    );
}
