//! Secrets in settings: a value that never reaches a log line, a `Debug` dump or a printed
//! config, and the one list of key names whose values are redacted when a table is printed.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a redacted value reads as.
pub const REDACTED: &str = "<redacted>";

/// Keys whose values are secrets wherever they appear in a settings table (backend tokens,
/// passwords, keys).
pub const SECRET_KEYS: &[&str] = &[
    "token",
    "password",
    "secret",
    "secret_key",
    "secret_access_key",
    "session_token",
    "cookie",
];

/// A secret string: `Debug` and `Display` print [`REDACTED`]; [`Secret::expose`] is the only
/// way to read it, so each use is visible in the code.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Replaces the value of every [`SECRET_KEYS`] key in `value`, at any depth, with [`REDACTED`]
/// (for printing effective settings).
pub fn redact_secrets(value: &mut toml::Value) {
    match value {
        toml::Value::Table(table) => {
            for (key, v) in table.iter_mut() {
                if SECRET_KEYS.contains(&key.as_str()) {
                    *v = toml::Value::String(REDACTED.to_string());
                } else {
                    redact_secrets(v);
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(redact_secrets),
        _ => {}
    }
}

/// Whether an address (`[scheme://]host[:port][/…]`) names this machine: `localhost` or a
/// loopback IP. A secret may travel in clear only there.
pub fn on_this_machine(address: &str) -> bool {
    let rest = address.split_once("://").map_or(address, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints() {
        let s = Secret::new("hunter2-xyz");
        assert_eq!(format!("{s:?} {s}"), format!("{REDACTED} {REDACTED}"));
        assert_eq!(s.expose(), "hunter2-xyz");
        let parsed: Secret = toml::from_str::<toml::Table>("t = \"abc\"").unwrap()["t"]
            .clone()
            .try_into()
            .unwrap();
        assert_eq!(parsed.expose(), "abc");
    }

    #[test]
    fn secret_keys_are_redacted_at_any_depth_and_nothing_else_is() {
        let mut v: toml::Value = toml::from_str(
            "[cluster_formation.consul]\ntoken = \"t0ken\"\naddress = \"http://127.0.0.1:8500\"\n\
             [cluster_formation.etcd]\nusername = \"muster\"\npassword = \"pa55\"\n",
        )
        .unwrap();
        redact_secrets(&mut v);
        let text = toml::to_string(&v).unwrap();
        assert!(!text.contains("t0ken") && !text.contains("pa55"), "{text}");
        assert!(
            text.contains("http://127.0.0.1:8500") && text.contains("muster"),
            "{text}"
        );
        assert_eq!(text.matches(REDACTED).count(), 2, "{text}");
    }

    #[test]
    fn on_this_machine_means_loopback() {
        for yes in [
            "http://127.0.0.1:8500",
            "localhost:2379",
            "http://[::1]:1/x",
            "127.0.0.2",
        ] {
            assert!(on_this_machine(yes), "{yes}");
        }
        for no in [
            "http://consul:8500",
            "10.0.0.1:2379",
            "https://[2001:db8::1]:1",
            "example.com",
        ] {
            assert!(!on_this_machine(no), "{no}");
        }
    }
}
