//! The `Discovery` trait: what a backend implements.
//!
//! One small, object-safe async trait, in the style of `object_store`: list the candidates, say
//! what you can do, and optionally register, lock and record the cluster's identity.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::DiscoveryError;
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
    /// A cluster identity the backend has recorded (see [`Discovery::record_cluster`]). When set,
    /// a node that cannot reach any member of that cluster must not form another.
    pub recorded_cluster: Option<ClusterId>,
    /// What an operator can do about a recorded cluster nobody reaches (for example which key to
    /// delete to re-bootstrap); shown in the refusal.
    pub fencing_hint: Option<String>,
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
        }
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
}

/// What a backend can do beyond listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Capabilities {
    /// `register`/`unregister` announce the node to the backend.
    pub registration: bool,
    /// `lock` returns a lease-backed lock.
    pub locking: bool,
    /// `list` returns the full membership (see [`DiscoveryResult::authoritative`]).
    pub full_membership: bool,
    /// `record_cluster` stores the cluster identity in the backend.
    pub fencing: bool,
}

impl Capabilities {
    /// Capabilities with every flag off.
    pub fn none() -> Self {
        Self::default()
    }

    /// Sets `registration`.
    pub fn with_registration(mut self, on: bool) -> Self {
        self.registration = on;
        self
    }

    /// Sets `locking`.
    pub fn with_locking(mut self, on: bool) -> Self {
        self.locking = on;
        self
    }

    /// Sets `full_membership`.
    pub fn with_full_membership(mut self, on: bool) -> Self {
        self.full_membership = on;
        self
    }

    /// Sets `fencing`.
    pub fn with_fencing(mut self, on: bool) -> Self {
        self.fencing = on;
        self
    }
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
}

/// A discovery backend.
#[async_trait]
pub trait Discovery: Send + Sync {
    /// A short name used in logs and errors (`"classic"`, `"dns"`, `"etcd"`, …).
    fn name(&self) -> &'static str;

    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;

    /// Lists the candidate nodes. An error is an error, never an empty list.
    async fn list(&self) -> Result<DiscoveryResult, DiscoveryError>;

    /// Announces the local node. Called before the first listing so that the node can see itself.
    async fn register(&self) -> Result<(), DiscoveryError> {
        Ok(())
    }

    /// Withdraws the local node's announcement (graceful shutdown).
    async fn unregister(&self) -> Result<(), DiscoveryError> {
        Ok(())
    }

    /// Takes the backend's formation lock for `owner`, waiting at most `timeout`.
    async fn lock(&self, owner: &NodeName, timeout: Duration) -> Result<Box<dyn LockGuard>, DiscoveryError> {
        let _ = (owner, timeout);
        Err(DiscoveryError::unsupported(self.name(), "locking"))
    }

    /// Resolves a peer's host name with this backend's own resolver settings, so that a
    /// deployment with its own nameservers never falls back to the system resolver for peers.
    /// `None` (the default): use the system resolver.
    async fn resolve_host(&self, host: &str) -> Option<Result<Vec<std::net::IpAddr>, DiscoveryError>> {
        let _ = host;
        None
    }

    /// The registration's live state, for backends that keep one (leases, TTL checks).
    fn registration_status(&self) -> Option<RegistrationStatus> {
        None
    }

    /// Records the identity of a cluster that was just formed, so that a blank node that cannot
    /// reach its members refuses to form a second one.
    async fn record_cluster(&self, id: &ClusterId) -> Result<(), DiscoveryError> {
        let _ = id;
        Ok(())
    }
}
