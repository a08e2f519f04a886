//! A real etcd server for tests: etcd 3.5 (Debian trixie's `etcd-server`, fetched by
//! `scripts/fetch-servers.sh`; `MUSTER_ETCD_BIN=/usr/bin/etcd` runs the machine's 3.4 instead) on
//! free loopback ports with a temp data dir, started, stopped and restarted on the same data. A
//! missing binary fails the test with the command that fetches it.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::child::Running;
use std::time::Duration;

use muster_cli::launch::Ports;

use crate::certs;

/// How to get what these tests need.
pub const INSTALL: &str = crate::servers::FETCH;

/// TLS material for a TLS etcd: a CA, a server certificate for 127.0.0.1, a client certificate,
/// and a second CA that signed nothing.
pub struct Tls {
    /// The CA certificate.
    pub ca: PathBuf,
    /// Server certificate and key.
    pub server_cert: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
    /// Client certificate.
    pub client_cert: PathBuf,
    /// Client key.
    pub client_key: PathBuf,
    /// An unrelated CA.
    pub other_ca: PathBuf,
}

impl Tls {
    /// Generates everything in `dir` with the openssl CLI.
    pub fn generate(dir: &Path) -> Tls {
        certs::ca(dir, "ca");
        certs::ca(dir, "other-ca");
        certs::leaf(
            dir,
            "server",
            "ca",
            "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        );
        certs::leaf(
            dir,
            "client",
            "ca",
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        );
        Tls {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
            other_ca: dir.join("other-ca.crt"),
        }
    }
}

/// One etcd server process.
pub struct EtcdServer {
    /// `127.0.0.1:port` (or `https://127.0.0.1:port` with TLS).
    pub endpoint: String,
    client_port: u16,
    peer_port: u16,
    data: tempfile::TempDir,
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    child: Option<Running>,
    /// Where it listens (127.0.0.1, or a test host's address).
    ip: std::net::Ipv4Addr,
    /// The command it runs under (`nsenter` into a test host), empty for none.
    wrap: Vec<std::ffi::OsString>,
}

impl EtcdServer {
    /// The `[cluster_formation.etcd]` table of a node using this server, with the short TTL and
    /// timeouts the process tests run.
    pub fn formation_table(&self) -> String {
        format!(
            "[cluster_formation.etcd]\nendpoints = [\"{}\"]\nnode_ttl = \"5s\"\nlock_timeout = \"5s\"\nconnect_timeout = \"1s\"\n",
            self.endpoint
        )
    }

    /// Starts a plain-HTTP etcd and waits until it answers.
    pub async fn start() -> EtcdServer {
        Self::start_with(None, std::net::Ipv4Addr::LOCALHOST, Vec::new()).await
    }

    /// Starts a plain-HTTP etcd in test host `host` (its own network namespace), on its address.
    pub async fn start_in(host: &crate::hosts::Host) -> EtcdServer {
        Self::start_with(None, host.ip, host.wrap()).await
    }

    /// Starts an etcd that requires TLS with client certificates signed by `tls.ca`.
    pub async fn start_tls(tls: &Tls) -> EtcdServer {
        Self::start_with(
            Some((tls.server_cert.clone(), tls.server_key.clone(), tls.ca.clone())),
            std::net::Ipv4Addr::LOCALHOST,
            Vec::new(),
        )
        .await
    }

    async fn start_with(
        tls: Option<(PathBuf, PathBuf, PathBuf)>,
        ip: std::net::Ipv4Addr,
        wrap: Vec<std::ffi::OsString>,
    ) -> EtcdServer {
        let mut ports = Ports::new();
        let (client_port, peer_port) = (ports.take().unwrap(), ports.take().unwrap());
        let mut s = EtcdServer {
            endpoint: if tls.is_some() {
                format!("https://{ip}:{client_port}")
            } else {
                format!("{ip}:{client_port}")
            },
            client_port,
            peer_port,
            data: tempfile::tempdir().unwrap(),
            tls,
            child: None,
            ip,
            wrap,
        };
        s.spawn();
        s.wait_ready().await;
        s
    }

    fn spawn(&mut self) {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://{}:{}", self.ip, self.client_port);
        let peer = format!("http://{}:{}", self.ip, self.peer_port);
        let mut cmd = muster_cli::launch::wrapped(&self.wrap, crate::servers::etcd());
        cmd.args(["--name", "t1", "--data-dir"])
            .arg(self.data.path().join("etcd"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args([
                "--initial-cluster",
                &format!("t1={peer}"),
                "--initial-cluster-state",
                "new",
                "--log-level",
                "error",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.data.path().join("etcd.log")).unwrap());
        if let Some((cert, key, ca)) = &self.tls {
            cmd.arg("--cert-file").arg(cert).arg("--key-file").arg(key);
            cmd.arg("--client-cert-auth").arg("--trusted-ca-file").arg(ca);
        }
        self.child =
            Some(Running(cmd.spawn().unwrap_or_else(|e| {
                panic!("cannot start etcd ({e}); get it with: {INSTALL}")
            })));
    }

    /// Waits until the client port accepts connections (and etcd answers a plain request).
    pub async fn wait_ready(&self) {
        let up = crate::eventually(Duration::from_secs(20), async || {
            std::net::TcpStream::connect((self.ip, self.client_port)).is_ok() && self.answers().await
        })
        .await;
        assert!(up.is_some(), "etcd did not become ready; log: {}", self.log());
    }

    async fn answers(&self) -> bool {
        if self.tls.is_some() {
            return true; // a TLS etcd is probed by the tests themselves
        }
        match etcd_client::Client::connect([&self.endpoint], None).await {
            Ok(mut c) => c.status().await.is_ok(),
            Err(_) => false,
        }
    }

    /// A plain client for checks behind the backend's back.
    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([&self.endpoint], None)
            .await
            .expect("connect to the test etcd")
    }

    /// Kills etcd (its data stays).
    pub fn stop(&mut self) {
        self.child = None;
    }

    /// Starts etcd again on the same ports and data dir, and waits until it answers.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn();
        self.wait_ready().await;
    }

    /// etcd's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}
