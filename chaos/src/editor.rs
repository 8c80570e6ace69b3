//! An editor that follows its scene across the cluster, as a client should: it types into
//! `Y.Text` "text" with durable acks, follows a 4301 to the owner it names, and after any
//! other loss asks the router again, retrying with a growing pause while it keeps typing
//! offline. Used by the chaos harness and the cluster tests.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::sync::watch;
use troupe_membership::rpc::RpcClient;

use crate::client::{scene_url, ClientError, ClientOptions, EditorClient, Sent, Status};

/// An editor that types into `Y.Text` "text" of one scene and follows the scene wherever it
/// goes: a 4301 close names the new owner; any other loss asks the router again.
pub struct FollowingEditor {
    pub scene: String,
    client: Arc<EditorClient>,
    typed: Arc<Mutex<Vec<String>>>,
    /// Time from each close until the editor was synced with the scene's new host.
    gaps: Arc<Mutex<Vec<Duration>>>,
    acks: Arc<Mutex<AckLog>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    router: SocketAddr,
    token: String,
}

impl FollowingEditor {
    /// Resolves the owner through `router`, connects with durable acks, and types a token
    /// `{prefix}-{n};` every `interval`.
    pub async fn start(
        router: SocketAddr,
        scene: &str,
        token: &str,
        prefix: &str,
        interval: Duration,
    ) -> anyhow::Result<Self> {
        let (_, mut url, _) = resolve(router, scene).await?;
        let mut attempts = 0;
        // The router may be a moment behind a change: follow 4301 as any client would.
        let client = loop {
            attempts += 1;
            let opts = ClientOptions {
                acks: true,
                ..Default::default()
            };
            let client = EditorClient::connect(&format!("{url}/ws/scenes"), scene, token, opts).await?;
            match client.wait_synced(Duration::from_secs(10)).await {
                Ok(()) => break Arc::new(client),
                Err(ClientError::Closed(info)) if info.code == Some(4301) && attempts < 5 => {
                    url = if info.reason.is_empty() {
                        resolve(router, scene).await?.1
                    } else {
                        info.reason
                    };
                }
                Err(e) => return Err(e.into()),
            }
        };
        let typed = Arc::new(Mutex::new(Vec::new()));
        let gaps = Arc::new(Mutex::new(Vec::new()));
        let acks = Arc::new(Mutex::new(AckLog::default()));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(type_and_follow(
            client.clone(),
            router,
            scene.to_string(),
            token.to_string(),
            prefix.to_string(),
            interval,
            typed.clone(),
            gaps.clone(),
            acks.clone(),
            stop_rx,
        ));
        Ok(FollowingEditor {
            scene: scene.to_string(),
            client,
            typed,
            gaps,
            acks,
            stop,
            task,
            router,
            token: token.to_string(),
        })
    }

    /// Leaves the current connection for the owner the router names now, as a client
    /// does when its heartbeat times out.
    pub async fn move_on(&self) -> anyhow::Result<()> {
        let (_, url, _) = resolve(self.router, &self.scene).await?;
        follow(&self.client, Some(url), &self.scene, &self.token).await
    }

    /// Stops typing; returns once the editor is connected, synced, and every update it
    /// sent on its connection is acknowledged: what it typed is stored.
    pub async fn finish(self) -> anyhow::Result<FinishedEditor> {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.client.status();
            if status.connected && status.synced && status.acked >= status.sent_updates {
                break;
            }
            if Instant::now() > deadline {
                bail!("editor of {} never settled: {status:?}", self.scene);
            }
            if status.closed.is_some() || !status.connected {
                let base = resolve(self.router, &self.scene)
                    .await
                    .ok()
                    .map(|(_, url, _)| url);
                if base.is_some() {
                    let _ = follow(&self.client, base, &self.scene, &self.token).await;
                    let _ = self.client.wait_synced(Duration::from_secs(5)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let text = self.client.text("text").await?;
        let typed = self.typed.lock().map(|t| t.clone()).unwrap_or_default();
        let gaps = self.gaps.lock().map(|g| g.clone()).unwrap_or_default();
        let acks = match self.acks.lock() {
            Ok(mut log) => {
                log.settle(&self.client.status());
                log.finish();
                std::mem::take(&mut log.samples)
            }
            Err(_) => Vec::new(),
        };
        Ok(FinishedEditor {
            scene: self.scene,
            typed,
            text,
            gaps,
            acks,
        })
    }
}

pub struct FinishedEditor {
    pub scene: String,
    pub typed: Vec<String>,
    pub text: String,
    pub gaps: Vec<Duration>,
    /// Each edit: when it was sent and how long until it was acknowledged.
    pub acks: Vec<(Instant, Option<Duration>)>,
}

/// The owner of `scene` according to the router at `router`: `(node, url, epoch)`.
pub async fn resolve(router: SocketAddr, scene: &str) -> anyhow::Result<(u64, String, u64)> {
    let route: troupe_membership::Route = RpcClient::new()
        .get(
            &router.to_string(),
            &format!("/v1/route/{scene}"),
            Duration::from_secs(5),
        )
        .await?;
    Ok((route.node, route.url, route.epoch))
}

/// What one editor task needs.
struct Typist {
    client: Arc<EditorClient>,
    router: SocketAddr,
    scene: String,
    token: String,
    prefix: String,
    n: u64,
    typed: Arc<Mutex<Vec<String>>>,
    acks: Arc<Mutex<AckLog>>,
}

/// Each edit's time to its durable ack.
#[derive(Default)]
pub struct AckLog {
    /// Sent and not yet acknowledged: `(sent at, connection, message number)`.
    pending: VecDeque<(Instant, u64, u64)>,
    /// `(sent at, time to ack)`; `None` when its connection ended first (its content went
    /// out again in the next sync handshake).
    pub samples: Vec<(Instant, Option<Duration>)>,
}

impl AckLog {
    /// Settles what the client's status says was acknowledged or lost.
    fn settle(&mut self, status: &Status) {
        let now = Instant::now();
        while let Some(&(sent, connection, n)) = self.pending.front() {
            if connection < status.connection {
                self.samples.push((sent, None));
            } else if n <= status.acked {
                self.samples
                    .push((sent, Some(now.saturating_duration_since(sent))));
            } else {
                break;
            }
            self.pending.pop_front();
        }
    }

    fn finish(&mut self) {
        for (sent, _, _) in self.pending.drain(..) {
            self.samples.push((sent, None));
        }
    }
}

impl Typist {
    /// Types the next token (offline too: it goes out with the next sync handshake).
    async fn type_one(&mut self) {
        let item = format!("{}-{};", self.prefix, self.n);
        self.n += 1;
        let sent_at = Instant::now();
        if let Ok(sent) = self.client.push("text", &item).await {
            if let Ok(mut t) = self.typed.lock() {
                t.push(item);
            }
            if let (Sent::Message { connection, n }, Ok(mut acks)) = (sent, self.acks.lock()) {
                acks.pending.push_back((sent_at, connection, n));
            }
        }
    }

    /// Gets back to the scene after a lost connection: to the URL of a 4301, else wherever
    /// the router says, retrying with a growing pause (and typing on meanwhile). Returns
    /// once synced with the scene's host.
    async fn recover(
        &mut self,
        mut moved_to: Option<String>,
        interval: Duration,
        stop: &watch::Receiver<bool>,
    ) -> bool {
        let mut pause = Duration::from_millis(50);
        loop {
            if *stop.borrow() {
                return false;
            }
            let target = match moved_to.take() {
                Some(url) => Some(url),
                None => resolve(self.router, &self.scene)
                    .await
                    .ok()
                    .map(|(_, url, _)| url),
            };
            if target.is_some()
                && follow(&self.client, target, &self.scene, &self.token)
                    .await
                    .is_ok()
            {
                match self.client.wait_synced(Duration::from_secs(5)).await {
                    Ok(()) => return true,
                    Err(ClientError::Closed(info)) if info.code == Some(4301) && !info.reason.is_empty() => {
                        moved_to = Some(info.reason);
                        continue;
                    }
                    Err(_) => {}
                }
            }
            let until = tokio::time::Instant::now() + pause;
            while tokio::time::Instant::now() < until {
                self.type_one().await;
                tokio::time::sleep(interval.min(pause)).await;
            }
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn type_and_follow(
    client: Arc<EditorClient>,
    router: SocketAddr,
    scene: String,
    token: String,
    prefix: String,
    interval: Duration,
    typed: Arc<Mutex<Vec<String>>>,
    gaps: Arc<Mutex<Vec<Duration>>>,
    acks: Arc<Mutex<AckLog>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut status = client.watch_status();
    let mut tick = tokio::time::interval(interval);
    let mut typist = Typist {
        client: client.clone(),
        router,
        scene,
        token,
        prefix,
        n: 0,
        typed,
        acks,
    };
    loop {
        tokio::select! {
            _ = tick.tick() => typist.type_one().await,
            Ok(()) = status.changed() => {
                let current = status.borrow_and_update().clone();
                if let Ok(mut acks) = typist.acks.lock() {
                    acks.settle(&current);
                }
                let closed = current.closed.clone();
                if let Some(info) = closed {
                    let moved_to = (info.code == Some(4301) && !info.reason.is_empty()).then(|| info.reason.clone());
                    if typist.recover(moved_to, interval, &stop).await {
                        if let Ok(mut g) = gaps.lock() {
                            g.push(info.at.elapsed());
                        }
                    }
                    status.borrow_and_update();
                }
            }
            Ok(()) = stop.changed() => return,
        }
    }
}

/// Reconnects to `base` (a node's ws URL), or to the same URL when `None`.
async fn follow(client: &EditorClient, base: Option<String>, scene: &str, token: &str) -> anyhow::Result<()> {
    match base {
        Some(base) => {
            let url = scene_url(&format!("{base}/ws/scenes"), scene, token, true)?;
            client.reconnect_to(&url).await?;
        }
        None => client.reconnect().await?,
    }
    Ok(())
}
