//! A minimal HTTP/1.1 endpoint (GET only): `/health/live`, `/health/ready`, `/status`, `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::Metrics;
use crate::node::Node;

const MAX_HEAD: usize = 8192;

/// Serves HTTP forever, within the listener's connection caps.
pub async fn serve(listener: TcpListener, node: Arc<Node>) {
    let name = node.name().clone();
    crate::limits::serve(listener, &name, "HTTP port", move |stream, _| {
        let node = node.clone();
        async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), handle(stream, node)).await;
        }
    })
    .await
}

async fn handle(mut stream: TcpStream, node: Arc<Node>) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() + n > MAX_HEAD {
            return respond(&mut stream, 400, "text/plain", "bad request\n").await;
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" {
        return respond(&mut stream, 405, "text/plain", "only GET is supported\n").await;
    }
    match path {
        "/health/live" => respond(&mut stream, 200, "text/plain", "ok\n").await,
        "/health/ready" => {
            if node.is_ready() {
                respond(&mut stream, 200, "text/plain", "ready\n").await
            } else {
                let body = format!("not ready: {}\n", node.formation().detail);
                respond(&mut stream, 503, "text/plain", &body).await
            }
        }
        "/status" => {
            let body =
                serde_json::json!({ "membership": node.status(false).await, "formation": node.formation() });
            respond(&mut stream, 200, "application/json", &format!("{body:#}\n")).await
        }
        "/metrics" => respond(&mut stream, 200, "text/plain; version=0.0.4", &metrics(&node)).await,
        _ => respond(&mut stream, 404, "text/plain", "not found\n").await,
    }
}

async fn respond(stream: &mut TcpStream, code: u16, ctype: &str, body: &str) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

fn metrics(node: &Node) -> String {
    let m = &node.metrics;
    let f = node.formation();
    let phase = serde_json::to_value(f.phase)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    let mut out = String::new();
    let mut put = |name: &str, kind: &str, help: &str, value: String| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{value}\n"
        ));
    };
    put(
        "muster_formation_state",
        "gauge",
        "Formation phase (1 for the current phase).",
        format!("{{phase=\"{phase}\"}} 1"),
    );
    put(
        "muster_ready",
        "gauge",
        "1 when clustered and serving.",
        format!(" {}", u8::from(node.is_ready())),
    );
    put(
        "muster_cluster_members",
        "gauge",
        "Members this node knows.",
        format!(" {}", node.state().alive().len()),
    );
    put(
        "muster_discovery_calls_total",
        "counter",
        "Backend listings.",
        format!(" {}", Metrics::get(&m.discovery_calls)),
    );
    put(
        "muster_discovery_errors_total",
        "counter",
        "Backend listings that failed.",
        format!(" {}", Metrics::get(&m.discovery_errors)),
    );
    put(
        "muster_joins_total",
        "counter",
        "Joins performed or accepted by this node.",
        format!(" {}", Metrics::get(&m.joins)),
    );
    put(
        "muster_forgotten_nodes_total",
        "counter",
        "Members forgotten by this node.",
        format!(" {}", Metrics::get(&m.forgotten)),
    );
    put(
        "muster_reachable_peers",
        "gauge",
        "Peers that answered the last status check.",
        format!(" {}", Metrics::get(&m.reachable_peers)),
    );
    put(
        "muster_peer_messages_sent_total",
        "counter",
        "Peer-protocol messages sent.",
        format!(" {}", Metrics::get(&m.messages_sent)),
    );
    put(
        "muster_peer_messages_received_total",
        "counter",
        "Peer-protocol messages received.",
        format!(" {}", Metrics::get(&m.messages_received)),
    );
    if let Some(r) = node.registration() {
        put(
            "muster_registered",
            "gauge",
            "1 when registered with the backend.",
            format!(" {}", u8::from(r.registered)),
        );
        put(
            "muster_registration_renewals_total",
            "counter",
            "Registration keep-alive renewals.",
            format!(" {}", r.renewals),
        );
        put(
            "muster_re_registrations_total",
            "counter",
            "Times the registration was re-established.",
            format!(" {}", r.re_registrations),
        );
    }
    put(
        "muster_auth_failures_total",
        "counter",
        "Connections refused for a failed handshake.",
        format!(" {}", Metrics::get(&m.auth_failures)),
    );
    out
}
