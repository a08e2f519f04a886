//! The `muster` CLI's one-shot commands and the HTTP endpoints of a running node.

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use muster_tests::{Layout, LocalCluster, ctl, http_get, local_cluster_of, node_exe, text};

fn local_cluster(layout: &Layout) -> (tempfile::TempDir, LocalCluster) {
    local_cluster_of(&node_exe!(), layout)
}

fn muster(args: &[&str]) -> std::process::Output {
    Command::new(node_exe!())
        .args(args)
        .env_remove("MUSTER_COOKIE")
        .output()
        .unwrap()
}

#[test]
fn config_check_prints_effective_settings_and_names_bad_keys() {
    let (_dir, c) = local_cluster(&Layout {
        nodes: 2,
        ..Layout::default()
    });
    let config = c.nodes[0].config.to_str().unwrap();
    let out = muster(&["config", "check", config]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("is valid"), "{stdout}");
    assert!(
        stdout.contains("discovery_retry_limit = 60"),
        "defaults are shown: {stdout}"
    );
    assert!(stdout.contains("retry_timeout = \"30s\""), "{stdout}");

    let bad = c.dir.join("bad.toml");
    let text_in = std::fs::read_to_string(&c.nodes[0].config)
        .unwrap()
        .replace("probe_timeout", "probe_timout");
    std::fs::write(&bad, text_in).unwrap();
    let out = muster(&["config", "check", bad.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr.lines().count(), 1, "one clear line: {stderr}");
    assert!(
        stderr.contains("unknown key `cluster_formation.probe_timout`"),
        "{stderr}"
    );
    assert!(stderr.contains("did you mean `probe_timeout`?"), "{stderr}");
}

#[test]
fn env_overrides_apply_to_the_effective_config() {
    let (_dir, c) = local_cluster(&Layout {
        nodes: 1,
        ..Layout::default()
    });
    let out = Command::new(node_exe!())
        .args(["config", "check", c.nodes[0].config.to_str().unwrap()])
        .env("MUSTER_CLUSTER_NAME", "from-env")
        .output()
        .unwrap();
    assert!(
        text(&out).0.contains("cluster_name = \"from-env\""),
        "{}",
        text(&out).0
    );
}

#[test]
fn discover_runs_the_listing_once() {
    let (_dir, c) = local_cluster(&Layout {
        nodes: 3,
        ..Layout::default()
    });
    let out = muster(&[
        "discover",
        "--config",
        c.nodes[1].config.to_str().unwrap(),
        "--json",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["backend"], "classic");
    assert_eq!(v["authoritative"], true);
    assert_eq!(v["nodes"].as_array().unwrap().len(), 3);
}

#[test]
fn ctl_against_a_stopped_node_fails_with_one_line() {
    let (_dir, c) = local_cluster(&Layout {
        nodes: 1,
        ..Layout::default()
    });
    let out = ctl(&c, 0, &["ping"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot connect to"), "{stderr}");
    assert!(stderr.contains(c.nodes[0].name.as_str()), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints_report_liveness_readiness_status_and_metrics() {
    let layout = Layout {
        nodes: 2,
        http: true,
        ..Layout::default()
    };
    let (_dir, mut c) = local_cluster(&layout);
    c.start(1).unwrap(); // the seed (node 1) is not started yet: node 2 waits
    let http = c.nodes[1].http.unwrap();
    let mut live = 0;
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect(http) {
            let _ = s.write_all(b"");
            live = http_get(http, "/health/live").0;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(live, 200);
    // Not ready, and (after its first round; "starting" before it) says what it waits for.
    let mut body = String::new();
    for _ in 0..100 {
        let (code, b) = http_get(http, "/health/ready");
        assert_eq!(code, 503, "{b}");
        body = b;
        if body.contains("waiting for seed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        body.contains("waiting for seed"),
        "the node says what it waits for: {body}"
    );
    c.start(0).unwrap();
    c.wait_members(&[0, 1], 2, Duration::from_secs(20)).await.unwrap();
    assert_eq!(http_get(http, "/health/ready").0, 200);
    let (code, body) = http_get(http, "/status");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["membership"]["members"].as_array().unwrap().len(), 2);
    assert!(v["formation"]["trace"].as_array().unwrap().len() >= 2);
    let (code, metrics) = http_get(http, "/metrics");
    assert_eq!(code, 200);
    for name in [
        "muster_formation_state{phase=\"formed\"} 1",
        "muster_discovery_calls_total",
        "muster_discovery_errors_total 0",
        "muster_joins_total 1",
        "muster_forgotten_nodes_total 0",
        "muster_reachable_peers",
    ] {
        assert!(metrics.contains(name), "{name} missing in:\n{metrics}");
    }
    assert_eq!(http_get(http, "/nope").0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_and_never_contain_the_cookie() {
    let (_dir, mut c) = local_cluster(&Layout {
        nodes: 1,
        ..Layout::default()
    });
    c.json_logs();
    c.start_all().unwrap();
    c.wait_members(&[0], 1, Duration::from_secs(20)).await.unwrap();
    c.stop_all(Duration::from_secs(5)).await;
    let log = std::fs::read_to_string(&c.nodes[0].log).unwrap();
    let cookie = std::fs::read_to_string(&c.cookie_file).unwrap();
    assert!(!log.contains(&cookie));
    let mut lines = 0;
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["fields"]["message"].is_string(), "{line}");
        lines += 1;
    }
    assert!(lines >= 2, "{log}");
    assert!(log.contains("formed new cluster"), "{log}");
}

#[test]
fn the_home_lan_deploy_config_is_valid_as_shipped() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/home-lan/muster.toml");
    let out = muster(&["config", "check", path]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("muster@rpi-node4"), "{stdout}");
    let shipped = std::fs::read_to_string(path).unwrap();
    for pi in ["rpi-node1", "rpi-node2", "rpi-node3", "rpi-node4"] {
        let edited = shipped.replace("name = \"muster@rpi-master\"", &format!("name = \"muster@{pi}\""));
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), edited).unwrap();
        let out = muster(&["config", "check", file.path().to_str().unwrap()]);
        assert!(out.status.success(), "{pi}: {}", text(&out).1);
    }
}
