//! Real `muster` node processes on loopback: parallel formation, restarts, forget/reset/join,
//! authentication, hostile bytes, and cleanup.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use muster_tests::{
    Layout, LocalCluster, cluster_status, ctl, ctl_with_cookie, local_cluster_of, members, node_exe, relist,
    text,
};

fn local_cluster(layout: &Layout) -> (tempfile::TempDir, LocalCluster) {
    local_cluster_of(&node_exe!(), layout)
}

const FORM: Duration = Duration::from_secs(20);
const GRACE: Duration = Duration::from_secs(5);

fn layout(nodes: usize, extra: &str) -> Layout {
    Layout {
        nodes,
        extra: extra.to_string(),
        ..Layout::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_started_at_once_form_one_cluster_twenty_times() {
    for round in 1..=20 {
        let (_dir, mut c) = local_cluster(&layout(5, ""));
        c.start_all().unwrap();
        let all: Vec<usize> = (0..5).collect();
        if let Err(e) = c.wait_members(&all, 5, FORM).await {
            panic!("round {round}: {e}\n{}", c.log_tail(0, 20));
        }
        let expected: Vec<String> = c.nodes.iter().map(|n| n.name.to_string()).collect::<Vec<_>>();
        let mut expected_sorted = expected.clone();
        expected_sorted.sort();
        let mut clusters = std::collections::BTreeSet::new();
        for i in 0..5 {
            let s = cluster_status(&c, i);
            assert_eq!(members(&s), expected_sorted, "round {round}, node {i}");
            clusters.insert(s["cluster"].as_str().unwrap().to_string());
        }
        assert_eq!(
            clusters.len(),
            1,
            "round {round}: every node reports the same cluster"
        );
        c.stop_all(GRACE).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_full_stop_nodes_started_in_reverse_order_all_rejoin() {
    let (_dir, mut c) = local_cluster(&layout(5, ""));
    c.start_all().unwrap();
    let all: Vec<usize> = (0..5).collect();
    c.wait_members(&all, 5, FORM).await.unwrap();
    let cluster = cluster_status(&c, 0)["cluster"].clone();
    for i in 0..5 {
        c.stop(i, GRACE).await.unwrap();
    }
    // Node 5 stopped last; start the others first, in reverse order, then node 5 last.
    for i in (0..5).rev() {
        c.start(i).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    c.wait_members(&all, 5, FORM).await.unwrap();
    for i in 0..5 {
        let s = cluster_status(&c, i);
        assert_eq!(s["cluster"], cluster, "node {i} rejoined the same cluster");
        assert_eq!(s["running"].as_array().unwrap().len(), 5, "node {i}: {s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_returns_fails_the_restart_by_name_and_force_boot_starts_it() {
    let extra = "[cluster_formation.restart]\nretry_limit = 2\nretry_timeout = \"1s\"\n";
    let (_dir, mut c) = local_cluster(&layout(3, extra));
    c.start_all().unwrap();
    c.wait_members(&[0, 1, 2], 3, FORM).await.unwrap();
    for i in 0..3 {
        c.stop(i, GRACE).await.unwrap();
    }
    // Node 1 stopped first and is not the last to stop: it must wait for the others.
    c.start(0).unwrap();
    let started = Instant::now();
    let status = c
        .wait_exit(0, Duration::from_secs(15))
        .await
        .unwrap()
        .expect("it ran");
    let waited = started.elapsed();
    assert!(!status.success(), "the waiting node exits with an error");
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    let log = c.log_tail(0, 5);
    for peer in [&c.nodes[1].name, &c.nodes[2].name] {
        assert!(log.contains(peer.as_str()), "the error names {peer}:\n{log}");
    }
    assert!(log.contains("force-boot"), "the error names force-boot:\n{log}");

    let data_dir = c.nodes[0].data_dir.to_str().unwrap().to_string();
    let out = ctl(&c, 0, &["force-boot", "--data-dir", &data_dir]);
    assert!(out.status.success(), "{}", text(&out).1);
    c.start(0).unwrap();
    c.wait_members(&[0], 3, FORM).await.unwrap();
    let s = cluster_status(&c, 0);
    assert_eq!(s["ready"], true);
    assert_eq!(s["running"].as_array().unwrap().len(), 1, "{s}");
}

/// After a full stop where no node knows it was the last (all killed at once) and one node never
/// returns, the others say which node is missing and which may boot first with the command for
/// it; run on a waiting node, force-boot applies at once and the other joins it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_only_some_members_are_missing_the_waiting_ones_name_them_and_the_node_to_force_boot() {
    let (_dir, mut c) = local_cluster(&layout(3, ""));
    c.start_all().unwrap();
    c.wait_members(&[0, 1, 2], 3, FORM).await.unwrap();
    for i in 0..3 {
        c.kill(i).unwrap();
    }
    c.start(1).unwrap();
    c.start(2).unwrap();
    let missing = c.nodes[0].name.to_string();
    let lowest_back = c.nodes[1].name.to_string();
    let hint = format!("muster ctl --node {lowest_back} force-boot");
    let said = async || {
        let log = c.log_since_start(1) + &c.log_since_start(2);
        log.contains(&format!("missing: {missing}")) && log.contains(&hint)
    };
    assert!(
        muster_test_support::eventually(Duration::from_secs(20), said)
            .await
            .is_some(),
        "{}\n{}",
        c.log_since_start(1),
        c.log_since_start(2)
    );
    // The operator runs what the log says, on the node that waits now.
    let out = ctl(&c, 1, &["force-boot"]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(text(&out).0.contains("boots now"), "{}", text(&out).0);
    c.wait_members(&[1, 2], 3, FORM).await.unwrap();
    let s = cluster_status(&c, 2);
    assert_eq!(s["ready"], true, "{s}");
    assert!(
        c.log_since_start(1).contains("force-boot is set"),
        "{}",
        c.log_since_start(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_a_stopped_node_then_reset_and_join_again() {
    let (_dir, mut c) = local_cluster(&layout(3, ""));
    c.start_all().unwrap();
    c.wait_members(&[0, 1, 2], 3, FORM).await.unwrap();
    c.stop(2, GRACE).await.unwrap();
    let gone = c.nodes[2].name.to_string();
    let out = ctl(&c, 0, &["forget-cluster-node", &gone]);
    assert!(out.status.success(), "{}", text(&out).1);
    c.wait_members(&[0, 1], 2, FORM).await.unwrap();
    assert!(!members(&cluster_status(&c, 1)).contains(&gone));

    let out = ctl(&c, 1, &["reset"]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(text(&out).0.contains("was reset"), "{}", text(&out).0);
    assert!(
        cluster_status(&c, 1)["cluster"].is_null(),
        "reset leaves a blank node"
    );
    // Its status says so, not what formation said before.
    let formation = |i: usize| -> serde_json::Value {
        let out = ctl(&c, i, &["formation-status", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out).0))
    };
    let after_reset = formation(1);
    assert!(
        after_reset["detail"]
            .as_str()
            .unwrap()
            .starts_with("reset: left the cluster"),
        "{after_reset}"
    );
    assert!(after_reset["outcome"].is_null(), "{after_reset}");
    c.wait_members(&[0], 1, FORM).await.unwrap();

    let seed = c.nodes[0].name.to_string();
    let out = ctl(&c, 1, &["join-cluster", &seed]);
    assert!(out.status.success(), "{}", text(&out).1);
    c.wait_members(&[0, 1], 2, FORM).await.unwrap();
    assert_eq!(cluster_status(&c, 0)["cluster"], cluster_status(&c, 1)["cluster"]);
    let after_join = formation(1);
    let detail = after_join["detail"].as_str().unwrap();
    assert!(
        detail.contains("joined existing cluster") && detail.contains(&seed),
        "{after_join}"
    );
    let out = ctl(&c, 1, &["check-running"]);
    assert!(out.status.success(), "{}", text(&out).1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_cookie_is_rejected_on_both_sides_without_revealing_it() {
    let (dir, mut c) = local_cluster(&layout(1, ""));
    c.start_all().unwrap();
    c.wait_members(&[0], 1, FORM).await.unwrap();
    let wrong = dir.path().join("wrong-cookie");
    muster_node::cookie::Cookie::generate(&wrong).unwrap();
    let out = ctl_with_cookie(&c, 0, &wrong, &["ping"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(
        stderr.contains("authentication failed (cookie or cluster name mismatch?)"),
        "{stderr}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = c.log_tail(0, 50);
    assert!(
        log.contains("authentication failed (cookie or cluster name mismatch?)"),
        "{log}"
    );
    let cookie = std::fs::read_to_string(&c.cookie_file).unwrap();
    let wrong_value = std::fs::read_to_string(&wrong).unwrap();
    assert!(!log.contains(&cookie) && !log.contains(&wrong_value) && !stderr.contains(&wrong_value));
    assert!(
        ctl(&c, 0, &["ping"]).status.success(),
        "the right cookie still works"
    );
}

/// Nodes with different cookies never form, and the error they stop with names the cause
/// (authentication failed), not only that the peers were unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_different_cookies_give_up_naming_the_authentication_failure() {
    let (dir, mut c) = local_cluster(&layout(2, ""));
    let other = dir.path().join("other-cookie");
    muster_node::cookie::Cookie::generate(&other).unwrap();
    let cfg = std::fs::read_to_string(&c.nodes[1].config).unwrap();
    let cfg = cfg.replace(&c.cookie_file.display().to_string(), &other.display().to_string());
    std::fs::write(&c.nodes[1].config, cfg).unwrap();
    c.start_all().unwrap();
    for i in 0..2 {
        let exit = c.wait_exit(i, Duration::from_secs(30)).await.unwrap();
        assert!(exit.is_some_and(|s| !s.success()), "node {i} gave up: {exit:?}");
        let log = c.log_since_start(i);
        let last = log
            .lines()
            .rev()
            .find(|l| l.contains("gave up"))
            .unwrap_or_default();
        assert!(
            last.contains("authentication failed (cookie or cluster name mismatch?)"),
            "node {i}'s last words name the cause:\n{log}"
        );
    }
}

/// Anyone can fail a handshake, so a flood of them must not flood the log: 2,000 wrong-cookie
/// handshakes leave one warning per window, the later ones counting what they stand for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_wrong_cookies_logs_a_few_counted_warnings() {
    let (dir, mut c) = local_cluster(&layout(1, ""));
    c.start_all().unwrap();
    c.wait_members(&[0], 1, FORM).await.unwrap();
    let wrong = dir.path().join("wrong-cookie");
    muster_node::cookie::Cookie::generate(&wrong).unwrap();
    let creds = muster_node::client::Credentials {
        cookie: muster_node::cookie::Cookie::from_file(&wrong).unwrap(),
        cluster_name: "local".into(),
        node: None,
        tls: None,
    };
    let target = c.nodes[0].name.clone();
    let addr = c.nodes[0].listen.map(|a| vec![a]);
    let started = std::time::Instant::now();
    for _ in 0..2_000 {
        let out = muster_node::client::call_at(
            &creds,
            &target,
            addr.clone(),
            &muster_node::proto::Request::Ping,
            Duration::from_secs(2),
        )
        .await;
        assert!(out.is_err(), "a wrong cookie is refused");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = c.log_since_start(0);
    let warnings = log
        .matches("authentication failed (cookie or cluster name mismatch?)")
        .count() as u64;
    // One per window: the reason is the same every time.
    let most = started.elapsed().as_secs() / muster_node::log_limit::WINDOW.as_secs() + 1;
    assert!(
        (1..=most).contains(&warnings),
        "{warnings} warnings for 2,000 refusals (at most {most}, one per window):\n{log}"
    );
    assert!(
        ctl(&c, 0, &["ping"]).status.success(),
        "the right cookie still works"
    );
}

/// Connectors without the cookie cannot lock the operator or the health probes out: 384 idle
/// connections on each port from six addresses, reopened as fast as the node closes them, and
/// `ctl ping`, `/health/live` and a new member's join still work every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_flood_reopened_as_dropped_locks_out_neither_the_cli_nor_probes_nor_a_join() {
    let layout = Layout {
        nodes: 2,
        http: true,
        ..Layout::default()
    };
    let (_dir, mut c) = local_cluster(&layout);
    relist(&c, 0, &[0]);
    c.start(0).unwrap();
    c.wait_members(&[0], 1, FORM).await.unwrap();
    let http = c.nodes[0].http.unwrap();
    let flood = muster_tests::flood::IdleFlood::start(&[muster_tests::peer_socket(&c, 0), http], 384);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for round in 1..=5 {
        let out = tokio::task::block_in_place(|| ctl(&c, 0, &["ping"]));
        let (stdout, stderr) = text(&out);
        assert!(
            out.status.success(),
            "ping {round} under the flood: {stdout}{stderr}"
        );
        let (code, _) = tokio::task::block_in_place(|| muster_tests::http_get(http, "/health/live"));
        assert_eq!(code, 200, "/health/live {round} under the flood");
    }
    c.start(1).unwrap();
    let joined = c.wait_members(&[0, 1], 2, FORM).await;
    let reopened = flood.reopened();
    drop(flood);
    joined.unwrap_or_else(|e| panic!("a new member joins under the flood: {e}\n{}", c.log_tail(0, 20)));
    assert!(
        reopened > 384,
        "the flood did run: the node kept closing its connections"
    );
    c.stop_all(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_file_readable_by_others_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, mut c) = local_cluster(&layout(1, ""));
    std::fs::set_permissions(&c.cookie_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    c.start(0).unwrap();
    let status = c.wait_exit(0, Duration::from_secs(10)).await.unwrap().unwrap();
    assert!(!status.success());
    let log = c.log_tail(0, 5);
    assert!(log.contains("refusing to start"), "{log}");
    assert!(
        log.contains(&format!("chmod 600 {}", c.cookie_file.display())),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_huge_and_truncated_frames_do_not_hurt_the_node() {
    let (_dir, mut c) = local_cluster(&layout(1, ""));
    c.start_all().unwrap();
    c.wait_members(&[0], 1, FORM).await.unwrap();
    let addr = format!("127.0.0.1:{}", c.nodes[0].name.port().unwrap());
    // A stalled connection that sent half a frame stays open during the rest.
    let mut stalled = TcpStream::connect(&addr).unwrap();
    stalled.write_all(&100u32.to_be_bytes()).unwrap();
    stalled.write_all(b"{\"type\":").unwrap();
    let mut seed = 0x1234_5678_u64;
    for _ in 0..20 {
        let mut s = TcpStream::connect(&addr).unwrap();
        let bytes: Vec<u8> = (0..512)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = s.write_all(&bytes);
    }
    let mut huge = TcpStream::connect(&addr).unwrap();
    huge.write_all(&(2u32 << 30).to_be_bytes()).unwrap();
    let mut truncated = TcpStream::connect(&addr).unwrap();
    truncated.write_all(&64u32.to_be_bytes()).unwrap();
    truncated.write_all(b"{\"type\":\"hello\"").unwrap();
    drop(truncated);
    for _ in 0..3 {
        let out = ctl(&c, 0, &["ping"]);
        assert!(out.status.success(), "{}", text(&out).1);
        assert_eq!(members(&cluster_status(&c, 0)).len(), 1);
    }
    drop(stalled);
    drop(huge);
    let out = ctl(&c, 0, &["check-running"]);
    assert!(out.status.success(), "{}", text(&out).1);
}

fn cleanup_layout() -> Layout {
    layout(
        3,
        "\n[cluster_formation.node_cleanup]\ninterval = \"1s\"\nonly_log_warning = false\nconsecutive_absences = 2\n",
    )
}

/// Rewrites node i's classic list to `keep` (indices) and restarts it (rolling).
async fn relist_and_restart(c: &mut LocalCluster, i: usize, keep: &[usize]) {
    relist(c, i, keep);
    c.stop(i, GRACE).await.unwrap();
    c.start(i).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_forgets_a_stopped_unlisted_member_within_interval_times_absences() {
    let (_dir, mut c) = local_cluster(&cleanup_layout());
    c.start_all().unwrap();
    c.wait_members(&[0, 1, 2], 3, FORM).await.unwrap();
    c.stop(2, GRACE).await.unwrap();
    relist_and_restart(&mut c, 1, &[0, 1]).await;
    relist_and_restart(&mut c, 0, &[0, 1]).await;
    let restarted = Instant::now();
    // interval 1 s x 2 absences, plus formation and one propagation.
    c.wait_members(&[0, 1], 2, Duration::from_secs(8)).await.unwrap();
    let took = restarted.elapsed();
    assert!(took <= Duration::from_secs(5), "forgotten after {took:?}");
    let gone = c.nodes[2].name.to_string();
    assert!(!members(&cluster_status(&c, 0)).contains(&gone));
    // Whichever of the two runs its cleanup first forgets it; the other adopts the removal.
    let forgot = format!("forgot member {gone}");
    assert!(
        c.log_tail(0, 50).contains(&forgot) || c.log_tail(1, 50).contains(&forgot),
        "neither remaining node logged {forgot:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_never_forgets_a_running_member_even_when_unlisted() {
    let (_dir, mut c) = local_cluster(&cleanup_layout());
    c.start_all().unwrap();
    c.wait_members(&[0, 1, 2], 3, FORM).await.unwrap();
    relist_and_restart(&mut c, 1, &[0, 1]).await;
    relist_and_restart(&mut c, 0, &[0, 1]).await;
    c.wait_members(&[0, 1], 3, FORM).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await; // five cleanup intervals
    for i in 0..3 {
        assert_eq!(
            members(&cluster_status(&c, i)).len(),
            3,
            "node {i} kept every running member"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_joins_through_different_members_lose_nobody() {
    let (_dir, mut c) = local_cluster(&layout(4, ""));
    c.start_all().unwrap();
    let all = [0, 1, 2, 3];
    c.wait_members(&all, 4, FORM).await.unwrap();
    for i in [2, 3] {
        let out = ctl(&c, i, &["reset"]);
        assert!(out.status.success(), "{}", text(&out).1);
    }
    c.wait_members(&[0, 1], 2, FORM).await.unwrap();
    let (via_a, via_b) = (c.nodes[0].name.to_string(), c.nodes[1].name.to_string());
    let c = std::sync::Arc::new(c);
    let joins: Vec<_> = [(2, via_a), (3, via_b)]
        .into_iter()
        .map(|(i, via)| {
            let c = c.clone();
            std::thread::spawn(move || ctl(&c, i, &["join-cluster", &via]))
        })
        .collect();
    for j in joins {
        let out = j.join().unwrap();
        assert!(out.status.success(), "{}", text(&out).1);
    }
    c.wait_members(&all, 4, FORM).await.unwrap();
    let expected = members(&cluster_status(&c, 0));
    assert_eq!(expected.len(), 4);
    for i in 1..4 {
        assert_eq!(members(&cluster_status(&c, i)), expected, "node {i}");
    }
}
