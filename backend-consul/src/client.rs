//! The thin Consul HTTP client: the dozen endpoints the backend uses, over `reqwest` (rustls on
//! aws-lc). The token goes only in the `X-Consul-Token` header, never in a URL or a message.
//! Non-blocking calls are bounded by `request_timeout`; a blocking read by its `wait` plus
//! `wait/16` (Consul's jitter) plus `request_timeout`, so a long wait never times out early.

use std::time::Duration;

use muster_discovery_core::{ConfigError, DiscoveryError, ErrorKind, RetryClass};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::NAME;
use crate::settings::{Consistency, ResolvedConsul};

/// Consul's answer to a call.
#[derive(Debug)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// `X-Consul-Index` (at least 1 when present).
    pub index: Option<u64>,
    /// `X-Consul-KnownLeader`.
    pub known_leader: bool,
    /// `X-Consul-Results-Filtered-By-ACLs`.
    pub filtered: bool,
    /// The body (Consul's errors are plain text).
    pub body: String,
}

/// A blocking read: the index to wait past, and how long to wait.
#[derive(Debug, Clone, Copy)]
pub struct Block {
    /// Wait until the index is past this.
    pub index: u64,
    /// At most this long (Consul adds up to wait/16).
    pub wait: Duration,
}

/// A duration as Consul's Go parser reads it, in whole milliseconds.
pub fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// The client.
#[derive(Clone)]
pub struct Consul {
    http: reqwest::Client,
    base: String,
    token: Option<muster_discovery_core::config::Secret>,
    dc: Option<String>,
    limit: Duration,
}

impl std::fmt::Debug for Consul {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        write!(f, "Consul({})", self.base)
    }
}

/// A TLS file or client setting that cannot be used, naming its key.
fn misconfigured(key: &str, message: String) -> ConfigError {
    ConfigError::new(Some(format!("cluster_formation.consul.{key}")), message)
}

impl Consul {
    /// A client for the resolved settings (reads the TLS files).
    pub fn new(r: &ResolvedConsul) -> Result<Consul, ConfigError> {
        // No redirects: one would resend X-Consul-Token to wherever it points, and the agent's
        // API never redirects.
        let mut b = reqwest::Client::builder()
            .connect_timeout(r.settings.request_timeout)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &r.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                misconfigured(
                    "ca_file",
                    format!("cluster_formation.consul.ca_file = {}: {e}", ca.display()),
                )
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                misconfigured(
                    "ca_file",
                    format!("cluster_formation.consul.ca_file = {}: {e}", ca.display()),
                )
            })?;
            b = b.tls_certs_only(certs);
        }
        if let (Some(cert), Some(key)) = (&r.cert_file, &r.key_file) {
            let mut pem = std::fs::read(cert).map_err(|e| {
                misconfigured(
                    "cert_file",
                    format!("cluster_formation.consul.cert_file = {}: {e}", cert.display()),
                )
            })?;
            pem.extend(std::fs::read(key).map_err(|e| {
                misconfigured(
                    "key_file",
                    format!("cluster_formation.consul.key_file = {}: {e}", key.display()),
                )
            })?);
            let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
                misconfigured(
                    "cert_file",
                    format!("cluster_formation.consul.cert_file/key_file: {e}"),
                )
            })?;
            b = b.identity(id);
        }
        let http = b
            .build()
            .map_err(|e| ConfigError::new(None, format!("cannot build the Consul client: {e}")))?;
        Ok(Consul {
            http,
            base: r.address.clone(),
            token: r.token.clone(),
            dc: r.settings.datacenter.clone(),
            limit: r.settings.request_timeout,
        })
    }

    /// [`Consul::call`] with no query, body or blocking: a plain agent or KV request.
    pub async fn call_bare(&self, what: &str, method: Method, path: &str) -> Result<Reply, DiscoveryError> {
        self.call(what, method, path, &[], None, None).await
    }

    /// One call. `what` says what it was for, in errors.
    pub async fn call(
        &self,
        what: &str,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
        block: Option<Block>,
    ) -> Result<Reply, DiscoveryError> {
        let mut q: Vec<(&str, String)> = query.to_vec();
        if let Some(dc) = &self.dc {
            q.push(("dc", dc.clone()));
        }
        let mut limit = self.limit;
        if let Some(b) = block {
            q.push(("index", b.index.max(1).to_string()));
            q.push(("wait", go_duration(b.wait)));
            limit += b.wait + b.wait / 16;
        }
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .query(&q);
        if let Some(t) = &self.token {
            req = req.header("X-Consul-Token", t.expose());
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        let sent = tokio::time::timeout(limit, async {
            let resp = req.send().await?;
            let status = resp.status();
            let h = resp.headers().clone();
            let body = resp.text().await?;
            Ok::<_, reqwest::Error>((status, h, body))
        })
        .await;
        let (status, h, body) = match sent {
            Err(_) => {
                return Err(DiscoveryError::new(
                    NAME,
                    ErrorKind::Unavailable,
                    format!("{what}: no answer from Consul at {} within {limit:?}", self.base),
                )
                .with_retry(RetryClass::Temporary));
            }
            Ok(Err(e)) => {
                // reqwest's error text names the URL, which carries no token.
                return Err(DiscoveryError::new(
                    NAME,
                    ErrorKind::Unavailable,
                    format!("{what}: Consul at {} is unreachable: {e}", self.base),
                )
                .with_retry(RetryClass::Temporary));
            }
            Ok(Ok(r)) => r,
        };
        let header = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(String::from);
        let reply = Reply {
            status,
            index: header("X-Consul-Index")
                .and_then(|v| v.parse::<u64>().ok())
                .map(|i| i.max(1)),
            known_leader: header("X-Consul-KnownLeader").as_deref() == Some("true"),
            filtered: header("X-Consul-Results-Filtered-By-ACLs").as_deref() == Some("true"),
            body,
        };
        Ok(reply)
    }

    /// The consistency query parameter.
    pub fn consistency(c: Consistency) -> Vec<(&'static str, String)> {
        match c {
            Consistency::Consistent => vec![("consistent", String::new())],
            Consistency::Default => Vec::new(),
            Consistency::Stale => vec![("stale", String::new())],
        }
    }
}

/// A reply that is not a success, as a backend error (403 names the ACL rule to grant).
pub fn failure(what: &str, rule: &str, r: &Reply) -> DiscoveryError {
    let body = r.body.trim();
    let (kind, message) = match r.status.as_u16() {
        403 => (
            ErrorKind::PermissionDenied,
            format!("{what}: the ACL token is not allowed ({body}); its policy needs: {rule}"),
        ),
        429 | 500..=599 => (
            ErrorKind::Unavailable,
            format!("{what}: Consul answered {}: {body}", r.status),
        ),
        400 => (
            ErrorKind::Misconfigured,
            format!("{what}: Consul refused the request: {body}"),
        ),
        _ => (
            ErrorKind::Other,
            format!("{what}: Consul answered {}: {body}", r.status),
        ),
    };
    DiscoveryError::new(NAME, kind, message)
}

/// `true`/`false` bodies of KV and session writes.
pub fn truth(r: &Reply) -> bool {
    r.body.trim() == "true"
}

/// The JSON body of a successful read.
pub fn json(what: &str, r: &Reply) -> Result<Value, DiscoveryError> {
    serde_json::from_str(&r.body).map_err(|e| {
        DiscoveryError::new(
            NAME,
            ErrorKind::Other,
            format!("{what}: Consul's answer is not JSON: {e}"),
        )
    })
}
