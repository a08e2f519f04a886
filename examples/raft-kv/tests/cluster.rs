//! raft-kv as real processes: five nodes started at once with random offsets form one Raft
//! cluster with one leader and five voters, `initialize` having run exactly once, and a write
//! through any node is readable on every node; a node whose disk is wiped comes back as a new
//! voter in place of its old id; killing the leader elects another and loses no acknowledged
//! write; a full stop and a restart in another order bring back the same Raft cluster and data.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use muster_cli::launch::Ports;
use muster_tests::{Layout, LocalCluster, http_get, try_http_get};

const WAIT: Duration = Duration::from_secs(60);

/// `n` raft-kv nodes on loopback (classic backend, tuned formation), each with a client port.
fn kv_cluster(n: usize) -> (tempfile::TempDir, LocalCluster, Vec<SocketAddr>) {
    kv_cluster_of(&Layout {
        nodes: n,
        prefix: "kv".into(),
        ..Layout::default()
    })
}

/// raft-kv nodes laid out as `layout` says (any backend), each with a client port.
fn kv_cluster_of(layout: &Layout) -> (tempfile::TempDir, LocalCluster, Vec<SocketAddr>) {
    let (dir, c) =
        muster_tests::local_cluster_of(std::path::Path::new(env!("CARGO_BIN_EXE_raft-kv")), layout);
    let mut ports = Ports::new();
    let mut apis = Vec::new();
    for node in &c.nodes {
        let api = SocketAddr::from(([127, 0, 0, 1], ports.take().unwrap()));
        let mut cfg = std::fs::read_to_string(&node.config).unwrap();
        cfg.push_str(&format!("\n[service]\nhttp = \"{api}\"\n"));
        std::fs::write(&node.config, cfg).unwrap();
        apis.push(api);
    }
    (dir, c, apis)
}

/// `n` raft-kv nodes started at once and settled: the cluster, the client addresses, the leader
/// and the voters.
async fn formed_kv_cluster(n: usize) -> (tempfile::TempDir, LocalCluster, Vec<SocketAddr>, (u64, Vec<u64>)) {
    let (dir, mut c, apis) = kv_cluster(n);
    c.start_all().unwrap();
    let settled = wait_settled(&apis, n, "formation", &c).await;
    (dir, c, apis, settled)
}

/// `GET /cluster` of every node, once each reports `voters` voters and the same leader.
fn settled(apis: &[SocketAddr], voters: usize) -> Option<(u64, Vec<u64>)> {
    let mut seen = None;
    for api in apis {
        let (code, body) = try_http_get(*api, "/cluster", Duration::from_secs(5)).ok()?;
        if code != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let leader = v["leader"].as_u64()?;
        let mut ids: Vec<u64> = v["voters"]
            .as_array()?
            .iter()
            .filter_map(|x| x.as_u64())
            .collect();
        ids.sort_unstable();
        if ids.len() != voters || seen.as_ref().is_some_and(|s| *s != (leader, ids.clone())) {
            return None;
        }
        seen = Some((leader, ids));
    }
    seen
}

/// The rounds a test runs: the number in environment variable `var`, else `default`.
fn rounds(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A number from the clock, for offsets and victims.
fn dice() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        .wrapping_mul(2654435761)
}

/// Starts every node, each 0–300 ms after the previous one.
async fn start_with_offsets(c: &mut LocalCluster, seed: u64) {
    for i in 0..c.nodes.len() {
        c.start(i).unwrap();
        let offset = (seed.wrapping_mul(i as u64 + 1).wrapping_mul(2654435761)) % 300;
        tokio::time::sleep(Duration::from_millis(offset)).await;
    }
}

/// Waits until every node in `apis` agrees on one leader and `voters` voters.
async fn wait_settled(apis: &[SocketAddr], voters: usize, what: &str, c: &LocalCluster) -> (u64, Vec<u64>) {
    wait_settled_with(apis, voters, what, c, |_, _| true).await
}

/// Like [`wait_settled`], until the leader and voters also satisfy `ok`.
async fn wait_settled_with(
    apis: &[SocketAddr],
    voters: usize,
    what: &str,
    c: &LocalCluster,
    ok: impl Fn(u64, &[u64]) -> bool,
) -> (u64, Vec<u64>) {
    let started = Instant::now();
    while started.elapsed() < WAIT {
        if let Some(v) = settled(apis, voters).filter(|(l, ids)| ok(*l, ids)) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let views: Vec<String> = apis
        .iter()
        .map(|api| {
            try_http_get(*api, "/cluster", Duration::from_secs(5)).map_or_else(|e| e.to_string(), |r| r.1)
        })
        .collect();
    let kept = keep_logs(c);
    let logs: String = (0..c.nodes.len()).map(|i| c.log_tail(i, 30)).collect();
    panic!(
        "{what}: no single leader with {voters} voters within {WAIT:?}\nviews: {views:#?}\nwhole logs in {}\n{logs}",
        kept.display()
    );
}

/// Copies every node's whole log to a directory that outlives the test, for a failure's reader.
fn keep_logs(c: &LocalCluster) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("raft-kv-failure-{}", dice() % 1_000_000));
    let _ = std::fs::create_dir_all(&dir);
    for (i, node) in c.nodes.iter().enumerate() {
        let _ = std::fs::copy(&node.log, dir.join(format!("node{i}.log")));
    }
    dir
}

/// Node `api`'s own Raft id.
fn id_of(api: SocketAddr) -> u64 {
    let v: serde_json::Value = serde_json::from_str(&http_get(api, "/cluster").1).unwrap();
    v["id"].as_u64().unwrap()
}

/// Reads `key` on `api` until it equals `want` (replication takes a moment on followers).
async fn read_until(api: SocketAddr, key: &str, want: &str) -> String {
    let mut got = String::new();
    for _ in 0..100 {
        got = try_http_get(api, &format!("/kv/{key}"), Duration::from_secs(5))
            .map(|r| r.1)
            .unwrap_or_default();
        if got == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    got
}

fn put(api: SocketAddr, key: &str, value: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "PUT /kv/{key} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{value}",
        value.len()
    )
    .unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_started_at_once_form_one_raft_cluster_initialized_once() {
    let rounds = rounds("RAFT_KV_ROUNDS", 20);
    for round in 1..=rounds {
        let (_dir, mut c, apis) = kv_cluster(5);
        let seed = dice() ^ (round as u64 * 7919);
        start_with_offsets(&mut c, seed).await;
        let started = Instant::now();
        let (leader, voters) = wait_settled(&apis, 5, &format!("round {round}"), &c).await;
        let logs: String = (0..5).map(|i| c.log_since_start(i)).collect();
        let inits = logs.matches("initialized Raft for cluster").count();
        assert_eq!(inits, 1, "round {round}: initialize ran {inits} times\n{logs}");
        assert!(voters.contains(&leader));
        assert_eq!(
            put(apis[3], "round", &round.to_string()),
            200,
            "round {round}: a write through a follower"
        );
        for api in &apis {
            let mut got = String::new();
            for _ in 0..50 {
                got = http_get(*api, "/kv/round").1;
                if got == round.to_string() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(got, round.to_string(), "round {round}: read on {api}");
        }
        eprintln!(
            "round {round}: leader {leader}, five voters, {:.2} s after the last start",
            started.elapsed().as_secs_f64()
        );
        c.stop_all(Duration::from_secs(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_is_wiped_rejoins_as_a_new_voter_and_its_old_id_leaves() {
    let (_dir, mut c, apis, (_, before)) = formed_kv_cluster(3).await;
    let old = id_of(apis[2]);
    c.kill(2).unwrap();
    std::fs::remove_dir_all(&c.nodes[2].data_dir).unwrap();
    c.start(2).unwrap();
    let (_, after) = wait_settled_with(&apis, 3, "the wiped node replacing its old id", &c, |_, v| {
        !v.contains(&old)
    })
    .await;
    let new = id_of(apis[2]);
    assert_ne!(new, old, "a wiped node comes back under a new id");
    assert!(
        after.contains(&new) && before.contains(&old),
        "{before:?} -> {after:?}"
    );
    assert_eq!(put(apis[0], "after-wipe", "yes"), 200);
    assert_eq!(read_until(apis[2], "after-wipe", "yes").await, "yes");
    c.stop_all(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_elects_another_and_loses_no_acknowledged_write() {
    let (_dir, mut c, apis, (leader, _)) = formed_kv_cluster(3).await;
    let mut acknowledged = Vec::new();
    for k in 0..20 {
        if put(apis[k % 3], &format!("k{k}"), &format!("v{k}")) == 200 {
            acknowledged.push(k);
        }
    }
    assert_eq!(
        acknowledged.len(),
        20,
        "every write is acknowledged while the cluster is whole"
    );
    let victim = (0..3).find(|i| id_of(apis[*i]) == leader).unwrap();
    c.kill(victim).unwrap();
    let rest: Vec<SocketAddr> = (0..3).filter(|i| *i != victim).map(|i| apis[i]).collect();
    let (new_leader, _) = wait_settled_with(&rest, 3, "a new leader", &c, |l, _| l != leader).await;
    let to = (0..3)
        .find(|i| *i != victim && id_of(apis[*i]) == new_leader)
        .unwrap();
    for k in acknowledged {
        assert_eq!(
            read_until(apis[to], &format!("k{k}"), &format!("v{k}")).await,
            format!("v{k}")
        );
    }
    c.stop_all(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stop_and_a_restart_in_another_order_bring_back_the_same_raft_cluster() {
    let (_dir, mut c, apis, (_, voters)) = formed_kv_cluster(3).await;
    assert_eq!(put(apis[1], "kept", "across the restart"), 200);
    for api in &apis {
        assert_eq!(
            read_until(*api, "kept", "across the restart").await,
            "across the restart"
        );
    }
    c.stop_all(Duration::from_secs(5)).await;
    for i in [2, 0, 1] {
        c.start(i).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, again) = wait_settled(&apis, 3, "the restart", &c).await;
    assert_eq!(again, voters, "the same voters after the restart");
    for api in &apis {
        assert_eq!(
            read_until(*api, "kept", "across the restart").await,
            "across the restart"
        );
    }
    let logs: String = (0..3).map(|i| c.log_since_start(i)).collect();
    assert!(
        !logs.contains("initialized Raft for cluster"),
        "no second initialize at the restart\n{logs}"
    );
    c.stop_all(Duration::from_secs(5)).await;
}

/// Starts `c` at once and checks one Raft cluster: one leader, every node a voter, `initialize`
/// run once, a write through the last node readable on every node.
async fn forms_one_raft_cluster(c: &mut LocalCluster, apis: &[SocketAddr], what: &str) {
    let n = apis.len();
    c.start_all().unwrap();
    let (leader, voters) = wait_settled(apis, n, what, c).await;
    assert!(voters.contains(&leader), "{what}");
    let logs: String = (0..n).map(|i| c.log_since_start(i)).collect();
    let inits = logs.matches("initialized Raft for cluster").count();
    assert_eq!(inits, 1, "{what}: initialize ran {inits} times\n{logs}");
    assert_eq!(put(apis[n - 1], "backend", what), 200, "{what}: a write");
    for api in apis {
        assert_eq!(
            read_until(*api, "backend", what).await,
            what,
            "{what}: read on {api}"
        );
    }
    c.stop_all(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_through_etcd_form_one_raft_cluster() {
    let server = muster_test_support::etcd::EtcdServer::start().await;
    let tables = server.formation_table();
    let (_dir, mut c, apis) = kv_cluster_of(&Layout {
        nodes: 3,
        prefix: "kv".into(),
        backend: Some(("etcd".into(), tables)),
        ..Layout::default()
    });
    forms_one_raft_cluster(&mut c, &apis, "etcd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pods_of_a_statefulset_through_the_kubernetes_api_form_one_raft_cluster() {
    let pods = muster_test_support::k8s::StatefulSetPods {
        ns: "prod",
        ip_prefix: "127.0.21",
    };
    let fake = muster_test_support::k8s::FakeApi::start("kv-token").await;
    pods.scale(&fake, 3);
    let (_dir, mut c, apis) = kv_cluster_of(&pods.layout(&fake.kubeconfig("kv-token"), 3, "statefulset"));
    forms_one_raft_cluster(&mut c, &apis, "kubernetes").await;
}

/// A random node SIGKILLed at a random moment of formation (0–1 s after the last start, about
/// as long as formation takes) and restarted 0–500 ms later: one Raft cluster of five every time, `initialize` run once (a seed
/// killed inside its bootstrap completes it at the restart, where Raft answers "already
/// initialized"). One round by default, 50 with `RAFT_KV_KILL_ROUNDS=50`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_at_a_random_moment_of_formation_still_ends_in_one_raft_cluster() {
    let rounds = rounds("RAFT_KV_KILL_ROUNDS", 1);
    for round in 1..=rounds {
        let (_dir, mut c, apis) = kv_cluster(5);
        let seed = dice();
        let kill_at = Duration::from_millis(seed % 1000);
        let victim = (seed / 1000 % 5) as usize;
        let down = Duration::from_millis(seed / 5000 % 500);
        start_with_offsets(&mut c, seed).await;
        tokio::time::sleep(kill_at).await;
        c.kill(victim).unwrap();
        tokio::time::sleep(down).await;
        c.start(victim).unwrap();
        let what = format!(
            "round {round} (node {victim} killed {} ms after the last start, down {} ms)",
            kill_at.as_millis(),
            down.as_millis()
        );
        let (leader, voters) = wait_settled(&apis, 5, &what, &c).await;
        assert!(voters.contains(&leader), "{what}");
        let logs: String = (0..5)
            .map(|i| std::fs::read_to_string(&c.nodes[i].log).unwrap_or_default())
            .collect();
        let inits = logs.matches("initialized Raft for cluster").count();
        assert_eq!(inits, 1, "{what}: initialize ran {inits} times\n{logs}");
        eprintln!("{what}: one Raft cluster, leader {leader}");
        c.stop_all(Duration::from_secs(5)).await;
    }
}
