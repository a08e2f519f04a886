//! What a waiting node logs: one line when what it waits for changes, otherwise a summary at most
//! every [`SUMMARY_EVERY`]; every round still goes to `debug`. A node that waits minutes writes a
//! few lines, each saying how long it waited and how long is left.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How often an unchanged wait is summarized at `info`.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// The last wait logged at `info`: what it was, and when.
#[derive(Debug, Default)]
pub struct WaitLog {
    last: Mutex<Option<(String, Instant)>>,
}

impl WaitLog {
    /// Whether this round's wait, `what` (without counters that change every round), goes to
    /// `info` (`true`) or only to `debug`.
    pub fn info(&self, what: &str) -> bool {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let due = match last.as_ref() {
            Some((said, at)) => said != what || now.duration_since(*at) >= SUMMARY_EVERY,
            None => true,
        };
        if due {
            *last = Some((what.to_string(), now));
        }
        due
    }

    /// Forgets the last wait: the next one is logged (the node stopped waiting).
    pub fn reset(&self) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_change_is_logged_at_once_and_the_same_wait_every_ten_seconds() {
        let log = WaitLog::default();
        assert!(log.info("waiting for a"));
        for _ in 0..19 {
            tokio::time::advance(Duration::from_millis(500)).await;
            assert!(!log.info("waiting for a"), "an unchanged wait within 10 s");
        }
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(log.info("waiting for a"), "the 10 s summary");
        assert!(log.info("waiting for b"), "a change");
        log.reset();
        assert!(log.info("waiting for b"), "after a reset");
    }
}
