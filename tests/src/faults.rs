//! What every fault scenario checks, and how it reports: the one-cluster invariant sampled
//! during a round, the end state (one cluster id over every node that is up, every node a
//! member, every node's persisted state holding the cluster and all members), the round counts
//! (short by default, the full counts with `MUSTER_FAULT_ROUNDS=full`), and the report lines
//! `docs/reliability.md` quotes (appended to `$MUSTER_FAULT_REPORT` when set).

// Test harness: the indices and values are its own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use muster::{ClusterId, PeerInfo};
use muster_cli::launch::LocalCluster;
use muster_node::proto::{Request, Response};
use muster_node::state::{Persisted, Store};

/// Rounds for a scenario: `quick` by default, `full` (the full count) when
/// `MUSTER_FAULT_ROUNDS=full`, or the number `MUSTER_FAULT_ROUNDS` gives.
pub fn rounds(quick: usize, full: usize) -> usize {
    match std::env::var("MUSTER_FAULT_ROUNDS").as_deref() {
        Ok("full") => full,
        Ok(n) => n.parse().unwrap_or(quick),
        Err(_) => quick,
    }
}

/// A small deterministic-per-round random source (xorshift), seeded from the clock and printed,
/// so a failing round can be told apart from the others in the log.
pub struct Dice(u64);

impl Dice {
    /// A new source; prints its seed.
    pub fn new(scenario: &str) -> Dice {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        eprintln!("{scenario}: dice seed {seed}");
        Dice(seed)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }

    /// Uniform in `0..max`.
    pub fn millis(&mut self, max: u64) -> Duration {
        Duration::from_millis(self.below(max))
    }
}

/// What one round saw of the nodes, sample by sample.
#[derive(Debug, Default)]
pub struct Seen {
    /// Every cluster id any node reported, with the nodes that reported it.
    pub clusters: BTreeMap<ClusterId, BTreeSet<usize>>,
    /// Nodes seen ready in a cluster.
    pub ready: BTreeSet<usize>,
}

/// Node `i`'s own probe answer (cheap: no fan-out to its peers), if it answers.
pub async fn probe(c: &LocalCluster, i: usize) -> Option<PeerInfo> {
    match c.call(i, &Request::Probe).await {
        Ok(Response::Peer { info }) => Some(*info),
        _ => None,
    }
}

impl Seen {
    /// One sample of the nodes in `which`; fails at once if two cluster ids have been seen.
    pub async fn sample(&mut self, c: &LocalCluster, which: &[usize]) {
        for &i in which {
            if let Some(info) = probe(c, i).await
                && let Some(id) = info.cluster
            {
                self.clusters.entry(id).or_default().insert(i);
                if info.ready {
                    self.ready.insert(i);
                }
            }
        }
        assert!(
            self.clusters.len() <= 1,
            "split: more than one cluster id seen: {:?}",
            self.clusters
        );
    }

    /// Samples `which` every 50 ms for `d`.
    pub async fn watch(&mut self, c: &LocalCluster, which: &[usize], d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            self.sample(c, which).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The end of every round: every node in `which` running (no crash), ready with all `n` members
/// within `timeout`, one cluster id over all of them (the one seen during the round, if any),
/// and each one's persisted state holding that cluster and all the members.
pub async fn check_end(c: &mut LocalCluster, seen: &mut Seen, which: &[usize], n: usize, timeout: Duration) {
    for &i in which {
        assert!(
            c.is_running(i),
            "node {i} is not running (crashed?): {}",
            c.log_tail(i, 30)
        );
    }
    if let Err(e) = c.wait_members(which, n, timeout).await {
        let logs: Vec<String> = which
            .iter()
            .map(|i| format!("node {i}:\n{}", c.log_tail(*i, 15)))
            .collect();
        panic!("{e}\n{}", logs.join("\n"));
    }
    seen.sample(c, which).await;
    let ids: BTreeSet<ClusterId> = seen.clusters.keys().cloned().collect();
    assert_eq!(ids.len(), 1, "one cluster id at the end: {ids:?}");
    let id = ids.into_iter().next().unwrap();
    let names: BTreeSet<String> = c.nodes.iter().take(n).map(|m| m.name.to_string()).collect();
    for &i in which {
        let info = probe(c, i).await.expect("a ready node answers");
        assert_eq!(info.cluster.as_ref(), Some(&id), "node {i} is in the cluster");
        let p = persisted(&c.nodes[i].data_dir).unwrap_or_else(|e| panic!("node {i}'s state reads: {e}"));
        assert_eq!(
            p.state.cluster.as_ref(),
            Some(&id),
            "node {i} persisted the cluster"
        );
        let alive: BTreeSet<String> = p.state.alive().iter().map(|m| m.to_string()).collect();
        assert_eq!(alive, names, "node {i} persisted every member");
    }
}

/// What a node's data dir holds (its newer good state slot), read the way the node reads it,
/// without its lock: for a node that is stopped, killed or done writing.
pub fn persisted(data_dir: &std::path::Path) -> std::io::Result<Persisted> {
    Store::unlocked(data_dir)?.load()
}

/// Appends one report line for a scenario that passed every round to `$MUSTER_FAULT_REPORT`
/// (and prints it): a failing round fails its test instead, with what broke.
pub fn report(scenario: &str, rounds: usize, took: Duration, extra: &str) {
    let line = format!(
        "| {scenario} | {rounds} | {rounds} | {:.1} s | {extra} |",
        took.as_secs_f64()
    );
    eprintln!("{line}");
    if let Ok(path) = std::env::var("MUSTER_FAULT_REPORT") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }
}
