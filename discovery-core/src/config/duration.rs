//! Durations written with units, parsed and printed by `humantime`: `"500ms"`, `"30s"`, `"2m"`,
//! `"1h"`, `"1m 30s"`.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// A duration the config does not accept; its message says what is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    /// Not a number followed by a unit.
    #[error(
        "invalid duration {text:?} ({why}): expected a number followed by a unit such as ms, s, \
         m or h (e.g. \"500ms\", \"30s\", \"2m\", \"1m 30s\")"
    )]
    Malformed {
        /// What was written.
        text: String,
        /// What is wrong with it.
        why: String,
    },
    /// Longer than any setting could use.
    #[error("invalid duration {text:?}: too large")]
    TooLarge {
        /// What was written.
        text: String,
    },
}

/// Parses a duration with a unit.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| DurationError::Malformed {
        text: text.to_string(),
        why: match e {
            humantime::DurationError::UnknownUnit { unit, .. } => format!("unknown unit {unit:?}"),
            other => other.to_string(),
        },
    })?;
    if d > Duration::from_secs(1_000_000_000_000) {
        return Err(DurationError::TooLarge {
            text: text.to_string(),
        });
    }
    Ok(d)
}

/// Formats a duration the way the config accepts it.
pub fn format(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Serde `deserialize_with` helper.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Number(i64),
    }
    match Raw::deserialize(d)? {
        Raw::Text(t) => parse(&t).map_err(serde::de::Error::custom),
        Raw::Number(n) => Err(serde::de::Error::custom(format!(
            "invalid duration {n}: write it with a unit, e.g. \"{n}ms\" or \"{n}s\""
        ))),
    }
}

/// Serde `serialize_with` helper.
pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format(*d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("1m 30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "5",
            "s",
            "5x",
            "-1s",
            "1..5s",
            ".5s",
            "5 parsecs",
            "1e3s",
            "é",
            "99999999999999999999h",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("invalid duration"), "{bad}: {e}");
        }
    }

    #[test]
    fn formats_round_trip() {
        for text in ["500ms", "30s", "2m", "1h", "0s", "1s 500ms", "1m 30s"] {
            assert_eq!(format(parse(text).unwrap()), text);
        }
    }
}
