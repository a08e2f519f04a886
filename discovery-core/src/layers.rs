//! Layers: a backend wrapped in another [`Discovery`] that adds one concern around its listing
//! (a time limit, metrics), the backend itself unchanged. Every layer shares one wrapper,
//! [`Layered`], which hands every capability through; a layer says only what it does around a
//! listing.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use muster_discovery_core::Discovery;
//! use muster_discovery_core::layers::{Layer, TimeoutLayer};
//!
//! /// The backend with each listing bounded to 30 s.
//! fn bounded(backend: Arc<dyn Discovery>) -> Arc<dyn Discovery> {
//!     TimeoutLayer::new(Duration::from_secs(30)).layer(backend)
//! }
//! ```

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::discovery::{Discovery, DiscoveryResult, Fencing, FormationLock, Milestone, Registration};
use crate::error::{DiscoveryError, ErrorKind, RetryClass};
use crate::trigger::Trigger;

/// What a layer does around the listing of the backend it wraps.
#[async_trait]
pub trait Around: Send + Sync + 'static {
    /// Lists through `inner`, adding this layer's concern.
    async fn list(&self, inner: &dyn Discovery) -> Result<DiscoveryResult, DiscoveryError>;
}

/// Wraps a backend in a layer.
pub trait Layer {
    /// `inner` with this layer around it.
    fn layer(self, inner: Arc<dyn Discovery>) -> Arc<dyn Discovery>;
}

impl<A: Around> Layer for A {
    fn layer(self, inner: Arc<dyn Discovery>) -> Arc<dyn Discovery> {
        Arc::new(Layered { inner, around: self })
    }
}

/// A backend with a layer around its listing; everything else is the backend's own.
pub struct Layered<A> {
    inner: Arc<dyn Discovery>,
    around: A,
}

#[async_trait]
impl<A: Around> Discovery for Layered<A> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn full_membership(&self) -> bool {
        self.inner.full_membership()
    }
    async fn list(&self) -> Result<DiscoveryResult, DiscoveryError> {
        self.around.list(self.inner.as_ref()).await
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
    async fn milestone(&self, milestone: &Milestone) {
        self.inner.milestone(milestone).await
    }
    fn watch(&self, trigger: Trigger) {
        self.inner.watch(trigger)
    }
    async fn resolve_host(&self, host: &str) -> Option<Result<Vec<IpAddr>, DiscoveryError>> {
        self.inner.resolve_host(host).await
    }
}

/// Bounds each listing: one that has not answered within the limit is a temporary
/// `Unavailable` error, so a backend whose client hangs delays an attempt, never the run.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    limit: Duration,
}

impl TimeoutLayer {
    /// A limit of `limit` per listing.
    pub fn new(limit: Duration) -> Self {
        TimeoutLayer { limit }
    }
}

#[async_trait]
impl Around for TimeoutLayer {
    async fn list(&self, inner: &dyn Discovery) -> Result<DiscoveryResult, DiscoveryError> {
        match tokio::time::timeout(self.limit, inner.list()).await {
            Ok(listed) => listed,
            Err(_) => Err(DiscoveryError::new(
                inner.name(),
                ErrorKind::Unavailable,
                format!("the listing did not answer within {:?}", self.limit),
            )
            .with_retry(RetryClass::Temporary)),
        }
    }
}

/// Told of every listing through a [`MetricsLayer`]: its result and how long it took.
pub trait ListingObserver: Send + Sync + 'static {
    /// One listing ended.
    fn listed(&self, result: Result<&DiscoveryResult, &DiscoveryError>, took: Duration);
}

/// Reports every listing to an observer (the runtime's counters, a test's log).
pub struct MetricsLayer<O> {
    observer: O,
}

impl<O: ListingObserver> MetricsLayer<O> {
    /// Reports to `observer`.
    pub fn new(observer: O) -> Self {
        MetricsLayer { observer }
    }
}

#[async_trait]
impl<O: ListingObserver> Around for MetricsLayer<O> {
    async fn list(&self, inner: &dyn Discovery) -> Result<DiscoveryResult, DiscoveryError> {
        let started = Instant::now();
        let result = inner.list().await;
        self.observer.listed(result.as_ref(), started.elapsed());
        result
    }
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::node_name::NodeName;
    use crate::testing::{BackendMode, Directory, MemoryBackend};

    fn n(s: &str) -> NodeName {
        s.parse().unwrap()
    }

    /// A backend whose listing never answers, with a lock, to check what passes through.
    struct Hung(MemoryBackend);

    #[async_trait]
    impl Discovery for Hung {
        fn name(&self) -> &'static str {
            "hung"
        }
        fn full_membership(&self) -> bool {
            true
        }
        async fn list(&self) -> Result<DiscoveryResult, DiscoveryError> {
            std::future::pending().await
        }
        fn formation_lock(&self) -> Option<&dyn FormationLock> {
            self.0.formation_lock()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_listing_becomes_a_temporary_error_at_the_limit_and_capabilities_pass_through() {
        let memory = Directory::new(BackendMode::Locking, 1).backend_for(&n("m@a"));
        let hung: Arc<dyn Discovery> = Arc::new(Hung(memory));
        let bounded = TimeoutLayer::new(Duration::from_secs(3)).layer(hung);
        let started = Instant::now();
        let e = bounded.list().await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert!(e.is_temporary() && e.kind == ErrorKind::Unavailable, "{e}");
        assert!(e.to_string().contains("hung"), "{e}");
        assert_eq!(bounded.name(), "hung");
        assert!(bounded.capabilities().locking && !bounded.capabilities().fencing);
    }

    #[derive(Default)]
    struct Log(Mutex<Vec<(bool, usize)>>);

    impl ListingObserver for Arc<Log> {
        fn listed(&self, result: Result<&DiscoveryResult, &DiscoveryError>, _took: Duration) {
            let entry = match result {
                Ok(listing) => (true, listing.nodes.len()),
                Err(_) => (false, 0),
            };
            self.0.lock().unwrap().push(entry);
        }
    }

    #[tokio::test]
    async fn every_listing_is_reported_with_its_outcome() {
        let dir = Directory::new(BackendMode::Static(vec![n("m@a"), n("m@b")]), 1);
        let log = Arc::new(Log::default());
        let observed = MetricsLayer::new(log.clone()).layer(Arc::new(dir.backend_for(&n("m@a"))));
        observed.list().await.unwrap();
        dir.set_failing(true);
        observed.list().await.unwrap_err();
        assert_eq!(*log.0.lock().unwrap(), [(true, 2), (false, 0)]);
    }
}
