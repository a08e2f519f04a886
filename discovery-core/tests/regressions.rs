//! Deterministic regression tests: every split recipe of the safety review
//! (`../shared/reference/safety-review.md` §1 and appendix A) and the five-step real-process
//! recipe of issue 8, replayed in paused time against the in-memory backend and cluster. Each
//! test fails if a second cluster is ever formed while another is held, and checks how the run
//! ends (one cluster, or a refusal that names both clusters).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use muster_discovery_core::testing::{BackendMode, Directory, MemoryMember, Network, NetworkFaults};
use muster_discovery_core::{
    ClusterId, FormationConfig, FormationEngine, FormationError, FormationOutcome, FormationView, Membership,
    MembershipError, NodeName, OnExhausted, PeerInfo, RestartState, Vouch,
};
use tokio::task::JoinHandle;

fn n(i: u32) -> NodeName {
    format!("m@n{i}").parse().unwrap()
}

fn config() -> FormationConfig {
    FormationConfig {
        discovery_retry_interval: Duration::from_millis(100),
        probe_timeout: Duration::from_millis(50),
        stable_margin: Duration::from_millis(500),
        target_cluster_size_hint: 2,
        discovery_retry_limit: 1_000_000,
        on_exhausted: OnExhausted::Wait,
        lock_acquire_timeout: Duration::from_millis(500),
        ..FormationConfig::default()
    }
}

type Run = JoinHandle<Result<FormationOutcome, FormationError>>;

fn start(cfg: &FormationConfig, dir: &Directory, node: &NodeName, m: Arc<dyn Membership>) -> Run {
    let e = FormationEngine::new(cfg.clone(), Arc::new(dir.backend_for(node)), m);
    tokio::spawn(async move { e.run().await })
}

fn start_plain(cfg: &FormationConfig, dir: &Directory, net: &Network, node: &NodeName) -> Run {
    start(cfg, dir, node, Arc::new(net.start(node)))
}

/// No formation while another cluster was held, and every listed node in one cluster.
fn assert_one_cluster(net: &Network, nodes: &[NodeName]) -> ClusterId {
    assert!(net.splits().is_empty(), "split: {:?}", net.splits());
    let clusters: BTreeSet<ClusterId> = nodes.iter().filter_map(|n| net.cluster_of(n)).collect();
    assert_eq!(clusters.len(), 1, "clusters at the end: {:?}", net.clusters());
    for node in nodes {
        assert!(net.is_ready(node), "{node} is not ready");
    }
    clusters.into_iter().next().unwrap()
}

/// A `Membership` with hooks: forms then dies, cannot probe one peer, or stalls before a step.
struct Hooked {
    inner: MemoryMember,
    net: Network,
    crash_after_form: bool,
    cannot_probe: Option<NodeName>,
    stall_before_claim: Duration,
}

impl Hooked {
    fn new(net: &Network, node: &NodeName) -> Self {
        Hooked {
            inner: net.start(node),
            net: net.clone(),
            crash_after_form: false,
            cannot_probe: None,
            stall_before_claim: Duration::ZERO,
        }
    }
}

#[async_trait]
impl Membership for Hooked {
    fn local_node(&self) -> NodeName {
        self.inner.local_node()
    }
    async fn probe(&self, peer: &NodeName) -> Result<PeerInfo, MembershipError> {
        if self.cannot_probe.as_ref() == Some(peer) {
            return Err(MembershipError::Unreachable(
                peer.clone(),
                "one-way partition".into(),
            ));
        }
        self.inner.probe(peer).await
    }
    fn new_cluster_id(&self) -> ClusterId {
        self.inner.new_cluster_id()
    }
    async fn form(&self, id: &ClusterId) -> Result<(), MembershipError> {
        self.inner.form(id).await?;
        if self.crash_after_form {
            self.net.crash(&self.inner.local_node());
        }
        Ok(())
    }
    async fn join(&self, member: &NodeName, cluster: &ClusterId) -> Result<(), MembershipError> {
        self.inner.join(member, cluster).await
    }
    async fn members(&self) -> Vec<NodeName> {
        self.inner.members().await
    }
    async fn forget(&self, node: &NodeName) -> Result<(), MembershipError> {
        self.inner.forget(node).await
    }
    fn restart_state(&self) -> RestartState {
        self.inner.restart_state()
    }
    async fn resume(&self, via: Option<&NodeName>) -> Result<(), MembershipError> {
        self.inner.resume(via).await
    }
    fn publish_view(&self, view: Option<FormationView>) {
        self.inner.publish_view(view)
    }
    async fn persist_vouch(&self, vouch: Option<&Vouch>) -> Result<(), MembershipError> {
        // The engine persists its own claim right before claiming: a stall here is a pause
        // between the decision under the lock and the claim.
        if vouch.is_some_and(|v| v.seed == self.inner.local_node()) {
            tokio::time::sleep(self.stall_before_claim).await;
        }
        self.inner.persist_vouch(vouch).await
    }
}

const NEVER: Duration = Duration::from_secs(100_000);

/// Review A.1's DNS-like views: seeds a < c and a voucher x; c and a never see each other, x
/// sees c at once and a after 3 s.
fn f1_views() -> (NodeName, NodeName, NodeName, Directory, Network, FormationConfig) {
    let (a, c, x) = (n(1), n(2), n(3));
    let dir = Directory::new(BackendMode::Eventual, 1);
    dir.set_delay(&c, &a, NEVER);
    dir.set_delay(&a, &c, NEVER);
    dir.set_delay(&x, &a, Duration::from_secs(3));
    (a, c, x, dir, Network::new(NetworkFaults::default(), 1), config())
}

/// Review A.1 (F1, crash variant), DNS-like views: c forms with x's agreement and dies before
/// x sees its cluster; x then learns a lower seed a. Before: a formed, c rebooted alone → two
/// clusters. Now x's commitment to c is persisted and sticky: it never vouches for a while c
/// does not answer, and c's return brings everyone into c's cluster.
#[tokio::test(start_paused = true)]
async fn f1_a_seed_that_formed_and_crashed_does_not_let_a_lower_seed_form() {
    let (a, c, x, dir, net, cfg) = f1_views();
    let mut hooked = Hooked::new(&net, &c);
    hooked.crash_after_form = true;
    let tc = start(&cfg, &dir, &c, Arc::new(hooked));
    let ta = start_plain(&cfg, &dir, &net, &a);
    let tx = start_plain(&cfg, &dir, &net, &x);
    tc.await.unwrap().unwrap();
    assert!(!net.is_up(&c), "c formed and died");
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(
        net.cluster_of(&a).is_none(),
        "a must not form while x is committed to c"
    );
    assert!(net.cluster_of(&x).is_none());
    // c comes back on its data and boots its cluster; x and a join it.
    let tc = start_plain(&cfg, &dir, &net, &c);
    tc.await.unwrap().unwrap();
    tx.await.unwrap().unwrap();
    ta.await.unwrap().unwrap();
    assert_one_cluster(&net, &[a, c, x]);
}

/// Review A.1, partition variant: x cannot reach c (asymmetric: c reaches x). Before: c formed
/// on x's agreement, x switched to a, a formed → {c} and {a, x}. Now c needs x's commitment,
/// which x can only give after seeing c's intent, so c never forms; a does, and c joins it.
#[tokio::test(start_paused = true)]
async fn f1_a_voucher_that_cannot_reach_the_seed_never_lets_two_seeds_form() {
    let (a, c, x, dir, net, cfg) = f1_views();
    let tc = start_plain(&cfg, &dir, &net, &c);
    let ta = start_plain(&cfg, &dir, &net, &a);
    let mut hooked = Hooked::new(&net, &x);
    hooked.cannot_probe = Some(c.clone());
    let tx = start(&cfg, &dir, &x, Arc::new(hooked));
    ta.await.unwrap().unwrap();
    tx.await.unwrap().unwrap();
    tc.await.unwrap().unwrap();
    let cluster = assert_one_cluster(&net, &[a.clone(), c, x]);
    assert_eq!(net.cluster_of(&a), Some(cluster));
}

/// Review §1.1, third variant: the voucher itself restarts, and the listing no longer shows the
/// seed it vouched for. The commitment was persisted, so after its restart x still probes c and
/// still refuses to vouch for a.
#[tokio::test(start_paused = true)]
async fn f1_a_voucher_that_restarts_keeps_its_commitment() {
    let (a, c, x, dir, net, cfg) = f1_views();
    let mut hooked = Hooked::new(&net, &c);
    hooked.crash_after_form = true;
    let tc = start(&cfg, &dir, &c, Arc::new(hooked));
    let tx = start_plain(&cfg, &dir, &net, &x);
    tc.await.unwrap().unwrap();
    // x restarts; c's record is gone from the listing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.abort();
    net.crash(&x);
    dir.deregister(&c);
    let vouch = net.start(&x).restart_state().vouch;
    assert_eq!(
        vouch.as_ref().map(|v| &v.seed),
        Some(&c),
        "x's commitment survives its restart"
    );
    let tx = start_plain(&cfg, &dir, &net, &x);
    let ta = start_plain(&cfg, &dir, &net, &a);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(net.cluster_of(&a).is_none() && net.cluster_of(&x).is_none());
    let tc = start_plain(&cfg, &dir, &net, &c);
    tc.await.unwrap().unwrap();
    tx.await.unwrap().unwrap();
    ta.await.unwrap().unwrap();
    assert_one_cluster(&net, &[a, c, x]);
}

/// Issue 8's five-step recipe and review §1.3 (F3), in memory: {1,2} of the list {1,2,3} hold
/// cluster X; 1 is killed, 2 stops gracefully (last to stop), 1's disk is wiped, then 1 and 3
/// start. Before: 1 and 3 were a majority and formed Y; 2 then booted X alone. Now every listed
/// node must answer for a first formation, so 1 and 3 wait until 2 is back, and join X.
#[tokio::test(start_paused = true)]
async fn f3_a_wiped_seed_and_a_blank_newcomer_do_not_form_a_second_cluster() {
    let nodes = vec![n(1), n(2), n(3)];
    let dir = Directory::new(BackendMode::Static(nodes.clone()), 1);
    let net = Network::new(NetworkFaults::default(), 1);
    let cfg = config();
    let x = net.preform(&[n(1), n(2)]);
    // Step 1: 1 and 2 run in X.
    let t1 = start_plain(&cfg, &dir, &net, &n(1));
    let t2 = start_plain(&cfg, &dir, &net, &n(2));
    t1.await.unwrap().unwrap();
    t2.await.unwrap().unwrap();
    // Step 2: kill -9 node 1, graceful stop of node 2 (it records last to stop).
    net.crash(&n(1));
    net.stop(&n(2));
    assert!(net.start(&n(2)).restart_state().last_to_stop);
    net.crash(&n(2));
    // Step 3: node 1's data dir is deleted.
    net.wipe(&n(1));
    // Step 4: start nodes 1 and 3: they must wait, not form.
    let t1 = start_plain(&cfg, &dir, &net, &n(1));
    let t3 = start_plain(&cfg, &dir, &net, &n(3));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(net.cluster_of(&n(1)).is_none() && net.cluster_of(&n(3)).is_none());
    // Step 5: node 2 boots X at once; 1 and 3 join it.
    let t2 = start_plain(&cfg, &dir, &net, &n(2));
    t2.await.unwrap().unwrap();
    t1.await.unwrap().unwrap();
    t3.await.unwrap().unwrap();
    assert_eq!(assert_one_cluster(&net, &nodes), x);
}

/// Review §1.3, list growth: X = {3,4} formed from the list {3,4}; the list grows to {1..5} and
/// 1, 2, 5 start while 3 and 4 are down. Before: 1, 2, 5 were a majority of the new list → Y.
#[tokio::test(start_paused = true)]
async fn f3_a_list_that_grew_while_old_members_were_down_does_not_form_a_second_cluster() {
    let nodes: Vec<NodeName> = (1..=5).map(n).collect();
    let dir = Directory::new(BackendMode::Static(nodes.clone()), 1);
    let net = Network::new(NetworkFaults::default(), 1);
    let cfg = config();
    let old = vec![n(3), n(4)];
    let x = net.preform(&old);
    for o in &old {
        dir.set_list_for(o, old.clone());
    }
    let new: Vec<Run> = [1, 2, 5]
        .iter()
        .map(|i| start_plain(&cfg, &dir, &net, &n(*i)))
        .collect();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(net.clusters().len() == 1, "nothing formed: {:?}", net.clusters());
    let back: Vec<Run> = old.iter().map(|o| start_plain(&cfg, &dir, &net, o)).collect();
    for t in back.into_iter().chain(new) {
        t.await.unwrap().unwrap();
    }
    assert_eq!(assert_one_cluster(&net, &nodes), x);
}

/// Review §1.5: a backend-preferred seed (StatefulSet ordinal 0) lost its disk while the other
/// members are merely unreachable. Before: with hint 1 it formed at once. Now it waits for every
/// listed node; the old members come back, the lowest holder boots, and the seed joins.
#[tokio::test(start_paused = true)]
async fn a_wiped_preferred_seed_does_not_form_while_members_are_unreachable() {
    let nodes = vec![n(1), n(2), n(3)];
    let dir = Directory::new(BackendMode::PreferredSeed(nodes.clone(), n(1)), 1);
    let net = Network::new(NetworkFaults::default(), 1);
    let mut cfg = config();
    cfg.target_cluster_size_hint = 1;
    let x = net.preform(&nodes);
    net.wipe(&n(1));
    let t1 = start_plain(&cfg, &dir, &net, &n(1));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        net.cluster_of(&n(1)).is_none(),
        "the wiped seed must not form alone"
    );
    let t2 = start_plain(&cfg, &dir, &net, &n(2));
    let t3 = start_plain(&cfg, &dir, &net, &n(3));
    for t in [t1, t2, t3] {
        t.await.unwrap().unwrap();
    }
    assert_eq!(assert_one_cluster(&net, &nodes), x);
}

/// Review A.3 (F2-A): the holder's `form` takes longer than the lock's lease while its probes
/// keep answering "blank". Before: n2 took the lapsed lock, formed and recorded; n1 formed too.
/// Now n1 claimed the identity before forming, so n2 sees it recorded and waits, then joins.
#[tokio::test(start_paused = true)]
async fn f2_a_slow_form_past_the_lock_lease_does_not_form_twice() {
    let dir = Directory::new(BackendMode::Locking, 1);
    dir.set_lock_lease(Duration::from_secs(1));
    let net = Network::new(NetworkFaults::default(), 1);
    net.set_form_latency(Duration::from_secs(2));
    let cfg = config();
    let t1 = start_plain(&cfg, &dir, &net, &n(1));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t2 = start_plain(&cfg, &dir, &net, &n(2));
    let outcomes = [t1.await.unwrap().unwrap(), t2.await.unwrap().unwrap()];
    let formed = outcomes
        .iter()
        .filter(|o| matches!(o, FormationOutcome::NewCluster { .. }))
        .count();
    let joined = outcomes
        .iter()
        .filter(|o| matches!(o, FormationOutcome::JoinedExisting { .. }))
        .count();
    assert_eq!((formed, joined), (1, 1), "{outcomes:?}");
    let c = assert_one_cluster(&net, &[n(1), n(2)]);
    assert_eq!(dir.recorded_cluster(), Some(c));
}

/// Review §1.6 (F2-B): the holder pauses between its decision under the lock and forming, for
/// longer than the lease. Before: it resumed and formed a second cluster. Now the lapsed lease
/// cancels its action (and a claim under it would fail), so only one node forms.
#[tokio::test(start_paused = true)]
async fn f2_a_holder_paused_past_its_lease_does_not_form_after_it_resumes() {
    let dir = Directory::new(BackendMode::Locking, 1);
    dir.set_lock_lease(Duration::from_secs(1));
    let net = Network::new(NetworkFaults::default(), 1);
    let cfg = config();
    let mut paused = Hooked::new(&net, &n(1));
    paused.stall_before_claim = Duration::from_secs(3);
    let t1 = start(&cfg, &dir, &n(1), Arc::new(paused));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t2 = start_plain(&cfg, &dir, &net, &n(2));
    let o2 = t2.await.unwrap().unwrap();
    let o1 = t1.await.unwrap().unwrap();
    assert!(matches!(o2, FormationOutcome::NewCluster { .. }), "{o2:?}");
    assert!(matches!(o1, FormationOutcome::JoinedExisting { .. }), "{o1:?}");
    let c = assert_one_cluster(&net, &[n(1), n(2)]);
    assert_eq!(dir.recorded_cluster(), Some(c));
}

/// Review §1.6 (F2-C): the claim fails (a backend blip). Before: the node formed anyway and the
/// record was lost, so a later blank node formed a second cluster once the first was down. Now
/// a failed claim means no formation; once the claim lands, a crashed member's cluster fences
/// every blank node until the member returns.
#[tokio::test(start_paused = true)]
async fn f2_a_failed_claim_never_forms_and_a_landed_claim_fences_blank_nodes() {
    let dir = Directory::new(BackendMode::Locking, 1);
    dir.set_registration_ttl(Some(Duration::from_secs(1)));
    dir.set_claim_error_rate(1.0);
    let net = Network::new(NetworkFaults::default(), 1);
    let mut cfg = config();
    cfg.target_cluster_size_hint = 1;
    let t1 = start_plain(&cfg, &dir, &net, &n(1));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(dir.claim_calls() > 0, "the engine tried to claim");
    assert!(net.clusters().is_empty(), "a failed claim must not form");
    dir.set_claim_error_rate(0.0);
    t1.await.unwrap().unwrap();
    // The former dies and its registration expires; a blank node must not form another.
    net.crash(&n(1));
    dir.crashed(&n(1));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t2 = start_plain(&cfg, &dir, &net, &n(2));
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(net.cluster_of(&n(2)).is_none(), "fenced: {:?}", net.clusters());
    let t1 = start_plain(&cfg, &dir, &net, &n(1));
    t1.await.unwrap().unwrap();
    t2.await.unwrap().unwrap();
    assert_one_cluster(&net, &[n(1), n(2)]);
}

/// Review §1.7 (F6): `on_exhausted = "standalone"` with a lock-capable backend. Before: nodes
/// that exhausted together each formed without the lock. Now standalone goes through the lock
/// and the claim: one forms, the others join it.
#[tokio::test(start_paused = true)]
async fn f6_standalone_goes_through_the_lock_and_forms_once() {
    let dir = Directory::new(BackendMode::Locking, 1);
    let net = Network::new(NetworkFaults::default(), 1);
    // A registered candidate that never answers keeps everyone waiting until retries run out.
    use muster_discovery_core::Discovery;
    dir.backend_for(&n(9))
        .registration()
        .unwrap()
        .register()
        .await
        .unwrap();
    let mut cfg = config();
    cfg.discovery_retry_limit = 3;
    cfg.on_exhausted = OnExhausted::Standalone;
    let runs: Vec<Run> = (1..=3).map(|i| start_plain(&cfg, &dir, &net, &n(i))).collect();
    let mut formed = 0;
    for t in runs {
        if matches!(
            t.await.unwrap().unwrap(),
            FormationOutcome::NewCluster { standalone: true, .. }
        ) {
            formed += 1;
        }
    }
    assert_eq!(
        formed,
        1,
        "exactly one standalone formation: {:?}",
        net.clusters()
    );
    assert_one_cluster(&net, &[n(1), n(2), n(3)]);
}

/// Review §1.8: with a recorded identity, a blank node joins that cluster, never another one; if
/// only another cluster is reachable it refuses, naming both.
#[tokio::test(start_paused = true)]
async fn a_blank_node_refuses_to_join_a_cluster_other_than_the_recorded_one() {
    use muster_discovery_core::Discovery;
    let dir = Directory::new(BackendMode::Locking, 1);
    let net = Network::new(NetworkFaults::default(), 1);
    let mut cfg = config();
    cfg.target_cluster_size_hint = 1;
    // n1 forms X (recorded) and dies; n2 runs a cluster Y it got elsewhere (another backend)
    // and is registered here.
    start_plain(&cfg, &dir, &net, &n(1)).await.unwrap().unwrap();
    let x = net.cluster_of(&n(1)).unwrap();
    net.crash(&n(1));
    let y = net.preform(&[n(2)]);
    let elsewhere = Directory::new(BackendMode::Static(vec![n(2)]), 1);
    start_plain(&cfg, &elsewhere, &net, &n(2)).await.unwrap().unwrap();
    let registration = dir.backend_for(&n(2));
    registration.registration().unwrap().register().await.unwrap();
    let err = start_plain(&cfg, &dir, &net, &n(3)).await.unwrap().unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, FormationError::Refused { .. }), "{text}");
    assert!(
        text.contains(&x.to_string()) && text.contains(&y.to_string()),
        "{text}"
    );
    assert!(net.cluster_of(&n(3)).is_none());
}

/// RabbitMQ's inconsistent-cluster check: a restarting member whose known peer is now in another
/// cluster stops with an error naming both clusters and the commands, instead of booting.
#[tokio::test(start_paused = true)]
async fn a_restarting_member_whose_peer_is_in_another_cluster_refuses() {
    let nodes = vec![n(1), n(2), n(3)];
    let dir = Directory::new(BackendMode::Static(nodes.clone()), 1);
    let net = Network::new(NetworkFaults::default(), 1);
    let cfg = config();
    let x = net.preform(&[n(1), n(2)]);
    let y = net.preform(&[n(2), n(3)]); // n2 was reset and joined another cluster
    let t2 = start_plain(&cfg, &dir, &net, &n(2));
    let t3 = start_plain(&cfg, &dir, &net, &n(3));
    t2.await.unwrap().unwrap();
    t3.await.unwrap().unwrap();
    // n1 was last to stop: it would boot at once, but its peer n2 answers from Y.
    let err = start_plain(&cfg, &dir, &net, &n(1)).await.unwrap().unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, FormationError::Refused { .. }), "{text}");
    for needle in [x.to_string(), y.to_string(), "m@n2".into(), "reset".into()] {
        assert!(text.contains(&needle), "{needle} missing from: {text}");
    }
    assert!(!net.is_ready(&n(1)));
}

/// Review §1.9: a lone former ("no other members") boots at once only after checking its
/// backend: a candidate in another cluster means its cluster is not the cluster.
#[tokio::test(start_paused = true)]
async fn a_lone_member_refuses_when_its_candidates_are_in_another_cluster() {
    let nodes = vec![n(1), n(2), n(3)];
    let dir = Directory::new(BackendMode::Static(nodes.clone()), 1);
    let net = Network::new(NetworkFaults::default(), 1);
    let cfg = config();
    let x = net.preform(&[n(1)]);
    let y = net.preform(&[n(2), n(3)]);
    start_plain(&cfg, &dir, &net, &n(2));
    start_plain(&cfg, &dir, &net, &n(3)).await.unwrap().unwrap();
    let err = start_plain(&cfg, &dir, &net, &n(1)).await.unwrap().unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&x.to_string()) && text.contains(&y.to_string()),
        "{text}"
    );
}

/// A blank peer that lost its data does not keep a restarting member waiting for the whole
/// restart window: every known member is back (waiting, or blank), so the lowest holder boots.
#[tokio::test(start_paused = true)]
async fn a_restarting_member_boots_when_its_only_peer_came_back_blank() {
    let nodes = vec![n(1), n(2)];
    let dir = Directory::new(BackendMode::Static(nodes.clone()), 1);
    let net = Network::new(NetworkFaults::default(), 1);
    let cfg = config();
    let x = net.preform(&nodes);
    net.wipe(&n(1));
    let t1 = start_plain(&cfg, &dir, &net, &n(1));
    let t2 = start_plain(&cfg, &dir, &net, &n(2));
    let started = tokio::time::Instant::now();
    t2.await.unwrap().unwrap();
    t1.await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(assert_one_cluster(&net, &nodes), x);
}

/// Review §1.2: listings slower than `stable_margin` (a silent nameserver) used to void the
/// timing argument for non-authoritative backends. The commitment rule uses no clocks: with
/// every listing taking 2 s (four times the margin) the crash recipe of A.1 still cannot split.
#[tokio::test(start_paused = true)]
async fn slow_listings_do_not_reopen_the_non_authoritative_hole() {
    let (a, c, x, dir, net, cfg) = f1_views();
    dir.set_list_latency(Duration::from_secs(2));
    dir.set_delay(&x, &a, Duration::from_secs(30)); // c forms (slowly) before x learns a
    let mut hooked = Hooked::new(&net, &c);
    hooked.crash_after_form = true;
    let tc = start(&cfg, &dir, &c, Arc::new(hooked));
    let ta = start_plain(&cfg, &dir, &net, &a);
    let tx = start_plain(&cfg, &dir, &net, &x);
    let formed = tc.await.unwrap().unwrap();
    assert!(
        matches!(formed, FormationOutcome::NewCluster { .. }),
        "{formed:?}"
    );
    tokio::time::sleep(Duration::from_secs(90)).await;
    assert!(net.cluster_of(&a).is_none() && net.cluster_of(&x).is_none());
    start_plain(&cfg, &dir, &net, &c).await.unwrap().unwrap();
    tx.await.unwrap().unwrap();
    ta.await.unwrap().unwrap();
    assert_one_cluster(&net, &[a, c, x]);
}
