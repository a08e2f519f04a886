//! The two listings: instances by tags, or the members of this instance's autoscaling group
//! with its desired capacity.

use aws_sdk_ec2::types::{Filter, Instance};
use muster_discovery_core::{DiscoveryError, ErrorKind, NodeName};
use tracing::debug;

use crate::NAME;
use crate::errors::classify;
use crate::sdk::Clients;
use crate::settings::{AddressType, ResolvedAws};

/// How many instance ids one `DescribeInstances` filter carries.
const IDS_PER_CALL: usize = 200;

/// Auto Scaling lifecycle states of members that are (or are about to be) peers.
const MEMBER_STATES: &[&str] = &["Pending", "Pending:Wait", "Pending:Proceed", "InService"];

/// What the autoscaling group says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The group's name.
    pub name: String,
    /// Its members that are pending or in service.
    pub instance_ids: Vec<String>,
    /// `DesiredCapacity`.
    pub desired: usize,
}

/// The node name an instance gets: the local node's prefix and port, the configured address.
/// `None` when the instance has no such address (no public IP, not yet assigned) or is in a
/// state not asked for.
pub fn node_for(r: &ResolvedAws, inst: &Instance) -> Option<NodeName> {
    let state = inst
        .state()
        .and_then(|s| s.name())
        .map(|n| n.as_str().to_string());
    if !state.is_some_and(|s| r.settings.instance_states.contains(&s)) {
        return None;
    }
    let host = address(inst, r.settings.address_type)?;
    let text = match r.port {
        Some(port) => format!("{}@{host}:{port}", r.prefix),
        None => format!("{}@{host}", r.prefix),
    };
    match text.parse() {
        Ok(n) => Some(n),
        Err(e) => {
            debug!(
                "instance {:?}: {text:?} is not a node name: {e}",
                inst.instance_id()
            );
            None
        }
    }
}

/// The configured address: the instance-level field, which EC2 fills from the primary
/// interface (device index 0), else that interface's own field.
pub fn address(inst: &Instance, t: AddressType) -> Option<String> {
    let primary = inst
        .network_interfaces()
        .iter()
        .find(|n| n.attachment().and_then(|a| a.device_index()) == Some(0));
    let nonempty = |s: Option<&str>| s.map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
    let public = primary.and_then(|n| n.association());
    match t {
        AddressType::PrivateIp => nonempty(inst.private_ip_address())
            .or_else(|| nonempty(primary.and_then(|n| n.private_ip_address()))),
        AddressType::PrivateDns => {
            nonempty(inst.private_dns_name()).or_else(|| nonempty(primary.and_then(|n| n.private_dns_name())))
        }
        AddressType::PublicIp => {
            nonempty(inst.public_ip_address()).or_else(|| nonempty(public.and_then(|a| a.public_ip())))
        }
        AddressType::PublicDns => {
            nonempty(inst.public_dns_name()).or_else(|| nonempty(public.and_then(|a| a.public_dns_name())))
        }
    }
}

fn filter(name: &str, values: impl IntoIterator<Item = String>) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.into_iter().collect()))
        .build()
}

/// The tag and state filters every `DescribeInstances` carries.
pub fn filters(r: &ResolvedAws) -> Vec<Filter> {
    let mut f: Vec<Filter> = r
        .settings
        .instance_tags
        .iter()
        .map(|(k, v)| filter(&format!("tag:{k}"), [v.clone()]))
        .collect();
    f.push(filter("instance-state-name", r.settings.instance_states.clone()));
    f
}

/// `DescribeInstances` with the filters (plus `extra`), every page.
pub async fn instances(
    c: &Clients,
    r: &ResolvedAws,
    extra: Option<Filter>,
    what: &str,
) -> Result<Vec<Instance>, DiscoveryError> {
    let mut fs = filters(r);
    fs.extend(extra);
    // No MaxResults: EC2 picks the page size; every NextToken is followed.
    let mut pages = c
        .ec2
        .describe_instances()
        .set_filters(Some(fs))
        .into_paginator()
        .send();
    let mut out = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| classify(c.call(what, "ec2:DescribeInstances"), e))?;
        for res in page.reservations() {
            out.extend(res.instances().iter().cloned());
        }
    }
    Ok(out)
}

/// The group `instance_id` belongs to (`DescribeAutoScalingInstances` for that id only, not
/// every group in the account).
pub async fn group_of(c: &Clients, instance_id: &str) -> Result<String, DiscoveryError> {
    let what = format!("finding the autoscaling group of instance {instance_id}");
    let out = c
        .asg
        .describe_auto_scaling_instances()
        .instance_ids(instance_id)
        .send()
        .await
        .map_err(|e| classify(c.call(&what, "autoscaling:DescribeAutoScalingInstances"), e))?;
    out.auto_scaling_instances()
        .iter()
        .find_map(|i| i.auto_scaling_group_name().map(str::to_string))
        .ok_or_else(|| {
            DiscoveryError::new(
                NAME,
                ErrorKind::NotFound,
                format!("instance {instance_id} is not in any autoscaling group"),
            )
            .with_remediation(
                "launch it from the group, set asg_name, or list by tags (use_autoscaling_group = \
                 false with instance_tags)",
            )
        })
}

/// The group's pending and in-service members and its desired capacity.
pub async fn group(c: &Clients, name: &str) -> Result<Group, DiscoveryError> {
    let what = format!("reading autoscaling group {name}");
    let out = c
        .asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(name)
        .send()
        .await
        .map_err(|e| classify(c.call(&what, "autoscaling:DescribeAutoScalingGroups"), e))?;
    let g = out
        .auto_scaling_groups()
        .iter()
        .find(|g| g.auto_scaling_group_name() == Some(name))
        .ok_or_else(|| {
            DiscoveryError::new(
                NAME,
                ErrorKind::NotFound,
                format!("autoscaling group {name} does not exist"),
            )
            .with_remediation("check asg_name and the region")
        })?;
    let mut instance_ids: Vec<String> = g
        .instances()
        .iter()
        .filter(|i| {
            i.lifecycle_state()
                .is_some_and(|s| MEMBER_STATES.contains(&s.as_str()))
        })
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect();
    instance_ids.sort();
    Ok(Group {
        name: name.to_string(),
        instance_ids,
        desired: usize::try_from(g.desired_capacity().unwrap_or(0)).unwrap_or(0),
    })
}

/// The group members' instances (by an `instance-id` filter, which, unlike `InstanceIds`, does
/// not fail the whole call when EC2 does not show a just-launched member yet).
pub async fn members(c: &Clients, r: &ResolvedAws, g: &Group) -> Result<Vec<Instance>, DiscoveryError> {
    let what = format!("listing the instances of autoscaling group {}", g.name);
    let mut out = Vec::new();
    for chunk in g.instance_ids.chunks(IDS_PER_CALL) {
        out.extend(instances(c, r, Some(filter("instance-id", chunk.iter().cloned())), &what).await?);
    }
    Ok(out)
}
