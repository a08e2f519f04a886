//! Counters for `/metrics`, and a `Discovery` wrapper that counts calls and errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use muster::{Discovery, DiscoveryError, DiscoveryResult, Fencing, FormationLock, Registration};

/// The node's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Backend listings.
    pub discovery_calls: AtomicU64,
    /// Backend listings that failed.
    pub discovery_errors: AtomicU64,
    /// Joins this node performed or accepted.
    pub joins: AtomicU64,
    /// Members this node forgot.
    pub forgotten: AtomicU64,
    /// Peers that answered the last status probe.
    pub reachable_peers: AtomicU64,
    /// Peer-protocol messages sent.
    pub messages_sent: AtomicU64,
    /// Peer-protocol messages received.
    pub messages_received: AtomicU64,
    /// Connections refused for a failed handshake.
    pub auth_failures: AtomicU64,
}

impl Metrics {
    /// Adds one.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Wraps a backend and counts its listings and errors.
pub struct Counting {
    inner: Arc<dyn Discovery>,
    metrics: Arc<Metrics>,
}

impl Counting {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Discovery>, metrics: Arc<Metrics>) -> Self {
        Counting { inner, metrics }
    }
}

#[async_trait]
impl Discovery for Counting {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn full_membership(&self) -> bool {
        self.inner.full_membership()
    }
    async fn list(&self) -> Result<DiscoveryResult, DiscoveryError> {
        Metrics::inc(&self.metrics.discovery_calls);
        let r = self.inner.list().await;
        if r.is_err() {
            Metrics::inc(&self.metrics.discovery_errors);
        }
        r
    }
    fn registration(&self) -> Option<&dyn Registration> {
        self.inner.registration()
    }
    fn formation_lock(&self) -> Option<&dyn FormationLock> {
        self.inner.formation_lock()
    }
    fn fencing(&self) -> Option<&dyn Fencing> {
        self.inner.fencing()
    }
    async fn resolve_host(&self, host: &str) -> Option<Result<Vec<std::net::IpAddr>, DiscoveryError>> {
        self.inner.resolve_host(host).await
    }
}
