//! Running a cluster of node processes on loopback: the demo, the multi-process tests and the
//! formation benchmark all use this. Every process it starts is a child it owns; dropping the
//! `LocalCluster` kills those children (and only those), by their handles.

// Not network input: the launcher indexes its own nodes by the indices callers got from it.
#![allow(clippy::indexing_slicing, clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::ops::ControlFlow;

use muster::NodeName;
use muster::retry::{Retry, RetryError};

use muster_node::client::{CallError, Credentials, Pool};
use muster_node::cookie::Cookie;
use muster_node::proto::{NodeStatus, Request, Response};

/// One node of a local cluster.
#[derive(Debug)]
pub struct LocalNode {
    /// Its name (`prefix@127.0.0.1:port`).
    pub name: NodeName,
    /// Its config file.
    pub config: PathBuf,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// Its log file (stderr of the process).
    pub log: PathBuf,
    /// Its HTTP address, when enabled.
    pub http: Option<std::net::SocketAddr>,
    /// Its explicit listen address, when the layout gave one (the launcher connects there
    /// instead of resolving the name).
    pub listen: Option<std::net::SocketAddr>,
    /// The running process, if any.
    pub child: Option<Child>,
    /// When the process was last started.
    pub started: Option<Instant>,
    /// The log's length when the process was last started: what it wrote since begins here.
    pub log_start: u64,
    /// Extra environment for the process.
    pub env: Vec<(String, String)>,
    /// A command the node runs under, program first (for example `nsenter --net=… --` to run it
    /// in a test host's network namespace); it must exec the node so the PID stays the node's.
    pub wrap: Vec<std::ffi::OsString>,
}

/// How to lay out a local cluster.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Number of nodes.
    pub nodes: usize,
    /// Node name prefix (`demo` → `demo1@…`, `demo2@…`).
    pub prefix: String,
    /// Extra lines for the `[cluster_formation]` table.
    pub formation: String,
    /// Extra TOML appended to every config (more tables).
    pub extra: String,
    /// Enable the HTTP endpoints on a free port per node.
    pub http: bool,
    /// Another backend than classic: its name and its `[cluster_formation.<name>]` tables.
    pub backend: Option<(String, String)>,
    /// Explicit node names and listen addresses (default: `<prefix><i>@127.0.0.1:<free port>`).
    pub names: Option<Vec<(NodeName, std::net::SocketAddr)>>,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            nodes: 3,
            prefix: "node".into(),
            formation:
                "discovery_retry_interval = \"100ms\"\nprobe_timeout = \"250ms\"\nstable_margin = \"1s\"\n"
                    .into(),
            extra: String::new(),
            http: false,
            backend: None,
            names: None,
        }
    }
}

/// A command running `program` under `wrap` (a command prefix, program first, that execs what
/// follows it, such as `nsenter --net=… --`), or directly when `wrap` is empty.
pub fn wrapped(wrap: &[std::ffi::OsString], program: impl AsRef<std::ffi::OsStr>) -> Command {
    match wrap.split_first() {
        Some((first, args)) => {
            let mut c = Command::new(first);
            c.args(args).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Polls every 10 ms until `timeout`, with the core's retry mechanism.
fn poll(timeout: Duration) -> Retry {
    Retry::every(Duration::from_millis(10)).within(timeout)
}

/// Node processes sharing a cookie, each with its own config and data dir under one directory.
#[derive(Debug)]
pub struct LocalCluster {
    /// The binary started for each node (`muster` or a test wrapper of the same code).
    pub exe: PathBuf,
    /// The directory holding configs, data and logs.
    pub dir: PathBuf,
    /// The cookie file.
    pub cookie_file: PathBuf,
    /// The nodes.
    pub nodes: Vec<LocalNode>,
    creds: Credentials,
    /// The launcher's own calls reuse one channel per node, so that polling a forming cluster
    /// costs the nodes one handshake each rather than one per poll.
    pool: Pool,
    log_format: &'static str,
}

/// Hands out distinct free loopback ports below the kernel's ephemeral range, so that outgoing
/// connections (which take ephemeral ports) can never grab a port before its node binds it.
/// Every allocator of a process draws from one cursor, so two of them (a cluster's and a test's
/// own) never hand out the same port while neither is bound yet.
pub struct Ports {
    lo: u16,
    hi: u16,
}

/// The next port to try, shared by every [`Ports`] of this process (`None` until the first take,
/// which starts at a random port).
static NEXT_PORT: std::sync::Mutex<Option<u16>> = std::sync::Mutex::new(None);

impl Default for Ports {
    fn default() -> Self {
        Self::new()
    }
}

impl Ports {
    /// An allocator of the ports below the ephemeral range.
    pub fn new() -> Ports {
        let ephemeral_lo = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse::<u16>().ok()))
            .unwrap_or(32768);
        let hi = ephemeral_lo.max(11_000);
        let lo = hi.saturating_sub(20_000).max(10_000);
        Ports { lo, hi }
    }

    /// The next free port.
    pub fn take(&mut self) -> std::io::Result<u16> {
        let mut cursor = NEXT_PORT.lock().unwrap_or_else(|e| e.into_inner());
        let (lo, hi) = (self.lo, self.hi);
        let mut next = cursor.filter(|p| (lo..hi).contains(p)).unwrap_or_else(|| {
            lo + (muster_node::random::nonzero_u64().unwrap_or(1) % u64::from(hi - lo)) as u16
        });
        for _ in 0..(hi - lo) {
            let port = next;
            next = if next + 1 >= hi { lo } else { next + 1 };
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                *cursor = Some(next);
                return Ok(port);
            }
        }
        *cursor = Some(next);
        Err(std::io::Error::other("no free port below the ephemeral range"))
    }
}

fn toml_list(nodes: &[NodeName]) -> String {
    nodes
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

impl LocalCluster {
    /// Writes a cookie and one config per node into `dir`, each listing every node (classic).
    pub fn create(exe: &Path, dir: &Path, layout: &Layout) -> std::io::Result<LocalCluster> {
        std::fs::create_dir_all(dir)?;
        let cookie_file = dir.join("cookie");
        let cookie = Cookie::generate(&cookie_file)?;
        let mut ports = Ports::new();
        let (names, listens) = node_names(layout, &mut ports)?;
        let mut nodes = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let data_dir = dir.join(format!("data{}", i + 1));
            let config = dir.join(format!("node{}.toml", i + 1));
            let http = if layout.http {
                Some(format!("127.0.0.1:{}", ports.take()?).parse().expect("addr"))
            } else {
                None
            };
            let http_table = http
                .map(|a| format!("[http]\nlisten = \"{a}\"\n\n"))
                .unwrap_or_default();
            let (backend, tables) = match &layout.backend {
                Some((name, tables)) => (name.clone(), tables.clone()),
                None => (
                    "classic".to_string(),
                    format!(
                        "[cluster_formation.classic_config]\nnodes = [{}]\n",
                        toml_list(&names)
                    ),
                ),
            };
            let listen = listens[i]
                .map(|l| format!("listen = \"{l}\"\n"))
                .unwrap_or_default();
            let text = format!(
                "[node]\nname = \"{name}\"\n{listen}data_dir = \"{}\"\ncookie_file = \"{}\"\ncluster_name = \"local\"\n\
                 sync_interval = \"500ms\"\n\n{http_table}[cluster_formation]\npeer_discovery_backend = \"{backend}\"\n{}\n\
                 {tables}{}",
                data_dir.display(),
                cookie_file.display(),
                layout.formation,
                layout.extra
            );
            std::fs::write(&config, text)?;
            nodes.push(LocalNode {
                name: name.clone(),
                config,
                data_dir,
                log: dir.join(format!("node{}.log", i + 1)),
                http,
                listen: listens[i],
                child: None,
                started: None,
                log_start: 0,
                env: Vec::new(),
                wrap: Vec::new(),
            });
        }
        Ok(LocalCluster {
            exe: exe.to_path_buf(),
            dir: dir.to_path_buf(),
            cookie_file,
            nodes,
            creds: Credentials {
                cookie,
                cluster_name: "local".into(),
                node: None,
                tls: None,
            },
            pool: Pool::default(),
            log_format: "text",
        })
    }

    /// The TLS the launcher's own calls use (set it when the nodes' configs have `[tls]`).
    pub fn set_tls(&mut self, tls: Option<muster_node::tls::PeerTls>) {
        self.creds.tls = tls;
    }

    /// Makes node processes log JSON.
    pub fn json_logs(&mut self) {
        self.log_format = "json";
    }

    /// Starts node `i` (0-based); its stderr goes to its log file (appended).
    pub fn start(&mut self, i: usize) -> std::io::Result<()> {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        node.log_start = log.metadata()?.len();
        let child = wrapped(&node.wrap, &self.exe)
            .args(["--log-format", self.log_format, "start", "--config"])
            .arg(&node.config)
            .env_remove("MUSTER_COOKIE")
            .envs(node.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        node.child = Some(child);
        node.started = Some(Instant::now());
        Ok(())
    }

    /// Starts every node, in order, as fast as possible.
    pub fn start_all(&mut self) -> std::io::Result<()> {
        (0..self.nodes.len()).try_for_each(|i| self.start(i))
    }

    /// Calls node `i`.
    pub async fn call(&self, i: usize, req: &Request) -> Result<Response, CallError> {
        let addrs = self.nodes[i].listen.map(|l| vec![l]);
        self.pool
            .call(
                &self.creds,
                &self.nodes[i].name,
                addrs,
                req,
                Duration::from_secs(5),
            )
            .await
    }

    /// Node `i`'s status, if it answers.
    pub async fn status(&self, i: usize) -> Option<NodeStatus> {
        match self.call(i, &Request::Status).await {
            Ok(Response::Status { status }) => Some(*status),
            _ => None,
        }
    }

    /// Cheap readiness check: the node's own probe answer (no fan-out to its peers).
    async fn members_if_ready(&self, i: usize) -> Option<usize> {
        match self.call(i, &Request::Probe).await {
            Ok(Response::Peer { info }) if info.ready => Some(info.members.len()),
            _ => None,
        }
    }

    /// Waits until every node in `which` is ready with `members` members; returns, per node, when
    /// it first was. Fails with each laggard's state after `timeout`.
    pub async fn wait_members(
        &self,
        which: &[usize],
        members: usize,
        timeout: Duration,
    ) -> Result<Vec<Instant>, String> {
        let done = std::sync::Mutex::new(vec![None::<Instant>; which.len()]);
        // Every 10 ms, slower for big clusters (a quarter millisecond per node), so that the
        // polling itself does not load the nodes it measures.
        let every = Duration::from_millis(10).max(Duration::from_micros(250) * which.len() as u32);
        let polled = Retry::every(every)
            .within(timeout)
            .run(|_| async {
                for (k, &i) in which.iter().enumerate() {
                    let pending = done.lock().expect("poll state")[k].is_none();
                    if pending && self.members_if_ready(i).await == Some(members) {
                        done.lock().expect("poll state")[k] = Some(Instant::now());
                    }
                }
                let done = done.lock().expect("poll state");
                if done.iter().all(Option::is_some) {
                    ControlFlow::Break(Ok::<_, ()>(done.iter().flatten().copied().collect()))
                } else {
                    ControlFlow::Continue(())
                }
            })
            .await;
        if let Ok(times) = polled {
            return Ok(times);
        }
        let done = done.into_inner().expect("poll state");
        let mut lag = Vec::new();
        for (k, &i) in which.iter().enumerate() {
            if done[k].is_none() {
                let why = match self.status(i).await {
                    Some(s) => format!("{} members, {}", s.members.len(), s.detail),
                    None => "not answering".into(),
                };
                lag.push(format!("{} ({why})", self.nodes[i].name));
            }
        }
        Err(format!(
            "not formed with {members} members within {timeout:?}: {}",
            lag.join("; ")
        ))
    }

    /// Asks node `i` to stop and waits for its process to exit (kills it after `grace`).
    pub async fn stop(
        &mut self,
        i: usize,
        grace: Duration,
    ) -> std::io::Result<Option<std::process::ExitStatus>> {
        let _ = self.call(i, &Request::Stop).await;
        self.wait_exit(i, grace).await
    }

    /// Waits for node `i`'s process to exit; kills it after `grace`.
    pub async fn wait_exit(
        &mut self,
        i: usize,
        grace: Duration,
    ) -> std::io::Result<Option<std::process::ExitStatus>> {
        let Some(mut child) = self.nodes[i].child.take() else {
            return Ok(None);
        };
        let exited = poll(grace)
            .run(|_| {
                let status = child.try_wait();
                async move {
                    match status {
                        Ok(Some(s)) => ControlFlow::Break(Ok(s)),
                        Ok(None) => ControlFlow::Continue(()),
                        Err(e) => ControlFlow::Break(Err(e)),
                    }
                }
            })
            .await;
        match exited {
            Ok(status) => Ok(Some(status)),
            Err(RetryError::Stopped(e)) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
            Err(RetryError::Exhausted { .. }) => {
                child.kill()?;
                Ok(Some(child.wait()?))
            }
        }
    }

    /// Kills node `i` with SIGKILL (no graceful shutdown).
    pub fn kill(&mut self, i: usize) -> std::io::Result<()> {
        if let Some(mut child) = self.nodes[i].child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Stops every running node gracefully.
    pub async fn stop_all(&mut self, grace: Duration) {
        for i in 0..self.nodes.len() {
            let _ = self.stop(i, grace).await;
        }
    }

    /// The PID of node `i`'s running process.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }

    /// Sends `signal` (for example `libc::SIGSTOP`) to node `i`'s running process, by its PID.
    pub fn signal(&self, i: usize, signal: i32) -> std::io::Result<()> {
        let pid = self
            .pid(i)
            .ok_or_else(|| std::io::Error::other("node is not running"))?;
        let pid = i32::try_from(pid).map_err(std::io::Error::other)?;
        // SAFETY: kill(2) on our own child's PID; it has not been reaped (we hold its handle).
        if unsafe { libc::kill(pid, signal) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Whether node `i`'s process is running (not exited).
    pub fn is_running(&mut self, i: usize) -> bool {
        match self.nodes[i].child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Resident memory (VmRSS, KiB) of node `i`'s process now.
    pub fn rss_kib(&self, i: usize) -> Option<u64> {
        self.proc_status_kib(i, "VmRSS:")
    }

    /// Peak resident memory (VmHWM, KiB) of node `i`'s process, while it runs.
    pub fn peak_rss_kib(&self, i: usize) -> Option<u64> {
        self.proc_status_kib(i, "VmHWM:")
    }

    /// Node `i`'s private (anonymous) resident memory now, in KiB: its RSS without the pages
    /// of the binary and libraries that every node process shares.
    pub fn private_rss_kib(&self, i: usize) -> Option<u64> {
        self.proc_status_kib(i, "RssAnon:")
    }

    /// Node `i`'s proportional set size now, in KiB: its private pages plus its share of the
    /// pages it shares with other processes (the binary's, with every other node): what one
    /// more node costs the machine.
    pub fn pss_kib(&self, i: usize) -> Option<u64> {
        let pid = self.nodes[i].child.as_ref()?.id();
        let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
        text.lines()
            .find(|l| l.starts_with("Pss:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    }

    fn proc_status_kib(&self, i: usize, field: &str) -> Option<u64> {
        let pid = self.nodes[i].child.as_ref()?.id();
        let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        text.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    }

    /// What node `i`'s current process has logged (earlier runs' lines excluded).
    pub fn log_since_start(&self, i: usize) -> String {
        let text = std::fs::read(&self.nodes[i].log).unwrap_or_default();
        let from = usize::try_from(self.nodes[i].log_start).unwrap_or(usize::MAX);
        String::from_utf8_lossy(text.get(from..).unwrap_or_default()).into_owned()
    }

    /// The tail of node `i`'s log, for failure messages.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The nodes' names and fixed listen addresses: the layout's own, or `{prefix}{i}@127.0.0.1:PORT`
/// on free ports.
fn node_names(
    layout: &Layout,
    ports: &mut Ports,
) -> std::io::Result<(Vec<NodeName>, Vec<Option<std::net::SocketAddr>>)> {
    if let Some(given) = &layout.names {
        return Ok(given
            .iter()
            .map(|(name, listen)| (name.clone(), Some(*listen)))
            .unzip());
    }
    let mut names = Vec::new();
    for i in 1..=layout.nodes {
        let name: NodeName = format!("{}{i}@127.0.0.1:{}", layout.prefix, ports.take()?)
            .parse()
            .map_err(std::io::Error::other)?;
        names.push(name);
    }
    let listens = vec![None; names.len()];
    Ok((names, listens))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ports taken by two allocators of one process are all distinct, though none is bound.
    #[test]
    fn two_allocators_never_hand_out_the_same_port() {
        let (mut a, mut b) = (Ports::new(), Ports::new());
        let mut taken = std::collections::HashSet::new();
        for _ in 0..200 {
            assert!(taken.insert(a.take().unwrap()));
            assert!(taken.insert(b.take().unwrap()));
        }
    }
}
