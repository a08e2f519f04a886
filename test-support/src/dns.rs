//! Real DNS servers for tests: Debian's dnsmasq (dnsmasq-base) and bind9 on free loopback ports
//! with temp configs, plus a "silent" server that never answers. Tests always name these servers
//! explicitly: nothing here reads /etc/resolv.conf. A missing binary fails the test with the
//! command that installs it.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::child::Running;
use std::time::Duration;

use muster_cli::launch::Ports;

/// How to install what these tests need.
pub const INSTALL: &str = "apt-get install -y --no-install-recommends dnsmasq-base bind9 bind9-dnsutils \
                           (scripts/test.sh does this)";

/// A record set served by both servers.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    /// `(name, ip)`: A or AAAA records, each with a PTR back to the name.
    pub hosts: Vec<(String, String)>,
    /// `(service, target, port, priority, weight)`.
    pub srv: Vec<(String, String, u16, u16, u16)>,
}

/// The SRV name the cluster tests publish their nodes under.
pub const CLUSTER_SRV: &str = "_muster._tcp.cluster.test";

/// `n` nodes named by their host in [`Zone::cluster`], each on a loopback address of its own
/// (`127.0.10.i`) and a free port.
pub fn cluster_nodes(n: usize, ports: &mut Ports) -> Vec<(muster_discovery_core::NodeName, SocketAddr)> {
    (1..=n)
        .map(|i| {
            let port = ports.take().expect("a free port");
            // One prefix for every node: DNS gives hosts, the prefix is the local node's.
            let name = format!("m@node{i}.cluster.test:{port}")
                .parse()
                .expect("a valid node name");
            (
                name,
                format!("127.0.10.{i}:{port}").parse().expect("a valid address"),
            )
        })
        .collect()
}

impl Zone {
    /// Node i (from 1) as `node{i}.cluster.test` at `listen[i - 1]`, each listed under
    /// [`CLUSTER_SRV`] with its port.
    pub fn cluster(listen: &[SocketAddr]) -> Zone {
        let host = |i: usize| format!("node{}.cluster.test", i + 1);
        Zone {
            hosts: listen
                .iter()
                .enumerate()
                .map(|(i, l)| (host(i), l.ip().to_string()))
                .collect(),
            srv: listen
                .iter()
                .enumerate()
                .map(|(i, l)| (CLUSTER_SRV.to_string(), host(i), l.port(), 10, 10))
                .collect(),
        }
    }
}

/// A running DNS server.
pub struct DnsServer {
    /// Where it answers (UDP and TCP).
    pub addr: SocketAddr,
    // Declared before the directory: the server ends before its files go.
    _child: Running,
    dir: tempfile::TempDir,
    kind: &'static str,
}

fn need(binary: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {binary}")])
        .stdout(Stdio::null())
        .status();
    if !found.map(|s| s.success()).unwrap_or(false) {
        panic!("{binary} is not installed; install it with: {INSTALL}");
    }
}

fn free_port() -> u16 {
    let mut ports = Ports::new();
    loop {
        let p = ports.take().unwrap();
        if UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// The last label-group of a name relative to `cluster.test.`.
fn rel(name: &str) -> String {
    name.trim_end_matches('.')
        .trim_end_matches(".cluster.test")
        .to_string()
}

fn reverse_v4(ip: &str) -> String {
    let o: Vec<&str> = ip.split('.').collect();
    o[3].to_string()
}

fn reverse_v6(ip: &str) -> String {
    let addr: std::net::Ipv6Addr = ip.parse().unwrap();
    let hex: String = addr.octets().iter().map(|b| format!("{b:02x}")).collect();
    // fd00::/64: the zone holds the last 16 nibbles.
    hex[16..]
        .chars()
        .rev()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(".")
}

impl DnsServer {
    /// Starts dnsmasq as an authoritative server for `cluster.test` with `zone`.
    pub async fn dnsmasq(zone: &Zone) -> DnsServer {
        need("dnsmasq");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut conf = format!(
            "port={port}\nlisten-address=127.0.0.1\nbind-interfaces\nno-resolv\nno-hosts\nno-poll\npid-file=\nuser=root\ngroup=root\n\
             log-facility={}\nauth-server=ns.cluster.test,127.0.0.1\nauth-zone=cluster.test,192.0.2.0/24,fd00::/64,127.0.0.0/8\n\
             auth-soa=1,hostmaster.cluster.test,60,60,60\nauth-ttl=1\nlocal-ttl=1\n",
            dir.path().join("dnsmasq.log").display()
        );
        for (name, ip) in &zone.hosts {
            conf.push_str(&format!("host-record={name},{ip}\n"));
        }
        for (svc, target, p, prio, weight) in &zone.srv {
            conf.push_str(&format!("srv-host={svc},{target},{p},{prio},{weight}\n"));
        }
        std::fs::write(dir.path().join("dnsmasq.conf"), conf).unwrap();
        Self::launch("dnsmasq", &["-k", "-C"], "dnsmasq.conf", dir, port, "dnsmasq").await
    }

    /// Starts bind9 (named) as the primary for `cluster.test` and its reverse zones, accepting
    /// dynamic updates from 127.0.0.1.
    pub async fn bind9(zone: &Zone) -> DnsServer {
        need("named");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let port = free_port();
        let soa = "$TTL 1\n@ IN SOA ns.cluster.test. hostmaster.cluster.test. 1 60 60 60 1\n@ IN NS ns.cluster.test.\n";
        let mut fwd = format!("{soa}ns IN A 127.0.0.1\n");
        let (mut rev4, mut rev6) = (soa.to_string(), soa.to_string());
        for (name, ip) in &zone.hosts {
            let r = rel(name);
            if ip.contains(':') {
                fwd.push_str(&format!("{r} IN AAAA {ip}\n"));
                if ip.starts_with("fd00:") {
                    rev6.push_str(&format!("{} IN PTR {name}.\n", reverse_v6(ip)));
                }
            } else {
                fwd.push_str(&format!("{r} IN A {ip}\n"));
                if ip.starts_with("192.0.2.") {
                    rev4.push_str(&format!("{} IN PTR {name}.\n", reverse_v4(ip)));
                }
            }
        }
        for (svc, target, p, prio, weight) in &zone.srv {
            fwd.push_str(&format!("{} IN SRV {prio} {weight} {p} {target}.\n", rel(svc)));
        }
        std::fs::write(d.join("fwd.zone"), fwd).unwrap();
        std::fs::write(d.join("rev4.zone"), rev4).unwrap();
        std::fs::write(d.join("rev6.zone"), rev6).unwrap();
        let zone_block = |name: &str, file: &str| {
            format!(
                "zone \"{name}\" {{ type primary; file \"{}\"; allow-update {{ 127.0.0.1; }}; }};\n",
                d.join(file).display()
            )
        };
        let conf = format!(
            "options {{ directory \"{dir}\"; listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }}; \
             recursion no; pid-file \"{dir}/named.pid\"; dnssec-validation no; allow-query {{ any; }}; }};\n\
             controls {{ }};\n{}{}{}",
            zone_block("cluster.test", "fwd.zone"),
            zone_block("2.0.192.in-addr.arpa", "rev4.zone"),
            zone_block("0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa", "rev6.zone"),
            dir = d.display()
        );
        std::fs::write(d.join("named.conf"), conf).unwrap();
        Self::launch("named", &["-g", "-c"], "named.conf", dir, port, "bind9").await
    }

    /// Starts `program` in the foreground on the config file `conf` in `dir`, its stderr in
    /// `dir/stderr.log`, and waits until it answers.
    async fn launch(
        program: &str,
        flags: &[&str],
        conf: &str,
        dir: tempfile::TempDir,
        port: u16,
        kind: &'static str,
    ) -> DnsServer {
        let child = Command::new(program)
            .args(flags)
            .arg(dir.path().join(conf))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} ({e}); {INSTALL}"));
        let s = DnsServer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _child: Running(child),
            dir,
            kind,
        };
        s.wait_ready().await;
        s
    }

    async fn wait_ready(&self) {
        let (ip, port) = (format!("@{}", self.addr.ip()), self.addr.port().to_string());
        let up = crate::eventually(Duration::from_secs(20), async || {
            let args = [
                ip.as_str(),
                "-p",
                port.as_str(),
                "+short",
                "+time=1",
                "+tries=1",
                "cluster.test",
                "SOA",
            ];
            Command::new("dig")
                .args(args)
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("hostmaster.cluster.test"))
        })
        .await;
        assert!(
            up.is_some(),
            "{} did not answer on {}: {}",
            self.kind,
            self.addr,
            self.log()
        );
    }

    /// Sends dynamic updates with nsupdate (bind9 only), e.g. `update add x.cluster.test 1 A 1.2.3.4`.
    pub fn nsupdate(&self, commands: &str) {
        let script = format!(
            "server {} {}\nzone cluster.test\n{commands}\nsend\n",
            self.addr.ip(),
            self.addr.port()
        );
        let mut child = Command::new("nsupdate")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run nsupdate ({e}); {INSTALL}"));
        use std::io::Write;
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nsupdate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The server's log.
    pub fn log(&self) -> String {
        let p: &Path = self.dir.path();
        let mut s = std::fs::read_to_string(p.join("stderr.log")).unwrap_or_default();
        s.push_str(&std::fs::read_to_string(p.join("dnsmasq.log")).unwrap_or_default());
        s
    }
}

/// A UDP and TCP port that accepts queries and never answers.
pub struct SilentDns {
    /// Its address.
    pub addr: SocketAddr,
    _udp: UdpSocket,
    _tcp: std::net::TcpListener,
}

impl SilentDns {
    /// Binds both sockets on one free port.
    pub fn start() -> SilentDns {
        loop {
            let port = free_port();
            if let (Ok(udp), Ok(tcp)) = (
                UdpSocket::bind(("127.0.0.1", port)),
                std::net::TcpListener::bind(("127.0.0.1", port)),
            ) {
                return SilentDns {
                    addr: SocketAddr::from(([127, 0, 0, 1], port)),
                    _udp: udp,
                    _tcp: tcp,
                };
            }
        }
    }
}
