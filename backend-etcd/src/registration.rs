//! The node's registration: a lease of `node_ttl`, the node key attached to it, a keep-alive every
//! third of the TTL, and re-registration (new lease, new put) with backoff whenever the lease is
//! lost, the keep-alive fails or etcd comes back after an outage.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use muster_discovery_core::RegistrationStatus;
use muster_discovery_core::retry::{Jitter, Retry};
use tracing::{info, warn};

use crate::Inner;
use crate::errors::bounded;

fn set(inner: &Inner, f: impl FnOnce(&mut RegistrationStatus)) {
    inner.registration.send_modify(f);
}

/// Grants a lease and puts the node key on it; returns the lease id.
async fn establish(inner: &Inner) -> Result<i64, String> {
    let mut client = inner.client().await.map_err(|e| e.to_string())?;
    let ttl = inner.settings.node_ttl.as_secs().max(1) as i64;
    let limit = inner.settings.connect_timeout;
    let lease = bounded(
        "granting the registration lease",
        limit,
        client.lease_grant(ttl, None),
    )
    .await
    .map_err(|e| e.to_string())?
    .id();
    let value = serde_json::json!({
        "node": inner.local.to_string(),
        "start_time_ms": inner.start_ms,
        "version": env!("CARGO_PKG_VERSION"),
    })
    .to_string();
    let opts = etcd_client::PutOptions::new().with_lease(lease);
    bounded(
        "writing the node key",
        limit,
        client.put(inner.node_key(&inner.local), value, Some(opts)),
    )
    .await
    .map_err(|e| e.to_string())?;
    *inner.lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(lease);
    Ok(lease)
}

/// Renews `lease` every third of the TTL until it is lost or a renewal fails; returns why.
async fn keep_alive(inner: &Inner, lease: i64) -> String {
    let period = inner.settings.node_ttl / 3;
    let mut client = match inner.client().await {
        Ok(c) => c,
        Err(e) => return e.to_string(),
    };
    let (mut keeper, mut stream) = match client.lease_keep_alive(lease).await {
        Ok(pair) => pair,
        Err(e) => return format!("keep-alive stream: {e}"),
    };
    loop {
        tokio::time::sleep(period).await;
        if let Err(e) = keeper.keep_alive().await {
            return format!("keep-alive failed: {e}");
        }
        match tokio::time::timeout(period.max(Duration::from_secs(1)), stream.message()).await {
            Ok(Ok(Some(r))) if r.ttl() > 0 => set(inner, |s| s.renewals += 1),
            Ok(Ok(Some(_))) => return format!("lease {lease:x} expired or was revoked"),
            Ok(Ok(None)) => return "keep-alive stream closed".into(),
            Ok(Err(e)) => return format!("keep-alive failed: {e}"),
            Err(_) => return "keep-alive got no answer in time".into(),
        }
    }
}

/// The keeper task: runs until aborted (unregister or drop).
pub async fn keeper(inner: Arc<Inner>) {
    let backoff = Retry::every(Duration::from_millis(250))
        .backoff((inner.settings.node_ttl / 3).max(Duration::from_secs(1)))
        .jitter(Jitter::Random);
    let mut first = true;
    loop {
        let lease = backoff
            .run(|attempt| {
                let inner = &inner;
                async move {
                    match establish(inner).await {
                        Ok(lease) => ControlFlow::Break(Ok::<_, ()>(lease)),
                        Err(e) => {
                            if attempt == 1 || attempt % 10 == 0 {
                                warn!(node = %inner.local, "etcd registration failed (retrying): {e}");
                            }
                            set(inner, |s| {
                                s.registered = false;
                                s.detail = format!("not registered: {e}");
                            });
                            ControlFlow::Continue(())
                        }
                    }
                }
            })
            .await;
        // The retry has no limit and the closure never stops it, so only Ok can come back.
        let Ok(lease) = lease else { continue };
        if !first {
            set(&inner, |s| s.re_registrations += 1);
            info!(node = %inner.local, "etcd registration re-established (lease {lease:x})");
        }
        first = false;
        let key = inner.node_key(&inner.local);
        set(&inner, |s| {
            s.registered = true;
            s.detail = format!(
                "registered as {key} (lease {lease:x}, ttl {:?})",
                inner.settings.node_ttl
            );
        });
        let why = keep_alive(&inner, lease).await;
        warn!(node = %inner.local, "etcd registration lost: {why}; re-registering");
        set(&inner, |s| {
            s.registered = false;
            s.detail = format!("re-registering: {why}");
        });
    }
}

/// The watch task: a prefix watch on the cluster's keys; any event fires `trigger`. Runs until
/// aborted (the backend dropped); a broken watch is re-established with the same backoff as the
/// registration.
pub async fn watch(inner: Arc<Inner>, trigger: muster_discovery_core::Trigger) {
    let backoff = Retry::every(Duration::from_millis(250))
        .backoff(inner.settings.connect_timeout.max(Duration::from_secs(1)))
        .jitter(Jitter::Random);
    let prefix = format!("{}/", inner.settings.base());
    let _ = backoff
        .run(|_| {
            let (inner, prefix, trigger) = (&inner, &prefix, &trigger);
            async move {
                if let Err(e) = watch_once(inner, prefix, trigger).await {
                    warn!(node = %inner.local, "etcd watch on {prefix} broke (polling meanwhile): {e}");
                }
                ControlFlow::<Result<(), ()>, ()>::Continue(())
            }
        })
        .await;
}

async fn watch_once(
    inner: &Inner,
    prefix: &str,
    trigger: &muster_discovery_core::Trigger,
) -> Result<(), muster_discovery_core::DiscoveryError> {
    let mut client = inner.client().await?;
    let mut stream = client
        .watch(prefix, Some(etcd_client::WatchOptions::new().with_prefix()))
        .await
        .map_err(|e| crate::errors::map("watching the cluster's keys", e))?;
    // A change made while the watch was being set up is caught by this fire's round.
    trigger.fire();
    while let Some(resp) = stream
        .message()
        .await
        .map_err(|e| crate::errors::map("watching the cluster's keys", e))?
    {
        // The formation lock's keys change while nodes queue for it: that is no change to the
        // listing (and each waiter's own key would wake it).
        let lock = inner.settings.lock_name();
        let listed = |e: &etcd_client::Event| e.kv().is_some_and(|kv| !kv.key().starts_with(lock.as_bytes()));
        if resp.events().iter().any(listed) {
            trigger.fire();
        }
    }
    Ok(())
}
