//! Booting and stopping a node: cookie, store, listeners, formation engine, cleanup, anti-entropy.

use std::sync::Arc;

use muster::FormationEngine;
use muster::cleanup::Cleanup;
use tokio::net::TcpListener;
use tracing::{error, info};

use crate::config::Resolved;
use crate::cookie::Cookie;
use crate::metrics::Counting;
use crate::node::{Node, NodeMembership};
use crate::state::Store;
use crate::tls::PeerTls;

/// What a node needs from its files before it starts, checked: the cookie (present, private,
/// strong), the data dir (a writable directory, or creatable) and the TLS files. `start` and
/// `muster config check` both run it, so that check refuses what start would.
pub fn preflight(cfg: &Resolved) -> Result<(Cookie, Option<PeerTls>), PreflightError> {
    let cookie = Cookie::load(cfg.file.node.cookie_file.as_deref())?;
    Store::check_dir(&cfg.data_dir).map_err(|source| PreflightError::DataDir {
        path: cfg.data_dir.clone(),
        source,
    })?;
    let tls = cfg.file.tls.as_ref().map(PeerTls::load).transpose()?;
    Ok((cookie, tls))
}

/// Why a node's files do not let it start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PreflightError {
    /// The cookie is missing, readable by others, or weak.
    #[error(transparent)]
    Cookie(#[from] crate::cookie::CookieError),
    /// The data dir is a file, or not writable.
    #[error("node.data_dir = {}: {source}", path.display())]
    DataDir {
        /// The configured data dir.
        path: std::path::PathBuf,
        /// Why it cannot be used.
        source: std::io::Error,
    },
    /// A TLS file is missing or wrong.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Runs a node until it is stopped (`ctl stop`, SIGTERM, SIGINT) or formation fails.
pub async fn run(cfg: Resolved) -> Result<(), String> {
    let (cookie, tls) = preflight(&cfg).map_err(|e| format!("refusing to start: {e}"))?;
    for backend in &cfg.unchecked_tables {
        tracing::warn!(
            node = %cfg.name,
            "[cluster_formation.{backend}] is not checked: the {backend} backend is not compiled into this binary"
        );
    }
    // The channel's key is slow to derive by design: derived beside the rest of the boot, and
    // awaited before this node serves or calls anyone.
    let key = {
        let (cookie, name) = (cookie.clone(), cfg.file.node.cluster_name.clone());
        tokio::task::spawn_blocking(move || cookie.key(&name))
    };
    let store = Store::open(&cfg.data_dir)
        .map_err(|e| format!("cannot open data dir {}: {e}", cfg.data_dir.display()))?;
    let cf = cfg.file.cluster_formation.clone();
    let node = Node::open(
        cfg.name.clone(),
        cfg.file.node.cluster_name.clone(),
        cookie,
        tls,
        store,
        cf.probe_timeout,
    )
    .map_err(|e| format!("cannot load state from {}: {e}", cfg.data_dir.display()))?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    #[cfg(feature = "http")]
    if let Some(addr) = cfg.http {
        let http = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen for HTTP on {addr}: {e}"))?;
        let detail = cfg.file.http.as_ref().is_some_and(|h| h.status_detail);
        tokio::spawn(crate::http::serve(http, node.clone(), detail));
        info!(node = %cfg.name, "HTTP endpoints on http://{addr}/ (health/live, health/ready, status, metrics)");
    }
    let backend = muster::build_backend(&cf, &cfg.name).map_err(|e| e.to_string())?;
    let backend: Arc<dyn muster::Discovery> = Arc::new(Counting::new(backend, node.metrics.clone()));
    let membership = Arc::new(NodeMembership(node.clone()));
    let engine = FormationEngine::new(cf.clone(), backend.clone(), membership.clone());
    node.set_formation(engine.status(), backend.clone());
    node.set_trigger(engine.trigger());
    // The key before the first handshake: the listener is bound, so peers that call meanwhile
    // wait in its backlog (a handshake must never wait for it on a runtime thread).
    key.await
        .map_err(|e| format!("refusing to start: the key derivation failed: {e}"))?
        .map_err(|e| format!("refusing to start: {e}"))?;
    tokio::spawn(crate::server::serve(listener, node.clone()));
    tokio::spawn(node.clone().anti_entropy(cfg.file.node.sync_interval));
    info!(
        node = %cfg.name,
        "listening for peers on {} (cluster name {:?}, backend {})",
        cfg.listen,
        cfg.file.node.cluster_name,
        backend.name()
    );

    let mut stop = node.stop_signal();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot install the SIGTERM handler: {e}"))?;
    let stopped = async move {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => {}
            _ = term.recv() => info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
        }
    };
    tokio::pin!(stopped);
    tokio::select! {
        result = engine.run() => match result {
            Ok(_) => {
                let cleanup = Cleanup::new(cf.node_cleanup.clone(), cf.probe_timeout, backend.clone(), membership.clone());
                // Forgotten members are counted by the node itself (forget_member).
                tokio::spawn(cleanup.run(|_| {}));
                (&mut stopped).await;
            }
            Err(e) => {
                error!(node = %cfg.name, "{e}");
                engine.shutdown().await;
                return Err(e.to_string());
            }
        },
        _ = &mut stopped => {}
    }
    node.record_shutdown().await;
    engine.shutdown().await;
    info!(node = %cfg.name, "stopped");
    Ok(())
}
