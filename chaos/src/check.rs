//! What the store says after a run: each scene's text rebuilt from snapshots and log, and
//! whether its log was ever written by a fenced owner (epochs going back).

use troupe_node::store::Store;
use yrs::updates::decoder::Decode;
use yrs::{Transact, Update};

use crate::typing::Typing;

/// The scene's `Y.Text` "text" as a fresh node would rebuild it from the store.
pub async fn stored_text(store: &Store, scene: &str) -> anyhow::Result<String> {
    stored_scene_text(store, scene, Typing::Text).await
}

/// The scene as a fresh node would rebuild it from the store, read as `typing` says.
pub async fn stored_scene_text(store: &Store, scene: &str, typing: Typing) -> anyhow::Result<String> {
    let stored = store.load(scene).await?;
    let doc = yrs::Doc::with_options(yrs::Options {
        offset_kind: yrs::OffsetKind::Utf16,
        ..Default::default()
    });
    {
        let mut txn = doc.transact_mut();
        for s in stored.snapshots.iter().rev() {
            txn.apply_update(Update::decode_v1(&s.data)?)?;
        }
        for row in &stored.rows {
            txn.apply_update(Update::decode_v1(&row.data)?)?;
        }
    }
    let txn = doc.transact();
    Ok(typing.read(&txn))
}

/// Log rows whose epoch is older than a row before them: an append from a fenced former
/// owner that the store accepted. Empty when fencing held.
pub async fn fenced_rows(store: &Store, scene: &str) -> anyhow::Result<Vec<(u64, String, u64)>> {
    let mut highest = 0;
    let mut bad = Vec::new();
    for (seq, writer, epoch) in store.writers(scene).await? {
        if epoch < highest {
            bad.push((seq, writer, epoch));
        }
        highest = highest.max(epoch);
    }
    Ok(bad)
}
