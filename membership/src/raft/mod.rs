//! openraft wiring: the type configuration, durable storage and the HTTP network.

mod disk;
pub mod log_store;
pub mod network;
pub mod state_machine;

use std::io::Cursor;

use crate::state::Command;
use state_machine::CommandResult;

openraft::declare_raft_types!(
    /// Raft types of the membership: commands in, their results out.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = crate::state::NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Entry = openraft::Entry<TypeConfig>;
pub type Raft = openraft::Raft<TypeConfig>;
