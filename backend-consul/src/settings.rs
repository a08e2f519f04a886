//! `[cluster_formation.consul]`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use muster_discovery_core::config::{Bound, ConfigError, Secret, check_bounds, duration, on_this_machine};
use muster_discovery_core::{FormationConfig, Host, NodeName};
use serde::Deserialize;

/// The read consistency of listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// `?consistent`: the leader checks its quorum first. Needed for an authoritative listing.
    Consistent,
    /// The default mode (leader, without the quorum check).
    Default,
    /// `?stale`: any server answers; never authoritative.
    Stale,
}

/// The Consul backend's settings. Every key changes behaviour (tests prove it).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsulSettings {
    /// The agent's HTTP API (default `CONSUL_HTTP_ADDR`, else `http://127.0.0.1:8500`).
    pub address: Option<String>,
    /// The ACL token (default `CONSUL_HTTP_TOKEN`); sent only as `X-Consul-Token`, never logged.
    pub token: Option<Secret>,
    /// A file holding the token (default `CONSUL_HTTP_TOKEN_FILE`).
    pub token_file: Option<PathBuf>,
    /// Send the token over plain `http://` to a host other than loopback. Off: such a setup is
    /// refused, since the token would cross the network in clear.
    pub allow_token_over_http: bool,
    /// The CA that signs the agent's certificate (default `CONSUL_CACERT`); https only.
    pub ca_file: Option<PathBuf>,
    /// A client certificate for mutual TLS (default `CONSUL_CLIENT_CERT`).
    pub cert_file: Option<PathBuf>,
    /// Its key (default `CONSUL_CLIENT_KEY`).
    pub key_file: Option<PathBuf>,
    /// The datacenter (`?dc=`), when not the agent's.
    pub datacenter: Option<String>,
    /// The service every node registers.
    pub service_name: String,
    /// The address registered (default: the node name's host).
    pub service_address: Option<String>,
    /// The port registered (default: the node name's port).
    pub service_port: Option<u16>,
    /// Extra tags.
    pub service_tags: Vec<String>,
    /// Extra metadata (the node's name is added as `muster-node`).
    pub service_meta: BTreeMap<String, String>,
    /// Clusters with different names never see each other: a tag, and part of the KV prefix.
    pub cluster_name: String,
    /// The TTL of the registration's check; heartbeats every third of it.
    #[serde(with = "duration")]
    pub check_ttl: Duration,
    /// Consul removes a service whose check stayed critical this long (it raises anything
    /// under one minute to one minute).
    #[serde(with = "duration")]
    pub deregister_critical_after: Duration,
    /// List services whose check is `warning` too.
    pub include_warning: bool,
    /// The first part of every KV key.
    pub key_prefix: String,
    /// The TTL of the lock's session (10 s to 24 h; Consul may expire it at up to twice that).
    #[serde(with = "duration")]
    pub lock_ttl: Duration,
    /// The session's lock-delay: after a holder dies, nobody gets the lock for this long.
    #[serde(with = "duration")]
    pub lock_delay: Duration,
    /// The longest one attempt waits for the lock.
    #[serde(with = "duration")]
    pub lock_timeout: Duration,
    /// The limit on a non-blocking call (a blocking read waits `wait + wait/16` more).
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// `consistent` (default), `default` or `stale`.
    pub consistency: Consistency,
}

impl Default for ConsulSettings {
    fn default() -> Self {
        ConsulSettings {
            address: None,
            token: None,
            token_file: None,
            allow_token_over_http: false,
            ca_file: None,
            cert_file: None,
            key_file: None,
            datacenter: None,
            service_name: "muster".into(),
            service_address: None,
            service_port: None,
            service_tags: Vec::new(),
            service_meta: BTreeMap::new(),
            cluster_name: "default".into(),
            check_ttl: Duration::from_secs(30),
            deregister_critical_after: Duration::from_secs(90),
            include_warning: false,
            key_prefix: "muster".into(),
            lock_ttl: Duration::from_secs(30),
            lock_delay: Duration::ZERO,
            lock_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(5),
            consistency: Consistency::Consistent,
        }
    }
}

const T: &str = "cluster_formation.consul";

fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::new(Some(format!("{T}.{key}")), message)
}

/// The settings with every default resolved for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedConsul {
    /// The settings as written.
    pub settings: ConsulSettings,
    /// The agent's base URL, without a trailing slash.
    pub address: String,
    /// The token (from the config, the file, or the environment).
    pub token: Option<Secret>,
    /// TLS files after the environment.
    pub ca_file: Option<PathBuf>,
    /// Client certificate.
    pub cert_file: Option<PathBuf>,
    /// Client key.
    pub key_file: Option<PathBuf>,
    /// The registered address.
    pub service_address: String,
    /// The registered port.
    pub service_port: u16,
    /// The service ID: unique per node.
    pub service_id: String,
}

/// Reads an environment variable through `env` (tests pass their own).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

impl ConsulSettings {
    /// Reads and validates `[cluster_formation.consul]` for node `local`; `env` supplies the
    /// `CONSUL_*` defaults.
    pub fn resolve(
        config: &FormationConfig,
        local: &NodeName,
        env: Env<'_>,
    ) -> Result<ResolvedConsul, ConfigError> {
        let s: ConsulSettings = config.backend_settings("consul")?;
        check_bounds(T, &s, BOUNDS)?;
        check_names(&s)?;
        let address = agent_address(&s, env)?;
        let token = token(&s, env, &address)?;
        let (ca_file, cert_file, key_file) = tls_files(&s, env, &address)?;
        let service_address = s.service_address.clone().unwrap_or_else(|| match local.host() {
            Host::Dns(h) => h.clone(),
            Host::V4(ip) => ip.to_string(),
            Host::V6(ip) => ip.to_string(),
        });
        let service_port = s.service_port.or(local.port()).unwrap_or(4370);
        let service_id = format!("{}:{}", s.service_name, local);
        Ok(ResolvedConsul {
            address,
            token,
            ca_file,
            cert_file,
            key_file,
            service_address,
            service_port,
            service_id,
            settings: s,
        })
    }
}

/// The allowed range of every duration key.
const BOUNDS: &[Bound<ConsulSettings>] = &[
    Bound::duration(
        "check_ttl",
        |s| s.check_ttl,
        Duration::from_secs(1),
        Duration::from_secs(86_400),
    ),
    Bound::duration(
        "deregister_critical_after",
        |s| s.deregister_critical_after,
        Duration::from_secs(1),
        Duration::from_secs(7 * 86_400),
    ),
    Bound::duration(
        "lock_ttl",
        |s| s.lock_ttl,
        Duration::from_secs(10),
        Duration::from_secs(86_400),
    ),
    Bound::duration(
        "lock_delay",
        |s| s.lock_delay,
        Duration::ZERO,
        Duration::from_secs(60),
    ),
    Bound::duration(
        "lock_timeout",
        |s| s.lock_timeout,
        Duration::from_millis(100),
        Duration::from_secs(3600),
    ),
    Bound::duration(
        "request_timeout",
        |s| s.request_timeout,
        Duration::from_millis(100),
        Duration::from_secs(120),
    ),
];

/// The names that become parts of KV keys and the service's metadata keys.
fn check_names(s: &ConsulSettings) -> Result<(), ConfigError> {
    for (key, v) in [
        ("service_name", &s.service_name),
        ("cluster_name", &s.cluster_name),
        ("key_prefix", &s.key_prefix),
    ] {
        if v.is_empty() || v.contains('/') || v.contains(char::is_whitespace) {
            return Err(err(
                key,
                format!("{T}.{key} = {v:?} must be non-empty, without '/' or spaces"),
            ));
        }
    }
    for k in s.service_meta.keys() {
        let ok = !k.is_empty()
            && k.len() <= 128
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok || k.starts_with("consul-") || k == "muster-node" {
            return Err(err(
                "service_meta",
                format!(
                    "{T}.service_meta key {k:?}: 1-128 of [A-Za-z0-9_-], not consul-* and not muster-node"
                ),
            ));
        }
    }
    Ok(())
}

/// The agent's base URL: the setting, else `CONSUL_HTTP_ADDR`, else the local agent; `http://`
/// when no scheme is written; no trailing slash.
fn agent_address(s: &ConsulSettings, env: Env<'_>) -> Result<String, ConfigError> {
    let address = s
        .address
        .clone()
        .or_else(|| env("CONSUL_HTTP_ADDR"))
        .unwrap_or_else(|| "http://127.0.0.1:8500".into());
    let address = if address.contains("://") {
        address
    } else {
        format!("http://{address}")
    };
    let address = address.trim_end_matches('/').to_string();
    if !(address.starts_with("http://") || address.starts_with("https://")) {
        return Err(err(
            "address",
            format!("{T}.address = {address:?}: use http:// or https://"),
        ));
    }
    Ok(address)
}

/// The token: the setting, else the token file (the setting's or `CONSUL_HTTP_TOKEN_FILE`),
/// else `CONSUL_HTTP_TOKEN`; refused over plain http to another machine unless allowed.
fn token(s: &ConsulSettings, env: Env<'_>, address: &str) -> Result<Option<Secret>, ConfigError> {
    let token_file = s
        .token_file
        .clone()
        .or_else(|| env("CONSUL_HTTP_TOKEN_FILE").map(PathBuf::from));
    let token = match (&s.token, &token_file) {
        (Some(t), _) => Some(t.expose().to_string()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| err("token_file", format!("{T}.token_file = {}: {e}", f.display())))?
                .trim()
                .to_string(),
        ),
        (None, None) => env("CONSUL_HTTP_TOKEN"),
    }
    .filter(|t| !t.is_empty())
    .map(Secret::new);
    if token.is_some()
        && address.starts_with("http://")
        && !s.allow_token_over_http
        && !on_this_machine(address)
    {
        return Err(err(
            "token",
            format!(
                "{T}: a token would be sent in clear to {address}; use https://, or set \
                 {T}.allow_token_over_http = true if that network is trusted"
            ),
        ));
    }
    Ok(token)
}

/// The CA, the client certificate and its key.
type TlsFiles = (Option<PathBuf>, Option<PathBuf>, Option<PathBuf>);

/// The TLS files: the settings, else `CONSUL_CACERT`, `CONSUL_CLIENT_CERT`,
/// `CONSUL_CLIENT_KEY`; certificate and key together, https only.
fn tls_files(s: &ConsulSettings, env: Env<'_>, address: &str) -> Result<TlsFiles, ConfigError> {
    let from = |set: &Option<PathBuf>, var: &str| set.clone().or_else(|| env(var).map(PathBuf::from));
    let ca_file = from(&s.ca_file, "CONSUL_CACERT");
    let cert_file = from(&s.cert_file, "CONSUL_CLIENT_CERT");
    let key_file = from(&s.key_file, "CONSUL_CLIENT_KEY");
    if cert_file.is_some() != key_file.is_some() {
        return Err(err(
            "cert_file",
            format!("{T}.cert_file and key_file go together"),
        ));
    }
    if (ca_file.is_some() || cert_file.is_some()) && !address.starts_with("https://") {
        return Err(err(
            "ca_file",
            format!("{T}.ca_file / cert_file need an https:// address (got {address})"),
        ));
    }
    Ok((ca_file, cert_file, key_file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(table: &str, env: &[(&str, &str)]) -> Result<ResolvedConsul, String> {
        let cfg = FormationConfig::from_toml(&format!(
            "[cluster_formation]\npeer_discovery_backend = \"consul\"\n[cluster_formation.consul]\n{table}"
        ))
        .map_err(|e| e.to_string())?;
        let env: BTreeMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        ConsulSettings::resolve(&cfg, &"m@10.0.0.5:4370".parse().unwrap(), &|k| {
            env.get(k).cloned()
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn a_token_over_plain_http_to_another_host_is_refused() {
        let e = resolve("address = \"http://consul.internal:8500\"\ntoken = \"t0k\"", &[]).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("cluster_formation.consul.allow_token_over_http") && !text.contains("t0k"),
            "{text}"
        );
        for ok in [
            "address = \"http://127.0.0.1:8500\"\ntoken = \"t\"",
            "address = \"http://localhost:8500/\"\ntoken = \"t\"",
            "address = \"http://[::1]:8500\"\ntoken = \"t\"",
            "address = \"https://consul.internal:8501\"\ntoken = \"t\"",
            "address = \"http://consul.internal:8500\"",
        ] {
            assert!(resolve(ok, &[]).is_ok(), "{ok}");
        }
    }

    #[test]
    fn defaults_and_the_environment() {
        let r = resolve("", &[]).unwrap();
        assert_eq!(r.address, "http://127.0.0.1:8500");
        assert_eq!((r.service_address.as_str(), r.service_port), ("10.0.0.5", 4370));
        assert_eq!(r.service_id, "muster:m@10.0.0.5:4370");
        assert_eq!(r.token, None);
        let r = resolve(
            "allow_token_over_http = true",
            &[
                ("CONSUL_HTTP_ADDR", "consul:8500"),
                ("CONSUL_HTTP_TOKEN", "secret"),
            ],
        )
        .unwrap();
        assert_eq!(r.address, "http://consul:8500");
        assert_eq!(r.token.as_ref().map(Secret::expose), Some("secret"));
        assert!(
            !format!("{r:?}").contains("secret"),
            "Debug shows no token: {r:?}"
        );
        let r = resolve(
            "address = \"https://c:8501/\"\ntoken = \"t\"",
            &[("CONSUL_HTTP_TOKEN", "env")],
        )
        .unwrap();
        assert_eq!(
            (r.address.as_str(), r.token.as_ref().map(Secret::expose)),
            ("https://c:8501", Some("t")),
            "the config wins"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        for (table, want) in [
            ("lock_ttl = \"5s\"", "cluster_formation.consul.lock_ttl"),
            ("lock_delay = \"2m\"", "cluster_formation.consul.lock_delay"),
            ("cluster_name = \"a/b\"", "cluster_formation.consul.cluster_name"),
            (
                "consistency = \"eventual\"",
                "cluster_formation.consul.consistency",
            ),
            (
                "service_meta = { \"consul-x\" = \"1\" }",
                "cluster_formation.consul.service_meta",
            ),
            ("cert_file = \"/c\"", "cert_file and key_file go together"),
            ("ca_file = \"/c\"", "need an https:// address"),
            ("address = \"ftp://x\"", "use http:// or https://"),
            (
                "token_file = \"/nonexistent/token\"",
                "cluster_formation.consul.token_file",
            ),
        ] {
            let e = resolve(table, &[]).unwrap_err();
            assert!(e.contains(want), "{table}: {e}");
        }
    }
}
