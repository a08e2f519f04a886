//! The deterministic simulator: thousands of seeded parallel starts, each checked for exactly one
//! cluster, no dropped member, and bounded formation time.
//!
//! `MUSTER_SIM_SEEDS=N` runs N seeds instead of the default 2,000 (from `MUSTER_SIM_FIRST_SEED`,
//! default 0, so that a long run can be split across processes); `MUSTER_SIM_SEED=S` with the
//! `replay` test re-runs one seed and prints its report.

use std::time::Instant;

use muster_discovery_core::decision::{Decision, DecisionInput, Probe, SeenCluster, Verdict};
use muster_discovery_core::testing::sim::{Family, Scenario, run_scenario, run_seed};

const DEFAULT_SEEDS: u64 = 2_000;

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

#[test]
fn many_seeds_form_exactly_one_cluster() {
    let seeds = env_number("MUSTER_SIM_SEEDS", DEFAULT_SEEDS);
    let first = env_number("MUSTER_SIM_FIRST_SEED", 0);
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut by_family = std::collections::BTreeMap::<String, (u64, std::time::Duration)>::new();
    let mut seen = Coverage::default();
    for seed in first..first + seeds {
        let report = run_seed(seed);
        seen.add(&report);
        if !report.ok() {
            failures.push(report.to_string());
        } else if let Some(t) = report.formed_after_last_start {
            let e = by_family
                .entry(format!("{:?}", report.scenario.family))
                .or_default();
            e.0 += 1;
            e.1 = e.1.max(t);
        }
    }
    eprintln!(
        "simulated {seeds} seeds ({first}..{}) in {:.1} s",
        first + seeds,
        started.elapsed().as_secs_f64()
    );
    for (family, (n, worst)) in &by_family {
        eprintln!(
            "  {family:<14} {n:>7} seeds ok, slowest formation {:.1} s after the last start",
            worst.as_secs_f64()
        );
    }
    eprintln!("  {seen}");
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds violated a property:\n{}",
        failures.len(),
        failures.iter().take(10).cloned().collect::<String>()
    );
}

/// How many seeds exercised each fault, so a change to the scenario generator cannot silently
/// stop drawing one.
#[derive(Default)]
struct Coverage {
    crashes: u64,
    wipes: u64,
    pauses: u64,
    full_stops: u64,
    force_boots: u64,
    partitions: u64,
    one_way: u64,
    preformed: u64,
    list_changes: u64,
    slow_forms: u64,
    short_leases: u64,
    formations: u64,
    refusals: u64,
    lossy_notices: u64,
    no_notices: u64,
    notices: u64,
    drawn_settings: u64,
    shipped_settings: u64,
    liveness_checked: u64,
    stranded: u64,
    crowds: u64,
    departures: u64,
    prewiped: u64,
    split_stops: u64,
    completed_at_restart: u64,
    joins_without_lock: u64,
    woken_lock_waits: u64,
}

impl Coverage {
    fn add(&mut self, r: &muster_discovery_core::testing::sim::SimReport) {
        use muster_discovery_core::testing::sim::Fault;
        let s = &r.scenario;
        let any = |f: &dyn Fn(&Fault) -> bool| u64::from(s.events.iter().any(|e| f(&e.fault)));
        self.crashes += any(&|f| matches!(f, Fault::Crash { .. }));
        self.wipes += any(&|f| matches!(f, Fault::Crash { wipe: true, .. }));
        self.pauses += any(&|f| matches!(f, Fault::Pause { .. }));
        self.full_stops += any(&|f| matches!(f, Fault::Stop { .. }));
        self.force_boots += any(&|f| matches!(f, Fault::Stop { force_boot: true, .. }));
        self.partitions += u64::from(!s.partitions.is_empty());
        self.one_way += u64::from(s.partitions.iter().any(|p| p.one_way));
        self.preformed += u64::from(!s.preformed.is_empty());
        self.list_changes += u64::from(s.list_change.is_some());
        self.slow_forms += u64::from(s.form_latency >= std::time::Duration::from_secs(1));
        self.short_leases += u64::from(s.family == Family::Locking && s.lock_lease < s.form_latency);
        self.formations += r.formations;
        self.refusals += r.refusals.len() as u64;
        self.lossy_notices += u64::from(s.faults.notice_loss > 0.0 && s.faults.notice_loss < 1.0);
        self.no_notices += u64::from(s.faults.notice_loss >= 1.0);
        self.notices += r.notices;
        self.drawn_settings += u64::from(s.drawn_settings);
        self.shipped_settings += u64::from(!s.drawn_settings);
        self.liveness_checked += u64::from(r.liveness_checked);
        self.stranded += u64::from(r.stranded);
        self.crowds += u64::from(s.nodes.len() > 9);
        self.departures += any(&|f| matches!(f, Fault::Depart));
        self.prewiped += u64::from(!s.prewiped.is_empty());
        self.completed_at_restart += u64::from(r.completed_at_restart > 0);
        if s.family == Family::Locking {
            self.joins_without_lock += u64::from(r.joins_without_lock > 0);
            self.woken_lock_waits += u64::from(r.woken_lock_waits > 0);
        }
        self.split_stops += u64::from(
            s.events.iter().any(|e| matches!(e.fault, Fault::Stop { .. }))
                && s.partitions
                    .iter()
                    .any(|p| !p.one_way && p.length >= std::time::Duration::from_secs(2)),
        );
    }
}

impl std::fmt::Display for Coverage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seeds with crashes {}, wipes {}, pauses {}, graceful full stops {} (force-boot {}), \
             partitions {} (one-way {}), pre-formed clusters {}, list changes {}, slow forms {}, \
             lock leases shorter than form {}, notices partly lost {}, all lost {}; formations {}, \
             refusals {}, notices sent {}",
            self.crashes,
            self.wipes,
            self.pauses,
            self.full_stops,
            self.force_boots,
            self.partitions,
            self.one_way,
            self.preformed,
            self.list_changes,
            self.slow_forms,
            self.short_leases,
            self.lossy_notices,
            self.no_notices,
            self.formations,
            self.refusals,
            self.notices
        )?;
        write!(
            f,
            "\n  settings shipped {}, drawn from validate()'s range {}; liveness checked {} (the \
             rest gave the budget no room, or {} left nodes waiting for an operator on a seed \
             that lost its disk or left); staggered crowds of 10-100 nodes {}, departures {}, \
             pre-formed clusters with wiped members {}, full stops split by a partition {}, \
             formations interrupted during the bootstrap hook and completed at restart {}; \
             lock-capable seeds with joins of the recorded cluster without the lock {}, with lock \
             waits ended because the backend came to record a cluster {}",
            self.shipped_settings,
            self.drawn_settings,
            self.liveness_checked,
            self.stranded,
            self.crowds,
            self.departures,
            self.prewiped,
            self.split_stops,
            self.completed_at_restart,
            self.joins_without_lock,
            self.woken_lock_waits
        )
    }
}

#[test]
fn replay() {
    let Ok(seed) = std::env::var("MUSTER_SIM_SEED") else {
        // Without a seed, replay a fixed one twice and check the runs are identical.
        let a = run_seed(42);
        let b = run_seed(42);
        assert_eq!(a.to_string(), b.to_string());
        assert_eq!(a.probes, b.probes, "the same seed must replay exactly");
        assert_eq!(a.formed_after_last_start, b.formed_after_last_start);
        return;
    };
    let seed: u64 = seed.parse().expect("MUSTER_SIM_SEED must be a number");
    let report = run_seed(seed);
    eprintln!("{:#?}", report.scenario);
    eprintln!("{report}");
    assert!(report.ok(), "{report}");
}

/// The rule RabbitMQ-era systems fell into: form whenever no reachable peer is clustered.
fn unsafe_rule(input: &DecisionInput<'_>) -> Verdict {
    for (node, probe) in input.probes {
        if let Probe::Answered(info) = probe
            && let (Some(cluster), true) = (&info.cluster, info.ready)
        {
            return Verdict {
                decision: Decision::Join {
                    via: node.clone(),
                    cluster: cluster.clone(),
                },
                seed: None,
                seen: Some(SeenCluster {
                    id: cluster.clone(),
                    members: [node.clone()].into(),
                }),
                announce_intent: false,
                commitment: None,
                disown: Vec::new(),
            };
        }
    }
    Verdict {
        decision: Decision::Form { standalone: false },
        seed: None,
        seen: None,
        announce_intent: false,
        commitment: None,
        disown: Vec::new(),
    }
}

#[test]
fn simulator_finds_the_split_of_a_known_unsafe_rule() {
    let mut splits = 0;
    let mut first = None;
    for seed in 0..200 {
        let mut scenario = Scenario::from_seed(seed);
        // Lockless families only: the unsafe rule ignores the lock.
        if matches!(scenario.family, Family::Locking) {
            scenario.family = Family::Static;
        }
        let report = run_scenario(scenario, unsafe_rule);
        if report.split() {
            splits += 1;
            first.get_or_insert(seed);
        }
    }
    assert!(
        splits > 0,
        "the simulator must catch the unsafe rule splitting the cluster"
    );
    eprintln!("unsafe rule split the cluster in {splits} of 200 seeds (first: seed {first:?})");
}

/// The rule before this release for static lists: the seed forms once a majority of the list
/// answers and agrees (unreachable candidates are left out), without sticky commitments. A list
/// that grew while its old members were down, or a wiped seed, defeats it.
fn majority_rule(input: &DecisionInput<'_>) -> Verdict {
    use muster_discovery_core::DiscoveryResult;
    use std::collections::{BTreeMap, BTreeSet};
    let reachable: BTreeSet<_> = input
        .view
        .iter()
        .filter(|n| *n == input.local || matches!(input.probes.get(*n), Some(Probe::Answered(_))))
        .cloned()
        .collect();
    let mut v = if input.discovery.authoritative && reachable.len() > input.view.len() / 2 {
        let listing = DiscoveryResult::new(reachable.iter().cloned(), true);
        let probes: BTreeMap<_, _> = input
            .probes
            .iter()
            .filter(|(n, _)| reachable.contains(*n))
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect();
        let narrowed = DecisionInput {
            discovery: &listing,
            view: &reachable,
            probes: &probes,
            ..input.clone()
        };
        muster_discovery_core::decision::decide(&narrowed)
    } else {
        muster_discovery_core::decision::decide(input)
    };
    if let Decision::Wait(muster_discovery_core::WaitReason::CollectingCommitments { .. }) = v.decision {
        v.decision = Decision::Form { standalone: false };
    }
    v.commitment = None;
    v
}

#[test]
fn simulator_finds_the_splits_of_the_old_majority_rule() {
    let seeds = 2_000;
    let mut splits = 0;
    let mut first = None;
    for seed in 0..seeds {
        let mut scenario = Scenario::from_seed(seed);
        if !matches!(scenario.family, Family::Static) {
            continue;
        }
        scenario.family = Family::Static;
        let report = run_scenario(scenario, majority_rule);
        if report.split() {
            splits += 1;
            first.get_or_insert(seed);
        }
    }
    eprintln!("old majority rule: {splits} static-list seeds split (first: seed {first:?})");
    assert!(splits > 0, "the simulator must catch the majority rule's splits");
}

/// Scale: 25 and 100 simulated nodes (1,000 with `MUSTER_SIM_SCALE=1000`), a few seeds each,
/// shipped settings, a parallel start within 200 ms. Each forms one cluster; the run prints the
/// simulated time to form and the messages (probes and notices) per node, and the messages per
/// node grow no faster than linearly with the number of nodes.
#[test]
fn scale_runs_form_one_cluster_with_messages_per_node_linear_in_n() {
    let mut sizes = vec![25usize, 100];
    if let Ok(v) = std::env::var("MUSTER_SIM_SCALE") {
        sizes.push(
            v.parse()
                .unwrap_or_else(|_| panic!("MUSTER_SIM_SCALE={v:?} is not a number")),
        );
    }
    let mut per_node = Vec::new();
    for &n in &sizes {
        let mut worst_time = std::time::Duration::ZERO;
        let mut worst_msgs = 0.0f64;
        let started = Instant::now();
        for seed in 0..3 {
            let report = run_scenario(
                Scenario::scale(n, std::time::Duration::from_millis(200), seed),
                muster_discovery_core::decision::decide,
            );
            assert!(report.ok(), "{report}");
            assert_eq!(report.clusters, 1, "{report}");
            let t = report.formed_after_last_start.expect("formed");
            worst_time = worst_time.max(t);
            worst_msgs = worst_msgs.max((report.probes + report.notices) as f64 / n as f64);
        }
        eprintln!(
            "scale: {n:>5} nodes, 3 seeds: formed {:.3} s (simulated) after the last start at worst, \
             {worst_msgs:.0} messages per node at worst ({:.1} s wall)",
            worst_time.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
        per_node.push((n, worst_msgs));
    }
    for pair in per_node.windows(2) {
        let ((n1, m1), (n2, m2)) = (pair[0], pair[1]);
        let growth = m2 / m1;
        let linear = n2 as f64 / n1 as f64;
        assert!(
            growth <= linear * 1.5,
            "messages per node grew {growth:.1}x from {n1} to {n2} nodes (linear: {linear:.1}x)"
        );
    }
}
