//! An in-memory discovery backend: a shared `Directory` and one `MemoryBackend` per node.
//!
//! Modes cover the backend families: a static authoritative list (classic), registrations that
//! become visible to each observer after a per-pair delay (DNS-like, eventually consistent),
//! consistent registrations with a lease-backed lock and fencing (etcd-like), and a static list
//! with a backend-preferred seed (Kubernetes ordinal 0).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::discovery::{Capabilities, Discovery, DiscoveryResult, LockGuard};
use crate::error::{DiscoveryError, ErrorKind};
use crate::membership::ClusterId;
use crate::node_name::NodeName;
use crate::testing::SimRng;

/// How the directory answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendMode {
    /// A fixed list, identical for everyone; no registration, no lock.
    Static(Vec<NodeName>),
    /// A fixed list plus a seed chosen by the backend.
    PreferredSeed(Vec<NodeName>, NodeName),
    /// Registrations, visible to each observer after a per-pair delay; not authoritative.
    Eventual,
    /// Registrations visible at once to everyone (authoritative), a lease-backed lock, fencing.
    Locking,
}

#[derive(Debug)]
struct LockHolder {
    token: u64,
    owner: NodeName,
    expires: Instant,
}

#[derive(Debug)]
struct DirInner {
    mode: BackendMode,
    registered: BTreeMap<NodeName, Instant>,
    delays: BTreeMap<(NodeName, NodeName), Duration>,
    lock: Option<LockHolder>,
    next_token: u64,
    lock_lease: Duration,
    recorded: Option<ClusterId>,
    error_rate: f64,
    rng: SimRng,
    fail_all: bool,
    lists: u64,
}

/// The shared state behind every node's `MemoryBackend`.
#[derive(Debug, Clone)]
pub struct Directory {
    inner: Arc<Mutex<DirInner>>,
}

impl Directory {
    /// A directory in `mode`; `seed` drives injected errors.
    pub fn new(mode: BackendMode, seed: u64) -> Self {
        Directory {
            inner: Arc::new(Mutex::new(DirInner {
                mode,
                registered: BTreeMap::new(),
                delays: BTreeMap::new(),
                lock: None,
                next_token: 1,
                lock_lease: Duration::from_secs(10),
                recorded: None,
                error_rate: 0.0,
                rng: SimRng::new(seed),
                fail_all: false,
                lists: 0,
            })),
        }
    }

    /// The backend handle for one node.
    pub fn backend_for(&self, local: &NodeName) -> MemoryBackend {
        MemoryBackend {
            dir: self.clone(),
            local: local.clone(),
        }
    }

    /// Sets the delay before `observer` sees `node`'s registration (eventual mode).
    pub fn set_delay(&self, observer: &NodeName, node: &NodeName, delay: Duration) {
        self.lock().delays.insert((observer.clone(), node.clone()), delay);
    }

    /// Sets the probability that a listing fails with a temporary error.
    pub fn set_error_rate(&self, rate: f64) {
        self.lock().error_rate = rate;
    }

    /// Makes every listing fail (or succeed again).
    pub fn set_failing(&self, failing: bool) {
        self.lock().fail_all = failing;
    }

    /// Sets the lock's lease.
    pub fn set_lock_lease(&self, lease: Duration) {
        self.lock().lock_lease = lease;
    }

    /// Replaces the static list.
    pub fn set_static(&self, nodes: Vec<NodeName>) {
        self.lock().mode = BackendMode::Static(nodes);
    }

    /// Removes a registration (a lease that expired).
    pub fn deregister(&self, node: &NodeName) {
        self.lock().registered.remove(node);
    }

    /// The recorded cluster identity (fencing).
    pub fn recorded_cluster(&self) -> Option<ClusterId> {
        self.lock().recorded.clone()
    }

    /// Who holds the lock now, if anyone (an expired lease counts as free).
    pub fn lock_holder(&self) -> Option<NodeName> {
        let g = self.lock();
        g.lock
            .as_ref()
            .filter(|h| h.expires > Instant::now())
            .map(|h| h.owner.clone())
    }

    /// Listings served so far.
    pub fn list_calls(&self) -> u64 {
        self.lock().lists
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DirInner> {
        self.inner.lock().expect("directory mutex poisoned")
    }
}

/// One node's view of a `Directory`.
#[derive(Debug, Clone)]
pub struct MemoryBackend {
    dir: Directory,
    local: NodeName,
}

const NAME: &str = "memory";

#[async_trait]
impl Discovery for MemoryBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        let g = self.dir.lock();
        match g.mode {
            BackendMode::Static(_) | BackendMode::PreferredSeed(..) => {
                Capabilities::none().with_full_membership(true)
            }
            BackendMode::Eventual => Capabilities::none().with_registration(true),
            BackendMode::Locking => Capabilities::none()
                .with_registration(true)
                .with_locking(true)
                .with_full_membership(true)
                .with_fencing(true),
        }
    }

    async fn list(&self) -> Result<DiscoveryResult, DiscoveryError> {
        let mut g = self.dir.lock();
        g.lists += 1;
        let rate = g.error_rate;
        if g.fail_all || g.rng.chance(rate) {
            return Err(DiscoveryError::new(
                NAME,
                ErrorKind::Unavailable,
                "injected backend failure",
            ));
        }
        let now = Instant::now();
        let result = match &g.mode {
            BackendMode::Static(nodes) => DiscoveryResult::new(nodes.clone(), true),
            BackendMode::PreferredSeed(nodes, seed) => {
                DiscoveryResult::new(nodes.clone(), true).with_preferred_seed(seed.clone())
            }
            BackendMode::Eventual => {
                let visible = g.registered.iter().filter(|(node, at)| {
                    let delay = if **node == self.local {
                        Duration::ZERO
                    } else {
                        g.delays
                            .get(&(self.local.clone(), (*node).clone()))
                            .copied()
                            .unwrap_or_default()
                    };
                    **at + delay <= now
                });
                DiscoveryResult::new(visible.map(|(n, _)| n.clone()), false)
            }
            BackendMode::Locking => {
                let mut r = DiscoveryResult::new(g.registered.keys().cloned(), true);
                r.recorded_cluster = g.recorded.clone();
                r
            }
        };
        Ok(result)
    }

    async fn register(&self) -> Result<(), DiscoveryError> {
        let mut g = self.dir.lock();
        g.registered
            .entry(self.local.clone())
            .or_insert_with(Instant::now);
        Ok(())
    }

    async fn unregister(&self) -> Result<(), DiscoveryError> {
        self.dir.lock().registered.remove(&self.local);
        Ok(())
    }

    async fn lock(&self, owner: &NodeName, timeout: Duration) -> Result<Box<dyn LockGuard>, DiscoveryError> {
        if self.dir.lock().mode != BackendMode::Locking {
            return Err(DiscoveryError::unsupported(NAME, "locking"));
        }
        let deadline = Instant::now() + timeout;
        loop {
            {
                let mut g = self.dir.lock();
                let now = Instant::now();
                if g.lock.as_ref().is_none_or(|h| h.expires <= now) {
                    let token = g.next_token;
                    g.next_token += 1;
                    let expires = now + g.lock_lease;
                    g.lock = Some(LockHolder {
                        token,
                        owner: owner.clone(),
                        expires,
                    });
                    return Ok(Box::new(MemoryLock {
                        dir: self.dir.clone(),
                        token,
                    }));
                }
            }
            if Instant::now() >= deadline {
                return Err(DiscoveryError::new(
                    NAME,
                    ErrorKind::Unavailable,
                    format!("lock still held by another node after {timeout:?}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn record_cluster(&self, id: &ClusterId) -> Result<(), DiscoveryError> {
        self.dir.lock().recorded.get_or_insert_with(|| id.clone());
        Ok(())
    }
}

/// A held in-memory lock. Dropping it without `release` (a crashed holder) leaves it held until
/// its lease expires.
struct MemoryLock {
    dir: Directory,
    token: u64,
}

#[async_trait]
impl LockGuard for MemoryLock {
    async fn release(self: Box<Self>) -> Result<(), DiscoveryError> {
        let mut g = self.dir.lock();
        if g.lock.as_ref().is_some_and(|h| h.token == self.token) {
            g.lock = None;
        }
        Ok(())
    }
}

/// Every node registered so far, for assertions.
impl Directory {
    /// The registered nodes.
    pub fn registered(&self) -> BTreeSet<NodeName> {
        self.lock().registered.keys().cloned().collect()
    }
}
