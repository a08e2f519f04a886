//! The API client: from the pod's service account or a kubeconfig (never guessed: a stray
//! kubeconfig in an image does not win over the service account), with kube's own retries off
//! (one `list` could otherwise hang for minutes during an outage; the engine retries), connect
//! and read timeouts, and every call bounded by `request_timeout` on top.

use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use muster_discovery_core::{DiscoveryError, ErrorKind};

use crate::NAME;
use crate::settings::{ApiSource, K8sSettings};

fn misconfigured(message: String) -> DiscoveryError {
    DiscoveryError::new(NAME, ErrorKind::Misconfigured, message)
}

/// The client configuration the settings name.
pub async fn config(s: &K8sSettings) -> Result<Config, DiscoveryError> {
    let mut config = match s.api {
        ApiSource::InCluster => Config::incluster().map_err(|e| {
            misconfigured(format!(
                "cluster_formation.k8s.api = \"in-cluster\": {e} (outside a pod, set api = \"kubeconfig\")"
            ))
        })?,
        ApiSource::Kubeconfig => {
            let path = match &s.kubeconfig {
                Some(p) => p.clone(),
                None => match std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
                    Some(p) => p.into(),
                    None => std::env::var_os("HOME")
                        .map(|h| std::path::PathBuf::from(h).join(".kube/config"))
                        .ok_or_else(|| {
                            misconfigured("no kubeconfig: set cluster_formation.k8s.kubeconfig".into())
                        })?,
                },
            };
            let kc = Kubeconfig::read_from(&path).map_err(|e| {
                misconfigured(format!(
                    "cluster_formation.k8s.kubeconfig = {}: {e}",
                    path.display()
                ))
            })?;
            let options = KubeConfigOptions {
                context: s.context.clone(),
                ..KubeConfigOptions::default()
            };
            Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| misconfigured(format!("kubeconfig {}: {e}", path.display())))?
        }
    };
    config.default_retry = false;
    config.connect_timeout = Some(s.request_timeout.min(Duration::from_secs(5)));
    config.read_timeout = Some(s.request_timeout);
    config.write_timeout = Some(s.request_timeout);
    config.reset_reader_on_write = true;
    // Never silently disabled: an `insecure-skip-tls-verify` in a kubeconfig is refused.
    if config.accept_invalid_certs {
        return Err(misconfigured(
            "the kubeconfig disables TLS verification (insecure-skip-tls-verify); muster refuses \
             to talk to an API server it cannot verify: give the cluster's CA instead"
                .into(),
        ));
    }
    Ok(config)
}

/// A client for `config`.
pub fn client(config: Config) -> Result<Client, DiscoveryError> {
    Client::try_from(config).map_err(|e| misconfigured(format!("cannot build the API client: {e}")))
}
