//! The handle a service holds: [`Cluster::builder`] (or [`Cluster::from_config`]) then
//! [`ClusterBuilder::start`] boots a node — its store, listener, backend, formation engine,
//! anti-entropy, liveness and cleanup, in the one order that works — and returns a [`Cluster`]
//! to wait for formation, watch members, exchange requests, leave, and shut down.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use muster::cleanup::Cleanup;
use muster::layers::{Layer, MetricsLayer};
use muster::{FormationConfig, FormationEngine, FormationOutcome, Host, NodeName, Phase};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info};

use crate::config::ResolvedConfig;
use crate::cookie::Cookie;
use crate::members::{Events, Members, Metadata, MetadataError};
use crate::metrics::ListingCounts;
use crate::node::{Node, NodeMembership};
use crate::state::Store;
use crate::tls::PeerTls;

pub use crate::apps::{AppError, AppHandler};

/// Why the service's `on_form` hook failed.
pub type HookError = Box<dyn std::error::Error + Send + Sync>;

/// The service's bootstrap hook (see [`ClusterBuilder::on_form`]).
pub type FormHook = Arc<
    dyn Fn(
            muster::ClusterId,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), HookError>> + Send>>
        + Send
        + Sync,
>;

/// What a node is built from; [`ClusterBuilder::start`] boots it.
#[must_use = "a builder does nothing until start()"]
pub struct ClusterBuilder {
    name: NodeName,
    data_dir: PathBuf,
    cookie: Cookie,
    listen: Option<SocketAddr>,
    cluster_name: String,
    tls: Option<PeerTls>,
    formation: FormationConfig,
    metadata: BTreeMap<String, String>,
    sync_interval: Duration,
    liveness: crate::liveness::LivenessConfig,
    app: Option<AppHandler>,
    on_form: Option<FormHook>,
    #[cfg(feature = "http")]
    http: Option<(SocketAddr, bool)>,
    unchecked_tables: Vec<&'static str>,
}

impl std::fmt::Debug for ClusterBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The cookie is a secret: never printed.
        f.debug_struct("ClusterBuilder")
            .field("name", &self.name)
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .field("cluster_name", &self.cluster_name)
            .field("backend", &self.formation.peer_discovery_backend)
            .finish_non_exhaustive()
    }
}

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The config, the cookie, the data dir or a TLS file is wrong.
    #[error("refusing to start: {0}")]
    Preflight(#[from] crate::preflight::PreflightError),
    /// The formation settings are wrong.
    #[error("refusing to start: {0}")]
    Config(#[from] muster::config::ConfigError),
    /// The backend is unknown, not compiled in, or its table is wrong.
    #[error("refusing to start: {0}")]
    Backend(#[from] muster::BuildError),
    /// The data dir is in use by another node, or its state cannot be read.
    #[error("cannot open data dir {}: {source}", path.display())]
    DataDir {
        /// The data dir.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The peer (or HTTP) address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The cookie's key could not be derived.
    #[error("refusing to start: {0}")]
    Cookie(#[from] crate::cookie::CookieError),
    /// An interrupted formation could not be completed (the `on_form` hook failed, or the state
    /// could not be written); the next start tries again.
    #[error("cannot complete the interrupted formation: {0}")]
    Formation(muster::MembershipError),
    /// The metadata is too large or malformed.
    #[error("refusing to start: {0}")]
    Metadata(#[from] MetadataError),
}

/// How formation ended, as [`Cluster::formed`] reports it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FormedError {
    /// Formation gave up or refused; the node does not serve. The message says why and what to
    /// do (the same line the node logs).
    #[error("{0}")]
    Failed(String),
    /// Formation was still running when the timeout passed.
    #[error("formation did not finish within {0:?}")]
    Timeout(Duration),
    /// The node was shut down first.
    #[error("the node was shut down before formation finished")]
    Stopped,
}

/// Why a shutdown or leave could not do all it should.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StopError {
    /// Leaving needs a formed cluster this node is a member of.
    #[error("{0} is not a member of a cluster; nothing to leave")]
    NotMember(NodeName),
    /// The membership change could not be persisted.
    #[error("cannot leave: {0}")]
    State(String),
}

impl ClusterBuilder {
    /// A node named `name` (`prefix@host:port`; peers reach it at host:port), keeping its state
    /// in `data_dir`, authenticating peers with `cookie`. Everything else has a default: listen on
    /// the name's address, cluster name `default`, the classic backend with an empty list (a
    /// single node), no TLS, no metadata.
    pub fn new(name: NodeName, data_dir: impl Into<PathBuf>, cookie: Cookie) -> Self {
        ClusterBuilder {
            name,
            data_dir: data_dir.into(),
            cookie,
            listen: None,
            cluster_name: "default".into(),
            tls: None,
            formation: FormationConfig::default(),
            metadata: BTreeMap::new(),
            sync_interval: Duration::from_secs(2),
            liveness: crate::liveness::LivenessConfig::default(),
            app: None,
            on_form: None,
            #[cfg(feature = "http")]
            http: None,
            unchecked_tables: Vec::new(),
        }
    }

    /// Where to listen for peers (default: the name's address if it is an IP, else every
    /// address, on the name's port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// Nodes only talk to nodes with the same cluster name (default `default`).
    pub fn cluster_name(mut self, name: impl Into<String>) -> Self {
        self.cluster_name = name.into();
        self
    }

    /// Mutual TLS under the peer channel.
    pub fn tls(mut self, tls: PeerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The formation settings: the backend and its table, retries, restart window, cleanup.
    pub fn formation(mut self, config: FormationConfig) -> Self {
        self.formation = config;
        self
    }

    /// One entry of this node's initial metadata (a client port, a Raft address, a zone).
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// How often membership is exchanged with one other member (default 2 s).
    pub fn sync_interval(mut self, every: Duration) -> Self {
        self.sync_interval = every;
        self
    }

    /// Failure detection settings (see [`crate::liveness::LivenessConfig`]).
    pub fn liveness(mut self, config: crate::liveness::LivenessConfig) -> Self {
        self.liveness = config;
        self
    }

    /// Answers application requests from other members (see [`Cluster::request`]).
    pub fn on_request(mut self, handler: AppHandler) -> Self {
        self.app = Some(handler);
        self
    }

    /// Bootstraps the service's own state (a consensus log, a schema) exactly once per cluster:
    /// `hook` runs on the node that forms a new cluster, after the cluster's identity is decided
    /// (and claimed, with a backend that has a lock) and before the cluster is persisted and
    /// visible to other nodes. The node records that it began forming that cluster before the
    /// hook runs; if it crashes before the cluster is persisted, its next start completes that
    /// same formation and runs the hook again, so the hook must be idempotent. Until then no
    /// other node forms a cluster. A hook error stops the node serving, as a crash would
    /// ([`Cluster::formed`] reports it); its next start runs the hook again and completes the
    /// formation.
    pub fn on_form<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(muster::ClusterId) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), HookError>> + Send + 'static,
    {
        self.on_form = Some(Arc::new(move |id| Box::pin(hook(id))));
        self
    }

    /// Serves `/health/live`, `/health/ready`, `/status`, `/members` and `/metrics` on `addr`;
    /// `/status` and `/members` name members and addresses only with `detail`.
    #[cfg(feature = "http")]
    pub fn http(mut self, addr: SocketAddr, detail: bool) -> Self {
        self.http = Some((addr, detail));
        self
    }

    /// The builder's own durations, in the ranges the config file allows.
    fn check_timings(&self) -> Result<(), muster::config::ConfigError> {
        use muster::config::check_duration;
        let (ms, s) = (Duration::from_millis, Duration::from_secs);
        check_duration("node.sync_interval", self.sync_interval, ms(100), s(3600))?;
        check_duration("liveness.interval", self.liveness.interval, ms(10), s(60))?;
        check_duration(
            "liveness.suspect_after",
            self.liveness.suspect_after,
            self.liveness.interval,
            s(600),
        )
    }

    fn listen_addr(&self) -> SocketAddr {
        let port = crate::config::peer_port(&self.name);
        self.listen.unwrap_or_else(|| match self.name.host() {
            Host::V4(ip) => SocketAddr::from((*ip, port)),
            Host::V6(ip) => SocketAddr::from((*ip, port)),
            Host::Dns(_) => SocketAddr::from(([0, 0, 0, 0], port)),
        })
    }

    /// Warns of the backend tables this binary cannot check.
    fn warn_unchecked(&self) {
        for table in &self.unchecked_tables {
            tracing::warn!(
                node = %self.name,
                "[cluster_formation.{table}] is not checked: its backend is not compiled into this binary"
            );
        }
    }

    /// Boots the node and returns once it listens; formation goes on in the background (see
    /// [`Cluster::formed`]).
    pub async fn start(self) -> Result<Cluster, StartError> {
        self.formation.validate()?;
        self.check_timings()?;
        let metadata = Metadata::new(self.metadata.clone())?;
        let listen_addr = self.listen_addr();
        self.warn_unchecked();
        let backend = muster::build_backend(&self.formation, &self.name)?;
        // The channel's key is slow to derive by design: derived beside the rest of the boot, and
        // awaited before this node serves or calls anyone.
        let key = {
            let (cookie, name) = (self.cookie.clone(), self.cluster_name.clone());
            tokio::task::spawn_blocking(move || cookie.key(&name))
        };
        let path = self.data_dir.clone();
        let data_dir = |source| StartError::DataDir { path, source };
        let store = Store::open(&self.data_dir).map_err(data_dir.clone())?;
        let cf = self.formation.clone();
        let node = Node::open(
            self.name.clone(),
            self.cluster_name.clone(),
            self.cookie,
            self.tls,
            store.clone(),
            cf.probe_timeout,
        )
        .map_err(data_dir)?;
        node.members.set_own(metadata);
        install(&node, self.app, self.on_form);
        complete_unfinished(&node).await?;
        let listener = bind(listen_addr).await?;
        let mut tasks = Vec::new();
        #[cfg(feature = "http")]
        let http = match self.http {
            Some((addr, detail)) => Some((bind(addr).await?, addr, detail)),
            None => None,
        };
        // No time limit is layered on here: each backend bounds its own calls by its settings
        // (up to minutes for AWS), which a shorter limit would override.
        let backend = MetricsLayer::new(ListingCounts(node.metrics.clone())).layer(backend);
        let membership = Arc::new(NodeMembership(node.clone()));
        let engine = Arc::new(FormationEngine::new(
            cf.clone(),
            backend.clone(),
            membership.clone(),
        ));
        node.set_formation(engine.status(), backend.clone());
        node.set_trigger(engine.trigger());
        // The key before the first handshake: the listener is bound, so peers that call meanwhile
        // wait in its backlog (a handshake must never wait for it on a runtime thread).
        derived(key).await?;
        // Nothing is spawned before every step that can fail: a failed start leaves no task
        // holding the node (or its data dir, or a port).
        #[cfg(feature = "http")]
        if let Some((l, addr, detail)) = http {
            tasks.push(tokio::spawn(crate::http::serve(l, node.clone(), detail)));
            info!(node = %self.name, "HTTP endpoints on http://{addr}/ (health/live, health/ready, status, members, metrics)");
        }
        tasks.push(tokio::spawn(crate::server::serve(listener, node.clone())));
        tasks.push(tokio::spawn(node.clone().anti_entropy(self.sync_interval)));
        tasks.push(tokio::spawn(crate::liveness::run(node.clone(), self.liveness)));
        info!(
            node = %self.name,
            "listening for peers on {listen_addr} (cluster name {:?}, backend {})",
            self.cluster_name,
            backend.name()
        );
        let cleanup = Cleanup::new(cf.node_cleanup.clone(), cf.probe_timeout, backend, membership);
        tasks.push(tokio::spawn(formation(engine.clone(), node.clone(), cleanup)));
        // A node that failed (see `Node::fail`) stops everything that talks to peers, as a
        // crash would; the HTTP endpoints stay to say why.
        let peer_tasks: Vec<tokio::task::AbortHandle> =
            tasks.iter().rev().take(4).map(|t| t.abort_handle()).collect();
        tasks.push(tokio::spawn(stop_on_failure(node.clone(), peer_tasks)));
        Ok(Cluster {
            node,
            store,
            engine,
            tasks: std::sync::Mutex::new(tasks),
        })
    }
}

/// The service's request handler and bootstrap hook, on the node.
fn install(node: &Node, app: Option<AppHandler>, on_form: Option<FormHook>) {
    if let Some(app) = app {
        node.apps.set_handler(app);
    }
    if let Some(hook) = on_form {
        let _ = node.on_form.set(hook);
    }
}

/// A listener on `addr`, or the error naming it.
async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Listen { addr, source })
}

/// Completes a formation a crash interrupted, before this node answers anyone: peers committed
/// to it (or the fencing record) wait for exactly this cluster.
async fn complete_unfinished(node: &Arc<Node>) -> Result<(), StartError> {
    let Some(id) = node.unfinished_formation() else {
        return Ok(());
    };
    info!(node = %node.name(), "completing the formation of cluster {id}, interrupted before it was persisted (the on_form hook runs again)");
    if let Some(hook) = node.on_form.get() {
        crate::node::run_form_hook(hook, &id)
            .await
            .map_err(StartError::Formation)?;
    }
    node.finish_forming(&id).map_err(StartError::Formation)
}

/// Waits for the cookie's key, derived on a blocking thread.
async fn derived<K>(key: JoinHandle<Result<K, crate::cookie::CookieError>>) -> Result<K, StartError> {
    match key.await {
        Ok(derived) => Ok(derived?),
        Err(e) => Err(StartError::Cookie(crate::cookie::CookieError::KeyDerivation {
            reason: e.to_string(),
        })),
    }
}

/// Runs formation, then the cleanup of members the backend no longer lists.
async fn formation(engine: Arc<FormationEngine>, node: Arc<Node>, cleanup: Cleanup) {
    match engine.run().await {
        // Forgotten members are counted by the node itself (forget_member).
        Ok(_) => cleanup.run(|_| {}).await,
        Err(e) => error!(node = %node.name(), "{e}"),
    }
}

/// Aborts `peer_tasks` once the node has failed.
async fn stop_on_failure(node: Arc<Node>, peer_tasks: Vec<tokio::task::AbortHandle>) {
    let mut failure = node.failure();
    if failure.wait_for(Option::is_some).await.is_ok() {
        for t in peer_tasks {
            t.abort();
        }
    }
}

/// A running node: its formation, its members and their metadata and liveness, application
/// requests, and a clean stop. Dropping it without [`Cluster::shutdown`] stops its tasks too, but
/// records nothing and tells no one.
pub struct Cluster {
    node: Arc<Node>,
    store: Store,
    engine: Arc<FormationEngine>,
    /// Every task the node runs; taken (and ended) by the first stop.
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", self.node.name())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// A builder for a node named `name` with its state in `data_dir` (see
    /// [`ClusterBuilder::new`]).
    pub fn builder(name: NodeName, data_dir: impl Into<PathBuf>, cookie: Cookie) -> ClusterBuilder {
        ClusterBuilder::new(name, data_dir, cookie)
    }

    /// A builder from the TOML file that `muster start` reads (parsed with
    /// [`crate::config::NodeConfig::load`]): its cookie and TLS files are read and checked here.
    pub fn from_config(cfg: &ResolvedConfig) -> Result<ClusterBuilder, StartError> {
        let (cookie, tls) = crate::preflight::preflight(cfg)?;
        let mut b = ClusterBuilder::new(cfg.name.clone(), cfg.data_dir.clone(), cookie)
            .listen(cfg.listen)
            .cluster_name(cfg.file.node.cluster_name.clone())
            .formation(cfg.file.cluster_formation.clone())
            .sync_interval(cfg.file.node.sync_interval);
        b.metadata = cfg.file.node.metadata.clone();
        b.tls = tls;
        b.unchecked_tables = cfg.unchecked_tables.clone();
        #[cfg(feature = "http")]
        if let Some(addr) = cfg.http {
            b = b.http(addr, cfg.file.http.as_ref().is_some_and(|h| h.status_detail));
        }
        Ok(b)
    }

    /// This node's name.
    pub fn name(&self) -> &NodeName {
        self.node.name()
    }

    /// Waits until formation ends: this node formed a new cluster, joined one, or came back into
    /// its own; or formation failed (the error says why and what to do).
    pub async fn formed(&self, timeout: Duration) -> Result<FormationOutcome, FormedError> {
        let mut status = self.engine.status();
        let mut failure = self.node.failure();
        let wait = async {
            loop {
                status.borrow_and_update();
                if let Some(why) = failure.borrow_and_update().clone() {
                    return Err(FormedError::Failed(why));
                }
                // The node's view: an operator's reset or join-cluster supersedes the engine's.
                let s = self.node.formation();
                match (s.phase, s.outcome) {
                    (Phase::Formed, Some(outcome)) => return Ok(outcome),
                    (Phase::Failed, _) => return Err(FormedError::Failed(s.detail)),
                    _ => {}
                }
                tokio::select! {
                    changed = status.changed() => if changed.is_err() {
                        return Err(FormedError::Stopped);
                    },
                    _ = failure.changed() => {}
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(Err(FormedError::Timeout(timeout)))
    }

    /// Ready: formation finished, this node is a current member of its cluster, and no known
    /// member answered from another cluster (what `/health/ready` reports).
    pub fn is_ready(&self) -> bool {
        self.node.is_ready()
    }

    /// Every member this node knows, with its status, metadata and since when, kept current.
    pub fn members(&self) -> watch::Receiver<Members> {
        self.node.members.watch()
    }

    /// Membership changes as they happen; a consumer that falls behind gets one
    /// [`crate::members::Event::Lagged`] with a fresh snapshot instead of the events it missed.
    pub fn events(&self) -> Events {
        self.node.members.events()
    }

    /// Sets one entry of this node's metadata (`None` removes it); every member sees the change
    /// within a state push (milliseconds) or, if that is lost, an anti-entropy round.
    pub fn set_metadata(&self, key: &str, value: Option<&str>) -> Result<(), MetadataError> {
        self.node.members.set_own_entry(key, value)?;
        self.node.clone().broadcast();
        Ok(())
    }

    /// Sends `request` to member `to`'s application handler and returns its answer (see
    /// [`ClusterBuilder::on_request`]): on the peer channel, authenticated and encrypted with the
    /// cookie.
    pub async fn request(
        &self,
        to: &NodeName,
        request: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, AppError> {
        crate::apps::call(&self.node, to, request, timeout).await
    }

    /// Resolves when an operator asked this node to stop (`muster ctl stop`); what to do then is
    /// the service's choice (the `muster` command shuts down).
    pub async fn stop_requested(&self) {
        let mut stop = self.node.stop_signal();
        let _ = stop.wait_for(|s| *s).await;
    }

    /// The node underneath, for the `muster` command's endpoints and tools.
    #[doc(hidden)]
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Leaves the cluster for good: tells the other members (they mark this node left and stop
    /// waiting for it at their restarts), withdraws the backend registration, and shuts down.
    /// The data dir is left blank: started again, the node joins as a new member.
    pub async fn leave(&self) -> Result<(), StopError> {
        self.node.leave().await.map_err(|e| match e {
            crate::node::LeaveError::NotMember => StopError::NotMember(self.node.name().clone()),
            crate::node::LeaveError::State(s) => StopError::State(s),
        })?;
        self.stop(false).await;
        Ok(())
    }

    /// Stops gracefully: records which members still run (the last member to stop boots first
    /// next time), tells the others, withdraws the backend registration, ends every task, and
    /// releases the data dir, so that a new node may start on it, in this process too.
    /// Takes `&self` so that a handle shared by the service's tasks (an `Arc<Cluster>`) can
    /// stop the node; later calls do nothing.
    pub async fn shutdown(&self) {
        self.stop(true).await;
    }

    async fn stop(&self, record: bool) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        if tasks.is_empty() {
            return;
        }
        if record {
            self.node.record_shutdown().await;
        }
        self.engine.shutdown().await;
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        self.node.close();
        self.store.close();
        info!(node = %self.node.name(), "stopped");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            t.abort();
        }
        self.node.close();
        self.store.close();
    }
}
