//! Config errors that name the bad key, the closest valid key, and the allowed range.

use std::fmt;

use serde::de::DeserializeOwned;

/// A configuration error. The message names the key (with its table path) and says what is
/// accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The full key, e.g. `cluster_formation.restart.retry_limit`, when known.
    pub key: Option<String>,
    /// The line in the source document, when known.
    pub line: Option<usize>,
    /// The complete message.
    pub message: String,
}

impl ConfigError {
    /// A new error about `key`.
    pub fn new(key: Option<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key,
            line: None,
            message: message.into(),
        }
    }

    /// A value outside its allowed range.
    pub fn out_of_range(
        key: &str,
        value: impl fmt::Display,
        min: impl fmt::Display,
        max: impl fmt::Display,
    ) -> Self {
        ConfigError::new(
            Some(key.to_string()),
            format!("{key} = {value} is out of range: allowed {min} to {max}"),
        )
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "config error (line {line}): {}", self.message),
            None => write!(f, "config error: {}", self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Parses a whole TOML document into `T`, turning serde's messages into ones that name the key.
pub fn from_toml_str<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let (line, table, key_text) = match e.span() {
            Some(span) => (
                Some(line_of(text, span.start)),
                table_at(text, span.start),
                line_text(text, span.start),
            ),
            None => (None, String::new(), None),
        };
        let mut err = explain(e.message(), &table, key_text.as_deref());
        err.line = line;
        err
    })
}

/// Parses an already-read TOML table into `T`; `path` is the table's own key path.
pub fn from_toml_table<T: DeserializeOwned>(table: &toml::Table, path: &str) -> Result<T, ConfigError> {
    T::deserialize(toml::Value::Table(table.clone())).map_err(|e| explain(e.message(), path, None))
}

/// The whole line holding `offset` (the key of a bad value sits before its `=`).
fn line_text(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    Some(text[start..end].trim().to_string())
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The `[table]` header in force at `offset` (empty for the root).
fn table_at(text: &str, offset: usize) -> String {
    text[..offset.min(text.len())]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| {
            l.trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

fn join(table: &str, key: &str) -> String {
    if table.is_empty() {
        key.to_string()
    } else {
        format!("{table}.{key}")
    }
}

/// Turns serde/toml's message into one that names the key and the closest valid alternative.
fn explain(message: &str, table: &str, key_text: Option<&str>) -> ConfigError {
    let message = message.trim();
    for (what, noun) in [("unknown field", "key"), ("unknown variant", "value")] {
        if let Some(rest) = message.strip_prefix(what) {
            let bad = backticked(rest).into_iter().next().unwrap_or_default();
            let valid = rest
                .split_once(", expected")
                .map(|(_, e)| backticked(e))
                .unwrap_or_default();
            let subject = if noun == "key" {
                format!("unknown key `{}`", join(table, &bad))
            } else {
                let key = key_text
                    .filter(|k| k.contains('='))
                    .and_then(|k| k.split('=').next())
                    .map(|k| join(table, k.trim()))
                    .unwrap_or_else(|| table.to_string());
                format!("invalid value `{bad}` for {key}")
            };
            let mut text = subject;
            if let Some(best) = closest(&bad, valid.iter().map(String::as_str)) {
                text.push_str(&format!("; did you mean `{best}`?"));
            }
            if !valid.is_empty() {
                text.push_str(&format!(" (valid {noun}s: {})", valid.join(", ")));
            }
            return ConfigError::new(Some(join(table, &bad)), text);
        }
    }
    let key = key_text
        .filter(|k| k.contains('='))
        .and_then(|k| k.split('=').next())
        .map(|k| join(table, k.trim()));
    let text = match &key {
        Some(k) => format!("{k}: {message}"),
        None if !table.is_empty() => format!("in [{table}]: {message}"),
        None => message.to_string(),
    };
    ConfigError::new(key, text)
}

fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_string())
        .collect()
}

/// The valid name nearest to `bad` by edit distance, if it is near enough to be a typo.
pub fn closest<'a>(bad: &str, valid: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (bad.len() / 3).max(2);
    valid
        .into_iter()
        .map(|v| (edit_distance(bad, v), v))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, v)| v)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
