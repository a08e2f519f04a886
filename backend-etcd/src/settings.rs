//! `[cluster_formation.etcd]`.

use std::path::PathBuf;
use std::time::Duration;

use muster_discovery_core::FormationConfig;
use muster_discovery_core::config::{Bound, ConfigError, Secret, check_bounds, duration, on_this_machine};
use serde::Deserialize;

/// The etcd backend's settings. Every key changes behaviour (tests prove it).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdSettings {
    /// `host:port` or `http(s)://host:port` of the etcd members (required).
    pub endpoints: Vec<String>,
    /// etcd user, when authentication is enabled.
    pub username: Option<String>,
    /// Its password (never logged).
    pub password: Option<Secret>,
    /// Send the password without TLS (no `ca_file`) to endpoints other than loopback. Off: such
    /// a setup is refused, since the password would cross the network in clear.
    pub allow_password_without_tls: bool,
    /// CA certificate (PEM) that signs the etcd server certificate; enables TLS.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    pub key_file: Option<PathBuf>,
    /// First component of every key.
    pub key_prefix: String,
    /// Second component of every key: clusters with different names never see each other.
    pub cluster_name: String,
    /// Lease TTL of the node's registration (keep-alive every third of it).
    #[serde(with = "duration")]
    pub node_ttl: Duration,
    /// Lease TTL of the formation lock: a holder that dies loses the lock after this.
    #[serde(with = "duration")]
    pub lock_timeout: Duration,
    /// Time allowed to connect to an endpoint, and for each request.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
}

impl Default for EtcdSettings {
    fn default() -> Self {
        EtcdSettings {
            endpoints: Vec::new(),
            username: None,
            password: None,
            allow_password_without_tls: false,
            ca_file: None,
            cert_file: None,
            key_file: None,
            key_prefix: "muster".into(),
            cluster_name: "default".into(),
            node_ttl: Duration::from_secs(30),
            lock_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

const T: &str = "cluster_formation.etcd";

/// The allowed range of every duration key.
const BOUNDS: &[Bound<EtcdSettings>] = &[
    Bound::duration(
        "node_ttl",
        |s| s.node_ttl,
        Duration::from_secs(5),
        Duration::from_secs(3600),
    ),
    Bound::duration(
        "lock_timeout",
        |s| s.lock_timeout,
        Duration::from_secs(5),
        Duration::from_secs(3600),
    ),
    Bound::duration(
        "connect_timeout",
        |s| s.connect_timeout,
        Duration::from_millis(100),
        Duration::from_secs(300),
    ),
];

fn path_component(key: &str, v: &str) -> Result<(), ConfigError> {
    if v.is_empty() || v.contains('/') {
        return Err(ConfigError::new(
            Some(format!("{T}.{key}")),
            format!("{T}.{key} = {v:?} must be non-empty and must not contain '/'"),
        ));
    }
    Ok(())
}

impl EtcdSettings {
    /// Reads and validates `[cluster_formation.etcd]`.
    pub fn from_config(config: &FormationConfig) -> Result<Self, ConfigError> {
        let s: EtcdSettings = config.backend_settings("etcd")?;
        s.validate()?;
        Ok(s)
    }

    /// Checks required keys, ranges and combinations.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.endpoints.is_empty() {
            return Err(ConfigError::new(
                Some(format!("{T}.endpoints")),
                format!("{T}.endpoints is required, e.g. endpoints = [\"127.0.0.1:2379\"]"),
            ));
        }
        path_component("key_prefix", &self.key_prefix)?;
        path_component("cluster_name", &self.cluster_name)?;
        check_bounds(T, self, BOUNDS)?;
        if self.username.is_some() != self.password.is_some() {
            return Err(ConfigError::new(
                Some(format!("{T}.username")),
                format!("{T}.username and {T}.password must be set together"),
            ));
        }
        let remote = self.endpoints.iter().find(|e| !on_this_machine(e));
        if let (Some(_), None, Some(endpoint), false) = (
            &self.password,
            &self.ca_file,
            remote,
            self.allow_password_without_tls,
        ) {
            return Err(ConfigError::new(
                Some(format!("{T}.password")),
                format!(
                    "{T}.password would be sent in clear to {endpoint}: set {T}.ca_file to use \
                     TLS, or {T}.allow_password_without_tls = true if that network is trusted"
                ),
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(ConfigError::new(
                Some(format!("{T}.cert_file")),
                format!("{T}.cert_file and {T}.key_file must be set together"),
            ));
        }
        if self.cert_file.is_some() && self.ca_file.is_none() {
            return Err(ConfigError::new(
                Some(format!("{T}.ca_file")),
                format!("{T}.ca_file is required with a client certificate"),
            ));
        }
        let tls = self.ca_file.is_some();
        if let Some(e) = self.endpoints.iter().find(|e| e.starts_with("http://") && tls) {
            return Err(ConfigError::new(
                Some(format!("{T}.endpoints")),
                format!("{T}.endpoints has {e:?} but TLS is configured (ca_file); use https:// or host:port"),
            ));
        }
        if let Some(e) = self.endpoints.iter().find(|e| e.starts_with("https://") && !tls) {
            return Err(ConfigError::new(
                Some(format!("{T}.ca_file")),
                format!(
                    "{T}.endpoints has {e:?} but no {T}.ca_file: set the CA that signs the etcd \
                     server certificate (verification is never skipped)"
                ),
            ));
        }
        Ok(())
    }

    /// `/<prefix>/<cluster>`.
    pub fn base(&self) -> String {
        format!("/{}/{}", self.key_prefix, self.cluster_name)
    }

    /// `/<prefix>/<cluster>/nodes/`.
    pub fn nodes_prefix(&self) -> String {
        format!("{}/nodes/", self.base())
    }

    /// `/<prefix>/<cluster>/cluster-id`.
    pub fn cluster_id_key(&self) -> String {
        format!("{}/cluster-id", self.base())
    }

    /// `/<prefix>/<cluster>/lock`.
    pub fn lock_name(&self) -> String {
        format!("{}/lock", self.base())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<EtcdSettings, String> {
        let cfg = FormationConfig::from_toml(text).map_err(|e| e.to_string())?;
        EtcdSettings::from_config(&cfg).map_err(|e| e.to_string())
    }

    #[test]
    fn a_password_without_tls_to_another_host_is_refused() {
        let e = parse(
            "[cluster_formation.etcd]\nendpoints = [\"etcd.internal:2379\"]\nusername = \"u\"\npassword = \"pw-x\"\n",
        )
        .unwrap_err();
        assert!(
            e.contains("allow_password_without_tls") && !e.contains("pw-x"),
            "{e}"
        );
        parse(
            "[cluster_formation.etcd]\nendpoints = [\"etcd.internal:2379\"]\nusername = \"u\"\npassword = \"p\"\n\
             allow_password_without_tls = true\n",
        )
        .unwrap();
    }

    #[test]
    fn the_password_never_prints() {
        let s = parse(
            "[cluster_formation.etcd]\nendpoints = [\"127.0.0.1:2379\"]\nusername = \"u\"\npassword = \"pa55-word\"\n",
        )
        .unwrap();
        assert_eq!(s.password.as_ref().map(Secret::expose), Some("pa55-word"));
        assert!(!format!("{s:?}").contains("pa55-word"), "{s:?}");
    }

    #[test]
    fn defaults_and_keys() {
        let s = parse("[cluster_formation.etcd]\nendpoints = [\"127.0.0.1:2379\"]\n").unwrap();
        assert_eq!(s.node_ttl, Duration::from_secs(30));
        assert_eq!(s.nodes_prefix(), "/muster/default/nodes/");
        assert_eq!(s.cluster_id_key(), "/muster/default/cluster-id");
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse("[cluster_formation.etcd]\n").unwrap_err();
        assert!(e.contains("cluster_formation.etcd.endpoints is required"), "{e}");
        let e = parse("[cluster_formation.etcd]\nendpoints = [\"a:1\"]\nnode_ttl = \"2s\"\n").unwrap_err();
        assert!(
            e.contains("node_ttl = 2s is out of range: allowed 5s to 1h"),
            "{e}"
        );
        let e = parse("[cluster_formation.etcd]\nendpoints = [\"a:1\"]\nkey_prefx = \"x\"\n").unwrap_err();
        assert!(e.contains("did you mean `key_prefix`?"), "{e}");
        let e = parse("[cluster_formation.etcd]\nendpoints = [\"a:1\"]\nusername = \"u\"\n").unwrap_err();
        assert!(e.contains("must be set together"), "{e}");
        let e = parse("[cluster_formation.etcd]\nendpoints = [\"https://a:1\"]\n").unwrap_err();
        assert!(e.contains("verification is never skipped"), "{e}");
        let e = parse("[cluster_formation.etcd]\nendpoints = [\"a:1\"]\nkey_prefix = \"a/b\"\n").unwrap_err();
        assert!(e.contains("must not contain '/'"), "{e}");
    }
}
