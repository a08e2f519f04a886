//! The formation lock: etcd's lock API on a lease of its own (`lock_timeout`), kept alive while
//! held. A holder that dies stops renewing, and etcd frees the lock when the lease expires.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, LockOptions};
use muster_discovery_core::{DiscoveryError, ErrorKind, LockGuard};
use tokio::sync::oneshot;

use crate::NAME;
use crate::errors::{bounded, map};

/// A held etcd lock.
pub struct EtcdLock {
    client: Client,
    limit: Duration,
    key: Vec<u8>,
    lease: i64,
    stop: Option<oneshot::Sender<()>>,
}

/// Takes the lock `name`, waiting at most `wait`; single calls are bounded by `limit`.
pub async fn acquire(
    client: &Client,
    name: &str,
    ttl: Duration,
    wait: Duration,
    limit: Duration,
) -> Result<EtcdLock, DiscoveryError> {
    let mut c = client.clone();
    let grant = c.lease_grant(ttl.as_secs().max(1) as i64, None);
    let lease = bounded("granting the lock lease", limit, grant).await?.id();
    let (stop, mut stopped) = oneshot::channel::<()>();
    let mut renew = client.clone();
    let period = ttl / 3;
    tokio::spawn(async move {
        let Ok((mut keeper, mut stream)) = renew.lease_keep_alive(lease).await else {
            return;
        };
        loop {
            tokio::select! {
                _ = &mut stopped => return,
                _ = tokio::time::sleep(period) => {}
            }
            if keeper.keep_alive().await.is_err() || stream.message().await.is_err() {
                return;
            }
        }
    });
    let opts = LockOptions::new().with_lease(lease);
    match tokio::time::timeout(wait, c.lock(name, Some(opts))).await {
        Ok(Ok(resp)) => Ok(EtcdLock {
            client: client.clone(),
            limit,
            key: resp.key().to_vec(),
            lease,
            stop: Some(stop),
        }),
        Ok(Err(e)) => {
            let _ = bounded("revoking the lock lease", limit, c.lease_revoke(lease)).await;
            Err(map("taking the formation lock", e))
        }
        Err(_) => {
            let _ = bounded("revoking the lock lease", limit, c.lease_revoke(lease)).await;
            Err(DiscoveryError::new(
                NAME,
                ErrorKind::Unavailable,
                format!("the formation lock {name} is held by another node; not free within {wait:?}"),
            ))
        }
    }
}

#[async_trait]
impl LockGuard for EtcdLock {
    async fn release(mut self: Box<Self>) -> Result<(), DiscoveryError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let key = std::mem::take(&mut self.key);
        let (limit, lease) = (self.limit, self.lease);
        bounded("releasing the formation lock", limit, self.client.unlock(key)).await?;
        bounded("revoking the lock lease", limit, self.client.lease_revoke(lease)).await?;
        Ok(())
    }
}
