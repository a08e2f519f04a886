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

impl ClusterId {
    /// A random identity: 16 hex digits from the operating system's random source.
    pub fn random() -> ClusterId {
        let mut bytes = [0u8; 8];
        // The OS source only fails on platforms without one; fall back to the clock and a counter.
        if getrandom::fill(&mut bytes).is_err() {
            use std::sync::atomic::{AtomicU64, Ordering};
            static COUNTER: AtomicU64 = AtomicU64::new(0);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            bytes = (now ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(32)).to_be_bytes();
        }
        ClusterId(hex::encode(bytes))
    }
}

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
    /// Set by a seed that is collecting commitments: the identity it will form under once every
    /// candidate has committed to it. A new intent always carries a new identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<ClusterId>,
    /// The seed intent this node has committed to (persisted, sticky: see [`Commitment`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed: Option<Commitment>,
    /// This node's [`Membership::disk_id`]: a committed peer releases its commitment to this
    /// seed only on an answer from the same disk, which remembers whether it formed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<u64>,
    /// Intents announced from a disk this seed has since lost, which it found held by no
    /// candidate of its authoritative listing: nodes committed to them may release.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disowned: Vec<ClusterId>,
}

/// A view as a member keeps it for probes: the view and when it was published. An answer gives
/// the view's age at the moment it answers, not at its last publication: the engine publishes
/// at once whenever its view changes, so the view stays unchanged until the next publication.
/// The age grows by at most [`PublishedView::AGES_FOR`]: an engine stuck in a slow listing, or
/// a paused process, has not looked since, and its age then waits for its next round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedView {
    view: FormationView,
    at: tokio::time::Instant,
}

impl PublishedView {
    /// How long after its publication a view's age keeps growing: longer than a round at the
    /// shipped settings (a 500 ms interval, the probes of the round).
    pub const AGES_FOR: Duration = Duration::from_secs(2);

    /// `view`, published now.
    pub fn new(view: FormationView) -> Self {
        PublishedView {
            view,
            at: tokio::time::Instant::now(),
        }
    }

    /// The view with its age as of now.
    pub fn current(&self) -> FormationView {
        FormationView {
            unchanged_for: self.view.unchanged_for + self.at.elapsed().min(Self::AGES_FOR),
            ..self.view.clone()
        }
    }
}

/// A persisted commitment to one seed's intent. While it stands, the node commits to no other
/// seed; it is dropped only when the seed, answering from the same disk, is blank and no longer
/// announces that intent, when the seed disowns it, or when the node joins a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Commitment {
    /// The seed.
    pub seed: NodeName,
    /// The identity the seed announced.
    pub intent: ClusterId,
    /// The seed's [`Membership::disk_id`] when it announced the intent (`None` when unknown:
    /// such a commitment is released only by a disowning seed or a visible cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<u64>,
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
    /// The members the peer exchanged messages with recently: cleanup counts a member one of
    /// them reaches as reachable, so a member cut off from one node only is never forgotten.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub in_contact: Vec<NodeName>,
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
    /// A blank node's standing commitment to a seed (see [`Commitment`]), kept across restarts.
    #[serde(default)]
    pub commitment: Option<Commitment>,
}

impl RestartState {
    /// True when the node was clustered before and takes the restart path.
    pub fn was_clustered(&self) -> bool {
        self.cluster.is_some()
    }
}

/// What an embedding broker implements.
///
/// # The probe contract
///
/// The formation rule is only as safe as the broker's probe answers. An implementation must:
/// - keep [`Membership::probe`] read-only on the probed peer, and answer from current state
///   (no caching across calls);
/// - answer probes while [`Membership::form`] runs, and make the answer reflect `form`
///   atomically: until the cluster is persisted the peer reports the last view published with
///   [`Membership::publish_view`] (which still carries the intent), from then on the new cluster;
///   never "blank without a view" in between;
/// - report `ready` only when the peer is a current member that accepts joins now;
/// - persist [`Membership::persist_commitment`] before returning, and report it in
///   [`Membership::restart_state`] after a restart;
/// - keep [`Membership::disk_id`] for as long as the persisted state survives, and only so long.
#[async_trait]
pub trait Membership: Send + Sync {
    /// This node's name.
    fn local_node(&self) -> NodeName;

    /// Asks a peer for its facts. Must not change the peer's state. An unreachable peer is an
    /// error; the engine applies its own timeout around this call.
    async fn probe(&self, peer: &NodeName) -> Result<PeerInfo, MembershipError>;

    /// A fresh, unique cluster identity for this node to announce as its intent and later form
    /// under. The default draws 64 random bits from the operating system.
    fn new_cluster_id(&self) -> ClusterId {
        ClusterId::random()
    }

    /// Forms a new cluster named `id` with this node as its only member, persisting it before
    /// returning. The engine has already claimed `id` with a fencing backend.
    async fn form(&self, id: &ClusterId) -> Result<(), MembershipError>;

    /// Joins `cluster` through its member `member`; must fail, not join, when `member` is no
    /// longer a ready member of exactly that cluster.
    async fn join(&self, member: &NodeName, cluster: &ClusterId) -> Result<(), MembershipError>;

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

    /// Identifies this node's persisted state: drawn once when the data dir is first written,
    /// kept across restarts, new after the data is lost. It must be durable before the first
    /// [`Membership::persist_commitment`] returns, so that a seed that announced an intent answers
    /// with the same id until its disk is lost.
    fn disk_id(&self) -> u64;

    /// Persists (or clears) this blank node's commitment to a seed, before the engine publishes it.
    async fn persist_commitment(&self, commitment: Option<&Commitment>) -> Result<(), MembershipError>;

    /// Tells `peers`, best effort and without waiting, that this node's formation state changed
    /// (its view, intent or commitment; or it formed, joined or resumed), so that each decides
    /// again now instead of at its next interval: the receiver fires its engine's
    /// [`Trigger`](crate::Trigger). The engine calls this once per change. A lost notice only
    /// costs time. The default does nothing: peers then notice at their interval.
    fn notify(&self, peers: &[NodeName]) {
        let _ = peers;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_published_view_answers_with_its_age_at_the_answer() {
        let view = FormationView {
            seed: None,
            sees_cluster: None,
            candidates: 3,
            unchanged_for: Duration::from_secs(2),
            intent: None,
            committed: None,
            disk: None,
            disowned: Vec::new(),
        };
        let published = PublishedView::new(view.clone());
        assert_eq!(published.current(), view);
        tokio::time::advance(Duration::from_millis(700)).await;
        let now = published.current();
        assert_eq!(now.unchanged_for, Duration::from_millis(2700));
        assert_eq!(
            FormationView {
                unchanged_for: view.unchanged_for,
                ..now
            },
            view
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            published.current().unchanged_for,
            view.unchanged_for + PublishedView::AGES_FOR,
            "a view not published again stops ageing"
        );
    }
}
