//! `troupe-chaos`: run Troupe locally and put it under stress.
//!
//! ```text
//! troupe-chaos up [--nodes 3] [--redis] [--database-url postgres://…]
//! troupe-chaos load --url http://127.0.0.1:8080 --scenes 20 --editors 5 --rate 2 [--ramp]
//! troupe-chaos relay --listen 127.0.0.1:0
//! troupe-chaos compare troupe=a/report.json,b/report.json reference=c/report.json relay=d
//! ```
//!
//! `up` is `troupe dev` (see `troupe_chaos::dev`): a local cluster in the foreground — nodes,
//! a router, optionally Redis — with its addresses and a development token printed first,
//! stopped by Ctrl-C.
//! `load` drives a running cluster, or any y-websocket server (so that the reference server
//! can be measured the same way), and reports fan-out latency, throughput, and the server's
//! CPU per delivered update and memory per room; `relay` is the floor those figures are
//! read against (a bare y-websocket relay: no document, no storage, see
//! `troupe_chaos::relay`); `compare` puts several servers' reports side by side.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use troupe_chaos::bench::load::LoadOptions;
use troupe_chaos::bench::ramp::RampOptions;
use troupe_chaos::bench::report::{compare_table, Medians};
use troupe_chaos::bench::svg::latency_svg;
use troupe_chaos::chart::{render_svg, ChartSpec, FaultMark, Sample};
use troupe_chaos::dev::{self, DevArgs};
use troupe_chaos::launcher::own_bin_dir;
use troupe_chaos::relay::{Relay, RelayOptions};
use troupe_chaos::run::{Report, RunOptions};
use troupe_chaos::scenario::Scenario;
use troupe_runtime::logging::{self, Style};
use troupe_runtime::signal::shutdown as stop_signal;

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
    /// Start a local cluster in the foreground; Ctrl-C stops it (the same as `troupe dev`).
    Up(DevArgs),
    /// Run a chaos scenario (a name from chaos/scenarios/ or a path to a .toml file).
    Run(RunArgs),
    /// Drive a running cluster or any y-websocket server with simulated editors; report
    /// fan-out latency, deliveries/s, errors, and server CPU per delivered update and RSS
    /// per room.
    Load(Box<LoadArgs>),
    /// Serve a bare y-websocket relay (no document, no storage, no auth): the floor the
    /// bench compares servers with.
    Relay(RelayArgs),
    /// Print the medians of several servers' `load` reports side by side.
    Compare(CompareArgs),
}

#[derive(clap::Args)]
struct RelayArgs {
    /// Address to listen on; port 0 picks a free one. Prints
    /// `troupe-chaos relay listening on ws://ADDR` once ready; rooms are at ws://ADDR/{room}.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// Runtime worker threads (1, like troupe-node's default TROUPE_WORKER_THREADS, runs
    /// everything on the main thread).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Largest WebSocket message accepted, in bytes (troupe-node's default).
    #[arg(long, default_value_t = 1 << 20)]
    max_frame_bytes: usize,
    /// Frames queued for one client before it is dropped as too slow.
    #[arg(long, default_value_t = 1024)]
    queue: usize,
}

#[derive(clap::Args)]
struct LoadArgs {
    /// A Troupe node (ws://host:port/ws/scenes), the reference server (ws://host:port) —
    /// scenes at {url}/{scene} — or a router (http://host:port), which names each scene's
    /// owner.
    #[arg(long)]
    url: String,
    /// Scenes (rooms).
    #[arg(long, default_value_t = 20)]
    scenes: u32,
    /// Editors per scene.
    #[arg(long, default_value_t = 5)]
    editors: u32,
    /// Of each scene's editors, how many type (the first ones); the others only watch.
    /// Default: all of them.
    #[arg(long)]
    writers: Option<u32>,
    /// Edits per second per editor (0 types nothing: memory measurements); with --ramp,
    /// the first step's rate.
    #[arg(long, default_value_t = 2.0)]
    rate: f64,
    /// Measured window (seconds, or 500ms, 2m); each ramp step's.
    #[arg(long, default_value = "30", value_parser = seconds)]
    duration: Duration,
    /// Typing before the window is measured.
    #[arg(long, default_value = "5", value_parser = seconds)]
    warmup: Duration,
    /// Listening after the last edit, for late deliveries.
    #[arg(long, default_value = "3", value_parser = seconds)]
    drain: Duration,
    /// Mint each editor an HS256 token with this secret (scenes: {"*": "edit"}).
    #[arg(long, env = "TROUPE_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Use this token for every editor instead of minting.
    #[arg(long, conflicts_with = "jwt_secret")]
    token: Option<String>,
    /// Scene ids are PREFIX-0, PREFIX-1, … (default: load-<random>, so runs never share rooms).
    #[arg(long)]
    scene_prefix: Option<String>,
    /// Name of the Y.Text the editors type into.
    #[arg(long, default_value = "text")]
    text: String,
    /// Bytes of text the first editor of each scene types before anything is measured.
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    initial_text: usize,
    /// A server process to measure (repeatable: CPU from /proc/PID/stat and RSS, summed).
    #[arg(long = "pid", value_name = "PID")]
    pids: Vec<u32>,
    /// A helper process tree whose CPU is reported separately (repeatable; e.g. the
    /// PostgreSQL postmaster).
    #[arg(long = "aux-pid", value_name = "PID")]
    aux_pids: Vec<u32>,
    /// Ask for durable acks (Troupe) and measure send -> ack.
    #[arg(long)]
    acks: bool,
    /// Name of this run in reports.
    #[arg(long, default_value = "server")]
    label: String,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Write report.json and latency.svg into this folder.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Connections opened at once.
    #[arg(long, default_value_t = 16)]
    connect_concurrency: usize,
    /// Time each editor may take to connect and sync.
    #[arg(long, default_value = "30", value_parser = seconds)]
    sync_timeout: Duration,
    /// Raise the rate step by step (same editors; each step --warmup + --duration) until
    /// p99 reaches --ramp-p99-ms or errors appear; report the highest passing rate.
    #[arg(long)]
    ramp: bool,
    /// Each step's rate is the previous one's times this.
    #[arg(long, default_value_t = 1.5, requires = "ramp")]
    ramp_factor: f64,
    /// Highest rate (edits/s per editor) a step may have.
    #[arg(long, default_value_t = 1000.0, requires = "ramp")]
    ramp_max: f64,
    /// A step passes while its fan-out p99 is under this (ms).
    #[arg(long, default_value_t = 100.0, requires = "ramp")]
    ramp_p99_ms: f64,
}

#[derive(clap::Args)]
struct CompareArgs {
    /// Groups LABEL=REPORT[,REPORT…] of `load` reports (report.json files, or the folders
    /// holding them), one column each; the ratio column is the first / the second group
    /// other than the floor.
    #[arg(num_args = 1.., required = true, value_name = "LABEL=REPORTS")]
    groups: Vec<String>,
    /// The group CPU figures are also shown as multiples of (`× floor`), when present.
    #[arg(long, default_value = "relay", value_name = "LABEL")]
    floor: String,
    /// Print the medians as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct RunArgs {
    scenario: String,
    #[arg(long)]
    seed: Option<u64>,
    /// How long editors type and faults fire (default: the scenario's).
    #[arg(long, value_parser = troupe_runtime::duration::parse_duration)]
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

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(line) = logging::init("warn,troupe_chaos=info", Style::Tool) {
        eprintln!("troupe-chaos: {line}");
        return std::process::ExitCode::from(2);
    }
    // The load generator wants every core; the cluster tools are fine on one thread.
    let mut builder = match &cli.command {
        Cmd::Load(_) => tokio::runtime::Builder::new_multi_thread(),
        Cmd::Relay(args) if args.threads > 1 => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(args.threads);
            b
        }
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("troupe-chaos: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Cmd::Up(args) => dev::run(args, "troupe-chaos").await.map_err(anyhow::Error::from),
            Cmd::Run(args) => run(args).await,
            Cmd::Load(args) => load(*args).await,
            Cmd::Relay(args) => relay(args).await,
            Cmd::Compare(args) => compare(args),
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
    let running = troupe_chaos::run::run(RunOptions {
        scenario: scenario.clone(),
        seed,
        duration,
        base_port: args.base_port,
        router_port: args.router_port,
        data_dir: data_dir.clone(),
        bin_dir: own_bin_dir(),
        database_url: args.database_url.clone(),
    });
    // Ctrl-C drops the run, and with it the cluster: every process and network it made.
    let report = tokio::select! {
        report = running => report?,
        _ = stop_signal() => anyhow::bail!("interrupted; the cluster was stopped"),
    };
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
        let recovery = match f.recovered_ms {
            Some(_) if f.affected_editors == 0 => "nobody cut off".to_string(),
            Some(ms) => match (f.recovered_p50_ms, f.recovered_p99_ms) {
                (Some(p50), Some(p99)) if f.affected_editors > 1 => format!(
                    "{} editors back: p50 {:.2} s, p99 {:.2} s, all in {:.2} s",
                    f.affected_editors,
                    p50 as f64 / 1000.0,
                    p99 as f64 / 1000.0,
                    ms as f64 / 1000.0
                ),
                _ => format!(
                    "{} editors back in {:.2} s",
                    f.affected_editors,
                    ms as f64 / 1000.0
                ),
            },
            None => String::new(),
        };
        let status = if f.fired { "fired" } else { "skipped" };
        println!(
            "  {:>7.1} s  {:<13} {:<8} {status:<8} {recovery} {}",
            f.at_ms as f64 / 1000.0,
            format!("{:?}", f.kind),
            f.target,
            f.note
        );
        if let (Some(rate), Some(cpu)) = (f.scenes_per_second, &f.recovery_cpu) {
            let postgres = cpu
                .postgres
                .map(|c| format!(", PostgreSQL {c:.2}"))
                .unwrap_or_default();
            println!(
                "             {} scenes back at {rate:.0} scenes/s; CPU over those {:.2} s (cores): harness {:.2}, nodes {:.2}, router {:.2}{postgres}",
                f.scenes_cut_off,
                cpu.window_ms as f64 / 1000.0,
                cpu.harness,
                cpu.nodes,
                cpu.router
            );
        }
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
        "recovery   p50 {:.2} s, p99 {:.2} s, max {:.2} s over {} faults that cut editors off",
        report.recovery_ms.p50 / 1000.0,
        report.recovery_ms.p99 / 1000.0,
        report.recovery_ms.max / 1000.0,
        report.recovery_ms.count
    );
    let mut by_kind: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for f in report.faults.iter().filter(|f| f.affected_editors > 0) {
        if let Some(ms) = f.recovered_ms {
            by_kind
                .entry(format!("{:?}", f.kind))
                .or_default()
                .push(ms as f64);
        }
    }
    for (kind, values) in by_kind {
        let p = troupe_chaos::run::Percentiles::of(values);
        println!(
            "  {kind:<14} p50 {:.2} s, p99 {:.2} s, max {:.2} s ({})",
            p.p50 / 1000.0,
            p.p99 / 1000.0,
            p.max / 1000.0,
            p.count
        );
    }
    println!(
        "checks     {} divergent scenes, {} store mismatches, {} fenced writes accepted",
        report.divergent_scenes.len(),
        report.store_mismatches.len(),
        report.fenced_writes_accepted
    );
    if let Some(p1) = &report.p1 {
        print_p1(p1);
    }
    for p in &report.problems {
        println!("problem    {p}");
    }
    println!(
        "report     {}/report.json, {}/latency.svg",
        out.display(),
        out.display()
    );
}

fn print_p1(p1: &troupe_chaos::p1::check::P1Report) {
    let kinds: Vec<String> = p1
        .acknowledged_by_kind
        .iter()
        .map(|(kind, n)| format!("{} {n}", kind.as_str()))
        .collect();
    println!(
        "p1 writes  {} writers: {} acknowledged ({}), {} conflicts retried, {} moves retried, {} unknown outcome, {} refused, {} failed reads",
        p1.writers,
        p1.writes_acknowledged,
        kinds.join(", "),
        p1.conflicts_retried,
        p1.moved_retried,
        p1.unknown_outcome,
        p1.refused,
        p1.read_failures
    );
    println!(
        "p1 ack     p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        p1.write_latency_ms.p50, p1.write_latency_ms.p99, p1.write_latency_ms.max
    );
    for (why, n) in &p1.unknown_reasons {
        println!("  unknown   {n} x {why}");
    }
    println!(
        "p1 markers {} typed by editors + {} saved with a 200 (exactly once), {} unknown (at most once; {} landed), {} refused (never)",
        p1.editor_markers, p1.writes_acknowledged, p1.unknown_outcome, p1.unknown_landed, p1.refused
    );
    for place in &p1.places {
        println!(
            "  {:<15} {} scenes, {} marker counts, {} wrong",
            place.place, place.scenes_read, place.markers_checked, place.miscounted
        );
    }
    match p1.content_blocks_caught_up_ms {
        Some(ms) => println!(
            "  content_blocks held the document {:.1} s after the checks began",
            ms as f64 / 1000.0
        ),
        None => println!("  content_blocks never caught up with the document"),
    }
}

/// Seconds (`2.5`) or a duration with a unit (`500ms`, `2m`).
fn seconds(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => Ok(Duration::from_secs_f64(s)),
        Ok(_) => Err(format!("{text:?} is not a positive number of seconds")),
        Err(_) => troupe_runtime::duration::parse_duration(text),
    }
}

async fn load(args: LoadArgs) -> anyhow::Result<()> {
    let opts = LoadOptions {
        url: args.url.clone(),
        scenes: args.scenes,
        editors: args.editors,
        writers: args.writers.unwrap_or(args.editors),
        rate: args.rate,
        warmup: args.warmup,
        duration: args.duration,
        drain: args.drain,
        jwt_secret: args.jwt_secret.clone(),
        token: args.token.clone(),
        scene_prefix: args.scene_prefix.clone(),
        text: args.text.clone(),
        initial_text: args.initial_text,
        pids: args.pids.clone(),
        aux_pids: args.aux_pids.clone(),
        acks: args.acks,
        label: args.label.clone(),
        connect_concurrency: args.connect_concurrency,
        sync_timeout: args.sync_timeout,
    };
    let shape = format!("{} scenes x {} editors", args.scenes, args.editors);
    let (json, human, svg) = if args.ramp {
        let ramp = RampOptions {
            factor: args.ramp_factor,
            max_rate: args.ramp_max,
            p99_limit_ms: args.ramp_p99_ms,
        };
        let report = troupe_chaos::bench::ramp::ramp(&opts, &ramp).await?;
        let title = format!("{}: fan-out latency, ramp ({shape})", args.label);
        (
            serde_json::to_string_pretty(&report)?,
            report.human(),
            latency_svg(&title, &report.steps),
        )
    } else {
        let report = troupe_chaos::bench::load::run(&opts).await?;
        let title = format!(
            "{}: fan-out latency ({shape} x {} edits/s)",
            args.label, args.rate
        );
        (
            serde_json::to_string_pretty(&report)?,
            report.human(),
            latency_svg(&title, std::slice::from_ref(&report)),
        )
    };
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("report.json"), &json)
            .with_context(|| format!("writing {}/report.json", dir.display()))?;
        std::fs::write(dir.join("latency.svg"), svg)
            .with_context(|| format!("writing {}/latency.svg", dir.display()))?;
        eprintln!(
            "troupe-chaos: wrote {}/report.json and {}/latency.svg",
            dir.display(),
            dir.display()
        );
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{human}");
    }
    Ok(())
}

fn compare(args: CompareArgs) -> anyhow::Result<()> {
    let mut medians = Vec::new();
    for group in &args.groups {
        let (label, files) = group
            .split_once('=')
            .with_context(|| format!("{group:?}: expected LABEL=REPORT[,REPORT…]"))?;
        let mut reports = Vec::new();
        for file in files.split(',').filter(|f| !f.is_empty()) {
            let mut path = PathBuf::from(file);
            if path.is_dir() {
                path.push("report.json");
            }
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let report =
                serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            reports.push(report);
        }
        if reports.is_empty() {
            anyhow::bail!("{group:?}: no reports");
        }
        medians.push(Medians::of(label, &reports));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&medians)?);
    } else {
        print!("{}", compare_table(&medians, Some(args.floor.as_str())));
    }
    Ok(())
}

async fn relay(args: RelayArgs) -> anyhow::Result<()> {
    let opts = RelayOptions {
        listen: args.listen,
        max_frame_bytes: args.max_frame_bytes,
        queue: args.queue,
    };
    let relay = Relay::bind(&opts)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = relay.local_addr()?;
    // bench.sh waits for this line.
    println!("troupe-chaos relay listening on ws://{addr}");
    tokio::select! {
        () = relay.serve() => {}
        () = stop_signal() => {}
    }
    Ok(())
}
