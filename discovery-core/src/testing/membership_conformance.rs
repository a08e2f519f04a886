//! The `Membership` conformance suite: the contract the formation rule relies on (see
//! [`Membership`]), checked against any implementation through a [`Harness`] that starts,
//! crashes and restarts its nodes. The in-memory member and the node runtime both run it. Each
//! check panics with what the implementation did wrong.
//!
//! ```ignore
//! muster_discovery_core::testing::membership_conformance::run(&mut MyHarness::new()).await;
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::membership::{ClusterId, Commitment, FormationView, Membership};
use crate::node_name::NodeName;

/// Starts and crashes the nodes of one implementation; nodes reach each other by name.
#[async_trait]
pub trait Harness: Send {
    /// The name of node `i` (at least three nodes are used: 0, 1, 2).
    fn name(&self, i: usize) -> NodeName;
    /// Starts node `i` on its persisted state (blank the first time) and returns its
    /// `Membership`; peers can call it once this returns.
    async fn start(&mut self, i: usize) -> Arc<dyn Membership>;
    /// Kills node `i`: what it did not persist is lost, what it persisted stays.
    async fn crash(&mut self, i: usize);
}

/// Runs every check.
pub async fn run(h: &mut dyn Harness) {
    blank_probes_are_read_only(h).await;
    views_are_published_and_withdrawn(h).await;
    commitments_and_the_disk_id_survive_a_crash(h).await;
    form_is_persisted_atomically_for_probes(h).await;
    joins_check_the_cluster_and_restart_state_is_faithful(h).await;
}

fn view(local: &NodeName) -> FormationView {
    FormationView {
        seed: Some(local.clone()),
        sees_cluster: None,
        candidates: 3,
        unchanged_for: Duration::from_millis(10),
        intent: Some(ClusterId("intent-1".into())),
        committed: None,
        disk: Some(1),
        disowned: Vec::new(),
    }
}

/// A blank node answers blank, never ready, and a probe changes nothing.
async fn blank_probes_are_read_only(h: &mut dyn Harness) {
    let a = h.start(0).await;
    let b = h.start(1).await;
    let (an, bn) = (h.name(0), h.name(1));
    let first = b.probe(&an).await.expect("a running node answers probes");
    assert_eq!(first.node, an, "a probe answers with the probed node's name");
    assert!(
        first.cluster.is_none() && !first.ready && first.members.is_empty(),
        "a blank node answers blank: {first:?}"
    );
    let second = b.probe(&an).await.expect("a second probe");
    assert_eq!(first.cluster, second.cluster, "a probe must not change the peer");
    assert_eq!(first.members, second.members, "a probe must not change the peer");
    assert!(a.members().await.is_empty(), "a blank node has no members");
    assert!(
        a.restart_state().cluster.is_none(),
        "a blank node has no past cluster"
    );
    assert!(a.probe(&bn).await.is_ok(), "probes work both ways");
    h.crash(0).await;
    assert!(
        b.probe(&an).await.is_err(),
        "a crashed node does not answer probes"
    );
    h.crash(1).await;
}

/// What `publish_view` publishes is what probes see, until it is withdrawn.
async fn views_are_published_and_withdrawn(h: &mut dyn Harness) {
    let a = h.start(0).await;
    let b = h.start(1).await;
    let an = h.name(0);
    let v = view(&an);
    a.publish_view(Some(v.clone()));
    let seen = b
        .probe(&an)
        .await
        .expect("probe")
        .view
        .expect("the published view");
    assert_eq!(seen.intent, v.intent, "probes report the published intent");
    assert_eq!(seen.seed, v.seed, "probes report the published seed");
    a.publish_view(None);
    assert!(
        b.probe(&an).await.expect("probe").view.is_none(),
        "a withdrawn view is gone from probes"
    );
    h.crash(0).await;
    h.crash(1).await;
}

/// A commitment is on disk when `persist_commitment` returns, and the disk id stays with the disk.
async fn commitments_and_the_disk_id_survive_a_crash(h: &mut dyn Harness) {
    let a = h.start(2).await;
    let disk = a.disk_id();
    assert_ne!(disk, 0, "a disk id is never 0");
    let commitment = Commitment {
        seed: h.name(0),
        intent: ClusterId("intent-2".into()),
        disk: Some(7),
    };
    a.persist_commitment(Some(&commitment))
        .await
        .expect("persist_commitment");
    h.crash(2).await;
    let a = h.start(2).await;
    assert_eq!(
        a.restart_state().commitment,
        Some(commitment),
        "a persisted commitment survives a crash"
    );
    assert_eq!(
        a.disk_id(),
        disk,
        "the disk id survives a restart on the same disk"
    );
    a.persist_commitment(None).await.expect("clearing the commitment");
    h.crash(2).await;
    let a = h.start(2).await;
    assert_eq!(
        a.restart_state().commitment,
        None,
        "a cleared commitment stays cleared"
    );
    h.crash(2).await;
}

/// While `form` runs, probes answer the published view or the new cluster, never "blank without a
/// view"; once it returns, the cluster is persisted (it survives a crash) and forming again is
/// refused.
async fn form_is_persisted_atomically_for_probes(h: &mut dyn Harness) {
    let a = h.start(0).await;
    let b = h.start(1).await;
    let an = h.name(0);
    let id = a.new_cluster_id();
    let mut v = view(&an);
    v.intent = Some(id.clone());
    a.publish_view(Some(v));
    let forming = {
        let (a, id) = (a.clone(), id.clone());
        tokio::spawn(async move { a.form(&id).await })
    };
    loop {
        let info = b.probe(&an).await.expect("probes are answered while form runs");
        assert!(
            info.cluster.is_some() || info.view.is_some(),
            "a forming seed answered blank without its view: {info:?}"
        );
        if info.cluster.is_some() {
            assert_eq!(
                info.cluster.as_ref(),
                Some(&id),
                "the cluster formed is the one asked for"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    forming.await.expect("form's task").expect("form");
    a.publish_view(None);
    let info = b.probe(&an).await.expect("probe");
    assert!(
        info.ready && info.members == vec![an.clone()],
        "the former serves, alone: {info:?}"
    );
    assert!(
        a.form(&a.new_cluster_id()).await.is_err(),
        "a member cannot form again"
    );
    h.crash(0).await;
    let a = h.start(0).await;
    assert_eq!(
        a.restart_state().cluster,
        Some(id),
        "a formed cluster survives a crash"
    );
    h.crash(0).await;
    h.crash(1).await;
}

/// A join names its cluster: a wrong one is refused and changes nothing; the right one adds the
/// joiner on both sides; a restart reports the cluster and the other members; `resume` serves.
async fn joins_check_the_cluster_and_restart_state_is_faithful(h: &mut dyn Harness) {
    let a = h.start(0).await;
    let c = h.start(2).await;
    let (an, cn) = (h.name(0), h.name(2));
    let id = a
        .restart_state()
        .cluster
        .expect("node 0 formed in the previous check");
    a.resume(None).await.expect("node 0 resumes its cluster");
    assert!(
        a.probe(&an).await.map(|i| i.ready).unwrap_or(true),
        "resumed: ready"
    );
    let wrong = ClusterId("not-this-one".into());
    assert!(
        c.join(&an, &wrong).await.is_err(),
        "a join naming another cluster is refused"
    );
    assert!(
        c.members().await.is_empty(),
        "a refused join leaves the joiner blank"
    );
    assert!(!a.members().await.contains(&cn), "a refused join adds nobody");
    c.join(&an, &id)
        .await
        .expect("a join naming the member's cluster");
    assert!(
        c.members().await.contains(&an) && c.members().await.contains(&cn),
        "the joiner knows both"
    );
    let seen = c.probe(&an).await.expect("probe");
    assert!(
        seen.members.contains(&cn),
        "the member lists the joiner: {seen:?}"
    );
    h.crash(2).await;
    let c = h.start(2).await;
    let rs = c.restart_state();
    assert_eq!(
        rs.cluster,
        Some(id.clone()),
        "a joiner's cluster survives a crash"
    );
    assert!(
        rs.known_peers.contains(&an),
        "restart state names the other members: {rs:?}"
    );
    assert!(
        !rs.known_peers.contains(&cn),
        "restart state does not list the node itself"
    );
    c.resume(Some(&an)).await.expect("resume via a running member");
    a.forget(&cn).await.expect("forget");
    assert!(!a.members().await.contains(&cn), "a forgotten member is gone");
    h.crash(0).await;
    h.crash(2).await;
}
