//! troupe-bench: drives simulated editors against any y-websocket server and reports fan-out
//! latency, throughput, and the server's CPU per delivered update and memory per room.
//!
//! ```text
//! troupe-bench --url ws://127.0.0.1:4000/ws/scenes --jwt-secret … --server-pid 1234
//! troupe-bench --url ws://127.0.0.1:1234 --label reference --server-pid 5678 --json > ref.json
//! troupe-bench compare troupe=t1.json,t2.json reference=r1.json,r2.json
//! ```
//!
//! Every edit inserts a marker `<sender.seq.micros>` at a random position of the scene's
//! `Y.Text`; every other editor of the scene that sees it records `receive - send`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use futures_util::{stream, StreamExt, TryStreamExt};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::MissedTickBehavior;
use yrs::{Text, WriteTxn};

use troupe_chaos::bench::marker::{parse_all, Marker};
use troupe_chaos::bench::procfs;
use troupe_chaos::bench::report::{compare_table, AuxUsage, Load, Medians, Report, ServerUsage};
use troupe_chaos::bench::stats::Summary;
use troupe_chaos::client::{mint_token, Access, ClientEvent, ClientOptions, CloseInfo, EditorClient, Sent};

#[derive(Parser)]
#[command(
    name = "troupe-bench",
    about = "Load benchmark for y-websocket servers (Troupe or the reference server)",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the load and print a report (the default).
    Run(Box<RunArgs>),
    /// Print medians of JSON reports of two servers side by side.
    Compare(CompareArgs),
}

#[derive(Args, Clone)]
struct RunArgs {
    /// WebSocket base URL; scenes are `{url}/{scene}` (Troupe: ws://host:port/ws/scenes,
    /// reference server: ws://host:port).
    #[arg(long, default_value = "ws://127.0.0.1:4000/ws/scenes")]
    url: String,
    /// Number of scenes (rooms).
    #[arg(long, default_value_t = 20)]
    scenes: u32,
    /// Editors per scene.
    #[arg(long, default_value_t = 5)]
    editors: u32,
    /// Edits per second per editor.
    #[arg(long, default_value_t = 2.0)]
    rate: f64,
    /// Measured window, seconds.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Editing before the measured window starts, seconds.
    #[arg(long, default_value_t = 5.0)]
    warmup: f64,
    /// Listening after the last edit, for late deliveries, seconds.
    #[arg(long, default_value_t = 3.0)]
    drain: f64,
    /// Mint each editor an HS256 token with this secret (scenes: {"*": "edit"}).
    #[arg(long, env = "TROUPE_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Use this token for every editor instead of minting.
    #[arg(long, conflicts_with = "jwt_secret")]
    token: Option<String>,
    /// Scene ids are `{prefix}-{n}` (default: bench-<random>, so runs never share rooms).
    #[arg(long)]
    scene_prefix: Option<String>,
    /// Name of the Y.Text the editors type into.
    #[arg(long, default_value = "text")]
    text: String,
    /// Server process to measure (CPU from /proc/PID/stat, VmRSS from /proc/PID/status).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Further process trees whose CPU is reported separately (e.g. the PostgreSQL postmaster).
    #[arg(long)]
    aux_pid: Vec<u32>,
    /// Ask for durable acks (`acks=1`) and measure send -> ack latency.
    #[arg(long)]
    acks: bool,
    /// Label of this run in reports.
    #[arg(long, default_value = "server")]
    label: String,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Connections opened at once.
    #[arg(long, default_value_t = 16)]
    connect_concurrency: usize,
    /// Seconds each editor may take to connect and sync.
    #[arg(long, default_value_t = 30.0)]
    sync_timeout: f64,
}

#[derive(Args)]
struct CompareArgs {
    /// Two groups `LABEL=FILE[,FILE…]` of JSON reports; the ratio column is first / second.
    #[arg(num_args = 2, required = true, value_name = "LABEL=FILES")]
    groups: Vec<String>,
    /// Print the medians as JSON.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Some(Cmd::Compare(args)) => compare(args),
        Some(Cmd::Run(args)) => run_and_print(*args).await,
        None => run_and_print(cli.run).await,
    }
}

async fn run_and_print(args: RunArgs) -> anyhow::Result<()> {
    let report = run(&args).await?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.out {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{}", report.human());
    }
    Ok(())
}

fn compare(args: CompareArgs) -> anyhow::Result<()> {
    let mut medians = Vec::new();
    for group in &args.groups {
        let (label, files) = group
            .split_once('=')
            .with_context(|| format!("{group:?}: expected LABEL=FILE[,FILE…]"))?;
        let mut reports = Vec::new();
        for file in files.split(',').filter(|f| !f.is_empty()) {
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
            let report: Report = serde_json::from_str(&text).with_context(|| format!("parsing {file}"))?;
            reports.push(report);
        }
        if reports.is_empty() {
            bail!("{group:?}: no report files");
        }
        medians.push(Medians::of(label, &reports));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&medians)?);
    } else {
        print!("{}", compare_table(&medians[0], &medians[1]));
    }
    Ok(())
}

/// When things happen, shared by all editors.
#[derive(Clone, Copy)]
struct Plan {
    epoch: Instant,
    start: Instant,
    window_end: Instant,
    end: Instant,
    period: Duration,
    acks: bool,
}

impl Plan {
    fn micros(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_micros() as u64
    }
}

/// One remote edit seen by an editor.
struct Receipt {
    sender: u32,
    seq: u32,
    sent_us: u64,
    recv_us: u64,
}

#[derive(Default)]
struct EditorResult {
    /// Send times of this editor's edits.
    sent_us: Vec<u64>,
    receipts: Vec<Receipt>,
    /// (send time, ack latency) of acknowledged edits.
    acks: Vec<(u64, u64)>,
    send_failures: u64,
    protocol_errors: u64,
    closed: Option<CloseInfo>,
}

async fn run(args: &RunArgs) -> anyhow::Result<Report> {
    if args.scenes == 0 || args.editors == 0 {
        bail!("--scenes and --editors must be at least 1");
    }
    let positive = |x: f64| x.is_finite() && x > 0.0;
    let not_negative = |x: f64| x.is_finite() && x >= 0.0;
    if !positive(args.rate) || !positive(args.duration) {
        bail!("--rate and --duration must be positive numbers");
    }
    if !not_negative(args.warmup) || !not_negative(args.drain) {
        bail!("--warmup and --drain must not be negative");
    }
    let epoch = Instant::now();
    let prefix = args
        .scene_prefix
        .clone()
        .unwrap_or_else(|| format!("bench-{:08x}", rand::random::<u32>()));
    let total = args.scenes * args.editors;
    let rss_before = args.server_pid.and_then(procfs::rss_bytes);
    if let Some(pid) = args.server_pid {
        if rss_before.is_none() {
            bail!("--server-pid {pid}: no such process (or /proc is not readable)");
        }
    }

    eprintln!(
        "troupe-bench [{}]: connecting {total} editors ({} scenes x {}) to {}",
        args.label, args.scenes, args.editors, args.url
    );
    let token_ttl = Duration::from_secs_f64(args.warmup + args.duration + args.drain + 3600.0);
    let connect_started = Instant::now();
    let mut clients: Vec<(u32, EditorClient)> = stream::iter(0..total)
        .map(|id| {
            let scene = format!("{prefix}-{}", id / args.editors);
            connect_editor(args, id, scene, token_ttl)
        })
        .buffer_unordered(args.connect_concurrency.max(1))
        .try_collect()
        .await?;
    clients.sort_by_key(|(id, _)| *id);
    let connect_s = connect_started.elapsed().as_secs_f64();
    eprintln!(
        "troupe-bench [{}]: all editors synced in {connect_s:.2} s",
        args.label
    );

    let start = Instant::now() + Duration::from_millis(200);
    let window_start = start + Duration::from_secs_f64(args.warmup);
    let window_end = window_start + Duration::from_secs_f64(args.duration);
    let plan = Plan {
        epoch,
        start,
        window_end,
        end: window_end + Duration::from_secs_f64(args.drain),
        period: Duration::from_secs_f64(1.0 / args.rate),
        acks: args.acks,
    };
    let text: Arc<str> = args.text.as_str().into();
    let mut tasks = Vec::with_capacity(clients.len());
    for (id, mut client) in clients {
        let Some(events) = client.take_events() else {
            bail!("editor {id}: no event stream");
        };
        tasks.push(tokio::spawn(editor_task(id, client, events, plan, text.clone())));
    }

    // Sample the processes at the edges of the measured window.
    tokio::time::sleep_until(window_start.into()).await;
    let server_cpu0 = args.server_pid.and_then(procfs::cpu_time);
    let aux0: Vec<_> = args.aux_pid.iter().map(|&p| procfs::tree_cpu(p)).collect();
    let bench_cpu0 = procfs::cpu_time(std::process::id());
    eprintln!("troupe-bench [{}]: measuring for {} s", args.label, args.duration);
    tokio::time::sleep_until(window_end.into()).await;
    let server_cpu1 = args.server_pid.and_then(procfs::cpu_time);
    let aux1: Vec<_> = args.aux_pid.iter().map(|&p| procfs::tree_cpu(p)).collect();
    let bench_cpu1 = procfs::cpu_time(std::process::id());
    let rss_after = args.server_pid.and_then(procfs::rss_bytes);

    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        results.push(t.await.context("editor task panicked")?);
    }

    // Tally.
    let (ws, we) = (plan.micros(window_start), plan.micros(window_end));
    let in_window = |us: u64| us >= ws && us < we;
    let edits_sent: u64 = results
        .iter()
        .map(|r| r.sent_us.iter().filter(|&&t| in_window(t)).count() as u64)
        .sum();
    let deliveries_expected = edits_sent * u64::from(args.editors - 1);
    let (mut deliveries, mut duplicates, mut window_deliveries) = (0u64, 0u64, 0u64);
    let mut latencies = Vec::new();
    let mut ack_latencies = Vec::new();
    let (mut disconnects, mut protocol_errors) = (0u64, 0u64);
    let mut close_codes: HashMap<String, u64> = HashMap::new();
    for r in &results {
        let mut seen = HashSet::with_capacity(r.receipts.len());
        for rc in &r.receipts {
            if !seen.insert((rc.sender, rc.seq)) {
                duplicates += 1;
                continue;
            }
            if in_window(rc.sent_us) {
                deliveries += 1;
                latencies.push(rc.recv_us.saturating_sub(rc.sent_us));
            }
            if in_window(rc.recv_us) {
                window_deliveries += 1;
            }
        }
        ack_latencies.extend(
            r.acks
                .iter()
                .filter(|(sent, _)| in_window(*sent))
                .map(|(_, lat)| *lat),
        );
        protocol_errors += r.protocol_errors;
        if let Some(info) = &r.closed {
            disconnects += 1;
            let code = info.code.map_or_else(|| "none".to_owned(), |c| c.to_string());
            *close_codes.entry(code).or_default() += 1;
        }
        if r.send_failures > 0 {
            tracing::debug!(failures = r.send_failures, "edits not sent");
        }
    }
    let per_delivery_us = |cpu_s: f64| {
        if window_deliveries == 0 {
            0.0
        } else {
            cpu_s * 1e6 / window_deliveries as f64
        }
    };
    let server = match (args.server_pid, server_cpu0, server_cpu1, rss_before, rss_after) {
        (Some(pid), Some(c0), Some(c1), Some(before), Some(after)) => {
            let cpu_s = c1.saturating_sub(c0).as_secs_f64();
            Some(ServerUsage {
                pid,
                cpu_s,
                cpu_us_per_delivery: per_delivery_us(cpu_s),
                rss_before_bytes: before,
                rss_after_bytes: after,
                rss_per_room_bytes: after / u64::from(args.scenes),
                rss_delta_per_room_bytes: (after as i64 - before as i64) / i64::from(args.scenes),
            })
        }
        (Some(pid), ..) => bail!("server process {pid} went away during the run"),
        _ => None,
    };
    let aux = args
        .aux_pid
        .iter()
        .zip(aux0.iter().zip(&aux1))
        .map(|(&pid, (a0, a1))| {
            let cpu_s = procfs::tree_cpu_delta(a0, a1).as_secs_f64();
            AuxUsage {
                pid,
                cpu_s,
                cpu_us_per_delivery: per_delivery_us(cpu_s),
            }
        })
        .collect();
    let bench_cpu_s = match (bench_cpu0, bench_cpu1) {
        (Some(a), Some(b)) => b.saturating_sub(a).as_secs_f64(),
        _ => 0.0,
    };
    let mut close_codes: Vec<(String, u64)> = close_codes.into_iter().collect();
    close_codes.sort();
    Ok(Report {
        label: args.label.clone(),
        url: args.url.clone(),
        load: Load {
            scenes: args.scenes,
            editors_per_scene: args.editors,
            rate: args.rate,
            warmup_s: args.warmup,
            duration_s: args.duration,
            acks: args.acks,
        },
        connect_s,
        edits_sent,
        deliveries_expected,
        deliveries,
        missing: deliveries_expected.saturating_sub(deliveries),
        duplicates,
        window_deliveries,
        deliveries_per_s: window_deliveries as f64 / args.duration,
        latency_ms: Summary::from_micros(&mut latencies),
        ack_latency_ms: args.acks.then(|| Summary::from_micros(&mut ack_latencies)),
        server,
        aux,
        bench_cpu_s,
        disconnects,
        close_codes,
        protocol_errors,
    })
}

async fn connect_editor(
    args: &RunArgs,
    id: u32,
    scene: String,
    token_ttl: Duration,
) -> anyhow::Result<(u32, EditorClient)> {
    let token = match (&args.token, &args.jwt_secret) {
        (Some(t), _) => t.clone(),
        (None, Some(secret)) => mint_token(
            secret.as_bytes(),
            &format!("bench-{id}"),
            &[("*", Access::Edit)],
            token_ttl,
        )
        .context("minting a token")?,
        (None, None) => String::new(),
    };
    let opts = ClientOptions {
        acks: args.acks,
        events: true,
        observe_text: Some(args.text.clone()),
        ..ClientOptions::default()
    };
    let client = EditorClient::connect(&args.url, &scene, &token, opts)
        .await
        .with_context(|| format!("editor {id} ({scene}): connect"))?;
    client
        .wait_synced(Duration::from_secs_f64(args.sync_timeout))
        .await
        .with_context(|| format!("editor {id} ({scene}): sync"))?;
    Ok((id, client))
}

/// Types on a fixed schedule and records every remote edit it sees, until `plan.end`.
async fn editor_task(
    id: u32,
    client: EditorClient,
    mut events: UnboundedReceiver<ClientEvent>,
    plan: Plan,
    text: Arc<str>,
) -> EditorResult {
    let mut res = EditorResult::default();
    let phase = plan.period.mul_f64(rand::random::<f64>());
    let mut ticker = tokio::time::interval_at((plan.start + phase).into(), plan.period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let end = tokio::time::sleep_until(plan.end.into());
    tokio::pin!(end);
    let mut pending_acks: VecDeque<(u64, u64)> = VecDeque::new();
    let (mut seq, mut sending, mut events_open) = (0u32, true, true);
    loop {
        tokio::select! {
            _ = &mut end => break,
            _ = ticker.tick(), if sending => {
                let now = Instant::now();
                if now >= plan.window_end {
                    sending = false;
                    continue;
                }
                seq += 1;
                let sent_us = plan.micros(now);
                let marker = Marker { sender: id, seq, sent_us }.encode();
                let at: f64 = rand::random();
                let name = text.clone();
                let edit = client.edit(move |txn| {
                    let t = txn.get_or_insert_text(name);
                    let len = t.len(txn);
                    t.insert(txn, (at * f64::from(len)) as u32, &marker);
                });
                match edit.await {
                    Ok(((), Sent::Message { n, .. })) => {
                        res.sent_us.push(sent_us);
                        if plan.acks {
                            pending_acks.push_back((n, sent_us));
                        }
                    }
                    Ok(_) | Err(_) => res.send_failures += 1,
                }
            }
            ev = events.recv(), if events_open => match ev {
                Some(ClientEvent::Update(u)) => {
                    let recv_us = plan.micros(u.at);
                    for s in &u.inserted {
                        for m in parse_all(s) {
                            if m.sender != id {
                                res.receipts.push(Receipt {
                                    sender: m.sender,
                                    seq: m.seq,
                                    sent_us: m.sent_us,
                                    recv_us,
                                });
                            }
                        }
                    }
                }
                Some(ClientEvent::Ack { at, acked }) => {
                    let at_us = plan.micros(at);
                    while let Some(&(n, sent)) = pending_acks.front() {
                        if n > acked {
                            break;
                        }
                        res.acks.push((sent, at_us.saturating_sub(sent)));
                        pending_acks.pop_front();
                    }
                }
                Some(ClientEvent::ProtocolError { .. }) => res.protocol_errors += 1,
                Some(ClientEvent::Closed(info)) => {
                    res.closed = Some(info);
                    sending = false;
                }
                Some(_) => {}
                None => events_open = false,
            },
        }
    }
    if let Err(e) = client.close(1000, "bench done").await {
        tracing::debug!(editor = id, error = %e, "close");
    }
    res
}
