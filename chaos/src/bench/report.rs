//! The results of one bench run, and the side-by-side comparison of several.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::stats::{median, Summary};

/// The load a run applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Load {
    pub scenes: u32,
    pub editors_per_scene: u32,
    /// Edits per second per editor.
    pub rate: f64,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub acks: bool,
}

/// CPU and memory of the server process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerUsage {
    pub pid: u32,
    /// utime + stime over the measured window.
    pub cpu_s: f64,
    /// `cpu_s` divided by the deliveries received in the window, in microseconds.
    pub cpu_us_per_delivery: f64,
    /// VmRSS before the editors connected.
    pub rss_before_bytes: u64,
    /// VmRSS at the end of the measured window (all rooms open).
    pub rss_after_bytes: u64,
    /// `rss_after_bytes / scenes`.
    pub rss_per_room_bytes: u64,
    /// `(rss_after_bytes - rss_before_bytes) / scenes`.
    pub rss_delta_per_room_bytes: i64,
}

/// CPU of a helper process tree (e.g. the PostgreSQL server behind Troupe).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuxUsage {
    pub pid: u32,
    pub cpu_s: f64,
    pub cpu_us_per_delivery: f64,
}

/// Everything one run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub label: String,
    pub url: String,
    pub load: Load,
    /// Time to connect and sync every editor.
    pub connect_s: f64,
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
    pub deliveries_per_s: f64,
    /// Fan-out latency: send at one editor -> receive at another.
    pub latency_ms: Summary,
    /// Send -> durable ack (with `--acks`).
    pub ack_latency_ms: Option<Summary>,
    pub server: Option<ServerUsage>,
    pub aux: Vec<AuxUsage>,
    /// CPU of the bench process itself over the window.
    pub bench_cpu_s: f64,
    /// Editors whose connection ended before the run did.
    pub disconnects: u64,
    /// Close codes seen on those connections (code, count).
    pub close_codes: Vec<(String, u64)>,
    pub protocol_errors: u64,
}

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

impl Report {
    /// A few lines for people.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let l = &self.load;
        let _ = writeln!(s, "troupe-bench [{}] {}", self.label, self.url);
        let _ = writeln!(
            s,
            "  load        {} scenes x {} editors x {} edits/s; warm-up {} s, measured {} s{}",
            l.scenes,
            l.editors_per_scene,
            l.rate,
            l.warmup_s,
            l.duration_s,
            if l.acks { ", durable acks" } else { "" }
        );
        let _ = writeln!(
            s,
            "  connect     {} editors synced in {:.2} s",
            l.scenes * l.editors_per_scene,
            self.connect_s
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
        let lat = &self.latency_ms;
        let _ = writeln!(
            s,
            "  latency     p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (mean {:.2} ms)",
            lat.p50, lat.p95, lat.p99, lat.max, lat.mean
        );
        if let Some(a) = &self.ack_latency_ms {
            let _ = writeln!(
                s,
                "  ack         p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} acked)",
                a.p50, a.p95, a.p99, a.max, a.count
            );
        }
        match &self.server {
            Some(sv) => {
                let _ = writeln!(
                    s,
                    "  server      pid {}: CPU {:.2} s = {:.1} us/delivery ({} deliveries in window)",
                    sv.pid, sv.cpu_s, sv.cpu_us_per_delivery, self.window_deliveries
                );
                let _ = writeln!(
                    s,
                    "  memory      RSS {:.1} MiB (before {:.1} MiB) = {:.1} KiB/room, {:+.1} KiB/room during the run",
                    mib(sv.rss_after_bytes as f64),
                    mib(sv.rss_before_bytes as f64),
                    sv.rss_per_room_bytes as f64 / 1024.0,
                    sv.rss_delta_per_room_bytes as f64 / 1024.0
                );
            }
            None => {
                let _ = writeln!(s, "  server      (no --server-pid: CPU and memory not measured)");
            }
        }
        for a in &self.aux {
            let _ = writeln!(
                s,
                "  aux         pid {} (with children): CPU {:.2} s = {:.1} us/delivery",
                a.pid, a.cpu_s, a.cpu_us_per_delivery
            );
        }
        let _ = writeln!(s, "  bench       CPU {:.2} s", self.bench_cpu_s);
        if self.disconnects > 0 || self.protocol_errors > 0 {
            let codes: Vec<String> = self
                .close_codes
                .iter()
                .map(|(c, n)| format!("{c} x{n}"))
                .collect();
            let _ = writeln!(
                s,
                "  errors      {} disconnects [{}], {} protocol errors",
                self.disconnects,
                codes.join(", "),
                self.protocol_errors
            );
        }
        s
    }
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
    pub server_cpu_us_per_delivery: Option<f64>,
    pub aux_cpu_us_per_delivery: Option<f64>,
    pub total_cpu_us_per_delivery: Option<f64>,
    pub rss_per_room_kib: Option<f64>,
    pub rss_delta_per_room_kib: Option<f64>,
    pub ack_p50_ms: Option<f64>,
    pub ack_p99_ms: Option<f64>,
}

impl Medians {
    pub fn of(label: &str, reports: &[Report]) -> Medians {
        let m = |f: &dyn Fn(&Report) -> Option<f64>| median(reports.iter().filter_map(f));
        let aux = |r: &Report| -> Option<f64> {
            (!r.aux.is_empty()).then(|| r.aux.iter().map(|a| a.cpu_us_per_delivery).sum())
        };
        Medians {
            label: label.to_owned(),
            rounds: reports.len(),
            p50_ms: m(&|r| Some(r.latency_ms.p50)),
            p95_ms: m(&|r| Some(r.latency_ms.p95)),
            p99_ms: m(&|r| Some(r.latency_ms.p99)),
            max_ms: m(&|r| Some(r.latency_ms.max)),
            deliveries_per_s: m(&|r| Some(r.deliveries_per_s)),
            missing: m(&|r| Some(r.missing as f64)),
            server_cpu_us_per_delivery: m(&|r| r.server.as_ref().map(|s| s.cpu_us_per_delivery)),
            aux_cpu_us_per_delivery: m(&aux),
            total_cpu_us_per_delivery: m(&|r| {
                r.server
                    .as_ref()
                    .map(|s| s.cpu_us_per_delivery + aux(r).unwrap_or(0.0))
            }),
            rss_per_room_kib: m(&|r| r.server.as_ref().map(|s| s.rss_per_room_bytes as f64 / 1024.0)),
            rss_delta_per_room_kib: m(&|r| {
                r.server
                    .as_ref()
                    .map(|s| s.rss_delta_per_room_bytes as f64 / 1024.0)
            }),
            ack_p50_ms: m(&|r| r.ack_latency_ms.map(|a| a.p50)),
            ack_p99_ms: m(&|r| r.ack_latency_ms.map(|a| a.p99)),
        }
    }
}

/// A side-by-side table of medians; the last column is first / second.
pub fn compare_table(a: &Medians, b: &Medians) -> String {
    type Row = (&'static str, fn(&Medians) -> Option<f64>, usize);
    let rows: [Row; 13] = [
        ("latency p50 (ms)", |m| m.p50_ms, 2),
        ("latency p95 (ms)", |m| m.p95_ms, 2),
        ("latency p99 (ms)", |m| m.p99_ms, 2),
        ("latency max (ms)", |m| m.max_ms, 2),
        ("deliveries/s", |m| m.deliveries_per_s, 0),
        ("missing deliveries", |m| m.missing, 0),
        ("server CPU us/delivery", |m| m.server_cpu_us_per_delivery, 1),
        ("aux CPU us/delivery", |m| m.aux_cpu_us_per_delivery, 1),
        ("total CPU us/delivery", |m| m.total_cpu_us_per_delivery, 1),
        ("RSS/room (KiB)", |m| m.rss_per_room_kib, 1),
        ("RSS growth/room (KiB)", |m| m.rss_delta_per_room_kib, 1),
        ("ack p50 (ms)", |m| m.ack_p50_ms, 2),
        ("ack p99 (ms)", |m| m.ack_p99_ms, 2),
    ];
    let fmt = |v: Option<f64>, prec: usize| match v {
        Some(v) => format!("{v:.prec$}"),
        None => "-".to_owned(),
    };
    let mut s = String::new();
    let ratio_head = format!("{}/{}", a.label, b.label);
    let _ = writeln!(
        s,
        "{:<24} {:>14} {:>14} {:>12}",
        format!("medians of {} / {} rounds", a.rounds, b.rounds),
        a.label,
        b.label,
        ratio_head
    );
    for (name, get, prec) in rows {
        let (va, vb) = (get(a), get(b));
        if va.is_none() && vb.is_none() {
            continue;
        }
        let ratio = match (va, vb) {
            (Some(x), Some(y)) if y != 0.0 => format!("{:.2}x", x / y),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            s,
            "{:<24} {:>14} {:>14} {:>12}",
            name,
            fmt(va, prec),
            fmt(vb, prec),
            ratio
        );
    }
    if let (Some(x), Some(y)) = (a.server_cpu_us_per_delivery, b.server_cpu_us_per_delivery) {
        if y > 0.0 {
            let _ = writeln!(
                s,
                "CPU ratio (server process per delivered update): {} / {} = {:.2}",
                a.label,
                b.label,
                x / y
            );
        }
    }
    let has_aux = a.aux_cpu_us_per_delivery.is_some() || b.aux_cpu_us_per_delivery.is_some();
    if let (Some(x), Some(y), true) = (a.total_cpu_us_per_delivery, b.total_cpu_us_per_delivery, has_aux) {
        if y > 0.0 {
            let _ = writeln!(
                s,
                "CPU ratio including aux processes (e.g. PostgreSQL): {:.2}",
                x / y
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
                rate: 2.0,
                warmup_s: 1.0,
                duration_s: 5.0,
                acks: false,
            },
            connect_s: 0.1,
            edits_sent: 60,
            deliveries_expected: 120,
            deliveries: 120,
            missing: 0,
            duplicates: 0,
            window_deliveries: 118,
            deliveries_per_s: 24.0,
            latency_ms: Summary {
                count: 120,
                mean: p50,
                p50,
                p95: p50 * 2.0,
                p99: p50 * 3.0,
                max: p50 * 4.0,
            },
            ack_latency_ms: None,
            server: Some(ServerUsage {
                pid: 1,
                cpu_s: 0.5,
                cpu_us_per_delivery: cpu,
                rss_before_bytes: 1 << 20,
                rss_after_bytes: 3 << 20,
                rss_per_room_bytes: 3 << 19,
                rss_delta_per_room_bytes: 1 << 20,
            }),
            aux: vec![],
            bench_cpu_s: 0.2,
            disconnects: 0,
            close_codes: vec![],
            protocol_errors: 0,
        }
    }

    #[test]
    fn json_roundtrip_and_table() {
        let r = report("troupe", 1.0, 10.0);
        let json = serde_json::to_string(&r).expect("json");
        let back: Report = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, r);
        assert!(r.human().contains("p50 1.00 ms"));

        let a = Medians::of(
            "troupe",
            &[report("troupe", 1.0, 10.0), report("troupe", 3.0, 30.0)],
        );
        let b = Medians::of("reference", &[report("reference", 2.0, 40.0)]);
        assert_eq!(a.p50_ms, Some(2.0));
        assert_eq!(a.server_cpu_us_per_delivery, Some(20.0));
        let table = compare_table(&a, &b);
        assert!(table.contains("CPU ratio (server process per delivered update): troupe / reference = 0.50"));
        assert!(table.contains("latency p50 (ms)"));
        assert!(!table.contains("ack p50"));
    }
}
