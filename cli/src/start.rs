//! `muster start`: a node on the runtime's public API, run until an operator stops it (`muster
//! ctl stop`), SIGTERM or SIGINT, or until formation fails.

use std::time::Duration;

use muster_node::config::ResolvedConfig;
use muster_node::{Cluster, FormedError};
use tracing::info;

/// Runs the node `cfg` describes; an error ends the process with the message on stderr.
pub async fn run(cfg: &ResolvedConfig) -> Result<(), String> {
    let cluster = Cluster::from_config(cfg)
        .map_err(|e| e.to_string())?
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot install the SIGTERM handler: {e}"))?;
    let failed = async {
        loop {
            match cluster.formed(Duration::from_secs(3600)).await {
                Err(FormedError::Timeout(_)) => continue,
                Err(e @ FormedError::Failed(_)) => return e.to_string(),
                // Formed (or stopped): the node runs until it is told to stop.
                _ => std::future::pending::<()>().await,
            }
        }
    };
    let outcome = tokio::select! {
        why = failed => Err(why),
        _ = cluster.stop_requested() => Ok(()),
        _ = term.recv() => {
            info!("SIGTERM received");
            Ok(())
        }
        _ = tokio::signal::ctrl_c() => {
            info!("SIGINT received");
            Ok(())
        }
    };
    cluster.shutdown().await;
    outcome
}
