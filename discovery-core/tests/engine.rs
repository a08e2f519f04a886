//! The formation engine against the in-memory backend and cluster, in paused time.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use muster_discovery_core::testing::{BackendMode, Directory, Network, NetworkFaults};
use muster_discovery_core::{
    Discovery, DiscoveryError, DiscoveryResult, ErrorKind, FormationConfig, FormationEngine, FormationError,
    FormationLock, FormationOutcome, NodeName, OnExhausted, Phase, Registration, RegistrationStatus,
};
use muster_discovery_core::{LockWait, Milestone};

fn n(i: u32) -> NodeName {
    format!("m@n{i}").parse().unwrap()
}

fn config() -> FormationConfig {
    FormationConfig {
        discovery_retry_interval: Duration::from_millis(100),
        discovery_retry_limit: 50,
        probe_timeout: Duration::from_millis(50),
        stable_margin: Duration::from_millis(500),
        ..FormationConfig::default()
    }
}

fn engine(net: &Network, dir: &Directory, node: &NodeName, cfg: &FormationConfig) -> FormationEngine {
    FormationEngine::new(
        cfg.clone(),
        Arc::new(dir.backend_for(node)),
        Arc::new(net.start(node)),
    )
}

/// Starts every node at once and returns their outcomes.
async fn form_all(
    net: &Network,
    dir: &Directory,
    nodes: &[NodeName],
    cfg: &FormationConfig,
) -> Vec<FormationOutcome> {
    let tasks: Vec<_> = nodes
        .iter()
        .map(|node| {
            let e = engine(net, dir, node, cfg);
            tokio::spawn(async move { e.run().await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap().expect("formation succeeds"));
    }
    out
}

#[tokio::test(start_paused = true)]
async fn parallel_start_forms_one_cluster_and_await_formed_tells_how() {
    let net = Network::new(NetworkFaults::default(), 7);
    let nodes = vec![n(1), n(2), n(3)];
    let dir = Directory::new(BackendMode::Static(nodes.clone()), 7);
    let cfg = config();
    let engines: Vec<_> = nodes
        .iter()
        .map(|node| Arc::new(engine(&net, &dir, node, &cfg)))
        .collect();
    let mut handles: Vec<_> = engines.iter().map(|e| e.handle()).collect();
    for e in &engines {
        let e = e.clone();
        tokio::spawn(async move { e.run().await });
    }
    let mut outcomes = Vec::new();
    for h in &mut handles {
        outcomes.push(
            h.await_formed(3, Duration::from_secs(10))
                .await
                .expect("formed with 3 members"),
        );
    }
    let cluster = outcomes[0].cluster().clone();
    assert!(outcomes.iter().all(|o| *o.cluster() == cluster));
    assert_eq!(
        outcomes[0],
        FormationOutcome::NewCluster {
            cluster: cluster.clone(),
            standalone: false
        }
    );
    for o in &outcomes[1..] {
        assert_eq!(
            *o,
            FormationOutcome::JoinedExisting {
                cluster: cluster.clone(),
                via: n(1)
            }
        );
    }
    assert_eq!(net.clusters().len(), 1);
    let status = handles[1].status();
    assert_eq!(status.phase, Phase::Formed);
    assert!(
        status
            .trace
            .iter()
            .any(|t| t.summary.contains("waiting for seed m@n1")),
        "the trace says what the node waited for: {:?}",
        status.trace
    );
}

#[tokio::test(start_paused = true)]
async fn await_formed_times_out_with_what_the_node_waits_for() {
    let net = Network::new(NetworkFaults::default(), 1);
    let dir = Directory::new(BackendMode::Static(vec![n(1), n(2)]), 1);
    let e = Arc::new(engine(&net, &dir, &n(2), &config()));
    let mut h = e.handle();
    tokio::spawn({
        let e = e.clone();
        async move { e.run().await }
    });
    let err = h
        .await_formed(2, Duration::from_secs(1))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("waiting for seed m@n1 (unreachable)"), "{err}");
}

/// A backend that records the order of calls.
struct Recording {
    calls: Arc<Mutex<Vec<&'static str>>>,
    nodes: Vec<NodeName>,
}

#[async_trait]
impl Discovery for Recording {
    fn name(&self) -> &'static str {
        "recording"
    }
    fn full_membership(&self) -> bool {
        true
    }
    fn registration(&self) -> Option<&dyn Registration> {
        Some(self)
    }
    async fn list(&self) -> Result<DiscoveryResult, DiscoveryError> {
        self.calls.lock().unwrap().push("list");
        Ok(DiscoveryResult::new(self.nodes.clone(), true))
    }
    async fn milestone(&self, m: &Milestone) {
        self.calls.lock().unwrap().push(match m {
            Milestone::Formed { .. } => "formed",
            Milestone::Joined { .. } => "joined",
            Milestone::Refused { .. } => "refused",
            Milestone::Failed { .. } => "failed",
            Milestone::WaitingLong { .. } => "waiting long",
            _ => "other",
        });
    }
}

#[async_trait]
impl Registration for Recording {
    async fn register(&self) -> Result<(), DiscoveryError> {
        self.calls.lock().unwrap().push("register");
        Ok(())
    }
    async fn unregister(&self) -> Result<(), DiscoveryError> {
        self.calls.lock().unwrap().push("unregister");
        Ok(())
    }
    fn status(&self) -> RegistrationStatus {
        RegistrationStatus::new(true, "recorded")
    }
}

#[tokio::test(start_paused = true)]
async fn registers_before_discovering_and_unregisters_on_shutdown() {
    let net = Network::new(NetworkFaults::default(), 1);
    let calls = Arc::new(Mutex::new(Vec::new()));
    let backend = Recording {
        calls: calls.clone(),
        nodes: vec![n(1)],
    };
    let e = FormationEngine::new(config(), Arc::new(backend), Arc::new(net.start(&n(1))));
    e.run().await.unwrap();
    e.shutdown().await;
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.first(), Some(&"register"), "{calls:?}");
    assert_eq!(calls.last(), Some(&"unregister"), "{calls:?}");
    assert_eq!(
        calls.iter().filter(|c| **c == "formed").count(),
        1,
        "the milestone is told once: {calls:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_long_wait_and_a_failure_are_told_to_the_backend() {
    let net = Network::new(NetworkFaults::default(), 2);
    let calls = Arc::new(Mutex::new(Vec::new()));
    // Listed with a peer that never answers: waits, then gives up.
    let backend = Recording {
        calls: calls.clone(),
        nodes: vec![n(1), n(2)],
    };
    let mut cfg = config();
    cfg.discovery_retry_limit = 6;
    let e = FormationEngine::new(cfg, Arc::new(backend), Arc::new(net.start(&n(1))));
    assert!(e.run().await.is_err());
    let calls = calls.lock().unwrap().clone();
    let waiting = calls
        .iter()
        .position(|c| *c == "waiting long")
        .expect("told it waits long");
    let failed = calls.iter().position(|c| *c == "failed").expect("told it failed");
    assert!(waiting < failed, "{calls:?}");
    assert_eq!(
        calls.iter().filter(|c| **c == "waiting long").count(),
        1,
        "{calls:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn registration_can_be_disabled() {
    let net = Network::new(NetworkFaults::default(), 1);
    let calls = Arc::new(Mutex::new(Vec::new()));
    let backend = Recording {
        calls: calls.clone(),
        nodes: vec![n(1)],
    };
    let mut cfg = config();
    cfg.registration.enabled = false;
    let e = FormationEngine::new(cfg, Arc::new(backend), Arc::new(net.start(&n(1))));
    e.run().await.unwrap();
    e.shutdown().await;
    assert!(
        !calls
            .lock()
            .unwrap()
            .iter()
            .any(|c| *c == "register" || *c == "unregister")
    );
}

#[tokio::test(start_paused = true)]
async fn exhausted_retries_fail_by_default_with_what_was_missing() {
    let net = Network::new(NetworkFaults::default(), 1);
    let dir = Directory::new(BackendMode::Static(vec![n(1), n(2), n(3)]), 1);
    let mut cfg = config();
    cfg.discovery_retry_limit = 5;
    let err = engine(&net, &dir, &n(2), &cfg).run().await.unwrap_err();
    assert!(
        matches!(err, FormationError::Exhausted { attempts: 5, .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("waiting for seed m@n1 (unreachable)"), "{text}");
    assert!(text.contains("on_exhausted"), "{text}");
    assert!(net.cluster_of(&n(2)).is_none(), "no cluster formed");
}

#[tokio::test(start_paused = true)]
async fn exhausted_retries_with_standalone_form_alone() {
    let net = Network::new(NetworkFaults::default(), 1);
    let dir = Directory::new(BackendMode::Static(vec![n(1), n(2)]), 1);
    let mut cfg = config();
    cfg.discovery_retry_limit = 3;
    cfg.on_exhausted = OnExhausted::Standalone;
    let out = engine(&net, &dir, &n(2), &cfg).run().await.unwrap();
    assert!(
        matches!(out, FormationOutcome::NewCluster { standalone: true, .. }),
        "{out:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_misconfigured_backend_fails_at_once() {
    struct Broken;
    #[async_trait]
    impl Discovery for Broken {
        fn name(&self) -> &'static str {
            "broken"
        }
        fn full_membership(&self) -> bool {
            false
        }
        async fn list(&self) -> Result<DiscoveryResult, DiscoveryError> {
            Err(
                DiscoveryError::new("broken", ErrorKind::Misconfigured, "hostname is not set")
                    .with_remediation("set cluster_formation.dns.hostname"),
            )
        }
    }
    let net = Network::new(NetworkFaults::default(), 1);
    let e = FormationEngine::new(config(), Arc::new(Broken), Arc::new(net.start(&n(1))));
    let err = e.run().await.unwrap_err().to_string();
    assert!(
        err.contains("hostname is not set; set cluster_formation.dns.hostname"),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn temporary_backend_errors_are_retried_not_treated_as_empty() {
    let net = Network::new(NetworkFaults::default(), 1);
    let dir = Directory::new(BackendMode::Static(vec![n(1)]), 1);
    dir.set_failing(true);
    let e = Arc::new(engine(&net, &dir, &n(1), &config()));
    let status = e.status();
    let task = tokio::spawn({
        let e = e.clone();
        async move { e.run().await }
    });
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(
        net.cluster_of(&n(1)).is_none(),
        "a failing backend must not lead to forming"
    );
    let s = status.borrow().clone();
    assert!(
        s.last_backend_error
            .as_deref()
            .unwrap_or("")
            .contains("injected backend failure")
    );
    assert!(
        s.trace.iter().all(|t| t.summary.starts_with("backend error")),
        "{:?}",
        s.trace
    );
    dir.set_failing(false);
    let out = task.await.unwrap().unwrap();
    assert!(matches!(out, FormationOutcome::NewCluster { .. }));
}

#[tokio::test(start_paused = true)]
async fn lock_capable_backend_forms_under_the_lock_releases_it_and_records_the_cluster() {
    let net = Network::new(NetworkFaults::default(), 3);
    let dir = Directory::new(BackendMode::Locking, 3);
    let nodes = vec![n(1), n(2), n(3), n(4)];
    let outcomes = form_all(&net, &dir, &nodes, &config()).await;
    assert_eq!(net.clusters().len(), 1);
    let formed: Vec<_> = outcomes
        .iter()
        .filter(|o| matches!(o, FormationOutcome::NewCluster { .. }))
        .collect();
    assert_eq!(formed.len(), 1);
    assert_eq!(dir.recorded_cluster().as_ref(), Some(formed[0].cluster()));
    assert_eq!(
        dir.lock_holder(),
        None,
        "the lock is released after forming and joining"
    );
}

#[tokio::test(start_paused = true)]
async fn a_blank_node_refuses_to_form_when_the_backend_records_an_unreachable_cluster() {
    let net = Network::new(NetworkFaults::default(), 3);
    let dir = Directory::new(BackendMode::Locking, 3);
    form_all(&net, &dir, &[n(1), n(2)], &config()).await;
    net.crash(&n(1));
    net.crash(&n(2));
    dir.deregister(&n(1));
    dir.deregister(&n(2));
    let mut cfg = config();
    cfg.discovery_retry_limit = 3;
    let err = engine(&net, &dir, &n(9), &cfg)
        .run()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("cluster c1 exists"), "{err}");
    assert!(err.contains("refusing to form another"), "{err}");
    assert_eq!(net.clusters().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_dead_lock_holder_loses_the_lock_when_its_lease_expires() {
    let dir = Directory::new(BackendMode::Locking, 1);
    dir.set_lock_lease(Duration::from_secs(2));
    let backend = dir.backend_for(&n(1));
    let guard = backend
        .lock(&n(1), &LockWait::within(Duration::from_millis(100)))
        .await
        .unwrap();
    std::mem::forget(guard); // the holder dies without releasing
    let other = dir.backend_for(&n(2));
    assert!(
        other
            .lock(&n(2), &LockWait::within(Duration::from_millis(500)))
            .await
            .is_err(),
        "still held within the lease"
    );
    let start = tokio::time::Instant::now();
    other
        .lock(&n(2), &LockWait::within(Duration::from_secs(5)))
        .await
        .expect("free after the lease");
    assert!(start.elapsed() <= Duration::from_secs(2));
    assert_eq!(dir.lock_holder(), Some(n(2)));
}

/// Nodes queued for the formation lock stop waiting when woken (a former's notice) and join the
/// recorded cluster without the lock; a node that starts later joins it without queueing.
#[tokio::test(start_paused = true)]
async fn joiners_of_the_recorded_cluster_neither_queue_for_nor_take_the_lock() {
    let net = Network::new(NetworkFaults::default(), 3);
    let dir = Directory::new(BackendMode::Locking, 3);
    dir.set_lock_lease(Duration::from_secs(600));
    // Someone else holds the formation lock throughout (a former slow to release it).
    let outsider = dir.backend_for(&n(9));
    let _held = outsider
        .lock(&n(9), &LockWait::within(Duration::from_secs(1)))
        .await
        .unwrap();
    let mut cfg = config();
    cfg.lock_acquire_timeout = Duration::from_secs(300);
    let queued: Vec<FormationEngine> = [n(2), n(3)].iter().map(|x| engine(&net, &dir, x, &cfg)).collect();
    let triggers: Vec<_> = queued.iter().map(FormationEngine::trigger).collect();
    let tasks: Vec<_> = queued
        .into_iter()
        .map(|e| tokio::spawn(async move { e.run().await }))
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(tasks.iter().all(|t| !t.is_finished()), "nothing to join yet");
    // A wake while nothing is recorded keeps them waiting in their places.
    for t in &triggers {
        t.fire();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(tasks.iter().all(|t| !t.is_finished()), "still nothing to join");
    assert_eq!(dir.woken_lock_waits(), 0, "an unrelated wake ended a lock wait");
    // The cluster now exists and is recorded; its member n1 is up and ready.
    let cluster = net.preform(&[n(1)]);
    dir.set_recorded_cluster(cluster.clone());
    let member = engine(&net, &dir, &n(1), &cfg);
    member.run().await.expect("n1 resumes its cluster");
    let woken = tokio::time::Instant::now();
    for t in &triggers {
        t.fire();
    }
    for t in tasks {
        let outcome = tokio::time::timeout(Duration::from_secs(2), t)
            .await
            .expect("a woken node stops waiting for the lock")
            .unwrap()
            .unwrap();
        assert!(
            matches!(outcome, FormationOutcome::JoinedExisting { .. }),
            "{outcome:?}"
        );
        assert_eq!(outcome.cluster(), &cluster);
    }
    assert!(
        woken.elapsed() < cfg.discovery_retry_interval,
        "joined at the fire, not at a later interval: {:?}",
        woken.elapsed()
    );
    let late = engine(&net, &dir, &n(4), &cfg).run().await.unwrap();
    assert_eq!(late.cluster(), &cluster);
    assert_eq!(dir.lock_holder(), Some(n(9)), "no joiner took the lock");
    assert_eq!(net.clusters().len(), 1);
}

/// On a listing that is not authoritative the seed forms once every view has been unchanged for
/// `stable_margin`, not at the first retry interval after that.
#[tokio::test(start_paused = true)]
async fn a_listing_that_is_not_authoritative_forms_when_views_are_stable_not_at_the_next_interval() {
    let net = Network::new(NetworkFaults::default(), 11);
    let dir = Directory::new(BackendMode::Eventual, 11);
    let mut cfg = config();
    cfg.discovery_retry_interval = Duration::from_secs(5);
    cfg.stable_margin = Duration::from_secs(3);
    cfg.target_cluster_size_hint = 3;
    let nodes = [n(1), n(2), n(3)];
    for x in &nodes {
        dir.backend_for(x).register().await.unwrap();
    }
    let mut seed_status = None;
    let tasks: Vec<_> = nodes
        .iter()
        .map(|x| {
            let e = engine(&net, &dir, x, &cfg);
            net.set_trigger(x, e.trigger());
            if *x == n(1) {
                seed_status = Some(e.status());
            }
            tokio::spawn(async move { e.run().await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().expect("formed");
    }
    // The seed's views were all unchanged since the start: it decides again when they have
    // been for the margin (retry intervals are 5 s apart, and jittered).
    let trace = seed_status.expect("the seed's status").borrow().trace.clone();
    let at: Vec<Duration> = trace.iter().map(|e| e.at).collect();
    let margin = cfg.stable_margin;
    assert!(
        at.iter()
            .any(|t| *t >= margin && *t < margin + Duration::from_millis(20)),
        "no attempt within 20 ms of the views becoming stable ({margin:?}); attempts at {at:?}"
    );
    assert_eq!(net.clusters().len(), 1);
}

// ---- restart window ----

async fn formed_then_stopped(order: &[u32]) -> (Network, Directory, Vec<NodeName>) {
    let net = Network::new(NetworkFaults::default(), 5);
    let nodes = vec![n(1), n(2), n(3)];
    let dir = Directory::new(BackendMode::Static(nodes.clone()), 5);
    form_all(&net, &dir, &nodes, &config()).await;
    for i in order {
        net.stop(&n(*i));
    }
    (net, dir, nodes)
}

#[tokio::test(start_paused = true)]
async fn restart_in_reverse_order_within_the_window_rejoins_everyone() {
    let (net, dir, nodes) = formed_then_stopped(&[1, 2, 3]).await;
    let cluster = net.cluster_of(&n(1)).unwrap();
    // n3 stopped last; start in order n1, n2, n3 (the reverse of what is safe without a window).
    let mut tasks = Vec::new();
    for (delay, node) in nodes.iter().enumerate() {
        let e = engine(&net, &dir, node, &config());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(delay as u64 * 5)).await;
            e.run().await
        }));
    }
    for t in tasks {
        let out = t.await.unwrap().unwrap();
        assert!(matches!(out, FormationOutcome::Rejoined { .. }), "{out:?}");
        assert_eq!(*out.cluster(), cluster);
    }
    assert_eq!(net.clusters().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_last_node_to_stop_boots_at_once() {
    let (net, dir, _) = formed_then_stopped(&[1, 2, 3]).await;
    let start = tokio::time::Instant::now();
    let out = engine(&net, &dir, &n(3), &config()).run().await.unwrap();
    assert_eq!(
        out,
        FormationOutcome::Rejoined {
            cluster: net.cluster_of(&n(3)).unwrap(),
            via: None
        }
    );
    // One consistency probe round of its known peers, then it boots: no restart window.
    assert!(
        start.elapsed() <= config().probe_timeout * 2,
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_never_returns_fails_the_restart_naming_it_and_force_boot_overrides() {
    let (net, dir, _) = formed_then_stopped(&[1, 2, 3]).await;
    let mut cfg = config();
    cfg.restart.retry_limit = 3;
    cfg.restart.retry_timeout = Duration::from_secs(2);
    let start = tokio::time::Instant::now();
    let err = engine(&net, &dir, &n(1), &cfg).run().await.unwrap_err();
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_secs(5) && elapsed <= Duration::from_secs(6),
        "{elapsed:?}"
    );
    let text = err.to_string();
    assert!(text.contains("[m@n2, m@n3]"), "{text}");
    assert!(text.contains("force-boot"), "{text}");
    net.force_boot(&n(1));
    let out = engine(&net, &dir, &n(1), &cfg).run().await.unwrap();
    assert!(matches!(out, FormationOutcome::Rejoined { via: None, .. }));
}

#[tokio::test(start_paused = true)]
async fn when_every_member_crashed_the_lowest_boots_once_all_are_back() {
    let net = Network::new(NetworkFaults::default(), 5);
    let nodes = vec![n(1), n(2), n(3)];
    let dir = Directory::new(BackendMode::Static(nodes.clone()), 5);
    form_all(&net, &dir, &nodes, &config()).await;
    for node in &nodes {
        net.crash(node); // nobody recorded last-to-stop
    }
    let outcomes = form_all(&net, &dir, &nodes, &config()).await;
    assert_eq!(
        outcomes[0],
        FormationOutcome::Rejoined {
            cluster: net.cluster_of(&n(1)).unwrap(),
            via: None
        }
    );
    for o in &outcomes[1..] {
        assert!(
            matches!(o, FormationOutcome::Rejoined { via: Some(_), .. }),
            "{o:?}"
        );
    }
}

// ---- the conformance suite against the in-memory backend's modes ----

#[tokio::test]
async fn memory_backends_pass_the_conformance_suite() {
    use muster_discovery_core::testing::conformance::{Subject, run};
    let nodes = vec![n(1), n(2), n(3)];
    for mode in [
        BackendMode::Static(nodes.clone()),
        BackendMode::PreferredSeed(nodes.clone(), n(2)),
        BackendMode::Eventual,
        BackendMode::Locking,
    ] {
        let dir = Directory::new(mode, 1);
        let d = dir.clone();
        let subject = Subject::new(nodes.clone(), move |node| {
            Arc::new(d.backend_for(node)) as Arc<dyn Discovery>
        });
        run(&subject).await;
        let broken = Directory::new(BackendMode::Locking, 1);
        broken.set_failing(true);
        let subject = Subject::new(nodes.clone(), move |node| {
            Arc::new(dir.backend_for(node)) as Arc<dyn Discovery>
        })
        .with_unreachable(Arc::new(broken.backend_for(&n(1))));
        muster_discovery_core::testing::conformance::an_error_is_never_an_empty_list(&subject).await;
    }
}

/// Three nodes started together with a 10 s interval: the seed's intent and its formation reach
/// the others as notices, so every node is formed in well under one interval; with every notice
/// lost the same start needs whole intervals (the interval stays the fallback).
#[tokio::test(start_paused = true)]
async fn notices_decide_at_once_and_the_interval_is_only_the_fallback() {
    async fn formed_after(notice_loss: f64) -> Duration {
        let faults = NetworkFaults {
            notice_loss,
            ..NetworkFaults::default()
        };
        let net = Network::new(faults, 11);
        let nodes = vec![n(1), n(2), n(3)];
        let dir = Directory::new(BackendMode::Static(nodes.clone()), 11);
        let cfg = FormationConfig {
            discovery_retry_interval: Duration::from_secs(10),
            ..config()
        };
        let started = tokio::time::Instant::now();
        let tasks: Vec<_> = nodes
            .iter()
            .map(|node| {
                let e = engine(&net, &dir, node, &cfg);
                net.set_trigger(node, e.trigger());
                tokio::spawn(async move { e.run().await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().expect("formation succeeds");
        }
        assert_eq!(net.clusters().len(), 1);
        let (sent, delivered) = net.notices();
        assert!(sent > 0, "notices were sent");
        if notice_loss == 0.0 {
            assert_eq!(sent, delivered, "none lost");
        } else {
            assert_eq!(delivered, 0, "all lost");
        }
        started.elapsed()
    }
    let with = formed_after(0.0).await;
    let without = formed_after(1.0).await;
    assert!(with < Duration::from_millis(500), "with notices: {with:?}");
    assert!(without >= Duration::from_secs(5), "without notices: {without:?}");
}

/// A trigger fired while the engine waits ends the pause (after the floor); many fires coalesce
/// into one more round.
#[tokio::test(start_paused = true)]
async fn fires_coalesce_into_one_more_round() {
    use muster_discovery_core::Trigger;
    use muster_discovery_core::retry::Retry;
    use std::ops::ControlFlow;
    let trigger = Trigger::new();
    let rounds = Arc::new(Mutex::new(Vec::new()));
    let start = tokio::time::Instant::now();
    let (r, t) = (rounds.clone(), trigger.clone());
    let run = tokio::spawn(async move {
        Retry::every(Duration::from_secs(60))
            .attempts(3)
            .run_woken(&t, |_| {
                let r = r.clone();
                async move {
                    r.lock().unwrap().push(start.elapsed());
                    ControlFlow::<Result<(), ()>, ()>::Continue(())
                }
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..10 {
        trigger.fire();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let seen = rounds.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        2,
        "one round at the start, one for the ten fires: {seen:?}"
    );
    assert_eq!(seen[1], Duration::from_millis(105), "the floor after the fire");
    run.abort();
}
