//! A node's public port under slow and greedy clients: slowloris connections are closed
//! after the header timeout, a flood from one address is refused with 503 beyond its cap,
//! oversized headers and bodies are refused, idle keep-alive connections are closed, the
//! process-wide cap holds — and meanwhile another scene's editing keeps a p99 round trip
//! under 50 ms with the node's memory bounded.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use troupe_proto::token::Role;
use troupe_tests::{token, unique, Backend, NodeProcess, TestClient};

/// A connection to `to` from the loopback address `from` (all of 127.0.0.0/8 is this
/// machine), so that each attacker is an address of its own.
async fn connect_from(from: [u8; 4], to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::from(from), 0))?;
    socket.connect(to).await
}

/// What the server sends before it closes (at most `limit` of waiting).
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_greedy_clients_are_cut_off_while_editing_goes_on() {
    const SLOWLORIS: usize = 150;
    const FLOOD: usize = 400;
    const PER_ADDRESS: usize = 150;
    let node = NodeProcess::start(
        &Backend::Sqlite,
        &[
            ("TROUPE_HEADER_TIMEOUT", "2s"),
            ("TROUPE_MAX_CONNECTIONS_PER_ADDRESS", "150"),
            ("TROUPE_MAX_CONNECTIONS", "2000"),
        ],
    )
    .unwrap();
    let addr = node.addr;
    let scene = unique("calm");
    let grant = [(scene.as_str(), Role::Edit)];
    let mut alice = TestClient::connect(&node.ws_base(), &scene, &token("alice", &grant))
        .await
        .unwrap();
    let mut bob = TestClient::connect(&node.ws_base(), &scene, &token("bob", &grant))
        .await
        .unwrap();
    let rss_before = rss_kib(node.pid());

    // Slowloris from 127.0.0.2: a header line every 300 ms, never finishing.
    let slow_closed = Arc::new(AtomicUsize::new(0));
    let mut slow = Vec::new();
    for _ in 0..SLOWLORIS {
        let mut stream = connect_from([127, 0, 0, 2], addr).await.unwrap();
        let closed = slow_closed.clone();
        slow.push(tokio::spawn(async move {
            let started = Instant::now();
            if stream
                .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
                .await
                .is_err()
            {
                closed.fetch_add(1, Ordering::Relaxed);
                return started.elapsed();
            }
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let mut probe = [0u8; 1];
                let closed_now = match stream.try_read(&mut probe) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                };
                if closed_now || stream.write_all(b"x-slow: 1\r\n").await.is_err() {
                    closed.fetch_add(1, Ordering::Relaxed);
                    return started.elapsed();
                }
                if started.elapsed() > Duration::from_secs(20) {
                    return started.elapsed();
                }
            }
        }));
    }
    // A flood from 127.0.0.3: silent connections, more than its address may hold.
    let mut flood = Vec::new();
    for _ in 0..FLOOD {
        if let Ok(stream) = connect_from([127, 0, 0, 3], addr).await {
            flood.push(stream);
        }
    }
    // Huge unfinished headers from 127.0.0.4.
    let mut greedy = Vec::new();
    for _ in 0..20 {
        let mut stream = connect_from([127, 0, 0, 4], addr).await.unwrap();
        greedy.push(tokio::spawn(async move {
            let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nx-junk: ").await;
            let _ = stream.write_all(&vec![b'a'; 256 * 1024]).await;
            read_until_closed(&mut stream, Duration::from_secs(5)).await
        }));
    }

    // Meanwhile Alice types and Bob sees each keystroke.
    let mut round_trips = Vec::new();
    for i in 0..200 {
        let marker = format!("<{i}>");
        let sent = Instant::now();
        alice.type_text(&marker).await.unwrap();
        bob.pump_until(Duration::from_secs(5), |c| c.text().contains(&marker))
            .await
            .unwrap();
        round_trips.push(sent.elapsed());
        if i % 20 == 0 {
            alice.pump(Duration::from_millis(1)).await.unwrap();
        }
    }
    round_trips.sort();
    let (p50, p99) = (percentile(&round_trips, 50.0), percentile(&round_trips, 99.0));

    // The flood's excess was refused at once with a 503.
    let mut refused = 0;
    let mut admitted = Vec::new();
    for mut stream in flood {
        match read_until_closed(&mut stream, Duration::from_millis(200)).await {
            Some(answer) if answer.starts_with(b"HTTP/1.1 503") => refused += 1,
            _ => admitted.push(stream),
        }
    }
    // Huge headers are refused (431) or cut, never buffered whole.
    for handle in greedy {
        let answer = handle.await.unwrap();
        assert!(
            answer
                .as_deref()
                .is_some_and(|a| a.is_empty() || a.starts_with(b"HTTP/1.1 431")),
            "a huge header got {:?}",
            answer.map(|a| String::from_utf8_lossy(&a[..a.len().min(60)]).into_owned())
        );
    }
    let rss_during = rss_kib(node.pid());
    // The slowloris connections and the flood's admitted ones are closed by the timeout.
    let mut slow_times = Vec::new();
    for handle in slow {
        slow_times.push(handle.await.unwrap());
    }
    slow_times.sort();
    let mut flood_closed = 0;
    for mut stream in admitted.drain(..) {
        if read_until_closed(&mut stream, Duration::from_secs(4))
            .await
            .is_some()
        {
            flood_closed += 1;
        }
    }
    println!(
        "under {SLOWLORIS} slowloris + {FLOOD} flood + 20 huge-header connections: editing round trip \
         p50 {p50:?}, p99 {p99:?} (n={}); flood refused with 503: {refused}; slowloris closed after \
         {:?}..{:?}; node RSS {} KiB before, {} KiB during (+{} KiB)",
        round_trips.len(),
        slow_times.first().copied().unwrap_or_default(),
        slow_times.last().copied().unwrap_or_default(),
        rss_before,
        rss_during,
        rss_during.saturating_sub(rss_before)
    );
    assert_eq!(
        refused,
        FLOOD - PER_ADDRESS,
        "beyond its cap, the address is refused"
    );
    assert_eq!(
        flood_closed, PER_ADDRESS,
        "silent connections are closed by the header timeout"
    );
    assert_eq!(
        slow_closed.load(Ordering::Relaxed),
        SLOWLORIS,
        "every slowloris connection is closed"
    );
    assert!(
        slow_times.last().copied().unwrap_or_default() < Duration::from_secs(5),
        "slowloris closed after {slow_times:?}"
    );
    assert!(
        p99 < Duration::from_millis(50),
        "editing p99 {p99:?} under attack"
    );
    assert!(
        rss_during.saturating_sub(rss_before) < 64 * 1024,
        "memory grew by {} KiB",
        rss_during - rss_before
    );
    let per_address = node
        .metric("websocket_errors_total{reason=\"max_connections_per_address\"}")
        .await
        .unwrap();
    assert_eq!(per_address as usize, FLOOD - PER_ADDRESS);
}

#[tokio::test]
async fn the_process_cap_bodies_and_idle_connections() {
    let node = NodeProcess::start(
        &Backend::Sqlite,
        &[
            ("TROUPE_HEADER_TIMEOUT", "1s"),
            ("TROUPE_MAX_CONNECTIONS", "4"),
            ("TROUPE_MAX_BODY_BYTES", "1000"),
        ],
    )
    .unwrap();
    // A body over the limit: 413 before any handler reads it.
    let mut stream = TcpStream::connect(node.addr).await.unwrap();
    stream
        .write_all(b"POST /healthz HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut stream, Duration::from_secs(3))
        .await
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // An idle keep-alive connection is closed after the header timeout.
    let mut idle = TcpStream::connect(node.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let answer = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(
        answer.as_deref().is_some_and(|a| a.starts_with(b"HTTP/1.1 200")),
        "{answer:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "idle for {:?}",
        started.elapsed()
    );

    // Four open connections (WebSockets count too): the fifth is refused.
    let scene = unique("full");
    let tok = token("a", &[(scene.as_str(), Role::Edit)]);
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TestClient::connect(&node.ws_base(), &scene, &tok).await.unwrap());
    }
    let mut fifth = TcpStream::connect(node.addr).await.unwrap();
    let answer = read_until_closed(&mut fifth, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 503"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(String::from_utf8_lossy(&answer).contains("retry-after"));
    // A WebSocket that closes gives its place back.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(TestClient::connect(&node.ws_base(), &scene, &tok).await.is_ok());
}
