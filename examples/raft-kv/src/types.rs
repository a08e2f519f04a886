//! The Raft type configuration: node ids, the client's writes and their answers.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// A Raft node id: drawn once per data dir, persisted, never reused (a node that lost its disk
/// comes back under a new one).
pub type NodeId = u64;

/// A write, replicated through the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Set `key` to `value`.
    Set {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
}

/// What applying a write answers: the value it set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The value set.
    pub value: Option<String>,
}

openraft::declare_raft_types!(
    /// The service's Raft types: u64 ids, nodes addressed by their Muster node name.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = openraft::BasicNode,
);

/// A Raft log entry of this service.
pub type Entry = openraft::Entry<TypeConfig>;
/// A snapshot's bytes.
pub type SnapshotData = Cursor<Vec<u8>>;
