//! An editor that follows its scene across the cluster, as a client should: it types into
//! `Y.Text` "text" (or a screenplay block of its own, [`Typing`]) with durable acks, follows
//! a 4301 to the owner it names, and after any other loss asks the router again, retrying
//! with a growing pause while it keeps typing offline. When its acks stall it asks the router
//! whether the scene has moved — a frozen or cut-off owner closes nothing, so this heartbeat
//! is the only way to notice it.
//! Used by the chaos harness and the cluster tests.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::sync::watch;
use troupe_membership::rpc::RpcClient;
use troupe_proto::CloseCode;
use troupe_runtime::Backoff;

use crate::client::{scene_url, ClientError, ClientOptions, EditorClient, Sent, Status};
use crate::typing::{block_header, type_into_block, Typing};

/// An editor that types into one scene (see [`Typing`]) and follows the scene wherever it
/// goes: a 4301 close names the new owner; any other loss asks the router again.
pub struct FollowingEditor {
    pub scene: String,
    client: Arc<EditorClient>,
    typed: Arc<Mutex<Vec<String>>>,
    outages: Arc<Mutex<Vec<Outage>>>,
    acks: Arc<Mutex<AckLog>>,
    stop: watch::Sender<bool>,
    /// The typist; `None` once stopped.
    task: Option<tokio::task::JoinHandle<()>>,
    router: SocketAddr,
    token: String,
    typing: Typing,
}

impl FollowingEditor {
    /// Resolves the owner through `router`, connects with durable acks, and types a token
    /// `{prefix}-{n};` into `Y.Text` "text" every `interval`.
    pub async fn start(
        router: SocketAddr,
        scene: &str,
        token: &str,
        prefix: &str,
        interval: Duration,
    ) -> anyhow::Result<Self> {
        Self::start_following(router, scene, token, prefix, interval, Typing::Text, false).await
    }

    /// [`Self::start`], typing where `typing` says; with `watch_moves`, the editor also
    /// keeps a route look-up open that the router answers when the scene moves (`?unless=`
    /// its host), and leaves its connection then, as the browser client does.
    pub async fn start_following(
        router: SocketAddr,
        scene: &str,
        token: &str,
        prefix: &str,
        interval: Duration,
        typing: Typing,
        watch_moves: bool,
    ) -> anyhow::Result<Self> {
        let (_, mut url, _) = resolve(router, scene).await?;
        let mut attempts = 0;
        // The router may be a moment behind a change: follow 4301 as any client would.
        let client = loop {
            attempts += 1;
            let opts = ClientOptions {
                acks: true,
                connect_timeout: CONNECT_TIMEOUT,
                ..Default::default()
            };
            // The 4301 may close the socket before the handshake's answer or after it.
            let synced = async {
                let client = EditorClient::connect(&format!("{url}/ws/scenes"), scene, token, opts).await?;
                client.wait_synced(Duration::from_secs(10)).await?;
                Ok::<_, ClientError>(client)
            };
            match synced.await {
                Ok(client) => break Arc::new(client),
                Err(ClientError::Closed(info))
                    if info.code == Some(CloseCode::Moved.code()) && attempts < 5 =>
                {
                    // Views of a change reach the router and the nodes a moment apart.
                    tokio::time::sleep(Duration::from_millis(50 * attempts)).await;
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
        let outages = Arc::new(Mutex::new(Vec::new()));
        let acks = Arc::new(Mutex::new(AckLog::default()));
        let (stop, stop_rx) = watch::channel(false);
        let (host_tx, host_rx) = watch::channel(url);
        if watch_moves {
            tokio::spawn(watch_moves_of(
                client.clone(),
                router,
                scene.to_string(),
                host_rx,
                stop_rx.clone(),
            ));
        }
        let typist = Typist {
            client: client.clone(),
            router,
            routes: RpcClient::plain(),
            scene: scene.to_string(),
            token: token.to_string(),
            prefix: prefix.to_string(),
            typing,
            n: 0,
            host: host_tx,
            typed: typed.clone(),
            acks: acks.clone(),
            outages: outages.clone(),
        };
        let task = tokio::spawn(typist.type_and_follow(interval, stop_rx));
        Ok(FollowingEditor {
            scene: scene.to_string(),
            client,
            typed,
            outages,
            acks,
            stop,
            task: Some(task),
            router,
            token: token.to_string(),
            typing,
        })
    }

    /// Leaves the current connection for the owner the router names now, as a client
    /// does when its heartbeat times out.
    /// How many of its edits were acknowledged so far.
    pub fn acknowledged(&self) -> usize {
        self.acks.lock().map_or(0, |log| log.acknowledged)
    }

    pub async fn move_on(&self) -> anyhow::Result<()> {
        let (_, url, _) = resolve(self.router, &self.scene).await?;
        follow(&self.client, Some(url), &self.scene, &self.token).await
    }

    /// Stops typing (and following moves) and waits for the typist to end; what was
    /// typed is still to be acknowledged.
    pub async fn stop_typing(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Returns once the editor is connected, synced, and every update it sent on its
    /// connection is acknowledged (reconnecting to the scene's owner if it must).
    pub async fn settle(&self) -> anyhow::Result<()> {
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
        Ok(())
    }

    /// Stops typing; returns once what it typed is stored (see [`Self::settle`]), with
    /// its text.
    pub async fn finish(mut self) -> anyhow::Result<FinishedEditor> {
        self.stop_typing().await;
        self.settle().await?;
        let typing = self.typing;
        let text = self.client.read(move |txn| typing.read(txn)).await?;
        let typed = self.typed.lock().map(|t| t.clone()).unwrap_or_default();
        let outages = self.outages.lock().map(|g| g.clone()).unwrap_or_default();
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
            outages,
            acks,
        })
    }
}

pub struct FinishedEditor {
    pub scene: String,
    pub typed: Vec<String>,
    pub text: String,
    /// Every time the editor lost its scene's host, in order.
    pub outages: Vec<Outage>,
    /// Each edit: when it was sent and how long until it was acknowledged.
    pub acks: Vec<(Instant, Option<Duration>)>,
}

/// A time the editor could not reach its scene's host.
#[derive(Debug, Clone, Copy)]
pub struct Outage {
    /// When the connection closed, or when the first edit that was never acknowledged on it
    /// was sent (a stalled connection).
    pub began: Instant,
    /// From `began` until the editor was synced with the scene's host again.
    pub lasted: Duration,
}

/// How long an edit may wait for its ack before the editor asks the router whether the
/// scene has moved: the browser client's default `stallTimeout` (web/src/index.js).
const ACK_STALL: Duration = Duration::from_millis(500);
/// How often a stalled editor asks the router again: half of [`ACK_STALL`], as the browser
/// client does.
const STALL_RECHECK: Duration = Duration::from_millis(250);
/// A host that does not accept a connection within this is treated as gone.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The owner of `scene` according to the router at `router`: `(node, url, epoch)`.
pub async fn resolve(router: SocketAddr, scene: &str) -> anyhow::Result<(u64, String, u64)> {
    resolve_with(&RpcClient::plain(), router, scene).await
}

/// [`resolve`] over `client`'s kept-alive connections, as a browser asks its router again
/// and again over the same one.
async fn resolve_with(
    client: &RpcClient,
    router: SocketAddr,
    scene: &str,
) -> anyhow::Result<(u64, String, u64)> {
    let route: troupe_membership::Route = client
        .get(
            &router.to_string(),
            &format!("/v1/route/{scene}"),
            Duration::from_secs(5),
        )
        .await?;
    Ok((route.node.0, route.url, route.epoch))
}

/// The owner's URL of `scene` from a look-up the router holds until the owner is another
/// than `unless`, or `wait` (the router's own bound, 25 s, when `None`).
async fn route_unless(
    routes: &RpcClient,
    router: &str,
    scene: &str,
    unless: &str,
    wait: Option<Duration>,
) -> anyhow::Result<String> {
    let unless: String = url::form_urlencoded::byte_serialize(unless.as_bytes()).collect();
    let mut path = format!("/v1/route/{scene}?unless={unless}");
    if let Some(wait) = wait {
        path.push_str(&format!("&wait={}", wait.as_millis()));
    }
    let hold = wait.unwrap_or(Duration::from_secs(25)) + Duration::from_secs(5);
    let route: troupe_membership::Route = routes.get(router, &path, hold).await?;
    Ok(route.url)
}

/// Holds a route look-up `?unless=` the editor's host until the router answers: when it
/// names another owner, drops the editor's connection (its typist then follows the router),
/// and watches the next host once the typist has one. Ends when `stop` turns true.
async fn watch_moves_of(
    client: Arc<EditorClient>,
    router: SocketAddr,
    scene: String,
    mut host: watch::Receiver<String>,
    mut stop: watch::Receiver<bool>,
) {
    let routes = RpcClient::plain();
    let router = router.to_string();
    loop {
        let watched = host.borrow_and_update().clone();
        let asked = route_unless(&routes, &router, &scene, &watched, None);
        tokio::select! {
            answer = asked => match answer {
                Ok(url) if url != watched && *host.borrow() == watched => {
                    let _ = client.drop_connection().await;
                    // Watch again once the typist is on its way to another host.
                    tokio::select! {
                        _ = host.changed() => {}
                        _ = stop.changed() => return,
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => return,
                },
            },
            _ = host.changed() => {}
            _ = stop.changed() => return,
        }
    }
}

/// What one editor task needs.
struct Typist {
    client: Arc<EditorClient>,
    router: SocketAddr,
    /// The editor's own connection to the router, kept between questions.
    routes: RpcClient,
    scene: String,
    token: String,
    prefix: String,
    typing: Typing,
    n: u64,
    /// The base URL of the node the editor is connected (or connecting) to, as the move
    /// watch ([`watch_moves_of`]) sees it too.
    host: watch::Sender<String>,
    typed: Arc<Mutex<Vec<String>>>,
    acks: Arc<Mutex<AckLog>>,
    outages: Arc<Mutex<Vec<Outage>>>,
}

/// Each edit's time to its durable ack.
#[derive(Default)]
pub struct AckLog {
    /// Sent and not yet acknowledged: `(sent at, connection, message number)`.
    pending: VecDeque<(Instant, u64, u64)>,
    /// `(sent at, time to ack)`; `None` when its connection ended first (its content went
    /// out again in the next sync handshake).
    pub samples: Vec<(Instant, Option<Duration>)>,
    /// How many edits were acknowledged so far.
    pub acknowledged: usize,
}

impl AckLog {
    /// Settles what the client's status says was acknowledged or lost.
    fn settle(&mut self, status: &Status) {
        let now = Instant::now();
        while let Some(&(sent, connection, n)) = self.pending.front() {
            if connection < status.connection {
                self.samples.push((sent, None));
            } else if n <= status.acked {
                self.acknowledged += 1;
                self.samples
                    .push((sent, Some(now.saturating_duration_since(sent))));
            } else {
                break;
            }
            self.pending.pop_front();
        }
    }

    /// When the oldest edit still waiting for its ack was sent.
    fn oldest_pending(&self) -> Option<Instant> {
        self.pending.front().map(|(sent, _, _)| *sent)
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
        let sent = match self.typing {
            Typing::Text => self.client.push("text", &item).await,
            Typing::Blocks => {
                let (header, typed) = (block_header(&self.prefix), item.clone());
                self.client
                    .edit(move |txn| type_into_block(txn, &header, &typed))
                    .await
                    .map(|((), sent)| sent)
            }
        };
        if let Ok(sent) = sent {
            if let Ok(mut t) = self.typed.lock() {
                t.push(item);
            }
            if let (Sent::Message { connection, n }, Ok(mut acks)) = (sent, self.acks.lock()) {
                acks.pending.push_back((sent_at, connection, n));
            }
        }
    }

    /// Gets back to the scene after a lost connection: to the URL of a 4301, else wherever
    /// the router says, retrying with a growing pause (and typing on meanwhile). Each pause
    /// is spent on a route look-up held until the router names another owner than the one
    /// that failed ([`Self::pause_for_a_move`]), so a takeover is followed the moment the
    /// router learns of it. Returns once synced with the scene's host.
    async fn recover(
        &mut self,
        mut moved_to: Option<String>,
        interval: Duration,
        stop: &watch::Receiver<bool>,
    ) -> bool {
        let mut pauses = Backoff::new(Duration::from_millis(50), Duration::from_millis(250));
        loop {
            if *stop.borrow() {
                return false;
            }
            let target = match moved_to.take() {
                Some(url) => Some(url),
                None => resolve_with(&self.routes, self.router, &self.scene)
                    .await
                    .ok()
                    .map(|(_, url, _)| url),
            };
            if let Some(url) = &target {
                self.host.send_replace(url.clone());
            }
            if target.is_some()
                && follow(&self.client, target.clone(), &self.scene, &self.token)
                    .await
                    .is_ok()
            {
                match self.client.wait_synced(Duration::from_secs(5)).await {
                    Ok(()) => return true,
                    Err(ClientError::Closed(info))
                        if info.code == Some(CloseCode::Moved.code()) && !info.reason.is_empty() =>
                    {
                        moved_to = Some(info.reason);
                        continue;
                    }
                    Err(_) => {}
                }
            }
            moved_to = self.pause_for_a_move(target, pauses.next_delay(), interval).await;
        }
    }

    /// Waits `pause` before the next attempt, typing on meanwhile, while the router holds a
    /// look-up `?unless=` the owner that just `failed` for as long: returns the owner the
    /// router names (at once when it names another, after the pause when it names the same),
    /// or `None` when it was not asked or did not answer.
    async fn pause_for_a_move(
        &mut self,
        failed: Option<String>,
        pause: Duration,
        interval: Duration,
    ) -> Option<String> {
        let until = tokio::time::Instant::now() + pause;
        let asked = {
            let (routes, router, scene) = (self.routes.clone(), self.router.to_string(), self.scene.clone());
            let failed = failed.clone();
            async move {
                route_unless(&routes, &router, &scene, &failed?, Some(pause))
                    .await
                    .ok()
            }
        };
        tokio::pin!(asked);
        let mut answered = failed.is_none();
        let mut named = None;
        let mut next_edit = tokio::time::Instant::now();
        loop {
            let now = tokio::time::Instant::now();
            if now >= until {
                return named;
            }
            if now >= next_edit {
                self.type_one().await;
                next_edit += interval;
            }
            tokio::select! {
                answer = &mut asked, if !answered => {
                    answered = true;
                    if answer.is_some() && answer != failed {
                        return answer;
                    }
                    // The same owner (after the pause, or at once from a router that does
                    // not hold look-ups): try it again when the pause is over.
                    named = answer;
                }
                _ = tokio::time::sleep_until(next_edit.min(until)) => {}
            }
        }
    }
}

impl Typist {
    /// Types every `interval`, follows the scene after every loss, and drops a connection
    /// whose acks stalled once the router names another host for the scene.
    async fn type_and_follow(mut self, interval: Duration, mut stop: watch::Receiver<bool>) {
        let mut status = self.client.watch_status();
        let mut next_edit = Instant::now();
        let mut last_check = Instant::now();
        // Set when the editor drops a stalled connection: the outage began at the stall.
        let mut stalled_since: Option<Instant> = None;
        loop {
            // Woken only for the next edit or a stall check that may find one: thousands of
            // editors share one thread, and one that ticked every 250 ms whatever it had to do
            // cost the thread 48,000 wake-ups a second at 12,000 editors.
            let wake = self
                .next_check(last_check)
                .map_or(next_edit, |check| check.min(next_edit));
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {
                    if Instant::now() >= next_edit {
                        self.type_one().await;
                        next_edit += interval;
                    }
                    if let Some(since) = self.stalled(&mut last_check).await {
                        stalled_since = Some(since);
                        let _ = self.client.drop_connection().await;
                    }
                }
                Ok(()) = status.changed() => {
                    let current = status.borrow_and_update().clone();
                    if let Ok(mut acks) = self.acks.lock() {
                        acks.settle(&current);
                    }
                    if let Some(info) = current.closed.clone() {
                        let moved_to = (info.code == Some(CloseCode::Moved.code()) && !info.reason.is_empty()).then(|| info.reason.clone());
                        let began = stalled_since.take().map_or(info.at, |s| s.min(info.at));
                        if self.recover(moved_to, interval, &stop).await {
                            if let Ok(mut o) = self.outages.lock() {
                                o.push(Outage { began, lasted: began.elapsed() });
                            }
                            // Back: type at once, so the first stored edit marks the recovery.
                            self.type_one().await;
                            next_edit = Instant::now() + interval;
                        }
                        status.borrow_and_update();
                    }
                }
                Ok(()) = stop.changed() => return,
            }
        }
    }

    /// When [`Self::stalled`] may find a stall: [`ACK_STALL`] after the oldest edit still
    /// waiting for its ack, and at least [`STALL_RECHECK`] after the last check; `None` while
    /// nothing waits.
    fn next_check(&self, last_check: Instant) -> Option<Instant> {
        let since = self.acks.lock().ok()?.oldest_pending()?;
        Some((since + ACK_STALL).max(last_check + STALL_RECHECK))
    }

    /// If an edit has waited longer than [`ACK_STALL`] for its ack and the router now names
    /// another host for the scene, returns when the stall began. The router is asked at most
    /// every [`STALL_RECHECK`]; a slow store on the same host is waited out.
    async fn stalled(&mut self, last_check: &mut Instant) -> Option<Instant> {
        if self.next_check(*last_check)? > Instant::now() {
            return None;
        }
        let since = self.acks.lock().ok()?.oldest_pending()?;
        *last_check = Instant::now();
        let (_, url, _) = resolve_with(&self.routes, self.router, &self.scene).await.ok()?;
        (url != *self.host.borrow()).then_some(since)
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
