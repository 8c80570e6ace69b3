//! Troupe cluster membership.
//!
//! - [`state`]: the replicated node list, epoch and config, and the commands that change it;
//! - [`ring`]: which active node owns a scene (kept independent of Raft so that placement
//!   can be pinned and tested on its own);
//! - [`raft`] and [`cluster`]: the openraft replication of the state, durable on each voter;
//! - [`server`], [`rpc`], [`client`]: the internal HTTP endpoint and its clients.

#![deny(clippy::unwrap_used)]

pub mod client;
pub mod cluster;
pub mod health;
pub mod raft;
pub mod ring;
pub mod rpc;
pub mod server;
pub mod state;
pub mod view;

pub use client::ClusterClient;
pub use cluster::{AdminError, Cluster, ClusterError, ClusterOptions, RaftTiming};
pub use ring::{Ring, RingError, DEFAULT_VNODES, MAX_VNODES};
pub use state::{ClusterState, Command, CommandError, NodeId, NodeInfo, NodeState, Placement, Route};
pub use view::{AdmitRequest, ClusterView, ErrorBody, NodeSelf};
