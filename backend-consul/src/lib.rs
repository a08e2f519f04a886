//! # muster-backend-consul
//!
//! Peer discovery through Consul (`[cluster_formation.consul]`): each node registers a service
//! with a TTL check that is passing from the start and heals itself (re-registered on a 404 or
//! after an agent restart); the listing is the passing instances of the service tagged with the
//! cluster name, oldest first; formation is guarded by a session lock on a KV key and fenced by
//! a `cas=0` record of the cluster id. See `docs/backends/consul.md`.

// No panics on input from the network, a file or the environment.
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod client;
pub mod lock;
pub mod registration;
pub mod settings;

use std::sync::Arc;

use async_trait::async_trait;
use muster_discovery_core::{
    ClaimError, ClusterId, ConfigError, Discovery, DiscoveryError, DiscoveryResult, ErrorKind, Fencing,
    FormationConfig, FormationLock, LockGuard, LockWait, NodeName, Registration, RegistrationStatus,
};
use reqwest::Method;

use crate::client::{Consul, failure, json, truth};
use crate::settings::{Consistency, ConsulSettings, ResolvedConsul};

/// The backend's name in errors and logs.
pub const NAME: &str = "consul";

/// How the facade checks `[cluster_formation.consul]` and builds this backend.
pub const FACTORY: muster_discovery_core::BackendFactory = muster_discovery_core::BackendFactory {
    name: NAME,
    aliases: &[],
    table: "consul",
    check: |config| {
        config
            .backend_settings::<settings::ConsulSettings>("consul")
            .map(drop)
    },
    build: |config, local| Ok(std::sync::Arc::new(ConsulBackend::from_config(config, local)?)),
};
/// The service metadata key holding the node's name.
pub const META_NODE: &str = "muster-node";

/// Shared by the backend and its background tasks.
pub struct Inner {
    /// The resolved settings.
    pub r: ResolvedConsul,
    /// The node.
    pub local: NodeName,
    /// The client.
    pub consul: Consul,
    /// Registration state.
    pub reg: registration::State,
}

/// The Consul backend.
pub struct ConsulBackend {
    inner: Arc<Inner>,
}

impl Drop for ConsulBackend {
    /// The heartbeat stops with the backend (the check then goes critical at its TTL).
    fn drop(&mut self) {
        self.inner.reg.abort();
    }
}

impl ConsulBackend {
    /// Builds the backend from `[cluster_formation.consul]` for node `local`.
    pub fn from_config(config: &FormationConfig, local: &NodeName) -> Result<Self, ConfigError> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self::new(ConsulSettings::resolve(config, local, &env)?, local)
    }

    /// Builds the backend from resolved settings (reads the TLS files it names).
    pub fn new(r: ResolvedConsul, local: &NodeName) -> Result<Self, ConfigError> {
        let consul = Consul::new(&r)?;
        Ok(ConsulBackend {
            inner: Arc::new(Inner {
                r,
                local: local.clone(),
                consul,
                reg: registration::State::default(),
            }),
        })
    }

    fn key(&self, leaf: &str) -> String {
        let s = &self.inner.r.settings;
        format!("{}/{}/{leaf}", s.key_prefix, s.cluster_name)
    }

    async fn recorded(&self) -> Result<Option<ClusterId>, DiscoveryError> {
        let key = self.key("cluster-id");
        let what = format!("reading {key}");
        let r = self
            .inner
            .consul
            .call(
                &what,
                Method::GET,
                &format!("/v1/kv/{key}"),
                &[("raw", String::new())],
                None,
                None,
            )
            .await?;
        match r.status.as_u16() {
            200 => Ok(Some(ClusterId(r.body.trim().to_string())).filter(|c| !c.0.is_empty())),
            404 => Ok(None),
            _ => Err(failure(
                &what,
                &format!(
                    "key_prefix \"{}\" {{ policy = \"read\" }}",
                    self.inner.r.settings.key_prefix
                ),
                &r,
            )),
        }
    }
}

#[async_trait]
impl Discovery for ConsulBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    /// A consistent read is authoritative when the agent knows a leader and ACLs hid nothing
    /// (checked per listing).
    fn full_membership(&self) -> bool {
        self.inner.r.settings.consistency == Consistency::Consistent
    }

    async fn list(&self) -> Result<DiscoveryResult, DiscoveryError> {
        let s = &self.inner.r.settings;
        let what = format!("listing service {}", s.service_name);
        let mut q = vec![("tag", s.cluster_name.clone())];
        if !s.include_warning {
            q.push(("passing", "1".into()));
        }
        q.extend(Consul::consistency(s.consistency));
        let r = self
            .inner
            .consul
            .call(
                &what,
                Method::GET,
                &format!("/v1/health/service/{}", s.service_name),
                &q,
                None,
                None,
            )
            .await?;
        if !r.status.is_success() {
            return Err(failure(
                &what,
                &format!(
                    "service \"{}\" {{ policy = \"read\" }} and node_prefix \"\" {{ policy = \"read\" }}",
                    s.service_name
                ),
                &r,
            ));
        }
        let rows = json(&what, &r)?;
        let mut found: Vec<(u64, NodeName)> = Vec::new();
        for row in rows.as_array().map(Vec::as_slice).unwrap_or_default() {
            let at = |p: &str| row.pointer(p).cloned().unwrap_or_default();
            // With include_warning, a critical check still leaves the instance out.
            let critical = at("/Checks").as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c.get("Status").and_then(|s| s.as_str()) == Some("critical"))
            });
            if critical {
                continue;
            }
            let Some(name) = at(&format!("/Service/Meta/{META_NODE}"))
                .as_str()
                .and_then(|n| n.parse::<NodeName>().ok())
            else {
                tracing::warn!(
                    "service instance {} has no valid {META_NODE} metadata; skipped",
                    at("/Service/ID")
                );
                continue;
            };
            found.push((at("/Service/CreateIndex").as_u64().unwrap_or(u64::MAX), name));
        }
        found.sort();
        let seed = found.first().map(|(_, n)| n.clone());
        let authoritative = s.consistency == Consistency::Consistent && r.known_leader && !r.filtered;
        let mut result = DiscoveryResult::new(found.into_iter().map(|(_, n)| n), authoritative);
        // The oldest registration is the seed for everyone.
        if let Some(seed) = seed {
            result = result.with_preferred_seed(seed);
        }
        if let Some(id) = self.recorded().await? {
            let key = self.key("cluster-id");
            result = result.with_recorded_cluster(id).with_fencing_hint(format!(
                "to re-bootstrap from scratch (every member's data is gone): consul kv delete {key}"
            ));
        }
        Ok(result)
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
}

#[async_trait]
impl Registration for ConsulBackend {
    async fn register(&self) -> Result<(), DiscoveryError> {
        registration::start(self.inner.clone()).await
    }

    async fn unregister(&self) -> Result<(), DiscoveryError> {
        registration::stop(&self.inner).await
    }

    fn status(&self) -> RegistrationStatus {
        self.inner.reg.status()
    }
}

#[async_trait]
impl FormationLock for ConsulBackend {
    async fn lock(&self, owner: &NodeName, wait: &LockWait) -> Result<Box<dyn LockGuard>, DiscoveryError> {
        let key = self.key("formation-lock");
        // The engine's wait, bounded by this backend's own `lock_timeout`.
        let cap = self.inner.r.settings.lock_timeout;
        Ok(Box::new(
            lock::acquire(&self.inner, owner, &key, wait, cap).await?,
        ))
    }
}

#[async_trait]
impl Fencing for ConsulBackend {
    /// Two requests: a consistent read of the lock key (another session or none: `LockLost`),
    /// then the `cas=0` write, the commit point (`false`: read it back and compare). A session
    /// invalidated between the two does not stop the write.
    async fn claim(&self, id: &ClusterId, lock: Option<&dyn LockGuard>) -> Result<(), ClaimError> {
        if let Some(guard) = lock {
            let session = String::from_utf8_lossy(guard.token()).into_owned();
            let held = lock::holder(&self.inner, &self.key("formation-lock"))
                .await
                .map_err(ClaimError::Backend)?;
            if held.as_deref() != Some(session.as_str()) {
                return Err(ClaimError::LockLost);
            }
        }
        let key = self.key("cluster-id");
        let what = format!("recording the cluster id at {key}");
        let r = self
            .inner
            .consul
            .call(
                &what,
                Method::PUT,
                &format!("/v1/kv/{key}"),
                &[("cas", "0".into())],
                Some(id.0.clone().into_bytes()),
                None,
            )
            .await
            .map_err(ClaimError::Backend)?;
        if !r.status.is_success() {
            let rule = format!(
                "key_prefix \"{}\" {{ policy = \"write\" }}",
                self.inner.r.settings.key_prefix
            );
            return Err(ClaimError::Backend(failure(&what, &rule, &r)));
        }
        if truth(&r) {
            return Ok(());
        }
        match self.recorded().await.map_err(ClaimError::Backend)? {
            Some(theirs) if theirs == *id => Ok(()),
            Some(theirs) => Err(ClaimError::Taken(theirs)),
            None => Err(ClaimError::Backend(DiscoveryError::new(
                NAME,
                ErrorKind::Other,
                format!("{key} exists but is empty"),
            ))),
        }
    }
}
