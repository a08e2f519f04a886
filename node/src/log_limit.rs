//! Warnings that an unauthenticated peer can cause, limited so that a flood of them cannot flood
//! the log: in each window, each distinct reason is logged once and at most a few reasons are
//! logged; the rest are counted and reported with the next one logged after the window ("… and
//! 4,999 more in the last 10 s"). Distinct reasons keep a misconfigured peer's warning visible
//! next to a flood of another kind.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How long a window lasts.
pub const WINDOW: Duration = Duration::from_secs(10);

/// How many distinct reasons a window logs before it only counts.
pub const BURST: usize = 5;

/// One kind of warning's window.
#[derive(Debug, Default)]
pub struct LogLimit {
    state: Mutex<Option<Window>>,
}

#[derive(Debug)]
struct Window {
    since: Instant,
    /// Hashes of the reasons logged in this window.
    logged: Vec<u64>,
    suppressed: u64,
}

impl LogLimit {
    /// A limit with nothing logged yet.
    pub const fn new() -> Self {
        LogLimit {
            state: Mutex::new(None),
        }
    }

    /// Whether to log this occurrence of `reason` now, and if so how many were suppressed before
    /// it (in the window that just ended). `None`: count it and stay silent.
    pub fn admit(&self, reason: &str) -> Option<u64> {
        let mut hasher = DefaultHasher::new();
        reason.hash(&mut hasher);
        let key = hasher.finish();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match state.as_mut() {
            Some(w) if now.duration_since(w.since) < WINDOW => {
                if w.logged.len() < BURST && !w.logged.contains(&key) {
                    w.logged.push(key);
                    Some(0)
                } else {
                    w.suppressed += 1;
                    None
                }
            }
            _ => {
                let before = state.as_ref().map_or(0, |w| w.suppressed);
                *state = Some(Window {
                    since: now,
                    logged: vec![key],
                    suppressed: 0,
                });
                Some(before)
            }
        }
    }
}

/// The suffix a logged warning carries for the ones suppressed before it.
pub fn more(suppressed: u64) -> String {
    match suppressed {
        0 => String::new(),
        n => format!(" (and {n} more in the last {} s)", WINDOW.as_secs()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_flood_logs_each_reason_once_per_window_with_the_count() {
        let limit = LogLimit::default();
        assert_eq!(limit.admit("cookie"), Some(0));
        for _ in 1..5_000 {
            assert_eq!(limit.admit("cookie"), None);
        }
        assert_eq!(limit.admit("misnamed"), Some(0), "another reason is still logged");
        tokio::time::advance(WINDOW).await;
        let n = limit.admit("cookie").expect("a new window logs");
        assert_eq!(more(n), " (and 4999 more in the last 10 s)");
        assert_eq!(limit.admit("cookie"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn distinct_reasons_are_capped_per_window() {
        let limit = LogLimit::default();
        let logged = (0..100)
            .filter(|i| limit.admit(&format!("node{i}")).is_some())
            .count();
        assert_eq!(logged, BURST);
    }
}
