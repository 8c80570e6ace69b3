//! Placement epochs only grow, across clusters too. Every lease in the store carries the
//! epoch it was claimed at, and a claim wins only over an older one. A cluster started anew
//! on a store that outlived the former one (its nodes' Raft folders lost or wiped, the
//! database kept) counts epochs from the start again: every scene the former cluster
//! served is held at an epoch newer than any the new one can claim at, and nobody could
//! open it. So each node that takes the lead raises the epoch above the newest lease in
//! the store before anything else depends on it.

use std::sync::Arc;
use std::time::Duration;

use troupe_membership::Cluster;

use crate::store::Store;

/// How long to wait before asking again when the store or the cluster did not answer.
const RETRY: Duration = Duration::from_secs(1);

/// Runs for the node's life: each time this node becomes the leader, checks the store's
/// newest lease epoch once and raises the cluster's epoch above it when needed.
pub async fn keep_above_store(cluster: Arc<Cluster>, store: Store) {
    let me = cluster.id();
    let mut leaders = cluster.leaders();
    let mut checked = false;
    loop {
        let leading = leaders.current() == Some(me);
        if !leading {
            checked = false;
        } else if !checked {
            checked = raise_if_behind(&cluster, &store).await;
            if !checked {
                tokio::time::sleep(RETRY).await;
                continue;
            }
        }
        if !leaders.changed().await {
            return;
        }
    }
}

/// Whether a cluster at `epoch` must raise it to claim scenes whose newest lease is at
/// `newest`. A store with no lease (`0`: none was ever claimed) holds nothing back; a
/// fresh cluster on a fresh store must not be told it started on a former one's.
fn behind(epoch: u64, newest: u64) -> bool {
    newest > 0 && epoch <= newest
}

/// True once the epoch is above the store's newest lease (raised, or it already was).
async fn raise_if_behind(cluster: &Cluster, store: &Store) -> bool {
    let newest = match store.newest_lease_epoch().await {
        Ok(newest) => newest,
        Err(error) => {
            tracing::warn!(%error, "cannot read the store's newest lease epoch; trying again");
            return false;
        }
    };
    let epoch = cluster.view().epoch();
    if !behind(epoch, newest) {
        return true;
    }
    match cluster.raise_epoch_above(newest).await {
        Ok(view) => {
            tracing::warn!(
                from = epoch,
                to = view.epoch(),
                newest_lease = newest,
                "placement epoch raised above the store's leases: this cluster started anew on a \
                 store that a former cluster wrote"
            );
            true
        }
        Err(error) => {
            tracing::warn!(%error, newest_lease = newest, "cannot raise the placement epoch; trying again");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::behind;

    #[test]
    fn only_a_store_with_leases_at_or_above_the_epoch_holds_the_cluster_back() {
        assert!(!behind(0, 0), "a fresh cluster on a fresh store");
        assert!(!behind(3, 0));
        assert!(!behind(4, 3));
        assert!(behind(3, 3));
        assert!(behind(1, 11));
        assert!(behind(0, 1));
    }
}
