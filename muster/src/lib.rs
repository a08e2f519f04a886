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

/// Lists every backend Muster knows, one line each: `"name" (table "t", aliases "a" …) =>
/// module: crate`. The backend's cargo feature is its name; when it is on, the crate is
/// re-exported as `module` and its factory registered. The table and aliases are written here
/// too, so that a backend not compiled in is still recognised by them (a test checks that they
/// agree with the compiled factories).
macro_rules! backends {
    ($($name:literal (table $table:literal $(, aliases $($alias:literal)+)?) => $module:ident: $krate:ident),* $(,)?) => {
        $(
            #[cfg(feature = $name)]
            pub use $krate as $module;
        )*

        /// Every backend Muster knows, compiled in or not.
        pub const BACKENDS: &[&str] = &[$($name),*];

        /// Every backend Muster knows, with its factory when compiled in.
        const REGISTRY: &[Known] = &[$(
            Known {
                name: $name,
                table: $table,
                aliases: &[$($($alias),+)?],
                factory: {
                    #[cfg(feature = $name)]
                    {
                        Some($module::FACTORY)
                    }
                    #[cfg(not(feature = $name))]
                    {
                        None
                    }
                },
            },
        )*];
    };
}

/// A backend Muster knows: its names and table, and its factory when compiled in.
struct Known {
    name: &'static str,
    table: &'static str,
    aliases: &'static [&'static str],
    factory: Option<BackendFactory>,
}

backends! {
    "classic" (table "classic_config", aliases "classic_config" "config") => classic: muster_backend_classic,
    "dns" (table "dns") => dns: muster_backend_dns,
    "k8s" (table "k8s", aliases "kubernetes") => k8s: muster_backend_k8s,
    "aws" (table "aws") => aws: muster_backend_aws,
    "consul" (table "consul") => consul: muster_backend_consul,
    "etcd" (table "etcd") => etcd: muster_backend_etcd,
}

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

/// The factories of the backends compiled into this build.
fn factories() -> impl Iterator<Item = &'static BackendFactory> {
    REGISTRY.iter().filter_map(|k| k.factory.as_ref())
}

/// The backends this build can construct.
pub fn compiled_backends() -> Vec<&'static str> {
    factories().map(|f| f.name).collect()
}

/// Checks every backend table in `config`, the selected backend's and the others': a typo in
/// `[cluster_formation.dns]` is named even while the classic backend runs, so that a later
/// switch of backend does not meet it first, and a table no backend reads is refused with the
/// closest table name. Returns the tables this build cannot check (their backend is known, not
/// compiled in), for the caller to mention.
pub fn check_backend_tables(config: &FormationConfig) -> Result<Vec<&'static str>, ConfigError> {
    check_tables(REGISTRY, config)
}

/// [`check_backend_tables`] against the backends of `registry`.
fn check_tables(registry: &[Known], config: &FormationConfig) -> Result<Vec<&'static str>, ConfigError> {
    let mut unchecked = Vec::new();
    for table in config.backend_tables.keys() {
        match registry.iter().find(|k| k.table == table.as_str()) {
            Some(Known { factory: Some(f), .. }) => (f.check)(config)?,
            Some(known) => unchecked.push(known.table),
            None => return Err(unknown_table(table)),
        }
    }
    Ok(unchecked)
}

/// A table under `[cluster_formation]` that neither the core nor a backend reads.
fn unknown_table(table: &str) -> ConfigError {
    let key = format!("cluster_formation.{table}");
    let tables: Vec<&str> = REGISTRY.iter().map(|k| k.table).collect();
    let mut message = format!("unknown table `[{key}]`");
    if let Some(best) = config::closest(table, tables.iter().copied()) {
        message.push_str(&format!("; did you mean `[cluster_formation.{best}]`?"));
    }
    message.push_str(&format!(" (backend tables: {})", tables.join(", ")));
    ConfigError::new(Some(key), message)
}

/// Builds the backend named by `cluster_formation.peer_discovery_backend` for node `local`.
pub fn build_backend(config: &FormationConfig, local: &NodeName) -> Result<Arc<dyn Discovery>, BuildError> {
    let name = &config.peer_discovery_backend;
    match REGISTRY
        .iter()
        .find(|k| registry::answers_to(k.name, k.aliases, name))
    {
        Some(Known { factory: Some(f), .. }) => Ok((f.build)(config, local)?),
        Some(known) => Err(BuildError::NotCompiled(known.name)),
        None => Err(BuildError::Unknown {
            name: name.clone(),
            suggestion: config::closest(&name.trim().to_ascii_lowercase(), BACKENDS.iter().copied()),
        }),
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
        for name in ["k8s", "kubernetes"] {
            let e = build_backend(&cfg(name), &local()).err().unwrap().to_string();
            assert_eq!(e, "backend 'k8s' is not compiled in; rebuild with --features k8s");
        }
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
    fn each_registered_factory_agrees_with_its_registry_line_and_reads_its_own_table() {
        for known in REGISTRY {
            let Some(f) = &known.factory else { continue };
            let name = known.name;
            assert_eq!((f.name, f.table, f.aliases), (name, known.table, known.aliases));
            assert!(f.answers_to(&name.to_uppercase()), "{name}");
            let c =
                FormationConfig::from_toml(&format!("[cluster_formation.{}]\nno_such_key = 1\n", f.table))
                    .unwrap();
            let e = check_backend_tables(&c).unwrap_err().to_string();
            assert!(
                e.contains(&format!("cluster_formation.{}.no_such_key", f.table)),
                "{name}: {e}"
            );
        }
    }

    /// The caller is given the table, which is not always the backend's name.
    #[test]
    fn the_tables_of_backends_not_compiled_in_are_returned_unchecked() {
        let registry: Vec<Known> = REGISTRY.iter().map(|k| Known { factory: None, ..*k }).collect();
        let c = FormationConfig::from_toml(
            "[cluster_formation.etcd]\nendpoints = []\n[cluster_formation.classic_config]\nnodes = []\n",
        )
        .unwrap();
        let mut unchecked = check_tables(&registry, &c).unwrap();
        unchecked.sort_unstable();
        assert_eq!(unchecked, ["classic_config", "etcd"]);
    }

    /// A backend's name is not its table when the two differ, compiled in or not.
    #[test]
    fn a_backend_name_used_as_a_table_it_is_not_is_refused() {
        for table in ["classic", "dns_config"] {
            let c = FormationConfig::from_toml(&format!("[cluster_formation.{table}]\nx = 1\n")).unwrap();
            let e = check_backend_tables(&c).unwrap_err().to_string();
            assert!(
                e.contains(&format!("unknown table `[cluster_formation.{table}]`")),
                "{e}"
            );
            assert!(e.contains("(backend tables: classic_config, dns, k8s,"), "{e}");
        }
    }

    #[test]
    fn a_table_no_backend_reads_is_refused_with_the_closest_table() {
        let c = FormationConfig::from_toml("[cluster_formation.etdc]\nendpoints = []\n").unwrap();
        let e = check_backend_tables(&c).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("cluster_formation.etdc"));
        let e = e.to_string();
        assert!(e.contains("unknown table `[cluster_formation.etdc]`"), "{e}");
        assert!(e.contains("did you mean `[cluster_formation.etcd]`?"), "{e}");
        let listed = e.split("(backend tables: ").nth(1).unwrap().trim_end_matches(')');
        let tables: Vec<&str> = listed.split(", ").collect();
        assert_eq!(tables.len(), BACKENDS.len(), "each backend's table once: {e}");
        assert!(tables.contains(&"etcd"), "{e}");
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
