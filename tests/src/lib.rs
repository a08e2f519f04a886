//! Helpers for Muster's integration tests: local clusters of real node processes and the CLI.

use std::path::Path;
use std::process::{Command, Output};

pub mod bench;
pub mod bench_rig;
pub mod faults;
pub mod flood;

pub use muster_cli::launch::{Layout, LocalCluster};

/// The node binary these tests run (the `muster` CLI); expands in the integration test, where
/// cargo defines `CARGO_BIN_EXE_muster-test-node`.
#[macro_export]
macro_rules! node_exe {
    () => {
        std::path::PathBuf::from(env!("CARGO_BIN_EXE_muster-test-node"))
    };
}

/// A local cluster of `exe` processes in a fresh temp dir (removed when the guard drops).
pub fn local_cluster_of(exe: &Path, layout: &Layout) -> (tempfile::TempDir, LocalCluster) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let cluster = LocalCluster::create(exe, dir.path(), layout).expect("cluster files");
    (dir, cluster)
}

/// Where node `i` of `cluster` listens for peers: its listen address, else its name's host and
/// port (a local node's name carries an IP).
pub fn peer_socket(cluster: &LocalCluster, i: usize) -> std::net::SocketAddr {
    cluster.nodes[i].listen.unwrap_or_else(|| {
        muster_node::config::peer_address(&cluster.nodes[i].name)
            .parse()
            .expect("a local node's name carries an IP and a port")
    })
}

/// Rewrites node `i`'s classic list to the nodes `keep` (indices); takes effect at its next start.
pub fn relist(cluster: &LocalCluster, i: usize, keep: &[usize]) {
    let list = keep
        .iter()
        .map(|k| format!("\"{}\"", cluster.nodes[*k].name))
        .collect::<Vec<_>>()
        .join(", ");
    let text = std::fs::read_to_string(&cluster.nodes[i].config).expect("the node's config");
    let start = text.find("nodes = [").expect("a classic list");
    let end = start + text[start..].find(']').expect("a closed list") + 1;
    let new = format!("{}nodes = [{list}]{}", &text[..start], &text[end..]);
    std::fs::write(&cluster.nodes[i].config, new).expect("config written");
}

/// Runs `muster ctl --node <node i> --cookie-file <cookie> --cluster-name local <args>`.
pub fn ctl(cluster: &LocalCluster, i: usize, args: &[&str]) -> Output {
    ctl_with_cookie(cluster, i, &cluster.cookie_file, args)
}

/// Same as [`ctl`] with another cookie file.
pub fn ctl_with_cookie(cluster: &LocalCluster, i: usize, cookie: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(&cluster.exe);
    cmd.args([
        "ctl",
        "--node",
        cluster.nodes[i].name.as_str(),
        "--cluster-name",
        "local",
        "--cookie-file",
    ])
    .arg(cookie);
    if let Some(listen) = cluster.nodes[i].listen {
        cmd.arg("--address").arg(listen.to_string());
    }
    cmd.args(args)
        .env_remove("MUSTER_COOKIE")
        .output()
        .expect("the muster binary runs")
}

/// stdout and stderr as text, for assertions.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `cluster-status --json` of node i, parsed.
pub fn cluster_status(cluster: &LocalCluster, i: usize) -> serde_json::Value {
    let out = ctl(cluster, i, &["cluster-status", "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "cluster-status on node {i} failed: {stderr}"
    );
    serde_json::from_str(&stdout).expect("cluster-status --json prints JSON")
}

/// The member names in a `cluster-status --json` value.
pub fn members(status: &serde_json::Value) -> Vec<String> {
    status["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// A plain HTTP/1.1 GET on loopback: the status code and the body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_get_within(addr, path, std::time::Duration::from_secs(5))
}

/// Like [`http_get`], waiting up to `timeout` for the answer (a long poll).
pub fn http_get_within(
    addr: std::net::SocketAddr,
    path: &str,
    timeout: std::time::Duration,
) -> (u16, String) {
    try_http_get(addr, path, timeout).unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

/// A GET that reports a refused or broken connection instead of panicking (a node that is not
/// up yet): the status code and the body.
pub fn try_http_get(
    addr: std::net::SocketAddr,
    path: &str,
    timeout: std::time::Duration,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// The cluster id each node in `which` reports (`"none"` when it has none), as a set: one
/// element means one cluster.
pub fn cluster_ids(cluster: &LocalCluster, which: &[usize]) -> std::collections::BTreeSet<String> {
    which
        .iter()
        .map(|&i| {
            cluster_status(cluster, i)["cluster"]
                .as_str()
                .unwrap_or("none")
                .to_string()
        })
        .collect()
}

/// Raises the soft open-file limit to the hard one: a node derives its connection caps per
/// source address from it, and many local nodes and their connections need more than the usual
/// 1024.
pub fn raise_open_files() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct passed; no other preconditions.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The node as deployed: `target/dist/muster`, the classic-only binary of
/// `cargo build --profile dist -p muster-cli`, built first when run under cargo.
pub fn dist_node_exe() -> Result<std::path::PathBuf, String> {
    built_exe(
        "dist",
        "muster",
        &["--profile", "dist", "-p", "muster-cli", "--bin", "muster"],
    )
}

/// Every backend compiled in: `target/release/muster-test-node`, built first when run under
/// cargo (`cargo build --release -p muster-tests --bin muster-test-node`).
pub fn all_backends_node_exe() -> Result<std::path::PathBuf, String> {
    built_exe(
        "release",
        "muster-test-node",
        &["--release", "-p", "muster-tests", "--bin", "muster-test-node"],
    )
}

/// `target/<profile_dir>/<name>` beside the running benchmark, built with `cargo build <args>`
/// first when run under cargo.
fn built_exe(profile_dir: &str, name: &str, args: &[&str]) -> Result<std::path::PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/<profile>/<benchmark> → target/<profile_dir>/<name>
    let target = me.parent().and_then(|d| d.parent()).ok_or("no target dir")?;
    let exe = target.join(profile_dir).join(name);
    let command = format!("cargo build {}", args.join(" "));
    if let Ok(cargo) = std::env::var("CARGO") {
        let status = Command::new(cargo)
            .arg("build")
            .arg("-q")
            .args(args)
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() {
            return Err(format!("building the node ({command}) failed"));
        }
    }
    if !exe.exists() {
        return Err(format!("{} is missing: run `{command}` first", exe.display()));
    }
    Ok(exe)
}
