//! The SDK clients, built once per backend: region and credentials through the standard chains
//! with this node's own IMDS client (the SDK's IMDS environment variables are process-wide, so
//! several simulated instances in one process each inject theirs), the SDK's standard retry
//! (exponential backoff with jitter; throttling and 5xx retried), one operation timeout.
//!
//! Not the SDK's adaptive mode: its client-side limiter is process-wide per service and region,
//! charges a retry 5 tokens while capping its bucket near 1 token at a 0.5 token/s floor after a
//! throttle, so a low-rate caller like discovery waits ~10 s or more per retry (measured against
//! the fault proxy: two throttled answers made a listing time out). The engine's own jittered
//! rounds are the outer retry.

use std::time::Duration;

use aws_config::imds;
use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use muster_discovery_core::{ConfigError, DiscoveryError, ErrorKind};

use crate::NAME;
use crate::settings::{AwsSettings, valid_region};

/// The three API clients and this instance's metadata client.
#[derive(Clone, Debug)]
pub struct Clients {
    /// EC2 (`DescribeInstances`).
    pub ec2: aws_sdk_ec2::Client,
    /// Auto Scaling (`DescribeAutoScalingInstances`, `DescribeAutoScalingGroups`).
    pub asg: aws_sdk_autoscaling::Client,
    /// SSM Parameter Store (fencing).
    pub ssm: aws_sdk_ssm::Client,
    /// The region in use.
    pub region: String,
    /// `endpoint_url` is set (moto, a VPC endpoint): the region is not what resolves.
    pub custom_endpoint: bool,
}

impl Clients {
    /// What an error classification needs to know of a call.
    pub fn call<'a>(&'a self, what: &'a str, action: &'a str) -> crate::errors::Call<'a> {
        crate::errors::Call {
            what,
            action,
            region: &self.region,
            custom_endpoint: self.custom_endpoint,
        }
    }
}

/// The hop-limit advice every IMDS failure carries.
pub const HOP_LIMIT_HINT: &str = "inside a container on EC2 the IMDSv2 token needs two hops: set the \
     instance's HttpPutResponseHopLimit to 2 (aws ec2 modify-instance-metadata-options \
     --http-put-response-hop-limit 2 --http-tokens required), or set region and instance_id in \
     [cluster_formation.aws]";

/// This node's metadata client: short timeouts, so a missing IMDS is reported in seconds.
pub fn imds_client(s: &AwsSettings) -> Result<imds::Client, ConfigError> {
    let mut b = imds::Client::builder()
        .connect_timeout(Duration::from_secs(1))
        .read_timeout(Duration::from_secs(1))
        .operation_timeout(Duration::from_secs(4))
        .max_attempts(2);
    if let Some(url) = &s.imds_endpoint {
        b = b.endpoint(url).map_err(|e| {
            ConfigError::new(
                Some("cluster_formation.aws.imds_endpoint".into()),
                format!("cluster_formation.aws.imds_endpoint {url:?}: {e}"),
            )
        })?;
    }
    Ok(b.build())
}

/// Reads one metadata path (the token is fetched and cached by the client).
pub async fn metadata(imds: &imds::Client, path: &str) -> Result<String, DiscoveryError> {
    imds.get(path)
        .await
        .map(|v| v.as_ref().trim().to_string())
        .map_err(|e| {
            DiscoveryError::new(
                NAME,
                ErrorKind::Unavailable,
                format!("the instance metadata service (IMDSv2) did not answer {path}: {e}"),
            )
            .with_remediation(HOP_LIMIT_HINT)
        })
}

/// Builds the clients: region from the config, else `AWS_REGION`/`AWS_DEFAULT_REGION`, the
/// profile, then IMDS; credentials from the standard chain (env, profile, web identity, ECS,
/// this node's IMDS role).
pub async fn clients(s: &AwsSettings, imds: &imds::Client) -> Result<Clients, DiscoveryError> {
    let region = match &s.region {
        Some(r) => r.clone(),
        None => {
            let mut profile = aws_config::profile::region::ProfileFileRegionProvider::builder();
            if let Some(p) = &s.profile {
                profile = profile.profile_name(p);
            }
            let chain = RegionProviderChain::first_try(
                aws_config::environment::region::EnvironmentVariableRegionProvider::new(),
            )
            .or_else(profile.build())
            .or_else(
                aws_config::imds::region::ImdsRegionProvider::builder()
                    .imds_client(imds.clone())
                    .build(),
            );
            let found = chain.region().await.map(|r| r.to_string());
            match found {
                Some(r) if valid_region(&r) => r,
                Some(r) => {
                    return Err(DiscoveryError::new(
                        NAME,
                        ErrorKind::Misconfigured,
                        format!("the detected region {r:?} is not a region name"),
                    )
                    .with_remediation("set region in [cluster_formation.aws] or AWS_REGION"));
                }
                None => {
                    return Err(DiscoveryError::new(
                        NAME,
                        ErrorKind::Misconfigured,
                        "no region: none configured, none in AWS_REGION/AWS_DEFAULT_REGION or the \
                         profile, and the instance metadata service did not tell",
                    )
                    .with_remediation(format!(
                        "set region = \"eu-west-1\" (yours) in [cluster_formation.aws] or \
                         AWS_REGION; {HOP_LIMIT_HINT}"
                    )));
                }
            }
        }
    };
    let mut creds = aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
        .imds_client(imds.clone())
        .region(Region::new(region.clone()));
    if let Some(p) = &s.profile {
        creds = creds.profile_name(p);
    }
    let creds = creds.build().await;
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.clone()))
        .credentials_provider(creds)
        .retry_config(RetryConfig::standard().with_max_attempts(s.max_attempts))
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(s.request_timeout)
                .connect_timeout(Duration::from_secs(3).min(s.request_timeout))
                .build(),
        );
    if let Some(p) = &s.profile {
        loader = loader.profile_name(p);
    }
    if let Some(url) = &s.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let conf = loader.load().await;
    Ok(Clients {
        ec2: aws_sdk_ec2::Client::new(&conf),
        asg: aws_sdk_autoscaling::Client::new(&conf),
        ssm: aws_sdk_ssm::Client::new(&conf),
        region,
        custom_endpoint: s.endpoint_url.is_some(),
    })
}
