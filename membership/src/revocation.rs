//! Revoked users as every node and router sees them: the cluster state's list, followed
//! as it changes, so that a revocation reaches open connections within moments.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;
use troupe_proto::token::Claims;

use crate::view::ClusterView;

/// Users whose tokens issued before a time (seconds since the Unix epoch) are refused.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Revocations(BTreeMap<String, u64>);

impl Revocations {
    pub fn new(revoked: BTreeMap<String, u64>) -> Revocations {
        Revocations(revoked)
    }

    /// Whether a revocation refuses the token with these claims.
    pub fn refuses(&self, claims: &Claims) -> bool {
        self.0.get(&claims.sub).is_some_and(|at| claims.revoked_by(*at))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The revocations of `cluster`'s state, sent again only when they change (placement
/// changes do not wake the connections that wait on this).
pub fn follow(mut cluster: watch::Receiver<Arc<ClusterView>>) -> watch::Receiver<Arc<Revocations>> {
    let first = Revocations::new(cluster.borrow_and_update().state.revoked.clone());
    let (tx, rx) = watch::channel(Arc::new(first));
    tokio::spawn(async move {
        while cluster.changed().await.is_ok() {
            let revoked = cluster.borrow_and_update().state.revoked.clone();
            tx.send_if_modified(|current| {
                if current.0 == revoked {
                    return false;
                }
                tracing::info!(users = revoked.len(), "revocations changed");
                *current = Arc::new(Revocations::new(revoked));
                true
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}

/// Resolves once a revocation refuses `claims` (never, if none does before `revocations`
/// ends).
pub async fn revoked(mut revocations: watch::Receiver<Arc<Revocations>>, claims: &Claims) {
    if revocations.borrow_and_update().refuses(claims) {
        return;
    }
    while revocations.changed().await.is_ok() {
        if revocations.borrow_and_update().refuses(claims) {
            return;
        }
    }
    std::future::pending::<()>().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_proto::token::Role;

    #[test]
    fn tokens_issued_before_the_revocation_or_undated_are_refused() {
        let mut claims = Claims::grant(
            "mallory",
            "troupe",
            &[("s", Role::Edit)],
            std::time::Duration::from_secs(60),
        );
        let revocations = Revocations::new(BTreeMap::from([("mallory".to_string(), 1_000)]));
        claims.iat = Some(999);
        assert!(revocations.refuses(&claims));
        claims.iat = None;
        assert!(revocations.refuses(&claims));
        claims.iat = Some(1_000);
        assert!(
            !revocations.refuses(&claims),
            "a token issued at the revocation or after is good"
        );
        claims.sub = "alice".into();
        claims.iat = Some(1);
        assert!(!revocations.refuses(&claims), "others are untouched");
    }
}
