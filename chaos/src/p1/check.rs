//! The end of a P1 run: every marker an editor typed or a P1 writer saved, counted in the
//! three places the adopting product can see a scene — the document as a fresh y-websocket
//! client reads it, `content_blocks` (written back a few seconds after the last change:
//! polled until it holds the document's blocks), and the content API's answer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;
use troupe_node::content::blocks::{self, Block};

use super::api::ContentApi;
use super::markers::{miscounts, Expect, Miscount};
use super::tables::P1Tables;
use super::writer::{Outcome, WriterLog};
use crate::client::{ClientOptions, EditorClient};
use crate::editor::{resolve, FinishedEditor};
use crate::run::Percentiles;
use crate::scenario::P1WriteKind;

/// How long `content_blocks` may take to hold the document once everyone stopped (the
/// write-back runs `TROUPE_P1_WRITE_DELAY`, 2 s by default, after the last change).
const CATCH_UP: Duration = Duration::from_secs(30);

/// The three places.
pub const DOCUMENT: &str = "document";
pub const CONTENT_BLOCKS: &str = "content_blocks";
pub const CONTENT_API: &str = "content API";

#[derive(Debug, Clone, Serialize)]
pub struct P1Report {
    pub writers: usize,
    pub writes_acknowledged: usize,
    pub acknowledged_by_kind: BTreeMap<P1WriteKind, usize>,
    /// 409s answered, each tried again on a fresh read.
    pub conflicts_retried: usize,
    /// 503 `moving` answers, each tried again.
    pub moved_retried: usize,
    /// Saves with no answer (or a 5xx): their markers may be there, at most once.
    pub unknown_outcome: usize,
    /// Why, and how often.
    pub unknown_reasons: BTreeMap<String, usize>,
    /// Of those markers, how many the document holds (once).
    pub unknown_landed: usize,
    /// Saves refused (a 4xx, or given up after repeated 409s): their markers must not be
    /// there.
    pub refused: usize,
    pub read_failures: usize,
    pub write_latency_ms: Percentiles,
    /// Markers typed by editors (expected exactly once, like those saved with a 200).
    pub editor_markers: usize,
    /// The document, `content_blocks` and the content API, in that order.
    pub places: Vec<PlaceReport>,
    /// The longest any scene's `content_blocks` took to hold the document, from the start
    /// of the checks (everyone had stopped).
    pub content_blocks_caught_up_ms: Option<u64>,
    pub miscounts: Vec<Miscount>,
    pub problems: Vec<String>,
}

/// The markers counted in one place.
#[derive(Debug, Clone, Serialize)]
pub struct PlaceReport {
    pub place: String,
    pub scenes_read: usize,
    /// Marker counts made (each scene's markers, in this place).
    pub markers_checked: usize,
    pub miscounted: usize,
}

impl PlaceReport {
    fn new(place: &str) -> PlaceReport {
        PlaceReport {
            place: place.to_string(),
            scenes_read: 0,
            markers_checked: 0,
            miscounted: 0,
        }
    }
}

/// What the checks need.
pub struct P1Run<'a> {
    pub scenes: &'a [String],
    pub editors: &'a [FinishedEditor],
    pub writers: &'a [WriterLog],
    pub router: SocketAddr,
    pub token: &'a str,
    pub tables: &'a P1Tables,
}

pub async fn check(run: P1Run<'_>) -> P1Report {
    let mut report = tally(run.writers);
    let api = ContentApi::new(run.router, run.token);
    let started = Instant::now();
    let mut places = [DOCUMENT, CONTENT_BLOCKS, CONTENT_API].map(PlaceReport::new);
    let mut caught_up = Some(Duration::ZERO);
    for scene in run.scenes {
        let expected = expected_markers(scene, run.editors, run.writers);
        report.editor_markers += expected_from_editors(scene, run.editors);
        let mut count = |place: &'static str, blocks: &[Block], report: &mut P1Report| {
            let wrong = miscounts(scene, place, blocks, &expected);
            if let Some(p) = places.iter_mut().find(|p| p.place == place) {
                p.scenes_read += 1;
                p.markers_checked += expected.len();
                p.miscounted += wrong.len();
            }
            report.miscounts.extend(wrong);
        };
        let document = match fresh_blocks(run.router, scene, run.token).await {
            Ok(blocks) => {
                count(DOCUMENT, &blocks, &mut report);
                report.unknown_landed += expected
                    .iter()
                    .filter(|(m, e)| {
                        **e == Expect::AtMostOnce && blocks.iter().any(|b| b.text.contains(m.as_str()))
                    })
                    .count();
                Some(blocks)
            }
            Err(e) => {
                report.problems.push(format!(
                    "{scene}: a fresh client could not read the blocks: {e:#}"
                ));
                None
            }
        };
        match api_blocks(&api, scene).await {
            Ok(blocks) => {
                count(CONTENT_API, &blocks, &mut report);
                if let Some(doc) = document.as_ref().filter(|doc| **doc != blocks) {
                    report.problems.push(format!(
                        "{scene}: the content API answered other blocks than the document: {}",
                        difference(doc, &blocks)
                    ));
                }
            }
            Err(e) => report
                .problems
                .push(format!("{scene}: the content API did not answer: {e}")),
        }
        match table_blocks(run.tables, scene, document.as_deref(), started).await {
            Ok((blocks, after)) => {
                count(CONTENT_BLOCKS, &blocks, &mut report);
                match (after, &document) {
                    (Some(after), _) => caught_up = caught_up.map(|c| c.max(after)),
                    (None, Some(doc)) => {
                        caught_up = None;
                        report.problems.push(format!(
                            "{scene}: content_blocks did not hold the document {CATCH_UP:?} after the run: {}",
                            difference(doc, &blocks)
                        ));
                    }
                    (None, None) => caught_up = None,
                }
            }
            Err(e) => report
                .problems
                .push(format!("{scene}: content_blocks could not be read: {e}")),
        }
    }
    report.content_blocks_caught_up_ms = caught_up.map(|c| c.as_millis() as u64);
    report.places = places.to_vec();
    for m in report.miscounts.iter().take(20) {
        report.problems.push(describe(m));
    }
    if report.miscounts.len() > 20 {
        report.problems.push(format!(
            "… and {} more miscounted markers (report.json lists them all)",
            report.miscounts.len() - 20
        ));
    }
    for writer in run.writers {
        for why in writer.refusals.iter().take(3) {
            report
                .problems
                .push(format!("{}: a P1 write was refused: {why}", writer.scene));
        }
    }
    report
}

/// One miscount as a line of the run's problems.
pub fn describe(m: &Miscount) -> String {
    let expected = match m.expected {
        Expect::Once => "exactly once",
        Expect::AtMostOnce => "at most once (its save got no answer)",
        Expect::Never => "never (its save was refused)",
    };
    let blocks: Vec<String> = m
        .blocks
        .iter()
        .map(|(i, text)| format!("block {i}: {text:?}"))
        .collect();
    format!(
        "{}: {} found {} times in {}, expected {expected}{}{}",
        m.scene,
        m.marker,
        m.found,
        m.place,
        if blocks.is_empty() { "" } else { "; " },
        blocks.join("; ")
    )
}

/// The writers' figures.
fn tally(writers: &[WriterLog]) -> P1Report {
    let mut report = P1Report {
        writers: writers.len(),
        writes_acknowledged: 0,
        acknowledged_by_kind: BTreeMap::new(),
        conflicts_retried: 0,
        moved_retried: 0,
        unknown_outcome: 0,
        unknown_reasons: BTreeMap::new(),
        unknown_landed: 0,
        refused: 0,
        read_failures: 0,
        write_latency_ms: Percentiles::default(),
        editor_markers: 0,
        places: Vec::new(),
        content_blocks_caught_up_ms: None,
        miscounts: Vec::new(),
        problems: Vec::new(),
    };
    let mut latencies = Vec::new();
    for w in writers {
        for (_, outcome) in &w.markers {
            match outcome {
                Outcome::Acknowledged => report.writes_acknowledged += 1,
                Outcome::Unknown(_) => report.unknown_outcome += 1,
                Outcome::Refused(_) => report.refused += 1,
            }
        }
        for (kind, n) in &w.acknowledged_by_kind {
            *report.acknowledged_by_kind.entry(*kind).or_default() += n;
        }
        for (why, n) in &w.unknown_reasons {
            *report.unknown_reasons.entry(why.clone()).or_default() += n;
        }
        report.conflicts_retried += w.conflicts;
        report.moved_retried += w.moved;
        report.read_failures += w.read_failures;
        latencies.extend(w.latencies.iter().map(|d| d.as_secs_f64() * 1000.0));
    }
    report.write_latency_ms = Percentiles::of(latencies);
    report
}

/// Every marker of `scene` and how often it must be found.
fn expected_markers(
    scene: &str,
    editors: &[FinishedEditor],
    writers: &[WriterLog],
) -> BTreeMap<String, Expect> {
    let mut expected = BTreeMap::new();
    for e in editors.iter().filter(|e| e.scene == scene) {
        for marker in &e.typed {
            expected.insert(marker.clone(), Expect::Once);
        }
    }
    for w in writers.iter().filter(|w| w.scene == scene) {
        for (marker, outcome) in &w.markers {
            expected.insert(marker.clone(), outcome.expect());
        }
    }
    expected
}

fn expected_from_editors(scene: &str, editors: &[FinishedEditor]) -> usize {
    editors
        .iter()
        .filter(|e| e.scene == scene)
        .map(|e| e.typed.len())
        .sum()
}

/// The scene's blocks as a fresh y-websocket client reads them from the owner.
async fn fresh_blocks(router: SocketAddr, scene: &str, token: &str) -> anyhow::Result<Vec<Block>> {
    let (_, url, _) = resolve(router, scene).await?;
    let client = EditorClient::connect(
        &format!("{url}/ws/scenes"),
        scene,
        token,
        ClientOptions::default(),
    )
    .await?;
    client.wait_synced(Duration::from_secs(10)).await?;
    let read = client.read(|txn| blocks::read(txn)).await?;
    let _ = client.close(1000, "checked").await;
    Ok(read?)
}

/// The content API's answer, asked again while the scene is moving.
async fn api_blocks(api: &ContentApi, scene: &str) -> Result<Vec<Block>, String> {
    let mut last = String::new();
    for _ in 0..10 {
        match api.get(scene).await {
            Ok(Ok(content)) => return Ok(content.blocks),
            Ok(Err(answer)) => last = format!("{} {}", answer.status, answer.body),
            Err(error) => last = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(last)
}

/// `content_blocks`, polled until it holds `document` (or [`CATCH_UP`] after `since`);
/// with how long that took, if it did.
async fn table_blocks(
    tables: &P1Tables,
    scene: &str,
    document: Option<&[Block]>,
    since: Instant,
) -> Result<(Vec<Block>, Option<Duration>), String> {
    loop {
        let read = tables.read(scene).await.map_err(|e| e.to_string())?;
        let blocks = read.map(|s| s.blocks).unwrap_or_default();
        if document.is_some_and(|doc| doc == blocks) {
            return Ok((blocks, Some(since.elapsed())));
        }
        if document.is_none() || since.elapsed() > CATCH_UP {
            return Ok((blocks, None));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Where two block lists part.
fn difference(a: &[Block], b: &[Block]) -> String {
    let at = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    format!(
        "{} vs {} blocks, first difference at block {at}: {:?} vs {:?}",
        a.len(),
        b.len(),
        a.get(at).map(|b| &b.text),
        b.get(at).map(|b| &b.text)
    )
}
