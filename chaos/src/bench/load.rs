//! A load run: simulated editors on many scenes of a y-websocket server (a Troupe node or
//! cluster, or the reference server), typing at a fixed rate; the report says how fast
//! their edits fanned out to the other editors of their scene and what it cost the server.
//!
//! A run connects every editor (and types the initial text), then measures one window:
//! warm-up, measured window, drain. A ramp ([`super::ramp`]) measures several windows with
//! the same editors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{future, stream, StreamExt, TryStreamExt};

use super::procfs::{self, CpuTimes};
use super::report::{AuxUsage, Load, Report, ServerUsage};
use super::stats::Summary;
use super::tally::{tally, Window};
use super::target::{Target, TargetError};
use super::typist::{Connect, Plan, Typist, TypistError};
use crate::client::{mint_token, Access, SharedFirstSync};

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// `ws://…` (scenes at `{url}/{scene}`) or a router's `http://host:port`.
    pub url: String,
    pub scenes: u32,
    /// Editors per scene.
    pub editors: u32,
    /// Of each scene's editors, how many type (the first ones); the others only watch.
    pub writers: u32,
    /// Edits per second per editor (0: none, for memory measurements).
    pub rate: f64,
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// Listening after the last edit, for late deliveries.
    pub drain: Duration,
    /// Mint each editor an HS256 token with this secret (scenes: `{"*": "edit"}`).
    pub jwt_secret: Option<String>,
    /// Use this token for every editor (wins over `jwt_secret`).
    pub token: Option<String>,
    /// Scene ids are `{prefix}-{n}` (default: `load-<random>`, so runs never share rooms).
    pub scene_prefix: Option<String>,
    /// Name of the `Y.Text` the editors type into.
    pub text: String,
    /// Bytes of text the first editor of each scene types before anything is measured.
    pub initial_text: usize,
    /// Server processes: CPU (`/proc/PID/stat`) and RSS summed.
    pub pids: Vec<u32>,
    /// Helper process trees whose CPU is reported separately (e.g. the Postgres postmaster).
    pub aux_pids: Vec<u32>,
    /// Ask for durable acks (`acks=1`, Troupe only) and measure send -> ack.
    pub acks: bool,
    /// Name of the run in reports.
    pub label: String,
    /// Connections opened at once.
    pub connect_concurrency: usize,
    /// Time each editor may take to connect and sync.
    pub sync_timeout: Duration,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            url: "ws://127.0.0.1:4000/ws/scenes".into(),
            scenes: 20,
            editors: 5,
            writers: 5,
            rate: 2.0,
            warmup: Duration::from_secs(5),
            duration: Duration::from_secs(30),
            drain: Duration::from_secs(3),
            jwt_secret: None,
            token: None,
            scene_prefix: None,
            text: "text".into(),
            initial_text: 0,
            pids: Vec::new(),
            aux_pids: Vec::new(),
            acks: false,
            label: "server".into(),
            connect_concurrency: 16,
            sync_timeout: Duration::from_secs(30),
        }
    }
}

/// The largest initial text: a room far beyond this is not what a load run measures.
const MAX_INITIAL_TEXT: usize = 8 << 20;

/// Pause before the loaded RSS is read, so that the server has applied the initial text.
const SETTLE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Options(String),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("editor {id} ({scene})")]
    Editor {
        id: u32,
        scene: String,
        #[source]
        source: Box<TypistError>,
    },
    #[error("minting a token: {0}")]
    Token(#[from] jsonwebtoken::errors::Error),
    #[error("process {0} is not running (or /proc is not readable)")]
    Process(u32),
    #[error("the initial text did not reach every editor of {0} in time")]
    InitialText(String),
    #[error("an editor task failed: {0}")]
    Task(String),
}

impl LoadOptions {
    /// Refuses what cannot be run.
    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |s: &str| Err(LoadError::Options(s.to_owned()));
        if self.scenes == 0 || self.editors == 0 {
            return bad("--scenes and --editors must be at least 1");
        }
        if self.writers == 0 || self.writers > self.editors {
            return bad("--writers must be between 1 and --editors");
        }
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            return bad("--rate must be a number >= 0");
        }
        if self.rate > 1000.0 {
            return bad("--rate is per editor; above 1000 edits/s it measures the load generator");
        }
        if self.duration.is_zero() {
            return bad("--duration must be positive");
        }
        if self.initial_text > MAX_INITIAL_TEXT {
            return bad("--initial-text is at most 8 MiB");
        }
        if self.text.is_empty() {
            return bad("--text must name a Y.Text");
        }
        if let Some(prefix) = &self.scene_prefix {
            let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
            if prefix.is_empty() || !prefix.chars().all(ok) {
                return bad("--scene-prefix may hold letters, digits, '-', '_' and '.'");
            }
        }
        Target::parse(&self.url)?;
        Ok(())
    }

    /// The load as reports describe it.
    fn load(&self, rate: f64) -> Load {
        Load {
            scenes: self.scenes,
            editors_per_scene: self.editors,
            writers_per_scene: Some(self.writers),
            rate,
            warmup_s: self.warmup.as_secs_f64(),
            duration_s: self.duration.as_secs_f64(),
            acks: self.acks,
            initial_text_bytes: self.initial_text,
        }
    }
}

/// Connects the editors, measures one window at `opts.rate`, and disconnects.
pub async fn run(opts: &LoadOptions) -> Result<Report, LoadError> {
    let mut session = Session::connect(opts).await?;
    let report = session.step(opts.rate).await;
    session.close().await;
    report
}

/// Connected editors, measured window after window.
pub(crate) struct Session<'a> {
    opts: &'a LoadOptions,
    /// Editor `i` is `typists[i]`, of scene `i / editors`.
    typists: Vec<Typist>,
    /// Zero of the markers' clock.
    epoch: Instant,
    /// Start of the first measured window: zero of the picture and the timelines.
    origin: Option<Instant>,
    connect_s: f64,
    connect_ms: Summary,
    /// Moves followed while connecting, reported with the first window.
    connect_moves: u64,
    rss_before: u64,
    rss_loaded: u64,
}

impl<'a> Session<'a> {
    /// Connects and syncs every editor, types the initial text, and reads the servers' RSS
    /// before and after.
    pub async fn connect(opts: &'a LoadOptions) -> Result<Session<'a>, LoadError> {
        opts.validate()?;
        let target = Arc::new(Target::parse(&opts.url)?);
        for &pid in &opts.aux_pids {
            procfs::cpu_times(pid).ok_or(LoadError::Process(pid))?;
        }
        let rss_before = rss_sum(&opts.pids)?;
        let epoch = Instant::now();
        let prefix = opts
            .scene_prefix
            .clone()
            .unwrap_or_else(|| format!("load-{:08x}", rand::random::<u32>()));
        let total = opts.scenes * opts.editors;
        tracing::info!(
            label = %opts.label,
            url = %opts.url,
            "connecting {total} editors ({} scenes x {})",
            opts.scenes,
            opts.editors
        );
        let text: Arc<str> = opts.text.as_str().into();
        let first_syncs: Vec<SharedFirstSync> =
            (0..opts.scenes).map(|_| SharedFirstSync::default()).collect();
        let connected: Vec<(Typist, u64, u64)> = stream::iter(0..total)
            .map(|id| {
                let scene = format!("{prefix}-{}", id / opts.editors);
                let first_sync = first_syncs[(id / opts.editors) as usize].clone();
                let target = target.clone();
                let text = text.clone();
                async move {
                    let began = Instant::now();
                    let token = token_for(opts, id)?;
                    let connect = Connect {
                        id,
                        scene: scene.clone(),
                        token,
                        acks: opts.acks,
                        text,
                        target,
                        sync_timeout: opts.sync_timeout,
                        first_sync,
                    };
                    let (typist, moves) = Typist::connect(connect).await.map_err(|e| LoadError::Editor {
                        id,
                        scene,
                        source: Box::new(e),
                    })?;
                    Ok::<_, LoadError>((typist, moves, began.elapsed().as_micros() as u64))
                }
            })
            .buffer_unordered(opts.connect_concurrency.max(1))
            .try_collect()
            .await?;
        let connect_s = epoch.elapsed().as_secs_f64();
        let connect_moves = connected.iter().map(|(_, moves, _)| moves).sum();
        let mut sync_micros: Vec<u64> = connected.iter().map(|(_, _, us)| *us).collect();
        let connect_ms = Summary::from_micros(&mut sync_micros);
        let mut typists: Vec<Typist> = connected.into_iter().map(|(t, _, _)| t).collect();
        typists.sort_by_key(|t| t.id);
        tracing::info!(label = %opts.label, "all editors synced in {connect_s:.2} s");
        let mut session = Session {
            opts,
            typists,
            epoch,
            origin: None,
            connect_s,
            connect_ms,
            connect_moves,
            rss_before,
            rss_loaded: rss_before,
        };
        if opts.initial_text > 0 {
            if let Err(e) = session.type_initial_text().await {
                session.close().await;
                return Err(e);
            }
        }
        if !opts.pids.is_empty() {
            tokio::time::sleep(SETTLE).await;
            session.rss_loaded = rss_sum(&opts.pids)?;
        }
        Ok(session)
    }

    /// The first editor of each scene types `initial_text` bytes; returns once every other
    /// editor of the scene has them.
    async fn type_initial_text(&self) -> Result<(), LoadError> {
        let o = self.opts;
        let filler = filler(o.initial_text);
        let scenes: Vec<&[Typist]> = self.typists.chunks(o.editors as usize).collect();
        for editors in &scenes {
            let first = &editors[0];
            first
                .client
                .push(&o.text, &filler)
                .await
                .map_err(|e| LoadError::Editor {
                    id: first.id,
                    scene: first.scene.clone(),
                    source: Box::new(e.into()),
                })?;
        }
        let deadline = tokio::time::Instant::now() + o.sync_timeout;
        for editors in &scenes {
            let want = editors[0]
                .client
                .text(&o.text)
                .await
                .map(|t| t.len())
                .unwrap_or(0);
            for other in &editors[1..] {
                loop {
                    let have = other.client.text(&o.text).await.map(|t| t.len()).unwrap_or(0);
                    if have >= want {
                        break;
                    }
                    if tokio::time::Instant::now() > deadline {
                        return Err(LoadError::InitialText(other.scene.clone()));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        Ok(())
    }

    /// One window at `rate` edits/s per editor: warm-up, measured window, drain.
    pub async fn step(&mut self, rate: f64) -> Result<Report, LoadError> {
        let o = self.opts;
        let start = Instant::now() + Duration::from_millis(200);
        let window_start = start + o.warmup;
        let window_end = window_start + o.duration;
        let origin = *self.origin.get_or_insert(window_start);
        let plan = Plan {
            epoch: self.epoch,
            start,
            window_end,
            end: window_end + o.drain,
            period: (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate)),
            acks: o.acks,
        };
        let (editors, writers) = (o.editors as usize, o.writers as usize);
        let tasks: Vec<_> = self
            .typists
            .drain(..)
            .enumerate()
            .map(|(i, t)| {
                let watches = i % editors >= writers;
                let plan = Plan {
                    period: if watches { None } else { plan.period },
                    ..plan
                };
                tokio::spawn(t.step(plan))
            })
            .collect();

        tokio::time::sleep_until(window_start.into()).await;
        tracing::info!(label = %o.label, rate, "measuring for {:?}", o.duration);
        let before = CpuSample::take(o);
        tokio::time::sleep_until(window_end.into()).await;
        let after = CpuSample::take(o);
        let rss_after = rss_sum(&o.pids);

        let mut results = Vec::with_capacity(tasks.len());
        let mut failed = None;
        for task in tasks {
            match task.await {
                Ok((typist, result)) => {
                    self.typists.push(typist);
                    results.push(result);
                }
                Err(e) => failed = Some(e.to_string()),
            }
        }
        if let Some(e) = failed {
            return Err(LoadError::Task(e));
        }
        let rss_after = rss_after?;

        let window = Window {
            start_us: plan.micros(window_start),
            end_us: plan.micros(window_end),
            origin_us: plan.micros(origin),
        };
        let t = tally(&results, o.editors, window, o.acks);
        let duration_s = o.duration.as_secs_f64();
        let per_delivery =
            |cpu_s: f64| (t.window_deliveries > 0).then(|| cpu_s * 1e6 / t.window_deliveries as f64);
        let server = if o.pids.is_empty() {
            None
        } else {
            let cpu = after.server_since(&before)?;
            let (cpu_s, user_cpu_s, system_cpu_s) = (
                cpu.total().as_secs_f64(),
                cpu.user.as_secs_f64(),
                cpu.system.as_secs_f64(),
            );
            Some(ServerUsage {
                pids: o.pids.clone(),
                cpu_s,
                cpu_us_per_delivery: per_delivery(cpu_s),
                user_cpu_s,
                system_cpu_s,
                user_us_per_delivery: per_delivery(user_cpu_s),
                system_us_per_delivery: per_delivery(system_cpu_s),
                rss_before_bytes: self.rss_before,
                rss_loaded_bytes: self.rss_loaded,
                rss_after_bytes: rss_after,
                rss_peak_bytes: o.pids.iter().filter_map(|&pid| procfs::peak_rss_bytes(pid)).sum(),
                rss_per_room_bytes: (self.rss_loaded as i64 - self.rss_before as i64) / i64::from(o.scenes),
            })
        };
        let aux = o
            .aux_pids
            .iter()
            .zip(before.aux.iter().zip(&after.aux))
            .map(|(&pid, (a0, a1))| {
                let cpu_s = procfs::tree_cpu_delta(a0, a1).as_secs_f64();
                AuxUsage {
                    pid,
                    cpu_s,
                    cpu_us_per_delivery: per_delivery(cpu_s),
                }
            })
            .collect();
        let bench_cpu_s = match (before.bench, after.bench) {
            (Some(a), Some(b)) => b.since(a).total().as_secs_f64(),
            _ => 0.0,
        };
        let since_origin = |at: Instant| at.saturating_duration_since(origin).as_secs_f64();
        Ok(Report {
            label: o.label.clone(),
            url: o.url.clone(),
            load: o.load(rate),
            connect_s: self.connect_s,
            connect_ms: self.connect_ms,
            window_start_s: since_origin(window_start),
            window_end_s: since_origin(window_end),
            edits_sent: t.edits_sent,
            deliveries_expected: t.deliveries_expected,
            deliveries: t.deliveries,
            missing: t.missing,
            duplicates: t.duplicates,
            window_deliveries: t.window_deliveries,
            deliveries_per_s: t.window_deliveries as f64 / duration_s,
            latency_ms: t.latency,
            ack_latency_ms: t.ack_latency,
            server,
            aux,
            bench_cpu_s,
            errors: t.disconnects + t.protocol_errors + t.send_failures,
            disconnects: t.disconnects,
            close_codes: t.close_codes,
            protocol_errors: t.protocol_errors,
            send_failures: t.send_failures,
            moved: t.moved + std::mem::take(&mut self.connect_moves),
            timeline: t.timeline,
            samples: t.samples,
        })
    }

    /// Closes every connection.
    pub async fn close(&self) {
        future::join_all(self.typists.iter().map(Typist::close)).await;
    }
}

/// The token of editor `id`: the given one, one minted with the secret, or none.
fn token_for(opts: &LoadOptions, id: u32) -> Result<String, LoadError> {
    match (&opts.token, &opts.jwt_secret) {
        (Some(token), _) => Ok(token.clone()),
        (None, Some(secret)) => Ok(mint_token(
            secret.as_bytes(),
            &format!("load-{id}"),
            &[("*", Access::Edit)],
            Duration::from_secs(7 * 24 * 3600),
        )?),
        (None, None) => Ok(String::new()),
    }
}

/// `bytes` bytes of screenplay-ish ASCII text (never a marker's `<`).
fn filler(bytes: usize) -> String {
    const LINE: &str = "INT. KITCHEN - NIGHT. Ada pours coffee and reads the draft again. ";
    LINE.chars().cycle().take(bytes).collect()
}

/// Summed VmRSS of the processes (0 for none).
fn rss_sum(pids: &[u32]) -> Result<u64, LoadError> {
    pids.iter()
        .map(|&pid| procfs::rss_bytes(pid).ok_or(LoadError::Process(pid)))
        .sum()
}

/// CPU times at one edge of the measured window.
struct CpuSample {
    /// Per `--pid`; `None` when the process was gone.
    server: Vec<(u32, Option<CpuTimes>)>,
    aux: Vec<std::collections::HashMap<u32, u64>>,
    bench: Option<CpuTimes>,
}

impl CpuSample {
    fn take(opts: &LoadOptions) -> CpuSample {
        CpuSample {
            server: opts.pids.iter().map(|&p| (p, procfs::cpu_times(p))).collect(),
            aux: opts.aux_pids.iter().map(|&p| procfs::tree_cpu(p)).collect(),
            bench: procfs::cpu_times(std::process::id()),
        }
    }

    /// CPU the server processes used since `before`.
    fn server_since(&self, before: &CpuSample) -> Result<CpuTimes, LoadError> {
        let mut total = CpuTimes::default();
        for ((pid, t1), (_, t0)) in self.server.iter().zip(&before.server) {
            match (t0, t1) {
                (Some(t0), Some(t1)) => total += t1.since(*t0),
                _ => return Err(LoadError::Process(*pid)),
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked() {
        let ok = LoadOptions::default();
        assert!(ok.validate().is_ok());
        let cases = [
            LoadOptions {
                scenes: 0,
                ..LoadOptions::default()
            },
            LoadOptions {
                rate: f64::NAN,
                ..LoadOptions::default()
            },
            LoadOptions {
                duration: Duration::ZERO,
                ..LoadOptions::default()
            },
            LoadOptions {
                scene_prefix: Some("a/b".into()),
                ..LoadOptions::default()
            },
            LoadOptions {
                url: "ftp://x".into(),
                ..LoadOptions::default()
            },
        ];
        for o in cases {
            assert!(o.validate().is_err(), "{o:?}");
        }
        assert!(LoadOptions {
            writers: 6,
            ..LoadOptions::default()
        }
        .validate()
        .is_err());
        let memory = LoadOptions {
            rate: 0.0,
            editors: 1,
            writers: 1,
            ..LoadOptions::default()
        };
        assert!(memory.validate().is_ok());
    }

    #[test]
    fn filler_is_exact_and_marker_free() {
        let f = filler(2048);
        assert_eq!(f.len(), 2048);
        assert!(!f.contains('<'));
        assert!(filler(0).is_empty());
    }
}
