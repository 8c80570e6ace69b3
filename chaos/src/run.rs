//! `troupe-chaos run`: a local cluster, simulated editors with durable acks, a fault
//! schedule, and a checker that proves nothing was lost.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use std::io::IsTerminal;

use anyhow::{anyhow, Context};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use troupe_membership::{NodeId, NodeState};
use troupe_node::config::StoreLocation;
use troupe_node::store::Store;

use crate::bench::stats::percentile;
use crate::check::{fenced_rows, stored_scene_text};
use crate::client::{mint_token, Access, ClientOptions, EditorClient};
use crate::editor::{resolve, FinishedEditor, FollowingEditor};
use crate::launcher::{ClusterSpec, LocalCluster};
use crate::logs::Logs;
use crate::p1::check::{P1Report, P1Run};
use crate::p1::tables::P1Tables;
use crate::scenario::{FaultKind, PlannedFault, Scenario, SplitMix};
use crate::typing::Typing;
use crate::usage::{CpuCores, CpuTimeline};

pub struct RunOptions {
    pub scenario: Scenario,
    pub seed: u64,
    pub duration: Duration,
    pub base_port: u16,
    pub router_port: u16,
    pub data_dir: PathBuf,
    pub bin_dir: PathBuf,
    pub database_url: Option<String>,
}

/// What happened to one fault.
#[derive(Debug, Clone, Serialize)]
pub struct FaultReport {
    pub at_ms: u64,
    pub kind: FaultKind,
    pub target: String,
    pub fired: bool,
    pub note: String,
    /// From the fault until every editor it cut off had an edit stored again (0 when it
    /// cut nobody off).
    pub recovered_ms: Option<u64>,
    /// Editors whose connection was lost or stalled because of this fault.
    pub affected_editors: usize,
    /// Of those, the median and the 99th percentile of the time from the fault until an
    /// edit of theirs was stored again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered_p50_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered_p99_ms: Option<u64>,
    /// Scenes with an editor this fault cut off.
    pub scenes_cut_off: usize,
    /// Those scenes per second of the recovery (until the last editor was back): how fast
    /// the cluster rehydrated them, detection included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scenes_per_second: Option<f64>,
    /// What each part of the cluster, and the harness, used during the recovery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_cpu: Option<CpuCores>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub duration_ms: u64,
    pub nodes: u64,
    pub scenes: usize,
    pub editors: usize,
    pub faults: Vec<FaultReport>,
    pub edits_typed: usize,
    pub edits_acknowledged: usize,
    pub edits_lost: usize,
    pub divergent_scenes: Vec<String>,
    pub store_mismatches: Vec<String>,
    pub fenced_writes_accepted: usize,
    pub ack_latency_ms: Percentiles,
    pub recovery_ms: Percentiles,
    pub problems: Vec<String>,
    pub passed: bool,
    /// The P1 writers and the marker counts in the three places (scenarios with `[p1]`).
    pub p1: Option<P1Report>,
    #[serde(skip)]
    pub samples: Vec<(u64, Option<f64>)>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(mut values: Vec<f64>) -> Percentiles {
        values.retain(|v| v.is_finite());
        values.sort_by(|a, b| a.total_cmp(b));
        let at = |p: f64| {
            values
                .get(((values.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or(0.0)
        };
        Percentiles {
            count: values.len(),
            p50: at(0.5),
            p99: at(0.99),
            max: values.last().copied().unwrap_or(0.0),
        }
    }
}

pub async fn run(opts: RunOptions) -> anyhow::Result<Report> {
    let sc = &opts.scenario;
    let secret = format!(
        "chaos-secret-{:016x}-{:016x}",
        opts.seed,
        opts.seed.rotate_left(32)
    );
    let spec = ClusterSpec {
        nodes: sc.nodes,
        base_port: opts.base_port,
        router_port: opts.router_port,
        data_dir: opts.data_dir.clone(),
        database_url: opts.database_url.clone(),
        redis_port: sc.redis.then_some(opts.router_port.wrapping_add(1)),
        postgres: sc.postgres && opts.database_url.is_none(),
        secret: secret.clone(),
        bin_dir: opts.bin_dir.clone(),
        isolated: sc.needs_network(),
        demo: false,
        web_dir: None,
        logs: Logs::direct(),
    };
    let mut cluster = LocalCluster::start(&spec).await?;
    let router: SocketAddr = cluster
        .router_url
        .trim_start_matches("http://")
        .parse()
        .map_err(|_| anyhow!("bad router address {}", cluster.router_url))?;
    let token = mint_token(
        secret.as_bytes(),
        "chaos",
        &[("*", Access::Edit)],
        Duration::from_secs(24 * 3600),
    )?;
    let scenes: Vec<String> = (0..sc.scenes)
        .map(|i| format!("chaos-{}-{i}", opts.seed))
        .collect();
    // P1 scenes: seeded in P1's tables before anyone opens them; editors type into blocks.
    let p1_tables = match &sc.p1 {
        Some(_) => {
            let url = cluster
                .database_url()
                .context("a scenario with [p1] needs Postgres (postgres = true, or --database-url)")?;
            let tables = P1Tables::connect(&url).await?;
            crate::p1::seed(&tables, &scenes).await?;
            Some(tables)
        }
        None => None,
    };
    let typing = if sc.p1.is_some() {
        Typing::Blocks
    } else {
        Typing::Text
    };
    let mut editors = Vec::new();
    for (i, scene) in scenes.iter().enumerate() {
        for e in 0..sc.editors_per_scene {
            let prefix = format!("s{i}e{e}");
            let editor = FollowingEditor::start_following(
                router,
                scene,
                &token,
                &prefix,
                sc.typing_interval,
                typing,
                sc.watch_moves,
            )
            .await
            .with_context(|| format!("starting an editor of {scene}"))?;
            editors.push(editor);
        }
    }
    let writers = match (&sc.p1, &p1_tables) {
        (Some(config), Some(tables)) => {
            crate::p1::start_writers(config, &scenes, router, &token, tables, opts.seed)
        }
        _ => Vec::new(),
    };
    let cpu = CpuTimeline::start(cluster.postgres_pid_file());
    let started = Instant::now();
    let schedule = sc.schedule(opts.seed, opts.duration);
    let mut rng = SplitMix(opts.seed ^ 0x5eed);
    let mut faults: Vec<(Instant, FaultReport)> = Vec::new();
    // Work to do later: (when, what) — restarts after kills, thaws after pauses.
    let mut later: Vec<(Instant, Deferred)> = Vec::new();
    let mut next = 0;
    let progress = Progress::start(&cluster, opts.duration, schedule.len());
    while started.elapsed() < opts.duration {
        if let Some(progress) = &progress {
            let fired = faults.iter().filter(|(_, f)| f.fired).count();
            progress.show(
                started.elapsed(),
                fired,
                editors.iter().map(|e| e.acknowledged()).sum(),
                writers.iter().map(|w| w.acknowledged()).sum(),
            );
        }
        let now = Instant::now();
        let mut i = 0;
        while i < later.len() {
            if later[i].0 <= now {
                let (_, job) = later.remove(i);
                job.run(&mut cluster).await;
            } else {
                i += 1;
            }
        }
        if let Some(planned) = schedule.get(next) {
            if started.elapsed() >= planned.at {
                next += 1;
                let at = Instant::now();
                let report = inject(
                    &mut cluster,
                    planned,
                    &scenes,
                    router,
                    &mut rng,
                    &mut later,
                    Clock {
                        started,
                        restart_after: sc.restart_after,
                    },
                )
                .await;
                tracing::info!(kind = ?report.kind, target = %report.target, fired = report.fired, note = %report.note, "fault");
                faults.push((at, report));
            }
        }
        if let Some(name) = cluster.exited() {
            tracing::warn!(%name, "a process exited on its own");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(progress) = progress {
        progress.finish(&cluster);
    }
    let mut writer_logs = Vec::new();
    for writer in writers {
        writer_logs.push(writer.finish().await);
    }
    // Whatever was deferred happens now, so that the cluster is whole for the check.
    for (_, job) in later.drain(..) {
        job.run(&mut cluster).await;
    }
    settle(&cluster).await;

    // Everyone stops before anyone's text is read: an editor still typing while another's
    // text is taken would look like a divergence. Then every edit is acknowledged — and so
    // fanned out, which comes first — before the texts are read.
    let mut editors = editors;
    for editor in &mut editors {
        editor.stop_typing().await;
    }
    for editor in &editors {
        editor.settle().await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut finished = Vec::new();
    for editor in editors {
        finished.push(editor.finish().await?);
    }
    let store = open_store(&opts, cluster.database_url()).await?;
    let mut report = check(
        sc, &opts, started, &finished, faults, &store, router, &token, typing,
    )
    .await?;
    for fault in &mut report.faults {
        let Some(ms) = fault.recovered_ms.filter(|&ms| ms > 0) else {
            continue;
        };
        let at = started + Duration::from_millis(fault.at_ms);
        fault.recovery_cpu = cpu.cores_between(at, at + Duration::from_millis(ms));
        fault.scenes_per_second = Some(fault.scenes_cut_off as f64 * 1000.0 / ms as f64);
    }
    if let Some(tables) = &p1_tables {
        let p1 = crate::p1::check::check(P1Run {
            scenes: &scenes,
            editors: &finished,
            writers: &writer_logs,
            router,
            token: &token,
            tables,
        })
        .await;
        report.problems.extend(p1.problems.iter().cloned());
        report.passed = report.problems.is_empty();
        report.p1 = Some(p1);
    }
    cluster.stop();
    Ok(report)
}

/// A progress bar on a terminal (never in a log): time, faults fired, edits acknowledged.
struct Progress {
    bar: ProgressBar,
    planned: usize,
}

impl Progress {
    /// A bar on stderr if it is a terminal, with the cluster's logs printed above it.
    fn start(cluster: &LocalCluster, duration: Duration, faults: usize) -> Option<Progress> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let bar = ProgressBar::new(duration.as_secs().max(1));
        let style = ProgressStyle::with_template("{pos:>4}/{len} s [{bar:20}] {msg}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        cluster.logs().print_above(Some(bar.clone()));
        Some(Progress { bar, planned: faults })
    }

    fn show(&self, elapsed: Duration, fired: usize, acknowledged: usize, p1_saves: usize) {
        self.bar.set_position(elapsed.as_secs());
        let p1 = if p1_saves > 0 {
            format!(", {p1_saves} P1 saves")
        } else {
            String::new()
        };
        self.bar.set_message(format!(
            "faults {fired}/{}, {acknowledged} edits acknowledged{p1}",
            self.planned
        ));
    }

    fn finish(self, cluster: &LocalCluster) {
        cluster.logs().print_above(None);
        self.bar.finish_and_clear();
    }
}

/// Waits (bounded) until every node that runs is active again.
async fn settle(cluster: &LocalCluster) {
    let client = cluster.client();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(view) = client.view().await {
            let all_up = view
                .state
                .nodes
                .iter()
                .filter(|(id, _)| cluster.is_running(id.0))
                .all(|(_, n)| n.state == NodeState::Active);
            if all_up {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

enum Deferred {
    ResumePostgres,
    Restart(u64),
    Thaw(u64),
    Activate(u64),
    Rejoin(u64),
}

impl Deferred {
    async fn run(self, cluster: &mut LocalCluster) {
        match self {
            Deferred::ResumePostgres => {
                if let Err(error) = cluster.resume_postgres().await {
                    tracing::warn!(%error, "Postgres did not come back");
                }
            }
            Deferred::Restart(id) => {
                if let Err(error) = cluster.start_node(id).await {
                    tracing::warn!(id, %error, "restart failed");
                }
            }
            Deferred::Thaw(id) => {
                cluster.signal_node(id, "CONT");
            }
            Deferred::Activate(id) => {
                let _ = cluster.client().activate(NodeId(id)).await;
            }
            Deferred::Rejoin(id) => {
                if let Err(error) = cluster.rejoin(id) {
                    tracing::warn!(id, %error, "could not join the node to the network again");
                }
            }
        }
    }
}

/// When the run started, and how long a killed node stays down.
#[derive(Clone, Copy)]
struct Clock {
    started: Instant,
    restart_after: Duration,
}

async fn inject(
    cluster: &mut LocalCluster,
    planned: &PlannedFault,
    scenes: &[String],
    router: SocketAddr,
    rng: &mut SplitMix,
    later: &mut Vec<(Instant, Deferred)>,
    clock: Clock,
) -> FaultReport {
    let Clock {
        started,
        restart_after,
    } = clock;
    let mut report = FaultReport {
        at_ms: started.elapsed().as_millis() as u64,
        kind: planned.kind,
        target: String::new(),
        fired: false,
        note: String::new(),
        recovered_ms: None,
        affected_editors: 0,
        recovered_p50_ms: None,
        recovered_p99_ms: None,
        scenes_cut_off: 0,
        scenes_per_second: None,
        recovery_cpu: None,
    };
    let view = cluster.client().view().await.ok();
    let running: Vec<u64> = cluster
        .nodes
        .keys()
        .copied()
        .filter(|id| cluster.is_running(*id))
        .collect();
    let active: Vec<u64> = view
        .as_ref()
        .map(|v| {
            v.state
                .active_ids()
                .map(|id| id.0)
                .filter(|id| running.contains(id))
                .collect()
        })
        .unwrap_or_default();
    let pick = |rng: &mut SplitMix, from: &[u64]| {
        from.get((rng.next_u64() % from.len().max(1) as u64) as usize)
            .copied()
    };
    // Keep a majority of voters running: never take a second node down while one is out.
    let one_down = running.len() < cluster.nodes.len() || cluster.any_cut_off();
    let after = |d: u64| Instant::now() + Duration::from_millis(d);
    match planned.kind {
        FaultKind::KillNode | FaultKind::KillOwner | FaultKind::KillLeader => {
            if one_down {
                report.note = "skipped: a node is already down".into();
                return report;
            }
            let target = match planned.kind {
                FaultKind::KillLeader => view.as_ref().and_then(|v| v.leader).map(|id| id.0),
                FaultKind::KillOwner => match scenes.first() {
                    Some(scene) => resolve(router, scene).await.ok().map(|(node, _, _)| node),
                    None => None,
                },
                _ => pick(rng, &active),
            };
            let Some(id) = target else {
                report.note = "skipped: no target".into();
                return report;
            };
            report.target = format!("node {id}");
            report.fired = cluster.kill_node(id);
            later.push((Instant::now() + restart_after, Deferred::Restart(id)));
        }
        FaultKind::PartitionNode => {
            let owner = match scenes.first() {
                Some(scene) => resolve(router, scene).await.ok().map(|(node, _, _)| node),
                None => None,
            };
            let Some(id) = owner.filter(|_| !one_down && active.len() > 1) else {
                report.note = "skipped: no node to cut off".into();
                return report;
            };
            report.target = format!("node {id}");
            match cluster.cut_off(id) {
                Ok(true) => {
                    report.fired = true;
                    later.push((after(4000), Deferred::Rejoin(id)));
                }
                Ok(false) => report.note = "skipped: the nodes are not in network namespaces".into(),
                Err(e) => report.note = format!("cut off failed: {e:#}"),
            }
        }
        FaultKind::Zombie => {
            let leader = view.as_ref().and_then(|v| v.leader).map(|id| id.0);
            let candidates: Vec<u64> = active.iter().copied().filter(|id| Some(*id) != leader).collect();
            let Some(id) = pick(rng, &candidates).filter(|_| !one_down && active.len() > 1) else {
                report.note = "skipped: no node to pause".into();
                return report;
            };
            report.target = format!("node {id}");
            report.fired = cluster.signal_node(id, "STOP");
            tokio::time::sleep(Duration::from_millis(300)).await;
            if let Err(e) = cluster.client().drain(NodeId(id)).await {
                report.note = format!("drain while paused failed: {e}");
            }
            later.push((after(2500), Deferred::Thaw(id)));
            later.push((after(4000), Deferred::Activate(id)));
        }
        FaultKind::RestartNode => {
            let Some(id) = pick(rng, &active).filter(|_| !one_down) else {
                report.note = "skipped: a node is already down".into();
                return report;
            };
            report.target = format!("node {id}");
            report.fired = cluster.signal_node(id, "TERM");
            // It flushes and exits; the restart follows once it is gone.
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && cluster.exited().as_deref() != Some(&format!("node {id}")) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            cluster.kill_node(id);
            later.push((after(500), Deferred::Restart(id)));
        }
        FaultKind::AddNode => match cluster.add_node().await {
            Ok(id) => {
                report.target = format!("node {id}");
                report.fired = true;
            }
            Err(e) => report.note = format!("add failed: {e:#}"),
        },
        FaultKind::DrainNode => {
            let Some(id) = pick(rng, &active).filter(|_| active.len() > 1) else {
                report.note = "skipped: one active node".into();
                return report;
            };
            report.target = format!("node {id}");
            match cluster.client().drain(NodeId(id)).await {
                Ok(_) => {
                    report.fired = true;
                    later.push((after(2500), Deferred::Activate(id)));
                }
                Err(e) => report.note = format!("drain failed: {e}"),
            }
        }
        FaultKind::RemoveNode => {
            let learners: Vec<u64> = view
                .as_ref()
                .map(|v| {
                    v.learners
                        .iter()
                        .map(|id| id.0)
                        .filter(|id| running.contains(id))
                        .collect()
                })
                .unwrap_or_default();
            let Some(id) = pick(rng, &learners) else {
                report.note = "skipped: no learner to remove (add one first)".into();
                return report;
            };
            report.target = format!("node {id}");
            match cluster.client().remove(NodeId(id)).await {
                Ok(_) => {
                    report.fired = true;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    cluster.forget_node(id);
                }
                Err(e) => report.note = format!("remove failed: {e}"),
            }
        }
        FaultKind::RestartPostgres => match cluster.pause_postgres().await {
            Ok(true) => {
                report.target = "postgres".into();
                report.fired = true;
                later.push((after(3000), Deferred::ResumePostgres));
            }
            Ok(false) => report.note = "skipped: this scenario does not run its own Postgres".into(),
            Err(e) => report.note = format!("postgres restart failed: {e:#}"),
        },
        FaultKind::RestartRedis => match cluster.restart_redis().await {
            Ok(true) => {
                report.target = "redis".into();
                report.fired = true;
            }
            Ok(false) => report.note = "skipped: this scenario runs without Redis".into(),
            Err(e) => report.note = format!("redis restart failed: {e:#}"),
        },
    }
    report
}

async fn open_store(opts: &RunOptions, database_url: Option<String>) -> anyhow::Result<Store> {
    let location = match &database_url {
        Some(url) => StoreLocation::Postgres(url.clone()),
        None => StoreLocation::Sqlite(opts.data_dir.join("troupe.sqlite3")),
    };
    Ok(Store::open(&location).await?)
}

#[allow(clippy::too_many_arguments)]
async fn check(
    sc: &Scenario,
    opts: &RunOptions,
    started: Instant,
    finished: &[FinishedEditor],
    faults: Vec<(Instant, FaultReport)>,
    store: &Store,
    router: SocketAddr,
    token: &str,
    typing: Typing,
) -> anyhow::Result<Report> {
    let mut problems = Vec::new();
    let (mut typed, mut lost) = (0, 0);
    let mut by_scene: BTreeMap<&str, Vec<&FinishedEditor>> = BTreeMap::new();
    for f in finished {
        by_scene.entry(f.scene.as_str()).or_default().push(f);
        typed += f.typed.len();
        for item in &f.typed {
            if f.text.matches(item.as_str()).count() != 1 {
                lost += 1;
            }
        }
    }
    if lost > 0 {
        problems.push(format!("{lost} edits missing or doubled in their scene"));
    }
    let mut divergent = Vec::new();
    let mut mismatched = Vec::new();
    let mut fenced = 0;
    for (scene, eds) in &by_scene {
        if let Some(w) = eds.windows(2).find(|w| w[0].text != w[1].text) {
            divergent.push(scene.to_string());
            problems.push(format!(
                "{scene}: editors differ: {}",
                difference(&w[0].text, &w[1].text)
            ));
        }
        let reference = eds.first().map(|e| e.text.as_str()).unwrap_or_default();
        // A fresh client through the router…
        match fresh_text(router, scene, token, typing).await {
            Ok(fresh) if fresh == reference => {}
            Ok(fresh) => mismatched.push(format!(
                "{scene}: a fresh client read other text than the first editor: {}",
                difference(reference, &fresh)
            )),
            Err(e) => mismatched.push(format!("{scene}: a fresh client could not read: {e:#}")),
        }
        // …and the store agree with the editors.
        match stored_scene_text(store, scene, typing).await {
            Ok(text) if text == reference => {}
            Ok(text) => mismatched.push(format!(
                "{scene}: the store holds other text than the first editor: {}",
                difference(reference, &text)
            )),
            Err(e) => mismatched.push(format!("{scene}: cannot rebuild from the store: {e}")),
        }
        fenced += fenced_rows(store, scene).await.map(|r| r.len()).unwrap_or(0);
    }
    if !divergent.is_empty() {
        problems.push(format!("{} scenes diverged", divergent.len()));
    }
    problems.extend(mismatched.iter().cloned());
    if fenced > 0 {
        problems.push(format!("{fenced} appends from fenced owners were accepted"));
    }

    // Recovery. The editors a fault cut off (an outage that began with it) are back when an
    // edit they sent after reconnecting is stored; every other editor must simply have an
    // edit stored after the fault.
    let mut reports = Vec::new();
    let mut recoveries = Vec::new();
    let ends: Vec<Instant> = faults.iter().skip(1).map(|(at, _)| *at).collect();
    for (i, (at, mut report)) in faults.into_iter().enumerate() {
        if !(report.fired && report.kind.disconnects()) {
            reports.push(report);
            continue;
        }
        let until = ends.get(i).copied().unwrap_or(at + Duration::from_secs(15));
        let mut affected = 0;
        let mut scenes_cut_off = std::collections::HashSet::new();
        let mut backs = Vec::new();
        let mut worst = Some(Duration::ZERO);
        // The editor back last: which scene, and when it was synced again.
        let mut slowest: Option<(Duration, &str, Duration)> = None;
        for f in finished {
            let cut_off = f
                .outages
                .iter()
                .find(|o| o.began + OUTAGE_SLACK >= at && o.began < until);
            let since = cut_off.map_or(at, |o| o.began + o.lasted);
            affected += usize::from(cut_off.is_some());
            if cut_off.is_some() {
                scenes_cut_off.insert(f.scene.as_str());
            }
            let back = stored_after(f, since).map(|t| t.saturating_duration_since(at));
            if let (Some(b), Some(outage)) = (back, cut_off) {
                backs.push(b);
                if slowest.as_ref().is_none_or(|(s, _, _)| b > *s) {
                    let synced = (outage.began + outage.lasted).saturating_duration_since(at);
                    slowest = Some((b, f.scene.as_str(), synced));
                }
            }
            worst = match (worst, back) {
                (Some(w), Some(b)) if cut_off.is_some() => Some(w.max(b)),
                (Some(w), Some(_)) => Some(w),
                _ => None,
            };
        }
        if let Some((back, scene, synced)) = slowest {
            tracing::info!(
                fault = ?report.kind,
                %scene,
                synced_ms = synced.as_millis() as u64,
                back_ms = back.as_millis() as u64,
                "the editor back last: synced again, then its first edit stored"
            );
        }
        report.affected_editors = affected;
        report.scenes_cut_off = scenes_cut_off.len();
        backs.sort();
        let ms = |p: f64| percentile(&backs, p).map(|d| d.as_millis() as u64);
        report.recovered_p50_ms = ms(50.0);
        report.recovered_p99_ms = ms(99.0);
        match worst {
            Some(w) if affected > 0 => {
                report.recovered_ms = Some(w.as_millis() as u64);
                recoveries.push(w.as_secs_f64() * 1000.0);
            }
            Some(_) => report.recovered_ms = Some(0),
            None => problems.push(format!(
                "no recovery after {:?} of {} at {} ms",
                report.kind, report.target, report.at_ms
            )),
        }
        reports.push(report);
    }
    let planned = sc.schedule(opts.seed, opts.duration).len();
    let fired = reports.iter().filter(|r| r.fired).count();
    // A run whose faults did not happen proves nothing: most of them must fire.
    if planned > 0 && fired * 2 < planned {
        problems.push(format!("only {fired} of {planned} planned faults fired"));
    }

    let mut samples = Vec::new();
    let mut latencies = Vec::new();
    let mut acknowledged = 0;
    for f in finished {
        for (sent, lat) in &f.acks {
            let at_ms = sent.saturating_duration_since(started).as_millis() as u64;
            let ms = lat.map(|d| d.as_secs_f64() * 1000.0);
            if let Some(ms) = ms {
                latencies.push(ms);
                acknowledged += 1;
            }
            samples.push((at_ms, ms));
        }
    }
    Ok(Report {
        scenario: sc.name.clone(),
        seed: opts.seed,
        duration_ms: opts.duration.as_millis() as u64,
        nodes: sc.nodes,
        scenes: sc.scenes,
        editors: finished.len(),
        faults: reports,
        edits_typed: typed,
        edits_acknowledged: acknowledged,
        edits_lost: lost,
        divergent_scenes: divergent,
        store_mismatches: mismatched,
        fenced_writes_accepted: fenced,
        ack_latency_ms: Percentiles::of(latencies),
        recovery_ms: Percentiles::of(recoveries),
        passed: problems.is_empty(),
        problems,
        p1: None,
        samples,
    })
}

/// An editor's outage counts for a fault when it began at most this long before it (the
/// stall of a frozen owner is dated from the first unacknowledged edit).
const OUTAGE_SLACK: Duration = Duration::from_millis(300);

/// When the first edit `f` sent at or after `since` was stored (acknowledged).
fn stored_after(f: &FinishedEditor, since: Instant) -> Option<Instant> {
    f.acks
        .iter()
        .filter(|(sent, _)| *sent >= since)
        .find_map(|(sent, lat)| lat.map(|l| *sent + l))
}

async fn fresh_text(router: SocketAddr, scene: &str, token: &str, typing: Typing) -> anyhow::Result<String> {
    let (_, url, _) = resolve(router, scene).await?;
    let client = EditorClient::connect(
        &format!("{url}/ws/scenes"),
        scene,
        token,
        ClientOptions::default(),
    )
    .await?;
    client.wait_synced(Duration::from_secs(10)).await?;
    let text = client.read(move |txn| typing.read(txn)).await?;
    let _ = client.close(1000, "checked").await;
    Ok(text)
}

/// Where two texts part: their lengths and 60 bytes of each from the first difference.
fn difference(a: &str, b: &str) -> String {
    let at = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    let window = |s: &str| {
        let mut start = at.min(s.len());
        while !s.is_char_boundary(start) {
            start -= 1;
        }
        let mut end = (start + 60).min(s.len());
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[start..end].to_string()
    };
    format!(
        "{} vs {} bytes, first difference at byte {at}: {:?} vs {:?}",
        a.len(),
        b.len(),
        window(a),
        window(b)
    )
}
