//! Counters for `/metrics`, and a `Discovery` wrapper that counts calls and errors.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use muster::{
    Capabilities, ClusterId, Discovery, DiscoveryError, DiscoveryResult, LockGuard, NodeName,
    RegistrationStatus,
};

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
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn list(&self) -> Result<DiscoveryResult, DiscoveryError> {
        Metrics::inc(&self.metrics.discovery_calls);
        let r = self.inner.list().await;
        if r.is_err() {
            Metrics::inc(&self.metrics.discovery_errors);
        }
        r
    }
    async fn register(&self) -> Result<(), DiscoveryError> {
        self.inner.register().await
    }
    async fn unregister(&self) -> Result<(), DiscoveryError> {
        self.inner.unregister().await
    }
    async fn lock(&self, owner: &NodeName, timeout: Duration) -> Result<Box<dyn LockGuard>, DiscoveryError> {
        self.inner.lock(owner, timeout).await
    }
    async fn record_cluster(&self, id: &ClusterId) -> Result<(), DiscoveryError> {
        self.inner.record_cluster(id).await
    }
    fn registration_status(&self) -> Option<RegistrationStatus> {
        self.inner.registration_status()
    }
    async fn resolve_host(&self, host: &str) -> Option<Result<Vec<std::net::IpAddr>, DiscoveryError>> {
        self.inner.resolve_host(host).await
    }
}
