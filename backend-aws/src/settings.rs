//! `[cluster_formation.aws]`.

use std::collections::BTreeMap;
use std::time::Duration;

use muster_discovery_core::config::{Bound, ConfigError, check_bounds, duration};
use muster_discovery_core::{FormationConfig, NodeName};
use serde::Deserialize;

/// Which field of an instance names a peer (of its primary network interface).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressType {
    /// `PrivateIpAddress`: the primary private IPv4 of the primary interface (default; needs no
    /// DNS).
    PrivateIp,
    /// `PrivateDnsName` (`ip-10-0-1-4.ec2.internal`): needs the VPC's DNS resolution.
    PrivateDns,
    /// `PublicIpAddress`: instances without one are left out.
    PublicIp,
    /// `PublicDnsName`: instances without one are left out.
    PublicDns,
}

impl AddressType {
    /// The EC2 field's name, for messages.
    pub fn field(self) -> &'static str {
        match self {
            AddressType::PrivateIp => "PrivateIpAddress",
            AddressType::PrivateDns => "PrivateDnsName",
            AddressType::PublicIp => "PublicIpAddress",
            AddressType::PublicDns => "PublicDnsName",
        }
    }
}

/// The instance states EC2 knows (`instance-state-name`).
pub const STATES: &[&str] = &[
    "pending",
    "running",
    "shutting-down",
    "terminated",
    "stopping",
    "stopped",
];

/// The AWS backend's settings. Every key changes behaviour (tests prove it).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsSettings {
    /// The region (default: `AWS_REGION`/`AWS_DEFAULT_REGION`, the profile, then IMDS).
    pub region: Option<String>,
    /// Tags every peer carries (all must match).
    pub instance_tags: BTreeMap<String, String>,
    /// List the instances of this instance's autoscaling group, with its desired capacity as
    /// the expected cluster size.
    pub use_autoscaling_group: bool,
    /// Which field names a peer.
    pub address_type: AddressType,
    /// The instance states listed (`["pending", "running"]`: peers launched together are still
    /// `pending` when they first look).
    pub instance_states: Vec<String>,
    /// The API endpoint for EC2, Auto Scaling and SSM (moto, LocalStack, a VPC endpoint).
    pub endpoint_url: Option<String>,
    /// The instance metadata service (default `http://169.254.169.254`).
    pub imds_endpoint: Option<String>,
    /// The shared-config profile for region and credentials.
    pub profile: Option<String>,
    /// This instance's id, for hosts outside EC2 (default: IMDS `instance-id`).
    pub instance_id: Option<String>,
    /// The autoscaling group, for hosts outside EC2 (default: the group of `instance_id`).
    pub asg_name: Option<String>,
    /// Record the cluster id in SSM Parameter Store before forming (create-only), so that a
    /// wiped node finds it and never forms a second cluster. Needs `ssm:PutParameter` and
    /// `ssm:GetParameter`.
    pub fencing: bool,
    /// The SSM parameter holding the cluster id (default `/muster/<asg_name>/cluster-id`; needed
    /// in tags mode).
    pub ssm_parameter: Option<String>,
    /// The first listing waits a random part of this (per node), so that a group booting at
    /// once does not hit the API in the same instant.
    #[serde(with = "duration")]
    pub startup_jitter: Duration,
    /// The limit on one API operation, retries included.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// Attempts per API call (the SDK's standard retry: throttling and 5xx are retried with
    /// exponential backoff and jitter).
    pub max_attempts: u32,
}

impl Default for AwsSettings {
    fn default() -> Self {
        AwsSettings {
            region: None,
            instance_tags: BTreeMap::new(),
            use_autoscaling_group: false,
            address_type: AddressType::PrivateIp,
            instance_states: vec!["pending".into(), "running".into()],
            endpoint_url: None,
            imds_endpoint: None,
            profile: None,
            instance_id: None,
            asg_name: None,
            fencing: false,
            ssm_parameter: None,
            startup_jitter: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
            max_attempts: 3,
        }
    }
}

const T: &str = "cluster_formation.aws";

/// An error on `key`; the message starts with the full key.
fn err(key: &str, message: impl std::fmt::Display) -> ConfigError {
    ConfigError::new(Some(format!("{T}.{key}")), format!("{T}.{key}: {message}"))
}

/// The settings with every default resolved for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedAws {
    /// The settings as written.
    pub settings: AwsSettings,
    /// The node name prefix peers get (the local node's).
    pub prefix: String,
    /// The port peers get (the local node's).
    pub port: Option<u16>,
}

impl AwsSettings {
    /// Reads and validates `[cluster_formation.aws]` for node `local`.
    pub fn resolve(config: &FormationConfig, local: &NodeName) -> Result<ResolvedAws, ConfigError> {
        let s: AwsSettings = config.backend_settings("aws")?;
        check_selection(&s)?;
        check_names(&s)?;
        check_bounds(T, &s, BOUNDS)?;
        Ok(ResolvedAws {
            prefix: local.prefix().to_string(),
            port: local.port(),
            settings: s,
        })
    }
}

/// The allowed range of every numeric and duration key.
const BOUNDS: &[Bound<AwsSettings>] = &[
    Bound::duration(
        "startup_jitter",
        |s| s.startup_jitter,
        Duration::ZERO,
        Duration::from_secs(60),
    ),
    Bound::duration(
        "request_timeout",
        |s| s.request_timeout,
        Duration::from_millis(100),
        Duration::from_secs(300),
    ),
    Bound::count("max_attempts", |s| u64::from(s.max_attempts), 1, 10),
];

/// Which instances are peers: a group, or tags (never every instance in the region), in known
/// states.
fn check_selection(s: &AwsSettings) -> Result<(), ConfigError> {
    if !s.use_autoscaling_group && s.instance_tags.is_empty() {
        return Err(err(
            "instance_tags",
            "name the peers' tags (instance_tags = { cluster = \"prod\" }) or set \
             use_autoscaling_group = true; listing every instance in the region is never what \
             you want",
        ));
    }
    for (k, v) in &s.instance_tags {
        if k.is_empty() || v.is_empty() {
            return Err(err(
                "instance_tags",
                format!("tag keys and values must not be empty ({k:?} = {v:?})"),
            ));
        }
    }
    if s.instance_states.is_empty() {
        return Err(err(
            "instance_states",
            "list at least one state, e.g. [\"pending\", \"running\"]",
        ));
    }
    for state in &s.instance_states {
        if !STATES.contains(&state.as_str()) {
            let hint = muster_discovery_core::config::closest(state, STATES.iter().copied())
                .map(|c| format!("did you mean {c:?}? "))
                .unwrap_or_default();
            return Err(err(
                "instance_states",
                format!(
                    "unknown instance state {state:?}; {hint}known: {}",
                    STATES.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// The region, endpoints, instance id and SSM parameter, each well-formed; fencing in tags mode
/// names its parameter.
fn check_names(s: &AwsSettings) -> Result<(), ConfigError> {
    if let Some(region) = &s.region
        && !valid_region(region)
    {
        return Err(err(
            "region",
            format!("{region:?} is not a region name (like \"eu-west-1\" or \"us-gov-west-1\")"),
        ));
    }
    for (key, url) in [
        ("endpoint_url", &s.endpoint_url),
        ("imds_endpoint", &s.imds_endpoint),
    ] {
        if let Some(url) = url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(err(key, format!("{url:?} must be an http:// or https:// URL")));
        }
    }
    if let Some(id) = &s.instance_id
        && !id
            .strip_prefix("i-")
            .is_some_and(|hex| !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(err(
            "instance_id",
            format!("{id:?} is not an instance id (i-0123abcd…)"),
        ));
    }
    if s.fencing && !s.use_autoscaling_group && s.ssm_parameter.is_none() {
        return Err(err(
            "ssm_parameter",
            "fencing in tags mode needs the parameter's name (ssm_parameter = \"/muster/prod/cluster-id\")",
        ));
    }
    if let Some(p) = &s.ssm_parameter
        && !valid_parameter(p)
    {
        return Err(err(
            "ssm_parameter",
            format!("{p:?} is not an SSM parameter name (letters, digits, _.-/, up to 1011 characters)"),
        ));
    }
    Ok(())
}

/// `eu-west-1`, `us-gov-west-1`, `ap-southeast-4`, `us-west-2-lax-1` is not a region (a Local
/// Zone); `cn-north-1` is.
pub fn valid_region(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    let (Some(last), Some(first)) = (parts.last(), parts.first()) else {
        return false;
    };
    parts.len() >= 3
        && first.len() == 2
        && first.chars().all(|c| c.is_ascii_lowercase())
        && last.chars().all(|c| c.is_ascii_digit())
        && !last.is_empty()
        && parts.get(1..parts.len() - 1).is_some_and(|mid| {
            mid.iter()
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
        })
}

fn valid_parameter(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 1011
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/'))
}

#[cfg(test)]
mod tests;
