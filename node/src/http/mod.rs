//! The HTTP endpoint on axum and hyper: `/health/live`, `/health/ready`, `/status`, `/members`, `/metrics`
//! (GET and HEAD), with keep-alive, a bounded request head and a deadline for it, within the
//! listener's connection budget.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::node::Node;

pub mod metrics;

/// A client must send a whole request head within this time, also between requests on a kept
/// alive connection (an idle connection is closed after it).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// The routes; `/status` in detail only when `status_detail` (see `HttpSection`).
pub fn router(node: Arc<Node>, status_detail: bool) -> Router {
    let status = if status_detail { get(status) } else { get(summary) };
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/status", status)
        .route(
            "/members",
            if status_detail {
                get(members)
            } else {
                get(members_summary)
            },
        )
        .route("/metrics", get(metrics))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(node)
}

/// HTTP connections: a fixed budget (nobody authenticates here), a share per network; when full,
/// the oldest connection goes, so that an idle flood ages out and a health probe gets in.
const HTTP_GATE: usize = 64;
const HTTP_GATE_PER_NETWORK: usize = 32;

/// Serves HTTP forever, within the listener's connection budget.
pub async fn serve(listener: TcpListener, node: Arc<Node>, status_detail: bool) {
    let name = node.name().clone();
    let app = router(node, status_detail);
    let gate = crate::limits::Gate::new(HTTP_GATE, HTTP_GATE_PER_NETWORK);
    crate::limits::serve(
        listener,
        &name,
        "HTTP port",
        gate,
        move |stream, _, mut ticket| {
            let service = TowerToHyperService::new(app.clone());
            async move {
                let mut http = hyper::server::conn::http1::Builder::new();
                http.timer(TokioTimer::new())
                    .header_read_timeout(HEAD_TIMEOUT)
                    .max_buf_size(MAX_HEAD)
                    .keep_alive(true);
                // A failed or closed connection (timeout, bad request, reset, room made for a newer
                // one) is the client's business.
                if ticket.heard(&stream).await {
                    let _ = ticket
                        .run(http.serve_connection(TokioIo::new(stream), service))
                        .await;
                }
            }
        },
    )
    .await
}

/// Live unless the node stopped serving on its own (a failed bootstrap): then 503 with why, so
/// that a supervisor restarts it (its next start completes what it began).
async fn live(State(node): State<Arc<Node>>) -> Response {
    match node.failure().borrow().clone() {
        None => "ok\n".into_response(),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("failed: {why}\n")).into_response(),
    }
}

async fn ready(State(node): State<Arc<Node>>) -> Response {
    if node.is_ready() {
        "ready\n".into_response()
    } else {
        let body = format!("not ready: {}\n", node.detail());
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

async fn status(State(node): State<Arc<Node>>) -> Response {
    let body = serde_json::json!({ "membership": node.status(false).await, "formation": node.formation() });
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body:#}\n"),
    )
        .into_response()
}

/// `/status` without detail: this node's phase and counts, nothing about other nodes.
async fn summary(State(node): State<Arc<Node>>) -> Response {
    let formation = node.formation();
    let state = node.state();
    let body = serde_json::json!({
        "node": node.name(),
        "phase": formation.phase,
        "ready": node.is_ready(),
        "members": state.alive().len(),
        "detail": "members, cluster id and formation trace: set [http] status_detail = true, or run muster ctl cluster-status",
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body:#}\n"),
    )
        .into_response()
}

/// `/members`: every member's status, metadata and since when, with the members' version;
/// `?after=V` waits (a few seconds at most) until the version is above `V`: a watch by long
/// polling for services that run beside the node.
async fn members(State(node): State<Arc<Node>>, RawQuery(query): RawQuery) -> Response {
    let members = match after(query.as_deref()) {
        Ok(v) => node.members.after(v).await,
        Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
    };
    json(&serde_json::json!({ "node": node.name(), "version": members.version, "members": members.members }))
}

/// `/members` without detail: how many members have each status, nothing about who they are.
async fn members_summary(State(node): State<Arc<Node>>, RawQuery(query): RawQuery) -> Response {
    let members = match after(query.as_deref()) {
        Ok(v) => node.members.after(v).await,
        Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
    };
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for m in &members.members {
        *counts.entry(m.status.as_str()).or_default() += 1;
    }
    json(&serde_json::json!({
        "node": node.name(),
        "version": members.version,
        "counts": counts,
        "detail": "names, statuses and metadata: set [http] status_detail = true, or run muster ctl members",
    }))
}

/// The `after` query parameter, if given.
fn after(query: Option<&str>) -> Result<Option<u64>, String> {
    let Some(q) = query else { return Ok(None) };
    for pair in q.split('&') {
        if let Some(v) = pair.strip_prefix("after=") {
            return v
                .parse()
                .map(Some)
                .map_err(|_| format!("after={v} is not a version number\n"));
        }
    }
    Ok(None)
}

fn json(v: &serde_json::Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], format!("{v:#}\n")).into_response()
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(&node),
    )
        .into_response()
}
