//! The formation lock: a session (TTL `lock_ttl`, lock-delay `lock_delay`, tied to the node's
//! service check when it is registered) holding `<prefix>/<cluster>/formation-lock` by
//! `?acquire=`.
//!
//! - An acquire answered `false` while another session holds the key waits on a blocking read
//!   of the key instead of polling.
//! - A `false` with no holder is a lock-delay after a holder died: it sleeps, and does not spin.
//! - The session is renewed every half TTL, adopting the TTL Consul returns. A 404, or no
//!   renewal within one TTL, marks the guard lost.
//! - Release releases the key first, then destroys the session, so releasing starts no
//!   lock-delay.

use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use muster_discovery_core::lease_keeper::{LeaseKeeper, Renewal};
use muster_discovery_core::{DiscoveryError, ErrorKind, LockGuard, LockWait, NodeName};
use reqwest::Method;
use serde_json::json;
use tokio::time::Instant;

use crate::client::{Block, Consul, failure, go_duration, json, truth};
use crate::{Inner, NAME};

fn session_rule() -> &'static str {
    "session_prefix \"\" { policy = \"write\" }"
}

fn key_rule(inner: &Inner) -> String {
    format!(
        "key_prefix \"{}\" {{ policy = \"write\" }}",
        inner.r.settings.key_prefix
    )
}

/// A held lock.
pub struct ConsulLock {
    consul: Consul,
    key: String,
    session: String,
    keeper: LeaseKeeper,
}

/// The session holding `key`, if any.
pub async fn holder(inner: &Inner, key: &str) -> Result<Option<String>, DiscoveryError> {
    Ok(read(inner, key, None).await?.1)
}

/// Reads `key`: its ModifyIndex (or the reply's index when absent) and its holder.
async fn read(
    inner: &Inner,
    key: &str,
    block: Option<Block>,
) -> Result<(u64, Option<String>), DiscoveryError> {
    let what = format!("reading {key}");
    let r = inner
        .consul
        .call(
            &what,
            Method::GET,
            &format!("/v1/kv/{key}"),
            &[("consistent", String::new())],
            None,
            block,
        )
        .await?;
    match r.status.as_u16() {
        404 => Ok((r.index.unwrap_or(1), None)),
        200 => {
            let v = json(&what, &r)?;
            let index = v
                .pointer("/0/ModifyIndex")
                .and_then(|i| i.as_u64())
                .or(r.index)
                .unwrap_or(1);
            let session = v
                .pointer("/0/Session")
                .and_then(|s| s.as_str())
                .filter(|s| !s.is_empty());
            Ok((index, session.map(String::from)))
        }
        _ => Err(failure(&what, &key_rule(inner), &r)),
    }
}

async fn create_session(inner: &Inner, owner: &NodeName) -> Result<String, DiscoveryError> {
    let s = &inner.r.settings;
    // Tied to the node's own check when registered (the lock dies with the node); TTL-only
    // otherwise.
    let checks: Vec<String> = if inner.reg.status().registered {
        vec![format!("service:{}", inner.r.service_id)]
    } else {
        Vec::new()
    };
    let body = json!({
        "Name": format!("muster formation lock: {owner}"),
        "TTL": format!("{}s", s.lock_ttl.as_secs()),
        "LockDelay": go_duration(s.lock_delay),
        "Behavior": "release",
        "Checks": checks,
    });
    let what = "creating the lock session";
    let r = inner
        .consul
        .call(
            what,
            Method::PUT,
            "/v1/session/create",
            &[],
            Some(body.to_string().into_bytes()),
            None,
        )
        .await?;
    if !r.status.is_success() {
        return Err(failure(what, session_rule(), &r));
    }
    json(what, &r)?
        .get("ID")
        .cloned()
        .unwrap_or_default()
        .as_str()
        .map(String::from)
        .ok_or_else(|| {
            DiscoveryError::new(NAME, ErrorKind::Other, "session create: no ID in Consul's answer")
        })
}

async fn destroy(consul: &Consul, session: &str) {
    let _ = consul
        .call_bare(
            "destroying the lock session",
            Method::PUT,
            &format!("/v1/session/destroy/{session}"),
        )
        .await;
}

/// The error of an acquisition that stopped waiting (its session is destroyed: nothing held).
fn not_free(key: &str, wait: &LockWait) -> DiscoveryError {
    DiscoveryError::new(
        NAME,
        ErrorKind::Unavailable,
        format!(
            "the formation lock {key} was not free; stopped waiting after at most {:?}",
            wait.timeout()
        ),
    )
}

/// Takes the lock on `key` for `owner`, waiting until `wait` is over or `cap` has passed.
pub async fn acquire(
    inner: &Inner,
    owner: &NodeName,
    key: &str,
    wait: &LockWait,
    cap: Duration,
) -> Result<ConsulLock, DiscoveryError> {
    let deadline = Instant::now() + cap;
    let session = create_session(inner, owner).await?;
    // Renewed from the start: a long wait must not outlive the session.
    let mut keeper = keep_alive(inner.consul.clone(), session.clone(), inner.r.settings.lock_ttl);
    let outcome: Result<(), DiscoveryError> = async {
        loop {
            let what = format!("acquiring {key}");
            let r = inner
                .consul
                .call(
                    &what,
                    Method::PUT,
                    &format!("/v1/kv/{key}"),
                    &[("acquire", session.clone())],
                    Some(owner.to_string().into_bytes()),
                    None,
                )
                .await?;
            if !r.status.is_success() {
                return Err(failure(&what, &key_rule(inner), &r));
            }
            if truth(&r) {
                return Ok(());
            }
            let left = deadline
                .saturating_duration_since(Instant::now())
                .min(wait.remaining());
            if left.is_zero() {
                return Err(not_free(key, wait));
            }
            match read(inner, key, None).await? {
                // Held: wait for the key to change (a blocking read), not a poll; the release
                // ends it at once.
                (index, Some(_)) => {
                    let block = Block {
                        index,
                        wait: left.min(Duration::from_secs(15)),
                    };
                    match wait.bound(read(inner, key, Some(block))).await {
                        Some(read) => drop(read?),
                        None => return Err(not_free(key, wait)),
                    }
                }
                // Free but refused: a lock-delay after a dead holder. Sleep; never spin.
                (_, None) => {
                    let nap = inner
                        .r
                        .settings
                        .lock_delay
                        .max(Duration::from_millis(500))
                        .min(Duration::from_secs(5));
                    if wait.bound(tokio::time::sleep(nap.min(left))).await.is_none() {
                        return Err(not_free(key, wait));
                    }
                }
            }
        }
    }
    .await;
    if let Err(e) = outcome {
        keeper.stop();
        destroy(&inner.consul, &session).await;
        return Err(e);
    }
    Ok(ConsulLock {
        consul: inner.consul.clone(),
        key: key.to_string(),
        session,
        keeper,
    })
}

/// Renews the session every half TTL (every second while renewals fail), adopting the TTL
/// Consul returns; the hold is lost on a 404 (the session expired) or when no renewal succeeded
/// within the TTL.
fn keep_alive(consul: Consul, session: String, ttl: Duration) -> LeaseKeeper {
    let what = format!("the lock session {session}");
    let renew = move || {
        let (consul, session) = (consul.clone(), session.clone());
        async move {
            let path = format!("/v1/session/renew/{session}");
            match consul
                .call_bare("renewing the lock session", Method::PUT, &path)
                .await
            {
                Ok(r) if r.status.is_success() => {
                    // Consul may lengthen the TTL under load: adopt it.
                    let ttl = returned_ttl(&r.body).unwrap_or(ttl);
                    Renewal::Renewed {
                        next: ttl / 2,
                        grace: ttl,
                    }
                }
                Ok(r) if r.status.as_u16() == 404 => Renewal::Lost {
                    why: "the session expired".into(),
                },
                Ok(r) => Renewal::Failed {
                    why: format!("HTTP {}", r.status),
                    retry: Duration::from_secs(1),
                },
                Err(e) => Renewal::Failed {
                    why: e.to_string(),
                    retry: Duration::from_secs(1),
                },
            }
        }
    };
    LeaseKeeper::start(what, ttl / 2, ttl, renew)
}

/// The TTL in a session renew answer (`[{"TTL": "30s", …}]`).
fn returned_ttl(body: &str) -> Option<Duration> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let secs = v
        .pointer("/0/TTL")?
        .as_str()?
        .strip_suffix('s')?
        .parse::<u64>()
        .ok()?;
    Some(Duration::from_secs(secs.max(1)))
}

#[async_trait]
impl LockGuard for ConsulLock {
    async fn release(mut self: Box<Self>) -> Result<(), DiscoveryError> {
        self.keeper.stop();
        // Release first: destroying a session that holds the key would start a lock-delay.
        let what = format!("releasing {}", self.key);
        let r = self
            .consul
            .call(
                &what,
                Method::PUT,
                &format!("/v1/kv/{}", self.key),
                &[("release", self.session.clone())],
                None,
                None,
            )
            .await;
        destroy(&self.consul, &self.session).await;
        let r = r?;
        if !r.status.is_success() {
            return Err(failure(&what, "key_prefix { policy = \"write\" }", &r));
        }
        Ok(())
    }

    fn token(&self) -> &[u8] {
        self.session.as_bytes()
    }

    fn lost(&self) -> BoxFuture<'static, ()> {
        self.keeper.lost()
    }
}
