//! The allowed range of a backend's numeric and duration keys, declared beside its settings
//! struct as one line per key and checked by one function, with the same message everywhere
//! (`cluster_formation.consul.lock_ttl = 5s is out of range: allowed 10s to 1day`).

use std::time::Duration;

use super::{ConfigError, check_duration, check_range};

/// One key of a settings struct `S` and its allowed range.
pub enum Bound<S> {
    /// A duration.
    Duration {
        /// The key within its table.
        key: &'static str,
        /// Reads it.
        get: fn(&S) -> Duration,
        /// The shortest allowed.
        min: Duration,
        /// The longest allowed.
        max: Duration,
    },
    /// A count.
    Count {
        /// The key within its table.
        key: &'static str,
        /// Reads it.
        get: fn(&S) -> u64,
        /// The least allowed.
        min: u64,
        /// The most allowed.
        max: u64,
    },
}

impl<S> Bound<S> {
    /// A duration key allowed from `min` to `max`.
    pub const fn duration(key: &'static str, get: fn(&S) -> Duration, min: Duration, max: Duration) -> Self {
        Bound::Duration { key, get, min, max }
    }

    /// A count key allowed from `min` to `max`.
    pub const fn count(key: &'static str, get: fn(&S) -> u64, min: u64, max: u64) -> Self {
        Bound::Count { key, get, min, max }
    }
}

/// Checks every bound of `settings`, the table at `table` (`cluster_formation.consul`); the
/// error names the first key out of range and the allowed range.
pub fn check_bounds<S>(table: &str, settings: &S, bounds: &[Bound<S>]) -> Result<(), ConfigError> {
    for bound in bounds {
        match bound {
            Bound::Duration { key, get, min, max } => {
                check_duration(&format!("{table}.{key}"), get(settings), *min, *max)?
            }
            Bound::Count { key, get, min, max } => {
                check_range(&format!("{table}.{key}"), get(settings), *min, *max)?
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct S {
        ttl: Duration,
        tries: u32,
    }

    const BOUNDS: &[Bound<S>] = &[
        Bound::duration("ttl", |s| s.ttl, Duration::from_secs(10), Duration::from_secs(60)),
        Bound::count("tries", |s| u64::from(s.tries), 1, 10),
    ];

    #[test]
    fn the_first_key_out_of_range_is_named_with_its_range() {
        let ok = S {
            ttl: Duration::from_secs(30),
            tries: 3,
        };
        check_bounds("t", &ok, BOUNDS).unwrap();
        let e = check_bounds(
            "t",
            &S {
                ttl: Duration::from_secs(5),
                tries: 0,
            },
            BOUNDS,
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("t.ttl"));
        assert_eq!(e.message, "t.ttl = 5s is out of range: allowed 10s to 1m");
        let e = check_bounds("t", &S { tries: 11, ..ok }, BOUNDS).unwrap_err();
        assert_eq!(e.message, "t.tries = 11 is out of range: allowed 1 to 10");
    }
}
