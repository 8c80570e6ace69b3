//! `troupe-chaos`: run Troupe locally and put it under stress.
//!
//! ```text
//! troupe-chaos up [--nodes 3] [--redis] [--database-url postgres://…]
//! ```
//!
//! `up` starts a local cluster in the foreground — nodes, a router, optionally Redis —
//! prints the router URL and a development token, and stops everything on Ctrl-C.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use troupe_chaos::client::{mint_token, Access};
use troupe_chaos::launcher::{own_bin_dir, voters_for, ClusterSpec, LocalCluster};

#[derive(Parser)]
#[command(
    name = "troupe-chaos",
    version,
    about = "Run a local Troupe cluster and put it under stress"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a local cluster in the foreground; Ctrl-C stops it.
    Up(UpArgs),
}

#[derive(clap::Args)]
struct UpArgs {
    /// Number of nodes (the first 1, 3 or 5 are Raft voters, the rest learners).
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Node i listens on BASE+i (WebSocket) and BASE+100+i (internal).
    #[arg(long, default_value_t = 4000)]
    base_port: u16,
    /// The router's port.
    #[arg(long, default_value_t = 8080)]
    router_port: u16,
    /// Folder for the nodes' Raft state and the shared embedded store.
    #[arg(long, default_value = "./troupe-local")]
    data_dir: PathBuf,
    /// Use this Postgres instead of the embedded store.
    #[arg(long, env = "TROUPE_DATABASE_URL")]
    database_url: Option<String>,
    /// Start a Redis (needs `redis-server`) for presence and failover notices.
    #[arg(long)]
    redis: bool,
    #[arg(long, default_value_t = 6379)]
    redis_port: u16,
    /// Shared token secret (default: a random one, printed with a dev token).
    #[arg(long, env = "TROUPE_JWT_SECRET", hide_env_values = true)]
    secret: Option<String>,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("troupe-chaos: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Cmd::Up(args) => up(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("troupe-chaos: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let secret = args.secret.clone().unwrap_or_else(|| {
        use rand::Rng;
        let bytes: [u8; 16] = rand::rng().random();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    });
    let spec = ClusterSpec {
        nodes: args.nodes,
        base_port: args.base_port,
        router_port: args.router_port,
        data_dir: args.data_dir.clone(),
        database_url: args.database_url.clone(),
        redis_port: args.redis.then_some(args.redis_port),
        secret: secret.clone(),
        bin_dir: own_bin_dir(),
    };
    eprintln!(
        "troupe-chaos: starting {} nodes ({} voters)…",
        args.nodes,
        voters_for(args.nodes)
    );
    let mut cluster = LocalCluster::start(&spec).await?;
    let token = mint_token(
        secret.as_bytes(),
        "dev",
        &[("*", Access::Edit)],
        Duration::from_secs(24 * 3600),
    )?;
    println!("router   {}", cluster.router_url);
    for (id, node) in &cluster.nodes {
        println!("node {id}   {}  (internal {})", node.url, node.rpc);
    }
    if let Some(url) = &cluster.redis_url {
        println!("redis    {url}");
    }
    println!("secret   TROUPE_JWT_SECRET={secret}");
    println!("token    {token}");
    println!();
    println!("  curl {}/v1/route/s1", cluster.router_url);
    let rpc = cluster
        .nodes
        .values()
        .next()
        .map(|n| n.rpc.clone())
        .unwrap_or_default();
    println!("  TROUPE_CLUSTER={rpc} troupectl status");
    println!();
    println!("Ctrl-C stops the cluster.");
    let mut interrupted = std::pin::pin!(stop_signal());
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = &mut interrupted => break,
            _ = tick.tick() => {
                if let Some(name) = cluster.exited() {
                    eprintln!("troupe-chaos: {name} exited; stopping the cluster");
                    cluster.stop();
                    anyhow::bail!("{name} exited");
                }
            }
        }
    }
    eprintln!("troupe-chaos: stopping…");
    cluster.stop();
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
        let _ = ctrl_c.await;
        return;
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
