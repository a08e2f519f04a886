//! Cleanup: skipped rounds, reachable members, non-authoritative backends, consecutive absences.

use std::sync::Arc;

use super::*;
use crate::config::CleanupConfig;
use crate::membership::{ClusterId, Membership};
use crate::testing::{BackendMode, Directory, Network, NetworkFaults};

fn n(i: u32) -> NodeName {
    format!("m@n{i}").parse().unwrap()
}

/// A formed three-node cluster n1..n3 and a cleanup task on n1.
async fn cluster(mode: BackendMode, only_log_warning: bool) -> (Network, Directory, Cleanup) {
    let net = Network::new(NetworkFaults::default(), 1);
    let members: Vec<_> = (1..=3).map(|i| net.start(&n(i))).collect();
    let id = ClusterId("c1".into());
    members[0].form(&id).await.unwrap();
    members[1].join(&n(1), &id).await.unwrap();
    members[2].join(&n(1), &id).await.unwrap();
    let dir = Directory::new(mode, 1);
    let cfg = CleanupConfig {
        only_log_warning,
        consecutive_absences: 3,
        ..CleanupConfig::default()
    };
    let cleanup = Cleanup::new(
        cfg,
        std::time::Duration::from_millis(100),
        Arc::new(dir.backend_for(&n(1))),
        Arc::new(members[0].clone()),
    );
    (net, dir, cleanup)
}

#[tokio::test(start_paused = true)]
async fn removal_only_after_the_configured_consecutive_absences() {
    let (net, dir, mut cleanup) = cluster(BackendMode::Static(vec![n(1), n(2), n(3)]), false).await;
    dir.set_static(vec![n(1), n(2)]);
    net.crash(&n(3));
    for round in 1..=2 {
        let r = cleanup.run_once().await;
        assert_eq!(r.absent, vec![(n(3), round)]);
        assert!(r.forgotten.is_empty(), "round {round} must not remove yet");
    }
    let r = cleanup.run_once().await;
    assert_eq!(r.unknown, vec![n(3)]);
    assert_eq!(r.forgotten, vec![n(3)]);
    assert!(!net.clusters().values().any(|m| m.contains(&n(3))));
}

#[tokio::test(start_paused = true)]
async fn a_backend_error_round_is_skipped_and_neither_counts_nor_resets() {
    let (net, dir, mut cleanup) = cluster(BackendMode::Static(vec![n(1), n(2), n(3)]), false).await;
    dir.set_static(vec![n(1), n(2)]);
    net.crash(&n(3));
    assert_eq!(cleanup.run_once().await.absent, vec![(n(3), 1)]);
    dir.set_failing(true);
    for _ in 0..5 {
        let r = cleanup.run_once().await;
        assert!(r.skipped.is_some());
        assert!(
            r.forgotten.is_empty(),
            "a failed listing must never remove anyone"
        );
    }
    dir.set_failing(false);
    assert_eq!(cleanup.run_once().await.absent, vec![(n(3), 2)]);
    assert_eq!(cleanup.run_once().await.forgotten, vec![n(3)]);
}

#[tokio::test(start_paused = true)]
async fn a_reachable_member_is_never_removed_and_resets_its_count() {
    let (net, dir, mut cleanup) = cluster(BackendMode::Static(vec![n(1), n(2), n(3)]), false).await;
    dir.set_static(vec![n(1), n(2)]);
    for _ in 0..10 {
        let r = cleanup.run_once().await;
        assert!(
            r.absent.is_empty() && r.forgotten.is_empty(),
            "n3 still runs: {r:?}"
        );
    }
    net.crash(&n(3));
    assert_eq!(cleanup.run_once().await.absent, vec![(n(3), 1)]);
    net.start(&n(3));
    assert!(cleanup.run_once().await.absent.is_empty());
    net.crash(&n(3));
    assert_eq!(
        cleanup.run_once().await.absent,
        vec![(n(3), 1)],
        "the count restarted"
    );
}

#[tokio::test(start_paused = true)]
async fn a_non_authoritative_backend_never_removes() {
    let (net, dir, mut cleanup) = cluster(BackendMode::Eventual, false).await;
    crate::discovery::Registration::register(&dir.backend_for(&n(1)))
        .await
        .unwrap();
    net.crash(&n(3));
    for _ in 0..6 {
        let r = cleanup.run_once().await;
        assert!(!r.authoritative);
        assert!(r.forgotten.is_empty());
    }
    assert!(net.clusters().values().any(|m| m.contains(&n(3))));
}

#[tokio::test(start_paused = true)]
async fn only_log_warning_reports_but_keeps_the_member() {
    let (net, dir, mut cleanup) = cluster(BackendMode::Static(vec![n(1), n(2), n(3)]), true).await;
    dir.set_static(vec![n(1), n(2)]);
    net.crash(&n(3));
    for _ in 0..5 {
        cleanup.run_once().await;
    }
    let r = cleanup.run_once().await;
    assert_eq!(r.unknown, vec![n(3)]);
    assert!(r.forgotten.is_empty());
    assert!(net.clusters().values().any(|m| m.contains(&n(3))));
}

#[test]
fn the_local_node_is_never_a_candidate() {
    let mut t = CleanupTracker::default();
    let listing = DiscoveryResult::new([n(2)], true);
    for _ in 0..10 {
        let r = t.observe(&n(1), &[n(1), n(2)], Ok(&listing), &Default::default(), 1);
        assert!(r.unknown.is_empty());
    }
}

#[test]
fn a_listing_that_knows_departures_may_remove_though_it_is_not_authoritative() {
    let mut t = CleanupTracker::default();
    let eventual = DiscoveryResult::new([n(1), n(2)], false);
    let group = DiscoveryResult::new([n(1), n(2)], false).with_departures_known();
    let members = [n(1), n(2), n(3)];
    let r = t.observe(&n(1), &members, Ok(&eventual), &Default::default(), 1);
    assert_eq!(r.unknown, vec![n(3)]);
    assert!(!r.authoritative, "an eventual listing never removes");
    let r = t.observe(&n(1), &members, Ok(&group), &Default::default(), 1);
    assert_eq!(r.unknown, vec![n(3)]);
    assert!(r.authoritative, "a group that no longer lists n3 says it left");
}

#[tokio::test(start_paused = true)]
async fn a_member_another_member_reaches_is_never_removed() {
    let (net, dir, mut cleanup) = cluster(BackendMode::Static(vec![n(1), n(2), n(3)]), false).await;
    // n3 is no longer listed and n1 cannot reach it, but n2 still can.
    dir.set_static(vec![n(1), n(2)]);
    net.block(&n(1), &n(3));
    for _ in 0..5 {
        let r = cleanup.run_once().await;
        assert!(r.absent.is_empty(), "n3 is reachable through n2: {r:?}");
        assert!(r.forgotten.is_empty());
    }
    // Once n2 loses it too, the absences count and n3 goes after the configured rounds.
    net.block(&n(2), &n(3));
    for round in 1..=2 {
        assert_eq!(cleanup.run_once().await.absent, vec![(n(3), round)]);
    }
    assert_eq!(cleanup.run_once().await.forgotten, vec![n(3)]);
}
