//! Saving the document as it is now into the scene's history (a named version, or the
//! state a restore is about to replace). Encoded by the room, written beside it, fenced by
//! the room's lease epoch like every other write.

use tokio::sync::oneshot;
use yrs::{ReadTxn, StateVector, Transact};

use super::Room;
use crate::store::history::{NewVersion, VersionKind};

/// What to save, and where to answer with the version's number.
pub struct SaveVersion {
    pub kind: VersionKind,
    pub name: Option<String>,
    pub by: Option<String>,
    pub reply: oneshot::Sender<Result<u64, String>>,
}

impl Room {
    pub(super) fn save_version(&mut self, save: SaveVersion) {
        if self.fenced || self.handoff.is_some() || self.stopping.is_some() {
            let _ = save
                .reply
                .send(Err("the scene is moving to another node; try again".into()));
            return;
        }
        let data = self
            .document
            .doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let store = self.ctx.store.clone();
        let (scene, owner, epoch) = (self.scene.clone(), self.ctx.node_id.clone(), self.epoch);
        let upto_seq = self.log.committed_seq;
        tokio::spawn(async move {
            let version = NewVersion {
                kind: save.kind,
                name: save.name.as_deref(),
                created_by: save.by.as_deref(),
                upto_seq,
                data: &data,
            };
            let saved = match store
                .add_version(&scene, &owner, epoch, &version, Default::default())
                .await
            {
                Ok(Some(number)) => Ok(number),
                Ok(None) => Err("the scene moved to another node; try again".to_string()),
                Err(error) => Err(error.to_string()),
            };
            let _ = save.reply.send(saved);
        });
    }
}
