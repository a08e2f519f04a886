//! The one retry mechanism: attempts at an interval, bounded by a count and/or a deadline.
//! Formation, the restart window and backends all use it instead of writing their own loops.

use std::future::Future;
use std::ops::ControlFlow;
use std::time::Duration;

use tokio::time::Instant;

/// How often and how long to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Pause between attempts.
    pub interval: Duration,
    /// At most this many attempts (`None`: no count limit).
    pub max_attempts: Option<u32>,
    /// Stop once this much time has passed since the first attempt (`None`: no deadline).
    pub deadline: Option<Duration>,
    /// When set, the pause doubles after each attempt up to this value.
    pub max_interval: Option<Duration>,
}

/// Why a retried operation did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryError<E, R> {
    /// The operation said stop.
    Stopped(E),
    /// The attempts or the deadline ran out; holds the last reason given.
    Exhausted {
        /// Attempts made.
        attempts: u32,
        /// The last reason.
        last: R,
    },
}

impl Retry {
    /// Attempts every `interval` with no limit.
    pub fn every(interval: Duration) -> Self {
        Retry {
            interval,
            max_attempts: None,
            deadline: None,
            max_interval: None,
        }
    }

    /// Limits the number of attempts.
    pub fn attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }

    /// Limits the total time.
    pub fn within(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Doubles the pause after each attempt, up to `max`.
    pub fn backoff(mut self, max: Duration) -> Self {
        self.max_interval = Some(max);
        self
    }

    /// Runs `op(attempt)` (attempts count from 1) until it breaks with a result, or the limits
    /// run out. `Continue(reason)` means "not yet"; `Break(Ok)` succeeds; `Break(Err)` stops.
    pub async fn run<T, E, R, F, Fut>(&self, mut op: F) -> Result<T, RetryError<E, R>>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = ControlFlow<Result<T, E>, R>>,
    {
        let start = Instant::now();
        let mut pause = self.interval;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let last = match op(attempt).await {
                ControlFlow::Break(Ok(v)) => return Ok(v),
                ControlFlow::Break(Err(e)) => return Err(RetryError::Stopped(e)),
                ControlFlow::Continue(reason) => reason,
            };
            let out_of_attempts = self.max_attempts.is_some_and(|m| attempt >= m);
            let out_of_time = self.deadline.is_some_and(|d| start.elapsed() + pause > d);
            if out_of_attempts || out_of_time {
                return Err(RetryError::Exhausted {
                    attempts: attempt,
                    last,
                });
            }
            tokio::time::sleep(pause).await;
            if let Some(max) = self.max_interval {
                pause = (pause * 2).min(max);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn stops_after_max_attempts_with_last_reason() {
        let r = Retry::every(Duration::from_millis(100)).attempts(3);
        let start = Instant::now();
        let out: Result<(), RetryError<(), u32>> = r.run(|n| async move { ControlFlow::Continue(n) }).await;
        assert_eq!(out, Err(RetryError::Exhausted { attempts: 3, last: 3 }));
        assert_eq!(start.elapsed(), Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_bounds_time_and_backoff_doubles() {
        let r = Retry::every(Duration::from_millis(100))
            .within(Duration::from_millis(1000))
            .backoff(Duration::from_millis(400));
        let start = Instant::now();
        let out: Result<(), RetryError<(), u32>> = r.run(|n| async move { ControlFlow::Continue(n) }).await;
        // pauses: 100, 200, 400, then 400 would pass the deadline at 700+400 > 1000.
        assert_eq!(out, Err(RetryError::Exhausted { attempts: 4, last: 4 }));
        assert_eq!(start.elapsed(), Duration::from_millis(700));
    }

    #[tokio::test(start_paused = true)]
    async fn success_and_stop_end_at_once() {
        let r = Retry::every(Duration::from_secs(1));
        let ok: Result<u32, RetryError<(), ()>> = r
            .run(|n| async move {
                if n == 2 {
                    ControlFlow::Break(Ok(n))
                } else {
                    ControlFlow::Continue(())
                }
            })
            .await;
        assert_eq!(ok, Ok(2));
        let stop: Result<(), RetryError<&str, ()>> =
            r.run(|_| async { ControlFlow::Break(Err("fatal")) }).await;
        assert_eq!(stop, Err(RetryError::Stopped("fatal")));
    }
}
