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
use troupe_chaos::chart::{render_svg, ChartSpec, FaultMark, Sample};
use troupe_chaos::client::{mint_token, Access};
use troupe_chaos::launcher::{own_bin_dir, voters_for, ClusterSpec, LocalCluster};
use troupe_chaos::run::{Report, RunOptions};
use troupe_chaos::scenario::Scenario;

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
    /// Run a chaos scenario (a name from chaos/scenarios/ or a path to a .toml file).
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    scenario: String,
    #[arg(long)]
    seed: Option<u64>,
    /// How long editors type and faults fire (default: the scenario's).
    #[arg(long, value_parser = troupe_node::duration::parse_duration)]
    duration: Option<Duration>,
    /// Node i listens on BASE+i and BASE+100+i.
    #[arg(long, default_value_t = 14000)]
    base_port: u16,
    #[arg(long, default_value_t = 14080)]
    router_port: u16,
    /// Where the report (report.json, latency.svg) goes.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Use this Postgres instead of the embedded store.
    #[arg(long, env = "TROUPE_DATABASE_URL")]
    database_url: Option<String>,
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
            Cmd::Run(args) => run(args).await,
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
        postgres: false,
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

/// Finds a scenario by name in `chaos/scenarios/` (next to the sources) or by path.
fn scenario_path(name: &str) -> PathBuf {
    let direct = PathBuf::from(name);
    if direct.exists() {
        return direct;
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    dir.join(format!("{name}.toml"))
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let path = scenario_path(&args.scenario);
    let scenario =
        Scenario::load(&path).map_err(|e| anyhow::anyhow!("scenario {}: {e:#}", path.display()))?;
    let seed = args.seed.unwrap_or(scenario.seed);
    let duration = args.duration.unwrap_or(scenario.duration);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("chaos-report/{}-{seed}", scenario.name)));
    std::fs::create_dir_all(&out)?;
    let data_dir = out.join("data");
    let _ = std::fs::remove_dir_all(&data_dir);
    eprintln!(
        "troupe-chaos: scenario {} (seed {seed}, {duration:?}): {} nodes, {} scenes x {} editors",
        scenario.name, scenario.nodes, scenario.scenes, scenario.editors_per_scene
    );
    let report = troupe_chaos::run::run(RunOptions {
        scenario: scenario.clone(),
        seed,
        duration,
        base_port: args.base_port,
        router_port: args.router_port,
        data_dir: data_dir.clone(),
        bin_dir: own_bin_dir(),
        database_url: args.database_url.clone(),
    })
    .await?;
    std::fs::write(out.join("report.json"), serde_json::to_string_pretty(&report)?)?;
    std::fs::write(out.join("latency.svg"), chart(&report))?;
    print_summary(&report, &out);
    let _ = std::fs::remove_dir_all(&data_dir);
    if report.passed {
        Ok(())
    } else {
        anyhow::bail!(
            "{} problem(s): {}",
            report.problems.len(),
            report.problems.join("; ")
        )
    }
}

fn chart(report: &Report) -> String {
    let samples: Vec<Sample> = report
        .samples
        .iter()
        .map(|(at_ms, latency_ms)| Sample {
            at_ms: *at_ms,
            latency_ms: *latency_ms,
        })
        .collect();
    let faults: Vec<FaultMark> = report
        .faults
        .iter()
        .filter(|f| f.fired)
        .map(|f| FaultMark {
            at_ms: f.at_ms,
            label: format!("{:?} {}", f.kind, f.target),
            recovered_ms: f.recovered_ms,
        })
        .collect();
    let title = format!(
        "{} (seed {}): edit latency to durable ack",
        report.scenario, report.seed
    );
    render_svg(&ChartSpec {
        title: &title,
        samples: &samples,
        faults: &faults,
        duration_ms: report.duration_ms,
    })
}

fn print_summary(report: &Report, out: &std::path::Path) {
    println!(
        "{} {} (seed {}, {:.0} s): {} nodes, {} editors",
        if report.passed { "PASS" } else { "FAIL" },
        report.scenario,
        report.seed,
        report.duration_ms as f64 / 1000.0,
        report.nodes,
        report.editors
    );
    let fired = report.faults.iter().filter(|f| f.fired).count();
    println!("faults     {fired} fired of {} planned", report.faults.len());
    for f in &report.faults {
        let recovery = f
            .recovered_ms
            .map(|ms| format!("recovered in {:.2} s", ms as f64 / 1000.0))
            .unwrap_or_default();
        let status = if f.fired { "fired" } else { "skipped" };
        println!(
            "  {:>7.1} s  {:<13} {:<8} {status:<8} {recovery} {}",
            f.at_ms as f64 / 1000.0,
            format!("{:?}", f.kind),
            f.target,
            f.note
        );
    }
    println!(
        "edits      {} typed, {} acknowledged, {} lost",
        report.edits_typed, report.edits_acknowledged, report.edits_lost
    );
    println!(
        "ack        p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        report.ack_latency_ms.p50, report.ack_latency_ms.p99, report.ack_latency_ms.max
    );
    println!(
        "recovery   p50 {:.2} s, p99 {:.2} s, max {:.2} s over {} faults",
        report.recovery_ms.p50 / 1000.0,
        report.recovery_ms.p99 / 1000.0,
        report.recovery_ms.max / 1000.0,
        report.recovery_ms.count
    );
    println!(
        "checks     {} divergent scenes, {} store mismatches, {} fenced writes accepted",
        report.divergent_scenes.len(),
        report.store_mismatches.len(),
        report.fenced_writes_accepted
    );
    for p in &report.problems {
        println!("problem    {p}");
    }
    println!(
        "report     {}/report.json, {}/latency.svg",
        out.display(),
        out.display()
    );
}
