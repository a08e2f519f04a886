//! Config errors that name the bad key, the closest valid key, and the allowed range.

use std::fmt;

use serde::de::DeserializeOwned;

use super::accepted::{Accepted, accepted};

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

/// Parses a whole TOML document into `T`. The failing key's path comes from
/// `serde_path_to_error`, the keys or values `T` accepts there from `T`'s own `Deserialize`
/// (see [`accepted`]), the line from toml's span.
pub fn from_toml_str<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let de = toml::de::Deserializer::parse(text).map_err(|e| toml_syntax(text, &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = segments(e.path());
        let inner = e.into_inner();
        let doc: Option<toml::Table> = toml::from_str(text).ok();
        let mut err = explain::<T>(&[], &path, inner.message(), doc.as_ref());
        err.line = inner.span().map(|s| line_of(text, s.start));
        err
    })
}

/// Parses an already-read TOML table into `T`; `path` is the table's own key path.
pub fn from_toml_table<T: DeserializeOwned>(table: &toml::Table, path: &str) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
        let prefix: Vec<String> = path
            .split('.')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        let inner_path = segments(e.path());
        explain::<T>(&prefix, &inner_path, e.inner().message(), Some(table))
    })
}

fn toml_syntax(text: &str, e: &toml::de::Error) -> ConfigError {
    let mut err = ConfigError::new(None, e.message().trim().to_string());
    err.line = e.span().map(|s| line_of(text, s.start));
    err
}

fn segments(path: &serde_path_to_error::Path) -> Vec<String> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|s| match s {
            Segment::Map { key } => Some(key.clone()),
            Segment::Seq { index } => Some(index.to_string()),
            Segment::Enum { variant } => Some(variant.clone()),
            Segment::Unknown => None,
        })
        .collect()
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len()))
        .unwrap_or(text)
        .matches('\n')
        .count()
        + 1
}

/// The message for an error at `path` (inside `T`; `prefix` is where `T` sits in the file).
fn explain<T: DeserializeOwned>(
    prefix: &[String],
    path: &[String],
    message: &str,
    doc: Option<&toml::Table>,
) -> ConfigError {
    let full = prefix.iter().chain(path).cloned().collect::<Vec<_>>().join(".");
    if let Some((last, parent)) = path.split_last()
        && let Accepted::Keys(keys) = accepted::<T>(parent)
        && !keys.contains(&last.as_str())
    {
        return suggest(full.clone(), format!("unknown key `{full}`"), last, keys, "key");
    }
    if let Accepted::Values(values) = accepted::<T>(path)
        && let Some(toml::Value::String(bad)) = value_at(doc, path)
        && !values.contains(&bad.as_str())
    {
        return suggest(
            full.clone(),
            format!("invalid value `{bad}` for {full}"),
            bad,
            values,
            "value",
        );
    }
    let message = message.trim();
    if full.is_empty() {
        ConfigError::new(None, message.to_string())
    } else {
        ConfigError::new(Some(full.clone()), format!("{full}: {message}"))
    }
}

fn suggest(key: String, subject: String, bad: &str, valid: &[&str], noun: &str) -> ConfigError {
    let mut text = subject;
    if let Some(best) = closest(bad, valid.iter().copied()) {
        text.push_str(&format!("; did you mean `{best}`?"));
    }
    if !valid.is_empty() {
        text.push_str(&format!(" (valid {noun}s: {})", valid.join(", ")));
    }
    ConfigError::new(Some(key), text)
}

fn value_at<'a>(doc: Option<&'a toml::Table>, path: &[String]) -> Option<&'a toml::Value> {
    let (first, rest) = path.split_first()?;
    let mut v = doc?.get(first)?;
    for key in rest {
        v = match v {
            toml::Value::Table(t) => t.get(key)?,
            toml::Value::Array(a) => a.get(key.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

/// The valid name nearest to `bad` by edit distance, if it is near enough to be a typo.
pub fn closest<'a>(bad: &str, valid: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (bad.len() / 3).max(2);
    valid
        .into_iter()
        .map(|v| (strsim::levenshtein(bad, v), v))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, v)| v)
}
