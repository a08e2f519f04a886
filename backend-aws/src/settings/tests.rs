//! `[cluster_formation.aws]`: defaults, every validation, and the errors' wording.

use super::*;

fn local() -> NodeName {
    "muster@10.0.1.4:4370".parse().unwrap()
}

fn resolve(table: &str) -> Result<ResolvedAws, ConfigError> {
    let text =
        format!("[cluster_formation]\npeer_discovery_backend = \"aws\"\n[cluster_formation.aws]\n{table}");
    AwsSettings::resolve(&FormationConfig::from_toml(&text)?, &local())
}

fn error(table: &str) -> String {
    match resolve(table) {
        Ok(r) => panic!("{table:?} was accepted: {r:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn defaults_list_pending_and_running_by_private_ip() {
    let r = resolve("use_autoscaling_group = true").unwrap();
    let s = &r.settings;
    assert_eq!(s.instance_states, ["pending", "running"]);
    assert_eq!(s.address_type, AddressType::PrivateIp);
    assert!(!s.fencing);
    assert_eq!(s.max_attempts, 3);
    assert_eq!(s.startup_jitter, Duration::from_secs(1));
    assert_eq!((r.prefix.as_str(), r.port), ("muster", Some(4370)));
}

#[test]
fn without_tags_or_a_group_nothing_would_be_selected() {
    let e = error("");
    assert!(e.contains("cluster_formation.aws.instance_tags"), "{e}");
    assert!(e.contains("use_autoscaling_group = true"), "{e}");
}

#[test]
fn unknown_keys_and_values_get_suggestions() {
    let e = error("use_autoscaling_group = true\ninstance_tag = { a = \"b\" }");
    assert!(e.contains("instance_tags"), "{e}");
    let e = error("use_autoscaling_group = true\naddress_type = \"private_ipv4\"");
    assert!(e.contains("private_ip"), "{e}");
    let e = error("use_autoscaling_group = true\ninstance_states = [\"runing\"]");
    assert!(e.contains("did you mean \"running\""), "{e}");
    let e = error("use_autoscaling_group = true\ninstance_states = []");
    assert!(e.contains("instance_states"), "{e}");
}

#[test]
fn region_urls_ids_and_parameters_are_checked() {
    for (table, key) in [
        ("region = \"eu-west\"", "region"),
        ("region = \"us-west-2-lax-1a\"", "region"),
        ("endpoint_url = \"127.0.0.1:5000\"", "endpoint_url"),
        ("imds_endpoint = \"169.254.169.254\"", "imds_endpoint"),
        ("instance_id = \"i-xyz\"", "instance_id"),
        ("instance_id = \"i-\"", "instance_id"),
        ("ssm_parameter = \"bad name\"", "ssm_parameter"),
        ("max_attempts = 0", "max_attempts"),
        ("request_timeout = \"1ms\"", "request_timeout"),
        ("startup_jitter = \"2m\"", "startup_jitter"),
    ] {
        let e = error(&format!("use_autoscaling_group = true\n{table}"));
        assert!(
            e.contains(&format!("cluster_formation.aws.{key}")),
            "{table}: {e}"
        );
    }
    for ok in ["eu-west-1", "us-gov-west-1", "ap-southeast-4", "cn-north-1"] {
        assert!(valid_region(ok), "{ok}");
    }
    let r = resolve("use_autoscaling_group = true\ninstance_id = \"i-0123abcd\"\nregion = \"eu-west-1\"")
        .unwrap();
    assert_eq!(r.settings.instance_id.as_deref(), Some("i-0123abcd"));
}

#[test]
fn fencing_by_tags_needs_a_parameter_name() {
    let e = error("instance_tags = { cluster = \"prod\" }\nfencing = true");
    assert!(e.contains("cluster_formation.aws.ssm_parameter"), "{e}");
    resolve("instance_tags = { cluster = \"prod\" }\nfencing = true\nssm_parameter = \"/muster/prod/id\"")
        .unwrap();
    resolve("use_autoscaling_group = true\nfencing = true").unwrap();
    let e = error("instance_tags = { cluster = \"\" }");
    assert!(e.contains("must not be empty"), "{e}");
}
