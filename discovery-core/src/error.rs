//! Typed errors. A backend error is never an empty list: it says what kind of failure it was,
//! whether trying again can help, and what the operator can do about it.

use std::fmt;

use crate::node_name::NodeName;

/// What kind of failure a backend reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The backend could not be reached or did not answer in time.
    Unavailable,
    /// The backend refused the credentials or the permission is missing.
    PermissionDenied,
    /// The configuration cannot work (bad key, bad value, missing setting).
    Misconfigured,
    /// What was asked for does not exist (a zone, a service, a group).
    NotFound,
    /// The backend does not offer this operation (for example locking).
    Unsupported,
    /// Anything else.
    Other,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::PermissionDenied => "permission denied",
            ErrorKind::Misconfigured => "misconfigured",
            ErrorKind::NotFound => "not found",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Other => "error",
        })
    }
}

/// Whether repeating the same call can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryClass {
    /// A passing condition (timeout, server restart): try again.
    Temporary,
    /// Trying again without a change of configuration or permissions will fail the same way.
    Permanent,
}

/// An error from a discovery backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub struct DiscoveryError {
    /// The backend that failed (`"classic"`, `"etcd"`, …).
    pub backend: &'static str,
    /// What kind of failure.
    pub kind: ErrorKind,
    /// Temporary or permanent.
    pub retry: RetryClass,
    /// What happened, for the log.
    pub message: String,
    /// What the operator can do, when the backend knows.
    pub remediation: Option<String>,
    /// The underlying error.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl DiscoveryError {
    /// A new error; the retry class defaults from the kind (only `Unavailable` and `Other` are
    /// temporary).
    pub fn new(backend: &'static str, kind: ErrorKind, message: impl Into<String>) -> Self {
        let retry = match kind {
            ErrorKind::Unavailable | ErrorKind::Other => RetryClass::Temporary,
            _ => RetryClass::Permanent,
        };
        DiscoveryError {
            backend,
            kind,
            retry,
            message: message.into(),
            remediation: None,
            source: None,
        }
    }

    /// Sets the remediation text.
    pub fn with_remediation(mut self, text: impl Into<String>) -> Self {
        self.remediation = Some(text.into());
        self
    }

    /// Overrides the retry class.
    pub fn with_retry(mut self, retry: RetryClass) -> Self {
        self.retry = retry;
        self
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Whether trying again can help.
    pub fn is_temporary(&self) -> bool {
        self.retry == RetryClass::Temporary
    }

    /// The error every backend returns for an operation it does not offer.
    pub fn unsupported(backend: &'static str, what: &str) -> Self {
        DiscoveryError::new(
            backend,
            ErrorKind::Unsupported,
            format!("the {backend} backend does not support {what}"),
        )
    }
}

impl fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let class = match self.retry {
            RetryClass::Temporary => "temporary",
            RetryClass::Permanent => "permanent",
        };
        write!(
            f,
            "{} backend {} ({class}): {}",
            self.backend, self.kind, self.message
        )?;
        if let Some(fix) = &self.remediation {
            write!(f, "; {fix}")?;
        }
        Ok(())
    }
}

/// An error from the embedding broker's `Membership` implementation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// The peer did not answer.
    #[error("peer {0} is unreachable: {1}")]
    Unreachable(NodeName, String),
    /// The peer answered but refused (not clustered, not ready, other cluster name, …).
    #[error("peer {0} refused: {1}")]
    Refused(NodeName, String),
    /// Local state could not be read or written.
    #[error("local membership state: {0}")]
    State(String),
    /// The operation is not valid in the current state.
    #[error("{0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_says_kind_class_and_remediation() {
        let e = DiscoveryError::new(
            "etcd",
            ErrorKind::PermissionDenied,
            "user muster may not read /muster",
        )
        .with_remediation("grant read on the prefix");
        let text = e.to_string();
        assert_eq!(
            text,
            "etcd backend permission denied (permanent): user muster may not read /muster; grant read on the prefix"
        );
        assert!(!e.is_temporary());
        assert!(DiscoveryError::new("dns", ErrorKind::Unavailable, "timeout").is_temporary());
    }
}
