//! A P1 writer: the adopting product's REST autosave on one scene. Every `every` it reads
//! the scene, saves one new marker (`PUT` of the whole scene with the marker in one block
//! or in a new block, or a `PATCH` inserting a block; see [`P1WriteKind`]), and records
//! what became of it.
//!
//! What an answer proves decides what the checker expects of the marker:
//! - 200: durable, so exactly once;
//! - 409 (`conflict`, `unknown_version`), and 503 `moving` (the router reached a node that
//!   does not own the scene): nothing changed, so the same marker is tried again on a fresh
//!   read;
//! - any other 5xx, a timeout or a cut connection: it may have landed (a merge in a room
//!   that is going answers 503 too), so at most once — and it is never sent again, since a
//!   second copy could then land beside the first;
//! - other 4xx: refused, so never there (and a problem: the writer sent a bad request).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::watch;
use troupe_node::content::blocks::{Block, BlockType};

use super::api::ContentApi;
use super::markers::{p1_marker, Expect};
use super::tables::{P1Scene, P1Tables};
use crate::scenario::{P1WriteKind, SplitMix};

/// Tries of one marker that are refused (409) or sent to a former owner before it is
/// given up.
const ATTEMPTS: usize = 6;
/// Pause before trying again after a refusal or a failed read.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// What a writer needs.
#[derive(Debug, Clone)]
pub struct WriterSpec {
    pub scene: String,
    pub scene_index: usize,
    pub writer_index: usize,
    pub every: Duration,
    /// Wait this long before the first save (spreads the writers over `every`).
    pub offset: Duration,
    pub writes: Vec<P1WriteKind>,
    pub seed: u64,
}

/// What became of one marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Answered 200.
    Acknowledged,
    /// No answer, or one that does not say (why).
    Unknown(String),
    /// Refused, or never sent (why).
    Refused(String),
}

impl Outcome {
    pub fn expect(&self) -> Expect {
        match self {
            Outcome::Acknowledged => Expect::Once,
            Outcome::Unknown(_) => Expect::AtMostOnce,
            Outcome::Refused(_) => Expect::Never,
        }
    }
}

/// Everything a writer did.
#[derive(Debug, Clone, Default)]
pub struct WriterLog {
    pub scene: String,
    /// Every marker it tried, in order, with its outcome.
    pub markers: Vec<(String, Outcome)>,
    pub acknowledged_by_kind: BTreeMap<P1WriteKind, usize>,
    /// 409 answers (the marker was tried again on a fresh read).
    pub conflicts: usize,
    /// 503 `moving` answers (tried again).
    pub moved: usize,
    /// Reads of the scene that failed (tried again).
    pub read_failures: usize,
    /// Answers a correct request never gets (4xx other than 409), with the request.
    pub refusals: Vec<String>,
    /// Why saves ended with an unknown outcome, and how often.
    pub unknown_reasons: BTreeMap<String, usize>,
    /// Time to each 200.
    pub latencies: Vec<Duration>,
}

/// A running writer.
pub struct P1Writer {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<WriterLog>,
    acknowledged: Arc<AtomicUsize>,
}

impl P1Writer {
    pub fn start(spec: WriterSpec, router: SocketAddr, token: &str, tables: P1Tables) -> P1Writer {
        let (stop, stop_rx) = watch::channel(false);
        let acknowledged = Arc::new(AtomicUsize::new(0));
        let writer = Writer {
            rng: SplitMix(spec.seed ^ ((spec.scene_index as u64) << 16) ^ spec.writer_index as u64),
            log: WriterLog {
                scene: spec.scene.clone(),
                ..WriterLog::default()
            },
            spec,
            api: ContentApi::new(router, token),
            tables,
            acknowledged: acknowledged.clone(),
        };
        let task = tokio::spawn(writer.run(stop_rx));
        P1Writer {
            stop,
            task,
            acknowledged,
        }
    }

    /// Saves answered 200 so far.
    pub fn acknowledged(&self) -> usize {
        self.acknowledged.load(Ordering::Relaxed)
    }

    /// Stops after the save in flight; returns what it did.
    pub async fn finish(self) -> WriterLog {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

struct Writer {
    spec: WriterSpec,
    api: ContentApi,
    tables: P1Tables,
    rng: SplitMix,
    log: WriterLog,
    acknowledged: Arc<AtomicUsize>,
}

impl Writer {
    async fn run(mut self, mut stop: watch::Receiver<bool>) -> WriterLog {
        let mut next = tokio::time::Instant::now() + self.spec.offset;
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = stop.changed() => break,
            }
            if *stop.borrow() {
                break;
            }
            next = (next + self.spec.every).max(tokio::time::Instant::now());
            let marker = p1_marker(self.spec.scene_index, self.spec.writer_index, n);
            // Writers start at different kinds, so that a fault meets every kind at once.
            let turn = n as usize + self.spec.scene_index + self.spec.writer_index;
            let kind = self.spec.writes[turn % self.spec.writes.len()];
            n += 1;
            let Some(outcome) = self.save(&marker, kind, &stop).await else {
                continue;
            };
            match &outcome {
                Outcome::Acknowledged => {
                    self.acknowledged.fetch_add(1, Ordering::Relaxed);
                    *self.log.acknowledged_by_kind.entry(kind).or_default() += 1;
                }
                Outcome::Unknown(why) => *self.log.unknown_reasons.entry(why.clone()).or_default() += 1,
                Outcome::Refused(_) => {}
            }
            self.log.markers.push((marker, outcome));
        }
        self.log
    }

    /// Saves `marker` once (trying again only where nothing changed); `None` when it was
    /// never sent (the scene could not be read, or the run ended first).
    async fn save(
        &mut self,
        marker: &str,
        kind: P1WriteKind,
        stop: &watch::Receiver<bool>,
    ) -> Option<Outcome> {
        let mut sent_once = false;
        for _ in 0..ATTEMPTS {
            if *stop.borrow() {
                return sent_once.then(|| Outcome::Refused("refused, and the run ended".into()));
            }
            let base = match self.read(kind).await {
                Ok(base) => base,
                Err(why) => {
                    tracing::debug!(scene = %self.spec.scene, %why, "P1 read failed");
                    self.log.read_failures += 1;
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            };
            let (method, body) = self.change(kind, &base, marker);
            let sent = Instant::now();
            sent_once = true;
            let answer = match self.api.change(method, &self.spec.scene, &body).await {
                Ok(answer) => answer,
                Err(error) => return Some(Outcome::Unknown(format!("{method}: {error}"))),
            };
            let code = answer.error_code().unwrap_or_default();
            let status = answer.status;
            match verdict(status, &code) {
                Verdict::Durable => {
                    self.log.latencies.push(sent.elapsed());
                    return Some(Outcome::Acknowledged);
                }
                Verdict::Unchanged if status == 409 => self.log.conflicts += 1,
                Verdict::Unchanged => self.log.moved += 1,
                Verdict::Unknown => return Some(Outcome::Unknown(format!("{method}: {status} {code}"))),
                Verdict::Refused => {
                    let why = format!("{method} {body} answered {status}: {}", answer.body);
                    tracing::warn!(scene = %self.spec.scene, %why, "P1 write refused");
                    self.log.refusals.push(why);
                    return Some(Outcome::Refused(format!("{method}: {status} {code}")));
                }
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        sent_once.then(|| Outcome::Refused(format!("refused {ATTEMPTS} times")))
    }

    /// The scene the save is based on: P1's own copy, or the content API's answer.
    async fn read(&self, kind: P1WriteKind) -> Result<P1Scene, String> {
        if !kind.reads_api() {
            return self
                .tables
                .read(&self.spec.scene)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "P1 has no such scene".to_string());
        }
        match self.api.get(&self.spec.scene).await {
            Ok(Ok(content)) => Ok(P1Scene {
                version: content
                    .version
                    .ok_or_else(|| "the content API names no P1 version".to_string())?,
                blocks: content.blocks,
            }),
            Ok(Err(answer)) => Err(format!("GET answered {}: {}", answer.status, answer.body)),
            Err(error) => Err(format!("GET: {error}")),
        }
    }

    /// The request that saves `marker` on top of `base`.
    fn change(
        &mut self,
        kind: P1WriteKind,
        base: &P1Scene,
        marker: &str,
    ) -> (&'static str, serde_json::Value) {
        let new_block = Block::new(BlockType::Action, marker);
        let len = base.blocks.len();
        let mut blocks = base.blocks.clone();
        match kind {
            P1WriteKind::PutAppend | P1WriteKind::ApiPutAppend => {
                let at = self.pick(len);
                match blocks.get_mut(at) {
                    Some(block) => {
                        block.text.push(' ');
                        block.text.push_str(marker);
                    }
                    None => blocks.push(new_block),
                }
                ("PUT", json!({ "base_version": base.version, "blocks": blocks }))
            }
            P1WriteKind::PutBlock | P1WriteKind::ApiPutBlock => {
                blocks.insert(self.pick(len + 1), new_block);
                ("PUT", json!({ "base_version": base.version, "blocks": blocks }))
            }
            P1WriteKind::PatchInsert => {
                let edits = json!([{ "op": "insert", "at": self.pick(len + 1), "blocks": [new_block] }]);
                ("PATCH", json!({ "base_version": base.version, "edits": edits }))
            }
            P1WriteKind::PatchInsertLive => {
                let edits = json!([{ "op": "insert", "at": self.pick(len + 1), "blocks": [new_block] }]);
                ("PATCH", json!({ "edits": edits }))
            }
        }
    }

    fn pick(&mut self, below: usize) -> usize {
        (self.rng.next_u64() % below.max(1) as u64) as usize
    }
}

/// What an answer to a save proves about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Merged and written: there once.
    Durable,
    /// Refused before anything changed: the same change may be sent again.
    Unchanged,
    /// It may or may not have landed.
    Unknown,
    /// Refused for good.
    Refused,
}

/// The verdict of an answer's status and `error` code.
fn verdict(status: u16, code: &str) -> Verdict {
    match status {
        200 => Verdict::Durable,
        409 => Verdict::Unchanged,
        // The router reached a node that does not own the scene: it touched nothing. Any
        // other 503 may come from a room that merged the change and then had to go.
        503 if code == "moving" => Verdict::Unchanged,
        status if status >= 500 => Verdict::Unknown,
        _ => Verdict::Refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_answers_that_prove_nothing_changed_are_sent_again() {
        for (status, code, want) in [
            (200, "", Verdict::Durable),
            (409, "conflict", Verdict::Unchanged),
            (409, "unknown_version", Verdict::Unchanged),
            (503, "moving", Verdict::Unchanged),
            (503, "unavailable", Verdict::Unknown),
            (503, "owner_unreachable", Verdict::Unknown),
            (502, "", Verdict::Unknown),
            (422, "bad_edit", Verdict::Refused),
            (403, "forbidden", Verdict::Refused),
        ] {
            assert_eq!(verdict(status, code), want, "{status} {code}");
        }
        assert_eq!(Outcome::Acknowledged.expect(), Expect::Once);
        assert_eq!(Outcome::Unknown(String::new()).expect(), Expect::AtMostOnce);
        assert_eq!(Outcome::Refused(String::new()).expect(), Expect::Never);
    }
}
