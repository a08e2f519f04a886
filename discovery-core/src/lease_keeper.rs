//! Keeping a lease-backed formation lock alive: one loop for every backend. The backend gives a
//! renewal (an etcd keep-alive, a Consul session renew, a Kubernetes Lease update) and what each
//! answer means; the keeper renews on schedule and turns a lost hold into the guard's `lost()`,
//! which cancels the action under the lock (docs/formation.md, "Rule 3 — who may form").

use std::future::Future;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::warn;

/// What one renewal found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// Renewed: the next renewal after `next`, and the hold is lost if none succeeds for
    /// `grace` (a backend may change both, as Consul does when it lengthens a session's TTL).
    Renewed {
        /// Until the next renewal.
        next: Duration,
        /// How long the hold survives without a successful renewal.
        grace: Duration,
    },
    /// Not renewed this time (an error, no answer): tried again after `retry` while the grace
    /// since the last success lasts.
    Failed {
        /// What went wrong, for the log.
        why: String,
        /// Until the next try.
        retry: Duration,
    },
    /// The hold is gone for good (the lease expired, or someone else owns the lock).
    Lost {
        /// Why, for the log.
        why: String,
    },
}

/// A lock's renewals, running until [`LeaseKeeper::stop`] or until the hold is lost.
#[derive(Debug)]
pub struct LeaseKeeper {
    stop: Option<oneshot::Sender<()>>,
    lost: watch::Receiver<bool>,
}

impl LeaseKeeper {
    /// Starts renewing `what` (named in the log): the first renewal after `first`, the hold
    /// lost when none succeeded for `grace`, or at once on [`Renewal::Lost`].
    pub fn start<F, Fut>(what: String, first: Duration, grace: Duration, renew: F) -> LeaseKeeper
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Renewal> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        let (lost_tx, lost) = watch::channel(false);
        tokio::spawn(keep(what, first, grace, renew, stopped, lost_tx));
        LeaseKeeper {
            stop: Some(stop),
            lost,
        }
    }

    /// Stops the renewals (the lock is being released); `lost()` then never resolves.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Resolves when the hold is lost; never after a [`LeaseKeeper::stop`].
    pub fn lost(&self) -> BoxFuture<'static, ()> {
        let mut rx = self.lost.clone();
        Box::pin(async move {
            // A sender gone without a loss (stopped) never resolves.
            if rx.wait_for(|lost| *lost).await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn keep<F, Fut>(
    what: String,
    first: Duration,
    mut grace: Duration,
    mut renew: F,
    mut stopped: oneshot::Receiver<()>,
    lost: watch::Sender<bool>,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Renewal>,
{
    let mut last_ok = Instant::now();
    let mut pause = first;
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tokio::time::sleep(pause) => {}
        }
        // A renewal answered after the grace is no renewal in time: bound it by what is left.
        let left = grace
            .saturating_sub(last_ok.elapsed())
            .max(Duration::from_millis(50));
        let outcome = tokio::select! {
            _ = &mut stopped => return,
            r = tokio::time::timeout(left, renew()) => r,
        };
        match outcome {
            Ok(Renewal::Renewed { next, grace: g }) => {
                last_ok = Instant::now();
                pause = next;
                grace = g;
                continue;
            }
            Ok(Renewal::Lost { why }) => {
                warn!("{what}: {why}; the formation lock is lost");
                let _ = lost.send(true);
                return;
            }
            Ok(Renewal::Failed { why, retry }) if last_ok.elapsed() < grace => {
                warn!("{what}: renewal failed ({why}); retrying");
                // One more try at the end of the grace at the latest.
                pause = retry.min(grace.saturating_sub(last_ok.elapsed()));
            }
            Ok(Renewal::Failed { why, .. }) => {
                warn!("{what}: not renewed within {grace:?} ({why}); the formation lock is lost");
                let _ = lost.send(true);
                return;
            }
            Err(_) => {
                warn!("{what}: no renewal answered within {grace:?}; the formation lock is lost");
                let _ = lost.send(true);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn every(s: u64) -> Renewal {
        Renewal::Renewed {
            next: Duration::from_secs(s),
            grace: Duration::from_secs(3 * s),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn renewals_keep_the_hold_and_a_stop_ends_them_without_a_loss() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let mut keeper = LeaseKeeper::start(
            "test".into(),
            Duration::from_secs(1),
            Duration::from_secs(3),
            move || {
                c.fetch_add(1, Ordering::Relaxed);
                async { every(1) }
            },
        );
        let lost = keeper.lost();
        tokio::time::sleep(Duration::from_millis(10_500)).await;
        assert_eq!(calls.load(Ordering::Relaxed), 10);
        keeper.stop();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(calls.load(Ordering::Relaxed), 10, "no renewal after stop");
        assert!(
            tokio::time::timeout(Duration::from_secs(60), lost).await.is_err(),
            "a stopped keeper never reports a loss"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_retried_within_the_grace_then_the_hold_is_lost() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let keeper = LeaseKeeper::start(
            "test".into(),
            Duration::from_secs(1),
            Duration::from_secs(3),
            move || {
                c.fetch_add(1, Ordering::Relaxed);
                async {
                    Renewal::Failed {
                        why: "no answer".into(),
                        retry: Duration::from_millis(500),
                    }
                }
            },
        );
        let begun = Instant::now();
        keeper.lost().await;
        let took = begun.elapsed();
        assert!(
            took >= Duration::from_secs(3) && took < Duration::from_secs(4),
            "{took:?}"
        );
        assert!(calls.load(Ordering::Relaxed) >= 4, "retried meanwhile");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_hold_is_reported_at_once_and_a_hung_renewal_within_the_grace() {
        let lost_now = LeaseKeeper::start(
            "test".into(),
            Duration::from_secs(1),
            Duration::from_secs(30),
            || async {
                Renewal::Lost {
                    why: "owned by another".into(),
                }
            },
        );
        let begun = Instant::now();
        lost_now.lost().await;
        assert_eq!(begun.elapsed(), Duration::from_secs(1));

        let hung = LeaseKeeper::start(
            "test".into(),
            Duration::from_secs(1),
            Duration::from_secs(3),
            std::future::pending::<Renewal>,
        );
        let begun = Instant::now();
        hung.lost().await;
        assert_eq!(
            begun.elapsed(),
            Duration::from_secs(3),
            "the first renewal, at 1 s, is bounded by the grace"
        );
    }
}
