//! The promised messages: unknown key with the closest valid key, bad duration, out-of-range.

use super::*;

fn err(text: &str) -> String {
    FormationConfig::from_toml(text).unwrap_err().to_string()
}

#[test]
fn defaults_apply_to_an_empty_document() {
    let cfg = FormationConfig::from_toml("").unwrap();
    assert_eq!(cfg, FormationConfig::default());
    assert_eq!(cfg.peer_discovery_backend, "classic");
    assert_eq!(cfg.on_exhausted, OnExhausted::Fail);
    assert_eq!(cfg.restart.retry_limit, 10);
    assert_eq!(cfg.restart.retry_timeout, Duration::from_secs(30));
    assert_eq!(cfg.node_cleanup.interval, Duration::from_secs(60));
    assert!(cfg.node_cleanup.only_log_warning);
    assert_eq!(cfg.node_cleanup.consecutive_absences, 3);
}

#[test]
fn a_full_table_parses() {
    let cfg = FormationConfig::from_toml(
        r#"
[cluster_formation]
peer_discovery_backend = "classic"
discovery_retry_interval = "250ms"
discovery_retry_limit = 20
on_exhausted = "wait"
target_cluster_size_hint = 3
stable_margin = "2s"
probe_timeout = "500ms"

[cluster_formation.node_cleanup]
interval = "30s"
only_log_warning = false
consecutive_absences = 5

[cluster_formation.restart]
retry_limit = 3
retry_timeout = "10s"

[cluster_formation.classic_config]
nodes = ["muster@a", "muster@b"]
"#,
    )
    .unwrap();
    assert_eq!(cfg.discovery_retry_interval, Duration::from_millis(250));
    assert_eq!(cfg.on_exhausted, OnExhausted::Wait);
    assert!(!cfg.node_cleanup.only_log_warning);
    assert_eq!(cfg.restart.retry_timeout, Duration::from_secs(10));
    assert!(cfg.backend_table("classic_config").is_some());
}

#[test]
fn unknown_key_names_the_key_and_the_closest_valid_one() {
    let e = err("[cluster_formation]\ndiscovery_retry_limt = 3\n");
    assert!(
        e.contains("unknown key `cluster_formation.discovery_retry_limt`"),
        "{e}"
    );
    assert!(e.contains("did you mean `discovery_retry_limit`?"), "{e}");
    assert!(e.contains("line 2"), "{e}");

    let e = err("[cluster_formation.restart]\nretry_timout = \"5s\"\n");
    assert!(
        e.contains("unknown key `cluster_formation.restart.retry_timout`"),
        "{e}"
    );
    assert!(e.contains("did you mean `retry_timeout`?"), "{e}");

    let e = err("[cluster_formation]\ncompletely_unrelated = 1\n");
    assert!(
        e.contains("unknown key `cluster_formation.completely_unrelated`"),
        "{e}"
    );
    assert!(!e.contains("did you mean"), "{e}");
    assert!(e.contains("valid keys:"), "{e}");

    let e = err("[cluster_formaton]\n");
    assert!(e.contains("unknown key `cluster_formaton`"), "{e}");
    assert!(e.contains("did you mean `cluster_formation`?"), "{e}");
}

#[test]
fn unknown_enum_value_suggests_the_closest() {
    let e = err("[cluster_formation]\non_exhausted = \"standalon\"\n");
    assert!(
        e.contains("invalid value `standalon` for cluster_formation.on_exhausted"),
        "{e}"
    );
    assert!(e.contains("did you mean `standalone`?"), "{e}");
}

#[test]
fn bad_duration_names_the_key_and_the_format() {
    let e = err("[cluster_formation]\ndiscovery_retry_interval = \"5 parsecs\"\n");
    assert!(e.contains("cluster_formation.discovery_retry_interval"), "{e}");
    assert!(e.contains("invalid duration \"5 parsecs\""), "{e}");
    assert!(e.contains("ms, s, m or h"), "{e}");

    let e = err("[cluster_formation.restart]\nretry_timeout = 30\n");
    assert!(e.contains("cluster_formation.restart.retry_timeout"), "{e}");
    assert!(e.contains("write it with a unit"), "{e}");
}

#[test]
fn out_of_range_values_give_the_allowed_range() {
    let e = err("[cluster_formation]\ndiscovery_retry_limit = 0\n");
    assert_eq!(
        e,
        "config error: cluster_formation.discovery_retry_limit = 0 is out of range: allowed 1 to 1000000"
    );

    let e = err("[cluster_formation.restart]\nretry_timeout = \"2h\"\n");
    assert_eq!(
        e,
        "config error: cluster_formation.restart.retry_timeout = 2h is out of range: allowed 100ms to 1h"
    );

    let e = err("[cluster_formation.node_cleanup]\nconsecutive_absences = 0\n");
    assert!(
        e.contains("consecutive_absences = 0 is out of range: allowed 1 to 1000"),
        "{e}"
    );

    let e = err("[cluster_formation]\nstable_margin = \"1s\"\n");
    assert!(e.contains("stable_margin = \"1s\" is too short"), "{e}");
    // Unset, it follows a longer interval instead of refusing a key the user never wrote.
    let c = FormationConfig::from_toml("[cluster_formation]\ndiscovery_retry_interval = \"5s\"\n").unwrap();
    assert_eq!(c.stable_margin, Duration::from_secs(12), "2 x (5 s + 1 s)");
    let c = FormationConfig::from_toml("[cluster_formation]\n").unwrap();
    assert_eq!(c.stable_margin, Duration::from_secs(5), "the shipped margin");
}

#[test]
fn backend_settings_get_the_same_error_quality() {
    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Classic {
        #[allow(dead_code)]
        nodes: Vec<String>,
    }
    let cfg = FormationConfig::from_toml("[cluster_formation.classic_config]\nnodez = []\n").unwrap();
    let e = cfg
        .backend_settings::<Classic>("classic_config")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown key `cluster_formation.classic_config.nodez`"),
        "{e}"
    );
    assert!(e.contains("did you mean `nodes`?"), "{e}");
}

#[test]
fn effective_config_serializes_with_units() {
    let text = toml::to_string(&FormationConfig::default()).unwrap();
    assert!(text.contains("discovery_retry_interval = \"500ms\""), "{text}");
    assert!(text.contains("retry_timeout = \"30s\""), "{text}");
    let back: FormationConfig = toml::from_str(&text).unwrap();
    assert_eq!(back, FormationConfig::default());
}

#[test]
fn a_table_the_core_does_not_name_is_kept_whole_for_its_backend() {
    let text = "[cluster_formation]\npeer_discovery_backend = \"dns\"\n\
                [cluster_formation.dns]\nquery = \"peers.local\"\n[cluster_formation.dns.more]\nx = 1\n\
                [cluster_formation.restart]\nretry_limit = 3\n";
    let cfg = FormationConfig::from_toml(text).unwrap();
    assert_eq!(cfg.restart.retry_limit, 3, "a core table is still the core's");
    assert_eq!(cfg.backend_tables.keys().collect::<Vec<_>>(), ["dns"]);
    let dns = cfg.backend_table("dns").unwrap();
    assert_eq!(dns["query"].as_str(), Some("peers.local"));
    assert_eq!(dns["more"]["x"].as_integer(), Some(1));
    assert!(cfg.backend_table("etcd").is_none());

    let written = toml::to_string(&cfg).unwrap();
    let back: FormationConfig = toml::from_str(&written).unwrap();
    assert_eq!(back, cfg, "{written}");
}

#[test]
fn an_unknown_key_that_is_not_a_table_is_still_refused_with_its_line() {
    let e = err("[cluster_formation]\npeer_discovery_backend = \"dns\"\ndns = \"peers.local\"\n");
    assert!(e.contains("unknown key `cluster_formation.dns`"), "{e}");
    assert!(e.contains("line 3"), "{e}");
    assert!(e.contains("valid keys:"), "{e}");
}
