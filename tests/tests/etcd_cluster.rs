//! Real `muster` node processes with the etcd backend against a real etcd server.

use std::time::{Duration, Instant};

use muster_test_support::etcd::EtcdServer;
use muster_test_support::eventually;
use muster_tests::{Layout, LocalCluster, cluster_status, http_get, local_cluster_of, members, node_exe};

const FORM: Duration = Duration::from_secs(30);
const GRACE: Duration = Duration::from_secs(5);

fn etcd_layout(server: &EtcdServer, nodes: usize, formation: &str, extra: &str) -> Layout {
    let tables = server.formation_table();
    Layout {
        nodes,
        backend: Some(("etcd".into(), tables)),
        formation: format!(
            "discovery_retry_interval = \"100ms\"\nprobe_timeout = \"250ms\"\nstable_margin = \"1s\"\n{formation}"
        ),
        extra: extra.into(),
        ..Layout::default()
    }
}

fn cluster(layout: &Layout) -> (tempfile::TempDir, LocalCluster) {
    local_cluster_of(&node_exe!(), layout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_with_etcd_started_at_once_form_one_cluster_ten_times() {
    let server = EtcdServer::start().await;
    for round in 1..=10 {
        // A fresh key space per round: another cluster_name in etcd.
        let mut layout = etcd_layout(&server, 5, "", "");
        if let Some((_, t)) = layout.backend.as_mut() {
            t.push_str(&format!("cluster_name = \"round{round}\"\n"));
        }
        let (_dir, mut c) = cluster(&layout);
        c.start_all().unwrap();
        let all: Vec<usize> = (0..5).collect();
        if let Err(e) = c.wait_members(&all, 5, FORM).await {
            panic!("round {round}: {e}\n{}", c.log_tail(0, 20));
        }
        let ids: std::collections::BTreeSet<String> = (0..5)
            .map(|i| cluster_status(&c, i)["cluster"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids.len(), 1, "round {round}");
        let recorded = server
            .client()
            .await
            .get(format!("/muster/round{round}/cluster-id"), None)
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(recorded.kvs()[0].value()),
            *ids.first().unwrap(),
            "round {round}: the formed cluster is recorded in etcd"
        );
        c.stop_all(GRACE).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_for_ten_seconds_during_formation_then_one_cluster() {
    let mut server = EtcdServer::start().await;
    // Four expected candidates: the first three register and then wait for the fourth.
    let layout = etcd_layout(
        &server,
        4,
        "discovery_retry_limit = 600\ntarget_cluster_size_hint = 4\n",
        "",
    );
    let (_dir, mut c) = cluster(&layout);
    for i in 0..3 {
        c.start(i).unwrap();
    }
    let mut etcd = server.client().await;
    let mut registered = async || {
        let opts = etcd_client::GetOptions::new().with_prefix().with_keys_only();
        etcd.get("/muster/default/nodes/", Some(opts))
            .await
            .map(|r| r.kvs().len())
            .unwrap_or(0)
            == 3
    };
    let ok = eventually(Duration::from_secs(10), &mut registered)
        .await
        .is_some();
    assert!(ok, "three nodes registered");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..3 {
        let s = cluster_status(&c, i);
        assert!(s["cluster"].is_null(), "node {i} is still forming: {s}");
        assert!(
            s["detail"]
                .as_str()
                .unwrap()
                .contains("3 of 4 expected candidates"),
            "{s}"
        );
    }
    server.stop();
    tokio::time::sleep(Duration::from_secs(10)).await;
    for i in 0..3 {
        assert!(
            c.nodes[i].child.as_mut().unwrap().try_wait().unwrap().is_none(),
            "node {i} survived the outage"
        );
        let s = cluster_status(&c, i);
        assert!(
            s["cluster"].is_null(),
            "node {i} formed nothing while etcd was down: {s}"
        );
        assert!(
            s["detail"].as_str().unwrap().contains("backend error"),
            "node {i} says why it waits: {s}"
        );
    }
    server.restart().await;
    c.start(3).unwrap();
    c.wait_members(&[0, 1, 2, 3], 4, FORM).await.unwrap();
    let ids: std::collections::BTreeSet<String> = (0..4)
        .map(|i| cluster_status(&c, i)["cluster"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 1, "no second cluster");
}

fn cleanup_extra() -> &'static str {
    "\n[cluster_formation.node_cleanup]\ninterval = \"1s\"\nonly_log_warning = false\nconsecutive_absences = 2\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_forgotten_after_its_key_expires() {
    let server = EtcdServer::start().await;
    let layout = Layout {
        http: true,
        ..etcd_layout(&server, 3, "", cleanup_extra())
    };
    let (_dir, mut c) = cluster(&layout);
    c.start_all().unwrap();
    c.wait_members(&[0, 1, 2], 3, FORM).await.unwrap();
    // The registration is observable: cluster-status and /metrics.
    let s = cluster_status(&c, 0);
    assert!(
        s["registration"]
            .as_str()
            .unwrap()
            .contains("registered as /muster/default/nodes/"),
        "{s}"
    );
    let (_, metrics) = http_get(c.nodes[0].http.unwrap(), "/metrics");
    assert!(metrics.contains("muster_registered 1"), "{metrics}");
    assert!(metrics.contains("muster_re_registrations_total 0"), "{metrics}");
    c.kill(2).unwrap();
    let killed = Instant::now();
    c.wait_members(&[0, 1], 2, Duration::from_secs(20)).await.unwrap();
    let took = killed.elapsed();
    // node_ttl 5 s (the key outlives the process by up to that), then 2 rounds of 1 s.
    assert!(
        took >= Duration::from_secs(2),
        "not before the key expired: {took:?}"
    );
    assert!(took <= Duration::from_secs(12), "{took:?}");
    let gone = c.nodes[2].name.to_string();
    assert!(!members(&cluster_status(&c, 0)).contains(&gone));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_etcd_is_down_nobody_is_forgotten() {
    let mut server = EtcdServer::start().await;
    let (_dir, mut c) = cluster(&etcd_layout(&server, 3, "", cleanup_extra()));
    c.start_all().unwrap();
    c.wait_members(&[0, 1, 2], 3, FORM).await.unwrap();
    c.kill(2).unwrap();
    server.stop();
    tokio::time::sleep(Duration::from_secs(10)).await;
    for i in 0..2 {
        assert_eq!(
            members(&cluster_status(&c, i)).len(),
            3,
            "node {i} forgot nobody while etcd was down"
        );
    }
    assert!(
        c.log_tail(0, 200).contains("node cleanup skipped this round"),
        "{}",
        c.log_tail(0, 20)
    );
    server.restart().await;
    // Back up: the dead node's lease runs out and it is forgotten then.
    c.wait_members(&[0, 1], 2, Duration::from_secs(30)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blank_node_refuses_to_form_a_second_cluster_after_a_wipe() {
    let server = EtcdServer::start().await;
    let layout = etcd_layout(&server, 3, "discovery_retry_limit = 20\n", "");
    let (_dir, mut c) = cluster(&layout);
    c.start_all().unwrap();
    c.wait_members(&[0, 1, 2], 3, FORM).await.unwrap();
    let id = cluster_status(&c, 0)["cluster"].as_str().unwrap().to_string();
    c.stop_all(GRACE).await;
    for n in &c.nodes {
        std::fs::remove_dir_all(&n.data_dir).unwrap();
    }
    c.start(0).unwrap();
    let status = c.wait_exit(0, Duration::from_secs(30)).await.unwrap().unwrap();
    assert!(!status.success(), "the blank node must not form");
    let log = c.log_tail(0, 5);
    assert!(log.contains(&format!("cluster {id} exists")), "{log}");
    assert!(log.contains("refusing to form another"), "{log}");
    assert!(log.contains("start one of its members"), "{log}");
    assert!(log.contains("del /muster/default/cluster-id"), "{log}");
}
