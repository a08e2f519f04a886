//! The node's counters, updated where things happen, and the backend wrapper that counts
//! listings. With the `http` feature, `/metrics` renders them (see `crate::http::metrics`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use muster::layers::ListingObserver;
use muster::{DiscoveryError, DiscoveryResult};

/// A counter that only goes up.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// The count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge holding the last value set.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
    /// The value (0 until set).
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// The node's live counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Backend listings.
    pub discovery_calls: Counter,
    /// Backend listings that failed.
    pub discovery_errors: Counter,
    /// Joins this node performed or accepted.
    pub joins: Counter,
    /// Members this node forgot.
    pub forgotten: Counter,
    /// Peers that answered the last status probe.
    pub reachable_peers: Gauge,
    /// Peer-protocol messages sent.
    pub messages_sent: Counter,
    /// Peer-protocol messages received.
    pub messages_received: Counter,
    /// Connections refused for a failed handshake.
    pub auth_failures: Counter,
    /// Formation notices sent to peers (see `Membership::notify`).
    pub notices_sent: Counter,
    /// Formation notices received from peers.
    pub notices_received: Counter,
    /// When this node's readiness or member list last changed (Unix time, seconds): how long
    /// formation took, read afterwards, exactly, without polling the node while it forms.
    pub membership_changed: Gauge,
}

/// Counts the backend's listings and their errors (the runtime's [`MetricsLayer`] observer).
///
/// [`MetricsLayer`]: muster::layers::MetricsLayer
pub struct ListingCounts(pub Arc<Metrics>);

impl ListingObserver for ListingCounts {
    fn listed(&self, result: Result<&DiscoveryResult, &DiscoveryError>, _took: std::time::Duration) {
        self.0.discovery_calls.inc();
        if result.is_err() {
            self.0.discovery_errors.inc();
        }
    }
}
