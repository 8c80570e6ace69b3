//! Node ids: how the cluster, its Raft log, leases, presence and notices name a node.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A node's id in the cluster (also its Raft id). Written in decimal wherever it is text:
/// URLs, lease owners in the store, and the placement ring's labels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for NodeId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(NodeId)
    }
}

impl From<u64> for NodeId {
    fn from(id: u64) -> Self {
        NodeId(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_json_are_the_plain_number() {
        assert_eq!(NodeId(42).to_string(), "42");
        assert_eq!("42".parse::<NodeId>(), Ok(NodeId(42)));
        assert!("n1".parse::<NodeId>().is_err());
        assert_eq!(serde_json::to_string(&NodeId(7)).unwrap_or_default(), "7");
        assert_eq!(serde_json::from_str::<NodeId>("7").ok(), Some(NodeId(7)));
    }
}
