//! The deterministic formation simulator.
//!
//! One seed fixes everything: the number of nodes (2–9), the backend family (static list,
//! preferred seed, eventually consistent registrations, lock-capable registrations with
//! fencing), start offsets, probe latencies and failures, per-node discovery views that converge
//! over time, listing latency, backend and claim errors, and the faults: crashes (some wiping the
//! disk), graceful stops of the whole cluster with restarts in any order (and force-boot),
//! partitions that last and heal (some one-way), process pauses that freeze the engine and its
//! probe answers, a `form` that takes time while probes are answered, per-node static lists and
//! a list that grew while the old members were down (a cluster formed before the run), a list
//! that is wrong at first and fixed later,
//! registrations that lapse after a crash, and lock leases shorter than a slow formation. The run
//! uses a current-thread tokio runtime with paused time, so a seed replays exactly.
//!
//! Checked properties, each able to fail:
//! - no cluster is formed while another cluster is still held by some node's persisted state
//!   (formations are counted when they happen, not survivors at the end);
//! - at the end one cluster holds every node;
//! - no node that was told it joined (or formed) a cluster is later outside it, unless its disk
//!   was wiped since;
//! - every refusal names its reason, and no engine fails otherwise;
//! - formation completes within a bounded simulated time after the last fault.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{FormationConfig, OnExhausted};
use crate::decision::{Decision, DecisionInput, Verdict};
use crate::engine::FormationEngine;
use crate::engine::FormationError;
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
    /// Consistent registrations with a lease-backed lock and fencing.
    Locking,
}

/// What happens to a node's process at a moment of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL; the node restarts after `down`, with its disk erased when `wipe`.
    Crash {
        /// How long it stays down.
        down: Duration,
        /// Erase its disk before it restarts.
        wipe: bool,
    },
    /// A graceful stop (records last-to-stop); restarts after `down`, force-booted if asked.
    Stop {
        /// How long it stays down.
        down: Duration,
        /// An operator sets force-boot before the restart.
        force_boot: bool,
    },
    /// The process freezes for `length` (SIGSTOP … SIGCONT).
    Pause {
        /// How long.
        length: Duration,
    },
    /// The node leaves for good (a terminated instance): killed, its disk and registration gone.
    Depart,
}

/// A fault at a time.
#[derive(Debug, Clone)]
pub struct Event {
    /// Index of the node.
    pub node: usize,
    /// When.
    pub at: Duration,
    /// What.
    pub fault: Fault,
}

/// A link that drops every call from `from` to `to` (and back unless `one_way`) for a while.
#[derive(Debug, Clone)]
pub struct Partition {
    /// One side.
    pub from: usize,
    /// The other side.
    pub to: usize,
    /// Only `from` → `to` is cut (asymmetric reachability).
    pub one_way: bool,
    /// When it starts.
    pub at: Duration,
    /// How long it lasts.
    pub length: Duration,
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
    /// Faults, by node and time.
    pub events: Vec<Event>,
    /// Partitions.
    pub partitions: Vec<Partition>,
    /// Nodes that hold a cluster formed before the run (static family: with a list of just
    /// themselves, while everyone else lists all nodes — a list that grew).
    pub preformed: Vec<usize>,
    /// Members of the pre-formed cluster that lost their disks before the run (they start blank).
    pub prewiped: Vec<usize>,
    /// The settings were drawn from everything `validate()` accepts (else: the shipped ones).
    pub drawn_settings: bool,
    /// A node that starts with a list missing some nodes and gets the full list at a time
    /// (static family): `(node, the nodes its first list leaves out, when the list is fixed)`.
    pub list_change: Option<(usize, Vec<usize>, Duration)>,
    /// Network faults.
    pub faults: NetworkFaults,
    /// Backend error rate.
    pub backend_error_rate: f64,
    /// Fencing claim error rate (locking family).
    pub claim_error_rate: f64,
    /// How long a listing takes.
    pub list_latency: Duration,
    /// How long `form` takes.
    pub form_latency: Duration,
    /// The formation lock's lease (locking family).
    pub lock_lease: Duration,
    /// How long a crashed node's registration outlives it.
    pub registration_ttl: Duration,
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
    /// Simulated time from the last fault or (re)start to every node being formed.
    pub formed_after_last_start: Option<Duration>,
    /// Clusters at the end.
    pub clusters: usize,
    /// Clusters formed during the run (pre-formed ones not counted).
    pub formations: u64,
    /// Refusals (inconsistent cluster) the engines returned.
    pub refusals: Vec<String>,
    /// Probes made.
    pub probes: u64,
    /// Formation notices sent (each one message; lost ones included).
    pub notices: u64,
    /// Liveness was checked: the budget left room to form, and no seed stranded its followers.
    pub liveness_checked: bool,
    /// Nodes wait for an operator: their seed lost its disk (or left) after it announced, on a
    /// listing that is not authoritative.
    pub stranded: bool,
    /// Formations interrupted between the bootstrap hook and the persisted cluster (a crash
    /// while the hook ran), completed at the node's next start.
    pub completed_at_restart: u64,
    /// Nodes whose last engine joined the recorded cluster without taking the lock.
    pub joins_without_lock: u64,
    /// Lock waits that ended because the waiting engine was woken.
    pub woken_lock_waits: u64,
}

impl SimReport {
    /// True when every property held.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// True when the run formed a second cluster while another was held, or ended with two.
    pub fn split(&self) -> bool {
        self.clusters > 1 || self.violations.iter().any(|v| v.starts_with("split"))
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

/// Simulated time after which formation must be complete, counted from the last fault.
pub const FORMATION_BOUND: Duration = Duration::from_secs(60);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

impl Scenario {
    /// Draws a scenario from a seed.
    pub fn from_seed(seed: u64) -> Scenario {
        let mut rng = SimRng::new(seed);
        // One seed in fifty is a staggered start of up to 100 nodes over up to 10 s.
        let crowd = rng.chance(0.02);
        let n = if crowd {
            rng.range(10, 100)
        } else {
            rng.range(2, 9)
        } as usize;
        let nodes: Vec<NodeName> = (0..n)
            .map(|i| format!("sim@node{i:02}").parse().expect("valid sim node name"))
            .collect();
        let family = *rng.pick(&[
            Family::Static,
            Family::PreferredSeed,
            Family::Eventual,
            Family::Locking,
        ]);
        let spread = if crowd {
            rng.range(1000, 10_000)
        } else {
            *rng.pick(&[0, 50, 500, 2000])
        };
        let starts: Vec<Duration> = (0..n).map(|_| ms(rng.range(0, spread))).collect();
        let mut events = Vec::new();
        let faults_at = |rng: &mut SimRng, max: u64| ms(rng.range(0, max + spread));
        for _ in 0..*rng.pick(&[0, 0, 1, 2]) {
            // Wiping a fenced cluster's only copy needs an operator (the record stays): lockless only.
            let wipe = family != Family::Locking && rng.chance(0.3);
            events.push(Event {
                node: rng.range(0, n as u64 - 1) as usize,
                at: faults_at(&mut rng, 3000),
                fault: Fault::Crash {
                    down: ms(rng.range(100, 3000)),
                    wipe,
                },
            });
        }
        for _ in 0..*rng.pick(&[0, 0, 0, 1, 2]) {
            events.push(Event {
                node: rng.range(0, n as u64 - 1) as usize,
                at: faults_at(&mut rng, 4000),
                fault: Fault::Pause {
                    length: ms(rng.range(100, 3000)),
                },
            });
        }
        // A candidate that leaves for good (a terminated instance), on a listing that is not
        // authoritative: the others must form without it. Not in runs with a graceful full stop
        // or a pre-formed cluster: a member that leaves a formed cluster for good holds up its
        // peers' restart window until an operator forgets it, which is the restart rule, not
        // formation.
        let depart = family == Family::Eventual && n >= 3 && rng.chance(0.15);
        let departure = depart.then(|| Event {
            node: rng.range(0, n as u64 - 1) as usize,
            at: faults_at(&mut rng, 3000),
            fault: Fault::Depart,
        });
        let mut partitions = Vec::new();
        if departure.is_none() && rng.chance(0.15) {
            // The whole cluster stops gracefully, one by one, and comes back in any order; half
            // the time a partition splits the stop, so that both sides restart on their own state.
            let at = rng.range(6000, 12000) + spread;
            let force = rng.chance(0.3).then(|| rng.range(0, n as u64 - 1) as usize);
            for i in 0..n {
                events.push(Event {
                    node: i,
                    at: ms(at + rng.range(0, 1000)),
                    fault: Fault::Stop {
                        down: ms(rng.range(1500, 4000)),
                        force_boot: force == Some(i),
                    },
                });
            }
            if rng.chance(0.5) {
                let from = rng.range(0, n as u64 - 1) as usize;
                partitions.push(Partition {
                    from,
                    to: (from + 1 + rng.range(0, n as u64 - 2) as usize) % n,
                    one_way: false,
                    at: ms(at.saturating_sub(500)),
                    length: ms(rng.range(2000, 6000)),
                });
            }
        }
        for _ in 0..*rng.pick(&[0, 0, 1, 2, 3]) {
            let from = rng.range(0, n as u64 - 1) as usize;
            let to = (from + 1 + rng.range(0, n as u64 - 2) as usize) % n;
            partitions.push(Partition {
                from,
                to,
                one_way: rng.chance(0.5),
                at: faults_at(&mut rng, 3000),
                length: ms(rng.range(200, 5000)),
            });
        }
        // A cluster formed before the run, for every family; some of its members lost their
        // disks and start blank (at least one still holds it).
        events.extend(departure.clone());
        let (preformed, prewiped) = if n >= 3 && !crowd && departure.is_none() && rng.chance(0.15) {
            let members: Vec<usize> = (0..rng.range(1, n as u64 / 2 + 1) as usize)
                .map(|_| rng.range(0, n as u64 - 1) as usize)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let wiped: Vec<usize> = members
                .iter()
                .skip(1)
                .copied()
                .filter(|_| family != Family::Locking && rng.chance(0.5))
                .collect();
            (members, wiped)
        } else {
            (Vec::new(), Vec::new())
        };
        let mut starts = starts;
        if family == Family::Eventual {
            // A listing that is not authoritative is trusted to show a node that holds a cluster
            // (docs/formation.md): the pre-formed cluster's holders are running and registered
            // from the start, and are not crashed (a crash lets the registration lapse).
            for i in preformed.iter().filter(|i| !prewiped.contains(i)) {
                starts[*i] = Duration::ZERO;
                events.retain(|e| !(e.node == *i && matches!(e.fault, Fault::Crash { .. })));
            }
        }
        let list_change = if family == Family::Static && preformed.is_empty() && n >= 3 && rng.chance(0.1) {
            let node = rng.range(0, n as u64 - 1) as usize;
            let left_out: BTreeSet<usize> = (0..rng.range(1, n as u64 - 2))
                .map(|_| rng.range(0, n as u64 - 1) as usize)
                .filter(|i| *i != node)
                .collect();
            Some((node, left_out.into_iter().collect(), ms(rng.range(500, 6000))))
        } else {
            None
        };
        let drawn_settings = rng.chance(0.5);
        let mut config = if drawn_settings {
            drawn_config(&mut rng, family)
        } else {
            FormationConfig::default()
        };
        // Latencies up to 55 % of the probe timeout each way: some live peers time out (about one
        // probe in ten at most). Crowds stay below the timeout: with every candidate required to
        // answer in one round, one probe in ten lost among 100 candidates is a network that
        // never lets anything form, and the small seeds already cover timeouts.
        let share = if crowd { 0.45 } else { 0.55 };
        let max_latency = ms(*rng.pick(&[2, 20, 45, 55]))
            .min(config.probe_timeout.mul_f64(share))
            .max(ms(1));
        let faults = NetworkFaults {
            min_latency: ms(1),
            max_latency,
            failure_rate: *rng.pick(&[0.0, 0.05, 0.2]),
            notice_loss: *rng.pick(&[0.0, 0.0, 0.3, 1.0]),
        };
        let backend_error_rate = *rng.pick(&[0.0, 0.1, 0.3]);
        let claim_error_rate = *rng.pick(&[0.0, 0.0, 0.3]);
        let list_latency = ms(*rng.pick(&[0, 0, 30, 400]));
        let form_latency = ms(*rng.pick(&[0, 0, 50, 1500]));
        let lock_lease = ms(*rng.pick(&[5000, 5000, 1000]));
        let registration_ttl = ms(*rng.pick(&[500, 3000]));
        // Listings that miss a registered node for longer than `stable_margin` are outside the
        // guarantee for backends that are not authoritative (docs/formation.md).
        let max_visibility_delay = ms(rng.range(0, 3000)).min(config.stable_margin / 2);
        // A hint above the nodes that stay would forbid formation outright.
        let staying = n as u64 - u64::from(events.iter().any(|e| e.fault == Fault::Depart));
        config.target_cluster_size_hint = match family {
            // Non-authoritative views need a majority hint (docs/formation.md).
            Family::Eventual => rng.range(n as u64 / 2 + 1, staying) as u32,
            _ => rng.range(1, staying) as u32,
        };
        config
            .validate()
            .unwrap_or_else(|e| panic!("seed {seed} drew settings validate() rejects: {e}"));
        Scenario {
            seed,
            nodes,
            family,
            starts,
            events,
            partitions,
            preformed,
            prewiped,
            drawn_settings,
            list_change,
            faults,
            backend_error_rate,
            claim_error_rate,
            list_latency,
            form_latency,
            lock_lease,
            registration_ttl,
            max_visibility_delay,
            config,
        }
    }

    /// The nodes that do not leave for good during the run.
    pub fn staying(&self) -> impl Iterator<Item = &NodeName> {
        let departed: BTreeSet<usize> = self
            .events
            .iter()
            .filter(|e| e.fault == Fault::Depart)
            .map(|e| e.node)
            .collect();
        self.nodes
            .iter()
            .enumerate()
            .filter(move |(i, _)| !departed.contains(i))
            .map(|(_, n)| n)
    }

    /// Whether the retry budget leaves room to form after the last fault: only then is a node
    /// that gives up a liveness violation.
    pub fn formation_allowed(&self) -> bool {
        let c = &self.config;
        let needed =
            self.quiet_from() + c.stable_margin + c.discovery_retry_interval * 10 + Duration::from_secs(5);
        c.on_exhausted == OnExhausted::Wait || c.discovery_budget() >= needed
    }

    /// How long after the last fault every node must be formed (when formation is allowed). With
    /// a lock, joins too go through the lock one at a time, so a crowd's bound grows with it.
    pub fn formation_bound(&self) -> Duration {
        let serial = match self.family {
            Family::Locking => Duration::from_secs(2) * self.nodes.len() as u32,
            _ => Duration::ZERO,
        };
        FORMATION_BOUND
            .max(self.config.stable_margin + self.config.discovery_retry_interval * 20)
            .max(serial)
    }

    /// A scale run: `n` nodes on a static list with the shipped settings, started within
    /// `spread`, 1–5 ms latencies, no faults, every notice delivered. For the simulated time
    /// to form and the messages per node as `n` grows.
    pub fn scale(n: usize, spread: Duration, seed: u64) -> Scenario {
        let mut rng = SimRng::new(seed);
        let nodes: Vec<NodeName> = (0..n)
            .map(|i| format!("sim@node{i:04}").parse().expect("valid sim node name"))
            .collect();
        let spread_ms = spread.as_millis() as u64;
        let starts = (0..n).map(|_| ms(rng.range(0, spread_ms))).collect();
        let config = FormationConfig {
            discovery_retry_limit: 1_000_000,
            on_exhausted: OnExhausted::Wait,
            ..FormationConfig::default()
        };
        Scenario {
            seed,
            nodes,
            family: Family::Static,
            starts,
            events: Vec::new(),
            partitions: Vec::new(),
            preformed: Vec::new(),
            prewiped: Vec::new(),
            drawn_settings: false,
            list_change: None,
            faults: NetworkFaults::default(),
            backend_error_rate: 0.0,
            claim_error_rate: 0.0,
            list_latency: Duration::ZERO,
            form_latency: Duration::ZERO,
            lock_lease: ms(5000),
            registration_ttl: ms(3000),
            max_visibility_delay: Duration::ZERO,
            config,
        }
    }

    /// When the last start, restart, pause or partition ends: the liveness bound counts from here.
    pub fn quiet_from(&self) -> Duration {
        let events = self.events.iter().map(|e| {
            e.at + match &e.fault {
                Fault::Crash { down, .. } | Fault::Stop { down, .. } => *down,
                Fault::Pause { length } => *length,
                Fault::Depart => Duration::ZERO,
            }
        });
        let partitions = self.partitions.iter().map(|p| p.at + p.length);
        let list_fix = self.list_change.iter().map(|(_, _, at)| *at);
        self.starts
            .iter()
            .copied()
            .chain(events)
            .chain(partitions)
            .chain(list_fix)
            .max()
            .unwrap_or_default()
    }
}

/// Settings drawn from what `validate()` accepts, within what a simulated run can cover: every
/// interval, probe timeout, margin at and above its floor, retry limit, and `on_exhausted` (a
/// standalone formation only where it is safe, through a lock).
fn drawn_config(rng: &mut SimRng, family: Family) -> FormationConfig {
    let interval = ms(*rng.pick(&[10, 50, 100, 200, 500, 1000]));
    let probe_timeout = ms(*rng.pick(&[10, 50, 100, 250, 1000]));
    let floor = (interval + probe_timeout) * 2;
    let stable_margin = floor.mul_f64(*rng.pick(&[1.0, 1.0, 1.5, 3.0]));
    let mut on_exhausted = vec![OnExhausted::Fail, OnExhausted::Wait];
    if family == Family::Locking {
        on_exhausted.push(OnExhausted::Standalone);
    }
    FormationConfig {
        discovery_retry_interval: interval,
        probe_timeout,
        stable_margin,
        discovery_retry_limit: *rng.pick(&[1, 3, 10, 60, 1000, 1_000_000]),
        on_exhausted: *rng.pick(&on_exhausted),
        lock_acquire_timeout: ms(*rng.pick(&[100, 500, 2000])),
        ..FormationConfig::default()
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

/// One node's process over the run: start, faults, restarts.
async fn life(
    s: Arc<Scenario>,
    i: usize,
    dir: Directory,
    net: Network,
    rule: Rule,
    statuses: Arc<Mutex<BTreeMap<NodeName, StatusRx>>>,
    errors: Arc<Mutex<Vec<(NodeName, FormationError)>>>,
) {
    let node = s.nodes[i].clone();
    let start = tokio::time::Instant::now();
    let mut events: Vec<Event> = s.events.iter().filter(|e| e.node == i).cloned().collect();
    events.sort_by_key(|e| e.at);
    let mut events = events.into_iter().peekable();
    tokio::time::sleep(s.starts[i]).await;
    loop {
        let member = Arc::new(net.start(&node));
        let backend = Arc::new(dir.backend_for(&node));
        let engine = FormationEngine::new(s.config.clone(), backend, member).with_rule(rule);
        net.set_trigger(&node, engine.trigger());
        statuses
            .lock()
            .expect("status map")
            .insert(node.clone(), engine.status());
        let mut run = Box::pin(async {
            if let Err(e) = engine.run().await {
                errors.lock().expect("errors").push((node.clone(), e));
            }
            std::future::pending::<()>().await
        });
        // Run until the next event that ends this process; pauses happen inside the run.
        let ending = loop {
            let Some(event) = events.next() else {
                run.as_mut().await;
                return;
            };
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(start + event.at) => {}
                _ = run.as_mut() => {}
            }
            match event.fault {
                Fault::Pause { length } => net.pause(&node, tokio::time::Instant::now() + length),
                other => break other,
            }
        };
        drop(run);
        match ending {
            Fault::Crash { down, wipe } => {
                drop(engine);
                net.crash(&node);
                dir.crashed(&node);
                tokio::time::sleep(down).await;
                if wipe {
                    // A new disk comes with the current configuration.
                    net.wipe(&node);
                    dir.clear_list_for(&node);
                }
            }
            Fault::Stop { down, force_boot } => {
                net.stop(&node);
                engine.shutdown().await;
                drop(engine);
                tokio::time::sleep(down).await;
                if force_boot {
                    net.force_boot(&node);
                }
            }
            Fault::Depart => {
                drop(engine);
                net.crash(&node);
                net.wipe(&node);
                dir.deregister(&node);
                return;
            }
            Fault::Pause { .. } => unreachable!("pauses do not end a process"),
        }
    }
}

async fn simulate(scenario: Scenario, rule: Rule) -> SimReport {
    let s = Arc::new(scenario);
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
    dir.set_claim_error_rate(s.claim_error_rate);
    dir.set_lock_lease(s.lock_lease);
    dir.set_list_latency(s.list_latency);
    dir.set_registration_ttl(Some(s.registration_ttl));
    // Scale runs (more nodes than a drawn seed has) have no visibility delays: skip n² draws.
    if s.nodes.len() <= 9 {
        for a in &s.nodes {
            for b in &s.nodes {
                dir.set_delay(a, b, ms(rng.range(0, s.max_visibility_delay.as_millis() as u64)));
            }
        }
    }
    let net = Network::new(s.faults, s.seed ^ 0xA7);
    net.set_form_latency(s.form_latency);
    if !s.preformed.is_empty() {
        let old: Vec<NodeName> = s.preformed.iter().map(|i| s.nodes[*i].clone()).collect();
        let id = net.preform(&old);
        if s.family == Family::Locking {
            dir.set_recorded_cluster(id);
        }
        for (i, n) in s.preformed.iter().zip(&old) {
            if s.prewiped.contains(i) {
                // A new disk comes with the current configuration.
                net.wipe(n);
            } else if s.family == Family::Static {
                // The old members kept the old, shorter list: the list grew while they were down.
                dir.set_list_for(n, old.clone());
            }
        }
    }
    if let Some((node, left_out, _)) = &s.list_change {
        let partial: Vec<NodeName> = (0..s.nodes.len())
            .filter(|i| !left_out.contains(i))
            .map(|i| s.nodes[i].clone())
            .collect();
        dir.set_list_for(&s.nodes[*node], partial);
    }
    let start = tokio::time::Instant::now();
    let statuses: Arc<Mutex<BTreeMap<NodeName, StatusRx>>> = Arc::default();
    let errors: Arc<Mutex<Vec<(NodeName, FormationError)>>> = Arc::default();

    let mut tasks = Vec::new();
    for i in 0..s.nodes.len() {
        let task = life(
            s.clone(),
            i,
            dir.clone(),
            net.clone(),
            rule,
            statuses.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(task));
    }
    if let Some((node, _, at)) = s.list_change.clone() {
        let (dir, node) = (dir.clone(), s.nodes[node].clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start + at).await;
            dir.clear_list_for(&node);
        }));
    }
    for p in s.partitions.clone() {
        let (net, a, b) = (net.clone(), s.nodes[p.from].clone(), s.nodes[p.to].clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(start + p.at).await;
            net.block(&a, &b);
            if !p.one_way {
                net.block(&b, &a);
            }
            tokio::time::sleep(p.length).await;
            net.unblock(&a, &b);
            net.unblock(&b, &a);
        }));
    }

    // Wait until every node is formed after the last fault, or the bound passes.
    let quiet = s.quiet_from();
    let deadline = start + quiet + s.formation_bound();
    let mut formed_at = None;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(ms(50)).await;
        let all_ready = s.staying().all(|n| net.is_ready(n));
        let now = tokio::time::Instant::now() - start;
        if all_ready && now >= quiet {
            formed_at = Some(now.saturating_sub(quiet));
            break;
        }
    }
    for t in &tasks {
        t.abort();
    }
    let report = check(&s, &net, formed_at, &statuses, &errors);
    SimReport {
        scenario: (*s).clone(),
        joins_without_lock: joins_without_lock(&statuses),
        woken_lock_waits: dir.woken_lock_waits(),
        ..report
    }
}

/// Nodes whose last engine's final join was not decided under the lock (no `Lock` just before
/// it in its trace): on a lock-capable backend, joins of the recorded cluster.
fn joins_without_lock(statuses: &Mutex<BTreeMap<NodeName, StatusRx>>) -> u64 {
    let statuses = statuses.lock().expect("status map");
    let unlocked = |rx: &StatusRx| {
        let status = rx.borrow();
        let trace = &status.trace;
        trace
            .iter()
            .rposition(|e| matches!(e.decision, Decision::Join { .. }))
            .is_some_and(|i| i == 0 || !matches!(trace[i - 1].decision, Decision::Lock))
    };
    statuses.values().filter(|rx| unlocked(rx)).count() as u64
}

fn check(
    s: &Scenario,
    net: &Network,
    formed_at: Option<Duration>,
    statuses: &Mutex<BTreeMap<NodeName, StatusRx>>,
    errors: &Mutex<Vec<(NodeName, FormationError)>>,
) -> SimReport {
    let mut violations = Vec::new();
    for split in net.splits() {
        violations.push(format!("split: {split}"));
    }
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
            "split at the end: {} clusters: {}",
            live_clusters.len(),
            detail.join("; ")
        ));
    }
    let allowed = s.formation_allowed();
    // On a listing that is not authoritative, nodes that committed to (or wait for) a seed that
    // lost its disk after announcing wait for an operator (docs/formation.md, residual risks).
    let stranded = s.family == Family::Eventual
        && (net.lost_intents() > 0 || net.committed_to_a_lost_disk())
        && formed_at.is_none();
    let mut refusals = Vec::new();
    for (node, e) in errors.lock().expect("errors").iter() {
        match e {
            FormationError::Refused(refusal) => refusals.push(format!("{node}: {refusal}")),
            // Gave up: a liveness failure only when the budget left room to form.
            FormationError::Exhausted { .. } if !allowed || stranded => {}
            other => violations.push(format!("{node}'s engine failed: {other}")),
        }
    }
    if formed_at.is_none() && allowed && !stranded {
        let statuses = statuses.lock().expect("status map");
        let waiting: Vec<(String, String)> = s
            .staying()
            .filter(|n| !net.is_ready(n))
            .map(|n| {
                let detail = statuses
                    .get(n)
                    .map(|rx| rx.borrow().detail.clone())
                    .unwrap_or_default();
                (n.to_string(), detail)
            })
            .collect();
        let list: Vec<String> = waiting.iter().map(|(n, d)| format!("{n} ({d})")).collect();
        violations.push(format!(
            "not formed within {:?} of the last fault; not ready: {}",
            s.formation_bound(),
            list.join("; ")
        ));
    }
    for node in s.staying() {
        for c in net.history(node) {
            if !all.get(&c).is_some_and(|m| m.contains(node)) || net.cluster_of(node).as_ref() != Some(&c) {
                violations.push(format!("{node} joined {c} and was later dropped from it"));
            }
        }
    }
    SimReport {
        scenario: s.clone(),
        violations,
        formed_after_last_start: formed_at,
        clusters: live_clusters.len(),
        formations: net.formations(),
        refusals,
        probes: net.probe_count(),
        notices: net.notices().0,
        liveness_checked: allowed && !stranded,
        stranded,
        completed_at_restart: net.hook_runs().1,
        joins_without_lock: 0,
        woken_lock_waits: 0,
    }
}
