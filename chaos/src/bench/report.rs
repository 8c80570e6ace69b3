//! The results of a load run (one report per measured window, a ramp's steps together),
//! and the side-by-side comparison of several runs.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::stats::{median, Summary};
use crate::chart::Sample;

/// The load a run applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Load {
    pub scenes: u32,
    pub editors_per_scene: u32,
    /// Of those, how many type (the others watch); absent in older reports: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writers_per_scene: Option<u32>,
    /// Edits per second per editor.
    pub rate: f64,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub acks: bool,
    /// Bytes of text the first editor of each scene typed before measuring.
    pub initial_text_bytes: usize,
}

/// CPU and memory of the server processes (`--pid`, summed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerUsage {
    pub pids: Vec<u32>,
    /// utime + stime over the measured window.
    pub cpu_s: f64,
    /// `cpu_s` divided by the deliveries received in the window, in microseconds (none
    /// without deliveries).
    pub cpu_us_per_delivery: Option<f64>,
    /// The user-space part of `cpu_s` (utime). Defaults to 0 in reports written before
    /// the split.
    #[serde(default)]
    pub user_cpu_s: f64,
    /// The kernel part of `cpu_s` (stime).
    #[serde(default)]
    pub system_cpu_s: f64,
    /// `user_cpu_s` per delivery, in microseconds (none without deliveries).
    pub user_us_per_delivery: Option<f64>,
    /// `system_cpu_s` per delivery, in microseconds (none without deliveries).
    pub system_us_per_delivery: Option<f64>,
    /// VmRSS before the editors connected.
    pub rss_before_bytes: u64,
    /// VmRSS once every editor was synced and the initial text loaded.
    pub rss_loaded_bytes: u64,
    /// VmRSS at the end of the measured window.
    pub rss_after_bytes: u64,
    /// VmHWM at the end: the highest RSS since the process started (a join storm's peak).
    #[serde(default)]
    pub rss_peak_bytes: u64,
    /// `(rss_loaded_bytes - rss_before_bytes) / scenes`: what a loaded room with its
    /// editors costs.
    pub rss_per_room_bytes: i64,
}

/// CPU of a helper process tree (e.g. the PostgreSQL server behind Troupe).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuxUsage {
    pub pid: u32,
    pub cpu_s: f64,
    pub cpu_us_per_delivery: Option<f64>,
}

/// Fan-out latency of the edits sent in one second of the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Second {
    /// Seconds since the (first) measured window started.
    pub at_s: u64,
    pub deliveries: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Everything one measured window showed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub label: String,
    pub url: String,
    pub load: Load,
    /// Time to connect and sync every editor.
    pub connect_s: f64,
    /// Each editor's time from starting to connect until synced (with as many editors
    /// connecting at once as `--connect-concurrency` allows).
    #[serde(default)]
    pub connect_ms: Summary,
    /// The window, in seconds since the (first) window of the run started.
    pub window_start_s: f64,
    pub window_end_s: f64,
    /// Edits sent during the measured window.
    pub edits_sent: u64,
    /// `edits_sent x (editors_per_scene - 1)`.
    pub deliveries_expected: u64,
    /// Deliveries of window edits to other editors (received up to the end of the drain).
    pub deliveries: u64,
    pub missing: u64,
    pub duplicates: u64,
    /// Deliveries (of any edit) received during the window; the CPU denominator.
    pub window_deliveries: u64,
    /// Sustained rate: `window_deliveries / duration`.
    pub deliveries_per_s: f64,
    /// Fan-out latency: send at one editor -> receive at another (none without deliveries).
    pub latency_ms: Option<Summary>,
    /// Send -> durable ack (with `--acks`).
    pub ack_latency_ms: Option<Summary>,
    pub server: Option<ServerUsage>,
    pub aux: Vec<AuxUsage>,
    /// CPU of the load generator itself over the window.
    pub bench_cpu_s: f64,
    /// `disconnects + protocol_errors + send_failures`.
    pub errors: u64,
    /// Editors whose connection ended before the run did (other than by a move).
    pub disconnects: u64,
    /// Close codes seen on those connections (code, count).
    pub close_codes: Vec<(String, u64)>,
    pub protocol_errors: u64,
    /// Edits that could not be made.
    pub send_failures: u64,
    /// 4301 closes followed to the scene's new owner (while connecting, in the first report).
    pub moved: u64,
    /// Per second of the window, by send time.
    pub timeline: Vec<Second>,
    /// Every delivery of a window edit (by send time, ms since the first window started), and
    /// one empty sample per missing delivery: the picture's dots. Not saved.
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

fn kib(bytes: f64) -> f64 {
    bytes / 1024.0
}

/// `p50 … p99 … max …`, or "none" without samples.
fn latency_line(summary: &Option<Summary>) -> String {
    match summary {
        Some(l) => format!(
            "p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (mean {:.2} ms, {} samples)",
            l.p50, l.p95, l.p99, l.max, l.mean, l.count
        ),
        None => "none (no deliveries)".to_owned(),
    }
}

fn per_delivery(us: Option<f64>) -> String {
    us.map_or_else(
        || "none (no deliveries)".to_owned(),
        |us| format!("{us:.1} us/delivery"),
    )
}

impl Report {
    /// A few lines for people.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let l = &self.load;
        let _ = writeln!(s, "troupe-chaos load [{}] {}", self.label, self.url);
        let _ = writeln!(
            s,
            "  load        {} scenes x {} editors{} x {} edits/s; warm-up {} s, measured {} s{}{}",
            l.scenes,
            l.editors_per_scene,
            match l.writers_per_scene {
                Some(w) if w < l.editors_per_scene => format!(" ({w} typing)"),
                _ => String::new(),
            },
            l.rate,
            l.warmup_s,
            l.duration_s,
            if l.initial_text_bytes > 0 {
                format!(", {} bytes of initial text", l.initial_text_bytes)
            } else {
                String::new()
            },
            if l.acks { ", durable acks" } else { "" }
        );
        let _ = writeln!(
            s,
            "  connect     {} editors synced in {:.2} s (each: p50 {:.0} ms, p99 {:.0} ms){}",
            l.scenes * l.editors_per_scene,
            self.connect_s,
            self.connect_ms.p50,
            self.connect_ms.p99,
            if self.moved > 0 {
                format!("; {} moves (4301) followed", self.moved)
            } else {
                String::new()
            }
        );
        let _ = writeln!(
            s,
            "  edits       {} sent; {} of {} deliveries ({} missing, {} duplicate); {:.0} deliveries/s",
            self.edits_sent,
            self.deliveries,
            self.deliveries_expected,
            self.missing,
            self.duplicates,
            self.deliveries_per_s
        );
        let _ = writeln!(s, "  latency     {}", latency_line(&self.latency_ms));
        if self.load.acks {
            let _ = writeln!(s, "  ack         {}", latency_line(&self.ack_latency_ms));
        }
        match &self.server {
            Some(sv) => {
                let pids: Vec<String> = sv.pids.iter().map(u32::to_string).collect();
                let split = match (sv.user_us_per_delivery, sv.system_us_per_delivery) {
                    (Some(user), Some(system)) => format!("user {user:.1}, kernel {system:.1}"),
                    _ => format!("user {:.2} s, kernel {:.2} s", sv.user_cpu_s, sv.system_cpu_s),
                };
                let _ = writeln!(
                    s,
                    "  server      pid {}: CPU {:.2} s = {} ({split}; {} deliveries in window)",
                    pids.join("+"),
                    sv.cpu_s,
                    per_delivery(sv.cpu_us_per_delivery),
                    self.window_deliveries
                );
                let _ = writeln!(
                    s,
                    "  memory      {:.1} KiB per room; RSS {:.1} MiB before, {:.1} MiB loaded, {:.1} MiB at the end, {:.1} MiB at most (since the start)",
                    kib(sv.rss_per_room_bytes as f64),
                    mib(sv.rss_before_bytes as f64),
                    mib(sv.rss_loaded_bytes as f64),
                    mib(sv.rss_after_bytes as f64),
                    mib(sv.rss_peak_bytes as f64)
                );
            }
            None => {
                let _ = writeln!(s, "  server      (no --pid: CPU and memory not measured)");
            }
        }
        for a in &self.aux {
            let _ = writeln!(
                s,
                "  aux         pid {} (with children): CPU {:.2} s = {}",
                a.pid,
                a.cpu_s,
                per_delivery(a.cpu_us_per_delivery)
            );
        }
        let _ = writeln!(s, "  bench       CPU {:.2} s", self.bench_cpu_s);
        let codes: Vec<String> = self
            .close_codes
            .iter()
            .map(|(c, n)| format!("{c} x{n}"))
            .collect();
        let _ = writeln!(
            s,
            "  errors      {} ({} disconnects [{}], {} protocol errors, {} failed edits)",
            self.errors,
            self.disconnects,
            codes.join(", "),
            self.protocol_errors,
            self.send_failures
        );
        s
    }
}

/// A `--ramp` run: steps of growing rate until p99 reaches the limit or errors appear.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RampReport {
    pub label: String,
    pub url: String,
    /// A step passes while its fan-out p99 stays under this.
    pub p99_limit_ms: f64,
    pub factor: f64,
    pub max_rate: f64,
    /// Every step run, in order; only the last may have failed.
    pub steps: Vec<Report>,
    /// Highest rate (edits/s per editor) of a passing step.
    pub best_rate: Option<f64>,
    /// Why the ramp stopped.
    pub stopped: String,
}

impl RampReport {
    /// A table of the steps and the verdict.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "troupe-chaos load --ramp [{}] {}: p99 limit {} ms, x{} per step",
            self.label, self.url, self.p99_limit_ms, self.factor
        );
        if let Some(first) = self.steps.first() {
            let l = &first.load;
            let _ = writeln!(
                s,
                "  {} scenes x {} editors; each step: warm-up {} s, measured {} s",
                l.scenes, l.editors_per_scene, l.warmup_s, l.duration_s
            );
        }
        let _ = writeln!(
            s,
            "  {:>9} {:>9} {:>12} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8} {:>11}  verdict",
            "rate/ed",
            "edits/s",
            "deliveries/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "errors",
            "missing",
            "CPU us/dlv"
        );
        for r in &self.steps {
            // What was typed, which falls short of the nominal rate when the generator lags.
            let edits_per_s = r.edits_sent as f64 / r.load.duration_s.max(f64::MIN_POSITIVE);
            let lat = |f: fn(&Summary) -> f64| {
                r.latency_ms
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |l| format!("{:.2}", f(l)))
            };
            let cpu = r
                .server
                .as_ref()
                .and_then(|sv| sv.cpu_us_per_delivery)
                .map_or_else(|| "-".to_owned(), |us| format!("{us:.1}"));
            let _ = writeln!(
                s,
                "  {:>9.2} {:>9.0} {:>12.0} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8} {:>11}  {}",
                r.load.rate,
                edits_per_s,
                r.deliveries_per_s,
                lat(|l| l.p50),
                lat(|l| l.p95),
                lat(|l| l.p99),
                lat(|l| l.max),
                r.errors,
                r.missing,
                cpu,
                if self.passes(r) { "pass" } else { "FAIL" }
            );
        }
        match (self.best_rate, self.steps.iter().rev().find(|r| self.passes(r))) {
            (Some(rate), Some(best)) => {
                let _ = writeln!(
                    s,
                    "  highest passing rate: {rate:.2} edits/s per editor ({:.0} edits/s, {:.0} deliveries/s)",
                    best.edits_sent as f64 / best.load.duration_s.max(f64::MIN_POSITIVE),
                    best.deliveries_per_s
                );
            }
            _ => {
                let _ = writeln!(s, "  highest passing rate: none");
            }
        }
        let _ = writeln!(s, "  stopped: {}", self.stopped);
        s
    }

    /// Whether a step stayed under the limit, delivered everything and saw no errors.
    pub fn passes(&self, r: &Report) -> bool {
        step_passes(r, self.p99_limit_ms)
    }
}

/// A ramp step passes when it delivered something, all of it, without errors, and its
/// fan-out p99 is under `p99_limit_ms`.
pub fn step_passes(r: &Report, p99_limit_ms: f64) -> bool {
    r.errors == 0 && r.missing == 0 && r.latency_ms.is_some_and(|l| l.p99 < p99_limit_ms)
}

/// Medians of the headline metrics over the rounds of one server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Medians {
    pub label: String,
    pub rounds: usize,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    pub deliveries_per_s: Option<f64>,
    pub missing: Option<f64>,
    pub errors: Option<f64>,
    pub server_cpu_us_per_delivery: Option<f64>,
    /// The user-space (utime) part of `server_cpu_us_per_delivery`.
    pub server_user_us_per_delivery: Option<f64>,
    /// The kernel (stime) part of `server_cpu_us_per_delivery`.
    pub server_system_us_per_delivery: Option<f64>,
    pub aux_cpu_us_per_delivery: Option<f64>,
    pub total_cpu_us_per_delivery: Option<f64>,
    /// `(RSS loaded - RSS before) / scenes`.
    pub rss_per_room_kib: Option<f64>,
    /// `RSS at the end / scenes` (the whole process shared out over its rooms).
    pub rss_end_per_room_kib: Option<f64>,
    pub ack_p50_ms: Option<f64>,
    pub ack_p99_ms: Option<f64>,
}

impl Medians {
    pub fn of(label: &str, reports: &[Report]) -> Medians {
        let m = |f: &dyn Fn(&Report) -> Option<f64>| median(reports.iter().filter_map(f));
        let aux = |r: &Report| -> Option<f64> {
            if r.aux.is_empty() {
                return None;
            }
            r.aux.iter().map(|a| a.cpu_us_per_delivery).sum()
        };
        let server = |r: &Report| r.server.as_ref().and_then(|s| s.cpu_us_per_delivery);
        Medians {
            label: label.to_owned(),
            rounds: reports.len(),
            p50_ms: m(&|r| r.latency_ms.map(|l| l.p50)),
            p95_ms: m(&|r| r.latency_ms.map(|l| l.p95)),
            p99_ms: m(&|r| r.latency_ms.map(|l| l.p99)),
            max_ms: m(&|r| r.latency_ms.map(|l| l.max)),
            deliveries_per_s: m(&|r| Some(r.deliveries_per_s)),
            missing: m(&|r| Some(r.missing as f64)),
            errors: m(&|r| Some(r.errors as f64)),
            server_cpu_us_per_delivery: m(&server),
            server_user_us_per_delivery: m(&|r| r.server.as_ref().and_then(|s| s.user_us_per_delivery)),
            server_system_us_per_delivery: m(&|r| r.server.as_ref().and_then(|s| s.system_us_per_delivery)),
            aux_cpu_us_per_delivery: m(&aux),
            total_cpu_us_per_delivery: m(&|r| server(r).map(|s| s + aux(r).unwrap_or(0.0))),
            rss_per_room_kib: m(&|r| r.server.as_ref().map(|s| kib(s.rss_per_room_bytes as f64))),
            rss_end_per_room_kib: m(&|r| {
                r.server
                    .as_ref()
                    .map(|s| kib(s.rss_after_bytes as f64) / f64::from(r.load.scenes.max(1)))
            }),
            ack_p50_ms: m(&|r| r.ack_latency_ms.map(|a| a.p50)),
            ack_p99_ms: m(&|r| r.ack_latency_ms.map(|a| a.p99)),
        }
    }
}

/// A side-by-side table of medians, one column per server (in the order given).
///
/// The group labelled `floor` (the bare relay), if any, is the floor: every server's CPU
/// per delivery is also shown as a multiple of its (`× floor`) and as what it adds to it.
/// The ratio column is the first / the second group other than the floor
/// (troupe / reference), left out with fewer than two of them.
pub fn compare_table(groups: &[Medians], floor: Option<&str>) -> String {
    type Get = fn(&Medians) -> Option<f64>;
    /// (name, value, decimals, followed by a "× floor" row)
    type Row = (&'static str, Get, usize, bool);
    let rows: [Row; 16] = [
        ("latency p50 (ms)", |m| m.p50_ms, 2, false),
        ("latency p95 (ms)", |m| m.p95_ms, 2, false),
        ("latency p99 (ms)", |m| m.p99_ms, 2, false),
        ("latency max (ms)", |m| m.max_ms, 2, false),
        ("deliveries/s", |m| m.deliveries_per_s, 0, false),
        ("missing deliveries", |m| m.missing, 0, false),
        ("errors", |m| m.errors, 0, false),
        (
            "server CPU us/delivery",
            |m| m.server_cpu_us_per_delivery,
            1,
            true,
        ),
        ("  user us/delivery", |m| m.server_user_us_per_delivery, 1, false),
        (
            "  kernel us/delivery",
            |m| m.server_system_us_per_delivery,
            1,
            false,
        ),
        ("aux CPU us/delivery", |m| m.aux_cpu_us_per_delivery, 1, false),
        ("total CPU us/delivery", |m| m.total_cpu_us_per_delivery, 1, true),
        ("RSS per room (KiB)", |m| m.rss_per_room_kib, 1, false),
        ("RSS at end / rooms (KiB)", |m| m.rss_end_per_room_kib, 1, false),
        ("ack p50 (ms)", |m| m.ack_p50_ms, 2, false),
        ("ack p99 (ms)", |m| m.ack_p99_ms, 2, false),
    ];
    let floor = floor.and_then(|label| groups.iter().find(|m| m.label == label));
    let mut others = groups
        .iter()
        .filter(|m| floor.is_none_or(|f| !std::ptr::eq(*m, f)));
    let pair = match (others.next(), others.next()) {
        (Some(a), Some(b)) => Some((a, b)),
        _ => None,
    };
    let has_aux = groups.iter().any(|m| m.aux_cpu_us_per_delivery.is_some());
    let fmt = |v: Option<f64>, prec: usize| match v {
        Some(v) => format!("{v:.prec$}"),
        None => "-".to_owned(),
    };
    let times = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) if y != 0.0 => Some(format!("{:.2}x", x / y)),
        _ => None,
    };
    let widths: Vec<usize> = groups.iter().map(|m| m.label.len().max(10)).collect();
    let ratio_head = pair.map(|(a, b)| format!("{}/{}", a.label, b.label));
    let mut s = String::new();
    let line = |s: &mut String, name: &str, cells: &[String], ratio: Option<&str>| {
        let _ = write!(s, "{name:<24}");
        for (cell, w) in cells.iter().zip(&widths) {
            let _ = write!(s, " {cell:>w$}");
        }
        if let (Some(head), Some(ratio)) = (&ratio_head, ratio) {
            let _ = write!(s, "  {ratio:>w$}", w = head.len().max(8));
        }
        s.truncate(s.trim_end_matches(' ').len());
        s.push('\n');
    };
    let rounds: Vec<String> = groups.iter().map(|m| m.rounds.to_string()).collect();
    let title = if rounds.windows(2).all(|w| w[0] == w[1]) {
        let n = groups.first().map_or(0, |m| m.rounds);
        format!("medians of {n} round{}", if n == 1 { "" } else { "s" })
    } else {
        format!("medians of {} rounds", rounds.join("/"))
    };
    let labels: Vec<String> = groups.iter().map(|m| m.label.clone()).collect();
    line(&mut s, &title, &labels, ratio_head.as_deref());
    for (name, get, prec, with_floor) in rows {
        let values: Vec<Option<f64>> = groups.iter().map(get).collect();
        if values.iter().all(Option::is_none) {
            continue;
        }
        let ratio = pair.map(|(a, b)| times(get(a), get(b)).unwrap_or_else(|| "-".to_owned()));
        let cells: Vec<String> = values.iter().map(|v| fmt(*v, prec)).collect();
        line(&mut s, name, &cells, Some(ratio.as_deref().unwrap_or("")));
        if let (true, Some(f)) = (with_floor, floor) {
            if name.starts_with("total") && !has_aux {
                continue;
            }
            let cells: Vec<String> = values
                .iter()
                .map(|v| times(*v, get(f)).unwrap_or_else(|| "-".to_owned()))
                .collect();
            line(&mut s, "  × floor", &cells, Some(""));
        }
    }
    if let Some((a, b)) = pair {
        if let Some(r) = times(a.server_cpu_us_per_delivery, b.server_cpu_us_per_delivery) {
            let r = r.trim_end_matches('x');
            let _ = writeln!(
                s,
                "CPU ratio (server process per delivered update): {} / {} = {r}",
                a.label, b.label
            );
        }
        if has_aux {
            if let Some(r) = times(a.total_cpu_us_per_delivery, b.total_cpu_us_per_delivery) {
                let r = r.trim_end_matches('x');
                let _ = writeln!(s, "CPU ratio including aux processes (e.g. PostgreSQL): {r}");
            }
        }
    }
    if let Some(f) = floor.filter(|_| groups.len() > 1) {
        if let Some(base) = f.server_cpu_us_per_delivery {
            let above: Vec<String> = groups
                .iter()
                .filter(|m| !std::ptr::eq(*m, f))
                .filter_map(|m| {
                    m.server_cpu_us_per_delivery
                        .map(|us| format!("{} {:+.1}", m.label, us - base))
                })
                .collect();
            let _ = writeln!(
                s,
                "Above the floor ({} {base:.1} us/delivery, server process): {} us/delivery",
                f.label,
                above.join(", ")
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(label: &str, p50: f64, cpu: f64) -> Report {
        Report {
            label: label.into(),
            url: "ws://x".into(),
            load: Load {
                scenes: 2,
                editors_per_scene: 3,
                writers_per_scene: None,
                rate: 2.0,
                warmup_s: 1.0,
                duration_s: 5.0,
                acks: false,
                initial_text_bytes: 0,
            },
            connect_s: 0.1,
            connect_ms: Summary::default(),
            window_start_s: 0.0,
            window_end_s: 5.0,
            edits_sent: 60,
            deliveries_expected: 120,
            deliveries: 120,
            missing: 0,
            duplicates: 0,
            window_deliveries: 118,
            deliveries_per_s: 24.0,
            latency_ms: Some(Summary {
                count: 120,
                mean: p50,
                p50,
                p95: p50 * 2.0,
                p99: p50 * 3.0,
                max: p50 * 4.0,
            }),
            ack_latency_ms: None,
            server: Some(ServerUsage {
                pids: vec![1],
                cpu_s: 0.5,
                cpu_us_per_delivery: Some(cpu),
                user_cpu_s: 0.2,
                system_cpu_s: 0.3,
                user_us_per_delivery: Some(cpu * 0.4),
                system_us_per_delivery: Some(cpu * 0.6),
                rss_before_bytes: 1 << 20,
                rss_loaded_bytes: 3 << 20,
                rss_after_bytes: 4 << 20,
                rss_peak_bytes: 5 << 20,
                rss_per_room_bytes: 1 << 20,
            }),
            aux: vec![],
            bench_cpu_s: 0.2,
            errors: 0,
            disconnects: 0,
            close_codes: vec![],
            protocol_errors: 0,
            send_failures: 0,
            moved: 0,
            timeline: vec![],
            samples: vec![],
        }
    }

    #[test]
    fn json_roundtrip_and_table() {
        let r = report("troupe", 1.0, 10.0);
        let json = serde_json::to_string(&r).expect("json");
        let back: Report = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, r);
        assert!(r.human().contains("p50 1.00 ms"));
        assert!(r.human().contains("1024.0 KiB per room"));
        assert!(
            r.human()
                .contains("CPU 0.50 s = 10.0 us/delivery (user 4.0, kernel 6.0; 118 deliveries"),
            "{}",
            r.human()
        );
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["server"]["user_cpu_s"], 0.2);
        assert_eq!(json["server"]["system_us_per_delivery"], 6.0);

        let a = Medians::of(
            "troupe",
            &[report("troupe", 1.0, 10.0), report("troupe", 3.0, 30.0)],
        );
        let b = Medians::of("reference", &[report("reference", 2.0, 40.0)]);
        assert_eq!(a.p50_ms, Some(2.0));
        assert_eq!(a.server_cpu_us_per_delivery, Some(20.0));
        assert_eq!(a.server_user_us_per_delivery, Some(8.0));
        assert_eq!(a.server_system_us_per_delivery, Some(12.0));
        assert_eq!(a.rss_per_room_kib, Some(1024.0));
        assert_eq!(a.rss_end_per_room_kib, Some(2048.0));
        let table = compare_table(&[a.clone(), b.clone()], Some("relay"));
        assert!(table.contains("CPU ratio (server process per delivered update): troupe / reference = 0.50"));
        assert!(!table.contains("floor"), "{table}");
        assert!(table.contains("latency p50 (ms)"));
        let row = |name: &str| {
            let line = table.lines().find(|l| l.starts_with(name)).expect(name);
            line.split_whitespace().rev().take(3).collect::<Vec<_>>()
        };
        // Columns read right to left: ratio, reference, troupe.
        assert_eq!(row("  user us/delivery"), ["0.50x", "16.0", "8.0"], "{table}");
        assert_eq!(row("  kernel us/delivery"), ["0.50x", "24.0", "12.0"], "{table}");
        assert!(!table.contains("ack p50"));

        // With the relay as the floor: a column of its own, and CPU as multiples of it.
        let relay = Medians::of("relay", &[report("relay", 0.5, 5.0)]);
        let table = compare_table(&[a, b, relay], Some("relay"));
        let head = table.lines().next().expect("head");
        assert_eq!(
            head.split_whitespace().collect::<Vec<_>>(),
            [
                "medians",
                "of",
                "2/1/1",
                "rounds",
                "troupe",
                "reference",
                "relay",
                "troupe/reference"
            ],
            "{table}"
        );
        let cpu = table
            .lines()
            .position(|l| l.starts_with("server CPU"))
            .expect("cpu row");
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[cpu].split_whitespace().rev().take(4).collect::<Vec<_>>(),
            ["0.50x", "5.0", "40.0", "20.0"],
            "{table}"
        );
        assert_eq!(
            lines[cpu + 1].split_whitespace().collect::<Vec<_>>(),
            ["×", "floor", "4.00x", "8.00x", "1.00x"],
            "{table}"
        );
        assert!(table.lines().all(|l| !l.ends_with(' ')), "{table}");
        // No aux processes: the total is the server's, and has no floor row of its own.
        assert_eq!(table.matches("× floor").count(), 1, "{table}");
        assert!(table.contains("CPU ratio (server process per delivered update): troupe / reference = 0.50"));
        assert!(
            table.contains("Above the floor (relay 5.0 us/delivery, server process): troupe +15.0, reference +35.0 us/delivery"),
            "{table}"
        );
    }

    #[test]
    fn floor_alone_with_one_server() {
        let t = Medians::of("troupe", &[report("troupe", 1.0, 10.0)]);
        let relay = Medians::of("relay", &[report("relay", 0.5, 5.0)]);
        let table = compare_table(&[t, relay], Some("relay"));
        // No second server: no ratio column, but the floor rows.
        assert!(
            table.lines().next().expect("head").trim_end().ends_with("relay"),
            "{table}"
        );
        assert!(table.contains("2.00x"), "{table}");
        assert!(!table.contains("CPU ratio"), "{table}");
    }

    #[test]
    fn no_deliveries_print_as_none() {
        let mut r = report("one editor", 1.0, 1.0);
        r.latency_ms = None;
        if let Some(sv) = r.server.as_mut() {
            sv.cpu_us_per_delivery = None;
            sv.user_us_per_delivery = None;
            sv.system_us_per_delivery = None;
        }
        let text = r.human();
        assert!(text.contains("latency     none"), "{text}");
        assert!(text.contains("(user 0.20 s, kernel 0.30 s;"), "{text}");
        assert!(!text.contains("NaN") && text.contains("KiB per room"));
        let json = serde_json::to_value(&r).expect("json");
        assert!(json["latency_ms"].is_null());
        assert!(json["server"]["user_us_per_delivery"].is_null());
        assert_eq!(Medians::of("x", &[r]).p99_ms, None);
    }

    #[test]
    fn reads_reports_from_before_the_cpu_split() {
        let r = report("old", 1.0, 10.0);
        let mut json = serde_json::to_value(&r).expect("json");
        let server = json["server"].as_object_mut().expect("server");
        for key in [
            "user_cpu_s",
            "system_cpu_s",
            "user_us_per_delivery",
            "system_us_per_delivery",
        ] {
            server.remove(key);
        }
        let old: Report = serde_json::from_value(json).expect("parse");
        let m = Medians::of("old", &[old]);
        assert_eq!(m.server_cpu_us_per_delivery, Some(10.0));
        assert_eq!(m.server_user_us_per_delivery, None);
        assert!(!compare_table(&[m.clone(), m], None).contains("user us/delivery"));
    }

    #[test]
    fn ramp_verdicts() {
        let mut fast = report("t", 1.0, 1.0);
        let mut slow = report("t", 50.0, 1.0);
        fast.load.rate = 2.0;
        slow.load.rate = 3.0;
        let ramp = RampReport {
            label: "t".into(),
            url: "ws://x".into(),
            p99_limit_ms: 100.0,
            factor: 1.5,
            max_rate: 10.0,
            steps: vec![fast.clone(), slow.clone()],
            best_rate: Some(2.0),
            stopped: "p99 150 ms".into(),
        };
        assert!(ramp.passes(&fast) && !ramp.passes(&slow));
        let table = ramp.human();
        assert!(table.contains("pass") && table.contains("FAIL"), "{table}");
        assert!(
            table.contains("highest passing rate: 2.00 edits/s per editor"),
            "{table}"
        );
        fast.errors = 1;
        assert!(!ramp.passes(&fast));
    }
}
