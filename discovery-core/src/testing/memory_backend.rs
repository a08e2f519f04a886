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

use futures::future::BoxFuture;

use crate::discovery::{
    ClaimError, Discovery, DiscoveryResult, Fencing, FormationLock, LockGuard, Registration,
    RegistrationStatus,
};
use crate::error::{DiscoveryError, ErrorKind};
use crate::lock_wait::LockWait;
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
    /// Per-node static lists that replace the mode's list for that node (misconfiguration,
    /// a list that grew while old members were down).
    lists_for: BTreeMap<NodeName, Vec<NodeName>>,
    /// When each registration became visible, and when it lapses (a crashed holder's lease).
    registered: BTreeMap<NodeName, Instant>,
    expires: BTreeMap<NodeName, Instant>,
    registration_ttl: Option<Duration>,
    list_latency: Duration,
    claim_error_rate: f64,
    claims: u64,
    delays: BTreeMap<(NodeName, NodeName), Duration>,
    lock: Option<LockHolder>,
    next_token: u64,
    lock_lease: Duration,
    recorded: Option<ClusterId>,
    error_rate: f64,
    rng: SimRng,
    fail_all: bool,
    lists: u64,
    /// Lock waits that ended because the waiter's engine was woken.
    woken_waits: u64,
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
                lists_for: BTreeMap::new(),
                registered: BTreeMap::new(),
                expires: BTreeMap::new(),
                registration_ttl: None,
                list_latency: Duration::ZERO,
                claim_error_rate: 0.0,
                claims: 0,
                delays: BTreeMap::new(),
                lock: None,
                next_token: 1,
                lock_lease: Duration::from_secs(10),
                recorded: None,
                error_rate: 0.0,
                rng: SimRng::new(seed),
                fail_all: false,
                lists: 0,
                woken_waits: 0,
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

    /// Gives one node its own static list (static and preferred-seed modes).
    pub fn set_list_for(&self, node: &NodeName, nodes: Vec<NodeName>) {
        self.lock().lists_for.insert(node.clone(), nodes);
    }

    /// Drops one node's own static list (it reads the common one again).
    pub fn clear_list_for(&self, node: &NodeName) {
        self.lock().lists_for.remove(node);
    }

    /// How long every listing takes.
    pub fn set_list_latency(&self, latency: Duration) {
        self.lock().list_latency = latency;
    }

    /// The probability that a fencing claim fails with a temporary error (before taking effect).
    pub fn set_claim_error_rate(&self, rate: f64) {
        self.lock().claim_error_rate = rate;
    }

    /// The lease of a registration whose holder stopped renewing it (see [`Directory::crashed`]).
    pub fn set_registration_ttl(&self, ttl: Option<Duration>) {
        self.lock().registration_ttl = ttl;
    }

    /// A node's process died: its registration lapses after the registration TTL (if set).
    pub fn crashed(&self, node: &NodeName) {
        let mut g = self.lock();
        if let Some(ttl) = g.registration_ttl {
            let at = Instant::now() + ttl;
            g.expires.insert(node.clone(), at);
        }
    }

    /// Removes a registration (a lease that expired).
    pub fn deregister(&self, node: &NodeName) {
        let mut g = self.lock();
        g.registered.remove(node);
        g.expires.remove(node);
    }

    /// Claims attempted so far.
    pub fn claim_calls(&self) -> u64 {
        self.lock().claims
    }

    /// Records a cluster identity as a fencing claim would (a cluster formed before the run).
    pub fn set_recorded_cluster(&self, id: ClusterId) {
        self.lock().recorded = Some(id);
    }

    /// The recorded cluster identity (fencing).
    pub fn recorded_cluster(&self) -> Option<ClusterId> {
        self.lock().recorded.clone()
    }

    /// How many lock waits ended because the waiter's engine was woken.
    pub fn woken_lock_waits(&self) -> u64 {
        self.lock().woken_waits
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

impl DirInner {
    /// Drops registrations whose lease lapsed.
    fn expire(&mut self, now: Instant) {
        let lapsed: Vec<NodeName> = self
            .expires
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for n in lapsed {
            self.expires.remove(&n);
            self.registered.remove(&n);
        }
    }

    fn locking(&self) -> bool {
        self.mode == BackendMode::Locking
    }
}

#[async_trait]
impl Discovery for MemoryBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn full_membership(&self) -> bool {
        !matches!(self.dir.lock().mode, BackendMode::Eventual)
    }

    fn registration(&self) -> Option<&dyn Registration> {
        matches!(self.dir.lock().mode, BackendMode::Eventual | BackendMode::Locking).then_some(self as _)
    }

    fn formation_lock(&self) -> Option<&dyn FormationLock> {
        self.dir.lock().locking().then_some(self as _)
    }

    fn fencing(&self) -> Option<&dyn Fencing> {
        self.dir.lock().locking().then_some(self as _)
    }

    async fn list(&self) -> Result<DiscoveryResult, DiscoveryError> {
        let latency = self.dir.lock().list_latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
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
        g.expire(now);
        let own = g.lists_for.get(&self.local).cloned();
        let result = match &g.mode {
            BackendMode::Static(nodes) => DiscoveryResult::new(own.unwrap_or_else(|| nodes.clone()), true),
            BackendMode::PreferredSeed(nodes, seed) => {
                DiscoveryResult::new(own.unwrap_or_else(|| nodes.clone()), true)
                    .with_preferred_seed(seed.clone())
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
                if let Some(id) = g.recorded.clone() {
                    r = r
                        .with_recorded_cluster(id)
                        .with_fencing_hint("clear the memory directory's record");
                }
                r
            }
        };
        Ok(result)
    }
}

#[async_trait]
impl Registration for MemoryBackend {
    async fn register(&self) -> Result<(), DiscoveryError> {
        let mut g = self.dir.lock();
        g.expires.remove(&self.local);
        g.registered
            .entry(self.local.clone())
            .or_insert_with(Instant::now);
        Ok(())
    }

    async fn unregister(&self) -> Result<(), DiscoveryError> {
        self.dir.deregister(&self.local);
        Ok(())
    }

    fn status(&self) -> RegistrationStatus {
        let registered = self.dir.lock().registered.contains_key(&self.local);
        RegistrationStatus::new(
            registered,
            if registered {
                "registered"
            } else {
                "not registered"
            },
        )
    }
}

#[async_trait]
impl FormationLock for MemoryBackend {
    async fn lock(&self, owner: &NodeName, wait: &LockWait) -> Result<Box<dyn LockGuard>, DiscoveryError> {
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
                        bytes: token.to_be_bytes(),
                        expires,
                    }));
                }
            }
            // Nothing is held while waiting: giving up leaves nothing behind.
            if wait
                .bound(tokio::time::sleep(Duration::from_millis(10)))
                .await
                .is_none()
            {
                self.dir.lock().woken_waits += u64::from(wait.woken());
                return Err(DiscoveryError::new(
                    NAME,
                    ErrorKind::Unavailable,
                    format!(
                        "lock still held by another node; stopped waiting after at most {:?}",
                        wait.timeout()
                    ),
                ));
            }
        }
    }
}

#[async_trait]
impl Fencing for MemoryBackend {
    async fn claim(&self, id: &ClusterId, lock: Option<&dyn LockGuard>) -> Result<(), ClaimError> {
        let mut g = self.dir.lock();
        g.claims += 1;
        let rate = g.claim_error_rate;
        if g.rng.chance(rate) {
            return Err(DiscoveryError::new(NAME, ErrorKind::Unavailable, "injected claim failure").into());
        }
        if let Some(guard) = lock {
            let now = Instant::now();
            let current = g
                .lock
                .as_ref()
                .filter(|h| h.expires > now)
                .map(|h| h.token.to_be_bytes());
            if current.as_ref().map(|t| &t[..]) != Some(guard.token()) {
                return Err(ClaimError::LockLost);
            }
        }
        match &g.recorded {
            Some(existing) if existing == id => Ok(()),
            Some(existing) => Err(ClaimError::Taken(existing.clone())),
            None => {
                g.recorded = Some(id.clone());
                Ok(())
            }
        }
    }
}

/// A held in-memory lock. Dropping it without `release` (a crashed holder) leaves it held until
/// its lease expires; the lease is not renewed, so a holder slower than the lease loses it.
struct MemoryLock {
    dir: Directory,
    token: u64,
    bytes: [u8; 8],
    expires: Instant,
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

    fn token(&self) -> &[u8] {
        &self.bytes
    }

    fn lost(&self) -> BoxFuture<'static, ()> {
        let at = self.expires;
        Box::pin(async move { tokio::time::sleep_until(at).await })
    }
}

/// Every node registered so far, for assertions.
impl Directory {
    /// The registered nodes.
    pub fn registered(&self) -> BTreeSet<NodeName> {
        self.lock().registered.keys().cloned().collect()
    }
}
