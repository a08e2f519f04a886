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

    // A typo in the table of a backend that is not selected is named too.
    let other = c.dir.join("other-table.toml");
    let text_in =
        std::fs::read_to_string(&c.nodes[0].config).unwrap() + "\n[cluster_formation.dns]\nhostnme = \"x\"\n";
    std::fs::write(&other, text_in).unwrap();
    let out = muster(&["config", "check", other.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cluster_formation.dns.hostnme") && stderr.contains("hostname"),
        "{stderr}"
    );

    // What start refuses, check refuses too, in one line naming the file or key.
    let config = c.nodes[0].config.clone();
    let refused = |why: &str| {
        let out = muster(&["config", "check", config.to_str().unwrap()]);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{why}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{why}: {stderr}");
        stderr
    };
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&c.cookie_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(refused("a shared cookie").contains("chmod 600"));
    std::fs::set_permissions(&c.cookie_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cookie = std::fs::read(&c.cookie_file).unwrap();
    std::fs::write(&c.cookie_file, "weak").unwrap();
    assert!(refused("a weak cookie").contains("cookie"));
    std::fs::remove_file(&c.cookie_file).unwrap();
    assert!(refused("a missing cookie").contains("cookie"));
    std::fs::write(&c.cookie_file, &cookie).unwrap();
    std::fs::set_permissions(&c.cookie_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let data_dir = c.nodes[0].data_dir.clone();
    let _ = std::fs::remove_dir_all(&data_dir);
    std::fs::write(&data_dir, "a file").unwrap();
    let stderr = refused("a data dir that is a file");
    assert!(
        stderr.contains("node.data_dir") && stderr.contains("is a file"),
        "{stderr}"
    );
    std::fs::remove_file(&data_dir).unwrap();
    let out = muster(&["config", "check", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(text(&out).0.contains("# node.listen = "), "{}", text(&out).0);
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
    // Node 2 shows /status in detail; node 1 keeps the default summary.
    let cfg = std::fs::read_to_string(&c.nodes[1].config).unwrap();
    let cfg = cfg.replacen("[http]\n", "[http]\nstatus_detail = true\n", 1);
    std::fs::write(&c.nodes[1].config, cfg).unwrap();
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
    // A healthy cluster reads as one from /status too (no peer calls: recent contact).
    let healthy = async || {
        let (_, body) = http_get(http, "/status");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["membership"]["in_sync"] == true && v["membership"]["running"].as_array().map(Vec::len) == Some(2)
    };
    assert!(
        muster_test_support::eventually(Duration::from_secs(10), healthy)
            .await
            .is_some(),
        "/status: {}",
        http_get(http, "/status").1
    );
    assert!(v["formation"]["trace"].as_array().unwrap().len() >= 2);
    // The log goes to a file: plain text, no colour codes.
    let log = c.log_since_start(1);
    assert!(log.contains("joined") || log.contains("formed"), "{log}");
    assert!(!log.contains('\u{1b}'), "ANSI escapes in a log file:\n{log}");
    // Without status_detail, /status names no other node and no cluster id.
    let (code, body) = http_get(c.nodes[0].http.unwrap(), "/status");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["members"], 2, "{body}");
    assert_eq!(v["ready"], true, "{body}");
    assert!(!body.contains(c.nodes[1].name.as_str()), "{body}");
    let cluster = c.status(0).await.unwrap().cluster.unwrap();
    assert!(!body.contains(&cluster.to_string()), "{body}");
    let (code, metrics) = http_get(http, "/metrics");
    assert_eq!(code, 200);
    for name in [
        "muster_formation_state{phase=\"formed\"} 1",
        "muster_discovery_calls_total",
        "muster_discovery_errors_total 0",
        "muster_joins_total 1",
        "muster_forgotten_nodes_total 0",
        "muster_reachable_peers",
        // OpenMetrics: every phase has a series (none vanishes), counters are typed, EOF ends.
        "muster_formation_state{phase=\"discovering\"} 0",
        "muster_formation_state{phase=\"failed\"} 0",
        "# TYPE muster_joins counter",
        "# TYPE muster_formation_state gauge",
    ] {
        assert!(metrics.contains(name), "{name} missing in:\n{metrics}");
    }
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    for help in metrics.lines().filter(|l| l.starts_with("# HELP")) {
        assert!(help.ends_with('.') && !help.ends_with(".."), "{help}");
    }
    // Node 2 heard the seed's notices (its intent, then that it formed) and told the seed of
    // its commitment: it decided on them at once, not at its interval.
    let counter = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in:\n{metrics}"))
    };
    assert!(
        counter("muster_formation_notices_received_total") >= 1.0,
        "{metrics}"
    );
    assert!(counter("muster_formation_notices_sent_total") >= 1.0, "{metrics}");
    // When it became ready with both members: after this test started, and not in the future.
    let changed = counter("muster_membership_changed_timestamp_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(changed > now - 120.0 && changed <= now, "{changed} vs now {now}");
    // A notice comes from a peer (the channel names it), never from the CLI.
    match c.call(1, &muster_node::proto::Request::Notice).await {
        Ok(muster_node::proto::Response::Error { message }) => {
            assert!(message.contains("from a peer"), "{message}")
        }
        other => panic!("a CLI notice must be refused: {other:?}"),
    }
    assert_eq!(http_get(http, "/nope").0, 404);
}

/// Sends raw bytes on `s` and reads one response (head and `Content-Length` body).
fn exchange(s: &mut std::net::TcpStream, request: &str, has_body: bool) -> (String, String) {
    use std::io::Read;
    s.write_all(request.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).unwrap(),
            1,
            "connection closed mid-head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; if has_body { len } else { 0 }];
    s.read_exact(&mut body).unwrap();
    (head, String::from_utf8(body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_keeps_alive_answers_head_refuses_other_methods_and_closes_idle_connections() {
    use std::io::Read;
    let (_dir, mut c) = local_cluster(&Layout {
        nodes: 1,
        http: true,
        ..Layout::default()
    });
    c.start_all().unwrap();
    c.wait_members(&[0], 1, Duration::from_secs(20)).await.unwrap();
    let http = c.nodes[0].http.unwrap();
    let mut s = std::net::TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    // Several requests on one connection.
    let get = "GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n";
    for _ in 0..3 {
        let (head, body) = exchange(&mut s, get, true);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, "ok\n");
    }
    // HEAD: the GET's head, with its length, and no body.
    let (head, _) = exchange(&mut s, "HEAD /metrics HTTP/1.1\r\nHost: t\r\n\r\n", false);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    let (head, _) = exchange(
        &mut s,
        "POST /health/live HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
        true,
    );
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    // The connection still works, then is closed once idle past the head deadline.
    let (head, _) = exchange(&mut s, get, true);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let idle = std::time::Instant::now();
    let mut rest = Vec::new();
    let n = s.read_to_end(&mut rest).unwrap_or(0);
    let waited = idle.elapsed();
    assert!(
        n == 0 || String::from_utf8_lossy(&rest).contains("408"),
        "{rest:?}"
    );
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(12),
        "an idle keep-alive connection is closed after the head deadline (5 s), not {waited:?}"
    );
    // An oversized head is refused, and the node keeps serving.
    let mut big = std::net::TcpStream::connect(http).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let huge = format!(
        "GET /health/live HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let _ = big.write_all(huge.as_bytes());
    let mut answer = String::new();
    let _ = big.read_to_string(&mut answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
        "{answer}"
    );
    assert_eq!(http_get(http, "/health/live").0, 200);
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

/// `muster config check` with the Pi's cookie and data dir standing in temp files (config check
/// checks them as start does).
fn check_on_a_pi(config: &str) -> std::process::Output {
    let pi = tempfile::tempdir().unwrap();
    let cookie = pi.path().join("cookie");
    muster_node::cookie::Cookie::generate(&cookie).unwrap();
    Command::new(node_exe!())
        .args(["config", "check", config])
        .env_remove("MUSTER_COOKIE")
        .env("MUSTER_COOKIE_FILE", &cookie)
        .env("MUSTER_DATA_DIR", pi.path().join("data"))
        .output()
        .unwrap()
}

#[test]
fn the_home_lan_deploy_config_is_valid_as_shipped() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/home-lan/muster.toml");
    let out = check_on_a_pi(path);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("muster@rpi-node4"), "{stdout}");
    let shipped = std::fs::read_to_string(path).unwrap();
    for pi in ["rpi-node1", "rpi-node2", "rpi-node3", "rpi-node4"] {
        let edited = shipped.replace("name = \"muster@rpi-master\"", &format!("name = \"muster@{pi}\""));
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), edited).unwrap();
        let out = check_on_a_pi(file.path().to_str().unwrap());
        assert!(out.status.success(), "{pi}: {}", text(&out).1);
    }
}

/// Liveness and metadata for tools: a paused member (SIGSTOP) shows as unreachable in `ctl
/// members` and in `/members`, whose long poll (`?after=V`) returns with the change; it is up again
/// after SIGCONT; without `status_detail` `/members` gives counts only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_show_liveness_through_ctl_and_a_long_polled_http_watch() {
    let layout = Layout {
        nodes: 3,
        http: true,
        ..Layout::default()
    };
    let (_dir, mut c) = local_cluster(&layout);
    let cfg = std::fs::read_to_string(&c.nodes[0].config).unwrap();
    std::fs::write(
        &c.nodes[0].config,
        cfg.replacen("[http]\n", "[http]\nstatus_detail = true\n", 1),
    )
    .unwrap();
    c.start_all().unwrap();
    c.wait_members(&[0, 1, 2], 3, Duration::from_secs(20))
        .await
        .unwrap();
    let http = c.nodes[0].http.unwrap();
    let up = |body: &str| body.matches("\"status\": \"up\"").count();
    let started = std::time::Instant::now();
    let mut body = String::new();
    while started.elapsed() < Duration::from_secs(10) {
        body = http_get(http, "/members").1;
        if up(&body) == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(up(&body), 3, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let version = v["version"].as_u64().unwrap();
    let (out, _) = text(&ctl(&c, 0, &["members"]));
    assert_eq!(out.matches(" up ").count(), 3, "{out}");

    // Pause node 2: the long poll returns with the change, and ctl shows it.
    let paused = c.nodes[2].name.to_string();
    let watch = tokio::task::spawn_blocking(move || http_get(http, &format!("/members?after={version}")));
    c.signal(2, libc::SIGSTOP).unwrap();
    let (code, changed) = watch.await.unwrap();
    assert_eq!(code, 200, "{changed}");
    let v: serde_json::Value = serde_json::from_str(&changed).unwrap();
    assert!(v["version"].as_u64().unwrap() > version, "{changed}");
    let started = std::time::Instant::now();
    loop {
        let (out, _) = text(&ctl(&c, 0, &["members"]));
        if out
            .lines()
            .any(|l| l.contains(&paused) && l.contains("unreachable"))
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never unreachable:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.signal(2, libc::SIGCONT).unwrap();
    let started = std::time::Instant::now();
    loop {
        let (out, _) = text(&ctl(&c, 0, &["members", "--json"]));
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let all_up = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["status"] == "up");
        if all_up {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not up again after SIGCONT:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Node 1 keeps the default: counts, no names (its own detector sees node 2 up again a
    // moment after node 0's may).
    let started = std::time::Instant::now();
    loop {
        let (_, summary) = http_get(c.nodes[1].http.unwrap(), "/members");
        assert!(!summary.contains(&paused), "{summary}");
        if summary.contains("\"up\": 3") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "node 1 never counts three up:\n{summary}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, _) = http_get(http, "/members?after=x");
    assert_eq!(code, 400);
    c.stop_all(Duration::from_secs(5)).await;
}
