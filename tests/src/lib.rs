//! Shared helpers for the cross-process tests: start real `troupe-node` processes, mint
//! tokens, and speak the y-websocket protocol from a small test client.
//!
//! Binaries come from `TROUPE_BIN_DIR` (set by `tests/run.sh`), else the workspace's
//! `target/debug`. Postgres comes from `TROUPE_TEST_DATABASE_URL`, which the test command
//! starts; without it the Postgres variants fail unless `TROUPE_TEST_SKIP_POSTGRES=1`.

pub mod certs;
pub mod cluster;
pub mod p1;
pub mod redis;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use troupe_proto::clock::now_secs;
use troupe_proto::message::{self as protocol, Message as Wire};
use troupe_proto::token::{Claims, Role, Signer};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

pub const SECRET: &str = "test-secret-0123456789abcdef0123456789";

/// Where the project's binaries are.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TROUPE_BIN_DIR") {
        return dir.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug")
}

/// The store a test node uses.
#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    Postgres(String),
}

impl Backend {
    /// Both backends: the embedded default and the test command's Postgres.
    pub fn all() -> Vec<Backend> {
        let mut all = vec![Backend::Sqlite];
        match std::env::var("TROUPE_TEST_DATABASE_URL") {
            Ok(url) => all.push(Backend::Postgres(url)),
            Err(_) if std::env::var_os("TROUPE_TEST_SKIP_POSTGRES").is_some() => {}
            Err(_) => panic!(
                "TROUPE_TEST_DATABASE_URL is not set: run tests/run.sh (it starts Postgres), \
                 or set TROUPE_TEST_SKIP_POSTGRES=1 to test the embedded store only"
            ),
        }
        all
    }
}

/// A unique name per test run, so tests sharing one Postgres never meet.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos:x}-{n}", std::process::id())
}

/// A running `troupe-node`, killed when dropped.
pub struct NodeProcess {
    child: Child,
    pub addr: SocketAddr,
    /// The internal (Raft and admin) address.
    pub rpc_addr: SocketAddr,
    pub data_dir: PathBuf,
    env: Vec<(String, String)>,
    backend: Backend,
    /// Set when a restart took over the data folder.
    handed_over: bool,
}

impl NodeProcess {
    /// Starts a node on a fresh data folder with extra `TROUPE_*` settings.
    pub fn start(backend: &Backend, env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let data_dir = std::env::temp_dir().join(unique("troupe-test-data"));
        std::fs::create_dir_all(&data_dir)?;
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Self::spawn(
            backend.clone(),
            data_dir,
            env,
            "127.0.0.1:0".parse()?,
            "127.0.0.1:0".parse()?,
        )
    }

    /// Starts a node on the given data folder and addresses (a cluster shares one folder:
    /// each node keeps its Raft state in `raft-<id>/`, and SQLite is one shared file).
    pub fn start_at(
        backend: &Backend,
        data_dir: &Path,
        listen: SocketAddr,
        rpc: SocketAddr,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut node = Self::spawn(backend.clone(), data_dir.to_path_buf(), env, listen, rpc)?;
        // The folder belongs to the cluster, not to this node.
        node.handed_over = true;
        Ok(node)
    }

    fn spawn(
        backend: Backend,
        data_dir: PathBuf,
        env: Vec<(String, String)>,
        listen: SocketAddr,
        rpc: SocketAddr,
    ) -> anyhow::Result<Self> {
        let bin = bin_dir().join("troupe-node");
        let mut cmd = Command::new(&bin);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("TROUPE_LISTEN", listen.to_string())
            .env("TROUPE_RPC_LISTEN", rpc.to_string())
            .env("TROUPE_DATA_DIR", &data_dir)
            .env("TROUPE_JWT_SECRET", SECRET)
            .env(
                "TROUPE_LOG",
                std::env::var("TROUPE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Backend::Postgres(url) = &backend {
            cmd.env("TROUPE_DATABASE_URL", url);
        }
        // Tests share one Postgres and a few user names, and open scenes by the hundred
        // within a minute: the per-user quotas are off unless a test sets them.
        for quota in ["TROUPE_MAX_NEW_SCENES_PER_MINUTE", "TROUPE_MAX_BYTES_PER_HOUR"] {
            if !env.iter().any(|(k, _)| k == quota) {
                cmd.env(quota, "0");
            }
        }
        // The certificate of the node id it is given (1 by default), unless the test
        // chooses the internal port's settings itself.
        if !env.iter().any(|(k, _)| k.starts_with("TROUPE_INTERNAL_")) {
            let id = env
                .iter()
                .find(|(k, _)| k == "TROUPE_NODE_ID")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(1);
            cmd.envs(certs::node_env(id)?);
        }
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let line = ready_line(&mut child, Duration::from_secs(30)).context("troupe-node did not start")?;
        let (addr, rpc_addr) = line
            .strip_prefix("troupe-node listening on ")
            .and_then(|rest| rest.split_once(" rpc "))
            .ok_or_else(|| anyhow!("unexpected first line {line:?}"))?;
        Ok(Self {
            child,
            addr: addr.parse()?,
            rpc_addr: rpc_addr.trim().parse()?,
            data_dir,
            env,
            backend,
            handed_over: false,
        })
    }

    pub fn ws_base(&self) -> String {
        format!("ws://{}/ws/scenes", self.addr)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `kill -9`: no flush, no goodbye.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait: the graceful path.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.kill9();
                bail!("node did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the node again on the same data folder, store and port.
    pub fn restart(mut self) -> anyhow::Result<Self> {
        self.kill9();
        let owned_dir = !self.handed_over;
        self.handed_over = true;
        let (listen, rpc) = (self.addr, self.rpc_addr);
        let (backend, data_dir, env) = (
            self.backend.clone(),
            self.data_dir.clone(),
            std::mem::take(&mut self.env),
        );
        // The old socket may linger briefly; retry the bind a few times.
        let mut last = None;
        for _ in 0..50 {
            match Self::spawn(backend.clone(), data_dir.clone(), env.clone(), listen, rpc) {
                Ok(mut node) => {
                    node.handed_over = !owned_dir;
                    return Ok(node);
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last.unwrap_or_else(|| anyhow!("restart failed")))
    }

    /// The node's `/metrics` value for a series (e.g. `websocket_errors_total{reason="text_frame"}`).
    pub async fn metric(&self, series: &str) -> anyhow::Result<f64> {
        let text = http_get(self.addr, "/metrics").await?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap_or(0.0))
            .unwrap_or(0.0))
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
        // A restarted node takes the folder over.
        if !self.handed_over {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

/// The first stdout line of a starting process (its "listening on" line); the rest of its
/// output is drained so that it never blocks. Kills the process if none comes in time.
pub fn ready_line(child: &mut Child, limit: Duration) -> anyhow::Result<String> {
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    match rx.recv_timeout(limit) {
        Ok(line) => Ok(line),
        Err(_) => {
            let _ = child.kill();
            let status = child.wait()?;
            bail!("no ready line within {limit:?} ({status})");
        }
    }
}

/// A bare HTTP/1.1 GET, enough for `/healthz` and `/metrics`.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    http_get_with(addr, path, &[]).await
}

/// [`http_get`] with extra request headers.
pub async fn http_get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await?;
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut out = String::new();
    stream.read_to_string(&mut out).await?;
    Ok(out)
}

/// `method path` with a JSON body on `addr`: the status and the body of the answer.
pub async fn http_send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body.as_bytes()).await?;
        let mut out = String::new();
        stream.read_to_string(&mut out).await?;
        Ok::<_, anyhow::Error>(out)
    };
    let raw = tokio::time::timeout(std::time::Duration::from_secs(20), exchange)
        .await
        .map_err(|_| anyhow::anyhow!("{method} {path} timed out"))??;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// A signed token for `user` with the given scene grants.
pub fn token(user: &str, scenes: &[(&str, Role)]) -> String {
    token_with(user, scenes, now_secs() + 3600, "troupe", SECRET)
}

pub fn token_with(user: &str, scenes: &[(&str, Role)], exp: u64, aud: &str, secret: &str) -> String {
    let claims = Claims {
        sub: user.into(),
        exp,
        aud: aud.into(),
        name: Some(user.into()),
        scenes: scenes
            .iter()
            .map(|(s, r)| (s.to_string(), *r))
            .collect::<BTreeMap<_, _>>(),
        iat: Some(now_secs()),
        presence: false,
    };
    Signer::from_secret(secret.as_bytes())
        .sign(&claims)
        .unwrap_or_default()
}

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a connection ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub code: u16,
    pub reason: String,
}

/// A test client: a real WebSocket, a yrs document, the y-websocket handshake.
pub struct TestClient {
    pub socket: Socket,
    pub doc: Doc,
    pub acked: u64,
    /// Update-bearing messages sent (sync step 2 and updates): what acks count.
    pub sent_updates: u64,
    /// Text typed, with the number of the message that carried it.
    pub typed: Vec<(u64, String)>,
    pub synced: bool,
    pub awareness_seen: Vec<Vec<u8>>,
    /// The reasons of the "permission denied" messages received.
    pub denied: Vec<String>,
}

impl TestClient {
    /// Opens a socket to `{base}/{scene}?{query}` without the sync handshake.
    pub async fn open(base: &str, scene: &str, query: &str) -> anyhow::Result<Self> {
        let url = format!("{base}/{scene}?{query}");
        let (socket, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(Self {
            socket,
            doc: Doc::new(),
            acked: 0,
            sent_updates: 0,
            typed: Vec::new(),
            synced: false,
            awareness_seen: Vec::new(),
            denied: Vec::new(),
        })
    }

    /// Opens a socket to `{base}/{scene}?{query}` offering `protocols` (as browsers offer
    /// subprotocols), without the sync handshake. Returns the subprotocol the node selected.
    pub async fn open_offering(
        base: &str,
        scene: &str,
        query: &str,
        protocols: &str,
    ) -> anyhow::Result<(Self, Option<String>)> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("{base}/{scene}?{query}").into_client_request()?;
        request
            .headers_mut()
            .insert("sec-websocket-protocol", protocols.parse()?);
        let (socket, response) = tokio_tungstenite::connect_async(request).await?;
        let selected = response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok((
            Self {
                socket,
                doc: Doc::new(),
                acked: 0,
                sent_updates: 0,
                typed: Vec::new(),
                synced: false,
                awareness_seen: Vec::new(),
                denied: Vec::new(),
            },
            selected,
        ))
    }

    /// Connects with a token (and acks) and completes the sync handshake.
    pub async fn connect(base: &str, scene: &str, token: &str) -> anyhow::Result<Self> {
        let mut client = Self::open(base, scene, &format!("token={token}&acks=1")).await?;
        let sv = client.doc.transact().state_vector().encode_v1();
        client.send_raw(protocol::encode_sync_step1(&sv)).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !client.synced {
            if Instant::now() > deadline {
                bail!("not synced within 10 s");
            }
            client.pump(Duration::from_millis(200)).await?;
        }
        Ok(client)
    }

    pub async fn send_raw(&mut self, frame: impl Into<bytes::Bytes>) -> anyhow::Result<()> {
        self.socket.send(Message::Binary(frame.into())).await?;
        Ok(())
    }

    /// Inserts text at the end of the `text` field and sends the update.
    pub async fn type_text(&mut self, s: &str) -> anyhow::Result<()> {
        let update = {
            let text = self.doc.get_or_insert_text("text");
            let mut txn = self.doc.transact_mut();
            let len = text.len(&txn);
            text.insert(&mut txn, len, s);
            txn.encode_update_v1()
        };
        self.sent_updates += 1;
        self.typed.push((self.sent_updates, s.to_string()));
        self.send_raw(protocol::encode_update(&update)).await
    }

    /// The typed texts the server has acknowledged as committed.
    pub fn acked_texts(&self) -> Vec<String> {
        self.typed
            .iter()
            .filter(|(n, _)| *n <= self.acked)
            .map(|(_, s)| s.clone())
            .collect()
    }

    pub fn text(&self) -> String {
        let text = self.doc.get_or_insert_text("text");
        let txn = self.doc.transact();
        text.get_string(&txn)
    }

    /// Reads and handles messages for up to `wait`. Returns `Err` with a [`Closed`]
    /// when the server closed the connection.
    pub async fn pump(&mut self, wait: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + wait;
        while self.pump_one(deadline).await? {}
        Ok(())
    }

    /// Reads and handles one message, waiting until `deadline` at most. Returns whether
    /// one came; `Err` with a [`Closed`] when the server closed the connection.
    async fn pump_one(&mut self, deadline: tokio::time::Instant) -> anyhow::Result<bool> {
        {
            let next = match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Err(_) => return Ok(false),
                Ok(next) => next,
            };
            match next {
                None => bail!(Closed {
                    code: 1006,
                    reason: "eof".into()
                }),
                Some(Err(e)) => bail!(Closed {
                    code: 1006,
                    reason: e.to_string()
                }),
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame.map_or((1005, String::new()), |f| {
                        (u16::from(f.code), f.reason.to_string())
                    });
                    bail!(Closed { code, reason })
                }
                Some(Ok(Message::Binary(frame))) => self.handle(&frame).await?,
                Some(Ok(_)) => {}
            }
        }
        Ok(true)
    }

    async fn handle(&mut self, frame: &[u8]) -> anyhow::Result<()> {
        let msg = Wire::decode(frame)?;
        match msg {
            Wire::SyncStep1(sv) => {
                let sv = StateVector::decode_v1(sv)?;
                let diff = self.doc.transact().encode_diff_v1(&sv);
                self.sent_updates += 1;
                self.send_raw(protocol::encode_sync_step2(&diff)).await?;
            }
            Wire::SyncStep2(update) | Wire::Update(update) => {
                self.doc.transact_mut().apply_update(Update::decode_v1(update)?)?;
                if matches!(msg, Wire::SyncStep2(_)) {
                    self.synced = true;
                }
            }
            Wire::Awareness(payload) => self.awareness_seen.push(payload.to_vec()),
            Wire::Ack(n) => self.acked = n,
            Wire::Auth(Some(reason)) => self.denied.push(reason.to_string()),
            Wire::Auth(None) | Wire::QueryAwareness => {}
        }
        Ok(())
    }

    /// Pumps until `done(self)` holds, or fails after `limit`.
    pub async fn pump_until(&mut self, limit: Duration, done: impl Fn(&Self) -> bool) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        while !done(self) {
            if tokio::time::Instant::now() > deadline {
                bail!("condition not met within {limit:?}");
            }
            // Checked after every message, so that a test measures the message, not a poll.
            self.pump_one(deadline).await?;
        }
        Ok(())
    }

    /// Waits until every update sent so far is acknowledged as committed.
    pub async fn wait_acked(&mut self) -> anyhow::Result<()> {
        let sent = self.sent_updates;
        self.pump_until(Duration::from_secs(10), |c| c.acked >= sent)
            .await
    }

    /// Waits for the server to close the socket and returns its close code.
    pub async fn expect_close(&mut self) -> anyhow::Result<Closed> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if Instant::now() > deadline {
                bail!("server did not close the connection");
            }
            if let Err(e) = self.pump(Duration::from_millis(200)).await {
                return e.downcast::<Closed>().map_err(|e| anyhow!("not a close: {e}"));
            }
        }
    }
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "closed with {} {:?}", self.code, self.reason)
    }
}

impl std::error::Error for Closed {}
