//! API errors classified by HTTP status (never by the reason string), with messages that say
//! what to change: a 401 is a rejected token, a 403 names the verb, resource and API group and
//! prints the Role rule to add, a 404 names the object; 429, 5xx and transport errors are
//! temporary (the engine retries them; an error is never turned into an empty list).

use std::future::Future;
use std::time::Duration;

use muster_discovery_core::{DiscoveryError, ErrorKind, RetryClass};

use crate::NAME;

/// What a call needs from the Role, for the 403 message when the server's text cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// The API group (`""` for the core group).
    pub group: &'static str,
    /// The resource (plural).
    pub resource: &'static str,
    /// The verb.
    pub verb: &'static str,
}

impl Rule {
    /// A rule.
    pub const fn new(group: &'static str, resource: &'static str, verb: &'static str) -> Rule {
        Rule {
            group,
            resource,
            verb,
        }
    }
}

/// The Role rule to add, as YAML.
pub fn role_rule(group: &str, resource: &str, verb: &str) -> String {
    format!("- apiGroups: [\"{group}\"]\n  resources: [\"{resource}\"]\n  verbs: [\"{verb}\"]")
}

/// The verb, resource and group out of the API server's 403 message: `… cannot <verb> resource
/// "<resource>" in API group "<group>" …`.
pub fn forbidden_parts(message: &str) -> Option<(String, String, String)> {
    let rest = message.split_once(" cannot ")?.1;
    let (verb, rest) = rest.split_once(" resource \"")?;
    let (resource, rest) = rest.split_once('"')?;
    let group = rest.split_once("in API group \"")?.1.split_once('"')?.0;
    Some((verb.to_string(), resource.to_string(), group.to_string()))
}

/// The HTTP status of an API error, if `e` is one.
pub fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// `e`, met while doing `what` (needing `rule`), as a backend error.
pub fn map(what: &str, rule: Rule, e: kube::Error) -> DiscoveryError {
    let (kind, message) = match &e {
        kube::Error::Api(s) => match s.code {
            401 => (
                ErrorKind::PermissionDenied,
                format!(
                    "{what}: the API server rejected the token (401 {}): expired, or not re-read as it \
                     rotates?",
                    s.reason
                ),
            ),
            403 => {
                let (verb, resource, group) = forbidden_parts(&s.message).unwrap_or_else(|| {
                    (
                        rule.verb.to_string(),
                        rule.resource.to_string(),
                        rule.group.to_string(),
                    )
                });
                (
                    ErrorKind::PermissionDenied,
                    format!(
                        "{what}: permission denied: the service account cannot {verb} {resource} \
                         (API group \"{group}\"); add this rule to its Role:\n{}\n(server said: {})",
                        role_rule(&group, &resource, &verb),
                        s.message
                    ),
                )
            }
            404 => (ErrorKind::NotFound, format!("{what}: not found: {}", s.message)),
            429 | 500..=599 => (
                ErrorKind::Unavailable,
                format!(
                    "{what}: the API server is busy or failing ({} {}): {}",
                    s.code, s.reason, s.message
                ),
            ),
            code => (
                ErrorKind::Other,
                format!("{what}: {code} {}: {}", s.reason, s.message),
            ),
        },
        kube::Error::Auth(a) => (ErrorKind::PermissionDenied, format!("{what}: credentials: {a}")),
        kube::Error::InferConfig(c) => (ErrorKind::Misconfigured, format!("{what}: {c}")),
        kube::Error::InferKubeconfig(c) => (ErrorKind::Misconfigured, format!("{what}: {c}")),
        kube::Error::SerdeError(s) => (ErrorKind::Other, format!("{what}: unexpected answer: {s}")),
        other => (
            ErrorKind::Unavailable,
            format!("{what}: the API server is unreachable: {other}"),
        ),
    };
    let err = DiscoveryError::new(NAME, kind, message);
    match kind {
        ErrorKind::Unavailable => err.with_retry(RetryClass::Temporary),
        _ => err,
    }
}

/// Runs one API call within `limit` (kube has no read timeout of its own by default).
pub async fn bounded<T>(
    what: &str,
    rule: Rule,
    limit: Duration,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, DiscoveryError> {
    match tokio::time::timeout(limit, call).await {
        Ok(r) => r.map_err(|e| map(what, rule, e)),
        Err(_) => Err(DiscoveryError::new(
            NAME,
            ErrorKind::Unavailable,
            format!("{what}: no answer from the API server within {limit:?}"),
        )
        .with_retry(RetryClass::Temporary)),
    }
}

/// Like [`bounded`], keeping the API error (for callers that handle 404 or 409 themselves).
pub async fn raw<T>(
    what: &str,
    limit: Duration,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<Result<T, kube::Error>, DiscoveryError> {
    tokio::time::timeout(limit, call).await.map_err(|_| {
        DiscoveryError::new(
            NAME,
            ErrorKind::Unavailable,
            format!("{what}: no answer from the API server within {limit:?}"),
        )
        .with_retry(RetryClass::Temporary)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forbidden_message_gives_verb_resource_and_group() {
        let m = "leases.coordination.k8s.io \"x\" is forbidden: User \"system:serviceaccount:prod:muster\" \
                 cannot update resource \"leases\" in API group \"coordination.k8s.io\" in the namespace \"prod\"";
        assert_eq!(
            forbidden_parts(m),
            Some(("update".into(), "leases".into(), "coordination.k8s.io".into()))
        );
        let core = "pods is forbidden: User \"system:serviceaccount:p:m\" cannot list resource \"pods\" in API \
                    group \"\" in the namespace \"p\"";
        assert_eq!(
            forbidden_parts(core),
            Some(("list".into(), "pods".into(), String::new()))
        );
        assert_eq!(forbidden_parts("nope"), None);
    }

    #[test]
    fn the_role_rule_is_yaml_to_paste() {
        assert_eq!(
            role_rule("apps", "statefulsets", "get"),
            "- apiGroups: [\"apps\"]\n  resources: [\"statefulsets\"]\n  verbs: [\"get\"]"
        );
    }
}
