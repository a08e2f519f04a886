//! The formation lock: etcd's lock API on a lease of its own (`lock_timeout`), kept alive while
//! held. A holder that dies stops renewing, and etcd frees the lock when the lease expires. A
//! failed renewal is not silent: the guard's `lost()` resolves, which cancels the action under
//! the lock, and the fencing claim checks the lock key in the same transaction.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, LockOptions};
use futures::future::BoxFuture;
use muster_discovery_core::{DiscoveryError, ErrorKind, LockGuard, LockWait};
use tokio::sync::{oneshot, watch};
use tracing::warn;

use crate::NAME;
use crate::errors::{bounded, map};

/// A held etcd lock.
pub struct EtcdLock {
    client: Client,
    limit: Duration,
    key: Vec<u8>,
    lease: i64,
    stop: Option<oneshot::Sender<()>>,
    lost: watch::Receiver<bool>,
}

/// Keeps the lock lease alive every `period`; flags `lost` when a renewal fails or the lease is
/// gone (TTL 0), or when no renewal succeeded within the lease's TTL.
async fn keep_alive(
    mut client: Client,
    lease: i64,
    ttl: Duration,
    mut stopped: oneshot::Receiver<()>,
    lost: watch::Sender<bool>,
) {
    let period = ttl / 3;
    let Ok((mut keeper, mut stream)) = client.lease_keep_alive(lease).await else {
        let _ = lost.send(true);
        return;
    };
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tokio::time::sleep(period) => {}
        }
        let renewed = tokio::time::timeout(ttl.saturating_sub(period), async {
            keeper.keep_alive().await.ok()?;
            stream.message().await.ok().flatten()
        })
        .await;
        match renewed {
            Ok(Some(resp)) if resp.ttl() > 0 => {}
            _ => {
                warn!("the formation lock's lease {lease:x} could not be renewed; the lock is lost");
                let _ = lost.send(true);
                return;
            }
        }
    }
}

/// Takes the lock `name`, waiting until `wait` is over; single calls are bounded by `limit`.
/// etcd's lock call returns when the key ahead of ours is deleted, so a release is seen at once.
pub async fn acquire(
    client: &Client,
    name: &str,
    ttl: Duration,
    wait: &LockWait,
    limit: Duration,
) -> Result<EtcdLock, DiscoveryError> {
    let mut c = client.clone();
    let grant = c.lease_grant(ttl.as_secs().max(1) as i64, None);
    let lease = bounded("granting the lock lease", limit, grant).await?.id();
    let (stop, stopped) = oneshot::channel::<()>();
    let (lost_tx, lost) = watch::channel(false);
    tokio::spawn(keep_alive(client.clone(), lease, ttl, stopped, lost_tx));
    let opts = LockOptions::new().with_lease(lease);
    // Giving up revokes the lease, which deletes our waiting (or just granted) key with it.
    match wait.bound(c.lock(name, Some(opts))).await {
        Some(Ok(resp)) => Ok(EtcdLock {
            client: client.clone(),
            limit,
            key: resp.key().to_vec(),
            lease,
            stop: Some(stop),
            lost,
        }),
        Some(Err(e)) => {
            let _ = stop.send(());
            let _ = bounded("revoking the lock lease", limit, c.lease_revoke(lease)).await;
            Err(map("taking the formation lock", e))
        }
        None => {
            let _ = stop.send(());
            let _ = bounded("revoking the lock lease", limit, c.lease_revoke(lease)).await;
            Err(DiscoveryError::new(
                NAME,
                ErrorKind::Unavailable,
                format!(
                    "the formation lock {name} is held by another node; stopped waiting after at most {:?}",
                    wait.timeout()
                ),
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

    fn token(&self) -> &[u8] {
        &self.key
    }

    fn lost(&self) -> BoxFuture<'static, ()> {
        let mut rx = self.lost.clone();
        Box::pin(async move {
            // A dropped sender without a loss (released) never resolves.
            if rx.wait_for(|lost| *lost).await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}
