//! # muster-backend-aws
//!
//! Peer discovery on AWS (`[cluster_formation.aws]`): the EC2 instances carrying the configured
//! tags, or the members of this instance's autoscaling group (`use_autoscaling_group`), named by
//! one address of their primary interface. An EC2 listing is eventually consistent and EC2 has
//! no lock, so the listing is never authoritative: formation uses the stable-view rule, and in
//! group mode the group's desired capacity is the expected cluster size, so a majority of the
//! group must be visible before anyone forms. Optional fencing records the cluster id in a
//! create-only SSM parameter. See `docs/backends/aws.md`.

// No panics on input from the network, a file or the environment.
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod errors;
pub mod fencing;
pub mod listing;
pub mod sdk;
pub mod settings;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::imds;
use muster_discovery_core::{
    ClaimError, ClusterId, ConfigError, Discovery, DiscoveryError, DiscoveryResult, Fencing, FormationConfig,
    LockGuard, NodeName,
};
use tokio::sync::OnceCell;
use tracing::{info, warn};

use crate::sdk::Clients;
use crate::settings::{AwsSettings, ResolvedAws};

/// The backend's name in errors and logs.
pub const NAME: &str = "aws";

/// How the facade checks `[cluster_formation.aws]` and builds this backend.
pub const FACTORY: muster_discovery_core::BackendFactory = muster_discovery_core::BackendFactory {
    name: NAME,
    aliases: &[],
    table: "aws",
    check: |config| config.backend_settings::<settings::AwsSettings>("aws").map(drop),
    build: |config, local| Ok(std::sync::Arc::new(AwsBackend::from_config(config, local)?)),
};

/// The AWS backend.
pub struct AwsBackend {
    r: ResolvedAws,
    local: NodeName,
    imds: imds::Client,
    clients: OnceCell<Clients>,
    instance_id: OnceCell<String>,
    group: OnceCell<String>,
    started: OnceCell<()>,
    warned_unlisted: AtomicBool,
}

impl std::fmt::Debug for AwsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsBackend")
            .field("settings", &self.r.settings)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl AwsBackend {
    /// Builds the backend from `[cluster_formation.aws]` for node `local`. Nothing is called
    /// yet: the region, the credentials and the instance's identity are read at the first
    /// listing.
    pub fn from_config(config: &FormationConfig, local: &NodeName) -> Result<Self, ConfigError> {
        Self::new(AwsSettings::resolve(config, local)?, local)
    }

    /// Builds the backend from resolved settings.
    pub fn new(r: ResolvedAws, local: &NodeName) -> Result<Self, ConfigError> {
        let imds = sdk::imds_client(&r.settings)?;
        Ok(AwsBackend {
            r,
            local: local.clone(),
            imds,
            clients: OnceCell::new(),
            instance_id: OnceCell::new(),
            group: OnceCell::new(),
            started: OnceCell::new(),
            warned_unlisted: AtomicBool::new(false),
        })
    }

    /// The resolved settings.
    pub fn settings(&self) -> &ResolvedAws {
        &self.r
    }

    async fn clients(&self) -> Result<&Clients, DiscoveryError> {
        self.clients
            .get_or_try_init(|| async {
                let c = sdk::clients(&self.r.settings, &self.imds).await?;
                let s = &self.r.settings;
                let mode = if s.use_autoscaling_group {
                    "autoscaling group".to_string()
                } else {
                    format!("tags {:?}", s.instance_tags)
                };
                info!(
                    node = %self.local,
                    "AWS discovery: region {}, {mode}, states {:?}, peers named by {}{}",
                    c.region,
                    s.instance_states,
                    s.address_type.field(),
                    s.endpoint_url.as_ref().map(|u| format!(", endpoint {u}")).unwrap_or_default()
                );
                Ok(c)
            })
            .await
    }

    /// This instance's id: from the config, else IMDS.
    pub async fn instance_id(&self) -> Result<String, DiscoveryError> {
        self.instance_id
            .get_or_try_init(|| async {
                match &self.r.settings.instance_id {
                    Some(id) => Ok(id.clone()),
                    None => sdk::metadata(&self.imds, "/latest/meta-data/instance-id").await,
                }
            })
            .await
            .cloned()
    }

    async fn group_name(&self, c: &Clients) -> Result<String, DiscoveryError> {
        self.group
            .get_or_try_init(|| async {
                match &self.r.settings.asg_name {
                    Some(g) => Ok(g.clone()),
                    None => {
                        let id = self.instance_id().await?;
                        let g = listing::group_of(c, &id).await?;
                        info!(node = %self.local, "instance {id} is a member of autoscaling group {g}");
                        Ok(g)
                    }
                }
            })
            .await
            .cloned()
    }

    /// The SSM parameter fencing uses.
    async fn parameter(&self, c: &Clients) -> Result<String, DiscoveryError> {
        match &self.r.settings.ssm_parameter {
            Some(p) => Ok(p.clone()),
            None => Ok(format!("/muster/{}/cluster-id", self.group_name(c).await?)),
        }
    }

    fn names(&self, instances: &[aws_sdk_ec2::types::Instance]) -> Vec<NodeName> {
        instances
            .iter()
            .filter_map(|i| listing::node_for(&self.r, i))
            .collect()
    }

    fn check_listed(&self, nodes: &[NodeName], how: &str) {
        if !nodes.contains(&self.local) && !self.warned_unlisted.swap(true, Ordering::Relaxed) {
            warn!(
                node = %self.local,
                "this node is not among the {} instances {how} lists ({}); peers are named \
                 <prefix>@<{}>:<port>: check address_type and this node's name",
                nodes.len(),
                nodes.iter().map(NodeName::as_str).collect::<Vec<_>>().join(", "),
                self.r.settings.address_type.field()
            );
        }
    }
}

/// How long node `local`'s first listing waits: a fraction of `max` fixed by the node's name,
/// so nodes booted together spread their first calls over the window.
pub fn startup_delay(local: &NodeName, max: Duration) -> Duration {
    let permille = u32::try_from(local.seed() % 1000).unwrap_or(0);
    max * permille / 1000
}

#[async_trait]
impl Discovery for AwsBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Never: EC2 listings are eventually consistent.
    fn full_membership(&self) -> bool {
        false
    }

    async fn list(&self) -> Result<DiscoveryResult, DiscoveryError> {
        self.started
            .get_or_init(|| tokio::time::sleep(startup_delay(&self.local, self.r.settings.startup_jitter)))
            .await;
        let c = self.clients().await?;
        let s = &self.r.settings;
        let mut result = if s.use_autoscaling_group {
            let name = self.group_name(c).await?;
            let g = listing::group(c, &name).await?;
            let nodes = self.names(&listing::members(c, &self.r, &g).await?);
            self.check_listed(&nodes, &format!("autoscaling group {name}"));
            // A member the group no longer lists has left it: cleanup may count it as gone.
            DiscoveryResult::new(nodes, false)
                .with_expected_size(g.desired)
                .with_departures_known()
        } else {
            let what = format!("listing the instances tagged {:?}", s.instance_tags);
            let nodes = self.names(&listing::instances(c, &self.r, None, &what).await?);
            self.check_listed(&nodes, "the tag filter");
            DiscoveryResult::new(nodes, false)
        };
        if s.fencing {
            let p = self.parameter(c).await?;
            if let Some(id) = fencing::recorded(c, &p).await? {
                result = result
                    .with_recorded_cluster(id)
                    .with_fencing_hint(fencing::hint(&p));
            }
        }
        Ok(result)
    }

    fn fencing(&self) -> Option<&dyn Fencing> {
        self.r.settings.fencing.then_some(self as &dyn Fencing)
    }
}

#[async_trait]
impl Fencing for AwsBackend {
    /// EC2 has no lock, so a claim never names one.
    async fn claim(&self, id: &ClusterId, _lock: Option<&dyn LockGuard>) -> Result<(), ClaimError> {
        let c = self.clients().await?;
        let p = self.parameter(c).await?;
        fencing::claim(c, &p, id).await
    }
}
