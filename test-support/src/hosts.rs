//! Test hosts: each a network namespace with its own address on a bridge, for tests of what
//! crosses a network (partitions, loss, latency). Faults go through the kernel (nftables rules in
//! a host's namespace) or through a delaying TCP proxy, never through hooks in the node.
//!
//! The bridge lives in the test process's own network namespace, which must be private (only
//! `lo` in it, as `scripts/test.sh` runs the tests with `unshare -n`): nothing here touches the
//! machine's real network. Each host's namespace is held by a `sleep` process this harness
//! starts (`unshare -n`); dropping the [`Hosts`] kills those holders, by their handles, and
//! deletes the bridge.

// Test harness: the indices and values are its own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};

use crate::child::Running;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// How to get what the harness needs.
pub const INSTALL: &str =
    "apt-get install iproute2 util-linux nftables (as root: network namespaces need it)";

/// One test host: a network namespace with one address on the bridge.
#[derive(Debug)]
pub struct Host {
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
    holder: Running,
}

impl Host {
    /// The namespace's path (`/proc/<holder>/ns/net`).
    pub fn netns(&self) -> String {
        format!("/proc/{}/ns/net", self.holder.0.id())
    }

    /// The command prefix that runs a program in this host (`nsenter --net=… --`); nsenter execs
    /// the program, so its PID is the program's.
    pub fn wrap(&self) -> Vec<OsString> {
        vec![
            "nsenter".into(),
            format!("--net={}", self.netns()).into(),
            "--".into(),
        ]
    }

    /// Runs `f` on a thread inside this host's network namespace: the sockets it creates belong
    /// to the host (and stay there when returned).
    pub fn enter<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        use std::os::fd::AsRawFd;
        let ns = std::fs::File::open(self.netns()).expect("the host's namespace");
        std::thread::spawn(move || {
            // SAFETY: setns(2) on a namespace file we opened; it switches this thread only.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("the host thread")
    }

    /// A command running `program` in this host.
    pub fn command(&self, program: &str) -> Command {
        muster_cli::launch::wrapped(&self.wrap(), program)
    }
}

/// N hosts on one bridge, and the test process as a host of its own at `.1`.
#[derive(Debug)]
pub struct Hosts {
    /// The hosts, in order.
    pub hosts: Vec<Host>,
    /// The test process's address on the bridge.
    pub controller: Ipv4Addr,
    bridge: String,
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run it ({e}); install with: {INSTALL}"));
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args), &format!("ip {}", args.join(" ")));
}

/// The network interfaces of this process's network namespace (/proc/net/dev follows the
/// namespace; /sys/class/net follows sysfs's).
pub fn interfaces() -> Vec<String> {
    std::fs::read_to_string("/proc/net/dev")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim().to_string()))
        .collect()
}

/// Fails unless this process is in a private network namespace (only `lo`, and bridges or veths
/// of other harnesses in this same test process).
fn assert_private_namespace() {
    let ifaces = interfaces();
    let ours = |i: &String| i == "lo" || i.starts_with("mb") || i.starts_with("mv");
    assert!(
        ifaces.iter().all(ours),
        "refusing to build test hosts outside a private network namespace (interfaces: {ifaces:?}); \
         run the tests as scripts/test.sh does: unshare -n, as root, then ip link set lo up"
    );
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Hosts {
    /// Creates `n` hosts `10.<k>.<p>.11`, `.12`, … on a new bridge, the test process at `.1`.
    pub fn new(n: usize) -> Hosts {
        assert_private_namespace();
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}x{k}", std::process::id() % 10_000);
        let subnet = (20 + (k % 200) as u8, (std::process::id() % 250) as u8);
        let bridge = format!("mb{tag}");
        let controller = Ipv4Addr::new(10, subnet.0, subnet.1, 1);
        ip(&["link", "set", "lo", "up"]);
        ip(&["link", "add", &bridge, "type", "bridge"]);
        let mut hosts = Hosts {
            hosts: Vec::new(),
            controller,
            bridge: bridge.clone(),
        };
        ip(&["addr", "add", &format!("{controller}/24"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        for i in 0..n {
            let holder = Command::new("unshare")
                .args(["-n", "sleep", "1000000"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("unshare -n sleep: {e}; install with: {INSTALL}"));
            let host_ip = Ipv4Addr::new(10, subnet.0, subnet.1, 11 + i as u8);
            let host = Host {
                ip: host_ip,
                holder: Running(holder),
            };
            // The holder has unshared once /proc/<pid>/ns/net differs from ours.
            let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
            let mut waited = 0;
            while std::fs::read_link(host.netns()).ok().as_ref() == Some(&ours) && waited < 500 {
                std::thread::sleep(Duration::from_millis(2));
                waited += 1;
            }
            let veth = format!("mv{tag}h{i}");
            let pid = host.holder.0.id().to_string();
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &pid,
            ]);
            ip(&["link", "set", &veth, "master", &bridge, "up"]);
            for args in [
                vec!["link", "set", "lo", "up"],
                vec!["link", "set", "eth0", "up"],
                vec!["addr", "add", &format!("{host_ip}/24"), "dev", "eth0"],
            ] {
                run(
                    host.command("ip").args(&args),
                    &format!("ip {} in host {i}", args.join(" ")),
                );
            }
            hosts.hosts.push(host);
        }
        hosts
    }

    /// Replaces host `i`'s fault rules: drop what arrives from `blocked`, and `loss_percent`
    /// of everything else that arrives (a random draw per packet, `numgen random`).
    pub fn set_rules(&self, i: usize, blocked: &[Ipv4Addr], loss_percent: u32) {
        let mut rules = String::new();
        if !blocked.is_empty() {
            let set = blocked
                .iter()
                .map(Ipv4Addr::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            rules.push_str(&format!("    ip saddr {{ {set} }} drop\n"));
        }
        if loss_percent > 0 {
            rules.push_str(&format!("    numgen random mod 100 < {loss_percent} drop\n"));
        }
        // Declaring the table first makes the delete valid when it does not exist yet.
        let text = format!(
            "table inet muster_faults\ndelete table inet muster_faults\n\
             table inet muster_faults {{\n  chain input {{\n    type filter hook input priority 0; policy accept;\n{rules}  }}\n}}\n"
        );
        let mut child = self.hosts[i]
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("nft: {e}; install with: {INSTALL}"));
        use std::io::Write;
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft rules for host {i} failed: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Splits the hosts into `groups` (host indices): a host drops what comes from hosts outside
    /// its group. Hosts in no group are cut off from every host. The test process reaches all.
    pub fn partition(&self, groups: &[&[usize]]) {
        for i in 0..self.hosts.len() {
            let mine: &[usize] = groups.iter().find(|g| g.contains(&i)).copied().unwrap_or(&[]);
            let blocked: Vec<Ipv4Addr> = (0..self.hosts.len())
                .filter(|j| *j != i && !mine.contains(j))
                .map(|j| self.hosts[j].ip)
                .collect();
            self.set_rules(i, &blocked, 0);
        }
    }

    /// Cuts host `i` off from the hosts `from` (both directions); the others are left as they are.
    pub fn cut(&self, i: usize, from: &[usize]) {
        let blocked: Vec<Ipv4Addr> = from.iter().map(|j| self.hosts[*j].ip).collect();
        self.set_rules(i, &blocked, 0);
        for j in from {
            self.set_rules(*j, &[self.hosts[i].ip], 0);
        }
    }

    /// Random loss on every host's incoming traffic.
    pub fn loss(&self, percent: u32) {
        (0..self.hosts.len()).for_each(|i| self.set_rules(i, &[], percent));
    }

    /// Removes every fault rule.
    pub fn heal(&self) {
        (0..self.hosts.len()).for_each(|i| self.set_rules(i, &[], 0));
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // The namespaces' holders end before the bridge goes.
        self.hosts.clear();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

/// A TCP proxy that delays every chunk of bytes, each direction on its own, by a latency drawn
/// uniformly from `base ± jitter` (order kept: a chunk never overtakes the one before it).
pub struct DelayProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl DelayProxy {
    /// Listens on `listen` and forwards each connection to `target`.
    pub async fn start(
        listen: SocketAddr,
        target: SocketAddr,
        base: Duration,
        jitter: Duration,
    ) -> DelayProxy {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .expect("proxy listens");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    tokio::join!(pump(ri, wo, base, jitter), pump(ro, wi, base, jitter));
                });
            }
        });
        DelayProxy { addr, task }
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to`, each chunk delivered at its own delay after it was read.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    base: Duration,
    jitter: Duration,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut last = tokio::time::Instant::now();
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let at = (tokio::time::Instant::now() + draw(base, jitter)).max(last);
                    last = at;
                    if tx.send((at, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// `base ± jitter`, uniformly.
fn draw(base: Duration, jitter: Duration) -> Duration {
    let r = muster_node::random::hex(8)
        .ok()
        .and_then(|h| u64::from_str_radix(&h, 16).ok())
        .unwrap_or(0);
    let unit = (r >> 11) as f64 / (1u64 << 53) as f64;
    let offset = jitter.as_secs_f64() * (2.0 * unit - 1.0);
    Duration::from_secs_f64((base.as_secs_f64() + offset).max(0.0))
}
