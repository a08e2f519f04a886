//! # muster-backend-k8s
//!
//! Peer discovery on Kubernetes (`peer_discovery_backend = "k8s"`, table
//! `[cluster_formation.k8s]`; see `docs/backends/k8s.md`):
//!
//! - `mode = "statefulset"` (default): the candidates are the StatefulSet's pods by ordinal,
//!   `prefix@<sts>-<i>.<service>.<namespace>.svc.<cluster_domain>`, from `spec.ordinals.start`
//!   for `spec.replicas` pods (or `replicas` from config, with no API read). Every caller gets
//!   the same list, so it is authoritative and the lowest ordinal is the preferred seed.
//! - `mode = "endpoints"`: the Service's EndpointSlices, ready or not (terminating endpoints
//!   left out), merged and de-duplicated; the Endpoints API only when slices are not served
//!   (404). Not authoritative.
//! - A `coordination.k8s.io` Lease as the formation lock ([`lease`]), and a ConfigMap that
//!   records the cluster id, created once (409 = someone claimed first) as fencing: a pod-0 that
//!   lost its volume then joins the recorded cluster instead of forming a second one.
//! - Peers resolved through the API (pod → `status.podIP`) when the Role allows it, so a
//!   restarted pod's new address is used within a second ([`addresses`]) rather than after a
//!   DNS answer's TTL.

// No panics on input from the network, a file or the environment.
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod addresses;
pub mod client;
pub mod errors;
pub mod lease;
pub mod settings;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, ObjectReference, Pod};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use muster_discovery_core::{
    ClaimError, ClusterId, Discovery, DiscoveryError, DiscoveryResult, ErrorKind, Fencing, FormationConfig,
    FormationLock, Host, LockGuard, LockWait, Milestone, NodeName,
};
use tokio::sync::OnceCell;
use tracing::{info, warn};

use crate::errors::{Rule, bounded, map, raw, status_code};
use crate::lease::LeaseSpot;
use crate::settings::{AddressType, K8sSettings, Mode, NAMESPACE_FILE, ResolvedK8s, Toggle};

/// The backend's name in errors and logs.
pub const NAME: &str = "k8s";

/// How the facade checks `[cluster_formation.k8s]` and builds this backend.
pub const FACTORY: muster_discovery_core::BackendFactory = muster_discovery_core::BackendFactory {
    name: NAME,
    aliases: &["kubernetes"],
    table: "k8s",
    check: |config| config.backend_settings::<settings::K8sSettings>("k8s").map(drop),
    build: |config, local| Ok(std::sync::Arc::new(K8sBackend::from_config(config, local)?)),
};

const STS_GET: Rule = Rule::new("apps", "statefulsets", "get");
const SLICES_LIST: Rule = Rule::new("discovery.k8s.io", "endpointslices", "list");
const ENDPOINTS_GET: Rule = Rule::new("", "endpoints", "get");
const PODS_GET: Rule = Rule::new("", "pods", "get");
const CM_GET: Rule = Rule::new("", "configmaps", "get");
const CM_CREATE: Rule = Rule::new("", "configmaps", "create");
const EVENTS_CREATE: Rule = Rule::new("events.k8s.io", "events", "create");
const CLUSTER_ID_KEY: &str = "cluster_id";

/// The Kubernetes backend.
pub struct K8sBackend {
    r: ResolvedK8s,
    local: NodeName,
    client: OnceCell<Client>,
    /// `lock = "auto"` found the Role without Lease rights.
    lock_denied: AtomicBool,
    /// `lock = "auto"` has its answer (allowed or denied); no need to ask again.
    lock_probed: AtomicBool,
    /// `resolve_peers_via_api = "auto"` found the Role without `pods get`.
    resolve_denied: AtomicBool,
    /// Pod addresses read through the API, reused for a second.
    addresses: addresses::PodAddresses,
    /// The Role does not allow `events create`: warned once, not tried again.
    events_denied: AtomicBool,
    /// Endpoints mode: `true` once the StatefulSet was read (every later listing needs its
    /// replicas); `false` once the one taken from the pod name proved absent or unreadable.
    sts_sized: OnceLock<bool>,
}

impl K8sBackend {
    /// Builds the backend from `[cluster_formation.k8s]` for node `local` (the namespace from
    /// the config, `POD_NAMESPACE`, or the service-account file).
    pub fn from_config(
        config: &FormationConfig,
        local: &NodeName,
    ) -> Result<Self, muster_discovery_core::config::ConfigError> {
        let env = std::env::var("POD_NAMESPACE").ok();
        let r = K8sSettings::resolve(config, local, env, std::path::Path::new(NAMESPACE_FILE))?;
        if r.settings.lock == Toggle::On && !r.settings.fencing {
            return Err(muster_discovery_core::config::ConfigError::new(
                Some("cluster_formation.k8s.fencing".into()),
                "cluster_formation.k8s.lock = true needs fencing (a lock without the claim cannot make \
                 forming atomic); remove fencing = false",
            ));
        }
        Ok(K8sBackend {
            r,
            local: local.clone(),
            client: OnceCell::new(),
            lock_denied: AtomicBool::new(false),
            lock_probed: AtomicBool::new(false),
            resolve_denied: AtomicBool::new(false),
            addresses: addresses::PodAddresses::default(),
            events_denied: AtomicBool::new(false),
            sts_sized: OnceLock::new(),
        })
    }

    /// The resolved settings.
    pub fn resolved(&self) -> &ResolvedK8s {
        &self.r
    }

    async fn client(&self) -> Result<Client, DiscoveryError> {
        self.client
            .get_or_try_init(|| async { client::client(client::config(&self.r.settings).await?) })
            .await
            .cloned()
    }

    fn limit(&self) -> std::time::Duration {
        self.r.settings.request_timeout
    }

    fn ns(&self) -> &str {
        &self.r.namespace
    }

    fn name_for(&self, host: &str) -> Result<NodeName, DiscoveryError> {
        let text = match self.r.port {
            Some(port) => format!("{}@{host}:{port}", self.r.prefix),
            None => format!("{}@{host}", self.r.prefix),
        };
        text.parse().map_err(|e| {
            DiscoveryError::new(
                NAME,
                ErrorKind::Other,
                format!("the API lists {host:?}, which is not a valid node name: {e}"),
            )
        })
    }

    fn ip_name(&self, ip: &str) -> Result<NodeName, DiscoveryError> {
        let host = match ip.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
            Ok(IpAddr::V4(v4)) => v4.to_string(),
            Err(_) => ip.to_string(),
        };
        self.name_for(&host)
    }

    /// `(start, replicas)` of the StatefulSet, from the config or the API.
    async fn ordinals(&self, client: &Client) -> Result<(u32, u32), DiscoveryError> {
        if let Some(replicas) = self.r.settings.replicas {
            return Ok((self.r.settings.ordinals_start, replicas));
        }
        let what = format!("reading StatefulSet {}/{}", self.ns(), self.sts_name());
        match self.read_statefulset(&what, client).await? {
            Ok(sts) => Ok(ordinals_of(sts)),
            Err(e) => Err(self.statefulset_error(&what, e)),
        }
    }

    fn sts_name(&self) -> &str {
        self.r.statefulset.as_deref().unwrap_or_default()
    }

    /// One GET of the StatefulSet, keeping the API error for the caller to classify.
    async fn read_statefulset(
        &self,
        what: &str,
        client: &Client,
    ) -> Result<Result<StatefulSet, kube::Error>, DiscoveryError> {
        let api: Api<StatefulSet> = Api::namespaced(client.clone(), self.ns());
        raw(what, self.limit(), api.get(self.sts_name())).await
    }

    /// A failed StatefulSet read: a 404 is misconfigured (it names a StatefulSet that does not
    /// exist), the rest as [`map`] classifies them.
    fn statefulset_error(&self, what: &str, e: kube::Error) -> DiscoveryError {
        if status_code(&e) == Some(404) {
            return DiscoveryError::new(
                NAME,
                ErrorKind::Misconfigured,
                format!(
                    "StatefulSet {}/{} does not exist (cluster_formation.k8s.statefulset, namespace)",
                    self.ns(),
                    self.sts_name()
                ),
            );
        }
        map(what, STS_GET, e)
    }

    /// Endpoints mode: the StatefulSet's replicas, the cluster size to wait for. A failed read
    /// is an error, never a listing with a smaller size. Only a StatefulSet taken from the pod
    /// name, at its first answer, may turn out absent (404: the pod is not in one) or unreadable
    /// (403: the Role does not grant it); the configured hint alone then applies from then on.
    async fn expected_size(&self, client: &Client) -> Result<Option<usize>, DiscoveryError> {
        if self.r.statefulset.is_none() || self.sts_sized.get() == Some(&false) {
            return Ok(None);
        }
        if let Some(replicas) = self.r.settings.replicas {
            return Ok(Some(replicas as usize));
        }
        let guessed = self.r.settings.statefulset.is_none() && self.sts_sized.get().is_none();
        let what = format!(
            "reading StatefulSet {}/{} for the cluster size to wait for",
            self.ns(),
            self.sts_name()
        );
        match self.read_statefulset(&what, client).await? {
            Ok(sts) => {
                let _ = self.sts_sized.set(true);
                Ok(Some(ordinals_of(sts).1 as usize))
            }
            Err(e) if guessed && matches!(status_code(&e), Some(403 | 404)) => {
                let _ = self.sts_sized.set(false);
                let why = if status_code(&e) == Some(404) {
                    "does not exist"
                } else {
                    "is not readable by the Role (add statefulsets get, group \"apps\", to use its replicas)"
                };
                warn!(
                    "StatefulSet {}/{} (from the pod name) {why}: the cluster size to wait for is \
                     target_cluster_size_hint alone",
                    self.ns(),
                    self.sts_name()
                );
                Ok(None)
            }
            Err(e) => Err(self.statefulset_error(&what, e)),
        }
    }

    async fn statefulset_nodes(&self, client: &Client) -> Result<DiscoveryResult, DiscoveryError> {
        let (start, replicas) = self.ordinals(client).await?;
        let sts = self.r.statefulset.clone().unwrap_or_default();
        let domain = &self.r.settings.cluster_domain;
        let mut nodes = Vec::new();
        for i in start..start.saturating_add(replicas) {
            nodes.push(self.name_for(&format!(
                "{sts}-{i}.{}.{}.svc.{domain}",
                self.r.service,
                self.ns()
            ))?);
        }
        let seed = nodes.first().cloned();
        let mut result = DiscoveryResult::new(nodes, true);
        if let Some(seed) = seed {
            result = result.with_preferred_seed(seed);
        }
        Ok(result)
    }

    fn endpoint_name(&self, e: &Endpoint) -> Option<Result<NodeName, DiscoveryError>> {
        if e.conditions.as_ref().and_then(|c| c.terminating) == Some(true) {
            return None;
        }
        match self.r.settings.address_type {
            AddressType::Ip => e.addresses.first().map(|a| self.ip_name(a)),
            AddressType::Hostname => match &e.hostname {
                Some(h) => Some(self.name_for(&format!("{h}{}", self.r.settings.hostname_suffix))),
                None => {
                    warn!(
                        "an endpoint of Service {}/{} has no hostname (address_type = \"hostname\" needs \
                         StatefulSet pods behind a headless Service); skipped",
                        self.ns(),
                        self.r.service
                    );
                    None
                }
            },
        }
    }

    async fn endpoint_nodes(&self, client: &Client) -> Result<DiscoveryResult, DiscoveryError> {
        let api: Api<EndpointSlice> = Api::namespaced(client.clone(), self.ns());
        let selector = format!("kubernetes.io/service-name={}", self.r.service);
        let what = format!(
            "listing the EndpointSlices of Service {}/{}",
            self.ns(),
            self.r.service
        );
        let listed = raw(
            &what,
            self.limit(),
            api.list(&ListParams::default().labels(&selector)),
        )
        .await?;
        let mut nodes = Vec::new();
        match listed {
            Ok(slices) => {
                for slice in &slices.items {
                    for e in slice_endpoints(slice) {
                        if let Some(name) = self.endpoint_name(e) {
                            nodes.push(name?);
                        }
                    }
                }
            }
            // Slices not served at all (an old API server): the Endpoints API, and only then.
            Err(e) if status_code(&e) == Some(404) => nodes = self.legacy_endpoints(client).await?,
            Err(e) => return Err(map(&what, SLICES_LIST, e)),
        }
        let mut result = DiscoveryResult::new(nodes, false);
        if let Some(size) = self.expected_size(client).await? {
            result = result.with_expected_size(size);
        }
        Ok(result)
    }

    async fn legacy_endpoints(&self, client: &Client) -> Result<Vec<NodeName>, DiscoveryError> {
        let api: Api<Endpoints> = Api::namespaced(client.clone(), self.ns());
        let what = format!("reading Endpoints {}/{}", self.ns(), self.r.service);
        let ep = bounded(&what, ENDPOINTS_GET, self.limit(), api.get(&self.r.service)).await?;
        let mut nodes = Vec::new();
        for subset in ep.subsets.unwrap_or_default() {
            let all = subset
                .addresses
                .unwrap_or_default()
                .into_iter()
                .chain(subset.not_ready_addresses.unwrap_or_default());
            for a in all {
                let name = match self.r.settings.address_type {
                    AddressType::Ip => self.ip_name(&a.ip)?,
                    AddressType::Hostname => match &a.hostname {
                        Some(h) => self.name_for(&format!("{h}{}", self.r.settings.hostname_suffix))?,
                        None => continue,
                    },
                };
                nodes.push(name);
            }
        }
        Ok(nodes)
    }

    fn fencing_spot(&self, client: &Client) -> Api<ConfigMap> {
        Api::namespaced(client.clone(), self.ns())
    }

    fn fencing_hint(&self) -> String {
        format!(
            "to re-bootstrap from scratch (every member's data is gone): kubectl -n {} delete configmap {}",
            self.ns(),
            self.r.fencing_name
        )
    }

    async fn recorded(&self, client: &Client) -> Result<Option<ClusterId>, DiscoveryError> {
        let api = self.fencing_spot(client);
        let what = format!(
            "reading the cluster record ConfigMap {}/{}",
            self.ns(),
            self.r.fencing_name
        );
        let cm = bounded(&what, CM_GET, self.limit(), api.get_opt(&self.r.fencing_name)).await?;
        Ok(cm
            .and_then(|c| c.data)
            .and_then(|d| d.get(CLUSTER_ID_KEY).cloned())
            .map(ClusterId))
    }

    fn lease_spot(&self, client: &Client) -> LeaseSpot {
        LeaseSpot {
            api: Api::namespaced(client.clone(), self.ns()),
            label: format!("{}/{}", self.ns(), self.r.lease_name),
            name: self.r.lease_name.clone(),
            duration: self.r.settings.lease_duration,
            limit: self.limit(),
        }
    }

    /// `lock = "auto"`: finds out once whether the Role allows the Lease.
    async fn probe_lock_rights(&self, client: &Client) {
        if self.r.settings.lock != Toggle::Auto || self.lock_probed.load(Ordering::Relaxed) {
            return;
        }
        let spot = self.lease_spot(client);
        let answer = raw(
            "reading the formation Lease",
            self.limit(),
            spot.api.get_opt(&spot.name),
        )
        .await;
        // A definite answer (read, or 403) settles it; an outage or a timeout asks again next time.
        match &answer {
            Ok(Ok(_)) => self.lock_probed.store(true, Ordering::Relaxed),
            Ok(Err(e)) if status_code(e) == Some(403) => self.lock_probed.store(true, Ordering::Relaxed),
            _ => {}
        }
        if let Ok(Err(e)) = answer
            && status_code(&e) == Some(403)
        {
            warn!(
                "the Role does not allow the formation Lease {} (lock = \"auto\"): forming without the lock; \
                 add leases get, create, update (coordination.k8s.io) to use it",
                spot.label
            );
            self.lock_denied.store(true, Ordering::Relaxed);
        }
    }
}

impl K8sBackend {
    /// The local pod's name: `POD_NAME`, else the first label of the node's host.
    fn pod_name(&self) -> Option<String> {
        std::env::var("POD_NAME")
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| match self.local.host() {
                Host::Dns(h) => h.split('.').next().map(String::from),
                _ => None,
            })
    }

    /// Publishes `m` as an events.k8s.io/v1 Event on the local pod (best effort).
    async fn publish(&self, m: &Milestone) {
        let Some(pod) = self.pod_name() else { return };
        let (reason, kind, note) = match m {
            Milestone::Formed { cluster } => ("Formed", "Normal", format!("formed cluster {cluster}")),
            Milestone::Joined {
                cluster,
                via: Some(via),
            } => ("Joined", "Normal", format!("joined cluster {cluster} via {via}")),
            Milestone::Joined { cluster, via: None } => {
                ("Joined", "Normal", format!("rejoined cluster {cluster}"))
            }
            Milestone::Refused { reason } => ("Refused", "Warning", reason.clone()),
            Milestone::Failed { reason } => ("FormationFailed", "Warning", reason.clone()),
            Milestone::WaitingLong { detail } => ("WaitingTooLong", "Warning", detail.clone()),
            _ => return,
        };
        let client = match self.client().await {
            Ok(c) => c,
            Err(e) => {
                warn!("cannot publish the {reason} event: {e}");
                return;
            }
        };
        let now =
            k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(k8s_openapi::jiff::Timestamp::now());
        let stamp = now.0.as_nanosecond();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{pod}.{stamp:x}")),
                ..ObjectMeta::default()
            },
            event_time: Some(now),
            action: Some("Formation".into()),
            reason: Some(reason.into()),
            type_: Some(kind.into()),
            // The API server limits a note to 1 kB.
            note: Some(note.chars().take(1000).collect()),
            regarding: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.clone()),
                namespace: Some(self.ns().to_string()),
                uid: std::env::var("POD_UID").ok().filter(|v| !v.is_empty()),
                ..ObjectReference::default()
            }),
            reporting_controller: Some("muster.dev/formation".into()),
            reporting_instance: Some(pod),
            ..Event::default()
        };
        let api: Api<Event> = Api::namespaced(client, self.ns());
        let what = format!("publishing the {reason} event");
        match raw(&what, self.limit(), api.create(&PostParams::default(), &event)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if status_code(&e) == Some(403) => {
                warn!(
                    "{}; events are off from now on (or set cluster_formation.k8s.events = false)",
                    map(&what, EVENTS_CREATE, e)
                );
                self.events_denied.store(true, Ordering::Relaxed);
            }
            Ok(Err(e)) => warn!("{}", map(&what, EVENTS_CREATE, e)),
            Err(e) => warn!("{e}"),
        }
    }
}

/// `(start, replicas)` from a StatefulSet's spec (replicas default to 1, as the API's do).
fn ordinals_of(sts: StatefulSet) -> (u32, u32) {
    let spec = sts.spec.unwrap_or_default();
    let replicas = u32::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0);
    let start = spec
        .ordinals
        .and_then(|o| o.start)
        .and_then(|s| u32::try_from(s).ok())
        .unwrap_or(0);
    (start, replicas)
}

/// The endpoints of a slice, whatever the k8s-openapi version makes the field.
#[allow(clippy::needless_return)] // one of the two returns is compiled in
fn slice_endpoints(s: &EndpointSlice) -> &[Endpoint] {
    k8s_openapi::k8s_if_le_1_35! {
        return &s.endpoints;
    }
    k8s_openapi::k8s_if_ge_1_36! {
        return s.endpoints.as_deref().unwrap_or(&[]);
    }
}

#[async_trait]
impl Discovery for K8sBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn full_membership(&self) -> bool {
        self.r.settings.mode == Mode::Statefulset
    }

    async fn list(&self) -> Result<DiscoveryResult, DiscoveryError> {
        let client = self.client().await?;
        self.probe_lock_rights(&client).await;
        let mut result = match self.r.settings.mode {
            Mode::Statefulset => self.statefulset_nodes(&client).await?,
            Mode::Endpoints => self.endpoint_nodes(&client).await?,
        };
        if self.r.settings.fencing
            && let Some(id) = self.recorded(&client).await?
        {
            result = result
                .with_recorded_cluster(id)
                .with_fencing_hint(self.fencing_hint());
        }
        Ok(result)
    }

    async fn milestone(&self, m: &Milestone) {
        if self.r.settings.events && !self.events_denied.load(Ordering::Relaxed) {
            self.publish(m).await;
        }
    }

    fn formation_lock(&self) -> Option<&dyn FormationLock> {
        let on = self.r.settings.lock.wanted()
            && self.r.settings.fencing
            && !self.lock_denied.load(Ordering::Relaxed);
        on.then_some(self as &dyn FormationLock)
    }

    fn fencing(&self) -> Option<&dyn Fencing> {
        self.r.settings.fencing.then_some(self as &dyn Fencing)
    }

    async fn resolve_host(&self, host: &str) -> Option<Result<Vec<IpAddr>, DiscoveryError>> {
        if !self.r.settings.resolve_peers_via_api.wanted() || self.resolve_denied.load(Ordering::Relaxed) {
            return None;
        }
        // `<pod>.<service>.<namespace>.svc...`: only names of pods in this namespace.
        let mut labels = host.split('.');
        let pod = labels.next()?;
        let (_svc, ns) = (labels.next()?, labels.next()?);
        if ns != self.ns() {
            return None;
        }
        if let Some(ips) = self.addresses.fresh(pod) {
            return Some(Ok(ips));
        }
        let _turn = self.addresses.turn().await;
        if let Some(ips) = self.addresses.fresh(pod) {
            return Some(Ok(ips));
        }
        let client = match self.client().await {
            Ok(c) => c,
            Err(e) => return Some(Err(e)),
        };
        let api: Api<Pod> = Api::namespaced(client, self.ns());
        let what = format!("resolving {host} through pod {}/{pod}", self.ns());
        match raw(&what, self.limit(), api.get_opt(pod)).await {
            Err(e) => Some(Err(e)),
            Ok(Ok(None)) => Some(Err(DiscoveryError::new(
                NAME,
                ErrorKind::NotFound,
                format!("pod {}/{pod} does not exist", self.ns()),
            ))),
            Ok(Ok(Some(p))) => {
                let status = p.status.unwrap_or_default();
                let ips: Vec<IpAddr> = status
                    .pod_ips
                    .unwrap_or_default()
                    .into_iter()
                    .map(|i| i.ip)
                    .chain(status.pod_ip)
                    .filter_map(|ip| ip.parse().ok())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                if ips.is_empty() {
                    Some(Err(DiscoveryError::new(
                        NAME,
                        ErrorKind::Unavailable,
                        format!("pod {}/{pod} has no IP yet", self.ns()),
                    )))
                } else {
                    self.addresses.keep(pod, &ips);
                    Some(Ok(ips))
                }
            }
            Ok(Err(e))
                if status_code(&e) == Some(403) && !self.r.settings.resolve_peers_via_api.required() =>
            {
                warn!(
                    "the Role does not allow pods get (resolve_peers_via_api = \"auto\"): resolving peers \
                     with the system resolver"
                );
                self.resolve_denied.store(true, Ordering::Relaxed);
                None
            }
            Ok(Err(e)) => Some(Err(map(&what, PODS_GET, e))),
        }
    }
}

#[async_trait]
impl FormationLock for K8sBackend {
    async fn lock(&self, owner: &NodeName, wait: &LockWait) -> Result<Box<dyn LockGuard>, DiscoveryError> {
        let client = self.client().await?;
        let spot = self.lease_spot(&client);
        let identity = lease::identity(owner);
        Ok(Box::new(lease::acquire(&spot, &identity, wait).await?))
    }
}

#[async_trait]
impl Fencing for K8sBackend {
    /// Two requests: a GET of the Lease (another holder: `LockLost`), then a create of the
    /// ConfigMap, the commit point (409: read it back and compare). A Lease taken over between
    /// the two does not stop the create.
    async fn claim(&self, id: &ClusterId, lock: Option<&dyn LockGuard>) -> Result<(), ClaimError> {
        let client = self.client().await.map_err(ClaimError::Backend)?;
        if let Some(guard) = lock {
            let identity = String::from_utf8_lossy(guard.token()).into_owned();
            let spot = self.lease_spot(&client);
            if !lease::held_by(&spot, &identity)
                .await
                .map_err(ClaimError::Backend)?
            {
                return Err(ClaimError::LockLost);
            }
        }
        let api = self.fencing_spot(&client);
        let record = ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.r.fencing_name.clone()),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([
                (CLUSTER_ID_KEY.to_string(), id.to_string()),
                ("formed_by".to_string(), self.local.to_string()),
            ])),
            ..ConfigMap::default()
        };
        let what = format!(
            "recording the cluster id in ConfigMap {}/{}",
            self.ns(),
            self.r.fencing_name
        );
        match raw(&what, self.limit(), api.create(&PostParams::default(), &record)).await {
            Err(e) => Err(ClaimError::Backend(e)),
            Ok(Ok(_)) => {
                info!(
                    "recorded cluster {id} in ConfigMap {}/{}",
                    self.ns(),
                    self.r.fencing_name
                );
                Ok(())
            }
            Ok(Err(e)) if status_code(&e) == Some(409) => match self.recorded(&client).await {
                Ok(Some(theirs)) if theirs == *id => Ok(()),
                Ok(Some(theirs)) => Err(ClaimError::Taken(theirs)),
                Ok(None) => Err(ClaimError::Backend(DiscoveryError::new(
                    NAME,
                    ErrorKind::Other,
                    format!(
                        "ConfigMap {}/{} exists without a {CLUSTER_ID_KEY}",
                        self.ns(),
                        self.r.fencing_name
                    ),
                ))),
                Err(e) => Err(ClaimError::Backend(e)),
            },
            Ok(Err(e)) => Err(ClaimError::Backend(map(&what, CM_CREATE, e))),
        }
    }
}

/// Hosts of node names this backend lists are DNS names; an IP-named local node is allowed in
/// endpoints mode.
pub fn is_dns(name: &NodeName) -> bool {
    matches!(name.host(), Host::Dns(_))
}
