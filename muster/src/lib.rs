//! # muster
//!
//! Peer discovery and cluster formation for clustered services. This facade re-exports
//! [`muster_discovery_core`] and the backends compiled in with cargo features, and builds the
//! backend the configuration names:
//!
//! | feature | backend | crate |
//! |---|---|---|
//! | `classic` (default) | static list | `muster-backend-classic` |
//! | `etcd` | etcd: leases, lock, fencing (build needs `protoc`) | `muster-backend-etcd` |
//! | `dns` | DNS A/AAAA (+PTR) or SRV | `muster-backend-dns` |
//! | `k8s` | Kubernetes: StatefulSet ordinals or EndpointSlices, Lease lock, ConfigMap fencing (the final binary enables one `k8s-openapi` version feature, e.g. `v1_33`) | `muster-backend-k8s` |
//! | `consul` | Consul: TTL-checked registration, session lock, KV fencing | `muster-backend-consul` |
//! | `aws` | AWS: EC2 tags or autoscaling-group membership (desired capacity as the expected size), optional SSM fencing (aws-sdk-ec2 takes minutes to build) | `muster-backend-aws` |
//!
//! ```
//! use muster::{FormationConfig, NodeName};
//!
//! let config = FormationConfig::from_toml(r#"
//! [cluster_formation]
//! peer_discovery_backend = "classic"
//! [cluster_formation.classic_config]
//! nodes = ["muster@a", "muster@b", "muster@c"]
//! "#).unwrap();
//! let local: NodeName = "muster@a".parse().unwrap();
//! let backend = muster::build_backend(&config, &local).unwrap();
//! assert_eq!(backend.name(), "classic");
//! ```

#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

use std::fmt;
use std::sync::Arc;

pub use muster_discovery_core::*;

#[cfg(feature = "aws")]
pub use muster_backend_aws as aws;
#[cfg(feature = "classic")]
pub use muster_backend_classic as classic;
#[cfg(feature = "consul")]
pub use muster_backend_consul as consul;
#[cfg(feature = "dns")]
pub use muster_backend_dns as dns;
#[cfg(feature = "etcd")]
pub use muster_backend_etcd as etcd;
#[cfg(feature = "k8s")]
pub use muster_backend_k8s as k8s;

/// Every backend Muster knows, compiled in or not.
pub const BACKENDS: &[&str] = &["classic", "dns", "k8s", "aws", "consul", "etcd"];

/// Why no backend could be built.
#[derive(Debug)]
#[non_exhaustive]
pub enum BuildError {
    /// The backend exists but this build does not include it.
    NotCompiled(&'static str),
    /// No backend has that name.
    Unknown {
        /// The configured name.
        name: String,
        /// The closest known name, if any.
        suggestion: Option<&'static str>,
    },
    /// The backend's settings are invalid.
    Config(ConfigError),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::NotCompiled(name) => {
                write!(
                    f,
                    "backend '{name}' is not compiled in; rebuild with --features {name}"
                )
            }
            BuildError::Unknown { name, suggestion } => {
                write!(
                    f,
                    "unknown backend '{name}' in cluster_formation.peer_discovery_backend"
                )?;
                if let Some(s) = suggestion {
                    write!(f, "; did you mean '{s}'?")?;
                }
                write!(f, " (known backends: {})", BACKENDS.join(", "))
            }
            BuildError::Config(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for BuildError {}

impl From<ConfigError> for BuildError {
    fn from(e: ConfigError) -> Self {
        BuildError::Config(e)
    }
}

/// The backends this build can construct.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut v = Vec::new();
    if cfg!(feature = "classic") {
        v.push("classic");
    }
    if cfg!(feature = "dns") {
        v.push("dns");
    }
    if cfg!(feature = "etcd") {
        v.push("etcd");
    }
    if cfg!(feature = "k8s") {
        v.push("k8s");
    }
    if cfg!(feature = "aws") {
        v.push("aws");
    }
    if cfg!(feature = "consul") {
        v.push("consul");
    }
    v
}

/// Checks the keys of every backend table in `config`, the selected backend's and the others':
/// a typo in `[cluster_formation.dns]` is named even while the classic backend runs, so that a
/// later switch of backend does not meet it first. Returns the tables this build cannot check
/// (their backend is not compiled in), for the caller to mention.
pub fn check_backend_tables(config: &FormationConfig) -> Result<Vec<&'static str>, ConfigError> {
    let mut unchecked = Vec::new();
    let tables: [(&'static str, &str, bool); 6] = [
        ("classic", "classic_config", config.classic_config.is_some()),
        ("dns", "dns", config.dns.is_some()),
        ("k8s", "k8s", config.k8s.is_some()),
        ("aws", "aws", config.aws.is_some()),
        ("consul", "consul", config.consul.is_some()),
        ("etcd", "etcd", config.etcd.is_some()),
    ];
    for (backend, table, present) in tables {
        if !present {
            continue;
        }
        match backend {
            #[cfg(feature = "classic")]
            "classic" => drop(config.backend_settings::<classic::ClassicSettings>(table)?),
            #[cfg(feature = "dns")]
            "dns" => drop(config.backend_settings::<dns::DnsSettings>(table)?),
            #[cfg(feature = "k8s")]
            "k8s" => drop(config.backend_settings::<k8s::settings::K8sSettings>(table)?),
            #[cfg(feature = "aws")]
            "aws" => drop(config.backend_settings::<aws::settings::AwsSettings>(table)?),
            #[cfg(feature = "consul")]
            "consul" => drop(config.backend_settings::<consul::settings::ConsulSettings>(table)?),
            #[cfg(feature = "etcd")]
            "etcd" => drop(config.backend_settings::<etcd::EtcdSettings>(table)?),
            other => unchecked.push(other),
        }
    }
    Ok(unchecked)
}

/// Maps RabbitMQ's aliases (`classic_config`, `config`, `kubernetes`) to Muster's names.
fn canonical(name: &str) -> Option<&'static str> {
    let lower = name.trim().to_ascii_lowercase();
    let name = match lower.as_str() {
        "classic_config" | "config" => "classic",
        "kubernetes" => "k8s",
        other => other,
    };
    BACKENDS.iter().copied().find(|b| *b == name)
}

/// Builds the backend named by `cluster_formation.peer_discovery_backend` for node `local`.
pub fn build_backend(config: &FormationConfig, local: &NodeName) -> Result<Arc<dyn Discovery>, BuildError> {
    let name = &config.peer_discovery_backend;
    let Some(backend) = canonical(name) else {
        return Err(BuildError::Unknown {
            name: name.clone(),
            suggestion: config::closest(&name.to_ascii_lowercase(), BACKENDS.iter().copied()),
        });
    };
    match backend {
        #[cfg(feature = "classic")]
        "classic" => Ok(Arc::new(classic::ClassicBackend::from_config(config, local)?)),
        #[cfg(feature = "dns")]
        "dns" => Ok(Arc::new(dns::DnsBackend::from_config(config, local)?)),
        #[cfg(feature = "k8s")]
        "k8s" => Ok(Arc::new(k8s::K8sBackend::from_config(config, local)?)),
        #[cfg(feature = "aws")]
        "aws" => Ok(Arc::new(aws::AwsBackend::from_config(config, local)?)),
        #[cfg(feature = "consul")]
        "consul" => Ok(Arc::new(
            consul::ConsulBackend::from_config(config, local)
                .map_err(|e| BuildError::Config(ConfigError::new(None, e.to_string())))?,
        )),
        #[cfg(feature = "etcd")]
        "etcd" => Ok(Arc::new(etcd::EtcdBackend::from_config(config, local)?)),
        other => {
            let _ = local;
            Err(BuildError::NotCompiled(other))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(backend: &str) -> FormationConfig {
        FormationConfig {
            peer_discovery_backend: backend.to_string(),
            ..FormationConfig::default()
        }
    }

    fn local() -> NodeName {
        "muster@a".parse().unwrap()
    }

    #[test]
    #[cfg(feature = "classic")]
    fn builds_classic_and_its_rabbitmq_aliases() {
        for name in ["classic", "classic_config", "config", "Classic"] {
            assert_eq!(
                build_backend(&cfg(name), &local()).unwrap().name(),
                "classic",
                "{name}"
            );
        }
    }

    #[test]
    #[cfg(not(feature = "k8s"))]
    fn a_known_backend_not_compiled_in_says_how_to_get_it() {
        let e = build_backend(&cfg("kubernetes"), &local())
            .err()
            .unwrap()
            .to_string();
        assert_eq!(e, "backend 'k8s' is not compiled in; rebuild with --features k8s");
        if !cfg!(feature = "etcd") {
            let e = build_backend(&cfg("etcd"), &local()).err().unwrap().to_string();
            assert_eq!(
                e,
                "backend 'etcd' is not compiled in; rebuild with --features etcd"
            );
        }
    }

    #[test]
    #[cfg(feature = "etcd")]
    fn builds_etcd_from_its_table_and_names_a_missing_key() {
        let c = FormationConfig::from_toml(
            "[cluster_formation]\npeer_discovery_backend = \"etcd\"\n[cluster_formation.etcd]\nendpoints = [\"127.0.0.1:2379\"]\n",
        )
        .unwrap();
        let b = build_backend(&c, &local()).unwrap();
        assert_eq!(b.name(), "etcd");
        assert!(b.capabilities().locking && b.capabilities().fencing && b.capabilities().full_membership);
        let e = build_backend(&cfg("etcd"), &local()).err().unwrap().to_string();
        assert!(e.contains("cluster_formation.etcd.endpoints is required"), "{e}");
    }

    #[test]
    fn an_unknown_backend_suggests_the_closest() {
        let e = build_backend(&cfg("etdc"), &local()).err().unwrap().to_string();
        assert!(e.contains("unknown backend 'etdc'"), "{e}");
        assert!(e.contains("did you mean 'etcd'?"), "{e}");
        let e = build_backend(&cfg("zookeeper"), &local())
            .err()
            .unwrap()
            .to_string();
        assert!(!e.contains("did you mean"), "{e}");
        assert!(
            e.contains("known backends: classic, dns, k8s, aws, consul, etcd"),
            "{e}"
        );
    }

    #[test]
    #[cfg(feature = "classic")]
    fn backend_config_errors_pass_through() {
        let c =
            FormationConfig::from_toml("[cluster_formation.classic_config]\nnodes = [\"bad\"]\n").unwrap();
        let e = build_backend(&c, &local()).err().unwrap().to_string();
        assert!(e.contains("invalid node name \"bad\""), "{e}");
    }
}
