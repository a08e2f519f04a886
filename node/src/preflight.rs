//! What a node needs from its files before it starts, shared by `Cluster::from_config` and the
//! `muster config check` command so that check refuses what start would.

use crate::config::ResolvedConfig;
use crate::cookie::Cookie;
use crate::state::Store;
use crate::tls::PeerTls;

/// Reads and checks the cookie (present, private, strong; from `MUSTER_COOKIE` too when the
/// config was read with its environment overrides), the data dir (a writable directory, or
/// creatable) and the TLS files.
pub fn preflight(cfg: &ResolvedConfig) -> Result<(Cookie, Option<PeerTls>), PreflightError> {
    let file = cfg.file.node.cookie_file.as_deref();
    let cookie = if cfg.environment {
        Cookie::load(file)?
    } else {
        Cookie::from_configured(file)?
    };
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
