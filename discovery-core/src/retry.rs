//! The one retry mechanism: attempts at an interval, bounded by a count and/or a deadline, with
//! optional doubling and jitter. The schedule and the retry loop are `backon`'s; this type fixes
//! the policy (how jitter spreads pauses, how a deadline counts) so that formation, the restart
//! window, probes and backends all retry the same way instead of writing their own loops.

use std::future::Future;
use std::ops::ControlFlow;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder, Retryable};
use tokio::time::Instant;

/// How often and how long to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Pause between attempts (with jitter: the longest pause).
    pub interval: Duration,
    /// At most this many attempts (`None`: no count limit).
    pub max_attempts: Option<u32>,
    /// Stop once this much time has passed since the first attempt (`None`: no deadline).
    pub deadline: Option<Duration>,
    /// When set, the pause doubles after each attempt up to this value.
    pub max_interval: Option<Duration>,
    /// Spreads each pause over its upper half, so that nodes started together do not retry in
    /// lock step.
    pub jitter: Jitter,
}

/// Where the jitter's randomness comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Exact pauses.
    Off,
    /// Fresh randomness per run.
    Random,
    /// A reproducible sequence (the engine seeds it from the node name, so that simulations
    /// replay while differently named nodes still spread apart).
    Seeded(u64),
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

/// One attempt's failure, as `backon` sees it: only `Again` is retried.
enum Failed<E, R> {
    Stop(E),
    Again(R),
}

/// backon's schedule, cut off when the next pause would pass the deadline (counted from the
/// first attempt, so time spent in attempts counts too).
struct Schedule {
    pauses: ExponentialBackoff,
    start: Instant,
    deadline: Option<Duration>,
}

impl Iterator for Schedule {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        // backon computes in f32; whole milliseconds keep pauses exact (timers tick in ms).
        let pause = self.pauses.next()?;
        let pause = match pause.as_micros() {
            us if us >= 1000 => Duration::from_millis(((us + 500) / 1000) as u64),
            _ => pause,
        };
        match self.deadline {
            Some(d) if self.start.elapsed() + pause > d => None,
            _ => Some(pause),
        }
    }
}

impl Retry {
    /// Attempts every `interval` with no limit and no jitter.
    pub fn every(interval: Duration) -> Self {
        Retry {
            interval,
            max_attempts: None,
            deadline: None,
            max_interval: None,
            jitter: Jitter::Off,
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

    /// Each pause is drawn from `[pause / 2, pause]`: never longer than configured, never in
    /// lock step with another node's.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    fn schedule(&self, start: Instant) -> Schedule {
        // backon adds a jitter in [0, pause) to a base pause; a base of half the pause keeps the
        // result in [pause / 2, pause].
        let halve = |d: Duration| if self.jitter == Jitter::Off { d } else { d / 2 };
        let max = self.max_interval.unwrap_or(self.interval).max(self.interval);
        let mut b = ExponentialBuilder::default()
            .with_min_delay(halve(self.interval))
            .with_max_delay(halve(max))
            .with_factor(if self.max_interval.is_some() { 2.0 } else { 1.0 });
        b = match self.max_attempts {
            Some(n) => b.with_max_times(n.saturating_sub(1) as usize),
            None => b.without_max_times(),
        };
        b = match self.jitter {
            Jitter::Off => b,
            // Seeded here: backon's own fresh seed needs its `std` feature, and this way the one
            // source of randomness is the OS's.
            Jitter::Random => b
                .with_jitter()
                .with_jitter_seed(getrandom::u64().unwrap_or_default()),
            Jitter::Seeded(seed) => b.with_jitter().with_jitter_seed(seed),
        };
        Schedule {
            pauses: b.build(),
            start,
            deadline: self.deadline,
        }
    }

    /// Runs `op(attempt)` (attempts count from 1) until it breaks with a result, or the limits
    /// run out. `Continue(reason)` means "not yet"; `Break(Ok)` succeeds; `Break(Err)` stops.
    pub async fn run<T, E, R, F, Fut>(&self, op: F) -> Result<T, RetryError<E, R>>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = ControlFlow<Result<T, E>, R>>,
    {
        self.run_with(tokio::time::sleep, op).await
    }

    /// Like [`Retry::run`], but a fire of `wake` ends the pause early: the next attempt starts
    /// [`FLOOR`](crate::trigger::FLOOR) after the fire instead of at the interval, which stays
    /// the fallback. Fires during an attempt coalesce into one early attempt.
    pub async fn run_woken<T, E, R, F, Fut>(
        &self,
        wake: &crate::trigger::Trigger,
        op: F,
    ) -> Result<T, RetryError<E, R>>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = ControlFlow<Result<T, E>, R>>,
    {
        let wake = wake.clone();
        let sleep = move |pause: Duration| {
            let wake = wake.clone();
            async move {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = wake.fired() => {
                        tokio::time::sleep(crate::trigger::FLOOR.min(pause)).await;
                        // Fires during the floor are covered by the round about to start.
                        wake.clear();
                    }
                }
            }
        };
        self.run_with(sleep, op).await
    }

    async fn run_with<T, E, R, F, Fut, S, SF>(&self, sleep: S, mut op: F) -> Result<T, RetryError<E, R>>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = ControlFlow<Result<T, E>, R>>,
        S: Fn(Duration) -> SF + 'static,
        SF: Future<Output = ()> + 'static,
    {
        let start = Instant::now();
        let mut attempt = 0u32;
        let mut made = 0u32;
        let result = (|| {
            attempt += 1;
            let fut = op(attempt);
            async move {
                match fut.await {
                    ControlFlow::Break(Ok(v)) => Ok(v),
                    ControlFlow::Break(Err(e)) => Err(Failed::Stop(e)),
                    ControlFlow::Continue(r) => Err(Failed::Again(r)),
                }
            }
        })
        .retry(Builder(self.schedule(start)))
        .sleep(sleep)
        .when(|f| matches!(f, Failed::Again(_)))
        .notify(|_, _| made += 1)
        .await;
        result.map_err(|f| match f {
            Failed::Stop(e) => RetryError::Stopped(e),
            Failed::Again(last) => RetryError::Exhausted {
                attempts: made + 1,
                last,
            },
        })
    }
}

/// Hands a ready schedule to backon.
struct Builder(Schedule);

impl BackoffBuilder for Builder {
    type Backoff = Schedule;
    fn build(self) -> Schedule {
        self.0
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

    async fn pauses(jitter: Jitter) -> Vec<Duration> {
        let r = Retry::every(Duration::from_millis(100))
            .attempts(20)
            .jitter(jitter);
        let mut at = Vec::new();
        let _: Result<(), RetryError<(), ()>> = r
            .run(|_| {
                at.push(Instant::now());
                async { ControlFlow::Continue(()) }
            })
            .await;
        at.windows(2).map(|w| w[1] - w[0]).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_spreads_pauses_over_the_upper_half_and_a_seed_replays() {
        let a = pauses(Jitter::Seeded(7)).await;
        assert_eq!(a.len(), 19);
        for p in &a {
            assert!(
                *p >= Duration::from_millis(50) && *p <= Duration::from_millis(100),
                "{p:?}"
            );
        }
        let distinct: std::collections::BTreeSet<_> = a.iter().collect();
        assert!(distinct.len() > 10, "jitter should vary the pauses: {a:?}");
        assert_eq!(a, pauses(Jitter::Seeded(7)).await, "the same seed replays");
        assert_ne!(a, pauses(Jitter::Seeded(8)).await, "another seed spreads apart");
        assert_ne!(pauses(Jitter::Random).await, pauses(Jitter::Random).await);
    }
}
