//! `troupectl backfill`: brings the P1 product's scenes into Troupe in bulk.
//!
//! A scene is converted the way a first visitor would convert it: this tool opens it on its
//! owner node (as a viewer), the node seeds it from `content_blocks` and stores the seed
//! under the scene's lease, and the tool checks that the document's blocks are P1's. So there
//! is one writer and one seed (deterministic: a lazy load racing this run makes the same
//! bytes), and a run can stop anywhere and start again: scenes that already have Yjs state
//! are skipped.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use troupe_membership::ClusterClient;
use troupe_node::content::blocks::{self, Block};
use troupe_node::store::Store;
use troupe_proto::message::{self, Message};
use troupe_proto::token::{Claims, Role, Signer};
use yrs::updates::decoder::Decode;
use yrs::{Doc, Transact, Update};

/// Longest one scene may take to open, sync and be stored.
const PER_SCENE: Duration = Duration::from_secs(20);

/// Scenes read from P1 at a time.
const PAGE: i64 = 500;

pub struct Backfill<'a> {
    pub client: &'a ClusterClient,
    pub store: Store,
    pub signer: Signer,
    pub audience: String,
    pub dry_run: bool,
    pub json: bool,
}

/// What happened to one scene.
enum Outcome {
    Converted { blocks: usize },
    WouldConvert { blocks: usize },
    Skipped(&'static str),
    Failed(String),
}

impl Backfill<'_> {
    /// Converts `scenes`, or every P1 scene when `None`.
    pub async fn run(&self, scenes: Option<Vec<String>>) -> anyhow::Result<()> {
        let scenes = match scenes {
            Some(scenes) => scenes,
            None => self.all_scenes().await?,
        };
        let bar = if self.json {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(scenes.len() as u64)
        };
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} scenes · {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let (mut converted, mut skipped, mut failed) = (0usize, 0usize, Vec::new());
        let mut report = Vec::new();
        for scene in &scenes {
            bar.set_message(scene.clone());
            let outcome = match tokio::time::timeout(PER_SCENE, self.one(scene)).await {
                Ok(outcome) => outcome,
                Err(_) => Outcome::Failed(format!("no answer within {PER_SCENE:?}")),
            };
            let (status, detail) = match &outcome {
                Outcome::Converted { blocks } => {
                    converted += 1;
                    ("converted", format!("{blocks} blocks, verified"))
                }
                Outcome::WouldConvert { blocks } => {
                    converted += 1;
                    ("would convert", format!("{blocks} blocks"))
                }
                Outcome::Skipped(why) => {
                    skipped += 1;
                    ("skipped", why.to_string())
                }
                Outcome::Failed(why) => {
                    failed.push((scene.clone(), why.clone()));
                    ("failed", why.clone())
                }
            };
            report.push(serde_json::json!({ "scene": scene, "status": status, "detail": detail }));
            bar.inc(1);
        }
        bar.finish_and_clear();
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            let verb = if self.dry_run {
                "would convert"
            } else {
                "converted"
            };
            println!(
                "{} scenes: {converted} {verb}, {skipped} skipped (already in Troupe), {} failed",
                scenes.len(),
                failed.len()
            );
            for (scene, why) in &failed {
                println!("  failed {scene}: {why}");
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            bail!(
                "{} scenes failed; fix them and run again (converted scenes are skipped)",
                failed.len()
            )
        }
    }

    async fn all_scenes(&self) -> anyhow::Result<Vec<String>> {
        let mut all = Vec::new();
        let mut after = String::new();
        loop {
            let page = self.store.p1_scene_ids(&after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.clone();
            all.extend(page);
        }
        Ok(all)
    }

    async fn one(&self, scene: &str) -> Outcome {
        if !troupe_proto::scene::is_scene_id(scene) {
            return Outcome::Failed("not a valid Troupe scene id".into());
        }
        let p1 = match self.store.p1_content(scene).await {
            Ok(Some(content)) => content.blocks,
            Ok(None) => return Outcome::Failed("P1 has no such scene".into()),
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        match self.store.has_state(scene).await {
            Ok(true) => return Outcome::Skipped("already has Yjs state"),
            Ok(false) => {}
            Err(e) => return Outcome::Failed(e.to_string()),
        }
        if p1.is_empty() {
            return Outcome::Skipped("no blocks in P1");
        }
        if self.dry_run {
            return Outcome::WouldConvert { blocks: p1.len() };
        }
        match self.convert(scene, &p1).await {
            Ok(()) => Outcome::Converted { blocks: p1.len() },
            Err(e) => Outcome::Failed(format!("{e:#}")),
        }
    }

    /// Opens the scene on its owner, which seeds it; checks the blocks and that the seed is
    /// stored.
    async fn convert(&self, scene: &str, p1: &[Block]) -> anyhow::Result<()> {
        let view = self.client.view().await.map_err(|e| anyhow!("{e}"))?;
        let owner = view
            .placement()
            .route(scene)
            .ok_or_else(|| anyhow!("no node serves scenes now"))?;
        let doc = self.sync(&owner.url, scene).await?;
        let read = blocks::read(&doc.transact()).map_err(|e| anyhow!("the scene's document: {e}"))?;
        if read != p1 {
            bail!(
                "the document's blocks differ from P1's ({} blocks in the document, {} in P1)",
                read.len(),
                p1.len()
            );
        }
        for _ in 0..100 {
            if self.store.has_state(scene).await? {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the node served the content but did not store it")
    }

    /// The scene's document as a viewer receives it.
    async fn sync(&self, base: &str, scene: &str) -> anyhow::Result<Doc> {
        let claims = Claims::grant(
            "troupectl-backfill",
            &self.audience,
            &[(scene, Role::View)],
            Duration::from_secs(300),
        );
        let token = self.signer.sign(&claims).context("signing the backfill token")?;
        let mut request =
            format!("{}/ws/scenes/{scene}", base.trim_end_matches('/')).into_client_request()?;
        request.headers_mut().insert(
            "sec-websocket-protocol",
            format!("troupe, troupe.bearer.{token}").parse()?,
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .with_context(|| format!("connecting to {base}"))?;
        // An empty state vector asks for everything.
        socket
            .send(WsMessage::Binary(message::encode_sync_step1(&[0]).into()))
            .await?;
        while let Some(frame) = socket.next().await {
            match frame? {
                WsMessage::Binary(bytes) => {
                    if let Ok(Message::SyncStep2(update)) = Message::decode(&bytes) {
                        let doc = Doc::new();
                        doc.transact_mut()
                            .apply_update(Update::decode_v1(update)?)
                            .map_err(|e| anyhow!("{e}"))?;
                        let _ = socket.close(None).await;
                        return Ok(doc);
                    }
                }
                WsMessage::Close(frame) => {
                    let why = frame
                        .map(|f| format!("{} {}", u16::from(f.code), f.reason))
                        .unwrap_or_default();
                    bail!("the node closed the connection: {why}");
                }
                _ => {}
            }
        }
        bail!("the node closed the connection before sending the scene")
    }
}
