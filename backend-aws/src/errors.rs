//! SDK errors as backend errors: throttling and 5xx are temporary, a missing permission names
//! the IAM action to grant, missing credentials and an unknown region say how to fix them.

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use muster_discovery_core::RetryClass;
use muster_discovery_core::{DiscoveryError, ErrorKind};

use crate::NAME;

/// Error codes AWS APIs use for throttling (EC2, Auto Scaling, SSM).
const THROTTLING: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestThrottled",
    "RequestThrottledException",
    "SlowDown",
];
/// A permission is missing (EC2 says `UnauthorizedOperation`, others `AccessDenied*`).
const DENIED: &[&str] = &["UnauthorizedOperation", "AccessDenied", "AccessDeniedException"];
/// The credentials themselves were refused.
const BAD_CREDENTIALS: &[&str] = &[
    "AuthFailure",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidAccessKeyId",
];
/// The request was malformed: a filter, a state, a parameter name.
const INVALID: &[&str] = &[
    "InvalidParameterValue",
    "InvalidParameterCombination",
    "InvalidParameter",
    "ValidationError",
    "ValidationException",
];

/// The regions this release knows; a region outside it whose endpoint does not resolve is a
/// configuration error, not an outage.
pub const KNOWN_REGIONS: &[&str] = &[
    "af-south-1",
    "ap-east-1",
    "ap-east-2",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-south-1",
    "ap-south-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ap-southeast-4",
    "ap-southeast-5",
    "ap-southeast-6",
    "ap-southeast-7",
    "ca-central-1",
    "ca-west-1",
    "cn-north-1",
    "cn-northwest-1",
    "eu-central-1",
    "eu-central-2",
    "eu-north-1",
    "eu-south-1",
    "eu-south-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "il-central-1",
    "me-central-1",
    "me-south-1",
    "mx-central-1",
    "sa-east-1",
    "us-east-1",
    "us-east-2",
    "us-gov-east-1",
    "us-gov-west-1",
    "us-west-1",
    "us-west-2",
];

/// Where a call went, for the classification.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// What was being done ("listing the instances tagged cluster=prod").
    pub what: &'a str,
    /// The IAM action it needs (`ec2:DescribeInstances`).
    pub action: &'a str,
    /// The region in use.
    pub region: &'a str,
    /// An endpoint override is set (moto, a VPC endpoint): the region is not what resolves.
    pub custom_endpoint: bool,
}

/// Classifies one SDK error.
pub fn classify<E>(call: Call<'_>, e: SdkError<E, HttpResponse>) -> DiscoveryError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let text = DisplayErrorContext(&e).to_string();
    if let Some(failed) = transport(&call, &e, &text) {
        return failed;
    }
    let status = e.raw_response().map(|r| r.status().as_u16());
    let code = e.code().unwrap_or("");
    let message = e.message().unwrap_or("");
    let said = if message.is_empty() {
        code.to_string()
    } else {
        format!("{code}: {message}")
    };
    if let Some(known) = by_code(&call, code, &said) {
        return known;
    }
    let what = call.what;
    match status {
        Some(s) if s >= 500 => DiscoveryError::new(
            NAME,
            ErrorKind::Unavailable,
            format!(
                "{what}: AWS answered HTTP {s} ({})",
                if said.is_empty() { "no error code" } else { &said }
            ),
        ),
        Some(s) => DiscoveryError::new(
            NAME,
            ErrorKind::Other,
            format!(
                "{what}: AWS answered HTTP {s}: {}",
                if said.is_empty() { &text } else { &said }
            ),
        )
        .with_retry(RetryClass::Temporary),
        None => DiscoveryError::new(NAME, ErrorKind::Other, format!("{what}: {text}")),
    }
}

/// A call that got no answer: timed out, not built (credentials), or not delivered (a region
/// that does not resolve, a connection refused); `None` when AWS answered.
fn transport<E>(call: &Call<'_>, e: &SdkError<E, HttpResponse>, text: &str) -> Option<DiscoveryError> {
    let Call { what, region, .. } = *call;
    Some(match e {
        SdkError::TimeoutError(_) => {
            DiscoveryError::new(NAME, ErrorKind::Unavailable, format!("{what}: timed out"))
        }
        SdkError::ConstructionFailure(_) => construction(what, text),
        SdkError::DispatchFailure(_) if text.contains("credentials") || text.contains("Credentials") => {
            construction(what, text)
        }
        SdkError::DispatchFailure(d) => {
            let dns = text.contains("dns error") || text.contains("failed to lookup");
            if dns && !call.custom_endpoint && !KNOWN_REGIONS.contains(&region) {
                return Some(
                    DiscoveryError::new(
                        NAME,
                        ErrorKind::Misconfigured,
                        format!(
                            "{what}: the endpoint of region {region:?} does not resolve: is it a region?"
                        ),
                    )
                    .with_remediation(format!("set region to one of: {}", KNOWN_REGIONS.join(", "))),
                );
            }
            let kind = if d.is_timeout() {
                "timed out"
            } else {
                "cannot connect"
            };
            DiscoveryError::new(NAME, ErrorKind::Unavailable, format!("{what}: {kind}: {text}"))
        }
        _ => return None,
    })
}

/// An AWS error code with a known meaning (throttled, denied, bad credentials, invalid), with
/// what to do about it; `None` for other codes.
fn by_code(call: &Call<'_>, code: &str, said: &str) -> Option<DiscoveryError> {
    let Call { what, action, .. } = *call;
    if THROTTLING.contains(&code) {
        return Some(
            DiscoveryError::new(
                NAME,
                ErrorKind::Unavailable,
                format!("{what}: throttled by AWS ({said}) after the SDK's retries"),
            )
            .with_remediation(
                "the API rate is shared by the whole account and region: raise \
                 discovery_retry_interval or startup_jitter if this persists",
            ),
        );
    }
    if DENIED.contains(&code) {
        return Some(
            DiscoveryError::new(NAME, ErrorKind::PermissionDenied, format!("{what}: {said}"))
                .with_remediation(format!(
                    "grant {action} to the instance's role: {{\"Effect\": \"Allow\", \"Action\": \
                     [\"{action}\"], \"Resource\": \"*\"}} (deploy/aws has the whole policy)"
                )),
        );
    }
    if BAD_CREDENTIALS.contains(&code) {
        return Some(
            DiscoveryError::new(
                NAME,
                ErrorKind::PermissionDenied,
                format!("{what}: AWS rejected the credentials ({code})"),
            )
            .with_remediation(
                "check the instance profile, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, the profile, \
                 or the web identity role; the credentials must belong to this account",
            ),
        );
    }
    INVALID
        .contains(&code)
        .then(|| DiscoveryError::new(NAME, ErrorKind::Misconfigured, format!("{what}: {said}")))
}

fn construction(what: &str, text: &str) -> DiscoveryError {
    if text.contains("credentials") || text.contains("Credentials") {
        return DiscoveryError::new(
            NAME,
            ErrorKind::Misconfigured,
            format!("{what}: no AWS credentials: {text}"),
        )
        .with_remediation(
            "give the instance an instance profile (IAM role), or provide credentials through \
             the standard chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, profile, web identity \
             (AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN) or the ECS task role",
        );
    }
    DiscoveryError::new(
        NAME,
        ErrorKind::Misconfigured,
        format!("{what}: the request could not be built: {text}"),
    )
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::error::ConnectorError;
    use aws_sdk_ec2::operation::describe_instances::DescribeInstancesError;

    use super::*;

    fn at(region: &str, custom: bool) -> Call<'_> {
        Call {
            what: "listing",
            action: "ec2:DescribeInstances",
            region,
            custom_endpoint: custom,
        }
    }

    fn dns() -> SdkError<DescribeInstancesError, HttpResponse> {
        SdkError::dispatch_failure(ConnectorError::io(
            "dns error: failed to lookup address information".into(),
        ))
    }

    #[test]
    fn an_endpoint_that_does_not_resolve_is_a_bad_region_only_for_an_unknown_region() {
        let e = classify(at("xx-nowhere-1", false), dns());
        assert_eq!(e.kind, ErrorKind::Misconfigured, "{e}");
        assert!(e.to_string().contains("region \"xx-nowhere-1\""), "{e}");
        assert!(
            e.to_string().contains("eu-west-1"),
            "lists the known regions: {e}"
        );
        let e = classify(at("eu-west-1", false), dns());
        assert_eq!(
            e.kind,
            ErrorKind::Unavailable,
            "a known region's DNS failing is an outage: {e}"
        );
        assert!(e.is_temporary());
        let e = classify(at("xx-nowhere-1", true), dns());
        assert_eq!(
            e.kind,
            ErrorKind::Unavailable,
            "with endpoint_url the region does not resolve anything: {e}"
        );
    }

    #[test]
    fn timeouts_are_temporary() {
        let e = classify(
            at("eu-west-1", false),
            SdkError::<DescribeInstancesError, HttpResponse>::timeout_error("slow"),
        );
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(e.is_temporary());
        assert!(e.to_string().contains("timed out"), "{e}");
    }
}
