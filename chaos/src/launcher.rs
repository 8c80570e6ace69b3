//! A local cluster on one machine: nodes (the first 1, 3 or 5 of them voters, the rest added
//! as learners), a router, and optionally a Redis — each a real process, found next to the
//! running binary, stopped together.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use troupe_membership::tls::issue::{CertDir, DEFAULT_DAYS};
use troupe_membership::tls::{Identity, TlsArgs, Transport};
use troupe_membership::{AdmitRequest, ClusterClient, NodeId, NodeState};

use crate::logs::Logs;
use crate::netns::Network;

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
    /// Start a throwaway Postgres (with `tests/pg.sh`) for the store.
    pub postgres: bool,
    pub secret: String,
    /// Where `troupe-node` and `troupe-router` are.
    pub bin_dir: PathBuf,
    /// Run each node in a network namespace of its own, so that it can be cut off
    /// ([`LocalCluster::cut_off`]). Needs root; see [`crate::netns`].
    pub isolated: bool,
    /// Let the router mint demo tokens (for the demo editor).
    pub demo: bool,
    /// Have the router serve the demo editor from this folder instead of the one built
    /// into it.
    pub web_dir: Option<PathBuf>,
    /// Where the processes' logs go.
    pub logs: Logs,
}

/// The running processes; dropping it stops them all.
pub struct LocalCluster {
    pub router_url: String,
    pub nodes: BTreeMap<u64, NodeInfo>,
    pub redis_url: Option<String>,
    /// Redis and the router (started first, stopped last / first).
    children: Vec<(String, Child)>,
    /// Each node's process while it runs.
    procs: BTreeMap<u64, Child>,
    spec: ClusterSpec,
    peers: String,
    redis_port: Option<u16>,
    /// The state folder of the Postgres this cluster started, if any.
    postgres_state: Option<PathBuf>,
    /// The nodes' private network, when they are isolated.
    network: Option<Network>,
    /// Nodes cut off the network now.
    cut: std::collections::BTreeSet<u64>,
    /// The cluster's CA and certificates (`<data dir>/certs`), kept across runs.
    certs: CertDir,
    /// The operator's certificate, for admitting and draining nodes.
    admin: Transport,
    /// Its files, for `troupectl`.
    pub admin_files: TlsArgs,
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
        let certs = CertDir::open_or_init(spec.data_dir.join("certs"), "troupe-local")?;
        let admin_files = certs.issue(&Identity::Admin("local".into()), &[], DEFAULT_DAYS)?;
        let admin = Transport::load(&admin_files)?;
        let mut cluster = LocalCluster {
            router_url: String::new(),
            nodes: BTreeMap::new(),
            redis_url: None,
            children: Vec::new(),
            procs: BTreeMap::new(),
            spec: spec.clone(),
            peers: String::new(),
            redis_port: spec.redis_port,
            postgres_state: None,
            network: None,
            cut: Default::default(),
            certs,
            admin,
            admin_files,
        };
        if spec.isolated {
            if spec.database_url.is_some() && !spec.postgres {
                bail!("isolated nodes need the embedded store or a Postgres of the run's own");
            }
            cluster.network = Some(Network::create()?);
        }
        if spec.postgres {
            let state = spec.data_dir.join("postgres");
            let url = pg_sh(&state, "start").context("starting Postgres (tests/pg.sh)")?;
            cluster.postgres_state = Some(state);
            cluster.spec.database_url = Some(url.trim().to_string());
        }
        if let Some(port) = spec.redis_port {
            cluster.start_redis(port)?;
        }
        let voters = voters_for(spec.nodes);
        let addr = |port: u16| format!("127.0.0.1:{port}");
        for id in 1..=spec.nodes {
            let info = cluster.node_info(id)?;
            cluster.nodes.insert(id, info);
        }
        let peers = (1..=voters)
            .map(|id| format!("{id}={}", cluster.nodes[&id].rpc))
            .collect::<Vec<_>>()
            .join(",");
        cluster.peers = peers;
        for id in 1..=spec.nodes {
            cluster.start_node(id).await?;
        }
        let client = cluster.client();
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
                    id: NodeId(id),
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
        let reader = cluster
            .certs
            .issue(&Identity::Reader("router".into()), &[], DEFAULT_DAYS)?;
        cmd.envs(reader.env());
        // The router checks tokens itself for the content API and presence.
        cmd.env("TROUPE_JWT_SECRET", &spec.secret);
        if spec.demo {
            cmd.env("TROUPE_DEV_TOKENS", "1");
        }
        if let Some(dir) = &spec.web_dir {
            cmd.env("TROUPE_WEB_DIR", dir);
        }
        let child = spawn_ready(cmd, "troupe-router listening on", "router", &spec.logs)
            .await
            .context("starting the router")?;
        cluster.children.push(("router".into(), child));
        let rpc = troupe_membership::rpc::RpcClient::plain();
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

    fn start_redis(&mut self, port: u16) -> anyhow::Result<()> {
        let mut cmd = Command::new("redis-server");
        die_with_parent(&mut cmd);
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]);
        if let Some(socket) = self.redis_socket() {
            cmd.arg("--unixsocket")
                .arg(socket)
                .args(["--unixsocketperm", "700"]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting redis-server (install it: apt-get install -y redis-server)")?;
        self.children.insert(0, ("redis".into(), child));
        self.redis_url = Some(format!("redis://127.0.0.1:{port}"));
        Ok(())
    }

    /// Node `id`'s addresses: on loopback, or on its namespace's link when isolated.
    fn node_info(&self, id: u64) -> anyhow::Result<NodeInfo> {
        let offset = u16::try_from(id).map_err(|_| anyhow!("node id {id} too large"))?;
        let host = match &self.network {
            Some(net) => net.addr(id).to_string(),
            None => "127.0.0.1".to_string(),
        };
        Ok(NodeInfo {
            url: format!("ws://{host}:{}", self.spec.base_port + offset),
            rpc: format!("{host}:{}", self.spec.base_port + 100 + offset),
        })
    }

    /// Starts (or starts again) node `id` on its addresses and Raft folder.
    pub async fn start_node(&mut self, id: u64) -> anyhow::Result<()> {
        if !self.nodes.contains_key(&id) {
            let info = self.node_info(id)?;
            self.nodes.insert(id, info);
        }
        if let Some(net) = self.network.as_mut() {
            net.add_node(id)?;
        }
        let node = &self.nodes[&id];
        let host = node
            .rpc
            .rsplit_once(':')
            .map(|(host, _)| host.to_string())
            .unwrap_or_default();
        let tls = self
            .certs
            .issue(&Identity::Node(NodeId(id)), &[host], DEFAULT_DAYS)?;
        let spec = &self.spec;
        let mut env: Vec<(&str, String)> = vec![
            ("TROUPE_NODE_ID", id.to_string()),
            ("TROUPE_LISTEN", node.url.trim_start_matches("ws://").to_string()),
            ("TROUPE_RPC_LISTEN", node.rpc.clone()),
            ("TROUPE_PEERS", self.peers.clone()),
            ("TROUPE_DATA_DIR", spec.data_dir.display().to_string()),
            ("TROUPE_JWT_SECRET", spec.secret.clone()),
            // Isolated nodes listen on their namespace's address, not loopback: the pages
            // that reach them are this machine's all the same.
            (
                "TROUPE_ALLOWED_ORIGINS",
                troupe_node::config::LOCAL_ORIGINS.join(","),
            ),
        ];
        if spec.demo {
            // The router's demo tokens (`/v1/dev/token`) open scenes on these nodes.
            env.push(("TROUPE_ACCEPT_DEV_TOKENS", "1".into()));
        } else {
            // Chaos runs open scenes by the hundred with one token: no per-user quotas.
            env.push(("TROUPE_MAX_NEW_SCENES_PER_MINUTE", "0".into()));
            env.push(("TROUPE_MAX_BYTES_PER_HOUR", "0".into()));
        }
        env.extend(tls.env());
        // An isolated node reaches Postgres and Redis over their Unix sockets.
        let isolated = self.network.is_some();
        if let Some(url) = &spec.database_url {
            let url = if isolated {
                over_unix_socket(url)
            } else {
                url.clone()
            };
            env.push(("TROUPE_DATABASE_URL", url));
        }
        if let Some(url) = &self.redis_url {
            let url = match (isolated, self.redis_socket()) {
                (true, Some(socket)) => format!("redis+unix://{}", socket.display()),
                _ => url.clone(),
            };
            env.push(("TROUPE_REDIS_URL", url));
        }
        let program = spec.bin_dir.join("troupe-node");
        // A port freed by a killed node may linger for a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        let child = loop {
            let mut cmd = match &self.network {
                Some(net) => net.command(id, &program),
                None => Command::new(&program),
            };
            cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
            match spawn_ready(cmd, "troupe-node listening on", &format!("node {id}"), &spec.logs).await {
                Ok(child) => break child,
                Err(e) if Instant::now() > deadline => return Err(e.context(format!("starting node {id}"))),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        self.procs.insert(id, child);
        Ok(())
    }

    /// Where Redis also listens, for isolated nodes.
    fn redis_socket(&self) -> Option<PathBuf> {
        (self.spec.isolated && self.redis_port.is_some()).then(|| self.spec.data_dir.join("redis.sock"))
    }

    /// Cuts node `id` off the network (its store stays reachable). False when the nodes
    /// are not isolated.
    pub fn cut_off(&mut self, id: u64) -> anyhow::Result<bool> {
        let Some(net) = &self.network else {
            return Ok(false);
        };
        net.cut(id)?;
        self.cut.insert(id);
        Ok(true)
    }

    /// Joins node `id` to the network again.
    pub fn rejoin(&mut self, id: u64) -> anyhow::Result<()> {
        if let Some(net) = &self.network {
            net.heal(id)?;
        }
        self.cut.remove(&id);
        Ok(())
    }

    /// Whether some node is cut off the network now.
    pub fn any_cut_off(&self) -> bool {
        !self.cut.is_empty()
    }

    /// A client of the cluster through every node's internal address.
    pub fn client(&self) -> ClusterClient {
        ClusterClient::new(self.nodes.values().map(|n| n.rpc.clone()).collect(), &self.admin)
    }

    /// Adds a node with the next id: started, then admitted (learner, then active).
    pub async fn add_node(&mut self) -> anyhow::Result<u64> {
        let id = self.nodes.keys().max().copied().unwrap_or(0) + 1;
        self.start_node(id).await?;
        let node = self.nodes[&id].clone();
        self.client()
            .admit(&AdmitRequest {
                id: NodeId(id),
                url: node.url,
                rpc_addr: node.rpc,
            })
            .await
            .with_context(|| format!("adding node {id}"))?;
        Ok(id)
    }

    /// `kill -9` of a node.
    pub fn kill_node(&mut self, id: u64) -> bool {
        match self.procs.remove(&id) {
            Some(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
                true
            }
            None => false,
        }
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`) to a node.
    pub fn signal_node(&self, id: u64, signal: &str) -> bool {
        self.procs.get(&id).is_some_and(|child| {
            Command::new("kill")
                .args([format!("-{signal}"), child.id().to_string()])
                .status()
                .is_ok_and(|s| s.success())
        })
    }

    /// Where the processes' logs go.
    pub fn logs(&self) -> &Logs {
        &self.spec.logs
    }

    /// Stops a removed node for good: it is no longer part of this cluster.
    pub fn forget_node(&mut self, id: u64) {
        self.kill_node(id);
        self.nodes.remove(&id);
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.procs.contains_key(&id)
    }

    /// Stops Redis and starts it again on the same port (empty, as Redis without
    /// persistence comes back).
    pub async fn restart_redis(&mut self) -> anyhow::Result<bool> {
        let Some(port) = self.redis_port else {
            return Ok(false);
        };
        if let Some(i) = self.children.iter().position(|(n, _)| n == "redis") {
            let (_, mut child) = self.children.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.start_redis(port)?;
        Ok(true)
    }

    /// The store URL the nodes use (Postgres), if any.
    pub fn database_url(&self) -> Option<String> {
        self.spec.database_url.clone()
    }

    /// The `postmaster.pid` file of the cluster's own Postgres (it names the running
    /// postmaster, whose pid changes when Postgres restarts), if it started one.
    pub fn postgres_pid_file(&self) -> Option<PathBuf> {
        let state = self.postgres_state.as_ref()?;
        let vars = std::fs::read_to_string(state.join("state")).ok()?;
        let data = vars.lines().find_map(|l| l.strip_prefix("data="))?;
        Some(PathBuf::from(data).join("db").join("postmaster.pid"))
    }

    /// Stops the cluster's own Postgres (its data and port kept). False when the cluster
    /// did not start Postgres.
    pub async fn pause_postgres(&self) -> anyhow::Result<bool> {
        self.pg_command("pause").await
    }

    /// Starts the paused Postgres again on the same port with the same data.
    pub async fn resume_postgres(&self) -> anyhow::Result<bool> {
        self.pg_command("restart").await
    }

    async fn pg_command(&self, command: &'static str) -> anyhow::Result<bool> {
        let Some(state) = self.postgres_state.clone() else {
            return Ok(false);
        };
        // pg_ctl takes a moment: off the thread that runs the editors.
        tokio::task::spawn_blocking(move || pg_sh(&state, command)).await??;
        Ok(true)
    }

    /// Stops every process: SIGTERM (nodes flush and close their clients), then SIGKILL
    /// whatever is still running after a grace period.
    pub fn stop(&mut self) {
        self.spec.logs.stopping();
        for id in std::mem::take(&mut self.cut) {
            let _ = self.rejoin(id);
        }
        for child in self.procs.values() {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        let nodes: Vec<(String, Child)> = std::mem::take(&mut self.procs)
            .into_iter()
            .map(|(id, c)| (format!("node {id}"), c))
            .collect();
        let router_and_redis = std::mem::take(&mut self.children);
        // The router first, then the nodes, Redis last.
        let mut order: Vec<(String, Child)> = router_and_redis.into_iter().rev().collect();
        let redis_at = order.iter().position(|(n, _)| n == "redis");
        let redis = redis_at.map(|i| order.remove(i));
        order.extend(nodes);
        order.extend(redis);
        self.children = order;
        for (_, child) in self.children.iter() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for (name, child) in self.children.iter_mut() {
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
        if let Some(state) = self.postgres_state.take() {
            let _ = pg_sh(&state, "stop");
        }
        self.network = None;
    }

    /// The first child that exited on its own, if any.
    pub fn exited(&mut self) -> Option<String> {
        let node = self
            .procs
            .iter_mut()
            .find_map(|(id, child)| matches!(child.try_wait(), Ok(Some(_))).then(|| format!("node {id}")));
        node.or_else(|| {
            self.children
                .iter_mut()
                .find_map(|(name, child)| matches!(child.try_wait(), Ok(Some(_))).then(|| name.clone()))
        })
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The same Postgres URL through the server's Unix socket (`tests/pg.sh` puts it in /tmp).
fn over_unix_socket(url: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}host=/tmp")
}

/// Runs the project's `tests/pg.sh` (a throwaway Postgres) with its state in `state`.
fn pg_sh(state: &Path, command: &str) -> anyhow::Result<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/pg.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(command)
        .env("PG_STATE_DIR", state)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} {command} failed ({})", script.display(), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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

/// Starts `cmd` and waits (without blocking the runtime, 30 s at most) for its stdout line
/// starting with `ready`; its stderr goes to `logs` as `name`'s. The fork happens on the
/// calling thread, which must outlive the child: `PR_SET_PDEATHSIG` fires when the
/// *thread* that forked it exits.
async fn spawn_ready(mut cmd: Command, ready: &str, name: &str, logs: &Logs) -> anyhow::Result<Child> {
    die_with_parent(&mut cmd);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    if let Some(stderr) = child.stderr.take() {
        logs.forward(name, stderr);
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    match tokio::time::timeout(Duration::from_secs(30), rx).await {
        Ok(Ok(line)) if line.starts_with(ready) => Ok(child),
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
