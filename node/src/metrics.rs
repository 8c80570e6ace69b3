//! Prometheus metrics of a node, served as text at `/metrics`.
//!
//! Names follow shared/DESIGN.md; counters get their `_total` suffix from the encoder.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// What became of a webhook delivery (or an attempt of one).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub outcome: &'static str,
}

/// Why a connection ended in error or a message was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub reason: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub connections_active: Gauge,
    pub latency_ms: Histogram,
    pub errors: Family<ErrorLabels, Counter>,
    pub webhooks: Family<WebhookLabels, Counter>,
    pub updates_stored: Counter,
    pub conflicts_resolved: Counter,
    pub compaction_runs: Counter,
    pub scenes_active: Gauge,
    pub sessions_joined: Counter,
    /// Distinct users with at least one connection on this node.
    pub users_collaborating: Gauge,
    pub session_duration_seconds: Histogram,
    pub users_per_scene: Histogram,
    pub compaction_failures: Counter,
    pub raft_leader_known: Gauge,
    users: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    pub ring_epoch: Gauge,
    pub handoffs: Counter,
    pub failovers: Counter,
    pub failover_detection_seconds: Histogram,
    pub redis_up: Gauge,
    pub store_up: Gauge,
    pub presence_published: Counter,
    pub presence_dropped: Counter,
    pub rehydration_seconds: Histogram,
    pub store_commit_seconds: Histogram,
    pub store_commit_failures: Counter,
    pub pending_bytes: Gauge,
    pub viewer_updates_dropped: Counter,
    pub awareness_dropped: Counter,
    pub awareness_rewritten: Counter,
    pub leases_collected: Counter,
    pub p1_lag_seconds: Histogram,
    /// What the rollback triggers count (see [`crate::triggers`]).
    pub triggers: std::sync::Arc<crate::triggers::Counts>,
    pub trigger_metrics: crate::triggers::TriggerMetrics,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            connections_active: Gauge::default(),
            latency_ms: Histogram::new(exponential_buckets(0.05, 2.0, 16)),
            errors: Family::default(),
            webhooks: Family::default(),
            updates_stored: Counter::default(),
            conflicts_resolved: Counter::default(),
            compaction_runs: Counter::default(),
            scenes_active: Gauge::default(),
            sessions_joined: Counter::default(),
            users_collaborating: Gauge::default(),
            session_duration_seconds: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
            users_per_scene: Histogram::new([1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 34.0, 55.0, 89.0, 144.0]),
            compaction_failures: Counter::default(),
            raft_leader_known: Gauge::default(),
            users: Default::default(),
            ring_epoch: Gauge::default(),
            handoffs: Counter::default(),
            failovers: Counter::default(),
            failover_detection_seconds: Histogram::new(exponential_buckets(0.05, 2.0, 10)),
            redis_up: Gauge::default(),
            store_up: Gauge::default(),
            presence_published: Counter::default(),
            presence_dropped: Counter::default(),
            rehydration_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            store_commit_seconds: Histogram::new(exponential_buckets(0.0002, 2.0, 16)),
            store_commit_failures: Counter::default(),
            pending_bytes: Gauge::default(),
            viewer_updates_dropped: Counter::default(),
            awareness_dropped: Counter::default(),
            awareness_rewritten: Counter::default(),
            leases_collected: Counter::default(),
            p1_lag_seconds: Histogram::new(exponential_buckets(0.05, 2.0, 12)),
            triggers: Default::default(),
            trigger_metrics: Default::default(),
            registry: Registry::default(),
        };
        registry.register(
            "websocket_connections_active",
            "Open client WebSocket connections",
            m.connections_active.clone(),
        );
        registry.register(
            "websocket_latency_ms",
            "Time from receiving a client message to handing its fan-out to every peer, in ms",
            m.latency_ms.clone(),
        );
        registry.register(
            "websocket_errors",
            "Connections closed or messages refused for bad input, by reason",
            m.errors.clone(),
        );
        registry.register(
            "yjs_updates_stored",
            "Update batches committed to the store",
            m.updates_stored.clone(),
        );
        registry.register(
            "yjs_conflicts_resolved",
            "Client updates merged with changes the document already had (duplicates, or concurrent edits integrated out of order)",
            m.conflicts_resolved.clone(),
        );
        registry.register(
            "yjs_compaction_runs",
            "Snapshots written by compaction",
            m.compaction_runs.clone(),
        );
        registry.register(
            "scenes_collaborative_active",
            "Scenes loaded in memory on this node",
            m.scenes_active.clone(),
        );
        registry.register(
            "troupe_sessions_joined",
            "Client sessions that joined a scene on this node",
            m.sessions_joined.clone(),
        );
        registry.register(
            "users_collaborating",
            "Distinct users with at least one open connection on this node",
            m.users_collaborating.clone(),
        );
        registry.register(
            "troupe_session_duration_seconds",
            "How long client sessions lasted, from joining a scene to leaving it",
            m.session_duration_seconds.clone(),
        );
        registry.register(
            "troupe_users_per_scene",
            "Distinct users in a scene, observed each time someone joins it",
            m.users_per_scene.clone(),
        );
        registry.register(
            "troupe_compaction_failures",
            "Snapshot writes that failed (the log stays as it is and is compacted later)",
            m.compaction_failures.clone(),
        );
        registry.register(
            "troupe_raft_leader_known",
            "1 while this node knows a Raft leader, else 0 (no leader: no membership change can happen)",
            m.raft_leader_known.clone(),
        );
        registry.register(
            "troupe_failovers",
            "Nodes this node, as the Raft leader, marked down (their scenes moved to survivors)",
            m.failovers.clone(),
        );
        registry.register(
            "troupe_failover_detection_seconds",
            "Time from a node's last answer to the epoch change that moved its scenes",
            m.failover_detection_seconds.clone(),
        );
        registry.register(
            "troupe_rollback_trigger",
            "1 while a rollback trigger of the spec holds over the last 5 minutes (data_loss, sync_failures, connection_success, latency_p95)",
            m.trigger_metrics.active.clone(),
        );
        registry.register(
            "troupe_sync_failure_ratio",
            "Edits refused or failed over edits received, last 5 minutes (0 with under 100 edits)",
            m.trigger_metrics.sync_failure_ratio.clone(),
        );
        registry.register(
            "troupe_websocket_connection_success_ratio",
            "Connections that joined their scene over attempts past authentication, last 5 minutes (1 with under 20 attempts)",
            m.trigger_metrics.connection_success_ratio.clone(),
        );
        registry.register(
            "troupe_websocket_latency_p95_ms",
            "Upper bound of the fan-out latency bucket holding the 95th percentile, last 5 minutes (0 with under 100 messages)",
            m.trigger_metrics.latency_p95_ms.clone(),
        );
        // Every outcome is a series from the start, so that rates and alerts over them
        // read 0 rather than nothing.
        for outcome in ["delivered", "retried", "refused", "failed", "dropped"] {
            let _ = m.webhooks.get_or_create(&WebhookLabels { outcome });
        }
        registry.register(
            "troupe_webhook_deliveries",
            "Webhook outcomes: delivered, retried (an attempt failed), refused (a 4xx, not retried), failed (given up), dropped (queue full)",
            m.webhooks.clone(),
        );
        registry.register(
            "troupe_store_up",
            "1 while the last group commit succeeded, 0 while commits fail and are retried",
            m.store_up.clone(),
        );
        registry.register(
            "troupe_redis_up",
            "1 while the last Redis write (presence, notices) succeeded, else 0",
            m.redis_up.clone(),
        );
        registry.register(
            "troupe_presence_published",
            "Presence changes and notices written to Redis",
            m.presence_published.clone(),
        );
        registry.register(
            "troupe_presence_dropped",
            "Presence changes and notices dropped (Redis down or the queue full)",
            m.presence_dropped.clone(),
        );
        registry.register(
            "troupe_handoffs",
            "Scenes this node handed to a new owner after a placement change",
            m.handoffs.clone(),
        );
        registry.register(
            "troupe_ring_epoch",
            "Placement epoch this node serves at",
            m.ring_epoch.clone(),
        );
        registry.register(
            "troupe_rehydration_seconds",
            "Time to load a scene from the store (snapshot plus tail)",
            m.rehydration_seconds.clone(),
        );
        registry.register(
            "troupe_store_commit_seconds",
            "Duration of one group commit to the store",
            m.store_commit_seconds.clone(),
        );
        registry.register(
            "troupe_store_commit_failures",
            "Group commits that failed and will be retried",
            m.store_commit_failures.clone(),
        );
        registry.register(
            "troupe_pending_bytes",
            "Bytes of applied updates not yet committed to the store",
            m.pending_bytes.clone(),
        );
        registry.register(
            "troupe_viewer_updates_dropped",
            "Updates from view-only connections that were not applied",
            m.viewer_updates_dropped.clone(),
        );
        registry.register(
            "troupe_awareness_dropped",
            "Awareness messages or entries dropped (over the rate limit, or for another client's id)",
            m.awareness_dropped.clone(),
        );
        registry.register(
            "troupe_awareness_rewritten",
            "Awareness states rewritten: a user name other than the token's, or a colour that is not #rrggbb",
            m.awareness_rewritten.clone(),
        );
        registry.register(
            "troupe_leases_collected",
            "Lease rows of scenes that never got content, deleted once released and idle",
            m.leases_collected.clone(),
        );
        registry.register(
            "troupe_p1_lag_seconds",
            "From a P1 scene's first unwritten change to its write back into content_blocks",
            m.p1_lag_seconds.clone(),
        );
        Self { registry, ..m }
    }

    /// A user's session on this node begins; it ends (and is timed) when the guard drops.
    pub fn user_session(self: &std::sync::Arc<Self>, user: &str) -> UserSession {
        if let Ok(mut users) = self.users.lock() {
            let count = users.entry(user.to_string()).or_insert(0);
            *count += 1;
            self.users_collaborating.set(users.len() as i64);
        }
        UserSession {
            metrics: self.clone(),
            user: user.to_string(),
            since: std::time::Instant::now(),
        }
    }

    /// Counts one webhook outcome.
    pub fn webhook(&self, outcome: &'static str) {
        self.webhooks.get_or_create(&WebhookLabels { outcome }).inc();
    }

    /// Counts one refused message or failed connection.
    pub fn error(&self, reason: &'static str) {
        self.errors.get_or_create(&ErrorLabels { reason }).inc();
        self.triggers.error(reason);
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// One user's session on this node (see [`Metrics::user_session`]).
pub struct UserSession {
    metrics: std::sync::Arc<Metrics>,
    user: String,
    since: std::time::Instant,
}

impl Drop for UserSession {
    fn drop(&mut self) {
        let m = &self.metrics;
        m.session_duration_seconds
            .observe(self.since.elapsed().as_secs_f64());
        if let Ok(mut users) = m.users.lock() {
            if let Some(count) = users.get_mut(&self.user) {
                *count -= 1;
                if *count == 0 {
                    users.remove(&self.user);
                }
            }
            m.users_collaborating.set(users.len() as i64);
        }
    }
}
