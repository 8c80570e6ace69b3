//! P1 writers beside the editors (a scenario's `[p1]`): the adopting product's REST
//! autosave hitting live scenes while people type and the cluster changes, and the proof
//! that every marker typed or saved ends up exactly once in the document, in
//! `content_blocks` and in the content API.
//!
//! - [`tables`]: the P1 tables — scenes seeded before the run, read back as P1 sees them.
//! - [`api`]: the content API through the router.
//! - [`writer`]: one writer: read, save a marker, record what the answer proves.
//! - [`markers`]: marker formats, and counting them against what each must be.
//! - [`check`]: the counts in the three places at the end.

pub mod api;
pub mod check;
pub mod markers;
pub mod tables;
pub mod writer;

use std::net::SocketAddr;

use anyhow::Context;

use crate::scenario::P1Writers;
use tables::{first_draft, P1Tables};
use writer::{P1Writer, WriterSpec};

/// Makes every scene a P1 scene (before anyone opens it: its owner seeds the document from
/// `content_blocks` on first load).
pub async fn seed(tables: &P1Tables, scenes: &[String]) -> anyhow::Result<()> {
    for scene in scenes {
        tables
            .seed(scene, &first_draft())
            .await
            .with_context(|| format!("seeding P1 scene {scene}"))?;
    }
    Ok(())
}

/// Starts the scenario's writers on every scene, spread over `every`.
pub fn start_writers(
    config: &P1Writers,
    scenes: &[String],
    router: SocketAddr,
    token: &str,
    tables: &P1Tables,
    seed: u64,
) -> Vec<P1Writer> {
    let total = (scenes.len() * config.writers_per_scene).max(1) as u32;
    let mut writers = Vec::new();
    for (scene_index, scene) in scenes.iter().enumerate() {
        for writer_index in 0..config.writers_per_scene {
            let k = (scene_index * config.writers_per_scene + writer_index) as u32;
            let spec = WriterSpec {
                scene: scene.clone(),
                scene_index,
                writer_index,
                every: config.every,
                offset: config.every * k / total,
                writes: config.writes.clone(),
                seed,
            };
            writers.push(P1Writer::start(spec, router, token, tables.clone()));
        }
    }
    writers
}
