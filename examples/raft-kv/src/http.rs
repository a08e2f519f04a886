//! The client API: `PUT /kv/{key}` (the body is the value; forwarded to the leader), `GET
//! /kv/{key}`, and `GET /cluster` (leader, voters, learners, term).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::node::KvNode;

/// Serves the API on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, node: Arc<KvNode>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/kv/{key}", get(read).put(write))
        .route("/cluster", get(cluster))
        .with_state(node);
    axum::serve(listener, app).await
}

fn json(v: &impl serde::Serialize) -> Response {
    match serde_json::to_string(v) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body + "\n").into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn write(State(node): State<Arc<KvNode>>, Path(key): Path<String>, value: String) -> Response {
    match node.set(key, value).await {
        Ok(r) => json(&r),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e + "\n").into_response(),
    }
}

async fn read(State(node): State<Arc<KvNode>>, Path(key): Path<String>) -> Response {
    match node.get(&key).await {
        Ok(Some(v)) => v.into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "no such key\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e + "\n").into_response(),
    }
}

async fn cluster(State(node): State<Arc<KvNode>>) -> Response {
    json(&node.view())
}
