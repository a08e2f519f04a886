//! Versioned peer-protocol messages (JSON inside frames).

use muster::status::FormationStatus;
use muster::{ClusterId, NodeName, PeerInfo};
use serde::{Deserialize, Serialize};

use crate::members::Metadata;
use crate::state::ClusterState;

/// Members' metadata as it travels with a state: by node, each with its version.
pub type MetaGossip = std::collections::BTreeMap<NodeName, Metadata>;

/// The plaintext messages that open a connection (see `proto::channel`): the client's Hello,
/// and the server's Rejected when the version or cluster name does not match or the Noise
/// handshake fails. Their layout is the one protocol-1 peers read, so old and new nodes refuse
/// each other with a readable reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Handshake {
    /// Client opens.
    Hello {
        /// Protocol version.
        version: u32,
        /// The cluster name the client belongs to.
        cluster_name: String,
        /// Protocol 1 only (sent empty): later protocols carry the node inside the Noise handshake.
        #[serde(default)]
        node: Option<NodeName>,
        /// Protocol 1 only (sent empty).
        #[serde(default)]
        nonce: String,
    },
    /// Refused, with a reason that reveals no secret.
    Rejected {
        /// Why.
        reason: String,
    },
}

/// What a client asks once authenticated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Liveness.
    Ping,
    /// Read-only facts for formation.
    Probe,
    /// The sender's formation state changed (view, intent, commitment; formed or joined): decide
    /// again now. Carries nothing the receiver trusts; its next round probes afresh.
    Notice,
    /// Add `node` (with its incarnation) to this node's cluster, if that is `cluster`.
    Join {
        /// The joining node.
        node: NodeName,
        /// Its incarnation.
        incarnation: u64,
        /// The cluster it means to join; a member of any other cluster refuses. Absent from
        /// joiners of earlier versions, which check the cluster of the answer themselves.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cluster: Option<ClusterId>,
    },
    /// Push-pull anti-entropy: merge this state and answer with the merged one.
    Sync {
        /// The sender's state.
        state: ClusterState,
        /// The members' metadata the sender knows (ignored by nodes that predate it).
        #[serde(default, skip_serializing_if = "MetaGossip::is_empty")]
        meta: MetaGossip,
    },
    /// Remove a member from the cluster.
    Forget {
        /// The member.
        node: NodeName,
    },
    /// Membership and formation summary.
    Status,
    /// The formation engine's status and decision trace.
    FormationStatus,
    /// Leave the cluster and become blank.
    Reset,
    /// Join the cluster that `peer` belongs to (the node must be blank).
    JoinCluster {
        /// A member of the target cluster.
        peer: NodeName,
    },
    /// Mark the node to boot without its peers next time.
    ForceBoot,
    /// Stop the node gracefully.
    Stop,
    /// Set (or with `None` remove) one entry of the node's metadata.
    SetMetadata {
        /// The key.
        key: String,
        /// The value.
        #[serde(default)]
        value: Option<String>,
    },
    /// From a peer: the sender is stopping gracefully (it stays a member). A member that stops
    /// later counts it as stopped; only one that knows every other member stopped is the last.
    Stopping,
    /// Every member with its status and metadata; with `after`, once the members' version is
    /// above it (or after a few seconds): a watch by long polling.
    Members {
        /// The version the caller has seen.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
    },
    /// From a peer: when did this node last hear from `node` (liveness, before a member is
    /// marked unreachable)?
    Heard {
        /// The member in question.
        node: NodeName,
    },
    /// From a peer: a request for this node's application handler.
    App {
        /// The request body.
        body: crate::apps::Body,
    },
}

impl Request {
    /// The operator's requests (change membership, stop, reset, force boot), by name; `None` for
    /// the requests nodes send each other and read-only ones. Only the CLI's connection, which
    /// authenticates as no node, may send them: a member's connection never can, so one
    /// compromised member cannot stop or reset the others.
    pub fn operator_request(&self) -> Option<&'static str> {
        match self {
            Request::Forget { .. } => Some("forget"),
            Request::Reset => Some("reset"),
            Request::JoinCluster { .. } => Some("join-cluster"),
            Request::ForceBoot => Some("force-boot"),
            Request::Stop => Some("stop"),
            Request::SetMetadata { .. } => Some("set-metadata"),
            Request::Ping
            | Request::Probe
            | Request::Notice
            | Request::Join { .. }
            | Request::Sync { .. }
            | Request::Status
            | Request::FormationStatus
            | Request::Stopping
            | Request::Heard { .. }
            | Request::Members { .. }
            | Request::App { .. } => None,
        }
    }
}

/// Membership and health of one node, as `cluster-status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node.
    pub node: NodeName,
    /// Its cluster.
    pub cluster: Option<ClusterId>,
    /// The members it knows.
    pub members: Vec<NodeName>,
    /// Members that answered a probe just now as ready members of this node's cluster (this node
    /// included when ready); in the HTTP `/status`, which calls no peer, the members this node
    /// heard from within its anti-entropy window.
    pub running: Vec<NodeName>,
    /// Members that answered from another cluster: a split or stale data, never "running".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub foreign: Vec<ForeignPeer>,
    /// Whether peers were probed for this status (when not, `running` and `in_sync` come from
    /// recent contact and `foreign` is empty).
    #[serde(default)]
    pub probed: bool,
    /// Formation finished and the node serves its cluster.
    pub ready: bool,
    /// Every running member reports the same members (in the HTTP `/status`: this node heard
    /// from every member within its anti-entropy window, each exchange being a state sync).
    pub in_sync: bool,
    /// The formation phase and what it is doing or waiting for.
    pub formation: String,
    /// The formation detail line.
    pub detail: String,
    /// The membership version.
    pub version: u64,
    /// The backend registration's state, for backends that register (etcd).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<String>,
    /// Peer-protocol messages this node sent.
    pub messages_sent: u64,
    /// Peer-protocol messages this node received.
    pub messages_received: u64,
    /// Every member's liveness and metadata as this node sees it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub member_info: Vec<crate::members::MemberInfo>,
}

/// A known member that answered as a member of another cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForeignPeer {
    /// The member.
    pub node: NodeName,
    /// The cluster it says it is in (`None`: it is blank, for example after losing its data).
    pub cluster: Option<ClusterId>,
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// Answer to Ping.
    Pong {
        /// The node that answered.
        node: NodeName,
    },
    /// Answer to Probe.
    Peer {
        /// The facts.
        info: Box<PeerInfo>,
    },
    /// A membership state (Join, Sync).
    State {
        /// The state.
        state: ClusterState,
        /// The members' metadata the answering node knows.
        #[serde(default, skip_serializing_if = "MetaGossip::is_empty")]
        meta: MetaGossip,
    },
    /// Answer to Members.
    Members {
        /// The members.
        members: Box<crate::members::Members>,
    },
    /// Answer to Heard: how long ago (`None`: not lately).
    Heard {
        /// Milliseconds since the node was last heard from.
        ago_ms: Option<u64>,
    },
    /// Answer to App: the application handler's answer.
    App {
        /// The answer body.
        body: crate::apps::Body,
    },
    /// Answer to Status.
    Status {
        /// The status.
        status: Box<NodeStatus>,
    },
    /// Answer to FormationStatus.
    Formation {
        /// The status.
        status: Box<FormationStatus>,
    },
    /// Done.
    Ok,
    /// Refused or failed.
    Error {
        /// Why.
        message: String,
    },
}
