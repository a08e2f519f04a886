//! Fault injection against real `muster` processes: partitions and random loss with
//! nftables in test hosts (network namespaces on a bridge), latency and jitter through a delaying
//! TCP proxy, SIGKILL and SIGSTOP at random moments of formation, a full disk (a small tmpfs as
//! the data dir), corrupted and truncated state files, and etcd partitioned from one node.
//!
//! Each scenario states its bound and its check, runs a few rounds by default and the full
//! counts of docs/reliability.md with `MUSTER_FAULT_ROUNDS=full`, and ends every round with the
//! invariant check of `muster_tests::faults::check_end`: one cluster id over every node that is
//! up, every node a member, nothing persisted lost. The test hosts need root and a private
//! network namespace (scripts/test.sh runs the tests under `unshare -n`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use muster_node::state::Store;
use muster_test_support::etcd::EtcdServer;
use muster_test_support::hosts::{DelayProxy, Hosts};
use muster_tests::faults::{Dice, Seen, check_end, persisted, probe, report, rounds};
use muster_tests::{Layout, LocalCluster, local_cluster_of, node_exe};

const FORM: Duration = Duration::from_secs(30);
/// Formation settings for fault rounds: fast polling, and retries for as long as a round lasts
/// (the shipped limit of 60 attempts would make a node waiting out a partition give up).
const FAST: &str = "discovery_retry_interval = \"100ms\"\nprobe_timeout = \"250ms\"\nstable_margin = \"1s\"\ndiscovery_retry_limit = 100000\n";
/// The peer port every node of a test host listens on.
const PORT: u16 = 4100;

/// A cluster whose node `i` runs in test host `i`, listening on that host's address.
fn host_cluster(
    hosts: &Hosts,
    n: usize,
    formation: &str,
    backend: Option<(String, String)>,
) -> (tempfile::TempDir, LocalCluster) {
    let names = (0..n)
        .map(|i| {
            let addr = SocketAddr::from((hosts.hosts[i].ip, PORT));
            (format!("h{}@{addr}", i + 1).parse().unwrap(), addr)
        })
        .collect();
    let layout = Layout {
        nodes: n,
        formation: formation.into(),
        names: Some(names),
        backend,
        ..Layout::default()
    };
    let (dir, mut c) = local_cluster_of(&node_exe!(), &layout);
    for i in 0..n {
        c.nodes[i].wrap = hosts.hosts[i].wrap();
    }
    (dir, c)
}

/// A cluster of `n` nodes on loopback with the fast fault-round settings.
fn loopback_cluster(n: usize) -> (tempfile::TempDir, LocalCluster) {
    let layout = Layout {
        nodes: n,
        formation: FAST.into(),
        ..Layout::default()
    };
    local_cluster_of(&node_exe!(), &layout)
}

fn all(n: usize) -> Vec<usize> {
    (0..n).collect()
}

/// Partition into 3+2 during a five-node parallel start (classic backend). Bound: while the
/// partition holds (3 s), at most one cluster id exists and no node of the side without the seed
/// is ready; after the heal, all five form one cluster within 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_two_partition_during_a_parallel_start_heals_into_one_cluster() {
    let n = rounds(2, 20);
    let started = Instant::now();
    let mut dice = Dice::new("partition 3+2");
    for round in 1..=n {
        let hosts = Hosts::new(5);
        let (_dir, mut c) = host_cluster(&hosts, 5, FAST, None);
        // h1 (the lowest name, the seed) is on the side of three; which nodes start first varies.
        hosts.partition(&[&[0, 1, 2], &[3, 4]]);
        let mut order = all(5);
        for i in (1..5).rev() {
            order.swap(i, dice.below(i as u64 + 1) as usize);
        }
        for &i in &order {
            c.start(i).unwrap();
        }
        let mut seen = Seen::default();
        seen.watch(&c, &all(5), Duration::from_secs(3)).await;
        assert!(
            !seen.ready.contains(&3) && !seen.ready.contains(&4),
            "round {round}: the side without the seed waits: {seen:?}"
        );
        hosts.heal();
        check_end(&mut c, &mut seen, &all(5), 5, FORM).await;
        eprintln!("round {round}/{n}: one cluster after the heal");
    }
    report(
        "partition 3+2 during a parallel start",
        n,
        started.elapsed(),
        "classic, 3 s partition",
    );
}

/// 200 ms ± 100 ms latency (each direction, each chunk) and 10 % loss (every packet a host
/// receives) on every link during a five-node parallel start. Bound: one cluster of five within
/// 90 s, never two cluster ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_jitter_and_loss_on_every_link_still_form_one_cluster() {
    let n = rounds(1, 20);
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for round in 1..=n {
        let hosts = Hosts::new(5);
        // Peers reach each other through a delaying proxy on the bridge (the test process's
        // address, one port per node); the launcher's own calls go straight to the node.
        let mut proxies = Vec::new();
        let mut names = Vec::new();
        for i in 0..5 {
            // A node listens on the port of its name: each node its own port, the proxy the same.
            let port = PORT + i as u16;
            let real = SocketAddr::from((hosts.hosts[i].ip, port));
            let listen = SocketAddr::from((hosts.controller, port));
            let proxy = DelayProxy::start(
                listen,
                real,
                Duration::from_millis(200),
                Duration::from_millis(100),
            )
            .await;
            names.push((format!("h{}@{}", i + 1, proxy.addr).parse().unwrap(), real));
            proxies.push(proxy);
        }
        let layout = Layout {
            nodes: 5,
            // The shipped timings stretched for a 400–600 ms round trip: a handshake and a call
            // take several.
            formation: "discovery_retry_interval = \"500ms\"\nprobe_timeout = \"5s\"\nstable_margin = \"11s\"\ndiscovery_retry_limit = 100000\n".into(),
            names: Some(names),
            ..Layout::default()
        };
        let (_dir, mut c) = local_cluster_of(&node_exe!(), &layout);
        for i in 0..5 {
            c.nodes[i].wrap = hosts.hosts[i].wrap();
        }
        hosts.loss(10);
        let t = Instant::now();
        c.start_all().unwrap();
        let mut seen = Seen::default();
        seen.watch(&c, &all(5), Duration::from_secs(2)).await;
        check_end(&mut c, &mut seen, &all(5), 5, Duration::from_secs(90)).await;
        slowest = slowest.max(t.elapsed());
        eprintln!("round {round}/{n}: one cluster in {:?}", t.elapsed());
    }
    report(
        "200 ms ± 100 ms latency, 10 % loss, parallel start",
        n,
        started.elapsed(),
        &format!("slowest formation {:.1} s", slowest.as_secs_f64()),
    );
}

/// A random node SIGKILLed at a random moment of a five-node parallel start (0–250 ms in), and
/// restarted 0–500 ms later. Bound: one cluster of five within 30 s of the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_at_a_random_moment_of_formation_restarts_into_the_one_cluster() {
    let n = rounds(5, 50);
    let started = Instant::now();
    let mut dice = Dice::new("kill storm");
    let mut persisted_before_kill = 0;
    for round in 1..=n {
        let (_dir, mut c) = loopback_cluster(5);
        c.start_all().unwrap();
        let victim = dice.below(5) as usize;
        let mut seen = Seen::default();
        let others: Vec<usize> = all(5).into_iter().filter(|i| *i != victim).collect();
        tokio::time::sleep(dice.millis(250)).await;
        c.kill(victim).unwrap();
        // What the victim had persisted when it died must survive its restart.
        let before = persisted(&c.nodes[victim].data_dir)
            .unwrap_or_else(|e| panic!("round {round}: the killed node's state reads: {e}"));
        seen.watch(&c, &others, dice.millis(500)).await;
        c.start(victim).unwrap();
        check_end(&mut c, &mut seen, &all(5), 5, FORM).await;
        if let Some(id) = before.state.cluster {
            persisted_before_kill += 1;
            assert!(
                seen.clusters.contains_key(&id),
                "round {round}: the victim kept its cluster {id}"
            );
        }
        eprintln!("round {round}/{n}: killed node {victim}, one cluster");
    }
    report(
        "SIGKILL of a random node at a random moment, restart",
        n,
        started.elapsed(),
        &format!("{persisted_before_kill} victims had persisted a cluster when killed"),
    );
}

/// The seed SIGSTOPped 0–200 ms into a five-node parallel start for 1 s (four times the
/// probe timeout), then resumed. Bound: never two cluster ids while it is frozen or after; one
/// cluster of five within 30 s of the SIGCONT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_paused_longer_than_the_probe_timeout_then_resumed_leaves_one_cluster() {
    let n = rounds(3, 20);
    let started = Instant::now();
    let mut dice = Dice::new("seed pause");
    for round in 1..=n {
        let (_dir, mut c) = loopback_cluster(5);
        // node1 sorts first: it is the seed.
        let seed = (0..5).min_by_key(|i| c.nodes[*i].name.to_string()).unwrap();
        c.start_all().unwrap();
        tokio::time::sleep(dice.millis(200)).await;
        c.signal(seed, libc::SIGSTOP).unwrap();
        let others: Vec<usize> = all(5).into_iter().filter(|i| *i != seed).collect();
        let mut seen = Seen::default();
        seen.watch(&c, &others, Duration::from_secs(1)).await;
        c.signal(seed, libc::SIGCONT).unwrap();
        check_end(&mut c, &mut seen, &all(5), 5, FORM).await;
        eprintln!("round {round}/{n}: one cluster after the seed resumed");
    }
    report(
        "seed SIGSTOPped 1 s (4 × probe_timeout) mid-formation",
        n,
        started.elapsed(),
        "",
    );
}

/// Cleanup with `only_log_warning = false` (etcd backend, etcd in its own host): node 3 is cut
/// off from etcd and from node 1 for longer than its key's TTL plus the cleanup rounds; node 2
/// still reaches it. Bound: nobody forgets node 3 (it is reachable by a member), and after the
/// heal the three are one cluster with node 3 registered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cut_off_from_etcd_and_one_peer_is_never_forgotten_while_another_reaches_it() {
    let started = Instant::now();
    let hosts = Hosts::new(4);
    let etcd = EtcdServer::start_in(&hosts.hosts[3]).await;
    let tables = format!(
        "{}\n[cluster_formation.node_cleanup]\ninterval = \"1s\"\nonly_log_warning = false\nconsecutive_absences = 2\n",
        etcd.formation_table()
    );
    let (_dir, mut c) = host_cluster(&hosts, 3, FAST, Some(("etcd".into(), tables)));
    c.start_all().unwrap();
    let mut seen = Seen::default();
    check_end(&mut c, &mut seen, &all(3), 3, FORM).await;
    // Cut node 3 (host 2) from etcd (host 3) and from node 1 (host 0).
    hosts.set_rules(2, &[hosts.hosts[3].ip, hosts.hosts[0].ip], 0);
    hosts.set_rules(3, &[hosts.hosts[2].ip], 0);
    hosts.set_rules(0, &[hosts.hosts[2].ip], 0);
    // Its key expires after at most 5 s; two 1 s cleanup rounds would then forget it.
    let mut etcd_client = etcd.client().await;
    let key = format!("/muster/default/nodes/{}", c.nodes[2].name);
    let expired = muster_test_support::eventually(Duration::from_secs(20), async || {
        etcd_client
            .get(key.as_str(), None)
            .await
            .is_ok_and(|r| r.kvs().is_empty())
    })
    .await;
    assert!(
        expired.is_some(),
        "node 3's key expired while it was cut off from etcd"
    );
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        for i in 0..3 {
            let info = probe(&c, i).await.expect("every node answers the test process");
            assert_eq!(
                info.members.len(),
                3,
                "node {} forgot a member: {:?}",
                i + 1,
                info.members
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Node 1 itself does not reach node 3: without the other member's word it would forget it.
    let status = c.status(0).await.expect("node 1 answers");
    assert!(
        !status.running.contains(&c.nodes[2].name),
        "node 1 does not reach node 3: {:?}",
        status.running
    );
    hosts.heal();
    check_end(&mut c, &mut seen, &all(3), 3, FORM).await;
    let back = muster_test_support::eventually(Duration::from_secs(20), async || {
        etcd_client
            .get(key.as_str(), None)
            .await
            .is_ok_and(|r| !r.kvs().is_empty())
    })
    .await;
    assert!(back.is_some(), "node 3 registered again after the heal");
    report(
        "member cut off from etcd and one peer beyond the cleanup window",
        1,
        started.elapsed(),
        &format!(
            "key expired after {:.1} s, then 6 s of 1 s cleanup rounds; forgotten: none",
            expired.unwrap().as_secs_f64()
        ),
    );
}

/// etcd (its own host) partitioned from one of three nodes during their parallel start.
/// Bound: never two cluster ids; the cut-off node forms nothing; after the heal (5 s), one
/// cluster of three within 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_partitioned_from_one_node_during_formation_still_one_cluster() {
    let n = rounds(1, 5);
    let started = Instant::now();
    for round in 1..=n {
        let hosts = Hosts::new(4);
        let etcd = EtcdServer::start_in(&hosts.hosts[3]).await;
        let tables = etcd.formation_table();
        let (_dir, mut c) = host_cluster(&hosts, 3, FAST, Some(("etcd".into(), tables)));
        hosts.set_rules(2, &[hosts.hosts[3].ip], 0);
        hosts.set_rules(3, &[hosts.hosts[2].ip], 0);
        c.start_all().unwrap();
        let mut seen = Seen::default();
        seen.watch(&c, &all(3), Duration::from_secs(5)).await;
        assert!(
            !seen.ready.contains(&2),
            "round {round}: the node without etcd formed nothing: {seen:?}"
        );
        hosts.heal();
        check_end(&mut c, &mut seen, &all(3), 3, FORM).await;
        eprintln!("round {round}/{n}: one cluster after the heal");
    }
    report(
        "etcd partitioned from one node during formation",
        n,
        started.elapsed(),
        "5 s partition",
    );
}

/// Runs node `i` with its data dir on a 1 MiB tmpfs of its own (a private mount namespace, so
/// the machine's mounts are untouched); the test reaches the files through /proc/<pid>/root.
fn on_small_tmpfs(c: &mut LocalCluster, i: usize) {
    let dir = c.nodes[i].data_dir.clone();
    std::fs::create_dir_all(&dir).unwrap();
    c.nodes[i].wrap = vec![
        "unshare".into(),
        "-m".into(),
        "--propagation".into(),
        "private".into(),
        "sh".into(),
        "-c".into(),
        "mount -t tmpfs -o size=1m tmpfs \"$0\" && exec \"$@\"".into(),
        dir.into_os_string(),
    ];
}

/// Node `i`'s data dir as its own mount namespace sees it.
fn seen_data_dir(c: &LocalCluster, i: usize) -> std::path::PathBuf {
    let pid = c.pid(i).expect("running");
    let dir = c.nodes[i].data_dir.strip_prefix("/").unwrap().to_path_buf();
    std::path::PathBuf::from(format!("/proc/{pid}/root")).join(dir)
}

/// Fills the filesystem under `dir` (a file `fill` until ENOSPC).
fn fill(dir: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("fill")).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
}

/// The data dir full when the node forms (the seed) or joins (another node). Bound: the node
/// logs an error naming its state file, leaves no partial state file, keeps retrying, and once
/// space is freed the three form one cluster with everything persisted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_data_dir_at_form_or_join_time_is_named_retried_and_leaves_no_partial_file() {
    let started = Instant::now();
    for (case, victim) in [("form", 0usize), ("join", 2)] {
        let (_dir, mut c) = loopback_cluster(3);
        on_small_tmpfs(&mut c, victim);
        // The victim starts alone (a first formation needs every listed node), then its disk
        // fills, then the others start.
        c.start(victim).unwrap();
        let mounted = muster_test_support::eventually(Duration::from_secs(10), async || {
            std::fs::read_to_string(format!("/proc/{}/mounts", c.pid(victim).unwrap()))
                .is_ok_and(|m| m.contains(&c.nodes[victim].data_dir.display().to_string()))
                && seen_data_dir(&c, victim).join("lock").exists()
        })
        .await;
        assert!(
            mounted.is_some(),
            "{case}: the victim runs on its tmpfs: {}",
            c.log_tail(victim, 20)
        );
        let dir = seen_data_dir(&c, victim);
        fill(&dir);
        for i in (0..3).filter(|i| *i != victim) {
            c.start(i).unwrap();
        }
        // Its first write of a slot (a new file) is the one the full disk refuses.
        let state = c.nodes[victim].data_dir.join("state.").display().to_string();
        let named = muster_test_support::eventually(Duration::from_secs(20), async || {
            c.log_since_start(victim)
                .contains(&format!("cannot write {state}"))
        })
        .await;
        assert!(
            named.is_some(),
            "{case}: the error names {state}: {}",
            c.log_tail(victim, 30)
        );
        assert!(
            c.log_since_start(victim).contains("No space left"),
            "{case}: and says why"
        );
        assert!(c.is_running(victim), "{case}: the node keeps running and retries");
        for tmp in ["state.a.tmp", "state.b.tmp"] {
            assert!(!dir.join(tmp).exists(), "{case}: no partial temp file {tmp}");
        }
        let on_disk = persisted(&dir).unwrap_or_else(|e| panic!("{case}: no partial state file: {e}"));
        assert_eq!(
            on_disk.state.cluster, None,
            "{case}: nothing of the refused write is on disk"
        );
        std::fs::remove_file(dir.join("fill")).unwrap();
        let mut seen = Seen::default();
        // check_end reads state files from the test's mount namespace: read the victim's here.
        c.wait_members(&all(3), 3, FORM)
            .await
            .unwrap_or_else(|e| panic!("{case}: {e}: {}", c.log_tail(victim, 30)));
        seen.sample(&c, &all(3)).await;
        let p = persisted(&dir).unwrap();
        assert_eq!(p.state.alive().len(), 3, "{case}: the victim persisted all three");
        assert_eq!(seen.clusters.len(), 1);
        eprintln!("{case}: named, retried, formed");
    }
    report(
        "data dir full at form and at join time",
        2,
        started.elapsed(),
        "error names the file; no partial file; retried",
    );
}

/// State slots damaged while the node is stopped. The newest slot alone torn (what a crash in
/// the middle of a save leaves): the node warns, naming it, and starts from the save before it,
/// in its cluster. Both slots corrupted or truncated: it refuses to start, naming both files and
/// the fix, and leaves them as they are; after the operator moves them away it starts blank and
/// rejoins the one cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_or_truncated_state_file_refuses_to_start_and_names_the_fix() {
    let started = Instant::now();
    let (_dir, mut c) = loopback_cluster(3);
    c.start_all().unwrap();
    let mut seen = Seen::default();
    check_end(&mut c, &mut seen, &all(3), 3, FORM).await;
    let slots = Store::unlocked(&c.nodes[1].data_dir).unwrap().slot_paths();
    let damage = |bytes: &[u8], how: &str| match how {
        "truncated" => bytes[..bytes.len() / 64].to_vec(),
        _ => {
            // A byte of the JSON, after the header line.
            let mut b = bytes.to_vec();
            let json = bytes.iter().position(|c| *c == b'{').expect("a slot holds JSON");
            b[json + 10] ^= 0x55;
            b
        }
    };
    for case in ["torn", "garbage", "truncated"] {
        c.stop(1, Duration::from_secs(5)).await.unwrap();
        let bytes = slots.clone().map(|p| std::fs::read(p).unwrap());
        let seq = |b: &[u8]| muster_node::state::slot::decode(b).map_or(0, |d| d.seq);
        let newest = usize::from(seq(&bytes[1]) > seq(&bytes[0]));
        if case == "torn" {
            std::fs::write(&slots[newest], damage(&bytes[newest], "garbage")).unwrap();
            c.start(1).unwrap();
            check_end(&mut c, &mut seen, &all(3), 3, FORM).await;
            let log = c.log_since_start(1);
            assert!(
                log.contains(&format!("{} is torn or damaged", slots[newest].display())),
                "{case}: the node names the torn slot: {log}"
            );
            continue;
        }
        let broken = bytes.clone().map(|b| damage(&b, case));
        for (p, b) in slots.iter().zip(&broken) {
            std::fs::write(p, b).unwrap();
        }
        c.start(1).unwrap();
        let status = c
            .wait_exit(1, Duration::from_secs(10))
            .await
            .unwrap()
            .expect("it exits");
        assert!(!status.success(), "{case}: refuses to start");
        let log = c.log_since_start(1);
        for p in &slots {
            assert!(
                log.contains(&format!("{} is corrupt", p.display())),
                "{case}: names {}: {log}",
                p.display()
            );
        }
        assert!(
            log.contains("move them away to reset the node"),
            "{case}: and the fix: {log}"
        );
        for (p, b) in slots.iter().zip(&broken) {
            assert_eq!(
                &std::fs::read(p).unwrap(),
                b,
                "{case}: the files are left for the operator"
            );
            let mut moved = p.as_os_str().to_owned();
            moved.push(format!(".{case}"));
            std::fs::rename(p, moved).unwrap();
        }
        c.start(1).unwrap();
        check_end(&mut c, &mut seen, &all(3), 3, FORM).await;
    }
    report(
        "torn, corrupted and truncated state slots",
        3,
        started.elapsed(),
        "a torn newest slot falls back, named; both broken: refused with the files and the fix; rejoined after the reset",
    );
}

/// The harness itself: a host cut off from another cannot reach it, a heal restores it, and
/// the test process reaches every host throughout.
#[test]
fn the_test_hosts_partition_and_heal_through_nftables() {
    let hosts = Hosts::new(2);
    let target = SocketAddr::from((hosts.hosts[1].ip, 9000));
    let listener = hosts.hosts[1].enter(move || std::net::TcpListener::bind(target).unwrap());
    let reaches = |from: usize| {
        hosts.hosts[from]
            .enter(move || std::net::TcpStream::connect_timeout(&target, Duration::from_millis(300)).is_ok())
    };
    assert!(reaches(0), "host 1 reaches host 2");
    hosts.cut(0, &[1]);
    assert!(!reaches(0), "not once cut off");
    assert!(
        std::net::TcpStream::connect_timeout(&target, Duration::from_millis(300)).is_ok(),
        "the test process still does"
    );
    hosts.heal();
    assert!(reaches(0), "again after the heal");
    drop(listener);
}

/// 10 % loss of every packet each host receives, on a formed cluster of five, for 30 s (10
/// minutes with `MUSTER_FAULT_ROUNDS=full`): no member is ever reported unreachable, since a
/// member that one connection has not heard from lately is marked only when the members asked
/// did not hear from it either. Then one node is paused: the others report it unreachable within
/// 5 s, through the same loss (the check can fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_loss_never_marks_a_live_member_unreachable() {
    let window = match std::env::var("MUSTER_FAULT_ROUNDS").as_deref() {
        Ok("full") => Duration::from_secs(600),
        _ => Duration::from_secs(30),
    };
    let hosts = Hosts::new(5);
    let (_dir, mut c) = host_cluster(&hosts, 5, FAST, None);
    c.start_all().unwrap();
    c.wait_members(&all(5), 5, FORM).await.unwrap();
    // Every member seen up by every node before the loss starts.
    tokio::time::sleep(Duration::from_secs(2)).await;
    hosts.loss(10);
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let false_reports: Vec<String> = (0..5)
        .flat_map(|i| {
            c.log_since_start(i)
                .lines()
                .filter(|l| l.contains("is unreachable"))
                .map(|l| format!("node {i}: {l}"))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        false_reports.is_empty(),
        "live members reported unreachable under 10 % loss:\n{}",
        false_reports.join("\n")
    );
    let paused = c.nodes[4].name.to_string();
    c.signal(4, libc::SIGSTOP).unwrap();
    let t = Instant::now();
    let reported = |c: &LocalCluster| {
        (0..4).all(|i| {
            c.log_since_start(i)
                .lines()
                .any(|l| l.contains("is unreachable") && l.contains(&paused))
        })
    };
    while !reported(&c) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "a paused member was not reported within 5 s under loss"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.signal(4, libc::SIGCONT).unwrap();
    report(
        "10 % loss on every host, formed cluster of five",
        1,
        started.elapsed(),
        &format!(
            "0 false unreachable over {} s; a paused member reported by all in {:.1} s",
            window.as_secs(),
            t.elapsed().as_secs_f64()
        ),
    );
    hosts.heal();
    c.stop_all(Duration::from_secs(5)).await;
}
