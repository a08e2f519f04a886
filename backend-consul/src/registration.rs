//! The registration: a service with a TTL check that is passing from the start (a TTL check
//! otherwise starts critical, so nodes started together could not see each other), one
//! immediate pass, then a heartbeat every third of the TTL with jitter. A heartbeat answered 404
//! (Consul 1.11+) or with the older 500 text re-registers at once, and every few heartbeats the
//! agent is asked whether it still has the service (an agent restart loses it), so the
//! registration heals itself. Unregister deregisters (a 404 there is success).

use std::sync::{Arc, Mutex};

use muster_discovery_core::retry::{Jitter, Retry};
use muster_discovery_core::{DiscoveryError, RegistrationStatus};
use reqwest::Method;
use serde_json::json;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::client::{failure, go_duration};
use crate::{Inner, META_NODE};

/// Registration state, for the status page and metrics.
#[derive(Default)]
pub struct State {
    status: Mutex<RegistrationStatus>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl State {
    /// The current status.
    pub fn status(&self) -> RegistrationStatus {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stops the heartbeat.
    pub fn abort(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
    }

    fn set(&self, f: impl FnOnce(&mut RegistrationStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

fn check_id(inner: &Inner) -> String {
    format!("service:{}", inner.r.service_id)
}

fn rule(inner: &Inner) -> String {
    format!(
        "service \"{}\" {{ policy = \"write\" }}",
        inner.r.settings.service_name
    )
}

/// `PUT /v1/agent/service/register` with a passing TTL check.
pub async fn put_registration(inner: &Inner) -> Result<(), DiscoveryError> {
    let s = &inner.r.settings;
    let mut tags = vec![s.cluster_name.clone()];
    tags.extend(s.service_tags.iter().cloned());
    let mut meta = s.service_meta.clone();
    meta.insert(META_NODE.into(), inner.local.to_string());
    let body = json!({
        "ID": inner.r.service_id,
        "Name": s.service_name,
        "Tags": tags,
        "Address": inner.r.service_address,
        "Port": inner.r.service_port,
        "Meta": meta,
        "Check": {
            "CheckID": check_id(inner),
            "Name": format!("muster node {}", inner.local),
            "TTL": go_duration(s.check_ttl),
            "Status": "passing",
            "DeregisterCriticalServiceAfter": go_duration(s.deregister_critical_after),
        }
    });
    let what = format!("registering {} in Consul", inner.r.service_id);
    let r = inner
        .consul
        .call(
            &what,
            Method::PUT,
            "/v1/agent/service/register",
            &[],
            Some(body.to_string().into_bytes()),
            None,
        )
        .await?;
    if !r.status.is_success() {
        return Err(failure(&what, &rule(inner), &r));
    }
    Ok(())
}

/// One heartbeat: `Ok(true)` passed, `Ok(false)` the agent does not know the check.
async fn pass(inner: &Inner) -> Result<bool, DiscoveryError> {
    let what = format!("heartbeat of {}", inner.r.service_id);
    let r = inner
        .consul
        .call_bare(
            &what,
            Method::PUT,
            &format!("/v1/agent/check/pass/{}", check_id(inner)),
        )
        .await?;
    let unknown = |b: &str| b.contains("Unknown check") || b.contains("does not have associated TTL");
    match r.status.as_u16() {
        200 => Ok(true),
        404 => Ok(false),
        500 if unknown(&r.body) => Ok(false),
        _ => Err(failure(&what, &rule(inner), &r)),
    }
}

/// Whether the agent still has the service.
async fn present(inner: &Inner) -> Result<bool, DiscoveryError> {
    let what = format!("looking up {} on the agent", inner.r.service_id);
    let r = inner
        .consul
        .call_bare(
            &what,
            Method::GET,
            &format!("/v1/agent/service/{}", inner.r.service_id),
        )
        .await?;
    match r.status.as_u16() {
        200 => Ok(true),
        404 => Ok(false),
        _ => Err(failure(&what, &rule(inner), &r)),
    }
}

async fn heal(inner: &Inner, why: &str) {
    warn!(node = %inner.local, "{why}: registering {} again", inner.r.service_id);
    match put_registration(inner).await {
        Ok(()) => inner.reg.set(|s| {
            s.registered = true;
            s.re_registrations += 1;
            s.detail = format!("registered as {} (re-registered: {why})", inner.r.service_id);
        }),
        Err(e) => inner.reg.set(|s| {
            s.registered = false;
            s.detail = format!("not registered: {e}");
        }),
    }
}

async fn heartbeat(inner: Arc<Inner>) {
    let period = inner.r.settings.check_ttl / 3;
    let pause = Retry::every(period).jitter(Jitter::Random);
    let mut beat = 0u64;
    let _ = pause
        .run(|_| {
            let inner = &inner;
            beat += 1;
            let reconcile = beat.is_multiple_of(5);
            async move {
                match pass(inner).await {
                    Ok(true) => inner.reg.set(|s| {
                        s.registered = true;
                        s.renewals += 1;
                    }),
                    Ok(false) => heal(inner, "the agent no longer knows the check").await,
                    Err(e) => {
                        warn!(node = %inner.local, "Consul heartbeat failed (retrying): {e}");
                        inner.reg.set(|s| s.detail = format!("heartbeat failing: {e}"));
                    }
                }
                if reconcile && let Ok(false) = present(inner).await {
                    heal(inner, "the agent lost the service (restarted?)").await;
                }
                std::ops::ControlFlow::<Result<(), ()>, ()>::Continue(())
            }
        })
        .await;
}

/// Registers, passes once, and starts the heartbeat.
pub async fn start(inner: Arc<Inner>) -> Result<(), DiscoveryError> {
    put_registration(&inner).await?;
    let _ = pass(&inner).await;
    inner.reg.set(|s| {
        s.registered = true;
        s.detail = format!(
            "registered as {} (check {})",
            inner.r.service_id,
            check_id(&inner)
        );
    });
    info!(node = %inner.local, "registered {} in Consul", inner.r.service_id);
    let task = tokio::spawn(heartbeat(inner.clone()));
    if let Some(old) = inner
        .reg
        .task
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .replace(task)
    {
        old.abort();
    }
    Ok(())
}

/// Stops the heartbeat and deregisters.
pub async fn stop(inner: &Inner) -> Result<(), DiscoveryError> {
    inner.reg.abort();
    let what = format!("deregistering {}", inner.r.service_id);
    let r = inner
        .consul
        .call_bare(
            &what,
            Method::PUT,
            &format!("/v1/agent/service/deregister/{}", inner.r.service_id),
        )
        .await?;
    inner.reg.set(|s| {
        s.registered = false;
        s.detail = "deregistered".into();
    });
    match r.status.as_u16() {
        200 | 404 => Ok(()),
        _ => Err(failure(&what, &rule(inner), &r)),
    }
}
