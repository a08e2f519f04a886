//! `[cluster_formation.k8s]`.

use std::path::PathBuf;
use std::time::Duration;

use muster_discovery_core::config::{Bound, ConfigError, check_bounds, duration};
use muster_discovery_core::{FormationConfig, NodeName};
use serde::Deserialize;

/// Where the candidates come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The StatefulSet's pods by ordinal: authoritative, the lowest ordinal is the seed.
    Statefulset,
    /// The Service's EndpointSlices, ready or not: not authoritative.
    Endpoints,
}

/// How an endpoint becomes a node name in `endpoints` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressType {
    /// `prefix@<ip>:<port>`.
    Ip,
    /// `prefix@<hostname><hostname_suffix>:<port>` (StatefulSet pods behind a headless Service).
    Hostname,
}

/// How the backend reaches the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApiSource {
    /// The pod's service account (`KUBERNETES_SERVICE_HOST`/`_PORT`, the token file re-read
    /// as it rotates).
    InCluster,
    /// A kubeconfig file (`kubeconfig`, `context`): for running outside the cluster.
    Kubeconfig,
}

/// A feature that is on (`true`), off (`false`), or on when the Role allows it (`"auto"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toggle {
    /// `true`: on, and a permission error is reported.
    On,
    /// `false`.
    Off,
    /// `"auto"`: on when the Role allows it (found out at the first call).
    Auto,
}

impl<'de> Deserialize<'de> for Toggle {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(d) {
            Ok(Raw::Bool(true)) => Ok(Toggle::On),
            Ok(Raw::Bool(false)) => Ok(Toggle::Off),
            Ok(Raw::Text(t)) if t == "auto" => Ok(Toggle::Auto),
            Ok(Raw::Text(t)) => Err(serde::de::Error::custom(format!(
                "invalid value {t:?}: expected true, false or \"auto\""
            ))),
            Err(_) => Err(serde::de::Error::custom("expected true, false or \"auto\"")),
        }
    }
}

impl Toggle {
    /// Off only when explicitly `false`.
    pub fn wanted(self) -> bool {
        self != Toggle::Off
    }

    /// True when a permission error must be reported rather than falling back.
    pub fn required(self) -> bool {
        self == Toggle::On
    }
}

/// The Kubernetes backend's settings. Every key changes behaviour (tests prove it).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct K8sSettings {
    /// `statefulset` (default) or `endpoints`.
    pub mode: Mode,
    /// The StatefulSet (default: the local pod's name without its `-<ordinal>`).
    pub statefulset: Option<String>,
    /// The headless Service the pods are named under (statefulset mode) or whose EndpointSlices
    /// are listed (endpoints mode). Default: the second label of the local node's host
    /// (`<pod>.<service>.<namespace>.svc.<domain>`).
    pub service: Option<String>,
    /// The namespace (default: `POD_NAMESPACE`, then the service-account namespace file; never
    /// a silent `default`).
    pub namespace: Option<String>,
    /// The cluster's DNS domain.
    pub cluster_domain: String,
    /// The StatefulSet's replicas, instead of reading them from the API (no RBAC needed).
    pub replicas: Option<u32>,
    /// The first ordinal when `replicas` is set (the StatefulSet's `spec.ordinals.start`).
    pub ordinals_start: u32,
    /// Endpoints mode: `ip` or `hostname`.
    pub address_type: AddressType,
    /// Endpoints mode with `address_type = "hostname"`: appended to each endpoint's hostname
    /// (e.g. `.muster-nodes.prod.svc.cluster.local`).
    pub hostname_suffix: String,
    /// `in-cluster` (default) or `kubeconfig`.
    pub api: ApiSource,
    /// The kubeconfig file (`api = "kubeconfig"`; default `$KUBECONFIG`, then `~/.kube/config`).
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context).
    pub context: Option<String>,
    /// The limit on every API call (kube's own retries are off: the engine retries).
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// The formation Lease: `true`, `false`, or `"auto"` (on when the Role allows it).
    pub lock: Toggle,
    /// The Lease's name (default `<statefulset or service>-muster-formation`).
    pub lease_name: Option<String>,
    /// How long a Lease holder that stopped renewing keeps it (renewed every third of it).
    #[serde(with = "duration")]
    pub lease_duration: Duration,
    /// Fencing through a ConfigMap that records the cluster id: on unless `false`.
    pub fencing: bool,
    /// The ConfigMap's name (default `<statefulset or service>-muster-cluster`).
    pub fencing_name: Option<String>,
    /// Resolve peers to their pods' `status.podIP` through the API: `true`, `false` or `"auto"`
    /// (when the Role allows `pods get`; else the system resolver).
    pub resolve_peers_via_api: Toggle,
    /// Kubernetes Events on the node's pod (formed, joined, refused, failed, waiting long).
    pub events: bool,
}

impl Default for K8sSettings {
    fn default() -> Self {
        K8sSettings {
            mode: Mode::Statefulset,
            statefulset: None,
            service: None,
            namespace: None,
            cluster_domain: "cluster.local".into(),
            replicas: None,
            ordinals_start: 0,
            address_type: AddressType::Ip,
            hostname_suffix: String::new(),
            api: ApiSource::InCluster,
            kubeconfig: None,
            context: None,
            request_timeout: Duration::from_secs(5),
            lock: Toggle::Auto,
            lease_name: None,
            lease_duration: Duration::from_secs(15),
            fencing: true,
            fencing_name: None,
            resolve_peers_via_api: Toggle::Auto,
            events: true,
        }
    }
}

const T: &str = "cluster_formation.k8s";

/// The service-account namespace file in a pod.
pub const NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::new(Some(format!("{T}.{key}")), message)
}

/// A DNS-1123 label: what Kubernetes accepts as a StatefulSet, Service or Lease name part.
fn check_name(key: &str, v: &str) -> Result<(), ConfigError> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(err(
            key,
            format!("{T}.{key} = {v:?} is not a Kubernetes name (1-63 lower-case letters, digits and '-')"),
        ))
    }
}

/// The settings with every default resolved for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedK8s {
    /// The settings as written.
    pub settings: K8sSettings,
    /// The namespace.
    pub namespace: String,
    /// The StatefulSet (statefulset mode; in endpoints mode, the one whose replicas raise the
    /// size hint, when known).
    pub statefulset: Option<String>,
    /// The Service.
    pub service: String,
    /// The Lease's name.
    pub lease_name: String,
    /// The fencing ConfigMap's name.
    pub fencing_name: String,
    /// The node-name prefix and port every candidate shares with the local node.
    pub prefix: String,
    /// The port, when the local name has one.
    pub port: Option<u16>,
}

impl K8sSettings {
    /// Reads and validates `[cluster_formation.k8s]` for node `local`, with the namespace
    /// taken from `env_namespace` (`POD_NAMESPACE`) or `namespace_file` when not configured.
    pub fn resolve(
        config: &FormationConfig,
        local: &NodeName,
        env_namespace: Option<String>,
        namespace_file: &std::path::Path,
    ) -> Result<ResolvedK8s, ConfigError> {
        let s: K8sSettings = config.backend_settings("k8s")?;
        check_bounds(T, &s, BOUNDS)?;
        if s.lease_duration <= s.request_timeout * 2 {
            return Err(err(
                "lease_duration",
                format!(
                    "{T}.lease_duration ({:?}) must be more than twice request_timeout ({:?}), so that a \
                     renewal can fail once and still land before the Lease expires",
                    s.lease_duration, s.request_timeout
                ),
            ));
        }
        if s.replicas == Some(0) {
            return Err(err(
                "replicas",
                format!("{T}.replicas = 0: at least one pod is needed"),
            ));
        }
        if s.api == ApiSource::InCluster && (s.kubeconfig.is_some() || s.context.is_some()) {
            return Err(err(
                "kubeconfig",
                format!("{T}.kubeconfig and context apply only with api = \"kubeconfig\""),
            ));
        }
        let labels: Vec<&str> = match local.host() {
            muster_discovery_core::Host::Dns(h) => h.split('.').collect(),
            _ => Vec::new(),
        };
        let namespace = namespace(&s, env_namespace, namespace_file)?;
        check_name("namespace", &namespace)?;
        let service = match (&s.service, labels.get(1)) {
            (Some(svc), _) => svc.clone(),
            (None, Some(second)) if labels.len() >= 3 => second.to_string(),
            _ => {
                return Err(err(
                    "service",
                    format!(
                        "{T}.service is required: the local node {local} is not named \
                         <pod>.<service>.<namespace>.svc.<domain>"
                    ),
                ));
            }
        };
        check_name("service", &service)?;
        let statefulset = statefulset(&s, labels.first().copied(), local)?;
        let base = statefulset.clone().unwrap_or_else(|| service.clone());
        let lease_name = s
            .lease_name
            .clone()
            .unwrap_or_else(|| format!("{base}-muster-formation"));
        check_name("lease_name", &lease_name)?;
        let fencing_name = s
            .fencing_name
            .clone()
            .unwrap_or_else(|| format!("{base}-muster-cluster"));
        check_name("fencing_name", &fencing_name)?;
        Ok(ResolvedK8s {
            namespace,
            statefulset,
            service,
            lease_name,
            fencing_name,
            prefix: local.prefix().to_string(),
            port: local.port(),
            settings: s,
        })
    }
}

/// The allowed range of every duration key.
const BOUNDS: &[Bound<K8sSettings>] = &[
    Bound::duration(
        "request_timeout",
        |s| s.request_timeout,
        Duration::from_millis(100),
        Duration::from_secs(120),
    ),
    Bound::duration(
        "lease_duration",
        |s| s.lease_duration,
        Duration::from_secs(1),
        Duration::from_secs(3600),
    ),
];

/// The namespace: the setting, else `POD_NAMESPACE` (`env_namespace`), else the service
/// account's namespace file.
fn namespace(
    s: &K8sSettings,
    env_namespace: Option<String>,
    namespace_file: &std::path::Path,
) -> Result<String, ConfigError> {
    if let Some(ns) = s.namespace.clone().or(env_namespace.filter(|v| !v.is_empty())) {
        return Ok(ns);
    }
    std::fs::read_to_string(namespace_file)
        .map(|t| t.trim().to_string())
        .ok()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            err(
                "namespace",
                format!(
                    "no namespace: set {T}.namespace, or POD_NAMESPACE (downward API: \
                     fieldRef metadata.namespace); {} is not readable",
                    namespace_file.display()
                ),
            )
        })
}

/// The StatefulSet: the setting, else the local pod's name without its ordinal; required (and
/// checked) in StatefulSet mode.
fn statefulset(s: &K8sSettings, pod: Option<&str>, local: &NodeName) -> Result<Option<String>, ConfigError> {
    let statefulset = match (&s.statefulset, pod) {
        (Some(sts), _) => Some(sts.clone()),
        (None, Some(pod)) => pod
            .rsplit_once('-')
            .filter(|(_, ordinal)| !ordinal.is_empty() && ordinal.bytes().all(|b| b.is_ascii_digit()))
            .map(|(sts, _)| sts.to_string()),
        (None, None) => None,
    };
    if s.mode == Mode::Statefulset {
        let Some(sts) = &statefulset else {
            return Err(err(
                "statefulset",
                format!(
                    "{T}.statefulset is required: the local node {local} is not named after a \
                     StatefulSet pod (<statefulset>-<ordinal>.<service>...)"
                ),
            ));
        };
        check_name("statefulset", sts)?;
    }
    Ok(statefulset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(table: &str, local: &str, env: Option<&str>) -> Result<ResolvedK8s, String> {
        let cfg = FormationConfig::from_toml(&format!(
            "[cluster_formation]\npeer_discovery_backend = \"k8s\"\n[cluster_formation.k8s]\n{table}"
        ))
        .map_err(|e| e.to_string())?;
        K8sSettings::resolve(
            &cfg,
            &local.parse().unwrap(),
            env.map(String::from),
            std::path::Path::new("/nonexistent/namespace"),
        )
        .map_err(|e| e.to_string())
    }

    const POD: &str = "muster@muster-2.muster-nodes.prod.svc.cluster.local:4370";

    #[test]
    fn defaults_come_from_the_pod_name_and_the_environment() {
        let r = resolve("", POD, Some("prod")).unwrap();
        assert_eq!(r.namespace, "prod");
        assert_eq!(r.statefulset.as_deref(), Some("muster"));
        assert_eq!(r.service, "muster-nodes");
        assert_eq!(r.lease_name, "muster-muster-formation");
        assert_eq!(r.fencing_name, "muster-muster-cluster");
        assert_eq!((r.prefix.as_str(), r.port), ("muster", Some(4370)));
    }

    #[test]
    fn the_service_account_namespace_file_is_the_last_resort() {
        let dir = std::env::temp_dir().join(format!("muster-ns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("namespace");
        std::fs::write(&file, "from-file\n").unwrap();
        let cfg =
            FormationConfig::from_toml("[cluster_formation]\npeer_discovery_backend = \"k8s\"\n").unwrap();
        let r = K8sSettings::resolve(&cfg, &POD.parse().unwrap(), None, &file).unwrap();
        assert_eq!(r.namespace, "from-file");
        let r = K8sSettings::resolve(&cfg, &POD.parse().unwrap(), Some("env".into()), &file).unwrap();
        assert_eq!(r.namespace, "env", "POD_NAMESPACE comes before the file");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_namespace_is_never_a_silent_default() {
        let e = resolve("", POD, None).unwrap_err();
        assert!(e.contains("no namespace") && e.contains("POD_NAMESPACE"), "{e}");
        let r = resolve("namespace = \"other\"", POD, Some("prod")).unwrap();
        assert_eq!(r.namespace, "other", "the config wins over the environment");
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = resolve("mode = \"pods\"", POD, Some("p")).unwrap_err();
        assert!(
            e.contains("cluster_formation.k8s.mode") && e.contains("statefulset"),
            "{e}"
        );
        let e = resolve("statefulset = \"Bad_Name\"", POD, Some("p")).unwrap_err();
        assert!(e.contains("cluster_formation.k8s.statefulset"), "{e}");
        let e = resolve("lease_duration = \"2s\"", POD, Some("p")).unwrap_err();
        assert!(e.contains("more than twice request_timeout"), "{e}");
        let e = resolve("replicas = 0", POD, Some("p")).unwrap_err();
        assert!(e.contains("replicas = 0"), "{e}");
        let e = resolve("lock = \"sometimes\"", POD, Some("p")).unwrap_err();
        assert!(e.contains("cluster_formation.k8s.lock"), "{e}");
        let e = resolve("kubeconfig = \"/x\"", POD, Some("p")).unwrap_err();
        assert!(e.contains("only with api = \"kubeconfig\""), "{e}");
        let e = resolve("", "muster@10.0.0.1", Some("p")).unwrap_err();
        assert!(e.contains("cluster_formation.k8s.service is required"), "{e}");
        let e = resolve("service = \"svc\"", "muster@10.0.0.1", Some("p")).unwrap_err();
        assert!(e.contains("cluster_formation.k8s.statefulset is required"), "{e}");
        assert!(
            resolve(
                "service = \"svc\"\nmode = \"endpoints\"",
                "muster@10.0.0.1",
                Some("p")
            )
            .is_ok()
        );
    }

    #[test]
    fn toggles_read_true_false_and_auto() {
        for (text, wanted, required) in [
            ("true", true, true),
            ("false", false, false),
            ("\"auto\"", true, false),
        ] {
            let r = resolve(&format!("lock = {text}"), POD, Some("p")).unwrap();
            assert_eq!(
                (r.settings.lock.wanted(), r.settings.lock.required()),
                (wanted, required),
                "{text}"
            );
        }
    }
}
