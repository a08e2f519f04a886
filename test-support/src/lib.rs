//! What the backends' own tests and the integration tests share: the real servers they run, the
//! fakes of APIs no server can be had for here, test hosts, and polling. A missing server fails
//! the test that needs it with the command that fetches or installs it.

#[cfg(feature = "aws")]
pub mod aws;
pub mod certs;
pub mod child;
#[cfg(feature = "consul")]
pub mod consul;
#[cfg(feature = "consul")]
pub mod consul_agent;
#[cfg(feature = "dns")]
pub mod dns;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod hosts;
#[cfg(feature = "k8s")]
pub mod k8s;
pub mod servers;

/// Polls `cond` every 50 ms until it holds or `limit` passes (the core retry mechanism);
/// returns how long it took.
pub async fn eventually<F: AsyncFnMut() -> bool>(
    limit: std::time::Duration,
    cond: F,
) -> Option<std::time::Duration> {
    use std::ops::ControlFlow;
    let start = std::time::Instant::now();
    // The retry closure is FnMut; the condition lives behind an (uncontended) async mutex.
    let cond = tokio::sync::Mutex::new(cond);
    let polled = muster_discovery_core::retry::Retry::every(std::time::Duration::from_millis(50))
        .within(limit)
        .run(|_| {
            let cond = &cond;
            async move {
                let ready = (*cond.lock().await)().await;
                if ready {
                    ControlFlow::Break(Ok::<_, ()>(()))
                } else {
                    ControlFlow::Continue(())
                }
            }
        })
        .await;
    polled.ok().map(|()| start.elapsed())
}
