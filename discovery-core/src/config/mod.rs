//! The `[cluster_formation]` configuration table (serde + TOML).
//!
//! Keys follow RabbitMQ's `cluster_formation.*` names where the concept is the same; see
//! `docs/configuration.md` for the mapping. Unknown keys are rejected with the closest valid key,
//! durations are written with units, and out-of-range values are rejected with the allowed range.

mod accepted;
mod bounds;
pub mod duration;
mod errors;
mod secret;
mod tables;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use bounds::{Bound, check_bounds};
pub use errors::{ConfigError, closest, from_toml_str, from_toml_table};
pub use secret::{REDACTED, SECRET_KEYS, Secret, on_this_machine, redact_secrets};

/// What to do when `discovery_retry_limit` attempts have not produced a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExhausted {
    /// Stop with an error that says what was missing (default; a silent standalone boot is the
    /// root of most split-cluster reports).
    #[default]
    Fail,
    /// Form a cluster of one, as RabbitMQ does. Unsafe: can split the cluster.
    Standalone,
    /// Keep waiting and retrying forever.
    Wait,
}

/// `[cluster_formation.registration]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationConfig {
    /// Register with the backend at boot and unregister at shutdown (RabbitMQ
    /// `cluster_formation.registration.enabled`).
    pub enabled: bool,
}

impl Default for RegistrationConfig {
    fn default() -> Self {
        RegistrationConfig { enabled: true }
    }
}

/// `[cluster_formation.node_cleanup]`: removal of members the backend no longer lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CleanupConfig {
    /// How often to check (RabbitMQ `node_cleanup.interval`).
    #[serde(with = "duration")]
    pub interval: Duration,
    /// Warn instead of removing (RabbitMQ `node_cleanup.only_log_warning`).
    pub only_log_warning: bool,
    /// Successful discovery rounds in a row a member must be absent from (and unreachable
    /// throughout) before it counts as unknown. No RabbitMQ equivalent (it removes at once).
    pub consecutive_absences: u32,
}

impl Default for CleanupConfig {
    fn default() -> Self {
        CleanupConfig {
            interval: Duration::from_secs(60),
            only_log_warning: true,
            consecutive_absences: 3,
        }
    }
}

/// `[cluster_formation.restart]`: how a previously clustered node waits for its peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestartConfig {
    /// Attempts (RabbitMQ `mnesia_table_loading_retry_limit`).
    pub retry_limit: u32,
    /// Time per attempt (RabbitMQ `mnesia_table_loading_retry_timeout`).
    #[serde(with = "duration")]
    pub retry_timeout: Duration,
}

impl Default for RestartConfig {
    fn default() -> Self {
        RestartConfig {
            retry_limit: 10,
            retry_timeout: Duration::from_secs(30),
        }
    }
}

/// The `[cluster_formation]` table. Its keys are checked here; a sub-table this struct does not
/// name is a backend's (`[cluster_formation.dns]`, …), kept whole in
/// [`backend_tables`](Self::backend_tables) for that backend to read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", deny_unknown_fields, default)]
pub struct FormationConfig {
    /// Which backend to use: `classic`, `dns`, `k8s`, `aws`, `consul`, `etcd`.
    pub peer_discovery_backend: String,
    /// Pause between discovery attempts.
    #[serde(with = "duration")]
    pub discovery_retry_interval: Duration,
    /// Attempts before `on_exhausted` applies, counted by the interval: the budget is
    /// `discovery_retry_limit × discovery_retry_interval` of time, whatever early rounds peers'
    /// notices cause.
    pub discovery_retry_limit: u32,
    /// What to do when attempts run out.
    pub on_exhausted: OnExhausted,
    /// The number of candidates a node must see (and reach) before the seed may form.
    pub target_cluster_size_hint: u32,
    /// For backends whose list is not authoritative: how long every view must be unchanged
    /// before the seed may form. At least `2 x (discovery_retry_interval + probe_timeout)`;
    /// when not set, 5 s or that floor, whichever is longer (see
    /// [`FormationConfig::derive_unset`]).
    #[serde(with = "duration")]
    pub stable_margin: Duration,
    /// How long to wait for one peer's probe answer.
    #[serde(with = "duration")]
    pub probe_timeout: Duration,
    /// How long to wait for the backend's formation lock in one attempt.
    #[serde(with = "duration")]
    pub lock_acquire_timeout: Duration,
    /// Registration settings.
    pub registration: RegistrationConfig,
    /// Cleanup of unknown nodes.
    pub node_cleanup: CleanupConfig,
    /// The restart window.
    pub restart: RestartConfig,
    /// The backends' tables by name (`classic_config`, `dns`, …), unparsed: each backend parses
    /// its own (see [`FormationConfig::backend_settings`]).
    #[serde(skip)]
    pub backend_tables: BTreeMap<String, toml::Table>,
}

impl Default for FormationConfig {
    fn default() -> Self {
        FormationConfig {
            peer_discovery_backend: "classic".to_string(),
            discovery_retry_interval: Duration::from_millis(500),
            discovery_retry_limit: 60,
            on_exhausted: OnExhausted::Fail,
            target_cluster_size_hint: 1,
            stable_margin: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(1),
            lock_acquire_timeout: Duration::from_secs(10),
            registration: RegistrationConfig::default(),
            node_cleanup: CleanupConfig::default(),
            restart: RestartConfig::default(),
            backend_tables: BTreeMap::new(),
        }
    }
}

/// A document whose only table is `[cluster_formation]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default)]
    cluster_formation: FormationConfig,
}

/// Rejects a value outside `min..=max` with an error naming `key` and the allowed range.
pub fn check_range<T: PartialOrd + std::fmt::Display>(
    key: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::out_of_range(key, value, min, max));
    }
    Ok(())
}

/// Rejects a duration outside `min..=max` with an error naming `key` and the allowed range,
/// written with units as the config accepts them.
pub fn check_duration(key: &str, value: Duration, min: Duration, max: Duration) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::out_of_range(
            key,
            duration::format(value),
            duration::format(min),
            duration::format(max),
        ));
    }
    Ok(())
}

impl FormationConfig {
    /// Parses a TOML document holding a `[cluster_formation]` table, then validates it.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let doc: Document = from_toml_str(text)?;
        let mut config = doc.cluster_formation;
        config.derive_unset(text);
        config.validate()?;
        Ok(config)
    }

    /// Settings whose default follows others, where the file (`text`, the whole TOML document
    /// with its `[cluster_formation]` table) leaves them unset: `stable_margin` is at least its
    /// floor, `2 x (discovery_retry_interval + probe_timeout)`, so that setting only a longer
    /// interval is not refused over a key the user never wrote. A longer margin only waits longer.
    pub fn derive_unset(&mut self, text: &str) {
        let set = toml::from_str::<toml::Table>(text)
            .ok()
            .and_then(|doc| {
                doc.get("cluster_formation")?
                    .as_table()?
                    .get("stable_margin")
                    .cloned()
            })
            .is_some();
        if !set {
            let floor = (self.discovery_retry_interval + self.probe_timeout) * 2;
            self.stable_margin = self.stable_margin.max(floor);
        }
    }

    /// Checks every value against its allowed range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        const P: &str = "cluster_formation";
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        check_duration(
            &format!("{P}.discovery_retry_interval"),
            self.discovery_retry_interval,
            ms(10),
            s(600),
        )?;
        check_range(
            &format!("{P}.discovery_retry_limit"),
            self.discovery_retry_limit,
            1,
            1_000_000,
        )?;
        check_range(
            &format!("{P}.target_cluster_size_hint"),
            self.target_cluster_size_hint,
            1,
            10_000,
        )?;
        check_duration(&format!("{P}.probe_timeout"), self.probe_timeout, ms(10), s(60))?;
        check_duration(&format!("{P}.stable_margin"), self.stable_margin, ms(0), s(600))?;
        let floor = (self.discovery_retry_interval + self.probe_timeout) * 2;
        if self.stable_margin < floor {
            return Err(ConfigError::new(
                Some(format!("{P}.stable_margin")),
                format!(
                    "{P}.stable_margin = \"{}\" is too short: it must be at least \
                     2 x (discovery_retry_interval + probe_timeout) = \"{}\", or a peer may not \
                     notice a new cluster before its view settles (docs/formation.md)",
                    duration::format(self.stable_margin),
                    duration::format(floor)
                ),
            ));
        }
        check_duration(
            &format!("{P}.lock_acquire_timeout"),
            self.lock_acquire_timeout,
            ms(100),
            s(600),
        )?;
        check_duration(
            &format!("{P}.node_cleanup.interval"),
            self.node_cleanup.interval,
            s(1),
            s(86_400),
        )?;
        check_range(
            &format!("{P}.node_cleanup.consecutive_absences"),
            self.node_cleanup.consecutive_absences,
            1,
            1000,
        )?;
        check_range(
            &format!("{P}.restart.retry_limit"),
            self.restart.retry_limit,
            1,
            1000,
        )?;
        check_duration(
            &format!("{P}.restart.retry_timeout"),
            self.restart.retry_timeout,
            ms(100),
            s(3600),
        )?;
        Ok(())
    }

    /// The raw table of a backend (`"classic_config"`, `"dns"`, …), if present.
    pub fn backend_table(&self, name: &str) -> Option<&toml::Table> {
        self.backend_tables.get(name)
    }

    /// Parses a backend's table into its typed settings, with the same error quality as the
    /// main table (`T` should use `deny_unknown_fields`). An absent table yields `T::default()`.
    pub fn backend_settings<T: DeserializeOwned + Default>(&self, name: &str) -> Result<T, ConfigError> {
        match self.backend_table(name) {
            Some(table) => from_toml_table(table, &format!("cluster_formation.{name}")),
            None => Ok(T::default()),
        }
    }

    /// The total time discovery may take before `on_exhausted` applies.
    pub fn discovery_budget(&self) -> Duration {
        self.discovery_retry_interval * self.discovery_retry_limit
    }
}

#[cfg(test)]
mod tests;
