//! # muster-backend-classic
//!
//! The classic backend: a static node list from config (RabbitMQ's `classic_config`). The list is
//! authoritative — every node is expected to have the same one — so it can drive cleanup, and the
//! lowest listed node is the formation seed.
//!
//! ```toml
//! [cluster_formation]
//! peer_discovery_backend = "classic"
//!
//! [cluster_formation.classic_config]
//! nodes = ["muster@rpi-master", "muster@rpi-node1", "muster@rpi-node2"]
//! ```

// No panics on input from the network, a file or the environment.
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

use std::collections::BTreeSet;

use async_trait::async_trait;
use muster_discovery_core::{
    ConfigError, Discovery, DiscoveryError, DiscoveryResult, FormationConfig, NodeName,
};
use serde::Deserialize;
use tracing::warn;

/// The backend's name in config and logs.
pub const NAME: &str = "classic";

/// How the facade checks `[cluster_formation.classic_config]` and builds this backend.
pub const FACTORY: muster_discovery_core::BackendFactory = muster_discovery_core::BackendFactory {
    name: NAME,
    aliases: &["classic_config", "config"],
    table: "classic_config",
    check: |config| {
        config
            .backend_settings::<ClassicSettings>("classic_config")
            .map(drop)
    },
    build: |config, local| Ok(std::sync::Arc::new(ClassicBackend::from_config(config, local)?)),
};

/// `[cluster_formation.classic_config]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassicSettings {
    /// Every node of the cluster, this one included.
    pub nodes: Vec<NodeName>,
}

/// A static list of nodes.
#[derive(Debug, Clone)]
pub struct ClassicBackend {
    nodes: Vec<NodeName>,
    warnings: Vec<String>,
}

impl ClassicBackend {
    /// A backend for `local` with the configured `nodes`. Duplicates are dropped and a missing
    /// local node is added; both are logged as warnings, because peers with the same list would
    /// not know about the local node.
    pub fn new(local: &NodeName, nodes: Vec<NodeName>) -> Self {
        let mut warnings = Vec::new();
        let mut seen = BTreeSet::new();
        let mut dups = BTreeSet::new();
        for node in &nodes {
            if !seen.insert(node.clone()) {
                dups.insert(node.to_string());
            }
        }
        if !dups.is_empty() {
            warnings.push(format!(
                "cluster_formation.classic_config.nodes lists {} more than once; duplicates are ignored",
                dups.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
        if !seen.contains(local) {
            warnings.push(format!(
                "cluster_formation.classic_config.nodes does not list this node ({local}); it is added \
                 here, but peers with the same list will not know about it — add it to every node's list"
            ));
            seen.insert(local.clone());
        }
        for w in &warnings {
            warn!(node = %local, "{w}");
        }
        ClassicBackend {
            nodes: seen.into_iter().collect(),
            warnings,
        }
    }

    /// Builds the backend from `[cluster_formation.classic_config]`.
    pub fn from_config(config: &FormationConfig, local: &NodeName) -> Result<Self, ConfigError> {
        let settings: ClassicSettings = config.backend_settings("classic_config")?;
        Ok(Self::new(local, settings.nodes))
    }

    /// The nodes this backend lists (sorted, de-duplicated, local node included).
    pub fn nodes(&self) -> &[NodeName] {
        &self.nodes
    }

    /// The warnings raised while reading the list.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }
}

#[async_trait]
impl Discovery for ClassicBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn full_membership(&self) -> bool {
        true
    }

    async fn list(&self) -> Result<DiscoveryResult, DiscoveryError> {
        Ok(DiscoveryResult::new(self.nodes.clone(), true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeName {
        s.parse().unwrap()
    }

    fn cfg(text: &str) -> FormationConfig {
        FormationConfig::from_toml(text).unwrap()
    }

    #[tokio::test]
    async fn lists_the_configured_nodes_authoritatively() {
        let c = cfg("[cluster_formation.classic_config]\nnodes = [\"m@c\", \"m@a\", \"m@b\"]\n");
        let b = ClassicBackend::from_config(&c, &n("m@a")).unwrap();
        let r = b.list().await.unwrap();
        assert_eq!(r.nodes, vec![n("m@a"), n("m@b"), n("m@c")]);
        assert!(r.authoritative);
        assert!(b.capabilities().full_membership);
        assert!(!b.capabilities().locking);
        assert!(b.warnings().is_empty());
    }

    #[tokio::test]
    async fn warns_on_duplicates_and_drops_them() {
        let b = ClassicBackend::new(&n("m@a"), vec![n("m@a"), n("m@b"), n("m@b")]);
        assert_eq!(b.nodes(), &[n("m@a"), n("m@b")]);
        assert_eq!(b.warnings().len(), 1);
        assert!(
            b.warnings()[0].contains("lists m@b more than once"),
            "{:?}",
            b.warnings()
        );
    }

    #[tokio::test]
    async fn warns_when_the_local_node_is_missing_and_includes_it() {
        let b = ClassicBackend::new(&n("m@z"), vec![n("m@a"), n("m@b")]);
        assert!(b.list().await.unwrap().nodes.contains(&n("m@z")));
        assert!(
            b.warnings()[0].contains("does not list this node (m@z)"),
            "{:?}",
            b.warnings()
        );
    }

    #[test]
    fn a_bad_node_name_is_quoted() {
        let c = cfg("[cluster_formation.classic_config]\nnodes = [\"m@a\", \"not-a-node\"]\n");
        let e = ClassicBackend::from_config(&c, &n("m@a"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid node name \"not-a-node\""), "{e}");
        assert!(e.contains("cluster_formation.classic_config"), "{e}");
    }

    #[test]
    fn an_unknown_key_suggests_nodes() {
        let c = cfg("[cluster_formation.classic_config]\nnode = [\"m@a\"]\n");
        let e = ClassicBackend::from_config(&c, &n("m@a"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("did you mean `nodes`?"), "{e}");
    }

    #[test]
    fn no_table_means_a_cluster_of_one() {
        let b = ClassicBackend::from_config(&FormationConfig::default(), &n("m@a")).unwrap();
        assert_eq!(b.nodes(), &[n("m@a")]);
    }
}
