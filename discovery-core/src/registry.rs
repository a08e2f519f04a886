//! How a backend is made from configuration. Each backend crate exports one [`BackendFactory`];
//! the facade lists the factories compiled in and builds the one the configuration names, so a
//! new backend touches its own crate and that list, never the core.

use std::fmt;
use std::sync::Arc;

use crate::config::{ConfigError, FormationConfig};
use crate::discovery::Discovery;
use crate::node_name::NodeName;

/// Builds a backend for node `local` from the configuration.
pub type BuildFn = fn(&FormationConfig, &NodeName) -> Result<Arc<dyn Discovery>, ConfigError>;

/// One backend: the names it answers to, its table under `[cluster_formation]`, how its settings
/// are checked and how it is built.
#[derive(Clone, Copy)]
pub struct BackendFactory {
    /// The name `cluster_formation.peer_discovery_backend` selects it by.
    pub name: &'static str,
    /// Other names accepted for it (RabbitMQ's, so that a RabbitMQ config reads the same).
    pub aliases: &'static [&'static str],
    /// Its table: `[cluster_formation.<table>]`.
    pub table: &'static str,
    /// Parses its table into its typed settings and checks them, building nothing: a typo in
    /// a table is named even while another backend runs.
    pub check: fn(&FormationConfig) -> Result<(), ConfigError>,
    /// Builds it for node `local`.
    pub build: BuildFn,
}

impl BackendFactory {
    /// True when `name` (any case, surrounding blanks ignored) selects this backend.
    pub fn answers_to(&self, name: &str) -> bool {
        answers_to(self.name, self.aliases, name)
    }
}

/// True when `given` (any case, surrounding blanks ignored) is `name` or one of `aliases`: how
/// a configured backend name is matched, for a backend compiled in or only known by name.
pub fn answers_to(name: &str, aliases: &[&str], given: &str) -> bool {
    let given = given.trim();
    std::iter::once(name)
        .chain(aliases.iter().copied())
        .any(|n| n.eq_ignore_ascii_case(given))
}

impl fmt::Debug for BackendFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendFactory")
            .field("name", &self.name)
            .field("aliases", &self.aliases)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}
