//! A real Consul agent for tests: `consul agent -dev` (Consul 1.8.7, fetched by
//! `scripts/fetch-servers.sh`; `MUSTER_CONSUL_BIN` runs another build) with every port on
//! 127.0.0.1 (HTTP, server RPC, serf LAN and WAN) or disabled (DNS, gRPC), started and waited
//! ready (a leader elected and the agent's node passing `serfHealth`), killed on drop. A dev agent
//! keeps its state in memory, so [`ConsulAgent::restart`] is the "agent restart" case: it forgets
//! every service, check, session and KV key. A missing binary fails the test with the command
//! that fetches it.
//!
//! The helpers (`get`, `put`, `check_status`, `key`, ...) look at the agent behind the backend's
//! back, through the same HTTP API.

use std::path::PathBuf;
use std::process::Stdio;

use crate::child::Running;
use std::time::Duration;

use muster_cli::launch::Ports;
use serde_json::Value;

/// How to get the agent these tests run.
pub const INSTALL: &str = crate::servers::FETCH;

/// The node name the dev agent registers itself under.
pub const NODE: &str = "muster-test-agent";

/// One answer of the agent's HTTP API.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// `X-Consul-Index`, when sent.
    pub index: Option<u64>,
    /// The body.
    pub body: String,
}

impl Answer {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// One `consul agent -dev` process.
pub struct ConsulAgent {
    http_port: u16,
    server_port: u16,
    serf_lan_port: u16,
    serf_wan_port: u16,
    dir: tempfile::TempDir,
    child: Option<Running>,
    http: reqwest::Client,
}

impl ConsulAgent {
    /// Starts a dev agent on free loopback ports and waits until it is ready.
    pub async fn start() -> ConsulAgent {
        let mut ports = Ports::new();
        let mut take = || ports.take().expect("a free loopback port");
        let mut a = ConsulAgent {
            http_port: take(),
            server_port: take(),
            serf_lan_port: take(),
            serf_wan_port: take(),
            dir: tempfile::tempdir().expect("a temp dir"),
            child: None,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("an HTTP client"),
        };
        a.spawn();
        a.wait_ready().await;
        a
    }

    /// `http://127.0.0.1:<http port>`, the value of `cluster_formation.consul.address`.
    pub fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("consul.log")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("the agent's log file");
        let mut cmd = std::process::Command::new(crate::servers::consul());
        cmd.args([
            "agent",
            "-dev",
            "-node",
            NODE,
            "-bind",
            "127.0.0.1",
            "-client",
            "127.0.0.1",
        ])
        .args(["-http-port", &self.http_port.to_string()])
        .args(["-server-port", &self.server_port.to_string()])
        .args(["-serf-lan-port", &self.serf_lan_port.to_string()])
        .args(["-serf-wan-port", &self.serf_wan_port.to_string()])
        .args(["-dns-port", "-1", "-grpc-port", "-1"])
        .args(["-hcl", "disable_update_check = true"])
        .args(["-hcl", "disable_anonymous_signature = true"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("the log file again"))
        .stderr(log);
        self.child = Some(Running(cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start consul ({e}); get it with: {INSTALL}")
        })));
    }

    /// Waits until a leader is elected and the agent's own node is in the catalog, passing.
    pub async fn wait_ready(&mut self) {
        let up = crate::eventually(Duration::from_secs(30), async || {
            let leader = self.get("/v1/status/leader").await;
            if !leader
                .as_ref()
                .is_some_and(|a| a.status == 200 && a.json().as_str().is_some_and(|l| !l.is_empty()))
            {
                return false;
            }
            self.get(&format!("/v1/health/node/{NODE}"))
                .await
                .is_some_and(|a| {
                    a.json().as_array().is_some_and(|checks| {
                        checks
                            .iter()
                            .any(|c| c["CheckID"] == "serfHealth" && c["Status"] == "passing")
                    })
                })
        })
        .await;
        if up.is_none() {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.0.try_wait().ok().flatten())
                .map(|s| format!(" (it exited: {s})"))
                .unwrap_or_default();
            panic!(
                "the Consul agent did not become ready within 30 s{exited}; its log:\n{}",
                self.log()
            );
        }
    }

    /// Kills the agent: every call then fails to connect.
    pub fn stop(&mut self) {
        self.child = None;
    }

    /// Kills the agent and starts it again on the same ports, and waits until it is ready. A dev
    /// agent keeps nothing: services, checks, sessions and KV keys are all gone afterwards.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn();
        self.wait_ready().await;
    }

    /// The agent's log (every start of it).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The last `lines` lines of the log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Vec<u8>>) -> Option<Answer> {
        request(&self.http, &self.addr(), method, path, body).await
    }

    /// `GET path` (with its query); `None` when the agent does not answer.
    pub async fn get(&self, path: &str) -> Option<Answer> {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// `PUT path` with `body`; `None` when the agent does not answer.
    pub async fn put(&self, path: &str, body: &str) -> Option<Answer> {
        self.call(reqwest::Method::PUT, path, Some(body.as_bytes().to_vec()))
            .await
    }

    /// The status of the agent's check `id`, if it has it.
    pub async fn check_status(&self, id: &str) -> Option<String> {
        let checks = self.get("/v1/agent/checks").await?.json();
        checks[id]["Status"].as_str().map(String::from)
    }

    /// The agent's view of service `id` (`GET /v1/agent/service/<id>`), if it has it.
    pub async fn service(&self, id: &str) -> Option<Value> {
        let a = self.get(&format!("/v1/agent/service/{id}")).await?;
        (a.status == 200).then(|| a.json())
    }

    /// The IDs of the services the agent has (its own `consul` service left out).
    pub async fn services(&self) -> Vec<String> {
        let all = self
            .get("/v1/agent/services")
            .await
            .map(|a| a.json())
            .unwrap_or_default();
        all.as_object()
            .map(|m| m.keys().filter(|k| *k != "consul").cloned().collect())
            .unwrap_or_default()
    }

    /// The session holding `key`, and the key's value (a consistent read).
    pub async fn key(&self, key: &str) -> Option<(Option<String>, String)> {
        use base64::Engine;
        let a = self.get(&format!("/v1/kv/{key}?consistent")).await?;
        if a.status != 200 {
            return None;
        }
        let row = a.json()[0].clone();
        let value = row["Value"]
            .as_str()
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default();
        Some((row["Session"].as_str().map(String::from), value))
    }
}

/// One call to the Consul HTTP API at `address` (`http://host:port`), fake or real; `None` when
/// nothing answers.
pub async fn request(
    http: &reqwest::Client,
    address: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Option<Answer> {
    let mut req = http.request(method, format!("{address}{path}"));
    if let Some(b) = body {
        req = req.body(b);
    }
    let resp = req.send().await.ok()?;
    let status = resp.status().as_u16();
    let index = resp
        .headers()
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = resp.text().await.ok()?;
    Some(Answer { status, index, body })
}

impl Drop for ConsulAgent {
    fn drop(&mut self) {
        self.stop();
    }
}
