//! `raft-kv --config FILE`: one node of the replicated key-value service. The file is a `muster`
//! node config (`[node]`, `[cluster_formation]`, …) with the service's `[service]` table
//! (`http = "127.0.0.1:8001"`).

use std::sync::Arc;

fn usage() -> ! {
    eprintln!("usage: raft-kv [--log-format text|json] [start] --config FILE");
    std::process::exit(2);
}

/// The config file, and whether logs are JSON: `raft-kv [--log-format F] [start] --config FILE`,
/// the same form as `muster start`, so that the launcher of local nodes runs either.
fn parse_args() -> (std::path::PathBuf, bool) {
    let (mut config, mut json) = (None, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" => config = args.next().map(std::path::PathBuf::from),
            "--log-format" => json = args.next().as_deref() == Some("json"),
            "start" => {}
            _ => usage(),
        }
    }
    match config {
        Some(c) => (c, json),
        None => usage(),
    }
}

#[tokio::main]
async fn main() {
    let (path, json) = parse_args();
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false);
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
    if let Err(e) = run(&path).await {
        eprintln!("raft-kv: {e}");
        std::process::exit(1);
    }
}

async fn run(path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let cfg = muster_node::config::NodeConfig::load_with_env(path)?;
    let node = Arc::new(raft_kv::node::start(&cfg).await?);
    let listener = tokio::net::TcpListener::bind(node.settings.http)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", node.settings.http))?;
    tracing::info!("client API on http://{}/", node.settings.http);
    let api = tokio::spawn(raft_kv::http::serve(listener, node.clone()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = node.cluster.stop_requested() => {}
    }
    api.abort();
    node.shutdown().await;
    Ok(())
}
