//! Real clusters for tests: voters formed from `TROUPE_PEERS`, extra nodes added with
//! `troupectl`, a `troupe-router`, and editors that follow moves the way clients should.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
pub use troupe_chaos::editor::{resolve, FinishedEditor, FollowingEditor};
use troupe_membership::tls::Identity;
use troupe_membership::{ClusterClient, ClusterView, NodeId};
use troupe_node::config::StoreLocation;
use troupe_node::store::Store;

use crate::{bin_dir, unique, Backend, NodeProcess, SECRET};

/// A free loopback address for a node that must keep it across restarts. It is picked
/// below the kernel's ephemeral range (32768+), where processes that bind port 0 (other
/// tests' nodes, clients) never land, so a restarted node finds its port free again.
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed = u64::from(std::process::id()).wrapping_mul(7919)
        ^ NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(104_729);
    for i in 0..1000u64 {
        let port = 20_000 + ((seed.wrapping_add(i * 7_001)) % 12_000) as u16;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// The store cluster tests use: the test command's Postgres, or else one SQLite file
/// shared by the cluster's nodes.
pub fn cluster_backend() -> Backend {
    match std::env::var("TROUPE_TEST_DATABASE_URL") {
        Ok(url) => Backend::Postgres(url),
        Err(_) => Backend::Sqlite,
    }
}

/// One editor per scene, through the router at `router`, with durable acks; editor `i`
/// types `{prefix}{i}-n;` every `typing`.
pub async fn start_editors(
    router: SocketAddr,
    scenes: &[String],
    token: &str,
    prefix: &str,
    typing: Duration,
) -> Vec<FollowingEditor> {
    let mut editors = Vec::new();
    for (i, scene) in scenes.iter().enumerate() {
        let editor = FollowingEditor::start(router, scene, token, &format!("{prefix}{i}"), typing).await;
        editors.push(editor.unwrap_or_else(|e| panic!("starting an editor of {scene}: {e:#}")));
    }
    editors
}

/// Stops the editors and proves that each typed something, that every token it typed is
/// in its text exactly once, and that a fresh client at the scene's owner sees that text.
pub async fn finish_editors(
    router: SocketAddr,
    editors: Vec<FollowingEditor>,
    token: &str,
) -> Vec<FinishedEditor> {
    let mut finished = Vec::new();
    for editor in editors {
        finished.push(editor.finish().await.unwrap());
    }
    for done in &finished {
        assert!(!done.typed.is_empty(), "{} typed nothing", done.scene);
        for item in &done.typed {
            assert_eq!(
                done.text.matches(item.as_str()).count(),
                1,
                "{}: {item} missing or doubled in the editor's text",
                done.scene
            );
        }
        let (_, url, _) = resolve(router, &done.scene).await.unwrap();
        let fresh = crate::TestClient::connect(&format!("{url}/ws/scenes"), &done.scene, token)
            .await
            .unwrap();
        assert_eq!(
            fresh.text(),
            done.text,
            "{}: a fresh client sees other text",
            done.scene
        );
    }
    finished
}

pub struct TestCluster {
    pub backend: Backend,
    pub dir: PathBuf,
    pub voters: u64,
    peers: String,
    addrs: BTreeMap<u64, (SocketAddr, SocketAddr)>,
    pub nodes: BTreeMap<u64, NodeProcess>,
    env: Vec<(String, String)>,
}

impl TestCluster {
    /// Starts `voters` nodes (ids 1..=voters) and waits until all are active.
    pub async fn start(voters: u64, env: &[(&str, &str)]) -> anyhow::Result<TestCluster> {
        let dir = std::env::temp_dir().join(unique("troupe-cluster"));
        std::fs::create_dir_all(&dir)?;
        let mut cluster = TestCluster {
            backend: cluster_backend(),
            dir,
            voters,
            peers: String::new(),
            addrs: BTreeMap::new(),
            nodes: BTreeMap::new(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        for id in 1..=voters {
            cluster.addrs.insert(id, (free_addr(), free_addr()));
        }
        cluster.peers = cluster
            .addrs
            .iter()
            .map(|(id, (_, rpc))| format!("{id}={rpc}"))
            .collect::<Vec<_>>()
            .join(",");
        for id in 1..=voters {
            cluster.start_node(id)?;
        }
        cluster
            .wait_for(Duration::from_secs(30), |v| {
                v.state.active_ids().count() == voters as usize
            })
            .await?;
        Ok(cluster)
    }

    /// Starts node `id` (again, on its addresses and Raft folder). Ids beyond the voters
    /// are not in `TROUPE_PEERS`: they wait for `troupectl add`.
    pub fn start_node(&mut self, id: u64) -> anyhow::Result<&NodeProcess> {
        let (listen, rpc) = *self.addrs.entry(id).or_insert_with(|| (free_addr(), free_addr()));
        let id_text = id.to_string();
        let mut env: Vec<(&str, &str)> = vec![("TROUPE_NODE_ID", &id_text), ("TROUPE_PEERS", &self.peers)];
        env.extend(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let mut last = None;
        // A port released by a killed process may linger for a moment.
        for _ in 0..50 {
            match NodeProcess::start_at(&self.backend, &self.dir, listen, rpc, &env) {
                Ok(node) => {
                    self.nodes.insert(id, node);
                    return self.node(id);
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last.unwrap_or_else(|| anyhow!("cannot start node {id}")))
    }

    pub fn node(&self, id: u64) -> anyhow::Result<&NodeProcess> {
        self.nodes
            .get(&id)
            .ok_or_else(|| anyhow!("node {id} is not running"))
    }

    pub fn node_mut(&mut self, id: u64) -> anyhow::Result<&mut NodeProcess> {
        self.nodes
            .get_mut(&id)
            .ok_or_else(|| anyhow!("node {id} is not running"))
    }

    /// The internal addresses of the nodes that run.
    pub fn rpc_addrs(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.rpc_addr.to_string()).collect()
    }

    /// A client of the cluster with the operator's (admin) certificate.
    pub fn client(&self) -> ClusterClient {
        let admin = crate::certs::admin().unwrap_or(troupe_membership::tls::Transport::Insecure);
        ClusterClient::new(self.rpc_addrs(), &admin)
    }

    pub async fn view(&self) -> anyhow::Result<ClusterView> {
        Ok(self.client().view().await?)
    }

    /// Polls the membership (through the running nodes) until `done` holds.
    pub async fn wait_for(
        &self,
        limit: Duration,
        done: impl Fn(&ClusterView) -> bool,
    ) -> anyhow::Result<ClusterView> {
        let deadline = Instant::now() + limit;
        loop {
            match self.view().await {
                Ok(view) if done(&view) => return Ok(view),
                Ok(view) if Instant::now() > deadline => bail!("membership never got there: {view:?}"),
                Err(e) if Instant::now() > deadline => return Err(e),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Waits until every running member serves at `epoch` (or a newer one). Removed
    /// nodes no longer hear the membership and are left out.
    pub async fn wait_all_at(&self, epoch: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let members = self.view().await?.state.nodes;
        for (_, node) in self
            .nodes
            .iter()
            .filter(|(id, _)| members.contains_key(&NodeId(**id)))
        {
            loop {
                let served = node.metric("troupe_ring_epoch").await.unwrap_or(0.0) as u64;
                if served >= epoch {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("node at {} still serves epoch {served}, not {epoch}", node.addr);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// Starts node `id` and admits it through every running node but `avoid` (a node
    /// that is frozen, say). Returns the membership right after.
    pub async fn add_node_avoiding(&mut self, id: u64, avoid: u64) -> anyhow::Result<ClusterView> {
        let node = self.start_node(id)?;
        let request = troupe_membership::AdmitRequest {
            id: NodeId(id),
            url: format!("ws://{}", node.addr),
            rpc_addr: node.rpc_addr.to_string(),
        };
        let others = self
            .nodes
            .iter()
            .filter(|(n, _)| **n != avoid)
            .map(|(_, n)| n.rpc_addr.to_string())
            .collect();
        Ok(ClusterClient::new(others, &crate::certs::admin()?)
            .admit(&request)
            .await?)
    }

    /// Runs `troupectl --cluster <running nodes> args…`.
    pub fn troupectl(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.troupectl_with(&[], args)
    }

    /// [`Self::troupectl`] with extra settings.
    pub fn troupectl_with(&self, env: &[(&str, &str)], args: &[&str]) -> anyhow::Result<Output> {
        let output = Command::new(bin_dir().join("troupectl"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(crate::certs::env(&Identity::Admin("tests".into()))?)
            .envs(env.iter().copied())
            .arg("--cluster")
            .arg(self.rpc_addrs().join(","))
            .args(args)
            .output()
            .context("running troupectl")?;
        Ok(output)
    }

    /// Runs troupectl and fails unless it succeeded.
    pub fn troupectl_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.troupectl(args)?;
        if !out.status.success() {
            bail!(
                "troupectl {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Opens the cluster's store (to read what was written, as a fresh node would).
    pub async fn store(&self) -> anyhow::Result<Store> {
        let location = match &self.backend {
            Backend::Sqlite => StoreLocation::Sqlite(self.dir.join("troupe.sqlite3")),
            Backend::Postgres(url) => StoreLocation::Postgres(url.clone()),
        };
        Ok(Store::open(&location).await?)
    }

    /// The scene's text (`Y.Text` "text") rebuilt from the store: snapshots, then the log.
    pub async fn stored_text(&self, scene: &str) -> anyhow::Result<String> {
        troupe_chaos::check::stored_text(&self.store().await?, scene).await
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running `troupe-router`, killed when dropped.
pub struct RouterProcess {
    child: Child,
    pub addr: SocketAddr,
}

impl RouterProcess {
    /// Starts a router following the nodes at `cluster` (internal addresses) and waits
    /// until it has heard from the cluster.
    pub async fn start(cluster: &[String]) -> anyhow::Result<RouterProcess> {
        Self::start_with(cluster, &[]).await
    }

    /// Like [`Self::start`], with extra `TROUPE_*` settings.
    pub async fn start_with(cluster: &[String], env: &[(&str, &str)]) -> anyhow::Result<RouterProcess> {
        let router = Self::spawn_with(cluster, env)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while http_request(router.addr, "/healthz")
            .await
            .map(|r| r.0)
            .unwrap_or(0)
            != 200
        {
            if Instant::now() > deadline {
                bail!("the router never heard from the cluster");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(router)
    }

    /// Starts a router without waiting for the membership.
    pub fn spawn(cluster: &[String]) -> anyhow::Result<RouterProcess> {
        Self::spawn_with(cluster, &[])
    }

    fn spawn_with(cluster: &[String], env: &[(&str, &str)]) -> anyhow::Result<RouterProcess> {
        let mut child = Command::new(bin_dir().join("troupe-router"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("TROUPE_LISTEN", "127.0.0.1:0")
            .env("TROUPE_CLUSTER", cluster.join(","))
            .envs(crate::certs::env(&Identity::Reader("router".into()))?)
            // The nodes' secret, so that the router can check the tokens its REST answers need.
            .env("TROUPE_JWT_SECRET", crate::SECRET)
            .env(
                "TROUPE_LOG",
                std::env::var("TROUPE_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting troupe-router")?;
        let line =
            crate::ready_line(&mut child, Duration::from_secs(20)).context("troupe-router did not start")?;
        let addr = line
            .strip_prefix("troupe-router listening on ")
            .ok_or_else(|| anyhow!("unexpected first line {line:?}"))?
            .trim()
            .parse()?;
        Ok(RouterProcess { child, addr })
    }

    /// `GET /v1/route/{scene}` as `(node, url, epoch)`.
    pub async fn route(&self, scene: &str) -> anyhow::Result<(u64, String, u64)> {
        resolve(self.addr, scene).await
    }

    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status();
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        self.signal("CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a signal (STOP, CONT, …) to a node.
pub fn signal(node: &NodeProcess, signal: &str) {
    let _ = Command::new("kill")
        .args([format!("-{signal}"), node.pid().to_string()])
        .status();
}

/// A bare HTTP/1.1 GET: `(status, headers (lowercase names), body)`.
pub async fn http_request(
    addr: SocketAddr,
    path: &str,
) -> anyhow::Result<(u16, Vec<(String, String)>, String)> {
    http_request_with(addr, path, &[]).await
}

/// [`http_request`] with extra request headers (e.g. `Authorization`).
pub async fn http_request_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, Vec<(String, String)>, String)> {
    let raw = tokio::time::timeout(Duration::from_secs(10), crate::http_get_with(addr, path, headers))
        .await
        .map_err(|_| anyhow!("GET {path} timed out"))??;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad response {raw:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers, body.to_string()))
}

/// The token every cluster test editor uses.
pub fn editor_token(scenes: &[&str]) -> String {
    let grants: Vec<(&str, troupe_proto::token::Role)> = scenes
        .iter()
        .map(|s| (*s, troupe_proto::token::Role::Edit))
        .collect();
    crate::token_with(
        "editor",
        &grants,
        troupe_proto::clock::now_secs() + 3600,
        "troupe",
        SECRET,
    )
}
