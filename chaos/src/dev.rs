//! `troupe dev` (and its alias `troupe-chaos up`): a local cluster for development, in the
//! foreground.
//!
//! Run from a source checkout, it first builds what is missing, one printed line per step:
//! the demo editor (`npm ci && npm run build` in `web/`, when `npm` is there) and then the
//! binaries next to itself (`cargo build --bins` with its own profile and target folder),
//! so that `cargo run --release -p troupe-chaos --bin troupe -- dev` is all a fresh
//! checkout needs. In a checkout the router serves `web/dist` as it is now (a router built
//! before the demo has none built in); elsewhere it serves the page built into it.
//!
//! Then it starts the nodes and a router, prints their addresses and a token, and shows the
//! processes' logs (`node 2 | …`) until Ctrl-C or SIGTERM stops everything.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{mint_token, Access};
use crate::launcher::{own_bin_dir, voters_for, ClusterSpec, LocalCluster};
use crate::logs::Logs;

/// The binaries a cluster runs, next to the launcher.
const SIBLINGS: [&str; 2] = ["troupe-node", "troupe-router"];

#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Number of nodes (the first 1, 3 or 5 are Raft voters, the rest learners).
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Node i listens on BASE+i (WebSocket) and BASE+100+i (internal).
    #[arg(long, default_value_t = 4000)]
    pub base_port: u16,
    /// The router's port.
    #[arg(long, default_value_t = 8080)]
    pub router_port: u16,
    /// Folder for the nodes' Raft state and the shared embedded store.
    #[arg(long, default_value = "./troupe-local")]
    pub data_dir: PathBuf,
    /// Use this Postgres instead of the embedded store.
    #[arg(long, env = "TROUPE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Start a Redis (needs `redis-server`) for presence and failover notices.
    #[arg(long)]
    pub redis: bool,
    #[arg(long, default_value_t = 6379)]
    pub redis_port: u16,
    /// Shared token secret (default: a random one, printed with a dev token).
    #[arg(long, env = "TROUPE_JWT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Build nothing: run the binaries next to this one as they are (for scripts and tests).
    #[arg(long)]
    pub no_build: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("{name} is not in {dir}: build it with `cargo build --release --bins`")]
    Missing { name: &'static str, dir: PathBuf },
    #[error("cannot run `{command}`: {source}")]
    Spawn { command: String, source: std::io::Error },
    #[error("`{command}` failed ({status})")]
    Failed { command: String, status: ExitStatus },
    #[error("{0:#}")]
    Cluster(anyhow::Error),
    #[error("cannot mint a token: {0}")]
    Token(#[from] jsonwebtoken::errors::Error),
    #[error("the {0} exited; the cluster was stopped")]
    Exited(String),
}

/// The checkout this binary was built from, if it is still there.
fn source_tree() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    (root.join("Cargo.toml").is_file() && root.join("web/package.json").is_file()).then(|| root.to_path_buf())
}

/// Runs one build step, its output passed through; `me` names the launcher in the line it
/// prints first.
fn step(me: &str, what: &str, dir: &Path, program: &str, args: &[&str]) -> Result<(), DevError> {
    let name = Path::new(program)
        .file_name()
        .map_or(program.into(), |n| n.to_string_lossy());
    let command = format!("{name} {}", args.join(" "));
    eprintln!("{me}: {what} ({command})…");
    let status = Command::new(program)
        .args(args)
        .current_dir(dir)
        .status()
        .map_err(|source| DevError::Spawn {
            command: command.clone(),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(DevError::Failed { command, status })
    }
}

/// Builds what a checkout lacks (unless `build` is off): the demo if `npm` is there, then
/// the sibling binaries. Returns the folder the router should serve the demo from, if any.
fn prepare(me: &str, bin_dir: &Path, build: bool) -> Result<Option<PathBuf>, DevError> {
    let missing = || SIBLINGS.into_iter().find(|name| !bin_dir.join(name).is_file());
    let root = source_tree();
    if let Some(root) = root.as_ref().filter(|_| build) {
        let web = root.join("web");
        if !web.join("dist/index.html").is_file() {
            if Command::new("npm").arg("--version").output().is_ok() {
                let ci = ["ci", "--no-audit", "--no-fund", "--loglevel=error"];
                step(me, "building the demo editor", &web, "npm", &ci)?;
                step(
                    me,
                    "building the demo editor",
                    &web,
                    "npm",
                    &["run", "build", "--silent"],
                )?;
            } else {
                eprintln!("{me}: npm not found: starting without the demo editor (it needs Node.js)");
            }
        }
        if missing().is_some() {
            // The same profile and target folder as this binary: <target>/<profile>/.
            let profile = match bin_dir.file_name().and_then(|n| n.to_str()) {
                Some("debug") | None => "dev",
                Some(name) => name,
            };
            let target = bin_dir.parent().unwrap_or(bin_dir).display().to_string();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let args = ["build", "--profile", profile, "--bins", "--target-dir", &target];
            step(me, "building troupe-node and troupe-router", root, &cargo, &args)?;
        }
    }
    if let Some(name) = missing() {
        let dir = bin_dir.to_path_buf();
        return Err(DevError::Missing { name, dir });
    }
    Ok(root
        .map(|root| root.join("web/dist"))
        .filter(|dist| dist.join("index.html").is_file()))
}

/// Whether the router at `addr` serves a page at `/`.
async fn serves_page(addr: &str) -> bool {
    let answer = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("HEAD / HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        Some(head.ends_with(b" 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), answer).await,
        Ok(Some(true))
    )
}

/// Builds what is missing, starts the cluster, prints where it is, and runs it until
/// Ctrl-C or SIGTERM. `me` is the command's name, for the lines it prints.
pub async fn run(args: DevArgs, me: &str) -> Result<(), DevError> {
    let bin_dir = own_bin_dir();
    let web_dir = prepare(me, &bin_dir, !args.no_build)?;
    let secret = args.secret.clone().unwrap_or_else(|| {
        use rand::Rng;
        let bytes: [u8; 16] = rand::rng().random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    });
    let logs = Logs::held();
    let spec = ClusterSpec {
        nodes: args.nodes,
        base_port: args.base_port,
        router_port: args.router_port,
        data_dir: args.data_dir.clone(),
        database_url: args.database_url.clone(),
        redis_port: args.redis.then_some(args.redis_port),
        postgres: false,
        secret: secret.clone(),
        bin_dir,
        isolated: false,
        demo: true,
        web_dir,
        logs: logs.clone(),
    };
    eprintln!(
        "{me}: starting {} nodes ({} voters) and a router…",
        args.nodes,
        voters_for(args.nodes)
    );
    let mut cluster = match LocalCluster::start(&spec).await {
        Ok(cluster) => cluster,
        Err(error) => {
            logs.release_all();
            return Err(DevError::Cluster(error));
        }
    };
    let token = mint_token(
        secret.as_bytes(),
        "dev",
        &[("*", Access::Edit)],
        Duration::from_secs(24 * 3600),
    )?;
    let router = &cluster.router_url;
    println!("router   {router}");
    if serves_page(router.trim_start_matches("http://")).await {
        println!("editor   {router}/?user=Alice  (open it twice, as ?user=Bob too, and type in both)");
    } else {
        println!("editor   not built: install Node.js and npm, then `cd web && npm ci && npm run build`");
    }
    for (id, node) in &cluster.nodes {
        println!("node {id}   {}  (internal {})", node.url, node.rpc);
    }
    if let Some(url) = &cluster.redis_url {
        println!("redis    {url}");
    }
    println!("token    {token}");
    println!("secret   TROUPE_JWT_SECRET={secret}  (the token edits every scene for 24 h)");
    println!();
    println!("  curl {router}/v1/route/s1");
    if let Some(node) = cluster.nodes.values().next() {
        // troupectl needs the cluster's address and an admin's certificate.
        println!("  export TROUPE_CLUSTER={}", node.rpc);
        for (name, value) in cluster.admin_files.env() {
            println!("  export {name}={value}");
        }
        println!("  troupectl status");
    }
    println!();
    println!("Ctrl-C stops the cluster. The nodes' and the router's logs follow.");
    logs.release();

    let mut interrupted = std::pin::pin!(troupe_runtime::signal::shutdown());
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = &mut interrupted => break,
            _ = tick.tick() => match cluster.exited() {
                // A node that dies is what the cluster is for: the others take its scenes
                // over, and the launcher lets it go.
                Some(name) if name.starts_with("node ") => {
                    if let Ok(id) = name[5..].parse() {
                        cluster.kill_node(id);
                    }
                    eprintln!("{me}: {name} exited; its scenes move to the others");
                }
                Some(name) => {
                    cluster.stop();
                    return Err(DevError::Exited(name));
                }
                None => {}
            },
        }
    }
    eprintln!("{me}: stopping…");
    cluster.stop();
    Ok(())
}
