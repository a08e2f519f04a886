//! The `Discovery` trait: what a backend implements.
//!
//! One small, object-safe async trait, in the style of `object_store`: list the candidates, and
//! optionally hand out extension traits to register, lock and claim the cluster's identity.

use async_trait::async_trait;
use futures::future::BoxFuture;

use crate::error::DiscoveryError;
use crate::lock_wait::LockWait;
use crate::membership::ClusterId;
use crate::node_name::NodeName;

/// What one listing returned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct DiscoveryResult {
    /// The candidate nodes, sorted and without duplicates. May or may not include the local node.
    pub nodes: Vec<NodeName>,
    /// A seed the backend chose for everyone (for example a StatefulSet's ordinal 0).
    pub preferred_seed: Option<NodeName>,
    /// True when `nodes` is the full, current membership, identical for every caller
    /// (a static list, live registrations in a consistent store). Only then may cleanup remove
    /// nodes, and only then is the lowest listed node a safe seed without a stable-view window.
    pub authoritative: bool,
    /// A cluster identity the backend has recorded (see [`Fencing::claim`]). When set, a node
    /// that cannot reach any member of that cluster must not form another, nor join another.
    pub recorded_cluster: Option<ClusterId>,
    /// What an operator can do about a recorded cluster nobody reaches (for example which key to
    /// delete to re-bootstrap); shown in the refusal.
    pub fencing_hint: Option<String>,
    /// How many nodes the backend knows the cluster is meant to have (a StatefulSet's
    /// replicas): raises `target_cluster_size_hint` to it for this round.
    pub expected_size: Option<usize>,
    /// A node missing from this listing has left (an autoscaling group no longer lists it):
    /// cleanup may count it as gone even though the listing is not authoritative for formation.
    pub departures_known: bool,
}

impl DiscoveryResult {
    /// A result with the given nodes, sorted and de-duplicated.
    pub fn new(nodes: impl IntoIterator<Item = NodeName>, authoritative: bool) -> Self {
        let mut nodes: Vec<NodeName> = nodes.into_iter().collect();
        nodes.sort();
        nodes.dedup();
        DiscoveryResult {
            nodes,
            preferred_seed: None,
            authoritative,
            recorded_cluster: None,
            fencing_hint: None,
            expected_size: None,
            departures_known: false,
        }
    }

    /// Sets the expected cluster size (see [`DiscoveryResult::expected_size`]).
    pub fn with_expected_size(mut self, size: usize) -> Self {
        self.expected_size = Some(size);
        self
    }

    /// Marks absences as departures (see [`DiscoveryResult::departures_known`]).
    pub fn with_departures_known(mut self) -> Self {
        self.departures_known = true;
        self
    }

    /// Sets the backend-preferred seed.
    pub fn with_preferred_seed(mut self, seed: NodeName) -> Self {
        self.preferred_seed = Some(seed);
        self
    }

    /// Sets the recorded cluster identity.
    pub fn with_recorded_cluster(mut self, id: ClusterId) -> Self {
        self.recorded_cluster = Some(id);
        self
    }

    /// Sets the remediation shown when the recorded cluster is unreachable.
    pub fn with_fencing_hint(mut self, hint: impl Into<String>) -> Self {
        self.fencing_hint = Some(hint.into());
        self
    }
}

/// A formation milestone, told to the backend (which may publish it, e.g. as a Kubernetes
/// Event on the node's pod).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Milestone {
    /// This node formed a new cluster.
    Formed {
        /// The cluster.
        cluster: ClusterId,
    },
    /// This node joined (or, after a restart, rejoined) a cluster.
    Joined {
        /// The cluster.
        cluster: ClusterId,
        /// The member it joined through, if any.
        via: Option<NodeName>,
    },
    /// Formation refused to go on (it would have made a second cluster).
    Refused {
        /// Why, with what to do.
        reason: String,
    },
    /// Formation failed (attempts exhausted, misconfigured).
    Failed {
        /// Why.
        reason: String,
    },
    /// Halfway through the discovery attempts and still waiting.
    WaitingLong {
        /// What the node is waiting for.
        detail: String,
    },
}

/// What a backend can do beyond listing: a summary of its accessors, for logs and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Capabilities {
    /// [`Discovery::registration`] is implemented.
    pub registration: bool,
    /// [`Discovery::formation_lock`] is implemented.
    pub locking: bool,
    /// `list` returns the full membership (see [`DiscoveryResult::authoritative`]).
    pub full_membership: bool,
    /// [`Discovery::fencing`] is implemented.
    pub fencing: bool,
}

/// The state of a backend registration, for status pages and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RegistrationStatus {
    /// The node is currently registered.
    pub registered: bool,
    /// What the registration is doing or why it failed, as a sentence.
    pub detail: String,
    /// Successful keep-alive renewals.
    pub renewals: u64,
    /// Times the registration had to be re-established (lease lost, reconnect).
    pub re_registrations: u64,
}

impl RegistrationStatus {
    /// A status with the given flag and detail.
    pub fn new(registered: bool, detail: impl Into<String>) -> Self {
        RegistrationStatus {
            registered,
            detail: detail.into(),
            ..Self::default()
        }
    }
}

/// A held backend lock. The lock is backed by a lease: if the holder dies without releasing it,
/// the backend frees it when the lease expires.
#[async_trait]
pub trait LockGuard: Send + Sync {
    /// Releases the lock now.
    async fn release(self: Box<Self>) -> Result<(), DiscoveryError>;

    /// The backend's fencing token for this hold (for etcd the lock key, whose revision a claim
    /// checks): [`Fencing::claim`] refuses a claim whose hold it finds lost.
    fn token(&self) -> &[u8];

    /// Resolves once the lock is known lost (keep-alive failed, lease expired). The engine races
    /// every action under the lock against it, so a lapsed hold cancels the action in progress.
    fn lost(&self) -> BoxFuture<'static, ()>;
}

/// Registration: backends where a node announces itself (leases, TTL checks).
#[async_trait]
pub trait Registration: Send + Sync {
    /// Announces the local node. Called before the first listing so that the node can see itself.
    async fn register(&self) -> Result<(), DiscoveryError>;

    /// Withdraws the local node's announcement (graceful shutdown).
    async fn unregister(&self) -> Result<(), DiscoveryError>;

    /// The registration's live state, for status pages and metrics.
    fn status(&self) -> RegistrationStatus;
}

/// A formation lock: linearizable, lease-backed, at most one holder at a time.
#[async_trait]
pub trait FormationLock: Send + Sync {
    /// Takes the backend's formation lock for `owner`, waiting until `wait` is over (then an
    /// error, and nothing held).
    async fn lock(&self, owner: &NodeName, wait: &LockWait) -> Result<Box<dyn LockGuard>, DiscoveryError>;
}

/// Why a [`Fencing::claim`] did not make the caller the cluster's former.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClaimError {
    /// Another cluster identity is already recorded: join it or wait, never form.
    #[error("the backend already records cluster {0}")]
    Taken(ClusterId),
    /// The lock named in the claim is no longer held by the caller (lease lapsed).
    #[error("the formation lock was lost before the claim")]
    LockLost,
    /// The backend failed; nothing is known about the claim except that it did not take effect
    /// from this call's point of view (the engine treats it as lost).
    #[error(transparent)]
    Backend(#[from] DiscoveryError),
}

/// Fencing: the backend records the one cluster identity, atomically and before anyone forms.
#[async_trait]
pub trait Fencing: Send + Sync {
    /// Records `id` as the cluster's identity if none is recorded yet (create-if-absent); with
    /// `lock`, refuses ([`ClaimError::LockLost`]) when that hold is no longer current. etcd checks
    /// the hold in the same transaction as the write; Kubernetes and Consul read it just before,
    /// so a hold that lapses in between does not stop the create, which alone decides. Claiming
    /// the id that is already recorded succeeds (idempotent); any other is [`ClaimError::Taken`].
    async fn claim(&self, id: &ClusterId, lock: Option<&dyn LockGuard>) -> Result<(), ClaimError>;
}

/// A discovery backend: one required listing and optional capabilities, each an extension trait
/// returned by an accessor, so a backend cannot declare a capability it does not implement.
#[async_trait]
pub trait Discovery: Send + Sync {
    /// A short name used in logs and errors (`"classic"`, `"dns"`, `"etcd"`, …).
    fn name(&self) -> &'static str;

    /// True when [`Discovery::list`] returns the full membership (see
    /// [`DiscoveryResult::authoritative`]); used for start-up warnings and the conformance suite.
    fn full_membership(&self) -> bool;

    /// Lists the candidate nodes. An error is an error, never an empty list.
    async fn list(&self) -> Result<DiscoveryResult, DiscoveryError>;

    /// The registration capability, if the backend has one.
    fn registration(&self) -> Option<&dyn Registration> {
        None
    }

    /// The formation lock, if the backend has one.
    fn formation_lock(&self) -> Option<&dyn FormationLock> {
        None
    }

    /// Fencing (claiming the cluster identity), if the backend has it.
    fn fencing(&self) -> Option<&dyn Fencing> {
        None
    }

    /// Told of formation milestones; best effort (the default ignores them).
    async fn milestone(&self, _milestone: &Milestone) {}

    /// Starts watching the listing: the backend fires `trigger` whenever it may have changed,
    /// so the engine decides again at once instead of at its next interval. Called once per
    /// formation run; the watch ends with the backend. The default has no watch (the engine
    /// polls at its interval).
    fn watch(&self, trigger: crate::trigger::Trigger) {
        let _ = trigger;
    }

    /// Resolves a peer's host name with this backend's own resolver settings, so that a
    /// deployment with its own nameservers never falls back to the system resolver for peers.
    /// `None` (the default): use the system resolver.
    async fn resolve_host(&self, host: &str) -> Option<Result<Vec<std::net::IpAddr>, DiscoveryError>> {
        let _ = host;
        None
    }

    /// What this backend can do, derived from the accessors above (do not override).
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            registration: self.registration().is_some(),
            locking: self.formation_lock().is_some(),
            full_membership: self.full_membership(),
            fencing: self.fencing().is_some(),
        }
    }
}
