//! Real node processes started one every 100 ms with the shipped formation settings (retry
//! interval, retry limit, `on_exhausted = "fail"`, probe timeout and stable margin untouched) all
//! form one cluster and none gives up: 30 nodes with the classic backend (`MUSTER_STAGGER_NODES=N`
//! starts N instead, e.g. 100 over 10 s), and 30 nodes discovered through SRV records served by
//! bind9. Each test prints N, the spread of the starts and how long after the last start every
//! node was formed.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use muster_cli::launch::Ports;
use muster_test_support::dns::{DnsServer, Zone, cluster_nodes};
use muster_tests::{Layout, LocalCluster, cluster_status, local_cluster_of, members, node_exe};

/// The pause between two starts.
const STAGGER: Duration = Duration::from_millis(100);

/// How long after the last start formation may take before the test fails: twice the shipped
/// retry budget (60 x 500 ms), so a node that gives up has done so well before.
const FORM: Duration = Duration::from_secs(60);

const GRACE: Duration = Duration::from_secs(5);

/// One test at a time in this binary, so the figures of one are not measured under the other's
/// nodes.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Nodes in the classic test: `MUSTER_STAGGER_NODES`, or 30.
fn classic_nodes() -> usize {
    match std::env::var("MUSTER_STAGGER_NODES") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("MUSTER_STAGGER_NODES={v:?} is not a number of nodes")),
        Err(_) => 30,
    }
}

/// Why node `i` gave up, if it did: its process exited, or its log says formation failed.
fn gave_up(c: &mut LocalCluster, i: usize) -> Option<String> {
    let log = c.log_since_start(i);
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("gave up") || l.contains("formation failed"))
        .collect();
    let exited = match c.nodes[i].child.as_mut().map(|ch| ch.try_wait()) {
        Some(Ok(Some(status))) => Some(format!("exited with {status}")),
        Some(Ok(None)) => None,
        Some(Err(e)) => Some(format!("cannot be waited on: {e}")),
        None => Some("not started".into()),
    };
    if failed.is_empty() && exited.is_none() {
        return None;
    }
    let lines: Vec<&str> = log.lines().collect();
    let tail = &lines[lines.len().saturating_sub(8)..];
    Some(format!(
        "{}: {}\n  {}\n  last lines:\n  {}",
        c.nodes[i].name,
        exited.unwrap_or_else(|| "still running".into()),
        failed.join("\n  "),
        tail.join("\n  ")
    ))
}

/// Starts every node of `c` one every [`STAGGER`], waits until each is formed with every node as
/// a member, prints the figures, and asserts one cluster, every member everywhere, and that no
/// node gave up. `context` adds to a failure message (the DNS server's log).
async fn start_staggered_and_check(label: &str, c: &mut LocalCluster, context: impl Fn() -> String) {
    let n = c.nodes.len();
    let all: Vec<usize> = (0..n).collect();
    let first = Instant::now();
    for i in 0..n {
        tokio::time::sleep_until((first + STAGGER * i as u32).into()).await;
        c.start(i).unwrap();
    }
    let started = |i: usize| c.nodes[i].started.expect("started");
    let (first, last) = (started(0), started(n - 1));
    let spread = last - first;
    let formed = c.wait_members(&all, n, FORM).await;
    let quitters: Vec<String> = (0..n).filter_map(|i| gave_up(c, i)).collect();
    let when = match &formed {
        Ok(times) => {
            let every = times.iter().max().expect("nodes").saturating_duration_since(last);
            format!("formed {:.2} s after the last start", every.as_secs_f64())
        }
        Err(_) => format!("not all formed within {} s of the last start", FORM.as_secs()),
    };
    println!(
        "staggered {label}: N={n} over {:.1} s, {when}, {} gave up",
        spread.as_secs_f64(),
        quitters.len()
    );
    assert!(
        quitters.is_empty(),
        "{} of {n} nodes gave up:\n{}\n{}",
        quitters.len(),
        quitters.join("\n"),
        context()
    );
    if let Err(e) = formed {
        panic!("{e}\nfirst node's log:\n{}\n{}", c.log_tail(0, 20), context());
    }

    let expected: Vec<String> = {
        let mut v: Vec<String> = c.nodes.iter().map(|n| n.name.to_string()).collect();
        v.sort();
        v
    };
    let mut ids = BTreeSet::new();
    for i in 0..n {
        let s = cluster_status(c, i);
        assert_eq!(s["ready"], true, "node {i}: {s}");
        let mut m = members(&s);
        m.sort();
        assert_eq!(m, expected, "node {i} lists every node as a member");
        ids.insert(s["cluster"].as_str().unwrap_or("none").to_string());
    }
    assert_eq!(ids.len(), 1, "every node reports the same cluster: {ids:?}");
    c.stop_all(GRACE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_started_one_every_100ms_with_shipped_settings_form_one_cluster_and_none_gives_up() {
    let _serial = SERIAL.lock().await;
    muster_tests::raise_open_files();
    let layout = Layout {
        nodes: classic_nodes(),
        // The shipped [cluster_formation] settings: nothing tuned.
        formation: String::new(),
        ..Layout::default()
    };
    let (_dir, mut c) = local_cluster_of(&node_exe!(), &layout);
    start_staggered_and_check("classic", &mut c, String::new).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_dns_nodes_started_one_every_100ms_with_shipped_settings_form_one_cluster() {
    const N: usize = 30;
    let _serial = SERIAL.lock().await;
    muster_tests::raise_open_files();
    let mut ports = Ports::new();
    let nodes = cluster_nodes(N, &mut ports);
    let zone = Zone::cluster(&nodes.iter().map(|(_, l)| *l).collect::<Vec<_>>());
    let dns = DnsServer::bind9(&zone).await;
    let tables = format!(
        "[cluster_formation.dns]\nsrv = \"_muster._tcp.cluster.test\"\nnameservers = [\"{}\"]\n",
        dns.addr
    );
    let layout = Layout {
        nodes: N,
        names: Some(nodes),
        backend: Some(("dns".into(), tables)),
        // DNS lists are not authoritative: the seed waits for more than half of the nodes.
        formation: format!("target_cluster_size_hint = {}\n", N / 2 + 1),
        ..Layout::default()
    };
    let (_dir, mut c) = local_cluster_of(&node_exe!(), &layout);
    start_staggered_and_check("dns", &mut c, || format!("bind9's log:\n{}", dns.log())).await;
}
