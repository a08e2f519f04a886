//! How long a [`FormationLock`](crate::FormationLock) acquisition waits: until a deadline, and,
//! when the engine asks for it, until a trigger fires. The engine fires it once the backend
//! records a cluster: a node queued for the lock behind a former then joins that cluster without
//! the lock instead of waiting its turn (docs/formation.md, "Waiting for the lock").
//!
//! Backends wait on [`LockWait::over`] wherever they would have slept or blocked, and an
//! acquisition that gives up must hold nothing afterwards.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::trigger::Trigger;

/// The end of one lock acquisition's wait (cloneable; clones share whether it was woken).
#[derive(Debug, Clone)]
pub struct LockWait {
    timeout: Duration,
    deadline: Instant,
    wake: Option<Trigger>,
    woken: Arc<AtomicBool>,
}

impl LockWait {
    /// A wait of at most `timeout` from now.
    pub fn within(timeout: Duration) -> Self {
        LockWait {
            timeout,
            deadline: Instant::now() + timeout,
            wake: None,
            woken: Arc::default(),
        }
    }

    /// Also ends the wait at the next fire of `trigger` (the fire is taken: the caller decides
    /// again after the acquisition gives up, see [`LockWait::woken`]).
    pub fn or_until(mut self, trigger: Trigger) -> Self {
        self.wake = Some(trigger);
        self
    }

    /// The whole wait allowed, for messages.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// What is left of the wait now.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Resolves when the wait is over: at the deadline, or at a fire of the trigger.
    pub async fn over(&self) {
        let deadline = tokio::time::sleep_until(self.deadline);
        match &self.wake {
            Some(trigger) => tokio::select! {
                _ = deadline => {}
                _ = trigger.fired() => self.woken.store(true, Ordering::Relaxed),
            },
            None => deadline.await,
        }
    }

    /// Whether the wait ended because the engine was woken (not at its deadline).
    pub fn woken(&self) -> bool {
        self.woken.load(Ordering::Relaxed)
    }

    /// Runs `acquire` until it finishes or the wait is over (`None`). Only for acquisitions that
    /// hold nothing when dropped; the others race [`LockWait::over`] themselves and clean up.
    pub async fn bound<T>(&self, acquire: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            biased;
            r = acquire => Some(r),
            _ = self.over() => None,
        }
    }
}

impl From<Duration> for LockWait {
    fn from(timeout: Duration) -> Self {
        LockWait::within(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_at_its_deadline_or_at_a_fire_and_says_which() {
        let plain = LockWait::within(Duration::from_millis(300));
        let begun = Instant::now();
        plain.over().await;
        assert_eq!(begun.elapsed(), Duration::from_millis(300));
        assert!(!plain.woken());

        let trigger = Trigger::new();
        let woken = LockWait::within(Duration::from_secs(30)).or_until(trigger.clone());
        let fire = async {
            tokio::time::sleep(Duration::from_millis(40)).await;
            trigger.fire();
        };
        let begun = Instant::now();
        tokio::join!(woken.over(), fire);
        assert_eq!(begun.elapsed(), Duration::from_millis(40));
        assert!(woken.woken());
        assert!(woken.clone().woken(), "clones share the flag");
    }

    #[tokio::test(start_paused = true)]
    async fn bound_returns_what_finished_first() {
        let wait = LockWait::within(Duration::from_millis(100));
        assert_eq!(wait.bound(async { 7 }).await, Some(7));
        let slow = tokio::time::sleep(Duration::from_secs(1));
        assert_eq!(wait.bound(slow).await, None);
    }
}
