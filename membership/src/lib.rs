//! Troupe cluster membership.
//!
//! - [`state`]: the replicated node list, epoch and config, and the commands that change it;
//! - [`view`]: that state as one node reports it (with Raft roles and the leader);
//! - [`placement`]: which node owns a scene at an epoch, for nodes and routers alike;
//! - [`ring`]: the consistent-hash function under placement (kept independent of Raft so
//!   that it can be pinned and tested on its own);
//! - [`raft`] and [`cluster`]: the openraft replication of the state, durable on each voter;
//! - [`health`]: the leader's failure detector, which marks silent nodes down;
//! - [`revocation`]: revoked users, followed by nodes and routers as the state changes;
//! - [`tls`]: the certificates and identities of the internal port's mutual TLS;
//! - [`server`], [`rpc`], [`client`]: the internal HTTP endpoint and its clients.

#![deny(clippy::unwrap_used)]

pub mod client;
pub mod cluster;
pub mod flags;
pub mod health;
pub mod placement;
pub mod raft;
pub mod revocation;
pub mod ring;
pub mod rpc;
pub mod server;
pub mod state;
pub mod tls;
pub mod view;

pub use client::ClusterClient;
pub use cluster::{AdminError, Cluster, ClusterError, ClusterOptions, LeaderWatch, RaftTiming};
pub use placement::{Placement, PlacementView, Route, Verdict};
pub use ring::{Ring, RingError, DEFAULT_VNODES, MAX_VNODES};
pub use state::{ClusterState, Command, CommandError, NodeId, NodeInfo, NodeState};
pub use view::{AdmitRequest, ClusterView, ErrorBody, NodeSelf, RevokeRequest};
