//! Warnings that an unauthenticated peer can cause, limited so that a flood of them cannot flood
//! the log: the first in each window is logged, the rest are counted and reported with the next
//! one logged after the window ("… and 4,999 more in the last 10 s").

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How long a window lasts.
pub const WINDOW: Duration = Duration::from_secs(10);

/// One kind of warning's window.
#[derive(Debug, Default)]
pub struct LogLimit {
    state: Mutex<Option<(Instant, u64)>>,
}

impl LogLimit {
    /// A limit with nothing logged yet.
    pub const fn new() -> Self {
        LogLimit {
            state: Mutex::new(None),
        }
    }

    /// Whether to log this occurrence now, and if so how many were suppressed before it (in the
    /// window that just ended). `None`: count it and stay silent.
    pub fn admit(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match state.as_mut() {
            Some((since, suppressed)) if now.duration_since(*since) < WINDOW => {
                *suppressed += 1;
                None
            }
            _ => {
                let before = state.map_or(0, |(_, n)| n);
                *state = Some((now, 0));
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
    async fn a_flood_logs_once_per_window_with_the_count() {
        let limit = LogLimit::default();
        assert_eq!(limit.admit(), Some(0));
        for _ in 0..4_999 {
            assert_eq!(limit.admit(), None);
        }
        tokio::time::advance(WINDOW).await;
        let n = limit.admit().expect("a new window logs");
        assert_eq!(more(n), " (and 4999 more in the last 10 s)");
        assert_eq!(limit.admit(), None);
    }
}
