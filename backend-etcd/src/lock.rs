//! The formation lock: etcd's lock API on a lease of its own (`lock_timeout`), kept alive while
//! held. A holder that dies stops renewing, and etcd frees the lock when the lease expires. A
//! failed renewal is not silent: the guard's `lost()` resolves, which cancels the action under
//! the lock, and the fencing claim checks the lock key in the same transaction.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, LockOptions};
use futures::future::BoxFuture;
use muster_discovery_core::lease_keeper::{LeaseKeeper, Renewal};
use muster_discovery_core::{DiscoveryError, ErrorKind, LockGuard, LockWait};

use crate::NAME;
use crate::errors::{bounded, map};

/// A held etcd lock.
pub struct EtcdLock {
    client: Client,
    limit: Duration,
    key: Vec<u8>,
    lease: i64,
    keeper: LeaseKeeper,
}

/// Keeps the lock lease alive every third of its TTL; the hold is lost when the lease is gone
/// (TTL 0) or when no renewal succeeded within two thirds of the TTL.
fn keep_alive(client: Client, lease: i64, ttl: Duration) -> LeaseKeeper {
    let period = ttl / 3;
    let grace = ttl * 2 / 3;
    // The keep-alive stream, opened at the first renewal and again after it broke.
    let stream = Arc::new(tokio::sync::Mutex::new(None));
    let renew = move || {
        let (mut client, stream) = (client.clone(), stream.clone());
        async move {
            let mut open = stream.lock().await;
            if open.is_none() {
                match client.lease_keep_alive(lease).await {
                    Ok(pair) => *open = Some(pair),
                    Err(e) => return failed(e.to_string(), period),
                }
            }
            let Some((keeper, answers)) = open.as_mut() else {
                return failed("no keep-alive stream".into(), period);
            };
            let answer = match keeper.keep_alive().await {
                Ok(()) => answers.message().await,
                Err(e) => Err(e),
            };
            match answer {
                Ok(Some(resp)) if resp.ttl() > 0 => Renewal::Renewed { next: period, grace },
                Ok(Some(_)) => Renewal::Lost {
                    why: "the lease expired".into(),
                },
                Ok(None) => {
                    *open = None;
                    failed("the keep-alive stream ended".into(), period)
                }
                Err(e) => {
                    *open = None;
                    failed(e.to_string(), period)
                }
            }
        }
    };
    LeaseKeeper::start(
        format!("the formation lock's lease {lease:x}"),
        period,
        grace,
        renew,
    )
}

fn failed(why: String, retry: Duration) -> Renewal {
    Renewal::Failed { why, retry }
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
    let mut keeper = keep_alive(client.clone(), lease, ttl);
    let opts = LockOptions::new().with_lease(lease);
    // Giving up revokes the lease, which deletes our waiting (or just granted) key with it.
    match wait.bound(c.lock(name, Some(opts))).await {
        Some(Ok(resp)) => Ok(EtcdLock {
            client: client.clone(),
            limit,
            key: resp.key().to_vec(),
            lease,
            keeper,
        }),
        Some(Err(e)) => {
            keeper.stop();
            let _ = bounded("revoking the lock lease", limit, c.lease_revoke(lease)).await;
            Err(map("taking the formation lock", e))
        }
        None => {
            keeper.stop();
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
        self.keeper.stop();
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
        self.keeper.lost()
    }
}
