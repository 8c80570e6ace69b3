//! A local cluster on one machine: nodes (the first 1, 3 or 5 of them voters, the rest added
//! as learners), a router, and optionally a Redis — each a real process, found next to the
//! running binary, stopped together.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use troupe_membership::{AdmitRequest, ClusterClient, NodeState};

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub nodes: u64,
    /// Node `i` listens on `base_port + i` (public) and `base_port + 100 + i` (internal).
    pub base_port: u16,
    pub router_port: u16,
    pub data_dir: PathBuf,
    /// Postgres URL; unset: the nodes share one embedded SQLite file.
    pub database_url: Option<String>,
    /// Start a Redis on this port for presence and notices.
    pub redis_port: Option<u16>,
    pub secret: String,
    /// Where `troupe-node` and `troupe-router` are.
    pub bin_dir: PathBuf,
}

/// The running processes; dropping it stops them all.
pub struct LocalCluster {
    pub router_url: String,
    pub nodes: BTreeMap<u64, NodeInfo>,
    pub redis_url: Option<String>,
    children: Vec<(String, Child)>,
}

#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub url: String,
    pub rpc: String,
}

/// The number of voters for a cluster of `nodes`: 1, 3 or 5.
pub fn voters_for(nodes: u64) -> u64 {
    match nodes {
        0..=2 => 1,
        3..=4 => 3,
        _ => 5,
    }
}

impl LocalCluster {
    pub async fn start(spec: &ClusterSpec) -> anyhow::Result<LocalCluster> {
        if spec.nodes == 0 {
            bail!("--nodes must be at least 1");
        }
        std::fs::create_dir_all(&spec.data_dir)
            .with_context(|| format!("creating {}", spec.data_dir.display()))?;
        let mut cluster = LocalCluster {
            router_url: String::new(),
            nodes: BTreeMap::new(),
            redis_url: None,
            children: Vec::new(),
        };
        if let Some(port) = spec.redis_port {
            let mut cmd = Command::new("redis-server");
            die_with_parent(&mut cmd);
            let child = cmd
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .context("starting redis-server (install it: apt-get install -y redis-server)")?;
            cluster.children.push(("redis".into(), child));
            cluster.redis_url = Some(format!("redis://127.0.0.1:{port}"));
        }
        let voters = voters_for(spec.nodes);
        let addr = |port: u16| format!("127.0.0.1:{port}");
        for id in 1..=spec.nodes {
            let offset = u16::try_from(id).map_err(|_| anyhow!("too many nodes"))?;
            cluster.nodes.insert(
                id,
                NodeInfo {
                    url: format!("ws://{}", addr(spec.base_port + offset)),
                    rpc: addr(spec.base_port + 100 + offset),
                },
            );
        }
        let peers = (1..=voters)
            .map(|id| format!("{id}={}", cluster.nodes[&id].rpc))
            .collect::<Vec<_>>()
            .join(",");
        for (id, node) in cluster.nodes.clone() {
            let listen = node.url.trim_start_matches("ws://").to_string();
            let mut cmd = Command::new(spec.bin_dir.join("troupe-node"));
            cmd.env("TROUPE_NODE_ID", id.to_string())
                .env("TROUPE_LISTEN", &listen)
                .env("TROUPE_RPC_LISTEN", &node.rpc)
                .env("TROUPE_PEERS", &peers)
                .env("TROUPE_DATA_DIR", &spec.data_dir)
                .env("TROUPE_JWT_SECRET", &spec.secret);
            if let Some(url) = &spec.database_url {
                cmd.env("TROUPE_DATABASE_URL", url);
            }
            if let Some(url) = &cluster.redis_url {
                cmd.env("TROUPE_REDIS_URL", url);
            }
            let child = spawn_ready(cmd, "troupe-node listening on")
                .with_context(|| format!("starting node {id}"))?;
            cluster.children.push((format!("node {id}"), child));
        }
        let client = ClusterClient::new(cluster.nodes.values().map(|n| n.rpc.clone()).collect());
        wait_until(
            Duration::from_secs(30),
            "the voters to form the cluster",
            || async {
                let view = client.view().await.ok()?;
                let active = view
                    .state
                    .nodes
                    .values()
                    .filter(|n| n.state == NodeState::Active)
                    .count();
                (active as u64 >= voters).then_some(())
            },
        )
        .await?;
        for id in voters + 1..=spec.nodes {
            let node = &cluster.nodes[&id];
            client
                .admit(&AdmitRequest {
                    id,
                    url: node.url.clone(),
                    rpc_addr: node.rpc.clone(),
                })
                .await
                .with_context(|| format!("adding node {id}"))?;
        }
        let router_addr = addr(spec.router_port);
        let mut cmd = Command::new(spec.bin_dir.join("troupe-router"));
        cmd.env("TROUPE_LISTEN", &router_addr).env(
            "TROUPE_CLUSTER",
            cluster
                .nodes
                .values()
                .map(|n| n.rpc.as_str())
                .collect::<Vec<_>>()
                .join(","),
        );
        if let Some(url) = &cluster.redis_url {
            cmd.env("TROUPE_REDIS_URL", url);
        }
        let child = spawn_ready(cmd, "troupe-router listening on").context("starting the router")?;
        cluster.children.push(("router".into(), child));
        let rpc = troupe_membership::rpc::RpcClient::new();
        wait_until(
            Duration::from_secs(10),
            "the router to hear from the cluster",
            || async {
                rpc.get::<serde_json::Value>(&router_addr, "/healthz", Duration::from_secs(1))
                    .await
                    .ok()
                    .map(drop)
            },
        )
        .await?;
        cluster.router_url = format!("http://{router_addr}");
        Ok(cluster)
    }

    /// Stops every process: SIGTERM (nodes flush and close their clients), then SIGKILL
    /// whatever is still running after a grace period.
    pub fn stop(&mut self) {
        for (_, child) in self.children.iter().rev() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for (name, child) in self.children.iter_mut().rev() {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        eprintln!("troupe-chaos: {name} did not stop in time; killing it");
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        self.children.clear();
    }

    /// The first child that exited on its own, if any.
    pub fn exited(&mut self) -> Option<String> {
        self.children
            .iter_mut()
            .find_map(|(name, child)| matches!(child.try_wait(), Ok(Some(_))).then(|| name.clone()))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Asks the kernel to stop the child (SIGTERM) if the launcher dies without stopping it
/// (killed with -9, say), so that no orphaned node keeps the ports.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only `prctl`, which is async-signal-safe, runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

/// Starts `cmd` and waits for the stdout line starting with `ready` (30 s at most).
fn spawn_ready(mut cmd: Command, ready: &str) -> anyhow::Result<Child> {
    die_with_parent(&mut cmd);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(line) if line.starts_with(ready) => Ok(child),
        other => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("no {ready:?} line (got {other:?})")
        }
    }
}

async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<()>>,
{
    let deadline = Instant::now() + limit;
    while check().await.is_none() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The folder of the running binary (where `cargo build` put its siblings).
pub fn own_bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A node's public address from its URL.
pub fn socket_of(url: &str) -> Option<SocketAddr> {
    url.trim_start_matches("ws://").parse().ok()
}
