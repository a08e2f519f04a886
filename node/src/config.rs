//! The node's TOML config: `[node]`, optional `[http]`, and discovery-core's `[cluster_formation]`.
//!
//! Environment overrides, only when asked for (`load_with_env`, which the `muster` command
//! uses), applied after the file: `MUSTER_NODE_NAME`, `MUSTER_LISTEN`, `MUSTER_DATA_DIR`,
//! `MUSTER_COOKIE_FILE`, `MUSTER_CLUSTER_NAME`, `MUSTER_HTTP_LISTEN`; the cookie itself may come
//! from `MUSTER_COOKIE` instead of a file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use muster::config::{ConfigError, check_duration, duration, from_toml_str};
use muster::{FormationConfig, Host, NodeName};
use serde::{Deserialize, Serialize};

use crate::tls::TlsSection;

/// The default peer port when a node name carries none.
pub const DEFAULT_PORT: u16 = 4370;

/// `[node]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// `prefix@host[:port]`; peers reach the node at host:port (default port 4370).
    pub name: Option<NodeName>,
    /// Where to listen for peers (default: the name's address if it is an IP, else 0.0.0.0, on the
    /// name's port).
    #[serde(default, with = "socket_addr")]
    pub listen: Option<SocketAddr>,
    /// Where membership state is persisted.
    pub data_dir: Option<PathBuf>,
    /// The cookie file (mode 0600), unless `MUSTER_COOKIE` is set.
    pub cookie_file: Option<PathBuf>,
    /// Nodes only talk to nodes with the same cluster name.
    #[serde(default = "default_cluster_name")]
    pub cluster_name: String,
    /// Anti-entropy period: how often membership is exchanged with one peer.
    #[serde(default = "default_sync", with = "duration")]
    pub sync_interval: Duration,
    /// This node's metadata (a client port, a zone), shown to every member; at most 4 KiB.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metadata: std::collections::BTreeMap<String, String>,
}

fn default_cluster_name() -> String {
    "default".to_string()
}

fn default_sync() -> Duration {
    Duration::from_secs(2)
}

/// `[http]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// Address of the health/status/metrics endpoints.
    #[serde(default, with = "socket_addr")]
    pub listen: Option<SocketAddr>,
    /// Whether `/status` shows members' names and addresses, the cluster id, the formation
    /// trace and the last backend error; off, it shows only this node's phase and counts (the
    /// HTTP endpoints are not authenticated).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub status_detail: bool,
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// `[node]`.
    pub node: NodeSection,
    /// `[http]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSection>,
    /// `[cluster_formation]`.
    #[serde(default)]
    pub cluster_formation: FormationConfig,
    /// `[tls]`: optional mutual TLS under the peer channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSection>,
    /// `[service]`: the embedding service's own settings, in the same file; the runtime does not
    /// read them (see [`NodeConfig::service`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<toml::Table>,
}

/// A validated config with the required values resolved.
#[derive(Debug, Clone)]
pub struct ResolvedConfig {
    /// The file's content after overrides (printed by `config check`).
    pub file: NodeConfig,
    /// The node name.
    pub name: NodeName,
    /// The peer listen address.
    pub listen: SocketAddr,
    /// The data dir.
    pub data_dir: PathBuf,
    /// The HTTP listen address.
    pub http: Option<SocketAddr>,
    /// Backend tables present whose backend this build does not have, so their keys went
    /// unchecked (see `muster::check_backend_tables`).
    pub unchecked_tables: Vec<&'static str>,
    /// Whether the environment overrides applied (then `MUSTER_COOKIE` may hold the cookie).
    pub environment: bool,
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

fn parse_env<T: std::str::FromStr>(key: &str) -> Result<Option<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    env(key)
        .map(|v| {
            v.parse::<T>()
                .map_err(|e| ConfigError::new(Some(key.into()), format!("{key}={v:?}: {e}")))
        })
        .transpose()
}

/// A listen address: an IP and a port. A host name ("localhost:4380") is refused with the IP to
/// write instead, since a listener binds an address, not a name.
mod socket_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(a: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match a {
            Some(a) => s.collect_str(a),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        text.parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(hint(&text)))
    }

    fn hint(text: &str) -> String {
        let port = text
            .rsplit_once(':')
            .map(|(_, p)| p)
            .filter(|p| p.parse::<u16>().is_ok());
        match port {
            Some(port) if text.starts_with("localhost:") => format!(
                "{text:?} is not an IP address and port: a listener binds an address; write \"127.0.0.1:{port}\" (or \"[::1]:{port}\")"
            ),
            Some(port) => format!(
                "{text:?} is not an IP address and port: a listener binds an address, not a host name; write the host's IP, e.g. \"192.168.1.10:{port}\""
            ),
            None => format!("{text:?} is not an IP address and port such as \"127.0.0.1:4380\""),
        }
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(None, format!("cannot read config file {}: {e}", path.display())))
}

/// The port peers use to reach `name`.
pub fn peer_port(name: &NodeName) -> u16 {
    name.port().unwrap_or(DEFAULT_PORT)
}

/// The `host:port` peers use to reach `name`.
pub fn peer_address(name: &NodeName) -> String {
    format!("{}:{}", name.host(), peer_port(name))
}

impl NodeConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<ResolvedConfig, ConfigError> {
        Self::from_text(&read(path)?)
    }

    /// Reads a config file, applies the `MUSTER_*` environment overrides, and validates it.
    pub fn load_with_env(path: &Path) -> Result<ResolvedConfig, ConfigError> {
        Self::from_text_with_env(&read(path)?)
    }

    /// The `[service]` table as the service's own settings type (its defaults when the table is
    /// absent); an error names the key under `service.`.
    pub fn service<T: serde::de::DeserializeOwned + Default>(&self) -> Result<T, ConfigError> {
        match &self.service {
            Some(t) => muster::config::from_toml_table(t, "service"),
            None => Ok(T::default()),
        }
    }

    /// The effective settings as TOML, every secret (backend tokens, passwords) redacted: what
    /// `muster config check` prints.
    pub fn effective_toml(&self) -> Result<String, ConfigError> {
        let printable =
            |e: toml::ser::Error| ConfigError::new(None, format!("cannot print the settings: {e}"));
        let mut value = toml::Value::try_from(self).map_err(printable)?;
        muster::config::redact_secrets(&mut value);
        toml::to_string(&value).map_err(printable)
    }

    /// Same as [`NodeConfig::load`] from text.
    pub fn from_text(text: &str) -> Result<ResolvedConfig, ConfigError> {
        Self::parse(text, false)
    }

    /// Same as [`NodeConfig::load_with_env`] from text.
    pub fn from_text_with_env(text: &str) -> Result<ResolvedConfig, ConfigError> {
        Self::parse(text, true)
    }

    fn parse(text: &str, environment: bool) -> Result<ResolvedConfig, ConfigError> {
        let mut file: NodeConfig = from_toml_str(text)?;
        file.cluster_formation.derive_unset(text);
        if environment {
            file.apply_env()?;
        }
        let mut r = file.resolve()?;
        r.environment = environment;
        Ok(r)
    }

    fn apply_env(&mut self) -> Result<(), ConfigError> {
        if let Some(v) = parse_env("MUSTER_NODE_NAME")? {
            self.node.name = Some(v);
        }
        if let Some(v) = parse_env("MUSTER_LISTEN")? {
            self.node.listen = Some(v);
        }
        if let Some(v) = env("MUSTER_DATA_DIR") {
            self.node.data_dir = Some(v.into());
        }
        if let Some(v) = env("MUSTER_COOKIE_FILE") {
            self.node.cookie_file = Some(v.into());
        }
        if let Some(v) = env("MUSTER_CLUSTER_NAME") {
            self.node.cluster_name = v;
        }
        if let Some(v) = parse_env("MUSTER_HTTP_LISTEN")? {
            let status_detail = self.http.as_ref().is_some_and(|h| h.status_detail);
            self.http = Some(HttpSection {
                listen: Some(v),
                status_detail,
            });
        }
        Ok(())
    }

    fn resolve(self) -> Result<ResolvedConfig, ConfigError> {
        self.cluster_formation.validate()?;
        let unchecked_tables = muster::check_backend_tables(&self.cluster_formation)?;
        let name = self.node.name.clone().ok_or_else(|| {
            ConfigError::new(
                Some("node.name".into()),
                "node.name is required (or set MUSTER_NODE_NAME)",
            )
        })?;
        let data_dir = self.node.data_dir.clone().ok_or_else(|| {
            ConfigError::new(
                Some("node.data_dir".into()),
                "node.data_dir is required (or set MUSTER_DATA_DIR)",
            )
        })?;
        let port = peer_port(&name);
        let listen = match self.node.listen {
            Some(l) => l,
            None => match name.host() {
                Host::V4(ip) => SocketAddr::from((*ip, port)),
                Host::V6(ip) => SocketAddr::from((*ip, port)),
                Host::Dns(_) => SocketAddr::from(([0, 0, 0, 0], port)),
            },
        };
        if listen.port() != port {
            return Err(ConfigError::new(
                Some("node.listen".into()),
                format!(
                    "node.listen port {} differs from the port peers use to reach {name} ({port}); \
                     put the port in node.name, e.g. {}@{}:{}",
                    listen.port(),
                    name.prefix(),
                    name.host(),
                    listen.port()
                ),
            ));
        }
        if self.node.cluster_name.is_empty() || self.node.cluster_name.len() > 255 {
            return Err(ConfigError::new(
                Some("node.cluster_name".into()),
                "node.cluster_name must be 1-255 characters",
            ));
        }
        check_duration(
            "node.sync_interval",
            self.node.sync_interval,
            Duration::from_millis(100),
            Duration::from_secs(3600),
        )?;
        let http = self.http.as_ref().and_then(|h| h.listen);
        Ok(ResolvedConfig {
            file: self,
            name,
            listen,
            data_dir,
            http,
            unchecked_tables,
            environment: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example in docs/configuration.md is a whole config that resolves as it is.
    #[test]
    fn the_documented_example_resolves() {
        let doc = include_str!("../../docs/configuration.md");
        let example = doc
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("a toml example");
        let r = NodeConfig::from_text(example).unwrap_or_else(|e| panic!("{e}\n{example}"));
        assert_eq!(r.name.to_string(), "muster@rpi-master");
    }

    #[test]
    fn a_host_name_as_listen_address_is_refused_with_the_ip_to_write() {
        let base = "[node]\nname = \"muster@127.0.0.1:5001\"\ndata_dir = \"/tmp/x\"\n";
        let e = NodeConfig::from_text(&format!("{base}[http]\nlisten = \"localhost:4380\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("http.listen") && e.contains("\"127.0.0.1:4380\""),
            "{e}"
        );
        let r = NodeConfig::from_text(&format!("{base}[http]\nlisten = \"127.0.0.1:4380\"\n")).unwrap();
        assert_eq!(r.http, Some("127.0.0.1:4380".parse().unwrap()));
        let text = r.file.effective_toml().unwrap();
        assert!(text.contains("listen = \"127.0.0.1:4380\""), "{text}");
    }

    #[test]
    fn the_service_table_is_the_services_own_with_errors_naming_its_keys() {
        #[derive(Debug, Default, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Kv {
            http: Option<String>,
        }
        let base = "[node]\nname = \"m@127.0.0.1:5001\"\ndata_dir = \"/x\"\n";
        let r = NodeConfig::from_text(&format!("{base}[service]\nhttp = \"127.0.0.1:8001\"\n")).unwrap();
        assert_eq!(
            r.file.service::<Kv>().unwrap().http.as_deref(),
            Some("127.0.0.1:8001")
        );
        let r = NodeConfig::from_text(base).unwrap();
        assert!(r.file.service::<Kv>().unwrap().http.is_none());
        let r = NodeConfig::from_text(&format!("{base}[service]\nhtp = 1\n")).unwrap();
        let e = r.file.service::<Kv>().unwrap_err().to_string();
        assert!(e.contains("service") && e.contains("htp"), "{e}");
    }

    #[test]
    fn minimal_config_resolves_with_defaults() {
        let r = NodeConfig::from_text("[node]\nname = \"muster@127.0.0.1:5001\"\ndata_dir = \"/tmp/x\"\n")
            .unwrap();
        assert_eq!(r.listen, "127.0.0.1:5001".parse().unwrap());
        assert_eq!(r.file.node.cluster_name, "default");
        assert_eq!(r.file.cluster_formation.peer_discovery_backend, "classic");
        let r = NodeConfig::from_text("[node]\nname = \"muster@rpi-node1\"\ndata_dir = \"/x\"\n").unwrap();
        assert_eq!(r.listen, "0.0.0.0:4370".parse().unwrap());
        assert_eq!(peer_address(&r.name), "rpi-node1:4370");
    }

    #[test]
    fn effective_settings_print_no_secret() {
        let r = NodeConfig::from_text(
            "[node]\nname = \"m@127.0.0.1:5001\"\ndata_dir = \"/x\"\n\
             [cluster_formation]\npeer_discovery_backend = \"consul\"\n\
             [cluster_formation.consul]\ntoken = \"c0nsul-t0ken\"\n\
             [cluster_formation.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\nusername = \"u\"\npassword = \"etcd-pa55\"\n",
        )
        .unwrap();
        let text = r.file.effective_toml().unwrap();
        assert!(
            !text.contains("c0nsul-t0ken") && !text.contains("etcd-pa55"),
            "{text}"
        );
        assert!(
            text.contains("http://127.0.0.1:2379") && text.contains("<redacted>"),
            "{text}"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = NodeConfig::from_text("[node]\ndata_dir = \"/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("node.name is required"), "{e}");
        let e = NodeConfig::from_text("[node]\nname = \"m@h\"\ndata_dir = \"/x\"\nlisten = \"0.0.0.0:1\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("node.listen port 1 differs"), "{e}");
        let e = NodeConfig::from_text("[node]\nname = \"m@h\"\ndata_dri = \"/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("did you mean `data_dir`?"), "{e}");
        let e = NodeConfig::from_text(
            "[node]\nname = \"m@h\"\ndata_dir = \"/x\"\n[cluster_formation]\ndiscovery_retry_limit = 0\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("discovery_retry_limit = 0 is out of range"), "{e}");
    }
}
