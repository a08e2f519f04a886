//! The deterministic formation simulator.
//!
//! One seed fixes everything: the number of nodes (2–9), the backend family (static list,
//! preferred seed, eventually consistent registrations, lock-capable registrations), start
//! offsets, probe latencies and failures, per-node discovery views that converge over time,
//! backend errors, and nodes crashing and restarting mid-formation. The run uses a
//! current-thread tokio runtime with paused time, so a seed replays exactly.
//!
//! Checked properties: at the end exactly one cluster holds every live node; no node that joined
//! a cluster is later dropped from it; formation completes within a bounded simulated time.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{FormationConfig, OnExhausted};
use crate::decision::{DecisionInput, Verdict};
use crate::engine::FormationEngine;
use crate::membership::ClusterId;
use crate::node_name::NodeName;
use crate::testing::{BackendMode, Directory, Network, NetworkFaults, SimRng};

type StatusRx = tokio::sync::watch::Receiver<crate::status::FormationStatus>;

/// A decision rule (the real one is [`crate::decision::decide`]).
pub type Rule = fn(&DecisionInput<'_>) -> Verdict;

/// The backend family a seed drew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Static authoritative list, no lock.
    Static,
    /// Static list with a backend-preferred seed.
    PreferredSeed,
    /// Eventually consistent registrations, no lock.
    Eventual,
    /// Consistent registrations with a lease-backed lock.
    Locking,
}

/// A crash: `node` dies at `at` and restarts after `down`.
#[derive(Debug, Clone)]
pub struct Crash {
    /// Index of the node.
    pub node: usize,
    /// When it dies.
    pub at: Duration,
    /// How long it stays down.
    pub down: Duration,
}

/// Everything a seed decided.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// The seed.
    pub seed: u64,
    /// The nodes.
    pub nodes: Vec<NodeName>,
    /// The backend family.
    pub family: Family,
    /// Start offset of each node.
    pub starts: Vec<Duration>,
    /// Crashes.
    pub crashes: Vec<Crash>,
    /// Network faults.
    pub faults: NetworkFaults,
    /// Backend error rate.
    pub backend_error_rate: f64,
    /// Largest per-pair visibility delay (eventual family).
    pub max_visibility_delay: Duration,
    /// The configuration every node runs.
    pub config: FormationConfig,
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct SimReport {
    /// The scenario.
    pub scenario: Scenario,
    /// Problems found; empty when every property held.
    pub violations: Vec<String>,
    /// Simulated time from the last (re)start to every node being formed.
    pub formed_after_last_start: Option<Duration>,
    /// Clusters at the end.
    pub clusters: usize,
    /// Probes made.
    pub probes: u64,
}

impl SimReport {
    /// True when every property held.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// True when the run ended with more than one cluster.
    pub fn split(&self) -> bool {
        self.clusters > 1
    }
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.scenario;
        writeln!(
            f,
            "seed {} ({} nodes, {:?}, hint {}): {}",
            s.seed,
            s.nodes.len(),
            s.family,
            s.config.target_cluster_size_hint,
            if self.ok() { "ok" } else { "VIOLATED" }
        )?;
        for v in &self.violations {
            writeln!(f, "  - {v}")?;
        }
        writeln!(
            f,
            "  replay: MUSTER_SIM_SEED={} cargo test -p muster-discovery-core --test simulator replay -- --nocapture",
            s.seed
        )
    }
}

/// Simulated time after which formation must be complete, counted from the last (re)start.
pub const FORMATION_BOUND: Duration = Duration::from_secs(60);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

impl Scenario {
    /// Draws a scenario from a seed.
    pub fn from_seed(seed: u64) -> Scenario {
        let mut rng = SimRng::new(seed);
        let n = rng.range(2, 9) as usize;
        let nodes: Vec<NodeName> = (0..n)
            .map(|i| format!("sim@node{i}").parse().expect("valid sim node name"))
            .collect();
        let family = *rng.pick(&[
            Family::Static,
            Family::PreferredSeed,
            Family::Eventual,
            Family::Locking,
        ]);
        let spread = *rng.pick(&[0, 50, 500, 2000]);
        let starts = (0..n).map(|_| ms(rng.range(0, spread))).collect();
        let crash_count = *rng.pick(&[0, 0, 1, 2]);
        let crashes = (0..crash_count)
            .map(|_| Crash {
                node: rng.range(0, n as u64 - 1) as usize,
                at: ms(rng.range(0, 3000)),
                down: ms(rng.range(100, 3000)),
            })
            .collect();
        let faults = NetworkFaults {
            min_latency: ms(1),
            max_latency: ms(*rng.pick(&[2, 20, 45])),
            failure_rate: *rng.pick(&[0.0, 0.05, 0.2]),
        };
        let backend_error_rate = *rng.pick(&[0.0, 0.1, 0.3]);
        let max_visibility_delay = ms(rng.range(0, 3000));
        let mut config = FormationConfig {
            discovery_retry_interval: ms(200),
            probe_timeout: ms(100),
            stable_margin: ms(1000),
            discovery_retry_limit: 1_000_000,
            on_exhausted: OnExhausted::Wait,
            lock_acquire_timeout: ms(500),
            ..FormationConfig::default()
        };
        config.target_cluster_size_hint = match family {
            // Non-authoritative views need a majority hint (docs/formation.md).
            Family::Eventual => rng.range(n as u64 / 2 + 1, n as u64) as u32,
            _ => rng.range(1, n as u64) as u32,
        };
        Scenario {
            seed,
            nodes,
            family,
            starts,
            crashes,
            faults,
            backend_error_rate,
            max_visibility_delay,
            config,
        }
    }
}

/// Runs one seed with the real decision rule.
pub fn run_seed(seed: u64) -> SimReport {
    run_scenario(Scenario::from_seed(seed), crate::decision::decide)
}

/// Runs a scenario with a given rule on its own paused, current-thread runtime.
pub fn run_scenario(scenario: Scenario, rule: Rule) -> SimReport {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    rt.block_on(simulate(scenario, rule))
}

async fn simulate(scenario: Scenario, rule: Rule) -> SimReport {
    let s = &scenario;
    let mut rng = SimRng::new(s.seed.wrapping_mul(31).wrapping_add(7));
    let mode = match s.family {
        Family::Static => BackendMode::Static(s.nodes.clone()),
        Family::PreferredSeed => {
            let seed_node = rng.pick(&s.nodes).clone();
            BackendMode::PreferredSeed(s.nodes.clone(), seed_node)
        }
        Family::Eventual => BackendMode::Eventual,
        Family::Locking => BackendMode::Locking,
    };
    let dir = Directory::new(mode, s.seed ^ 0xD1);
    dir.set_error_rate(s.backend_error_rate);
    dir.set_lock_lease(Duration::from_secs(5));
    for a in &s.nodes {
        for b in &s.nodes {
            dir.set_delay(a, b, ms(rng.range(0, s.max_visibility_delay.as_millis() as u64)));
        }
    }
    let net = Network::new(s.faults, s.seed ^ 0xA7);
    let start = tokio::time::Instant::now();
    let statuses: Arc<std::sync::Mutex<BTreeMap<NodeName, StatusRx>>> = Arc::default();

    // Each node's life: start at its offset, run the engine, die and restart at its crashes.
    let mut tasks = Vec::new();
    for (i, node) in s.nodes.iter().enumerate() {
        let (dir, net, node, cfg) = (dir.clone(), net.clone(), node.clone(), s.config.clone());
        let statuses = statuses.clone();
        let mut events: Vec<(Duration, Duration)> = s
            .crashes
            .iter()
            .filter(|c| c.node == i)
            .map(|c| (c.at, c.down))
            .collect();
        events.sort();
        let first = s.starts[i];
        tasks.push(tokio::spawn(async move {
            let mut last_start = first;
            tokio::time::sleep_until(start + first).await;
            let mut events = events.into_iter().peekable();
            loop {
                let member = Arc::new(net.start(&node));
                let engine = FormationEngine::new(cfg.clone(), Arc::new(dir.backend_for(&node)), member)
                    .with_rule(rule);
                statuses
                    .lock()
                    .expect("status map")
                    .insert(node.clone(), engine.status());
                let crash = events.next();
                match crash {
                    Some((at, down)) => {
                        let at = at.max(last_start);
                        tokio::select! {
                            biased;
                            _ = tokio::time::sleep_until(start + at) => {}
                            _ = async { let _ = engine.run().await; std::future::pending::<()>().await } => {}
                        }
                        drop(engine);
                        net.crash(&node);
                        tokio::time::sleep(down).await;
                        last_start = at + down;
                    }
                    None => {
                        let _ = engine.run().await;
                        return last_start;
                    }
                }
            }
        }));
    }

    // Wait until every node is formed or the bound passes.
    let last_start = s
        .starts
        .iter()
        .copied()
        .chain(s.crashes.iter().map(|c| c.at + c.down))
        .max()
        .unwrap_or_default();
    let deadline = start + last_start + FORMATION_BOUND;
    let mut formed_at = None;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(ms(50)).await;
        let all_ready = s.nodes.iter().all(|n| net.is_ready(n));
        let now = tokio::time::Instant::now() - start;
        if all_ready && now >= last_start {
            formed_at = Some(now.saturating_sub(last_start));
            break;
        }
    }
    for t in &tasks {
        t.abort();
    }

    let mut violations = Vec::new();
    let live_clusters: BTreeSet<ClusterId> = s.nodes.iter().filter_map(|n| net.cluster_of(n)).collect();
    let all = net.clusters();
    if live_clusters.len() > 1 {
        let detail: Vec<String> = live_clusters
            .iter()
            .map(|c| {
                let m: Vec<String> = all.get(c).into_iter().flatten().map(|n| n.to_string()).collect();
                format!("{c}: [{}]", m.join(", "))
            })
            .collect();
        violations.push(format!(
            "split: {} clusters: {}",
            live_clusters.len(),
            detail.join("; ")
        ));
    }
    if formed_at.is_none() {
        let statuses = statuses.lock().expect("status map");
        let waiting: Vec<String> = s
            .nodes
            .iter()
            .filter(|n| !net.is_ready(n))
            .map(|n| {
                let detail = statuses
                    .get(n)
                    .map(|rx| rx.borrow().detail.clone())
                    .unwrap_or_default();
                format!("{n} ({detail})")
            })
            .collect();
        violations.push(format!(
            "not formed within {FORMATION_BOUND:?} of the last start; not ready: {}",
            waiting.join("; ")
        ));
    }
    for node in &s.nodes {
        for c in net.history(node) {
            if !all.get(&c).is_some_and(|m| m.contains(node)) || net.cluster_of(node).as_ref() != Some(&c) {
                violations.push(format!("{node} joined {c} and was later dropped from it"));
            }
        }
    }
    SimReport {
        clusters: live_clusters.len(),
        probes: net.probe_count(),
        formed_after_last_start: formed_at,
        violations,
        scenario,
    }
}
