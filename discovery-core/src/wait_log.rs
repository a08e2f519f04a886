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
        let what = &steady(what);
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

/// `what` without the durations that grow every round ("changed 1.2 s ago" reads as
/// "changed _ s ago"), so that a wait that only ages is not a change.
fn steady(what: &str) -> String {
    let mut out = String::with_capacity(what.len());
    let mut rest = what;
    while let Some(start) = rest.find(|c: char| c.is_ascii_digit()) {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let digits = tail
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(tail.len());
        let (number, after) = tail.split_at(digits);
        if number.contains('.') && after.starts_with(" s") {
            out.push('_');
        } else {
            out.push_str(number);
        }
        rest = after;
    }
    out.push_str(rest);
    out
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

    #[tokio::test(start_paused = true)]
    async fn a_wait_that_only_ages_is_not_a_change_but_a_new_count_is() {
        let log = WaitLog::default();
        assert!(log.info("3 of 5 reachable; view changed 1.2 s ago (needs 5.0 s stable)"));
        assert!(!log.info("3 of 5 reachable; view changed 1.7 s ago (needs 5.0 s stable)"));
        assert!(log.info("4 of 5 reachable; view changed 0.1 s ago (needs 5.0 s stable)"));
    }
}
