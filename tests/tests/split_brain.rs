//! Split-brain recipes with real `muster` processes on loopback: the five-step recipe (a killed,
//! wiped member and a blank newcomer start while the last member of the old cluster is down),
//! which must never end with two ready clusters, and RabbitMQ's inconsistent-cluster check.

use std::collections::BTreeSet;
use std::time::Duration;

use muster_tests::faults::persisted;
use muster_tests::{Layout, LocalCluster, cluster_status, local_cluster_of, node_exe, relist};

const FORM: Duration = Duration::from_secs(20);
const GRACE: Duration = Duration::from_secs(5);

fn local_cluster(nodes: usize) -> (tempfile::TempDir, LocalCluster) {
    let layout = Layout {
        nodes,
        ..Layout::default()
    };
    local_cluster_of(&node_exe!(), &layout)
}

/// The clusters that have at least one ready node among `which` (nodes not answering skipped).
async fn ready_clusters(c: &LocalCluster, which: &[usize]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for &i in which {
        if let Some(s) = c.status(i).await
            && s.ready
            && let Some(id) = s.cluster
        {
            out.insert(id.to_string());
        }
    }
    out
}

/// Samples for `d` that never two clusters are ready at once, and that nothing is formed when
/// `none_ready` says so.
async fn watch_for(c: &LocalCluster, which: &[usize], d: Duration, none_ready: bool) {
    let until = tokio::time::Instant::now() + d;
    while tokio::time::Instant::now() < until {
        let ready = ready_clusters(c, which).await;
        assert!(ready.len() <= 1, "two ready clusters: {ready:?}");
        if none_ready {
            assert!(ready.is_empty(), "formed while a listed node was down: {ready:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The five-step recipe, run as written with the README quick-start layout (three nodes,
/// classic list). If nodes 1 and 3 formed while node 2 was down, the run would end with node 2
/// ready in the old cluster and nodes 1 and 3 ready in a new one. A first formation needs every
/// listed node, so the run ends with one cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_five_step_recipe_never_ends_in_two_ready_clusters() {
    let (_dir, mut c) = local_cluster(3);
    // 1. start nodes 1 and 2 only: they wait for node 3 (a listed node may hold a cluster).
    c.start(0).unwrap();
    c.start(1).unwrap();
    watch_for(&c, &[0, 1], Duration::from_secs(3), true).await;
    let detail = c.status(0).await.expect("node 1 answers").detail;
    assert!(
        detail.contains("3 required") && detail.contains(c.nodes[2].name.as_str()),
        "node 1 says what it waits for: {detail}"
    );
    // 2. kill -9 node 1; stop node 2 gracefully.
    c.kill(0).unwrap();
    c.stop(1, GRACE).await.unwrap();
    // 3. delete node 1's data dir.
    std::fs::remove_dir_all(&c.nodes[0].data_dir).ok();
    // 4. start nodes 1 and 3: still no formation without node 2.
    c.start(0).unwrap();
    c.start(2).unwrap();
    watch_for(&c, &[0, 2], Duration::from_secs(3), true).await;
    // 5. start node 2: one cluster with all three, never two ready clusters on the way.
    c.start(1).unwrap();
    let all = [0, 1, 2];
    c.wait_members(&all, 3, FORM).await.unwrap();
    watch_for(&c, &all, Duration::from_secs(1), false).await;
    let clusters: BTreeSet<String> = all
        .iter()
        .map(|i| cluster_status(&c, *i)["cluster"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(clusters.len(), 1, "{clusters:?}");
    c.stop_all(GRACE).await;
}

/// The same recipe after a real formation: X = {1,2,3}; node 3 stops, node 1 is killed, node 2
/// stops (not the last: nothing says node 1 stopped); node 1's disk is wiped; 1 and 3 start (3
/// waits for its peers, 1 for node 2), then node 2 starts: every known member is back (3 waiting,
/// 1 blank), node 2 is the lowest holder and boots X, and everyone ends in X.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_and_a_waiting_member_rejoin_the_cluster_the_lowest_holder_boots() {
    let (_dir, mut c) = local_cluster(3);
    let all = [0, 1, 2];
    c.start_all().unwrap();
    c.wait_members(&all, 3, FORM).await.unwrap();
    let x = cluster_status(&c, 0)["cluster"].clone();
    c.stop(2, GRACE).await.unwrap();
    c.kill(0).unwrap();
    c.stop(1, GRACE).await.unwrap();
    std::fs::remove_dir_all(&c.nodes[0].data_dir).ok();
    c.start(0).unwrap();
    c.start(2).unwrap();
    watch_for(&c, &[0, 2], Duration::from_secs(3), true).await;
    c.start(1).unwrap();
    c.wait_members(&all, 3, FORM).await.unwrap();
    for i in all {
        assert_eq!(cluster_status(&c, i)["cluster"], x, "node {i}");
    }
    c.stop_all(GRACE).await;
}

/// Node 1 runs cluster X = {1,2,3}; nodes 2 and 3 are wiped and form Y from a list without node
/// 1. Node 1's status shows them as members of another cluster, never as running, and node 1
/// stops serving with the inconsistent-cluster refusal; stopped and started again, it refuses to
/// boot, naming both clusters and the commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_peers_are_in_another_cluster_shows_them_so_and_refuses_to_restart() {
    let (_dir, mut c) = local_cluster(3);
    let all = [0, 1, 2];
    c.start_all().unwrap();
    c.wait_members(&all, 3, FORM).await.unwrap();
    let x = cluster_status(&c, 0)["cluster"].as_str().unwrap().to_string();
    for i in [1, 2] {
        c.stop(i, GRACE).await.unwrap();
        std::fs::remove_dir_all(&c.nodes[i].data_dir).ok();
        relist(&c, i, &[1, 2]);
    }
    c.start(1).unwrap();
    c.start(2).unwrap();
    c.wait_members(&[1, 2], 2, FORM).await.unwrap();
    let y = cluster_status(&c, 1)["cluster"].as_str().unwrap().to_string();
    assert_ne!(x, y);

    // Anti-entropy (every 500 ms here) meets a member of Y: node 1 stops serving X.
    let stopped_serving = muster_test_support::eventually(Duration::from_secs(10), async || {
        c.status(0).await.is_some_and(|s| !s.ready)
    })
    .await;
    assert!(
        stopped_serving.is_some(),
        "node 1 still serves X: {}",
        c.log_tail(0, 10)
    );
    let s = cluster_status(&c, 0);
    assert_eq!(s["running"].as_array().unwrap().len(), 0, "{s}");
    let detail = s["detail"].as_str().unwrap();
    for needle in [x.as_str(), y.as_str(), "inconsistent cluster", "reset"] {
        assert!(detail.contains(needle), "the detail names {needle}: {detail}");
    }
    let foreign = s["foreign"].as_array().expect("foreign peers listed");
    assert_eq!(foreign.len(), 2, "{s}");
    for f in foreign {
        assert_eq!(f["cluster"].as_str(), Some(y.as_str()), "{s}");
    }
    assert_eq!(s["in_sync"], false);
    let out = muster_tests::ctl(&c, 0, &["cluster-status"]);
    let (stdout, _) = muster_tests::text(&out);
    assert!(
        stdout.contains("NOT IN THIS CLUSTER") && stdout.contains(&y),
        "{stdout}"
    );

    c.stop(0, GRACE).await.unwrap();
    c.start(0).unwrap();
    let status = c
        .wait_exit(0, Duration::from_secs(15))
        .await
        .unwrap()
        .expect("it ran");
    assert!(!status.success(), "node 1 refuses to start");
    let log = c.log_tail(0, 10);
    for needle in [x.as_str(), y.as_str(), "inconsistent cluster", "reset"] {
        assert!(log.contains(needle), "the refusal names {needle}:\n{log}");
    }
    c.stop_all(GRACE).await;
}

/// A node stopped while it still waits in its restart window never ran, so it must not record
/// itself as the last to stop (and then boot first, alone, on stale data next time):
/// docs/formation.md, "Restarts".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_in_its_restart_window_is_not_the_last_to_stop() {
    let (_dir, mut c) = local_cluster(3);
    let all = [0, 1, 2];
    c.start_all().unwrap();
    c.wait_members(&all, 3, FORM).await.unwrap();
    for i in all {
        c.stop(i, GRACE).await.unwrap();
    }
    // Node 1 stopped first: it waits for the others; stop it while it waits.
    c.start(0).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = c.status(0).await.expect("node 1 answers while it waits");
    assert!(
        !s.ready && s.detail.contains("waiting for a running member"),
        "{}",
        s.detail
    );
    c.stop(0, GRACE).await.unwrap();
    assert!(
        c.log_tail(0, 5).contains("last-to-stop left as recorded"),
        "{}",
        c.log_tail(0, 5)
    );
    // Started again, it still waits instead of booting alone.
    c.start(0).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = c.status(0).await.expect("node 1 answers");
    assert!(!s.ready, "node 1 booted alone: {}", s.detail);
    // The real last one to stop boots, and everyone follows.
    c.start(2).unwrap();
    c.start(1).unwrap();
    c.wait_members(&all, 3, FORM).await.unwrap();
    c.stop_all(GRACE).await;
}

/// Only a member that knows every other member stopped records itself as the last to stop.
/// Stopped one after the other (node 2, then node 1), node 1 is the last and boots alone. Node 2
/// frozen (SIGSTOP: it answers nothing, as behind a partition) while node 1 stops: nothing says
/// node 2 stopped, so node 1 is not the last; it waits at its restart, and once both are back the
/// lowest holder boots and they are one cluster again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_peer_did_not_answer_at_its_stop_is_not_the_last_to_stop() {
    let (_dir, mut c) = local_cluster(2);
    let all = [0, 1];
    c.start_all().unwrap();
    c.wait_members(&all, 2, FORM).await.unwrap();
    let x = cluster_status(&c, 0)["cluster"].clone();
    let last = |c: &LocalCluster, i: usize| persisted(&c.nodes[i].data_dir).unwrap().last_to_stop;
    c.stop(1, GRACE).await.unwrap();
    c.stop(0, GRACE).await.unwrap();
    assert!(
        last(&c, 0) && !last(&c, 1),
        "stopped 2 then 1: node 1 is the last"
    );
    c.start(0).unwrap();
    c.wait_members(&[0], 2, FORM).await.unwrap();
    c.start(1).unwrap();
    c.wait_members(&all, 2, FORM).await.unwrap();

    c.signal(1, libc::SIGSTOP).unwrap();
    c.stop(0, GRACE).await.unwrap();
    assert!(
        !last(&c, 0),
        "node 1 recorded itself last while node 2 may still run"
    );
    // Node 2 dies while frozen; node 1 waits for it, then the two are one cluster again.
    c.kill(1).unwrap();
    c.start(0).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = c.status(0).await.expect("node 1 answers while it waits");
    assert!(!s.ready, "node 1 booted alone: {}", s.detail);
    c.start(1).unwrap();
    c.wait_members(&all, 2, FORM).await.unwrap();
    for i in all {
        assert_eq!(cluster_status(&c, i)["cluster"], x, "node {i}");
    }
    c.stop_all(GRACE).await;
}
