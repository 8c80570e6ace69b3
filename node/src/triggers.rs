//! The spec's rollback triggers, computed by every node over a sliding window and exported
//! as metrics: data loss detected (P1's `content_blocks` no longer hold what this node
//! wrote), sync failures over 5 %, WebSocket connection success under 95 %, fan-out
//! latency p95 over 200 ms.
//!
//! The hot paths only bump atomic counters ([`Counts`]); a task samples them every
//! [`SAMPLE`] into a ring covering [`WINDOW`] and computes each trigger from the difference
//! between the newest and the oldest sample. A trigger needs a minimum of traffic in the
//! window (a single failed connection is not 100 % failures).
//!
//! Automatic rollback (opt-in, `TROUPE_AUTO_ROLLBACK=<duration>`): when a critical trigger
//! (data loss, sync failures, connection success) has held that long, the node switches
//! `enableRealtimeEditing` off for the whole cluster through Raft and records why in the
//! cluster's settings (`autoRollback`), which `troupectl status` shows. Turning editing on
//! again is an operator's decision (`troupectl flags set enableRealtimeEditing=true`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// How often the counters are sampled.
pub const SAMPLE: Duration = Duration::from_secs(5);
/// How far back the triggers look.
pub const WINDOW: Duration = Duration::from_secs(300);

/// Thresholds, as the spec names them.
pub const MAX_SYNC_FAILURE_RATIO: f64 = 0.05;
pub const MIN_CONNECTION_SUCCESS_RATIO: f64 = 0.95;
pub const MAX_LATENCY_P95_MS: f64 = 200.0;
/// Least traffic in the window for a ratio to count.
const MIN_SYNCS: u64 = 100;
const MIN_CONNECTIONS: u64 = 20;
const MIN_LATENCIES: u64 = 100;

/// Upper bounds (ms) of the latency buckets: 0.05 ms doubling, as `websocket_latency_ms`.
const LATENCY_BUCKETS: usize = 16;

/// The counters the hot paths bump.
#[derive(Default)]
pub struct Counts {
    pub sync_attempts: AtomicU64,
    pub sync_failures: AtomicU64,
    pub connection_attempts: AtomicU64,
    pub connection_failures: AtomicU64,
    pub data_loss: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS + 1],
}

impl Counts {
    pub fn latency_ms(&self, ms: f64) {
        let mut bound = 0.05;
        let mut i = 0;
        while i < LATENCY_BUCKETS && ms > bound {
            bound *= 2.0;
            i += 1;
        }
        self.latency[i].fetch_add(1, Ordering::Relaxed);
    }

    /// A refusal or failure counted in `websocket_errors_total`, sorted into the triggers.
    pub fn error(&self, reason: &str) {
        if matches!(reason, "invalid_update" | "invalid_payload") {
            // Refused before it counted as received.
            self.sync_attempts.fetch_add(1, Ordering::Relaxed);
        }
        let counter = match reason {
            "invalid_update"
            | "invalid_payload"
            | "update_panic"
            | "out_of_order_overflow"
            | "document_too_large"
            | "fenced"
            | "p1_write_failed" => &self.sync_failures,
            "scene_unavailable" | "scene_load_failed" | "room_full" | "max_rooms" | "no_owner" => {
                &self.connection_failures
            }
            "data_loss_detected" => &self.data_loss,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn sample(&self) -> Sample {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Sample {
            at: Instant::now(),
            sync_attempts: get(&self.sync_attempts),
            sync_failures: get(&self.sync_failures),
            connection_attempts: get(&self.connection_attempts),
            connection_failures: get(&self.connection_failures),
            data_loss: get(&self.data_loss),
            latency: std::array::from_fn(|i| get(&self.latency[i])),
        }
    }
}

#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    sync_attempts: u64,
    sync_failures: u64,
    connection_attempts: u64,
    connection_failures: u64,
    data_loss: u64,
    latency: [u64; LATENCY_BUCKETS + 1],
}

/// One trigger's name, as its metric label says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, prometheus_client::encoding::EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Trigger {
    data_loss,
    sync_failures,
    connection_success,
    latency_p95,
}

impl Trigger {
    const ALL: [Trigger; 4] = [
        Trigger::data_loss,
        Trigger::sync_failures,
        Trigger::connection_success,
        Trigger::latency_p95,
    ];

    /// Whether it may roll back on its own (the spec's pages; latency only warns).
    pub fn critical(self) -> bool {
        !matches!(self, Trigger::latency_p95)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, prometheus_client::encoding::EncodeLabelSet)]
pub struct TriggerLabels {
    pub trigger: Trigger,
}

/// What the window says.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reading {
    pub sync_failure_ratio: Option<f64>,
    pub connection_success_ratio: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub data_loss: u64,
}

impl Reading {
    pub fn holds(&self, trigger: Trigger) -> bool {
        match trigger {
            Trigger::data_loss => self.data_loss > 0,
            Trigger::sync_failures => self
                .sync_failure_ratio
                .is_some_and(|r| r > MAX_SYNC_FAILURE_RATIO),
            Trigger::connection_success => self
                .connection_success_ratio
                .is_some_and(|r| r < MIN_CONNECTION_SUCCESS_RATIO),
            Trigger::latency_p95 => self.latency_p95_ms.is_some_and(|p| p > MAX_LATENCY_P95_MS),
        }
    }

    /// One line saying why `trigger` holds.
    pub fn why(&self, trigger: Trigger) -> String {
        match trigger {
            Trigger::data_loss => format!("data loss detected {} times", self.data_loss),
            Trigger::sync_failures => format!(
                "sync failures {:.1} % > {:.0} %",
                self.sync_failure_ratio.unwrap_or(0.0) * 100.0,
                MAX_SYNC_FAILURE_RATIO * 100.0
            ),
            Trigger::connection_success => format!(
                "WebSocket connection success {:.1} % < {:.0} %",
                self.connection_success_ratio.unwrap_or(1.0) * 100.0,
                MIN_CONNECTION_SUCCESS_RATIO * 100.0
            ),
            Trigger::latency_p95 => format!(
                "latency p95 {:.0} ms > {MAX_LATENCY_P95_MS:.0} ms",
                self.latency_p95_ms.unwrap_or(0.0)
            ),
        }
    }
}

/// The difference between two samples.
fn read(old: &Sample, new: &Sample) -> Reading {
    let d = |a: u64, b: u64| b.saturating_sub(a);
    let syncs = d(old.sync_attempts, new.sync_attempts);
    let sync_failures = d(old.sync_failures, new.sync_failures);
    let connections = d(old.connection_attempts, new.connection_attempts);
    let connection_failures = d(old.connection_failures, new.connection_failures);
    let latency: Vec<u64> = (0..=LATENCY_BUCKETS)
        .map(|i| d(old.latency[i], new.latency[i]))
        .collect();
    let observed: u64 = latency.iter().sum();
    Reading {
        sync_failure_ratio: (syncs >= MIN_SYNCS).then(|| sync_failures as f64 / syncs as f64),
        connection_success_ratio: (connections >= MIN_CONNECTIONS)
            .then(|| 1.0 - (connection_failures.min(connections) as f64 / connections as f64)),
        latency_p95_ms: (observed >= MIN_LATENCIES).then(|| {
            // The upper bound of the bucket holding the 95th percentile.
            let rank = (observed as f64 * 0.95).ceil() as u64;
            let mut seen = 0;
            let mut bound = 0.05;
            for count in &latency {
                seen += count;
                if seen >= rank {
                    break;
                }
                bound *= 2.0;
            }
            bound
        }),
        data_loss: d(old.data_loss, new.data_loss),
    }
}

/// The gauges the triggers are exported as.
#[derive(Clone, Default)]
pub struct TriggerMetrics {
    /// 1 while the trigger holds over the window.
    pub active: Family<TriggerLabels, Gauge>,
    pub sync_failure_ratio: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub connection_success_ratio: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub latency_p95_ms: Gauge<f64, std::sync::atomic::AtomicU64>,
}

/// Asks the cluster to switch realtime editing off, saying why.
pub type RollBack =
    Arc<dyn Fn(String) -> futures_util::future::BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Samples the counters, exports the triggers, and rolls back when asked to and due.
pub async fn run(
    counts: Arc<Counts>,
    metrics: TriggerMetrics,
    auto_rollback: Option<(Duration, RollBack)>,
    node: u64,
) {
    let mut ring: VecDeque<Sample> = VecDeque::new();
    let mut since: [Option<Instant>; 4] = [None; 4];
    let mut rolled_back = false;
    let mut tick = tokio::time::interval(SAMPLE);
    loop {
        tick.tick().await;
        let now = counts.sample();
        ring.push_back(now);
        while ring.front().is_some_and(|s| now.at.duration_since(s.at) > WINDOW) {
            ring.pop_front();
        }
        let Some(oldest) = ring.front() else { continue };
        let reading = read(oldest, &now);
        metrics
            .sync_failure_ratio
            .set(reading.sync_failure_ratio.unwrap_or(0.0));
        metrics
            .connection_success_ratio
            .set(reading.connection_success_ratio.unwrap_or(1.0));
        metrics.latency_p95_ms.set(reading.latency_p95_ms.unwrap_or(0.0));
        for (i, trigger) in Trigger::ALL.into_iter().enumerate() {
            let holds = reading.holds(trigger);
            metrics
                .active
                .get_or_create(&TriggerLabels { trigger })
                .set(i64::from(holds));
            match (holds, since[i]) {
                (true, None) => {
                    since[i] = Some(now.at);
                    tracing::warn!(?trigger, why = %reading.why(trigger), "rollback trigger holds");
                }
                (false, Some(_)) => {
                    since[i] = None;
                    tracing::info!(?trigger, "rollback trigger cleared");
                }
                _ => {}
            }
        }
        let Some((after, roll_back)) = &auto_rollback else {
            continue;
        };
        if rolled_back {
            continue;
        }
        let due = Trigger::ALL.into_iter().enumerate().find(|(i, trigger)| {
            trigger.critical() && since[*i].is_some_and(|t| now.at.duration_since(t) >= *after)
        });
        if let Some((_, trigger)) = due {
            let why = format!(
                "node {node} turned realtime editing off at {} (Unix): {} for {after:?}",
                troupe_proto::clock::now_secs(),
                reading.why(trigger)
            );
            tracing::error!(%why, "automatic rollback");
            match roll_back(why).await {
                Ok(()) => rolled_back = true,
                Err(error) => tracing::warn!(%error, "automatic rollback failed; will try again"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Sample {
        Counts::default().sample()
    }

    #[test]
    fn ratios_need_traffic_and_compare_with_the_spec() {
        let old = sample();
        let mut new = old;
        new.sync_attempts = 99;
        new.sync_failures = 50;
        assert_eq!(read(&old, &new).sync_failure_ratio, None, "too little traffic");
        new.sync_attempts = 200;
        new.sync_failures = 11;
        let r = read(&old, &new);
        assert!(r.holds(Trigger::sync_failures), "{r:?}");
        new.sync_failures = 10;
        assert!(!read(&old, &new).holds(Trigger::sync_failures));
        new.connection_attempts = 40;
        new.connection_failures = 3;
        let r = read(&old, &new);
        assert!(r.holds(Trigger::connection_success), "{r:?}");
        assert!(r.why(Trigger::connection_success).contains("92.5 %"));
        new.data_loss = 1;
        assert!(read(&old, &new).holds(Trigger::data_loss));
    }

    #[test]
    fn latency_p95_is_the_bucket_bound() {
        let counts = Counts::default();
        let old = counts.sample();
        for _ in 0..90 {
            counts.latency_ms(1.0);
        }
        for _ in 0..10 {
            counts.latency_ms(300.0);
        }
        let r = read(&old, &counts.sample());
        // 95th of 100 falls among the slow ones: the bucket up to 409.6 ms.
        assert_eq!(r.latency_p95_ms, Some(409.6));
        assert!(r.holds(Trigger::latency_p95));
        assert!(!Trigger::latency_p95.critical());
    }

    #[test]
    fn reasons_sort_into_triggers() {
        let counts = Counts::default();
        counts.error("invalid_update");
        counts.error("scene_load_failed");
        counts.error("data_loss_detected");
        counts.error("moved");
        let s = counts.sample();
        assert_eq!((s.sync_failures, s.connection_failures, s.data_loss), (1, 1, 1));
    }
}
