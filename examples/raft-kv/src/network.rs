//! Raft's messages between nodes, as Muster application requests: on the peer channel that the
//! cookie authenticates and encrypts, with no second port. A Raft node's address is its Muster
//! node name.

use std::sync::{Arc, OnceLock};

use muster_node::muster::NodeName;
use muster_node::{AppError, Cluster};
use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::types::{NodeId, TypeConfig};

/// What one node asks another, on the application channel.
#[derive(Debug, Serialize, Deserialize)]
pub enum Call {
    /// A Raft message for node `to`: a node answers only those meant for its own id, so that a
    /// node that came back under a new id at an old id's address never answers for the old one.
    Raft {
        /// The Raft node it is meant for.
        to: NodeId,
        /// The message.
        rpc: RaftRpc,
    },
    /// A node asks to become a voter (it joined the Muster cluster, or came back with a new id).
    Join {
        /// Its Raft id.
        id: NodeId,
        /// Its Muster name (its Raft address).
        name: NodeName,
    },
    /// A client's write, forwarded to the leader.
    Write(crate::types::Request),
}

/// Raft's own messages.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRpc {
    /// Replication.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Election.
    Vote(VoteRequest<NodeId>),
    /// Snapshot transfer.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
}

/// The running cluster, once started: Raft is built before it (the `on_form` hook needs Raft).
pub type ClusterCell = Arc<OnceLock<Arc<Cluster>>>;

/// Opens a [`Peer`] per target.
#[derive(Clone)]
pub struct Network {
    /// The Muster cluster the messages travel through.
    pub cluster: ClusterCell,
}

/// Raft's view of one other node.
pub struct Peer {
    cluster: ClusterCell,
    target: NodeId,
    to: Result<NodeName, String>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            cluster: self.cluster.clone(),
            target,
            to: node
                .addr
                .parse()
                .map_err(|e| format!("{:?} is not a node name: {e}", node.addr)),
        }
    }
}

/// A transport failure as openraft wants it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Transport(String);

impl Peer {
    /// Sends `call` and decodes the answer, which is the remote Raft's `Result<R, E>`.
    async fn call<R, E>(&self, rpc: RaftRpc, option: &RPCOption) -> Result<R, RPCError<NodeId, BasicNode, E>>
    where
        R: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        let unreachable = |why: String| RPCError::Unreachable(Unreachable::new(&Transport(why)));
        let to = self.to.clone().map_err(unreachable)?;
        let Some(cluster) = self.cluster.get() else {
            return Err(unreachable("this node is still starting".into()));
        };
        let entries = match &rpc {
            RaftRpc::AppendEntries(r) => r.entries.len() as u64 / 2,
            _ => 0,
        };
        let call = Call::Raft { to: self.target, rpc };
        let body = serde_json::to_vec(&call).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        // Too large for one request: openraft sends fewer entries next time.
        if body.len() > muster_node::apps::MAX_BODY && entries > 0 {
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(
                entries,
            )));
        }
        let answer = match cluster.request(&to, body, option.hard_ttl()).await {
            Ok(answer) => answer,
            Err(e @ (AppError::Unreachable(_) | AppError::Timeout { .. } | AppError::NotMember(_))) => {
                return Err(unreachable(e.to_string()));
            }
            Err(e) => return Err(RPCError::Network(NetworkError::new(&e))),
        };
        let decoded: Result<R, E> =
            serde_json::from_slice(&answer).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RaftRpc::AppendEntries(rpc), &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(RaftRpc::InstallSnapshot(rpc), &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RaftRpc::Vote(rpc), &option).await
    }
}
