//! Why formation did not complete, typed: what the rule waited for when the budget ran out and
//! why the candidates did not answer, what it refused to do and why, a claim another node won.

use std::collections::BTreeMap;
use std::fmt;

use crate::decision::WaitReason;
use crate::discovery::ClaimError;
use crate::error::{DiscoveryError, MembershipError};
use crate::membership::ClusterId;
use crate::node_name::NodeName;

/// Why formation did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormationError {
    /// Discovery retries ran out with `on_exhausted = "fail"`.
    #[error(
        "gave up forming a cluster after {attempts} discovery attempts: {waiting}{unanswered}; \
         check that the peers are running and listed by the backend, raise \
         cluster_formation.discovery_retry_limit, or set on_exhausted = \"wait\""
    )]
    Exhausted {
        /// Attempts made.
        attempts: u32,
        /// What the last attempt waited for.
        waiting: WaitReason,
        /// Why the candidates that did not answer did not.
        unanswered: Unanswered,
    },
    /// A restarting node never reached any of its known peers within the restart window.
    #[error(
        "this node was clustered before and none of its peers [{}] became available within \
         {attempts} attempts of {per_attempt:?}; start the last node that stopped first, or run \
         force-boot on this node to start it without its peers (changes made after it went down \
         are lost)",
        .peers.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
    )]
    RestartTimeout {
        /// The peers waited for.
        peers: Vec<NodeName>,
        /// Attempts made.
        attempts: u32,
        /// Time per attempt.
        per_attempt: std::time::Duration,
    },
    /// Going on could split the cluster: an operator must decide. The refusal names both
    /// clusters and the commands that resolve it.
    #[error("refusing to start: {0}")]
    Refused(Refusal),
    /// A fencing claim did not make this node the former (it waits and decides again).
    #[error("not forming cluster {id}: {why}")]
    ClaimLost {
        /// The identity it claimed.
        id: ClusterId,
        /// Why the claim did not take effect.
        why: ClaimError,
    },
    /// The backend failed permanently.
    #[error("discovery failed: {0}")]
    Discovery(#[from] DiscoveryError),
    /// The broker failed to form, join or resume.
    #[error("membership: {0}")]
    Membership(#[from] MembershipError),
}

/// Why formation refuses to go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The rule found a cluster it must neither join nor compete with (the backend records
    /// another).
    #[error("{0}")]
    Rule(WaitReason),
    /// A restarting member's peer is now a member of another cluster.
    #[error(
        "inconsistent cluster: {local} was a member of cluster {ours}, but its peer {peer} is \
         now a member of cluster {theirs}. To keep {theirs}: reset this node (`muster ctl \
         reset`, its data from {ours} is discarded) and it joins {theirs}. To keep {ours}: \
         stop {peer}, reset it, and start it again so that it rejoins {ours}"
    )]
    PeerInAnotherCluster {
        /// This node.
        local: NodeName,
        /// Its cluster.
        ours: ClusterId,
        /// The peer.
        peer: NodeName,
        /// The peer's cluster.
        theirs: ClusterId,
    },
    /// This node is its cluster's only member and the backend records another cluster.
    #[error(
        "inconsistent cluster: this node is the only member of cluster {ours}, but the \
         {backend} backend records cluster {recorded}; reset this node (`muster ctl reset`) \
         so it joins {recorded}, or replace the backend's record if {ours} is the one to keep"
    )]
    BackendRecordsAnother {
        /// This node's cluster.
        ours: ClusterId,
        /// The cluster the backend records.
        recorded: ClusterId,
        /// The backend's name.
        backend: &'static str,
    },
}

/// Why candidates did not answer, by candidate: shown where the node gives up (at most three,
/// as "; why they did not answer: …"), so that a wrong cookie or a TLS refusal is named where
/// the node stops, not only in earlier warnings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unanswered(pub BTreeMap<NodeName, String>);

impl fmt::Display for Unanswered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return Ok(());
        }
        let shown: Vec<&str> = self.0.values().take(3).map(String::as_str).collect();
        write!(f, "; why they did not answer: {}", shown.join("; "))?;
        match self.0.len().saturating_sub(3) {
            0 => Ok(()),
            more => write!(f, " (and {more} more)"),
        }
    }
}
