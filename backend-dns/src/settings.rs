//! `[cluster_formation.dns]`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use muster_discovery_core::FormationConfig;
use muster_discovery_core::config::{Bound, ConfigError, check_bounds, duration};
use serde::{Deserialize, Deserializer};

/// How A/AAAA answers become node names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressType {
    /// Reverse (PTR) lookup of each address, as RabbitMQ does.
    #[default]
    Hostname,
    /// The address itself (what containers usually need).
    Ip,
}

/// Which form of a PTR name becomes the host of a node name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NameForm {
    /// The first label (`node1` of `node1.example.`).
    #[default]
    Short,
    /// The full name without the trailing dot.
    Fqdn,
}

/// The DNS backend's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSettings {
    /// A name whose A and AAAA records are the candidates.
    pub hostname: Option<String>,
    /// An SRV name (`_muster._tcp.peers.example.`) whose targets and ports are the candidates.
    pub srv: Option<String>,
    /// For `hostname`: names from PTR records, or the addresses themselves.
    pub address_type: AddressType,
    /// For PTR names: short or fully qualified.
    pub name_form: NameForm,
    /// `ip:port` (or `ip`, port 53) of the nameservers to ask; empty: the system configuration.
    #[serde(deserialize_with = "nameservers")]
    pub nameservers: Vec<SocketAddr>,
    /// Time allowed for one query.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Tries per query.
    pub attempts: u32,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            hostname: None,
            srv: None,
            address_type: AddressType::Hostname,
            name_form: NameForm::Short,
            nameservers: Vec::new(),
            timeout: Duration::from_secs(2),
            attempts: 2,
        }
    }
}

fn nameservers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    Vec::<String>::deserialize(d)?
        .into_iter()
        .map(|text| {
            text.parse::<SocketAddr>()
                .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "nameserver {text:?} is not an address: write ip:port, e.g. \"10.0.0.2:53\" or \"[fd00::2]:53\""
                    ))
                })
        })
        .collect()
}

const T: &str = "cluster_formation.dns";

/// The allowed range of every numeric and duration key.
const BOUNDS: &[Bound<DnsSettings>] = &[
    Bound::duration(
        "timeout",
        |s| s.timeout,
        Duration::from_millis(50),
        Duration::from_secs(60),
    ),
    Bound::count("attempts", |s| u64::from(s.attempts), 1, 10),
];

impl DnsSettings {
    /// Reads and validates `[cluster_formation.dns]`.
    pub fn from_config(config: &FormationConfig) -> Result<Self, ConfigError> {
        let s: DnsSettings = config.backend_settings("dns")?;
        s.validate()?;
        Ok(s)
    }

    /// Checks that exactly one of hostname and srv is set, and the ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match (&self.hostname, &self.srv) {
            (None, None) => {
                return Err(ConfigError::new(
                    Some(format!("{T}.hostname")),
                    format!("set {T}.hostname (A/AAAA records) or {T}.srv (SRV records)"),
                ));
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    Some(format!("{T}.srv")),
                    format!("set only one of {T}.hostname and {T}.srv"),
                ));
            }
            _ => {}
        }
        for (key, v) in [("hostname", &self.hostname), ("srv", &self.srv)] {
            if let Some(name) = v
                && (name.is_empty() || name.contains(' '))
            {
                return Err(ConfigError::new(
                    Some(format!("{T}.{key}")),
                    format!("{T}.{key} = {name:?} is not a DNS name"),
                ));
            }
        }
        check_bounds(T, self, BOUNDS)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DnsSettings, String> {
        let cfg = FormationConfig::from_toml(text).map_err(|e| e.to_string())?;
        DnsSettings::from_config(&cfg).map_err(|e| e.to_string())
    }

    #[test]
    fn reads_both_modes_and_nameservers() {
        let s = parse("[cluster_formation.dns]\nhostname = \"peers.example\"\nnameservers = [\"127.0.0.1:15353\", \"10.0.0.2\"]\naddress_type = \"ip\"\n").unwrap();
        assert_eq!(s.address_type, AddressType::Ip);
        assert_eq!(
            s.nameservers,
            vec!["127.0.0.1:15353".parse().unwrap(), "10.0.0.2:53".parse().unwrap()]
        );
        let s =
            parse("[cluster_formation.dns]\nsrv = \"_muster._tcp.peers.example.\"\nname_form = \"fqdn\"\n")
                .unwrap();
        assert_eq!(s.name_form, NameForm::Fqdn);
    }

    #[test]
    fn errors_name_the_key() {
        assert!(
            parse("[cluster_formation.dns]\n")
                .unwrap_err()
                .contains("set cluster_formation.dns.hostname")
        );
        assert!(
            parse("[cluster_formation.dns]\nhostname = \"a\"\nsrv = \"b\"\n")
                .unwrap_err()
                .contains("only one")
        );
        let e = parse("[cluster_formation.dns]\nhostname = \"a\"\nnameservers = [\"dns.example:53\"]\n")
            .unwrap_err();
        assert!(e.contains("is not an address"), "{e}");
        let e = parse("[cluster_formation.dns]\nhostname = \"a\"\naddress_type = \"ipv4\"\n").unwrap_err();
        assert!(e.contains("did you mean `ip`?"), "{e}");
        let e = parse("[cluster_formation.dns]\nhostname = \"a\"\nattempts = 0\n").unwrap_err();
        assert!(e.contains("attempts = 0 is out of range"), "{e}");
    }
}
