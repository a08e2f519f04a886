//! Where the real servers the tests run are found: Consul and etcd 3.5, which
//! `scripts/fetch-servers.sh` fetches from Debian's packages of other releases into
//! `MUSTER_SERVERS` (default `~/.cache/muster/servers`). An environment variable per server
//! points at another build (`MUSTER_ETCD_BIN=/usr/bin/etcd` runs the machine's etcd 3.4). A
//! missing binary fails the test with the command that fetches it.

use std::path::PathBuf;

/// How to fetch the servers (scripts/test.sh runs it).
pub const FETCH: &str = "scripts/fetch-servers.sh (scripts/test.sh runs it)";

/// The directory the servers are fetched into.
pub fn dir() -> PathBuf {
    match std::env::var_os("MUSTER_SERVERS") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/muster/servers"),
    }
}

/// The binary `file` of server `name` (a directory under [`dir`]), or the one `env` names.
fn binary(env: &str, name: &str, file: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        assert!(path.exists(), "{env}={} does not exist", path.display());
        return path;
    }
    let path = dir().join(name).join(file);
    assert!(
        path.exists(),
        "{} is missing: fetch it with {FETCH}, or point {env} at a {file} binary",
        path.display()
    );
    path
}

/// The etcd server: 3.5.16 unless `MUSTER_ETCD_BIN` names another.
pub fn etcd() -> PathBuf {
    binary("MUSTER_ETCD_BIN", "etcd-3.5.16", "etcd")
}

/// The Consul agent: 1.8.7 unless `MUSTER_CONSUL_BIN` names another.
pub fn consul() -> PathBuf {
    binary("MUSTER_CONSUL_BIN", "consul-1.8.7", "consul")
}
