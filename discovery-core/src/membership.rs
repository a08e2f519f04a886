//! The `Membership` trait: what the embedding broker implements so the engine can form, join and
//! clean up a cluster, and the facts a probe of a peer returns.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::MembershipError;
use crate::node_name::NodeName;

/// A cluster's identity, fixed when the cluster is formed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClusterId(pub String);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a forming node tells peers that probe it: the seed it believes in and how settled its
/// discovery view is. The decision rule uses peers' views so that the seed forms only when every
/// reachable candidate agrees on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormationView {
    /// The node this one believes is entitled to form, or `None` when it cannot tell yet.
    pub seed: Option<NodeName>,
    /// A cluster this node has seen among its peers (it will join, not form).
    pub sees_cluster: Option<ClusterId>,
    /// How many candidates its discovery view holds.
    pub candidates: usize,
    /// How long its discovery view has been unchanged.
    pub unchanged_for: Duration,
}

/// What a probe of a peer returned. Probes are read-only: they never change the peer's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The peer's own name.
    pub node: NodeName,
    /// The cluster the peer belongs to, `None` when it is blank.
    pub cluster: Option<ClusterId>,
    /// The members it knows (empty when blank).
    pub members: Vec<NodeName>,
    /// True when it is running in its cluster and can accept joins.
    pub ready: bool,
    /// Milliseconds since the Unix epoch when the peer's process started.
    pub start_time_ms: u64,
    /// The peer's formation view, when it is still forming.
    pub view: Option<FormationView>,
}

/// What the node's persisted state says about its past, read once at boot.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RestartState {
    /// The cluster this node belonged to; `None` for a blank node (which runs discovery).
    pub cluster: Option<ClusterId>,
    /// The other members it knew when it last ran.
    pub known_peers: Vec<NodeName>,
    /// No other member was running when this node stopped: it may boot at once.
    pub last_to_stop: bool,
    /// An operator marked the node to boot without waiting for its peers.
    pub force_boot: bool,
}

impl RestartState {
    /// True when the node was clustered before and takes the restart path.
    pub fn was_clustered(&self) -> bool {
        self.cluster.is_some()
    }
}

/// What an embedding broker implements.
#[async_trait]
pub trait Membership: Send + Sync {
    /// This node's name.
    fn local_node(&self) -> NodeName;

    /// Asks a peer for its facts. Must not change the peer's state. An unreachable peer is an
    /// error; the engine applies its own timeout around this call.
    async fn probe(&self, peer: &NodeName) -> Result<PeerInfo, MembershipError>;

    /// Forms a new cluster with this node as its only member, persisting it before returning.
    async fn form(&self) -> Result<ClusterId, MembershipError>;

    /// Joins the cluster that `member` belongs to.
    async fn join(&self, member: &NodeName) -> Result<ClusterId, MembershipError>;

    /// The current members, empty when the node is blank.
    async fn members(&self) -> Vec<NodeName>;

    /// Removes `node` from the cluster.
    async fn forget(&self, node: &NodeName) -> Result<(), MembershipError>;

    /// Persisted facts for the restart path.
    fn restart_state(&self) -> RestartState;

    /// Brings a previously clustered node back into service, syncing from `via` when given
    /// (`None`: boot on local state alone — last to stop, force-boot, or every peer waiting).
    async fn resume(&self, via: Option<&NodeName>) -> Result<(), MembershipError>;

    /// Publishes this node's formation view for peers' probes (`None` once formation is over).
    fn publish_view(&self, view: Option<FormationView>);
}
