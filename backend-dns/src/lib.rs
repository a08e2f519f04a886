//! # muster-backend-dns
//!
//! The DNS backend: A/AAAA records of a host name (turned into node names by reverse lookup, or
//! used as plain addresses), or SRV records with their ports. DNS lists are not authoritative: a
//! name with no records means "no candidates yet" (formation waits) and DNS never drives forced
//! removal. See `docs/backends/dns.md`.

// No panics on input from the network, a file or the environment.
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

mod settings;

use std::net::IpAddr;

use async_trait::async_trait;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::{Resolver, TokioResolver};
use muster_discovery_core::{
    ConfigError, Discovery, DiscoveryError, DiscoveryResult, ErrorKind, FormationConfig, Host, NodeName,
};
use tracing::warn;

pub use settings::{AddressType, DnsSettings, NameForm};

/// The backend's name in config and logs.
pub const NAME: &str = "dns";

/// How the facade checks `[cluster_formation.dns]` and builds this backend.
pub const FACTORY: muster_discovery_core::BackendFactory = muster_discovery_core::BackendFactory {
    name: NAME,
    aliases: &[],
    table: "dns",
    check: |config| config.backend_settings::<DnsSettings>("dns").map(drop),
    build: |config, local| Ok(std::sync::Arc::new(DnsBackend::from_config(config, local)?)),
};

/// The DNS backend for one node.
pub struct DnsBackend {
    settings: DnsSettings,
    local: NodeName,
    resolver: TokioResolver,
}

fn build_resolver(s: &DnsSettings) -> Result<TokioResolver, ConfigError> {
    let mut builder = if s.nameservers.is_empty() {
        Resolver::builder_tokio().map_err(|e| {
            ConfigError::new(
                Some("cluster_formation.dns.nameservers".into()),
                format!("cannot read the system resolver configuration ({e}); set cluster_formation.dns.nameservers"),
            )
        })?
    } else {
        let servers = s
            .nameservers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        Resolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], servers),
            TokioRuntimeProvider::default(),
        )
    };
    let o = builder.options_mut();
    o.cache_size = 0; // no caching: a stale cache is a known cause of late joins
    o.timeout = s.timeout;
    o.attempts = s.attempts as usize;
    if !s.nameservers.is_empty() {
        o.use_hosts_file = ResolveHosts::Never;
    }
    builder.build().map_err(|e| {
        ConfigError::new(
            Some("cluster_formation.dns".into()),
            format!("cannot build the resolver: {e}"),
        )
    })
}

/// The query name as a fully qualified name (no search domains, one query).
fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// Outcome of one lookup: records, "no records" (not an error), or a typed error.
enum Answer<T> {
    Records(Vec<T>),
    Nothing,
}

fn classify<T>(what: &str, r: Result<Vec<T>, NetError>) -> Result<Answer<T>, DiscoveryError> {
    match r {
        Ok(v) if v.is_empty() => Ok(Answer::Nothing),
        Ok(v) => Ok(Answer::Records(v)),
        Err(e) if e.is_no_records_found() => Ok(Answer::Nothing),
        Err(e) => Err(
            DiscoveryError::new(NAME, ErrorKind::Unavailable, format!("{what}: {e}"))
                .with_remediation("check cluster_formation.dns.nameservers and that the DNS server answers"),
        ),
    }
}

impl DnsBackend {
    /// A backend for `local` with validated settings.
    pub fn new(settings: DnsSettings, local: &NodeName) -> Result<Self, ConfigError> {
        let resolver = build_resolver(&settings)?;
        Ok(DnsBackend {
            settings,
            local: local.clone(),
            resolver,
        })
    }

    /// Builds the backend from `[cluster_formation.dns]`.
    pub fn from_config(config: &FormationConfig, local: &NodeName) -> Result<Self, ConfigError> {
        Self::new(DnsSettings::from_config(config)?, local)
    }

    fn node(&self, host: Host, port: Option<u16>) -> Result<NodeName, DiscoveryError> {
        decode::node(self.local.prefix(), host, port)
    }

    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DiscoveryError> {
        let q = fqdn(host);
        let a = self
            .resolver
            .ipv4_lookup(q.as_str())
            .await
            .map(|l| decode::addresses(l.answers()));
        let aaaa = self
            .resolver
            .ipv6_lookup(q.as_str())
            .await
            .map(|l| decode::addresses(l.answers()));
        let mut out = Vec::new();
        for part in [
            classify(&format!("A lookup of {q}"), a)?,
            classify(&format!("AAAA lookup of {q}"), aaaa)?,
        ] {
            if let Answer::Records(v) = part {
                out.extend(v);
            }
        }
        Ok(out)
    }

    async fn reverse(&self, ip: IpAddr) -> Result<Option<String>, DiscoveryError> {
        let r = self
            .resolver
            .reverse_lookup(Name::from(ip))
            .await
            .map(|l| decode::ptr_name(l.answers()).into_iter().collect::<Vec<_>>());
        Ok(match classify(&format!("PTR lookup of {ip}"), r)? {
            Answer::Records(names) => names.into_iter().next(),
            Answer::Nothing => None,
        })
    }

    async fn list_hostname(&self, host: &str) -> Result<Vec<NodeName>, DiscoveryError> {
        let port = self.local.port();
        let mut nodes = Vec::new();
        for ip in self.addresses(host).await? {
            let name = match self.settings.address_type {
                AddressType::Ip => self.node(
                    match ip {
                        IpAddr::V4(v) => Host::V4(v),
                        IpAddr::V6(v) => Host::V6(v),
                    },
                    port,
                )?,
                AddressType::Hostname => {
                    let Some(ptr) = self.reverse(ip).await? else {
                        warn!(
                            "{ip} (from {host}) has no PTR record; skipped (address_type = \"ip\" uses addresses as names)"
                        );
                        continue;
                    };
                    let h = match self.settings.name_form {
                        NameForm::Fqdn => ptr,
                        NameForm::Short => ptr.split('.').next().unwrap_or(&ptr).to_string(),
                    };
                    self.node(Host::Dns(h), port)?
                }
            };
            nodes.push(name);
        }
        Ok(nodes)
    }

    async fn list_srv(&self, srv: &str) -> Result<Vec<NodeName>, DiscoveryError> {
        let q = fqdn(srv);
        let r = self
            .resolver
            .srv_lookup(q.as_str())
            .await
            .map(|l| decode::srv_records(l.answers()));
        match classify(&format!("SRV lookup of {q}"), r)? {
            Answer::Records(v) => decode::srv_nodes(self.local.prefix(), v),
            Answer::Nothing => Ok(Vec::new()),
        }
    }
}

/// The pure part of reading DNS answers: records in, node names out (fuzzed on its own).
pub mod decode {
    use super::*;
    use hickory_resolver::proto::rr::Record;

    /// One SRV answer: priority, inverted weight (so that sorting puts heavier first), target, port.
    pub type Srv = (u16, u16, String, u16);

    /// The answer records of a DNS message on the wire, if it decodes.
    pub fn wire_answers(bytes: &[u8]) -> Option<Vec<Record>> {
        hickory_resolver::proto::op::Message::from_vec(bytes)
            .ok()
            .map(|m| m.answers)
    }

    /// The SRV records among `answers`.
    pub fn srv_records(answers: &[Record]) -> Vec<Srv> {
        answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some((s.priority, u16::MAX - s.weight, s.target.to_ascii(), s.port)),
                _ => None,
            })
            .collect()
    }

    /// Node names for SRV records, ordered by priority then weight (the order only ranks the
    /// candidates; all are listed), each target lowercased without its trailing dot.
    pub fn srv_nodes(prefix: &str, mut records: Vec<Srv>) -> Result<Vec<NodeName>, DiscoveryError> {
        records.sort();
        records
            .into_iter()
            .map(|(_, _, target, port)| {
                let host = Host::Dns(target.trim_end_matches('.').to_ascii_lowercase());
                node(prefix, host, Some(port))
            })
            .collect()
    }

    /// The addresses among A and AAAA `answers`.
    pub fn addresses(answers: &[Record]) -> Vec<IpAddr> {
        answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect()
    }

    /// The first PTR target among `answers` (sorted), without its trailing dot.
    pub fn ptr_name(answers: &[Record]) -> Option<String> {
        let mut names: Vec<String> = answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::PTR(p) => Some(p.0.to_ascii()),
                _ => None,
            })
            .collect();
        names.sort();
        names
            .into_iter()
            .next()
            .map(|n| n.trim_end_matches('.').to_string())
    }

    /// The node name `prefix@host[:port]`, or an error saying the answer makes none.
    pub fn node(prefix: &str, host: Host, port: Option<u16>) -> Result<NodeName, DiscoveryError> {
        NodeName::new(prefix, host, port).map_err(|e| {
            DiscoveryError::new(
                NAME,
                ErrorKind::Other,
                format!("a DNS answer does not make a node name: {e}"),
            )
        })
    }
}

#[async_trait]
impl Discovery for DnsBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    fn full_membership(&self) -> bool {
        false
    }

    async fn list(&self) -> Result<DiscoveryResult, DiscoveryError> {
        let nodes = match (&self.settings.hostname, &self.settings.srv) {
            (_, Some(srv)) => self.list_srv(srv).await?,
            (Some(host), None) => self.list_hostname(host).await?,
            // `DnsBackend::new` takes settings that skipped `from_config`'s validation.
            (None, None) => {
                return Err(DiscoveryError::new(
                    NAME,
                    ErrorKind::Misconfigured,
                    "neither cluster_formation.dns.hostname nor cluster_formation.dns.srv is set",
                )
                .with_remediation("set exactly one of them"));
            }
        };
        Ok(DiscoveryResult::new(nodes, false))
    }

    async fn resolve_host(&self, host: &str) -> Option<Result<Vec<IpAddr>, DiscoveryError>> {
        // Only with explicit nameservers: otherwise the system resolver is what the backend uses.
        if self.settings.nameservers.is_empty() {
            return None;
        }
        Some(self.addresses(host).await.and_then(|v| {
            if v.is_empty() {
                Err(DiscoveryError::new(
                    NAME,
                    ErrorKind::NotFound,
                    format!("{host} has no A or AAAA record"),
                ))
            } else {
                Ok(v)
            }
        }))
    }
}
