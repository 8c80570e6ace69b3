//! Change notifications for the app's backend: signed webhooks, so that search indexes,
//! exports and caches follow the scenes without polling.
//!
//! Events: `scene.changed` (debounced per scene: sent once `TROUPE_WEBHOOK_DEBOUNCE` has
//! passed since the scene's last committed change, or four times that since the first one
//! while people keep typing), `scene.restored` and `scene.backfilled` (at once). Each is a
//! `POST` of a JSON body to `TROUPE_WEBHOOK_URL`, signed with HMAC-SHA256 of the exact body
//! bytes under `TROUPE_WEBHOOK_SECRET`: `X-Troupe-Signature: sha256=<hex>`. Delivery is at
//! least once: an answer other than 2xx (or none within 10 s) is retried with backoff (1 s,
//! 2 s, 4 s … six attempts) with the same body and `id`, so a receiver drops repeats by id.
//! The scene's owner sends its events; after a failover the new owner does.
//!
//! Never in a room's way: rooms hand events to a bounded queue without waiting (a full
//! queue drops the event and counts it), one task coalesces and sends them, at most
//! [`IN_FLIGHT`] at once and [`QUEUED`] waiting; more are dropped and counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::{mpsc, Semaphore};
use troupe_runtime::tasks::CancellationToken;

use crate::metrics::Metrics;

/// Deliveries sent at once.
pub const IN_FLIGHT: usize = 8;
/// Deliveries waiting to be sent (or retried); beyond, new ones are dropped.
pub const QUEUED: usize = 10_000;
/// Events rooms may hand over before the task takes them.
const INBOX: usize = 4096;
/// Attempts per delivery.
const ATTEMPTS: u32 = 6;
/// Longest one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how events are sent.
#[derive(Clone)]
pub struct WebhookSettings {
    pub url: Uri,
    pub secret: Vec<u8>,
    pub debounce: Duration,
    /// The first retry waits this long; each next one twice as long.
    pub retry_base: Duration,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("url", &self.url)
            .field("debounce", &self.debounce)
            .finish_non_exhaustive()
    }
}

/// One event handed over by a room or the scene API.
enum Event {
    /// The scene's log committed up to `seq`.
    Changed { scene: String, seq: u64 },
    /// Sent at once: `kind` with `fields` added to the body.
    Now {
        kind: &'static str,
        scene: String,
        fields: serde_json::Value,
    },
}

/// The handle rooms and handlers send events through; does nothing when webhooks are off.
#[derive(Clone, Default)]
pub struct Webhooks {
    tx: Option<mpsc::Sender<Event>>,
    metrics: Option<Arc<Metrics>>,
}

impl Webhooks {
    /// Starts the sender; it flushes what is pending and stops once `shutdown` fires.
    pub fn start(
        settings: WebhookSettings,
        node: u64,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::channel(INBOX);
        let sender = Sender::new(settings, node, metrics.clone());
        tokio::spawn(sender.run(rx, shutdown));
        Webhooks {
            tx: Some(tx),
            metrics: Some(metrics),
        }
    }

    /// The scene's log committed up to `seq` (coalesced per scene).
    pub fn changed(&self, scene: &str, seq: u64) {
        self.send(|| Event::Changed {
            scene: scene.to_string(),
            seq,
        });
    }

    /// The scene was restored; `fields` say to what and by whom.
    pub fn restored(&self, scene: &str, fields: serde_json::Value) {
        self.send(|| Event::Now {
            kind: "scene.restored",
            scene: scene.to_string(),
            fields,
        });
    }

    /// The scene was seeded from its P1 content.
    pub fn backfilled(&self, scene: &str, fields: serde_json::Value) {
        self.send(|| Event::Now {
            kind: "scene.backfilled",
            scene: scene.to_string(),
            fields,
        });
    }

    fn send(&self, event: impl FnOnce() -> Event) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send(event()).is_err() {
            if let Some(metrics) = &self.metrics {
                metrics.webhook("dropped");
            }
        }
    }
}

/// A scene's `scene.changed` waiting for its debounce.
struct Pending {
    first: Instant,
    last: Instant,
    seq: u64,
}

/// The task that coalesces events and delivers them.
struct Sender {
    settings: WebhookSettings,
    key: ring::hmac::Key,
    node: u64,
    metrics: Arc<Metrics>,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    in_flight: Arc<Semaphore>,
    queued: Arc<Semaphore>,
    deliveries: AtomicU64,
}

impl Sender {
    fn new(settings: WebhookSettings, node: u64, metrics: Arc<Metrics>) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        Arc::new(Sender {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &settings.secret),
            settings,
            node,
            metrics,
            http: Client::builder(TokioExecutor::new()).build(connector),
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
            queued: Arc::new(Semaphore::new(QUEUED)),
            deliveries: AtomicU64::new(0),
        })
    }

    async fn run(self: Arc<Self>, mut rx: mpsc::Receiver<Event>, shutdown: CancellationToken) {
        let debounce = self.settings.debounce;
        let mut pending: HashMap<String, Pending> = HashMap::new();
        let mut tick = tokio::time::interval((debounce / 4).max(Duration::from_millis(20)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = rx.recv() => match event {
                    Some(Event::Changed { scene, seq }) => {
                        let now = Instant::now();
                        let entry = pending.entry(scene).or_insert(Pending { first: now, last: now, seq });
                        entry.last = now;
                        entry.seq = entry.seq.max(seq);
                    }
                    Some(Event::Now { kind, scene, fields }) => self.clone().deliver(kind, &scene, fields),
                    None => break,
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    let due: Vec<String> = pending
                        .iter()
                        .filter(|(_, p)| now >= p.last + debounce || now >= p.first + debounce * 4)
                        .map(|(scene, _)| scene.clone())
                        .collect();
                    for scene in due {
                        if let Some(p) = pending.remove(&scene) {
                            self.clone().deliver("scene.changed", &scene, serde_json::json!({ "seq": p.seq }));
                        }
                    }
                }
                _ = shutdown.cancelled() => break,
            }
        }
        // Stopping: what is pending goes out now, once (the receiver refetches anyway).
        for (scene, p) in pending {
            self.clone()
                .deliver("scene.changed", &scene, serde_json::json!({ "seq": p.seq }));
        }
    }

    /// Sends one event in a task of its own, retried until delivered or given up.
    fn deliver(self: Arc<Self>, kind: &'static str, scene: &str, mut fields: serde_json::Value) {
        let Ok(queued) = self.queued.clone().try_acquire_owned() else {
            self.metrics.webhook("dropped");
            tracing::warn!(%scene, event = kind, "webhook dropped: too many deliveries waiting");
            return;
        };
        let n = self.deliveries.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{}-{n}", self.node, rand::random::<u32>());
        if !fields.is_object() {
            fields = serde_json::json!({});
        }
        fields["id"] = id.clone().into();
        fields["event"] = kind.into();
        fields["scene"] = scene.into();
        fields["node"] = self.node.into();
        fields["at_ms"] = troupe_proto::clock::now_ms().into();
        let body = Bytes::from(fields.to_string());
        let signature = hex(ring::hmac::sign(&self.key, &body).as_ref());
        let scene = scene.to_string();
        tokio::spawn(async move {
            let _queued = queued;
            let mut wait = self.settings.retry_base;
            for attempt in 1..=ATTEMPTS {
                let outcome = {
                    let Ok(_sending) = self.in_flight.acquire().await else {
                        return;
                    };
                    self.attempt(kind, &id, &signature, body.clone()).await
                };
                match outcome {
                    Ok(()) => {
                        self.metrics.webhook("delivered");
                        tracing::debug!(%scene, event = kind, %id, attempt, "webhook delivered");
                        return;
                    }
                    Err(Attempt::Refused(status)) => {
                        self.metrics.webhook("refused");
                        tracing::warn!(%scene, event = kind, %id, %status, "webhook refused by the receiver; not retried");
                        return;
                    }
                    Err(Attempt::Failed(why)) if attempt < ATTEMPTS => {
                        self.metrics.webhook("retried");
                        tracing::debug!(%scene, event = kind, %id, attempt, %why, "webhook failed; retrying");
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                    }
                    Err(Attempt::Failed(why)) => {
                        self.metrics.webhook("failed");
                        tracing::warn!(%scene, event = kind, %id, %why, "webhook given up after {ATTEMPTS} attempts");
                    }
                }
            }
        });
    }

    async fn attempt(&self, kind: &str, id: &str, signature: &str, body: Bytes) -> Result<(), Attempt> {
        let request = Request::post(self.settings.url.clone())
            .header("content-type", "application/json")
            .header("user-agent", concat!("troupe/", env!("CARGO_PKG_VERSION")))
            .header("x-troupe-event", kind)
            .header("x-troupe-delivery", id)
            .header("x-troupe-signature", format!("sha256={signature}"))
            .body(Full::new(body))
            .map_err(|e| Attempt::Failed(e.to_string()))?;
        let response = tokio::time::timeout(ATTEMPT_TIMEOUT, self.http.request(request))
            .await
            .map_err(|_| Attempt::Failed(format!("no answer within {ATTEMPT_TIMEOUT:?}")))?
            .map_err(|e| Attempt::Failed(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else if status.is_client_error()
            && status != hyper::StatusCode::REQUEST_TIMEOUT
            && status != hyper::StatusCode::TOO_MANY_REQUESTS
        {
            Err(Attempt::Refused(status))
        } else {
            Err(Attempt::Failed(format!("answered {status}")))
        }
    }
}

/// Why an attempt did not deliver.
enum Attempt {
    /// The receiver said no for good (a 4xx other than 408 and 429).
    Refused(hyper::StatusCode),
    /// Worth trying again: no answer, a 5xx, 408 or 429.
    Failed(String),
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The signature a receiver computes to check a delivery: `sha256=<hex>` of HMAC-SHA256
/// over the body's exact bytes.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    format!("sha256={}", hex(ring::hmac::sign(&key, body).as_ref()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            super::signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
