//! Who used the CPU during a run — the nodes, the router, PostgreSQL and the harness itself
//! (the simulated editors) — sampled from `/proc` five times a second, so that a fault's
//! recovery is reported with what it cost and what bound it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::bench::procfs::{self, ProcSample};

const EVERY: Duration = Duration::from_millis(200);

/// CPU used over a window, in cores (1.0 = one core busy the whole window).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CpuCores {
    /// This process: the simulated editors and the fault injection.
    pub harness: f64,
    /// Every node process together.
    pub nodes: f64,
    pub router: f64,
    /// The run's own PostgreSQL (postmaster and backends); none when it uses another.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres: Option<f64>,
    /// The window the figures cover (samples bracket the asked window).
    pub window_ms: u64,
}

/// Ticks per pid of each part at one moment.
struct Sample {
    at: Instant,
    harness: HashMap<u32, u64>,
    nodes: HashMap<u32, u64>,
    router: HashMap<u32, u64>,
    postgres: Option<HashMap<u32, u64>>,
}

/// Samples taken in the background until dropped.
pub struct CpuTimeline {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
}

impl CpuTimeline {
    /// Starts sampling this process's children and the PostgreSQL whose postmaster's pid
    /// is in the file `postgres` (read at each sample: a restarted Postgres is followed).
    pub fn start(postgres: Option<PathBuf>) -> CpuTimeline {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (into, stopped) = (samples.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let sample = take(postgres.as_deref());
                if let Ok(mut samples) = into.lock() {
                    samples.push(sample);
                }
                std::thread::sleep(EVERY);
            }
        });
        CpuTimeline { samples, stop }
    }

    /// The cores each part used from `from` to `to` (widened to the samples around them);
    /// none before two samples bracket it.
    pub fn cores_between(&self, from: Instant, to: Instant) -> Option<CpuCores> {
        let samples = self.samples.lock().ok()?;
        let first = samples.iter().rev().find(|s| s.at <= from).or(samples.first())?;
        let last = samples.iter().find(|s| s.at >= to).or(samples.last())?;
        let window = last
            .at
            .checked_duration_since(first.at)
            .filter(|w| !w.is_zero())?;
        let cores = |a: &HashMap<u32, u64>, b: &HashMap<u32, u64>| {
            procfs::tree_cpu_delta(a, b).as_secs_f64() / window.as_secs_f64()
        };
        Some(CpuCores {
            harness: cores(&first.harness, &last.harness),
            nodes: cores(&first.nodes, &last.nodes),
            router: cores(&first.router, &last.router),
            postgres: match (&first.postgres, &last.postgres) {
                (Some(a), Some(b)) => Some(cores(a, b)),
                _ => None,
            },
            window_ms: window.as_millis() as u64,
        })
    }
}

impl Drop for CpuTimeline {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The pid on the first line of a `postmaster.pid` file.
fn read_pid(file: &Path) -> Option<u32> {
    std::fs::read_to_string(file)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// One sample; with `postgres` (a `postmaster.pid` file), its part is the tree of the
/// postmaster it names (empty while it is down).
fn take(postgres: Option<&Path>) -> Sample {
    let at = Instant::now();
    let procs = procfs::snapshot();
    let me = std::process::id();
    let ours = procfs::descendants(&procs, me);
    let part = |keep: &dyn Fn(&ProcSample) -> bool| -> HashMap<u32, u64> {
        procs
            .iter()
            .filter(|p| keep(p))
            .map(|p| (p.pid, p.ticks))
            .collect()
    };
    Sample {
        at,
        harness: part(&|p| p.pid == me),
        nodes: part(&|p| ours.contains(&p.pid) && p.comm == "troupe-node"),
        router: part(&|p| ours.contains(&p.pid) && p.comm == "troupe-router"),
        postgres: postgres.map(|file| {
            let tree = read_pid(file)
                .map(|pid| procfs::descendants(&procs, pid))
                .unwrap_or_default();
            part(&|p| tree.contains(&p.pid))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_this_process_while_it_works() {
        let timeline = CpuTimeline::start(None);
        let from = Instant::now();
        // Busy for a while, so that the harness's share is visible.
        let mut x = 0u64;
        while from.elapsed() < Duration::from_millis(600) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let cores = timeline.cores_between(from, Instant::now()).expect("samples");
        assert!(cores.harness > 0.1, "{cores:?}");
        assert_eq!(cores.nodes, 0.0);
        assert_eq!(cores.postgres, None);
        assert!(cores.window_ms >= 400, "{cores:?}");
    }
}
