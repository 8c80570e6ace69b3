//! Feature flags as every node and router sees them: the cluster state's flags, followed as
//! they change, so that switching collaboration off reaches open connections within moments.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;
use troupe_proto::flags::{Decision, FlagOverrides, Flags};

use crate::view::ClusterView;

/// The cluster's flags and the scenes' own.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FlagState {
    pub flags: Flags,
    pub scenes: BTreeMap<String, FlagOverrides>,
}

impl FlagState {
    /// What a client of `scene` acting as `user` should do.
    pub fn decide(&self, scene: &str, user: &str) -> Decision {
        troupe_proto::flags::decide(&self.flags, self.scenes.get(scene), scene, user)
    }
}

fn of(view: &ClusterView) -> FlagState {
    FlagState {
        flags: view.state.flags,
        scenes: view.state.scene_flags.clone(),
    }
}

/// The flags of `cluster`'s state, sent again only when they change (placement changes do
/// not wake the connections that wait on this).
pub fn follow(mut cluster: watch::Receiver<Arc<ClusterView>>) -> watch::Receiver<Arc<FlagState>> {
    let first = of(&cluster.borrow_and_update());
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(async move {
        while cluster.changed().await.is_ok() {
            let now = of(&cluster.borrow_and_update());
            tx.send_if_modified(|current| {
                if **current == now {
                    return false;
                }
                tracing::info!(flags = ?now.flags, scenes = now.scenes.len(), "feature flags changed");
                *current = Arc::new(now);
                true
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}
