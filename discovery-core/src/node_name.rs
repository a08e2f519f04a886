//! Node names: `prefix@host[:port]`, validated, canonical and totally ordered.
//!
//! The total order is the order of the canonical string form. Every node computes the same order
//! for the same names, which is what deterministic choices (the formation seed, the cluster to
//! join when several are visible) rely on.

use std::cmp::Ordering;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The host part of a node name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name, stored lower-case without a trailing dot.
    Dns(String),
    /// An IPv4 address.
    V4(Ipv4Addr),
    /// An IPv6 address, written `[addr]` in a node name.
    V6(Ipv6Addr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Dns(name) => f.write_str(name),
            Host::V4(addr) => write!(f, "{addr}"),
            Host::V6(addr) => write!(f, "[{addr}]"),
        }
    }
}

/// A cluster node's name, such as `muster@rpi-node1`, `muster@10.0.0.5:4370` or
/// `muster@[fd00::1]:4370`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeName {
    prefix: String,
    host: Host,
    port: Option<u16>,
    canonical: String,
}

/// Why a string is not a valid node name; the message quotes the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid node name {input:?}: {reason}")]
pub struct NodeNameError {
    /// The text that was rejected.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

const MAX_PREFIX: usize = 64;

impl NodeName {
    /// Builds a name from parts, validating each.
    pub fn new(prefix: &str, host: Host, port: Option<u16>) -> Result<Self, NodeNameError> {
        let text = match port {
            Some(p) => format!("{prefix}@{host}:{p}"),
            None => format!("{prefix}@{host}"),
        };
        text.parse()
    }

    /// The part before `@`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The host part.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The port, when the name carries one.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The canonical text form (what `Display` prints).
    pub fn as_str(&self) -> &str {
        &self.canonical
    }

    /// The same name with another prefix (backends that find hosts borrow the local prefix).
    pub fn with_prefix(&self, prefix: &str) -> Result<Self, NodeNameError> {
        Self::new(prefix, self.host.clone(), self.port)
    }

    /// A number fixed by the name, different for different names: it seeds this node's retry
    /// jitter and spreads a crowd of nodes' first calls apart, reproducibly.
    pub fn seed(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }
}

fn err(input: &str, reason: impl Into<String>) -> NodeNameError {
    NodeNameError {
        input: input.to_string(),
        reason: reason.into(),
    }
}

fn validate_prefix(input: &str, prefix: &str) -> Result<(), NodeNameError> {
    if prefix.is_empty() {
        return Err(err(input, "the prefix before '@' is empty"));
    }
    if prefix.len() > MAX_PREFIX {
        return Err(err(
            input,
            format!("the prefix is longer than {MAX_PREFIX} characters"),
        ));
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_' || *c == '.'))
    {
        return Err(err(
            input,
            format!("the prefix contains {c:?}; use letters, digits, '-', '_' or '.'"),
        ));
    }
    Ok(())
}

fn parse_dns(input: &str, host: &str) -> Result<Host, NodeNameError> {
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if name.is_empty() {
        return Err(err(input, "the host after '@' is empty"));
    }
    if name.len() > 253 {
        return Err(err(input, "the host name is longer than 253 characters"));
    }
    let labels: Vec<&str> = name.split('.').collect();
    for label in &labels {
        if label.is_empty() {
            return Err(err(input, "the host name has an empty label ('..')"));
        }
        if label.len() > 63 {
            return Err(err(
                input,
                format!("the label {label:?} is longer than 63 characters"),
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(err(input, format!("the host contains {c:?}")));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(err(input, format!("the label {label:?} starts or ends with '-'")));
        }
    }
    if labels
        .last()
        .is_some_and(|l| l.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(err(
            input,
            "the host is neither a valid IPv4 address nor a DNS name (its last label is numeric)",
        ));
    }
    Ok(Host::Dns(name))
}

fn parse_port(input: &str, text: &str) -> Result<u16, NodeNameError> {
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(err(
            input,
            format!("the port {text:?} is not a number from 1 to 65535"),
        )),
        Ok(p) => Ok(p),
    }
}

impl FromStr for NodeName {
    type Err = NodeNameError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let trimmed = input.trim();
        if trimmed != input {
            return Err(err(input, "leading or trailing white space"));
        }
        let (prefix, rest) = input
            .split_once('@')
            .ok_or_else(|| err(input, "expected prefix@host, e.g. muster@node1"))?;
        validate_prefix(input, prefix)?;
        if rest.contains('@') {
            return Err(err(input, "more than one '@'"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (addr, after) = v6
                .split_once(']')
                .ok_or_else(|| err(input, "an IPv6 host must be written [addr]; ']' is missing"))?;
            let addr: Ipv6Addr = addr
                .parse()
                .map_err(|_| err(input, format!("{addr:?} is not an IPv6 address")))?;
            let port = match after {
                "" => None,
                p => Some(parse_port(
                    input,
                    p.strip_prefix(':')
                        .ok_or_else(|| err(input, "expected ':port' after ']'"))?,
                )?),
            };
            (Host::V6(addr), port)
        } else {
            if rest.matches(':').count() > 1 {
                return Err(err(
                    input,
                    "an IPv6 host must be written in brackets, e.g. muster@[fd00::1]",
                ));
            }
            let (host, port) = match rest.split_once(':') {
                Some((h, p)) => (h, Some(parse_port(input, p)?)),
                None => (rest, None),
            };
            let host = match host.parse::<Ipv4Addr>() {
                Ok(addr) => Host::V4(addr),
                Err(_) => parse_dns(input, host)?,
            };
            (host, port)
        };
        let canonical = match port {
            Some(p) => format!("{prefix}@{host}:{p}"),
            None => format!("{prefix}@{host}"),
        };
        Ok(NodeName {
            prefix: prefix.to_string(),
            host,
            port,
            canonical,
        })
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical)
    }
}

impl Ord for NodeName {
    fn cmp(&self, other: &Self) -> Ordering {
        self.canonical.cmp(&other.canonical)
    }
}

impl PartialOrd for NodeName {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Serialize for NodeName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.canonical)
    }
}

impl<'de> Deserialize<'de> for NodeName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names_round_trip() {
        for text in [
            "muster@node1",
            "muster@rpi-node1.local",
            "a_b.c-d@x",
            "muster@10.0.0.5",
            "muster@10.0.0.5:4370",
            "muster@[fd00::1]",
            "muster@[fd00::1]:4370",
            "muster@node1:1",
        ] {
            let n: NodeName = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(n.to_string(), text);
            assert_eq!(n.to_string().parse::<NodeName>().unwrap(), n);
        }
    }

    #[test]
    fn canonical_form_lowercases_dns_and_drops_trailing_dot() {
        let n: NodeName = "muster@Node1.Example.".parse().unwrap();
        assert_eq!(n.to_string(), "muster@node1.example");
        assert_eq!(n.host(), &Host::Dns("node1.example".into()));
        let v6: NodeName = "m@[FD00:0::1]".parse().unwrap();
        assert_eq!(v6.to_string(), "m@[fd00::1]");
    }

    #[test]
    fn invalid_names_quote_the_input() {
        for (text, needle) in [
            ("node1", "expected prefix@host"),
            ("@node1", "prefix before '@' is empty"),
            ("muster@", "host after '@' is empty"),
            ("mu ster@node1", "prefix contains ' '"),
            ("muster@no de", "host contains ' '"),
            ("muster@node1:0", "port \"0\""),
            ("muster@node1:70000", "port \"70000\""),
            ("muster@node1:x", "port \"x\""),
            ("muster@fd00::1", "in brackets"),
            ("muster@[fd00::1", "']' is missing"),
            ("muster@[nope]", "not an IPv6 address"),
            ("muster@1.2.3", "last label is numeric"),
            ("muster@-bad", "starts or ends with '-'"),
            ("muster@a..b", "empty label"),
            ("a@b@c", "more than one '@'"),
            (" muster@node1", "white space"),
        ] {
            let e = text.parse::<NodeName>().unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(&format!("{text:?}")), "{msg} should quote {text:?}");
            assert!(msg.contains(needle), "{msg} should mention {needle}");
        }
    }

    #[test]
    fn order_is_the_canonical_string_order() {
        let mut names: Vec<NodeName> = ["m@c", "m@a", "m@b:2", "m@b:1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        names.sort();
        let sorted: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        assert_eq!(sorted, ["m@a", "m@b:1", "m@b:2", "m@c"]);
    }

    #[test]
    fn serde_uses_the_text_form() {
        let n: NodeName = "m@h:1".parse().unwrap();
        let toml_text = toml::to_string(&std::collections::BTreeMap::from([("n", n.clone())])).unwrap();
        assert_eq!(toml_text.trim(), "n = \"m@h:1\"");
        let back: std::collections::BTreeMap<String, NodeName> = toml::from_str(&toml_text).unwrap();
        assert_eq!(back["n"], n);
    }
}
