//! Optional fencing: the cluster id in an SSM parameter created without overwrite, so exactly
//! one id is ever recorded and a wiped node finds it.

use aws_sdk_ssm::error::ProvideErrorMetadata;
use aws_sdk_ssm::types::ParameterType;
use muster_discovery_core::{ClaimError, ClusterId, DiscoveryError};

use crate::errors::classify;
use crate::sdk::Clients;

/// The hint shown when a recorded cluster is unreachable.
pub fn hint(parameter: &str) -> String {
    format!(
        "to re-bootstrap from scratch (every member's data is gone): aws ssm delete-parameter --name {parameter}"
    )
}

/// The recorded id, if any.
pub async fn recorded(c: &Clients, parameter: &str) -> Result<Option<ClusterId>, DiscoveryError> {
    let what = format!("reading the cluster record {parameter}");
    match c.ssm.get_parameter().name(parameter).send().await {
        Ok(out) => Ok(out
            .parameter()
            .and_then(|p| p.value())
            .map(|v| ClusterId(v.trim().to_string()))
            .filter(|id| !id.0.is_empty())),
        Err(e) if e.code() == Some("ParameterNotFound") => Ok(None),
        Err(e) => Err(classify(c.call(&what, "ssm:GetParameter"), e)),
    }
}

/// Creates the parameter with `id` unless it exists; the same id already recorded succeeds.
pub async fn claim(c: &Clients, parameter: &str, id: &ClusterId) -> Result<(), ClaimError> {
    let what = format!("recording the cluster id in {parameter}");
    let put = c
        .ssm
        .put_parameter()
        .name(parameter)
        .value(&id.0)
        .r#type(ParameterType::String)
        .overwrite(false)
        .description("Muster: the identity of the one cluster formed here (create-only)")
        .send()
        .await;
    match put {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("ParameterAlreadyExists") => match recorded(c, parameter).await? {
            Some(theirs) if theirs == *id => Ok(()),
            Some(theirs) => Err(ClaimError::Taken(theirs)),
            None => Err(ClaimError::Backend(DiscoveryError::new(
                crate::NAME,
                muster_discovery_core::ErrorKind::Other,
                format!("{parameter} exists but is empty"),
            ))),
        },
        Err(e) => Err(ClaimError::Backend(classify(
            c.call(&what, "ssm:PutParameter"),
            e,
        ))),
    }
}
