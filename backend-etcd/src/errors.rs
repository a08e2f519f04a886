//! Mapping etcd-client errors to typed discovery errors.

use etcd_client::Error;
use muster_discovery_core::{DiscoveryError, ErrorKind, RetryClass};
use tonic::Code as tonic_code;

use crate::NAME;

/// A typed error for `what` failing with `e`.
pub fn map(what: &str, e: Error) -> DiscoveryError {
    let (kind, remediation) = match &e {
        Error::GRpcStatus(s) => match s.code() {
            tonic_code::Unauthenticated | tonic_code::PermissionDenied => (
                ErrorKind::PermissionDenied,
                Some(
                    "check cluster_formation.etcd.username/password and that the user may read and write the key prefix",
                ),
            ),
            // etcd reports bad credentials ("authentication failed", "user name is empty") as
            // InvalidArgument.
            tonic_code::InvalidArgument
                if s.message().contains("authentication") || s.message().contains("user name") =>
            {
                (
                    ErrorKind::PermissionDenied,
                    Some(
                        "check cluster_formation.etcd.username/password and that the user may read and write the key prefix",
                    ),
                )
            }
            tonic_code::InvalidArgument | tonic_code::FailedPrecondition => (ErrorKind::Other, None),
            tonic_code::Unavailable
            | tonic_code::DeadlineExceeded
            | tonic_code::Cancelled
            | tonic_code::Aborted => (
                ErrorKind::Unavailable,
                Some("check that etcd is running and cluster_formation.etcd.endpoints points at it"),
            ),
            _ => (ErrorKind::Other, None),
        },
        Error::InvalidArgs(_) | Error::InvalidUri(_) => (
            ErrorKind::Misconfigured,
            Some("check cluster_formation.etcd.endpoints"),
        ),
        Error::TransportError(_) | Error::IoError(_) | Error::EndpointError(_) => (
            ErrorKind::Unavailable,
            Some("check that etcd is running and cluster_formation.etcd.endpoints points at it"),
        ),
        _ => (ErrorKind::Other, None),
    };
    let mut err = DiscoveryError::new(NAME, kind, format!("{what}: {}", describe(&e)));
    if let Some(r) = remediation {
        err = err.with_remediation(r);
    }
    if kind == ErrorKind::PermissionDenied {
        // Permissions can be granted while the node waits.
        err = err.with_retry(RetryClass::Temporary);
    }
    err.with_source(e)
}

/// Runs one etcd call, bounded by `limit` (a timeout is a temporary `unavailable` error).
pub async fn bounded<T>(
    what: &str,
    limit: std::time::Duration,
    call: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, muster_discovery_core::DiscoveryError> {
    match tokio::time::timeout(limit, call).await {
        Ok(r) => r.map_err(|e| map(what, e)),
        Err(_) => Err(DiscoveryError::new(
            NAME,
            ErrorKind::Unavailable,
            format!("{what}: no answer from etcd within {limit:?}"),
        )
        .with_remediation("check that etcd is running and cluster_formation.etcd.endpoints points at it")),
    }
}

/// The error with its source chain (tonic hides the cause of transport errors).
fn describe(e: &Error) -> String {
    let mut text = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        text.push_str(&format!(": {s}"));
        src = s.source();
    }
    text
}
