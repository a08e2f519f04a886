//! The formation lock: a `coordination.k8s.io/v1` Lease, with client-go's semantics and no
//! server-side apply (a fake, or a real server, needs only optimistic concurrency):
//!
//! - the holder identity is `<node>#<pod uid>#<boot id>`, so a restarted process never takes an
//!   old record naming its node for its own;
//! - a missing Lease is created (201 = held; 409 AlreadyExists = someone else was first);
//! - a Lease with no holder is taken by a replace carrying the resourceVersion read (409 = lost
//!   the race);
//! - a held Lease is taken only once its record (its resourceVersion) has not changed for the
//!   holder's `leaseDurationSeconds` of *local monotonic time since it was first seen*, so clock
//!   skew between nodes does not matter;
//! - renewed every third of the duration; a 409 or no successful renewal within two thirds of it
//!   marks the guard lost, which cancels the action in progress;
//! - released by clearing the holder (a 409 or 404 there is ignored: the Lease is not ours).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::{PostParams, WatchEvent, WatchParams};
use muster_discovery_core::lease_keeper::{LeaseKeeper, Renewal};
use muster_discovery_core::{DiscoveryError, ErrorKind, LockGuard, LockWait, NodeName};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::NAME;
use crate::errors::{Rule, bounded, map, raw, status_code};

const GET: Rule = Rule::new("coordination.k8s.io", "leases", "get");
const CREATE: Rule = Rule::new("coordination.k8s.io", "leases", "create");
const UPDATE: Rule = Rule::new("coordination.k8s.io", "leases", "update");

/// Where the Lease lives and how it is held.
#[derive(Clone)]
pub struct LeaseSpot {
    /// The namespaced Lease API.
    pub api: Api<Lease>,
    /// `namespace/name`, for messages.
    pub label: String,
    /// The Lease's name.
    pub name: String,
    /// How long a silent holder keeps it.
    pub duration: Duration,
    /// The limit on one API call.
    pub limit: Duration,
}

/// This process's holder identity for `owner`: the same for every acquisition of the process,
/// so a Lease it took in an acquisition that then gave up (a reply lost) is its own next time.
pub fn identity(owner: &NodeName) -> String {
    static BOOT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let uid = std::env::var("POD_UID").ok().filter(|v| !v.is_empty());
    // Any random id differing between processes will do: the core's (OS randomness, with a
    // clock fallback).
    let boot = BOOT.get_or_init(|| muster_discovery_core::ClusterId::random().0);
    match uid {
        Some(uid) => format!("{owner}#{uid}#{boot}"),
        None => format!("{owner}#{boot}"),
    }
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

fn holder_of(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
}

fn version_of(lease: &Lease) -> Option<&str> {
    lease.metadata.resource_version.as_deref()
}

/// A held Lease.
pub struct LeaseGuard {
    spot: LeaseSpot,
    identity: String,
    latest: Arc<Mutex<Lease>>,
    keeper: LeaseKeeper,
}

/// What one look at the Lease decided.
enum Step {
    Held(Box<Lease>),
    Wait(String),
}

/// Takes the Lease for `identity`, waiting until `wait` is over. Between two reads it watches
/// the Lease, so a release (or any change) is seen when it happens; the pause bounds the watch,
/// because a silent holder's expiry is a change nobody writes. Giving up happens only between
/// two reads: a read that took the Lease always completes, so nothing is held afterwards.
pub async fn acquire(
    spot: &LeaseSpot,
    identity: &str,
    wait: &LockWait,
) -> Result<LeaseGuard, DiscoveryError> {
    let pause = (spot.duration / 5).clamp(Duration::from_millis(100), Duration::from_secs(2));
    // The record last seen and when it was first seen (local monotonic time).
    let seen: Mutex<Option<(String, Instant)>> = Mutex::new(None);
    let lease = loop {
        let why = match step(spot, identity, &seen).await {
            Ok(Step::Held(lease)) => break *lease,
            Ok(Step::Wait(why)) => why,
            Err(e) if e.is_temporary() => e.to_string(),
            Err(e) => return Err(e),
        };
        let version = seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(v, _)| v.clone());
        if wait.bound(changed_within(spot, version, pause)).await.is_none() {
            return Err(DiscoveryError::new(
                NAME,
                ErrorKind::Unavailable,
                format!(
                    "the formation Lease {} was not free; stopped waiting after at most {:?}: {why}",
                    spot.label,
                    wait.timeout()
                ),
            ));
        }
    };
    info!("holding the formation Lease {} as {identity}", spot.label);
    let latest = Arc::new(Mutex::new(lease));
    let keeper = keep_alive(spot.clone(), latest.clone());
    Ok(LeaseGuard {
        spot: spot.clone(),
        identity: identity.to_string(),
        latest,
        keeper,
    })
}

/// Returns when the Lease changes after `version` (a watch on it by name), or after `pause`.
/// Without a watch (not allowed by the Role, or failed) it sleeps out the pause.
async fn changed_within(spot: &LeaseSpot, version: Option<String>, pause: Duration) {
    let begun = Instant::now();
    let watched = async {
        let params = WatchParams::default()
            .fields(&format!("metadata.name={}", spot.name))
            .disable_bookmarks()
            .timeout(u32::try_from(pause.as_secs().max(1)).unwrap_or(u32::MAX));
        let version = version.unwrap_or_else(|| "0".into());
        let stream = spot.api.watch(&params, &version).await.ok()?;
        futures::pin_mut!(stream);
        // Only a change to the Lease counts; an error event (an expired version, 410) does not,
        // or a waiter would read and watch again every few milliseconds.
        match stream.next().await? {
            Ok(WatchEvent::Added(_) | WatchEvent::Modified(_) | WatchEvent::Deleted(_)) => Some(()),
            _ => None,
        }
    };
    let changed = tokio::time::timeout(pause, watched)
        .await
        .ok()
        .flatten()
        .is_some();
    // A floor between reads even when changes come fast.
    let rest = if changed {
        WATCH_FLOOR.saturating_sub(begun.elapsed())
    } else {
        pause.saturating_sub(begun.elapsed())
    };
    tokio::time::sleep(rest).await;
}

/// The least time between two reads of the Lease when a watch reports changes.
const WATCH_FLOOR: Duration = Duration::from_millis(10);

/// Creates the Lease, held by `identity`; a wait when another node created it first.
async fn create(spot: &LeaseSpot, identity: &str) -> Result<Step, DiscoveryError> {
    let fresh = Lease {
        metadata: ObjectMeta {
            name: Some(spot.name.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(identity.to_string()),
            lease_duration_seconds: Some(seconds(spot.duration)),
            acquire_time: Some(now()),
            renew_time: Some(now()),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }),
    };
    let what = format!("creating the formation Lease {}", spot.label);
    match raw(&what, spot.limit, spot.api.create(&PostParams::default(), &fresh)).await? {
        Ok(lease) => Ok(Step::Held(Box::new(lease))),
        Err(e) if status_code(&e) == Some(409) => {
            Ok(Step::Wait("another node created the Lease first".into()))
        }
        Err(e) => Err(map(&what, CREATE, e)),
    }
}

/// True once the Lease has stayed at `version` for `held_for` as this process saw it (a
/// holder's clock is never trusted); a new version restarts the count.
fn unchanged_for(seen: &Mutex<Option<(String, Instant)>>, version: &str, held_for: Duration) -> bool {
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    match &*seen {
        Some((v, since)) if v == version => since.elapsed() >= held_for,
        _ => {
            *seen = Some((version.to_string(), Instant::now()));
            false
        }
    }
}

async fn step(
    spot: &LeaseSpot,
    identity: &str,
    seen: &Mutex<Option<(String, Instant)>>,
) -> Result<Step, DiscoveryError> {
    let what = format!("reading the formation Lease {}", spot.label);
    let current = bounded(&what, GET, spot.limit, spot.api.get_opt(&spot.name)).await?;
    let Some(mut lease) = current else {
        return create(spot, identity).await;
    };
    let version = version_of(&lease).unwrap_or_default().to_string();
    let holder = holder_of(&lease).map(String::from);
    let held_for = lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_duration_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .map(Duration::from_secs)
        .unwrap_or(spot.duration);
    let expired = unchanged_for(seen, &version, held_for);
    if let Some(h) = &holder
        && h != identity
        && !expired
    {
        return Ok(Step::Wait(format!("held by {h}")));
    }
    // Free, expired, or (after a lost reply) already ours: take it with the version just read.
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    let transitions = spec.lease_transitions.unwrap_or(0);
    if holder.as_deref() != Some(identity) {
        spec.lease_transitions = Some(transitions.saturating_add(1));
        spec.acquire_time = Some(now());
    }
    spec.holder_identity = Some(identity.to_string());
    spec.lease_duration_seconds = Some(seconds(spot.duration));
    spec.renew_time = Some(now());
    let what = format!("taking the formation Lease {}", spot.label);
    match raw(
        &what,
        spot.limit,
        spot.api.replace(&spot.name, &PostParams::default(), &lease),
    )
    .await?
    {
        Ok(lease) => {
            if let Some(previous) = holder.filter(|h| h != identity) {
                warn!(
                    "took the formation Lease {} from {previous}, silent for {held_for:?}",
                    spot.label
                );
            }
            Ok(Step::Held(Box::new(lease)))
        }
        Err(e) if status_code(&e) == Some(409) => {
            Ok(Step::Wait("another node changed the Lease first".into()))
        }
        Err(e) => Err(map(&what, UPDATE, e)),
    }
}

/// Renews every third of the duration; the hold is lost on a 409 or 404 (someone else changed
/// or removed the Lease) or when no renewal succeeded within two thirds of it.
fn keep_alive(spot: LeaseSpot, latest: Arc<Mutex<Lease>>) -> LeaseKeeper {
    let period = spot.duration / 3;
    let grace = spot.duration * 2 / 3;
    let what = format!("the formation Lease {}", spot.label);
    let renew = move || {
        let (spot, latest) = (spot.clone(), latest.clone());
        async move {
            let mut lease = latest.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(spec) = lease.spec.as_mut() {
                spec.renew_time = Some(now());
            }
            let what = format!("renewing the formation Lease {}", spot.label);
            let params = PostParams::default();
            let replace = spot.api.replace(&spot.name, &params, &lease);
            match raw(&what, spot.limit, replace).await {
                Ok(Ok(renewed)) => {
                    *latest.lock().unwrap_or_else(|e| e.into_inner()) = renewed;
                    Renewal::Renewed { next: period, grace }
                }
                Ok(Err(e)) if matches!(status_code(&e), Some(409 | 404)) => Renewal::Lost {
                    why: "someone else changed it".into(),
                },
                Ok(Err(e)) => Renewal::Failed {
                    why: e.to_string(),
                    retry: period,
                },
                Err(e) => Renewal::Failed {
                    why: e.to_string(),
                    retry: period,
                },
            }
        }
    };
    LeaseKeeper::start(what, period, grace, renew)
}

#[async_trait]
impl LockGuard for LeaseGuard {
    async fn release(mut self: Box<Self>) -> Result<(), DiscoveryError> {
        self.keeper.stop();
        let mut lease = self.latest.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
        }
        let what = format!("releasing the formation Lease {}", self.spot.label);
        match raw(
            &what,
            self.spot.limit,
            self.spot
                .api
                .replace(&self.spot.name, &PostParams::default(), &lease),
        )
        .await?
        {
            Ok(_) => Ok(()),
            Err(e) if matches!(status_code(&e), Some(404 | 409)) => Ok(()),
            Err(e) => Err(map(&what, UPDATE, e)),
        }
    }

    fn token(&self) -> &[u8] {
        self.identity.as_bytes()
    }

    fn lost(&self) -> BoxFuture<'static, ()> {
        self.keeper.lost()
    }
}

/// Whether the Lease names `identity` as its holder right now (read from the server). Only the
/// holder is compared: a Lease past its duration that nobody has taken over still counts.
pub async fn held_by(spot: &LeaseSpot, identity: &str) -> Result<bool, DiscoveryError> {
    let what = format!("checking the formation Lease {}", spot.label);
    let lease = bounded(&what, GET, spot.limit, spot.api.get_opt(&spot.name)).await?;
    Ok(lease.as_ref().and_then(holder_of) == Some(identity))
}
