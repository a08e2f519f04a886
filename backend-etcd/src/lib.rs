//! # muster-backend-etcd
//!
//! The etcd backend: the strongly consistent one. Nodes register under a lease (dead nodes vanish
//! when it expires), formation is guarded by etcd's lock API, and the cluster's identity is
//! recorded in etcd so that blank nodes cannot form a second cluster after a full restart on
//! fresh disks. See `docs/backends/etcd.md`.
//!
//! Keys, under `/<key_prefix>/<cluster_name>`:
//! - `nodes/<node>`: one per registered node, JSON `{node, start_time_ms, version}`, on the node's
//!   lease;
//! - `lock/…`: the formation lock (etcd's lock API), on the holder's lock lease;
//! - `cluster-id`: the formed cluster's id, no lease (fencing).

// No panics on input from the network, a file or the environment.
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

mod errors;
mod lock;
mod registration;
pub mod settings;

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, SortOrder, SortTarget,
    TlsOptions, Txn, TxnOp,
};
use muster_discovery_core::{
    ClaimError, ClusterId, ConfigError, Discovery, DiscoveryError, DiscoveryResult, ErrorKind, Fencing,
    FormationConfig, FormationLock, LockGuard, LockWait, NodeName, Registration, RegistrationStatus,
};
use tokio::sync::{OnceCell, watch};
use tracing::warn;

pub use settings::EtcdSettings;

/// The backend's name in config and logs.
pub const NAME: &str = "etcd";

/// How the facade checks `[cluster_formation.etcd]` and builds this backend.
pub const FACTORY: muster_discovery_core::BackendFactory = muster_discovery_core::BackendFactory {
    name: NAME,
    aliases: &[],
    table: "etcd",
    check: |config| config.backend_settings::<EtcdSettings>("etcd").map(drop),
    build: |config, local| Ok(std::sync::Arc::new(EtcdBackend::from_config(config, local)?)),
};

/// State shared with the registration keeper.
pub(crate) struct Inner {
    pub(crate) settings: EtcdSettings,
    pub(crate) local: NodeName,
    pub(crate) start_ms: u64,
    client: OnceCell<Client>,
    pub(crate) registration: watch::Sender<RegistrationStatus>,
    pub(crate) lease: Mutex<Option<i64>>,
}

impl Inner {
    /// The connected client (connects on first use; a failed connect is retried next call).
    pub(crate) async fn client(&self) -> Result<Client, DiscoveryError> {
        self.client
            .get_or_try_init(|| async {
                let options = self.connect_options()?;
                let connect = Client::connect(&self.settings.endpoints, Some(options));
                match tokio::time::timeout(self.settings.connect_timeout, connect).await {
                    Ok(r) => r.map_err(|e| errors::map("connecting to etcd", e)),
                    Err(_) => Err(DiscoveryError::new(
                        NAME,
                        ErrorKind::Unavailable,
                        format!(
                            "connecting to etcd at {} timed out after {:?}",
                            self.settings.endpoints.join(", "),
                            self.settings.connect_timeout
                        ),
                    )),
                }
            })
            .await
            .cloned()
    }

    fn connect_options(&self) -> Result<ConnectOptions, DiscoveryError> {
        let s = &self.settings;
        // No client-wide request timeout: it would also cut the lock wait short. Each unary call
        // is bounded by connect_timeout (errors::bounded); the lock call by the engine's wait.
        let mut o = ConnectOptions::new().with_connect_timeout(s.connect_timeout);
        if let (Some(u), Some(p)) = (&s.username, &s.password) {
            o = o.with_user(u.clone(), p.expose().to_string());
        }
        if let Some(ca) = &s.ca_file {
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca, "ca_file")?));
            if let (Some(cert), Some(key)) = (&s.cert_file, &s.key_file) {
                tls = tls.identity(Identity::from_pem(
                    read(cert, "cert_file")?,
                    read(key, "key_file")?,
                ));
            }
            o = o.with_tls(tls);
        }
        Ok(o)
    }

    pub(crate) fn node_key(&self, node: &NodeName) -> String {
        format!("{}{node}", self.settings.nodes_prefix())
    }
}

fn read(path: &std::path::Path, key: &str) -> Result<Vec<u8>, DiscoveryError> {
    std::fs::read(path).map_err(|e| {
        DiscoveryError::new(
            NAME,
            ErrorKind::Misconfigured,
            format!("cannot read cluster_formation.etcd.{key} {}: {e}", path.display()),
        )
    })
}

/// The etcd backend for one node.
pub struct EtcdBackend {
    inner: Arc<Inner>,
    keeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
    watcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for EtcdBackend {
    fn drop(&mut self) {
        for slot in [&self.keeper, &self.watcher] {
            if let Some(task) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
                task.abort();
            }
        }
    }
}

impl EtcdBackend {
    /// A backend for `local` with validated settings. Connects on first use.
    pub fn new(settings: EtcdSettings, local: &NodeName) -> Self {
        let start_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let (registration, _) = watch::channel(RegistrationStatus::new(false, "not registered yet"));
        EtcdBackend {
            inner: Arc::new(Inner {
                settings,
                local: local.clone(),
                start_ms,
                client: OnceCell::new(),
                registration,
                lease: Mutex::new(None),
            }),
            keeper: Mutex::new(None),
            watcher: Mutex::new(None),
        }
    }

    /// Builds the backend from `[cluster_formation.etcd]`.
    pub fn from_config(config: &FormationConfig, local: &NodeName) -> Result<Self, ConfigError> {
        Ok(Self::new(EtcdSettings::from_config(config)?, local))
    }

    /// The settings in use.
    pub fn settings(&self) -> &EtcdSettings {
        &self.inner.settings
    }

    /// The key this node registers under.
    pub fn node_key(&self) -> String {
        self.inner.node_key(&self.inner.local)
    }

    /// The current registration lease, if any.
    pub fn lease(&self) -> Option<i64> {
        *self.inner.lease.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn hint(&self) -> String {
        let s = &self.inner.settings;
        format!(
            "start one of its members (it rejoins from its data dir), or if that cluster is gone for good, \
             delete the key to re-bootstrap: etcdctl --endpoints {} del {}",
            s.endpoints.first().map(String::as_str).unwrap_or("…"),
            s.cluster_id_key()
        )
    }
}

#[async_trait]
impl Discovery for EtcdBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn full_membership(&self) -> bool {
        true
    }

    fn registration(&self) -> Option<&dyn Registration> {
        Some(self)
    }

    fn formation_lock(&self) -> Option<&dyn FormationLock> {
        Some(self)
    }

    fn fencing(&self) -> Option<&dyn Fencing> {
        Some(self)
    }

    /// A prefix watch on the cluster's keys (registrations, the cluster id): every change fires
    /// the trigger. Re-established after an error, at the connect timeout.
    fn watch(&self, trigger: muster_discovery_core::Trigger) {
        let mut slot = self.watcher.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(tokio::spawn(registration::watch(self.inner.clone(), trigger)));
        }
    }

    async fn list(&self) -> Result<DiscoveryResult, DiscoveryError> {
        let mut client = self.inner.client().await?;
        let base = format!("{}/", self.inner.settings.base());
        let opts = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Create, SortOrder::Ascend);
        let limit = self.inner.settings.connect_timeout;
        let resp = errors::bounded("listing nodes", limit, client.get(base.as_str(), Some(opts))).await?;
        let (nodes, recorded) = decode_listing(
            resp.kvs().iter().map(|kv| (kv.key(), kv.value())),
            &self.inner.settings.nodes_prefix(),
            &self.inner.settings.cluster_id_key(),
        );
        let mut result = DiscoveryResult::new(nodes, true);
        if let Some(id) = recorded {
            result = result.with_recorded_cluster(id).with_fencing_hint(self.hint());
        }
        Ok(result)
    }
}

/// The pure part of a listing: etcd keys and values in, the registered node names (keys under
/// `nodes_prefix` that make a node name; others are logged and skipped) and the recorded
/// cluster id (the value at `id_key`) out. Fuzzed on its own.
pub fn decode_listing<'a>(
    kvs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    nodes_prefix: &str,
    id_key: &str,
) -> (Vec<NodeName>, Option<ClusterId>) {
    let mut nodes = Vec::new();
    let mut recorded = None;
    for (key, value) in kvs {
        let key = String::from_utf8_lossy(key);
        if key == id_key {
            recorded = Some(ClusterId(String::from_utf8_lossy(value).into_owned()));
        } else if let Some(name) = key.strip_prefix(nodes_prefix) {
            match name.parse::<NodeName>() {
                Ok(n) => nodes.push(n),
                Err(e) => warn!("ignoring etcd key {key}: {e}"),
            }
        }
    }
    (nodes, recorded)
}

#[async_trait]
impl Registration for EtcdBackend {
    async fn register(&self) -> Result<(), DiscoveryError> {
        {
            let mut keeper = self.keeper.lock().unwrap_or_else(|e| e.into_inner());
            if keeper.is_none() {
                *keeper = Some(tokio::spawn(registration::keeper(self.inner.clone())));
            }
        }
        let mut rx = self.inner.registration.subscribe();
        let wait = self.inner.settings.connect_timeout * 2;
        let registered = matches!(
            tokio::time::timeout(wait, rx.wait_for(|s| s.registered)).await,
            Ok(Ok(_))
        );
        if registered {
            Ok(())
        } else {
            Err(DiscoveryError::new(
                NAME,
                ErrorKind::Unavailable,
                rx.borrow().detail.clone(),
            ))
        }
    }

    async fn unregister(&self) -> Result<(), DiscoveryError> {
        if let Some(task) = self.keeper.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
        let lease = self.inner.lease.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.inner.registration.send_modify(|s| {
            s.registered = false;
            s.detail = "unregistered".into();
        });
        let mut client = self.inner.client().await?;
        let limit = self.inner.settings.connect_timeout;
        errors::bounded(
            "deleting the node key",
            limit,
            client.delete(self.node_key(), None),
        )
        .await?;
        if let Some(lease) = lease {
            errors::bounded(
                "revoking the registration lease",
                limit,
                client.lease_revoke(lease),
            )
            .await?;
        }
        Ok(())
    }

    fn status(&self) -> RegistrationStatus {
        self.inner.registration.borrow().clone()
    }
}

#[async_trait]
impl FormationLock for EtcdBackend {
    async fn lock(&self, _owner: &NodeName, wait: &LockWait) -> Result<Box<dyn LockGuard>, DiscoveryError> {
        let client = self.inner.client().await?;
        let s = &self.inner.settings;
        Ok(Box::new(
            lock::acquire(&client, &s.lock_name(), s.lock_timeout, wait, s.connect_timeout).await?,
        ))
    }
}

#[async_trait]
impl Fencing for EtcdBackend {
    /// One transaction: `cluster-id` absent (create revision 0) and, under a lock, the lock key
    /// still present (our hold's key exists only while its lease lives) → write the id. On a
    /// failed compare the same transaction reads the recorded id to tell "taken" from "lock lost".
    async fn claim(&self, id: &ClusterId, lock: Option<&dyn LockGuard>) -> Result<(), ClaimError> {
        let mut client = self.inner.client().await?;
        let key = self.inner.settings.cluster_id_key();
        let mut when = vec![Compare::create_revision(key.as_str(), CompareOp::Equal, 0)];
        if let Some(guard) = lock {
            when.push(Compare::create_revision(guard.token(), CompareOp::Greater, 0));
        }
        let txn = Txn::new()
            .when(when)
            .and_then([TxnOp::put(key.as_str(), id.0.as_str(), None)])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let limit = self.inner.settings.connect_timeout;
        let resp = errors::bounded("claiming the cluster id", limit, client.txn(txn)).await?;
        if resp.succeeded() {
            return Ok(());
        }
        let recorded = resp.op_responses().into_iter().find_map(|op| match op {
            etcd_client::TxnOpResponse::Get(get) => get
                .kvs()
                .first()
                .map(|kv| ClusterId(String::from_utf8_lossy(kv.value()).into_owned())),
            _ => None,
        });
        match recorded {
            Some(existing) if existing == *id => Ok(()),
            Some(existing) => Err(ClaimError::Taken(existing)),
            None => Err(ClaimError::LockLost),
        }
    }
}
