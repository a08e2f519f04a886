//! The node's shared state: persisted membership, readiness, the published formation view, and
//! the handlers behind every peer request. `NodeMembership` exposes it to discovery-core's engine.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::StreamExt;
use futures::future::join_all;
use muster::status::FormationStatus;
use muster::{
    ClusterId, Commitment, Discovery, FormationView, Host, Membership, MembershipError, NodeName, PeerInfo,
    Phase, PublishedView, RegistrationStatus, RestartState,
};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::client::{CallError, Credentials, Pool};
use crate::cookie::Cookie;
use crate::metrics::Metrics;
use crate::proto::{ForeignPeer, NodeStatus, Request, Response};
use crate::state::{ClusterState, Persisted, Store};

/// How long one peer call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

struct Inner {
    p: Persisted,
    ready: bool,
    /// A known member answered from another cluster while this node served its own: it stops
    /// serving until the member is out of that cluster, is forgotten, or this node is reset.
    split: Option<Split>,
    view: Option<PublishedView>,
    removed_logged: bool,
}

impl Inner {
    /// Ready and serving: formation finished, a current member, and no known member elsewhere.
    fn serving(&self) -> bool {
        self.ready && self.split.is_none()
    }
}

/// A known member found in another cluster (see `Inner::split`).
#[derive(Debug, Clone)]
struct Split {
    ours: ClusterId,
    peer: NodeName,
    theirs: ClusterId,
}

impl Split {
    fn message(&self, local: &NodeName) -> String {
        inconsistent_cluster(local, &self.ours, &self.peer, &self.theirs)
    }
}

/// The engine's inconsistent-cluster refusal, word for word, so that an operator reads one
/// message whether a restarting node or a running one found the split.
fn inconsistent_cluster(local: &NodeName, ours: &ClusterId, peer: &NodeName, theirs: &ClusterId) -> String {
    format!(
        "inconsistent cluster: {local} was a member of cluster {ours}, but its peer {peer} is \
         now a member of cluster {theirs}. To keep {theirs}: reset this node (`muster ctl \
         reset`, its data from {ours} is discarded) and it joins {theirs}. To keep {ours}: \
         stop {peer}, reset it, and start it again so that it rejoins {ours}"
    )
}

/// What probes and readiness checks read: a copy of the probe-visible facts, replaced whenever
/// the state lock is released. Probes never wait on the state lock, so a slow `fsync` (taken
/// under that lock) never delays a probe answer; and because the copy is replaced only when the
/// lock is released, after the change was persisted, a probe never sees a state that is not on
/// disk yet (the probe contract on `Membership`).
#[derive(Debug, Clone, Default)]
struct Facts {
    cluster: Option<ClusterId>,
    members: Vec<NodeName>,
    ready: bool,
    /// Why the node does not serve although formation finished (see `Inner::split`).
    split: Option<String>,
    view: Option<PublishedView>,
}

/// The state lock; dropping it publishes the new [`Facts`], and then, with the lock released,
/// the members to the service's watch.
struct Guard<'a> {
    node: &'a Node,
    /// Always `Some` until the guard is dropped.
    inner: Option<std::sync::MutexGuard<'a, Inner>>,
}

impl std::ops::Deref for Guard<'_> {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        match &self.inner {
            Some(g) => g,
            None => unreachable!("the state lock is released only when the guard is dropped"),
        }
    }
}

impl std::ops::DerefMut for Guard<'_> {
    fn deref_mut(&mut self) -> &mut Inner {
        match &mut self.inner {
            Some(g) => g,
            None => unreachable!("the state lock is released only when the guard is dropped"),
        }
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        let facts = Facts {
            cluster: inner.p.state.cluster.clone(),
            members: inner.p.state.alive(),
            ready: inner.serving(),
            split: inner.split.as_ref().map(|s| s.message(&self.node.name)),
            view: inner.view.clone(),
        };
        let changed = {
            let mut published = self.node.facts.write().unwrap_or_else(|e| e.into_inner());
            if published.ready != facts.ready || published.members != facts.members {
                self.node.metrics.membership_changed.set(now_ms() as f64 / 1e3);
            }
            let changed = published.members != facts.members;
            *published = facts;
            changed.then(|| {
                let seq = self
                    .node
                    .membership_seq
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                    + 1;
                (seq, published.members.clone(), inner.p.state.departed())
            })
        };
        // The service's watch is told outside the state lock (a receiver that holds a borrow
        // must never hold up the node); the sequence number keeps a later change from being
        // overwritten by an earlier one told late.
        drop(inner);
        if let Some((seq, members, departed)) = changed {
            self.node.members.set_membership_at(seq, &members, &departed);
        }
    }
}

/// Everything a running node shares between its server, engine and tasks.
pub struct Node {
    name: NodeName,
    creds: Credentials,
    store: Store,
    inner: Mutex<Inner>,
    facts: std::sync::RwLock<Facts>,
    start_ms: u64,
    /// The node's counters.
    pub metrics: Arc<Metrics>,
    formation: OnceLock<watch::Receiver<FormationStatus>>,
    backend: OnceLock<Arc<dyn Discovery>>,
    /// Wakes the formation engine when a peer's notice arrives.
    trigger: OnceLock<muster::Trigger>,
    stop: watch::Sender<bool>,
    probe_timeout: Duration,
    sync_cursor: Mutex<usize>,
    /// The state pusher: `IDLE`, `PUSHING`, or `DIRTY` (pushing, and more changed since).
    push: std::sync::atomic::AtomicU8,
    /// Channels to peers, reused across calls.
    pool: Pool,
    /// Which peers this node heard from lately (reported in probe answers).
    pub contacts: crate::contact::Contacts,
    /// Joins waiting for the next group commit (see `Node::accept_join`).
    joins: std::sync::Mutex<Vec<JoinWaiter>>,
    /// Members that said they stopped gracefully and have not run since (see
    /// `Node::record_shutdown`).
    stopped_peers: std::sync::Mutex<std::collections::BTreeSet<NodeName>>,
    /// Peers refusing this node's cookie or certificate: each reason warned once per window,
    /// since every probe and sync would repeat it.
    refused_by_peers: crate::log_limit::LogLimit,
    /// Members' status, metadata and since when, as the service watches them.
    pub members: crate::members::MemberTable,
    /// The service's handler of application requests.
    pub apps: crate::apps::Apps,
    /// Set when the node stopped (see `Node::close`).
    closed: std::sync::atomic::AtomicBool,
    /// Numbers the member lists told to the service's watch, in the order they were persisted.
    membership_seq: std::sync::atomic::AtomicU64,
    /// The service's bootstrap hook (see `ClusterBuilder::on_form`).
    pub on_form: OnceLock<crate::cluster::FormHook>,
    /// Set when the node stopped serving on its own (see `Node::fail`).
    fatal: watch::Sender<Option<String>>,
    /// Live inbound connections by the name they authenticated as (see `Node::bind_name`).
    inbound: std::sync::Mutex<HashMap<NodeName, Inbound>>,
    /// What an operator's reset or join-cluster made of the node after formation ended: the
    /// detail and outcome that supersede the engine's (which no longer runs).
    operator_status: std::sync::Mutex<Option<(String, Option<muster::FormationOutcome>)>>,
}

/// The inbound connections under one name: the address they came from, and each connection
/// (`None` while it is being set up, which counts as live).
struct Inbound {
    ip: IpAddr,
    conns: Vec<(u64, Option<std::sync::Weak<crate::proto::conn::Conn>>)>,
}

impl Inbound {
    /// Whether a connection holds the name now.
    fn held(&self) -> bool {
        self.conns.iter().any(|(_, c)| match c {
            None => true,
            Some(c) => c.upgrade().is_some_and(|c| !c.is_closed()),
        })
    }
}

/// An inbound connection's hold on its name; dropping it (the connection ended) releases it.
pub struct NameBinding {
    node: std::sync::Weak<Node>,
    peer: NodeName,
    id: u64,
}

impl Drop for NameBinding {
    fn drop(&mut self) {
        let Some(node) = self.node.upgrade() else {
            return;
        };
        let mut inbound = node.inbound.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = inbound.get_mut(&self.peer) {
            entry.conns.retain(|(id, _)| *id != self.id);
            if entry.conns.is_empty() {
                inbound.remove(&self.peer);
            }
        }
    }
}

/// How long a connection holding a name has to answer before a claim from another address
/// replaces it (the other node may have moved, leaving a dead connection behind).
const NAME_HOLDER_PING: Duration = Duration::from_secs(1);

/// Why this node could not leave its cluster.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaveError {
    /// It is not a current member of a cluster.
    #[error("not a member of a cluster")]
    NotMember,
    /// Its blank state could not be persisted.
    #[error("{0}")]
    State(String),
}

/// A joiner waiting for the group commit that adds it, and where its answer goes.
struct JoinWaiter {
    node: NodeName,
    /// The cluster it asked to join (`None`: a joiner of an earlier version).
    cluster: Option<ClusterId>,
    answer: tokio::sync::oneshot::Sender<Result<ClusterState, JoinError>>,
}

/// Why a member refused a join.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The member is blank, still forming or restarting, or not serving its cluster.
    #[error("{member} is not a ready cluster member; try another member")]
    NotReady {
        /// The member asked.
        member: NodeName,
    },
    /// The member is in another cluster than the one the joiner asked for.
    #[error(transparent)]
    OtherCluster(Box<OtherCluster>),
    /// The cluster removed the joiner at this incarnation or later.
    #[error(transparent)]
    Removed(crate::state::Removed),
    /// The new membership could not be persisted.
    #[error("{0}")]
    State(String),
    /// The member dropped the join before answering it (it is stopping).
    #[error("the join of {joiner} was dropped; try again")]
    Dropped {
        /// The joining node.
        joiner: NodeName,
    },
}

/// A join refused because the member is in another cluster than the joiner asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{member} is a member of cluster {ours}, not of cluster {wanted} that {joiner} asked to join; \
     {joiner} was not added"
)]
pub struct OtherCluster {
    /// The joining node.
    pub joiner: NodeName,
    /// The member asked.
    pub member: NodeName,
    /// The member's cluster.
    pub ours: ClusterId,
    /// The cluster the joiner asked for.
    pub wanted: ClusterId,
}

/// The joiners of one group commit, each with its result.
type Answers = Vec<(JoinWaiter, Result<(), JoinError>)>;

/// How long a state push waits for more changes to send with it.
const PUSH_DELAY: Duration = Duration::from_millis(5);
/// Members one push round sends to at once: each exchange holds the state encoded and decoded
/// (a hundred members' state is several KiB each way), and what a push waits for is the members'
/// writes, which more at once do not speed up on a shared disk.
const PUSH_FANOUT: usize = 8;
/// The pause between push rounds per member pushed to: a round costs every member a merge and
/// a write, so a crowd of joins into a big cluster goes out in a few rounds, not one per join.
const PUSH_GAP_PER_MEMBER: Duration = Duration::from_micros(100);
/// The longest a push waits for the changes to pause.
const PUSH_HOLD_MAX: Duration = Duration::from_millis(250);

/// How long changes must pause before a push to `members` others goes out, and the pause between
/// push rounds (see `PUSH_GAP_PER_MEMBER`).
fn push_gap(members: usize) -> Duration {
    PUSH_GAP_PER_MEMBER
        .saturating_mul(u32::try_from(members).unwrap_or(u32::MAX))
        .max(PUSH_DELAY)
}

/// The pusher's states (see `Node::broadcast`).
const IDLE: u8 = 0;
const PUSHING: u8 = 1;
const DIRTY: u8 = 2;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs blocking work (an fsync, waiting for a lock held across one) in `block_in_place` on the
/// multi-threaded runtime, so the worker's other tasks move elsewhere meanwhile; directly
/// elsewhere (current-thread runtimes in unit tests, plain threads).
fn on_blocking_thread<R>(f: impl FnOnce() -> R) -> R {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

fn state_err(e: std::io::Error) -> MembershipError {
    MembershipError::State(e.to_string())
}

impl Node {
    /// Opens the node's store and loads its persisted state.
    pub fn open(
        name: NodeName,
        cluster_name: String,
        cookie: Cookie,
        tls: Option<crate::tls::PeerTls>,
        store: Store,
        probe_timeout: Duration,
    ) -> std::io::Result<Arc<Node>> {
        let mut p = store.load()?;
        if p.disk == 0 {
            p.disk = crate::random::nonzero_u64()?;
        }
        let (stop, _) = watch::channel(false);
        let members = crate::members::MemberTable::new(name.clone());
        members.set_membership(&p.state.alive());
        let node = Arc::new(Node {
            members,
            apps: crate::apps::Apps::default(),
            closed: std::sync::atomic::AtomicBool::new(false),
            // The list told at open (above) is number 1.
            membership_seq: std::sync::atomic::AtomicU64::new(1),
            on_form: OnceLock::new(),
            fatal: watch::channel(None).0,
            creds: Credentials {
                cookie,
                cluster_name,
                node: Some(name.clone()),
                tls,
            },
            name,
            store,
            facts: std::sync::RwLock::new(Facts {
                cluster: p.state.cluster.clone(),
                members: p.state.alive(),
                ..Facts::default()
            }),
            inner: Mutex::new(Inner {
                p,
                ready: false,
                split: None,
                view: None,
                removed_logged: false,
            }),
            start_ms: now_ms(),
            metrics: Arc::default(),
            formation: OnceLock::new(),
            backend: OnceLock::new(),
            trigger: OnceLock::new(),
            stop,
            probe_timeout,
            sync_cursor: Mutex::new(0),
            push: std::sync::atomic::AtomicU8::new(IDLE),
            pool: Pool::default(),
            contacts: crate::contact::Contacts::default(),
            refused_by_peers: crate::log_limit::LogLimit::new(),
            inbound: std::sync::Mutex::default(),
            operator_status: std::sync::Mutex::default(),
            joins: std::sync::Mutex::default(),
            stopped_peers: std::sync::Mutex::default(),
        });
        // Requests peers send on connections this node opened are answered like any others.
        node.pool
            .serve_with(crate::server::handler(Arc::downgrade(&node)));
        Ok(node)
    }

    fn lock(&self) -> Guard<'_> {
        // A panic while holding the lock cannot leave a half-applied change (every change is
        // applied to a copy or in one step), so a poisoned lock is still usable.
        let inner = match self.inner.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            // Held, possibly across a slow fsync: wait without taking a runtime worker with us,
            // so that the worker's queued tasks (probe answers) move to another worker.
            Err(std::sync::TryLockError::WouldBlock) => {
                on_blocking_thread(|| self.inner.lock().unwrap_or_else(|e| e.into_inner()))
            }
        };
        Guard {
            node: self,
            inner: Some(inner),
        }
    }

    fn facts(&self) -> std::sync::RwLockReadGuard<'_, Facts> {
        self.facts.read().unwrap_or_else(|e| e.into_inner())
    }

    /// This node's name.
    pub fn name(&self) -> &NodeName {
        &self.name
    }

    /// Calls to `peer` reuse `conn`, which `peer` opened to this node.
    pub async fn adopt_connection(&self, peer: &NodeName, from: IpAddr, conn: Arc<crate::proto::conn::Conn>) {
        // Without TLS a name is bound to nothing but the cookie: calls to `peer` go over a
        // connection it opened only when that came from an address its name resolves to.
        if self
            .addresses_of(peer)
            .await
            .is_some_and(|ips| ips.contains(&from))
        {
            self.pool.adopt(peer, conn);
        }
    }

    /// The addresses `peer`'s host stands for (`None` when they cannot be had now).
    async fn addresses_of(&self, peer: &NodeName) -> Option<Vec<IpAddr>> {
        match peer.host() {
            Host::V4(ip) => Some(vec![IpAddr::V4(*ip)]),
            Host::V6(ip) => Some(vec![IpAddr::V6(*ip)]),
            Host::Dns(host) => match self.resolve(peer).await {
                Ok(Some(addrs)) => Some(addrs.iter().map(SocketAddr::ip).collect()),
                Ok(None) => {
                    let port = crate::config::peer_port(peer);
                    let lookup = tokio::net::lookup_host((host.as_str(), port));
                    match tokio::time::timeout(NAME_HOLDER_PING, lookup).await {
                        Ok(Ok(addrs)) => Some(addrs.map(|a| a.ip()).collect()),
                        _ => None,
                    }
                }
                Err(_) => None,
            },
        }
    }

    /// Binds `peer`'s name to the address `from` for as long as the returned binding lives: a
    /// connection authenticated as a name already held by a live connection from another
    /// address is refused (`Err` with that address), unless `from` is an address the name
    /// resolves to and the holder's is not, or the holder does not answer a ping within a
    /// second (a restarted node's new address): then the holder is closed and the name moves.
    pub async fn bind_name(self: &Arc<Self>, peer: &NodeName, from: IpAddr) -> Result<NameBinding, IpAddr> {
        let held_elsewhere = {
            let inbound = self.inbound.lock().unwrap_or_else(|e| e.into_inner());
            inbound
                .get(peer)
                .filter(|entry| entry.ip != from && entry.held())
                .map(|entry| {
                    let conns: Vec<_> = entry
                        .conns
                        .iter()
                        .filter_map(|(_, c)| c.as_ref()?.upgrade())
                        .collect();
                    (entry.ip, conns)
                })
        };
        if let Some((holder_ip, holders)) = held_elsewhere {
            let resolves = self.addresses_of(peer).await.unwrap_or_default();
            let rightful = resolves.contains(&from) && !resolves.contains(&holder_ip);
            for holder in &holders {
                if !rightful {
                    let ping = tokio::time::timeout(NAME_HOLDER_PING, holder.call(&Request::Ping)).await;
                    if matches!(ping, Ok(Ok(Response::Pong { .. }))) {
                        return Err(holder_ip);
                    }
                }
                holder.close();
            }
            if !rightful && holders.is_empty() {
                // Held by a connection still being set up: it keeps the name.
                return Err(holder_ip);
            }
        }
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut inbound = self.inbound.lock().unwrap_or_else(|e| e.into_inner());
        let entry = inbound.entry(peer.clone()).or_insert_with(|| Inbound {
            ip: from,
            conns: Vec::new(),
        });
        if entry.ip != from {
            // The holders were closed above, unless a racing claim got here first: it keeps it.
            if entry.held() {
                return Err(entry.ip);
            }
            entry.ip = from;
            entry.conns.clear();
        }
        entry.conns.push((id, None));
        Ok(NameBinding {
            node: Arc::downgrade(self),
            peer: peer.clone(),
            id,
        })
    }

    /// Records the connection a binding stands for, so that a later claim can ping it.
    pub fn bound(&self, binding: &NameBinding, conn: &Arc<crate::proto::conn::Conn>) {
        let mut inbound = self.inbound.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = inbound.get_mut(&binding.peer)
            && let Some(slot) = entry.conns.iter_mut().find(|(id, _)| *id == binding.id)
        {
            slot.1 = Some(Arc::downgrade(conn));
        }
    }

    /// The credentials for calls to peers.
    pub fn credentials(&self) -> &Credentials {
        &self.creds
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Connects the engine's status channel and the backend (once).
    pub fn set_formation(&self, rx: watch::Receiver<FormationStatus>, backend: Arc<dyn Discovery>) {
        let _ = self.formation.set(rx);
        let _ = self.backend.set(backend);
    }

    /// Connects peers' notices to the formation engine.
    pub fn set_trigger(&self, trigger: muster::Trigger) {
        let _ = self.trigger.set(trigger);
    }

    /// A peer's notice arrived: the engine decides again now (fires coalesce).
    pub fn noticed(&self) {
        self.metrics.notices_received.inc();
        if let Some(t) = self.trigger.get() {
            t.fire();
        }
    }

    /// The backend's registration state, for backends that keep one.
    pub fn registration(&self) -> Option<RegistrationStatus> {
        self.backend
            .get()
            .and_then(|b| b.registration())
            .map(|r| r.status())
    }

    /// The engine's status.
    pub fn formation(&self) -> FormationStatus {
        let mut status = self
            .formation
            .get()
            .map(|rx| rx.borrow().clone())
            .unwrap_or_default();
        let after = self
            .operator_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let (Some((detail, outcome)), Phase::Formed) = (after, status.phase) {
            status.detail = detail;
            status.outcome = outcome;
        }
        status
    }

    /// Clears a force-boot marker once the node is in a cluster by forming or joining: it was
    /// meant for a restart, and left behind it would skip the wait at some later restart.
    fn clear_force_boot(&self) {
        if self.store.force_boot()
            && let Err(e) = self.store.set_force_boot(false)
        {
            warn!(node = %self.name, "could not clear the force-boot marker: {e}");
        }
    }

    /// Records what an operator's reset or join-cluster made of this node, for status and
    /// readiness to say instead of the engine's last words.
    pub fn set_operator_status(&self, detail: String, outcome: Option<muster::FormationOutcome>) {
        *self.operator_status.lock().unwrap_or_else(|e| e.into_inner()) = Some((detail, outcome));
    }

    /// A receiver that turns true when the node should stop.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Asks the node to stop.
    pub fn request_stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Ready: formation finished, the node is a current member of its cluster, and no known
    /// member answered from another cluster.
    pub fn is_ready(&self) -> bool {
        self.facts().ready
    }

    /// What the node is doing: the inconsistent-cluster refusal while a known member is in
    /// another cluster, else the formation detail.
    pub fn detail(&self) -> String {
        let split = self.facts().split.clone();
        split.unwrap_or_else(|| self.formation().detail)
    }

    /// `peer` said it is stopping gracefully: counted as stopped until it runs again.
    pub fn peer_stopped(&self, peer: &NodeName) {
        if self.facts().members.contains(peer) {
            self.stopped().insert(peer.clone());
            self.members.set_stopped(peer);
        }
    }

    /// `peer` runs (it pushed its state or joined): no longer counted as stopped.
    pub fn peer_running(&self, peer: &NodeName) {
        self.stopped().remove(peer);
        self.members.set_running(peer);
    }

    fn stopped(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<NodeName>> {
        self.stopped_peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A state push of `state`, with the members' metadata this node knows.
    pub fn sync_request(&self, state: ClusterState) -> Request {
        Request::Sync {
            state,
            meta: self.members.gossip(),
        }
    }

    /// An answer carrying `state`, with the members' metadata this node knows.
    pub fn state_response(&self, state: ClusterState) -> Response {
        Response::State {
            state,
            meta: self.members.gossip(),
        }
    }

    /// Persists cluster `id` formed with this node as its only member and founder, and serves
    /// it: the end of `Membership::form`, and of a formation interrupted by a crash.
    pub fn finish_forming(&self, id: &ClusterId) -> Result<(), MembershipError> {
        let mut g = self.lock();
        if let Some(c) = &g.p.state.cluster {
            return Err(MembershipError::Invalid(format!(
                "already a member of cluster {c}"
            )));
        }
        // Persist first, then apply: a failed save leaves the node as it was.
        let mut next = g.p.clone();
        next.incarnation = now_ms();
        next.state = ClusterState::formed(id.clone(), &self.name, next.incarnation);
        next.commitment = None;
        next.forming = None;
        self.save(&next)?;
        g.p = next;
        g.ready = true;
        drop(g);
        self.clear_force_boot();
        Ok(())
    }

    /// A formation this node began and did not finish (see `Persisted::forming`).
    pub fn unfinished_formation(&self) -> Option<ClusterId> {
        let g = self.lock();
        g.p.forming.clone().filter(|_| g.p.state.cluster.is_none())
    }

    /// Ends this node's connections (see `Cluster::shutdown`); a request arriving later is
    /// answered "shutting down" and its connection closed.
    pub fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.pool.close_all();
        let inbound = std::mem::take(&mut *self.inbound.lock().unwrap_or_else(|e| e.into_inner()));
        for entry in inbound.into_values() {
            for (_, conn) in entry.conns {
                if let Some(c) = conn.and_then(|c| c.upgrade()) {
                    c.close();
                }
            }
        }
    }

    /// Stops serving after a failure that formation must not go on from (see
    /// `Membership::form`): every connection closes and later requests are refused, as if the
    /// process had died; [`Node::failure`] says why.
    pub fn fail(&self, why: String) {
        tracing::error!(node = %self.name, "{why}");
        self.fatal.send_replace(Some(why));
        self.close();
    }

    /// A formation of `id` that went wrong once it was recorded: the service's state may already
    /// belong to `id`, so this node must neither form another cluster nor answer as a blank node
    /// (its committed peers would release and could form another). It stops serving, as a crash
    /// would, and its next start completes `id`.
    fn fail_forming(&self, id: &ClusterId, why: &str) -> MembershipError {
        let why = format!(
            "forming cluster {id} failed: {why}; this node stops serving, and its next start \
             completes cluster {id}"
        );
        self.fail(why.clone());
        MembershipError::State(why)
    }

    /// Why the node stopped serving on its own (see [`Node::fail`]).
    pub fn failure(&self) -> watch::Receiver<Option<String>> {
        self.fatal.subscribe()
    }

    /// Whether [`Node::close`] ran.
    pub fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The current members as probes see them (no wait for the state lock).
    pub fn members_now(&self) -> Vec<NodeName> {
        self.facts().members.clone()
    }

    /// The current membership state.
    pub fn state(&self) -> ClusterState {
        self.lock().p.state.clone()
    }

    /// Persists `p`. The fsync blocks this thread, so on the multi-threaded runtime it runs in
    /// `block_in_place`: the worker's other tasks move to another worker meanwhile.
    fn save(&self, p: &Persisted) -> Result<(), MembershipError> {
        on_blocking_thread(|| self.store.save(p)).map_err(state_err)
    }

    /// Resolves a peer's address with the backend's resolver when it has its own settings
    /// (`Ok(None)`: the system resolver applies).
    async fn resolve(&self, peer: &NodeName) -> Result<Option<Vec<SocketAddr>>, CallError> {
        let (Host::Dns(host), Some(backend)) = (peer.host(), self.backend.get()) else {
            return Ok(None);
        };
        let port = crate::config::peer_port(peer);
        match backend.resolve_host(host).await {
            None => Ok(None),
            Some(Ok(ips)) => Ok(Some(
                ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect(),
            )),
            Some(Err(e)) => Err(CallError::Connect {
                node: peer.clone(),
                addr: crate::config::peer_address(peer),
                reason: format!("cannot resolve {host}: {e}"),
            }),
        }
    }

    /// Calls a peer, counting messages.
    pub async fn call(&self, peer: &NodeName, req: &Request) -> Result<Response, CallError> {
        self.call_within(peer, req, CALL_TIMEOUT).await
    }

    /// Like [`Node::call`], waiting at most `timeout` for the answer.
    pub async fn call_within(
        &self,
        peer: &NodeName,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        self.metrics.messages_sent.inc();
        let r = match self.resolve(peer).await {
            Ok(addrs) => self.pool.call(&self.creds, peer, addrs, req, timeout).await,
            Err(e) => Err(e),
        };
        match &r {
            Ok(_) => {
                self.metrics.messages_received.inc();
                self.contacts.saw(peer);
            }
            // A slow answer says nothing about the peer's liveness (the detector decides that);
            // a failed connection does.
            Err(CallError::Timeout { .. }) => {}
            Err(_) => self.contacts.lost(peer),
        }
        r
    }

    /// Facts for a peer's probe (never waits for the state lock).
    pub fn peer_info(&self) -> PeerInfo {
        let f = self.facts();
        PeerInfo {
            node: self.name.clone(),
            cluster: f.cluster.clone(),
            members: f.members.clone(),
            ready: f.ready,
            start_time_ms: self.start_ms,
            view: f.view.as_ref().map(PublishedView::current),
            in_contact: self.contacts.recent(&f.members),
        }
    }

    /// Applies a merged state: persists it and notices if this node was forgotten.
    fn adopt(&self, g: &mut Inner) -> Result<(), MembershipError> {
        if g.p.state.cluster.is_some() && !g.p.state.is_member(&self.name) && g.ready {
            g.ready = false;
            if !g.removed_logged {
                g.removed_logged = true;
                error!(
                    node = %self.name,
                    "this node was removed from cluster {} (forget-cluster-node); run `muster ctl reset` \
                     and join again",
                    g.p.state.cluster.as_ref().map(|c| c.to_string()).unwrap_or_default()
                );
            }
        }
        self.save(&g.p)
    }

    /// Merges a state received from a peer; answers with the merged state.
    pub fn accept_sync(&self, theirs: &ClusterState) -> Response {
        let mut g = self.lock();
        if g.p.state.cluster.is_none() {
            return Response::Error {
                message: format!("{} is not in a cluster", self.name),
            };
        }
        match g.p.state.merge_from_peer(theirs, now_ms()) {
            Ok(changed) => {
                if changed && let Err(e) = self.adopt(&mut g) {
                    return Response::Error {
                        message: e.to_string(),
                    };
                }
                let state = g.p.state.clone();
                drop(g);
                self.state_response(state)
            }
            Err(e) => Response::Error {
                message: e.to_string(),
            },
        }
    }

    /// Adds a joining node to this node's cluster, if this node is a ready member of `cluster`
    /// (`None`: a joiner of an earlier version, which checks the cluster itself); answers the
    /// membership with the joiner in it.
    /// The incarnation is this member's to assign (`ClusterState::next_incarnation`): the
    /// joiner's own clock (`_requested`) may have stepped back. Joins that arrive together are
    /// written together (group commit): each waits in a queue, and whoever takes the state lock
    /// next adds every queued joiner and persists them with one write, so a crowd of joiners
    /// costs a few writes instead of one each. Every join is still answered only once it is on
    /// disk.
    pub async fn accept_join(
        self: &Arc<Self>,
        node: &NodeName,
        _requested: u64,
        cluster: Option<&ClusterId>,
    ) -> Result<ClusterState, JoinError> {
        let (answer, rx) = tokio::sync::oneshot::channel();
        self.joins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(JoinWaiter {
                node: node.clone(),
                cluster: cluster.cloned(),
                answer,
            });
        self.commit_joins();
        rx.await
            .unwrap_or_else(|_| Err(JoinError::Dropped { joiner: node.clone() }))
    }

    /// Adds every queued joiner, persists once, and answers each (see `accept_join`).
    fn commit_joins(self: &Arc<Self>) {
        let Some((answers, state)) = self.add_joiners() else {
            return;
        };
        let cluster = state.cluster.as_ref().map(|c| c.to_string()).unwrap_or_default();
        let mut joined = false;
        for (waiter, result) in answers {
            if result.is_ok() {
                joined = true;
                self.metrics.joins.inc();
                info!(node = %self.name, "{} joined cluster {cluster}", waiter.node);
            }
            let _ = waiter.answer.send(result.map(|()| state.clone()));
        }
        if joined {
            self.clone().broadcast();
        }
    }

    /// Takes the queued joiners and adds those this member admits, with one write. The joiners
    /// go into a copy that replaces the state only once it is on disk, so probes and syncs never
    /// show a joiner a failed save left out. Returns each joiner's result and the state after the
    /// commit; `None` when an earlier committer took the queue.
    fn add_joiners(&self) -> Option<(Answers, ClusterState)> {
        let mut g = self.lock();
        let batch = std::mem::take(&mut *self.joins.lock().unwrap_or_else(|e| e.into_inner()));
        if batch.is_empty() {
            return None;
        }
        let mut next = g.p.clone();
        let results: Vec<Result<bool, JoinError>> =
            batch.iter().map(|w| self.admit(&g, &mut next.state, w)).collect();
        let saved = if results.iter().any(|r| matches!(r, Ok(true))) {
            self.save(&next).map(|()| g.p = next).map_err(|e| e.to_string())
        } else {
            Ok(())
        };
        let answers = batch
            .into_iter()
            .zip(results)
            .map(|(w, r)| match (r, &saved) {
                (Ok(_), Err(e)) => (w, Err(JoinError::State(e.clone()))),
                (r, _) => (w, r.map(drop)),
            })
            .collect();
        Some((answers, g.p.state.clone()))
    }

    /// Adds one joiner to `state` (this member's next state) if this member may admit it into
    /// the cluster it asked for; whether anything changed.
    fn admit(&self, now: &Inner, state: &mut ClusterState, w: &JoinWaiter) -> Result<bool, JoinError> {
        let Some(ours) = state.cluster.clone().filter(|_| now.serving()) else {
            return Err(JoinError::NotReady {
                member: self.name.clone(),
            });
        };
        if let Some(wanted) = w.cluster.as_ref().filter(|c| **c != ours) {
            return Err(JoinError::OtherCluster(Box::new(OtherCluster {
                joiner: w.node.clone(),
                member: self.name.clone(),
                ours,
                wanted: wanted.clone(),
            })));
        }
        let incarnation = state.next_incarnation(&w.node, now_ms());
        state.add(&w.node, incarnation).map_err(JoinError::Removed)
    }

    /// Pushes the current state to every other member in the background. Pushes coalesce: at
    /// most one is in flight, and the changes made meanwhile (a crowd of joins) go out together
    /// in one more push of the latest state, instead of one push per change to every member.
    /// A push waits until changes pause for a gap that grows with the members
    /// (`PUSH_GAP_PER_MEMBER`, at least `PUSH_DELAY`), for at most `PUSH_HOLD_MAX`.
    pub fn broadcast(self: Arc<Self>) {
        use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
        // IDLE → PUSHING starts the pusher; otherwise DIRTY asks it for one more round.
        let before = self
            .push
            .fetch_update(AcqRel, Acquire, |s| Some(if s == IDLE { PUSHING } else { DIRTY }));
        if before != Ok(IDLE) {
            return;
        }
        tokio::spawn(async move {
            let mut wait = push_gap(self.facts().members.len());
            loop {
                // Wait until the changes pause (a crowd of joins arrives in several group
                // commits): one push of the latest state costs every member one write, where a
                // push per commit would cost it one write per commit. Never longer than
                // `PUSH_HOLD_MAX`, so that steady churn still goes out.
                let held = tokio::time::Instant::now();
                loop {
                    self.push.store(PUSHING, Release);
                    tokio::time::sleep(wait).await;
                    if self.push.load(Acquire) != DIRTY || held.elapsed() >= PUSH_HOLD_MAX {
                        break;
                    }
                }
                // Changes from here on are either in this push's state or mark it DIRTY.
                self.push.store(PUSHING, Release);
                let state = self.state();
                let peers: Vec<NodeName> = state.alive().into_iter().filter(|n| *n != self.name).collect();
                let this = &self;
                // One request for every member; a bounded number at once, since every exchange
                // holds the state encoded and the member's answer decoded.
                let req = self.sync_request(state);
                futures::stream::iter(&peers)
                    .for_each_concurrent(PUSH_FANOUT, |p| this.sync_with(p, &req))
                    .await;
                if self.push.compare_exchange(PUSHING, IDLE, AcqRel, Acquire).is_ok() {
                    return;
                }
                wait = push_gap(peers.len());
            }
        });
    }

    /// Warns that a peer refused this node's cookie or certificate, each reason once per window.
    fn warn_refused(&self, e: &CallError) {
        let why = e.to_string();
        if let Some(n) = self.refused_by_peers.admit(&why) {
            warn!(node = %self.name, "{why}{}", crate::log_limit::more(n));
        }
    }

    /// One push-pull exchange with `peer`: `req` is a `Request::Sync` of this node's state.
    async fn sync_with(&self, peer: &NodeName, req: &Request) {
        match self.call(peer, req).await {
            Ok(Response::State { state: theirs, meta }) => {
                self.members.merge(&meta);
                self.merge_answer(peer, &theirs)
            }
            Ok(Response::Error { message }) => {
                warn!(node = %self.name, "sync with {peer} refused: {message}");
                // A member of another cluster refuses this node's state: find out.
                if let Some(info) = self.probe_peer(peer).await {
                    self.found_split(peer, info.cluster.as_ref());
                }
            }
            Ok(_) => {}
            Err(e) if e.is_auth() => self.warn_refused(&e),
            Err(_) => {}
        }
    }

    /// Merges `peer`'s answer to a sync, if it is of this node's cluster.
    fn merge_answer(&self, peer: &NodeName, theirs: &ClusterState) {
        let mut g = self.lock();
        // A node that was reset while the exchange was in flight stays blank: only a node still
        // in that cluster merges the answer.
        if g.p.state.cluster.is_none() || g.p.state.cluster != theirs.cluster {
            drop(g);
            self.found_split(peer, theirs.cluster.as_ref());
            return;
        }
        if let Ok(true) = g.p.state.merge_from_peer(theirs, now_ms())
            && let Err(e) = self.adopt(&mut g)
        {
            warn!(node = %self.name, "could not persist membership: {e}");
        }
    }

    /// `peer`'s probe answer, within the probe timeout.
    async fn probe_peer(&self, peer: &NodeName) -> Option<PeerInfo> {
        match tokio::time::timeout(self.probe_timeout, self.call(peer, &Request::Probe)).await {
            Ok(Ok(Response::Peer { info })) => Some(*info),
            _ => None,
        }
    }

    /// `peer` says it is in `theirs`: if that is another cluster than the one this node serves
    /// and `peer` is a member of it, the node stops serving (the engine refuses such a node at
    /// restart, and a running one must not go on as if its cluster were whole).
    fn found_split(&self, peer: &NodeName, theirs: Option<&ClusterId>) {
        let mut g = self.lock();
        let (Some(ours), Some(theirs)) = (g.p.state.cluster.clone(), theirs) else {
            return;
        };
        if *theirs == ours || !g.serving() || !g.p.state.is_member(peer) {
            return;
        }
        let split = Split {
            ours,
            peer: peer.clone(),
            theirs: theirs.clone(),
        };
        error!(node = %self.name, "{}; this node stops serving until then", split.message(&self.name));
        g.split = Some(split);
    }

    /// While split, checks the member in another cluster again: the node serves again once
    /// that member is out of the other cluster (blank or back in this one) or forgotten.
    async fn recheck_split(&self, peer: &NodeName) {
        let answer = self.probe_peer(peer).await;
        let mut g = self.lock();
        let Some(split) = g.split.clone() else {
            return;
        };
        let ours = split.ours.clone();
        let healed = if !g.p.state.is_member(peer) || g.p.state.cluster.as_ref() != Some(&ours) {
            format!("{peer} is no longer a member of cluster {ours}")
        } else {
            match answer.map(|info| info.cluster) {
                // Unreachable: nothing learned.
                None => return,
                Some(Some(theirs)) if theirs != ours => {
                    g.split = Some(Split { theirs, ..split });
                    return;
                }
                Some(_) => format!("{peer} is no longer in cluster {}", split.theirs),
            }
        };
        info!(node = %self.name, "{healed}; serving cluster {ours} again");
        g.split = None;
    }

    /// Anti-entropy: exchange state with the next member in turn, every `interval`.
    pub async fn anti_entropy(self: Arc<Self>, interval: Duration) {
        self.contacts.set_period(interval);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let split = self.lock().split.as_ref().map(|s| s.peer.clone());
            if let Some(peer) = split {
                self.recheck_split(&peer).await;
                continue;
            }
            if !self.is_ready() {
                continue;
            }
            let state = self.state();
            let peers: Vec<NodeName> = state.alive().into_iter().filter(|n| *n != self.name).collect();
            if peers.is_empty() {
                continue;
            }
            let peer = {
                let mut c = self.sync_cursor.lock().unwrap_or_else(|e| e.into_inner());
                *c = (*c + 1) % peers.len();
                peers.get(*c).cloned()
            };
            if let Some(peer) = peer {
                self.sync_with(&peer, &self.sync_request(state)).await;
            }
        }
    }

    /// Membership, running members and formation summary. With `probe_peers` (the
    /// authenticated `ctl cluster-status`) every member is probed; without (the unauthenticated
    /// HTTP `/status`), nothing is sent to peers and only this node's own facts are reported, so
    /// an HTTP request can never fan out into N−1 peer calls.
    pub async fn status(&self, probe_peers: bool) -> NodeStatus {
        let (state, ready) = {
            let g = self.lock();
            (g.p.state.clone(), g.serving())
        };
        let members = state.alive();
        let mut running = Vec::new();
        let mut foreign = Vec::new();
        let mut in_sync = ready;
        if ready {
            running.push(self.name.clone());
        }
        let answers = if probe_peers {
            self.probe_members(&state).await
        } else {
            // No calls (the HTTP /status): members heard from within the anti-entropy window
            // count as running, and the node is in sync when it heard from all of them (each
            // exchange is a state sync).
            let others: Vec<NodeName> = members.iter().filter(|m| **m != self.name).cloned().collect();
            let heard = self.contacts.recent(&others);
            in_sync = in_sync && heard.len() == others.len();
            if ready {
                running.extend(heard);
            }
            Vec::new()
        };
        for info in answers {
            if info.cluster != state.cluster {
                // In another cluster (or blank): shown as such, never as a running member.
                foreign.push(ForeignPeer {
                    node: info.node.clone(),
                    cluster: info.cluster.clone(),
                });
                in_sync = false;
                continue;
            }
            if info.ready {
                running.push(info.node.clone());
            }
            if info.members != members {
                in_sync = false;
            }
        }
        if let (Some(ours), false) = (&state.cluster, foreign.is_empty()) {
            warn!(node = %self.name, "members answer from outside cluster {ours}: {}", outsiders(&foreign));
        }
        running.sort();
        if probe_peers {
            let reachable = running.iter().filter(|n| **n != self.name).count();
            self.metrics.reachable_peers.set(reachable as f64);
        }
        let f = self.formation();
        NodeStatus {
            node: self.name.clone(),
            cluster: state.cluster.clone(),
            members,
            running,
            foreign,
            probed: probe_peers,
            ready,
            in_sync,
            formation: f.phase.as_str().to_string(),
            detail: self.facts().split.clone().unwrap_or(f.detail),
            version: state.version,
            registration: self.registration().map(|r| r.detail),
            messages_sent: self.metrics.messages_sent.get(),
            messages_received: self.metrics.messages_received.get(),
            member_info: self.members.watch().borrow().members.clone(),
        }
    }

    /// Probes every other member of `state` at once; returns the answers of those that answered.
    async fn probe_members(&self, state: &ClusterState) -> Vec<PeerInfo> {
        let peers: Vec<NodeName> = state.alive().into_iter().filter(|n| *n != self.name).collect();
        let answers = join_all(peers.iter().map(|p| self.call(p, &Request::Probe))).await;
        answers
            .into_iter()
            .filter_map(|a| match a {
                Ok(Response::Peer { info }) => Some(*info),
                _ => None,
            })
            .collect()
    }

    /// `forget-cluster-node`: removes a member and tells the others.
    pub fn forget_member(self: &Arc<Self>, node: &NodeName) -> Result<(), MembershipError> {
        if *node == self.name {
            return Err(MembershipError::Invalid(
                "a node cannot forget itself; run `reset` on it instead".into(),
            ));
        }
        {
            let mut g = self.lock();
            if g.p.state.cluster.is_none() {
                return Err(MembershipError::Invalid(format!(
                    "{} is not in a cluster",
                    self.name
                )));
            }
            if !g.p.state.remove(node) {
                return Err(MembershipError::Invalid(format!(
                    "{node} is not a member of this cluster"
                )));
            }
            self.save(&g.p)?;
        }
        self.metrics.forgotten.inc();
        info!(node = %self.name, "forgot member {node}");
        self.clone().broadcast();
        Ok(())
    }

    /// `reset`: leave the cluster (telling the members) and become a blank, idle node.
    pub async fn reset(&self) -> Result<(), MembershipError> {
        self.depart().await?;
        self.set_operator_status(
            "reset: left the cluster; blank, waiting for muster ctl join-cluster PEER".into(),
            None,
        );
        info!(node = %self.name, "reset: left the cluster; this node is blank and waits for join-cluster");
        Ok(())
    }

    /// Leaves this node's cluster for good (see `Cluster::leave`): the members learn it from
    /// the node itself, so they report it left rather than forgotten.
    pub async fn leave(&self) -> Result<(), LeaveError> {
        let member = {
            let f = self.facts();
            f.cluster.is_some() && f.members.contains(&self.name)
        };
        if !member {
            return Err(LeaveError::NotMember);
        }
        self.depart()
            .await
            .map_err(|e| LeaveError::State(e.to_string()))?;
        info!(node = %self.name, "left the cluster; this node is blank");
        Ok(())
    }

    /// Removes this node from its cluster, pushes that to the members, and blanks its state.
    async fn depart(&self) -> Result<(), MembershipError> {
        if let Some(c) = self.lock().p.forming.clone() {
            return Err(MembershipError::Invalid(format!(
                "this node is forming cluster {c} (the service's on_form hook runs for it); it \
                 cannot leave a cluster it has not finished forming"
            )));
        }
        // The removal goes to the members first; this node's own state changes only once its
        // blank state is on disk, so a probe never sees a state that is not persisted.
        let state = {
            let mut state = self.state();
            state.leave(&self.name);
            state
        };
        let peers: Vec<NodeName> = state.alive();
        let req = self.sync_request(state);
        join_all(peers.iter().map(|p| self.call(p, &req))).await;
        let disk = crate::random::nonzero_u64().map_err(state_err)?;
        let blank = Persisted {
            disk,
            ..Persisted::default()
        };
        let mut g = self.lock();
        self.save(&blank)?;
        g.p = blank;
        g.ready = false;
        g.split = None;
        g.removed_logged = false;
        self.stopped().clear();
        drop(g);
        self.store.set_force_boot(false).map_err(state_err)?;
        Ok(())
    }

    /// Records, at graceful shutdown, which members are still running and whether this node is
    /// the last to stop, then tells the other members it stops. It is the last only when every
    /// other member said it stopped and none answers as running: a member that does not answer
    /// may run behind a partition, and two sides that each booted first would be two clusters.
    pub async fn record_shutdown(&self) {
        if !self.is_ready() {
            // Blank, still waiting in its restart window, or removed: it is not running, so it
            // is not "the last to stop" (what it recorded before stands), and nobody is probed.
            info!(node = %self.name, "stopping while not running in a cluster; last-to-stop left as recorded");
            return;
        }
        let state = self.state();
        let running: Vec<NodeName> = self
            .probe_members(&state)
            .await
            .into_iter()
            .filter(|info| info.ready)
            .map(|info| info.node)
            .collect();
        let unknown = self.not_known_stopped(&state, &running);
        {
            let mut g = self.lock();
            if g.p.state.cluster.is_none() {
                return;
            }
            g.p.last_to_stop = running.is_empty() && unknown.is_empty();
            g.p.running_at_shutdown = running;
            g.ready = false;
            if let Err(e) = self.save(&g.p) {
                warn!(node = %self.name, "could not record shutdown state: {e}");
            }
            let last = match (g.p.running_at_shutdown.as_slice(), unknown.as_slice()) {
                ([], []) => "yes".to_string(),
                ([], unknown) => format!("no: nothing says {} stopped", names(unknown)),
                (running, _) => format!("no: {} still running", names(running)),
            };
            info!(node = %self.name, "stopping; last member to stop: {last}");
        }
        self.tell_stopping(&state).await;
    }

    /// The other members of `state` that are neither `running` nor said they stopped.
    fn not_known_stopped(&self, state: &ClusterState, running: &[NodeName]) -> Vec<NodeName> {
        let stopped = self.stopped();
        state
            .alive()
            .into_iter()
            .filter(|m| *m != self.name && !running.contains(m) && !stopped.contains(m))
            .collect()
    }

    /// Tells every other member of `state` that this node stops (each within the probe timeout;
    /// one that misses it only cannot count this node as stopped).
    async fn tell_stopping(&self, state: &ClusterState) {
        let peers: Vec<NodeName> = state.alive().into_iter().filter(|n| *n != self.name).collect();
        join_all(
            peers
                .iter()
                .map(|p| tokio::time::timeout(self.probe_timeout, self.call(p, &Request::Stopping))),
        )
        .await;
    }
}

fn names(nodes: &[NodeName]) -> String {
    nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")
}

/// Why a node that began forming `c` does nothing else until it has formed it.
fn forming_refusal(c: &ClusterId) -> MembershipError {
    MembershipError::Invalid(format!(
        "this node began forming cluster {c} (the service's on_form hook ran for it); it forms \
         that cluster and nothing else"
    ))
}

/// Runs the service's `on_form` hook for cluster `id`.
pub(crate) async fn run_form_hook(
    hook: &crate::cluster::FormHook,
    id: &ClusterId,
) -> Result<(), MembershipError> {
    hook(id.clone())
        .await
        .map_err(|e| MembershipError::State(format!("the on_form hook failed for cluster {id}: {e}")))
}

/// `Membership` for the formation engine.
#[derive(Clone)]
pub struct NodeMembership(pub Arc<Node>);

fn to_membership(peer: &NodeName, e: CallError) -> MembershipError {
    match e {
        e if e.is_auth() => MembershipError::Refused(peer.clone(), e.to_string()),
        other => MembershipError::Unreachable(peer.clone(), other.to_string()),
    }
}

#[async_trait]
impl Membership for NodeMembership {
    fn local_node(&self) -> NodeName {
        self.0.name.clone()
    }

    async fn probe(&self, peer: &NodeName) -> Result<PeerInfo, MembershipError> {
        let r = tokio::time::timeout(self.0.probe_timeout, self.0.call(peer, &Request::Probe)).await;
        match r {
            Ok(Ok(Response::Peer { info })) => Ok(*info),
            Ok(Ok(other)) => Err(MembershipError::Refused(
                peer.clone(),
                format!("unexpected answer {other:?}"),
            )),
            Ok(Err(e)) => {
                if e.is_auth() {
                    self.0.warn_refused(&e);
                }
                Err(to_membership(peer, e))
            }
            Err(_) => Err(MembershipError::Unreachable(
                peer.clone(),
                "probe timed out".into(),
            )),
        }
    }

    async fn form(&self, id: &ClusterId) -> Result<(), MembershipError> {
        let n = &self.0;
        if n.is_closed() {
            return Err(MembershipError::State(format!("{} has stopped", n.name)));
        }
        let hook = n.on_form.get().cloned();
        {
            let mut g = n.lock();
            if let Some(c) = &g.p.state.cluster {
                return Err(MembershipError::Invalid(format!(
                    "already a member of cluster {c}"
                )));
            }
            match &g.p.forming {
                Some(begun) if begun != id => {
                    return Err(MembershipError::Invalid(format!(
                        "this node began forming cluster {begun} (its on_form hook ran for it); \
                         it completes only that one, at its next start"
                    )));
                }
                Some(_) => {}
                // Recorded before the hook runs: from then on the service's own state belongs
                // to `id`, and a crash leaves this formation to complete at the next start.
                None if hook.is_some() => {
                    let mut next = g.p.clone();
                    next.forming = Some(id.clone());
                    if let Err(e) = n.save(&next) {
                        // The record may have reached the disk all the same: as after a crash,
                        // the next start completes `id` if it did, and starts blank if not.
                        drop(g);
                        return Err(n.fail_forming(id, &e.to_string()));
                    }
                    g.p = next;
                }
                None => {}
            }
        }
        let Some(hook) = hook else {
            return n.finish_forming(id);
        };
        if let Err(e) = run_form_hook(&hook, id).await {
            return Err(n.fail_forming(id, &e.to_string()));
        }
        n.finish_forming(id)
            .map_err(|e| n.fail_forming(id, &e.to_string()))
    }

    async fn join(&self, member: &NodeName, cluster: &ClusterId) -> Result<(), MembershipError> {
        let n = &self.0;
        let incarnation = {
            let g = n.lock();
            if let Some(c) = &g.p.state.cluster {
                return Err(MembershipError::Invalid(format!(
                    "already a member of cluster {c}; run reset first"
                )));
            }
            if let Some(c) = &g.p.forming {
                return Err(forming_refusal(c));
            }
            now_ms()
        };
        let req = Request::Join {
            node: n.name.clone(),
            incarnation,
            cluster: Some(cluster.clone()),
        };
        let state = match n.call(member, &req).await.map_err(|e| to_membership(member, e))? {
            Response::State { state, meta } => {
                n.members.merge(&meta);
                state
            }
            Response::Error { message } => return Err(MembershipError::Refused(member.clone(), message)),
            other => {
                return Err(MembershipError::Refused(
                    member.clone(),
                    format!("unexpected answer {other:?}"),
                ));
            }
        };
        match &state.cluster {
            Some(id) if id == cluster => {}
            Some(other) => {
                return Err(MembershipError::Refused(
                    member.clone(),
                    format!("it is now in cluster {other}, not {cluster}; deciding again"),
                ));
            }
            None => {
                return Err(MembershipError::Refused(
                    member.clone(),
                    "answered without a cluster".into(),
                ));
            }
        }
        {
            let mut g = n.lock();
            let mut next = g.p.clone();
            // The accepting member assigned this node's incarnation.
            next.incarnation = state.members.get(&n.name).map_or(incarnation, |m| m.incarnation);
            next.state = state;
            next.commitment = None;
            n.save(&next)?;
            g.p = next;
            g.ready = true;
        }
        n.metrics.joins.inc();
        n.clear_force_boot();
        // No push from here: the member that accepted the join pushes the new membership to
        // every member (coalesced), and anti-entropy repairs a lost push.
        Ok(())
    }

    async fn members(&self) -> Vec<NodeName> {
        self.0.state().alive()
    }

    async fn forget(&self, node: &NodeName) -> Result<(), MembershipError> {
        self.0.forget_member(node)
    }

    fn restart_state(&self) -> RestartState {
        let n = &self.0;
        let g = n.lock();
        RestartState {
            cluster: g.p.state.cluster.clone(),
            known_peers: g.p.state.alive().into_iter().filter(|p| *p != n.name).collect(),
            last_to_stop: g.p.last_to_stop,
            force_boot: n.store.force_boot(),
            commitment: g.p.commitment.clone(),
        }
    }

    async fn resume(&self, via: Option<&NodeName>) -> Result<(), MembershipError> {
        let n = &self.0;
        if let Some(peer) = via {
            let state = n.state();
            if let Ok(Response::State { state: theirs, meta }) = n.call(peer, &n.sync_request(state)).await {
                n.members.merge(&meta);
                let mut g = n.lock();
                if g.p
                    .state
                    .merge_from_peer(&theirs, now_ms())
                    .map_err(|e| MembershipError::Refused(peer.clone(), e.to_string()))?
                {
                    n.save(&g.p)?;
                }
            }
        }
        {
            let mut g = n.lock();
            if !g.p.state.is_member(&n.name) {
                return Err(MembershipError::Invalid(format!(
                    "{} was removed from cluster {} while it was down; run `muster ctl reset` and join again",
                    n.name,
                    g.p.state
                        .cluster
                        .as_ref()
                        .map(|c| c.to_string())
                        .unwrap_or_default()
                )));
            }
            g.p.last_to_stop = false;
            g.p.running_at_shutdown.clear();
            n.save(&g.p)?;
            g.ready = true;
        }
        n.store.set_force_boot(false).map_err(state_err)?;
        n.clone().broadcast();
        Ok(())
    }

    fn publish_view(&self, view: Option<FormationView>) {
        self.0.lock().view = view.map(PublishedView::new);
    }

    /// Sends a notice to each peer in the background, each bounded by the probe timeout; a lost
    /// notice only costs the peer an interval.
    fn notify(&self, peers: &[NodeName]) {
        let n = self.0.clone();
        let peers = peers.to_vec();
        tokio::spawn(async move {
            let n = &n;
            join_all(peers.iter().map(|p| async move {
                n.metrics.notices_sent.inc();
                let _ = tokio::time::timeout(n.probe_timeout, n.call(p, &Request::Notice)).await;
            }))
            .await;
        });
    }

    fn disk_id(&self) -> u64 {
        self.0.lock().p.disk
    }

    async fn persist_commitment(&self, commitment: Option<&Commitment>) -> Result<(), MembershipError> {
        let n = &self.0;
        let mut g = n.lock();
        if g.p.state.cluster.is_some() {
            return Err(MembershipError::Invalid(
                "a clustered node makes no commitment".into(),
            ));
        }
        if let Some(c) = &g.p.forming {
            return Err(forming_refusal(c));
        }
        g.p.commitment = commitment.cloned();
        n.save(&g.p)
    }
}

/// Members answering from outside this node's cluster, in words: "b (in cluster c2), c (blank)".
fn outsiders(foreign: &[ForeignPeer]) -> String {
    foreign
        .iter()
        .map(|f| match &f.cluster {
            Some(c) => format!("{} (in cluster {c})", f.node),
            None => format!("{} (blank)", f.node),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests;
