//! Deterministic split recipes, replayed in paused time against the in-memory backend and
//! cluster: seeds and committed nodes that crash, restart or are cut off, slow forms and lock holders
//! paused past their lease, failed claims, standalone formation, wiped seeds and grown lists,
//! and the five-step recipe that `tests/tests/split_brain.rs` runs with real processes. Each
//! test fails if a second cluster is ever formed while another is held, and checks how the run
//! ends (one cluster, or a refusal that names both clusters). The argument these recipes probe is
//! docs/formation.md, "Why only one node forms".

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use muster_discovery_core::testing::{BackendMode, Directory, MemoryMember, Network, NetworkFaults};
use muster_discovery_core::{
    ClusterId, Commitment, FormationConfig, FormationEngine, FormationError, FormationOutcome, FormationView,
    Membership, MembershipError, NodeName, OnExhausted, PeerInfo, RestartState,
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
    /// When `cannot_probe` heals (`None`: never).
    cannot_probe_until: Option<tokio::time::Instant>,
    /// Directed links cut right after `form` returns.
    block_after_form: Vec<(NodeName, NodeName)>,
}

impl Hooked {
    fn new(net: &Network, node: &NodeName) -> Self {
        Hooked {
            inner: net.start(node),
            net: net.clone(),
            crash_after_form: false,
            cannot_probe: None,
            cannot_probe_until: None,
            stall_before_claim: Duration::ZERO,
            block_after_form: Vec::new(),
        }
    }
}

#[async_trait]
impl Membership for Hooked {
    fn local_node(&self) -> NodeName {
        self.inner.local_node()
    }
    async fn probe(&self, peer: &NodeName) -> Result<PeerInfo, MembershipError> {
        let healed = self
            .cannot_probe_until
            .is_some_and(|t| tokio::time::Instant::now() >= t);
        if self.cannot_probe.as_ref() == Some(peer) && !healed {
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
        for (from, to) in &self.block_after_form {
            self.net.block(from, to);
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
    fn disk_id(&self) -> u64 {
        self.inner.disk_id()
    }
    async fn persist_commitment(&self, commitment: Option<&Commitment>) -> Result<(), MembershipError> {
        // The engine persists its own claim right before claiming: a stall here is a pause
        // between the decision under the lock and the claim.
        if commitment.is_some_and(|v| v.seed == self.inner.local_node()) {
            tokio::time::sleep(self.stall_before_claim).await;
        }
        self.inner.persist_commitment(commitment).await
    }
}

const NEVER: Duration = Duration::from_secs(100_000);

/// DNS-like views for the seed-and-commitment recipes: seeds a < c and a node x that commits; c and a never
/// see each other, x sees c at once and a after 3 s.
fn f1_views() -> (NodeName, NodeName, NodeName, Directory, Network, FormationConfig) {
    let (a, c, x) = (n(1), n(2), n(3));
    let dir = Directory::new(BackendMode::Eventual, 1);
    dir.set_delay(&c, &a, NEVER);
    dir.set_delay(&a, &c, NEVER);
    dir.set_delay(&x, &a, Duration::from_secs(3));
    (a, c, x, dir, Network::new(NetworkFaults::default(), 1), config())
}

/// Crash variant, DNS-like views: c forms with x's agreement and dies before x sees its
/// cluster; x then learns a lower seed a. If a formed, c would reboot its own cluster alone →
/// two clusters. x's commitment to c is persisted and sticky: it never commits to a while c
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

/// Partition variant: x cannot reach c (asymmetric: c reaches x). If c formed on x's agreement
/// and x then switched to a, a would form too → {c} and {a, x}. c needs x's commitment, which x
/// can only give after seeing c's intent, so c never forms; and x commits to a only once it
/// hears from every candidate it lists, c included, so nothing forms until the link heals; then
/// a forms and c joins it.
#[tokio::test(start_paused = true)]
async fn f1_a_committed_node_that_cannot_reach_the_seed_never_lets_two_seeds_form() {
    let (a, c, x, dir, net, cfg) = f1_views();
    let tc = start_plain(&cfg, &dir, &net, &c);
    let ta = start_plain(&cfg, &dir, &net, &a);
    let mut hooked = Hooked::new(&net, &x);
    hooked.cannot_probe = Some(c.clone());
    hooked.cannot_probe_until = Some(tokio::time::Instant::now() + Duration::from_secs(20));
    let tx = start(&cfg, &dir, &x, Arc::new(hooked));
    tokio::time::sleep(Duration::from_secs(19)).await;
    assert!(net.splits().is_empty(), "split: {:?}", net.splits());
    assert_eq!(net.clusters().len(), 0, "x cannot hear c: nothing forms");
    ta.await.unwrap().unwrap();
    tx.await.unwrap().unwrap();
    tc.await.unwrap().unwrap();
    let cluster = assert_one_cluster(&net, &[a.clone(), c, x]);
    assert_eq!(net.cluster_of(&a), Some(cluster));
}

/// Restart variant: the committed node itself restarts, and the listing no longer shows the
/// seed it committed to. The commitment was persisted, so after its restart x still probes c and
/// still refuses to commit to a.
#[tokio::test(start_paused = true)]
async fn f1_a_committed_node_that_restarts_keeps_its_commitment() {
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
    let commitment = net.start(&x).restart_state().commitment;
    assert_eq!(
        commitment.as_ref().map(|v| &v.seed),
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

/// The five-step recipe of `tests/tests/split_brain.rs`, in memory: {1,2} of the list {1,2,3}
/// hold cluster X; 1 is killed, 2 stops gracefully (last to stop), 1's disk is wiped, then 1 and
/// 3 start. 1 and 3 are a majority of the list, but if they formed Y, 2 would then boot X alone.
/// Every listed node must answer for a first formation, so 1 and 3 wait until 2 is back, and
/// join X (docs/formation.md, "Why only one node forms": why every candidate must answer).
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
    // Step 2: kill -9 node 1, graceful stop of node 2. Node 1 never said it stopped, so node 2
    // is not last to stop: it will wait for node 1 (which comes back blank) and then boot first.
    net.crash(&n(1));
    net.stop(&n(2));
    assert!(!net.start(&n(2)).restart_state().last_to_stop);
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

/// List growth: X = {3,4} formed from the list {3,4}; the list grows to {1..5} and 1, 2, 5
/// start while 3 and 4 are down. 1, 2, 5 are a majority of the new list, yet they must not form
/// a Y: they wait for every listed node, and once 3 and 4 are back all five end in X.
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

/// A backend-preferred seed (StatefulSet ordinal 0) lost its disk while the other members are
/// merely unreachable. Even with hint 1 it does not form at once: it waits for every listed
/// node; the old members come back, the lowest holder boots, and the seed joins.
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

/// The holder's `form` takes longer than the lock's lease while its probes keep answering
/// "blank": n2 takes the lapsed lock, but n1 claimed the identity before forming, so n2 finds it
/// recorded, waits, and joins (a claim before every form: docs/formation.md, "Why only one node
/// forms").
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

/// The holder n1 pauses between its decision under the lock and forming, for longer than the
/// lease, while n2 takes the lapsed lock and forms. Were n1 to resume and form, that would be a
/// second cluster; the lapsed lease cancels its action (and a claim under it would fail), so
/// only n2 forms and n1 joins it.
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

/// The claim fails (a backend blip). Forming anyway would leave no record, so a later blank
/// node would form a second cluster once the first was down. A failed claim means no
/// formation; once the claim lands, a crashed member's cluster fences every blank node until the
/// member returns (docs/formation.md, "Rule 2 — fencing").
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

/// `on_exhausted = "standalone"` with a lock-capable backend: nodes that exhaust their retries
/// together must not each form. Standalone goes through the lock and the claim: one forms, the
/// others join it (docs/formation.md, "Rule 4 — when attempts run out").
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

/// With a recorded identity, a blank node joins that cluster, never another one; if only
/// another cluster is reachable it refuses, naming both (docs/formation.md, "Rule 1 — a visible
/// cluster is joined, never competed with").
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
    assert!(matches!(err, FormationError::Refused(_)), "{text}");
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
    assert!(matches!(err, FormationError::Refused(_)), "{text}");
    for needle in [x.to_string(), y.to_string(), "m@n2".into(), "reset".into()] {
        assert!(text.contains(&needle), "{needle} missing from: {text}");
    }
    assert!(!net.is_ready(&n(1)));
}

/// A lone former ("no other members") boots at once only after checking its backend: a
/// candidate in another cluster means its cluster is not the cluster (docs/formation.md,
/// "Inconsistent clusters").
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

/// Listings slower than `stable_margin` (a silent nameserver) would void any timing argument
/// for non-authoritative backends. The commitment rule uses no clocks: with every listing taking
/// 2 s (four times the margin) the crash recipe of
/// `f1_a_seed_that_formed_and_crashed_does_not_let_a_lower_seed_form` still cannot split.
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

/// The shipped retry settings (limit, on_exhausted, interval, probe timeout) with `margin`.
fn shipped(margin: Duration, hint: u32) -> FormationConfig {
    FormationConfig {
        stable_margin: margin,
        target_cluster_size_hint: hint,
        ..FormationConfig::default()
    }
}

/// Starts a node whose engine is woken by peers' notices, as the reference node's is.
fn start_woken(cfg: &FormationConfig, dir: &Directory, net: &Network, node: &NodeName) -> Run {
    let e = FormationEngine::new(
        cfg.clone(),
        Arc::new(dir.backend_for(node)),
        Arc::new(net.start(node)),
    );
    net.set_trigger(node, e.trigger());
    tokio::spawn(async move { e.run().await })
}

/// A blank non-seed must hear from every candidate before it commits, not only from its seed,
/// whose listing may miss some. Cluster C = {c, x, y} exists; c and x lost their disks; a new
/// node a is the seed in every view, and a's listing never shows y. Were c and x to commit to a
/// on a's answer alone, a would form beside y's C whenever `stable_margin` is below ten retry
/// intervals (here the shipped interval with a 3 s margin, and the shipped settings
/// themselves). A commitment needs a round in which every candidate answered, so c and x see
/// y's cluster first and everyone ends in C.
#[tokio::test(start_paused = true)]
async fn s1_a_blank_follower_hears_every_candidate_before_it_commits() {
    for margin in [Duration::from_secs(3), Duration::from_secs(5)] {
        let (a, c, x, y) = (n(1), n(2), n(3), n(4));
        let dir = Directory::new(BackendMode::Eventual, 1);
        dir.set_delay(&a, &y, NEVER);
        let net = Network::new(NetworkFaults::default(), 1);
        let old = net.preform(&[c.clone(), x.clone(), y.clone()]);
        net.wipe(&c);
        net.wipe(&x);
        let cfg = shipped(margin, 3);
        let mut runs: Vec<Run> = [&a, &c, &x]
            .iter()
            .map(|node| start_woken(&cfg, &dir, &net, node))
            .collect();
        // y comes back a little later: the others' first listings do not show it yet.
        tokio::time::sleep(Duration::from_secs(1)).await;
        runs.push(start_woken(&cfg, &dir, &net, &y));
        for run in runs {
            run.await.unwrap().unwrap();
        }
        assert_eq!(assert_one_cluster(&net, &[a, c, x, y]), old, "margin {margin:?}");
    }
}

/// A seed that formed, then lost its disk, must not release the commitments given to it. c
/// formed C with x and y committed; y joined; x was cut off from c and y; c lost its disk and
/// came back blank, still cut off from y; x reached c. If x released on seeing c blank without
/// the intent, a (whose listing never shows y) would form with c and x beside y's C. But c
/// answers from another disk, which cannot say it never formed, so x stays committed until the
/// partition heals and it sees C.
#[tokio::test(start_paused = true)]
async fn s2_a_wiped_seed_does_not_release_the_commitments_to_its_cluster() {
    let (a, c, x, y) = (n(1), n(2), n(3), n(4));
    let dir = Directory::new(BackendMode::Eventual, 2);
    dir.set_delay(&a, &y, NEVER);
    // a registers only later: until then c is the lowest name in every view.
    let net = Network::new(NetworkFaults::default(), 2);
    let cfg = FormationConfig {
        target_cluster_size_hint: 3,
        ..config()
    };
    let mut hooked = Hooked::new(&net, &c);
    hooked.block_after_form = vec![(x.clone(), c.clone()), (x.clone(), y.clone())];
    let tc = start(&cfg, &dir, &c, Arc::new(hooked));
    let tx = start_plain(&cfg, &dir, &net, &x);
    let ty = start_plain(&cfg, &dir, &net, &y);
    tc.await.unwrap().unwrap();
    ty.await.unwrap().unwrap();
    let formed = net.cluster_of(&c).expect("c formed");
    assert_eq!(net.cluster_of(&y), Some(formed.clone()));
    assert!(net.cluster_of(&x).is_none(), "x is cut off before it joins");
    // c loses its disk and comes back blank, cut off from y; x reaches c again.
    net.crash(&c);
    dir.crashed(&c);
    net.wipe(&c);
    net.block(&c, &y);
    net.block(&y, &c);
    net.unblock(&x, &c);
    let tc = start_plain(&cfg, &dir, &net, &c);
    let ta = start_plain(&cfg, &dir, &net, &a);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(net.splits().is_empty(), "split: {:?}", net.splits());
    assert!(
        net.cluster_of(&a).is_none(),
        "a must not form while x is committed to c's cluster"
    );
    net.heal();
    for run in [tc, ta, tx] {
        run.await.unwrap().unwrap();
    }
    assert_eq!(assert_one_cluster(&net, &[a, c, x, y]), formed);
}

/// Rounds woken by notices do not spend the retry budget: if they did, a seed that many peers
/// notify would burn its 60 attempts in seconds, and 80 nodes started 100 ms apart would all
/// give up. The budget is time (`limit × interval`, docs/formation.md, "Rule 4 — when attempts
/// run out"): 100 static-list nodes one every 100 ms, and 30 nodes of a listing that is not
/// authoritative over 3 s, form one cluster with the shipped settings.
#[tokio::test(start_paused = true)]
async fn l1_notices_do_not_spend_the_retry_budget() {
    for (mode, count, every) in [
        (BackendMode::Static((1..=100).map(n).collect()), 100, 100),
        (BackendMode::Eventual, 30, 100),
    ] {
        let nodes: Vec<NodeName> = (1..=count).map(n).collect();
        let dir = Directory::new(mode, 3);
        let net = Network::new(NetworkFaults::default(), 3);
        let cfg = shipped(Duration::from_secs(5), if count == 30 { 16 } else { 1 });
        let mut runs = Vec::new();
        for node in &nodes {
            runs.push(start_woken(&cfg, &dir, &net, node));
            tokio::time::sleep(Duration::from_millis(every)).await;
        }
        for run in runs {
            run.await.unwrap().expect("no node gives up");
        }
        assert_one_cluster(&net, &nodes);
    }
}

/// An intent needs every candidate's answer first. A seed that announced in its first round
/// whatever blocked it would let blank nodes commit (and persist it) while most candidates are
/// still down, and a seed that died then would strand them. Here 2 of 5 nodes run for 10 s:
/// neither announces nor commits; once the rest start, all five form one cluster.
#[tokio::test(start_paused = true)]
async fn l2_no_intent_while_candidates_are_missing() {
    let nodes: Vec<NodeName> = (1..=5).map(n).collect();
    let dir = Directory::new(BackendMode::Static(nodes.clone()), 4);
    let net = Network::new(NetworkFaults::default(), 4);
    let cfg = config();
    let runs: Vec<Run> = nodes[..2]
        .iter()
        .map(|node| start_woken(&cfg, &dir, &net, node))
        .collect();
    tokio::time::sleep(Duration::from_secs(10)).await;
    for node in &nodes[..2] {
        assert_eq!(
            net.published_view(node).and_then(|v| v.intent),
            None,
            "{node} announced"
        );
        assert_eq!(
            net.persisted_commitment(node),
            None,
            "{node} committed with 2 of 5 up"
        );
    }
    let rest: Vec<Run> = nodes[2..]
        .iter()
        .map(|node| start_woken(&cfg, &dir, &net, node))
        .collect();
    for run in runs.into_iter().chain(rest) {
        run.await.unwrap().unwrap();
    }
    assert_one_cluster(&net, &nodes);
}

/// `on_exhausted = "standalone"` with a short budget never forms beside a reachable, ready
/// cluster, as a blank non-seed that probed only its (unreachable) seed would. The round that
/// may form standalone probes every candidate, and the node joins the cluster it finds.
#[tokio::test(start_paused = true)]
async fn l3_standalone_never_forms_beside_a_reachable_cluster() {
    let (s, m, z) = (n(1), n(2), n(3));
    let dir = Directory::new(BackendMode::Static(vec![s.clone(), m.clone(), z.clone()]), 5);
    let net = Network::new(NetworkFaults::default(), 5);
    let old = net.preform(std::slice::from_ref(&m));
    let cfg = FormationConfig {
        discovery_retry_limit: 3,
        on_exhausted: OnExhausted::Standalone,
        ..config()
    };
    start_woken(&cfg, &dir, &net, &m).await.unwrap().unwrap();
    let outcome = start_woken(&cfg, &dir, &net, &z).await.unwrap().unwrap();
    assert!(
        matches!(&outcome, FormationOutcome::JoinedExisting { cluster, .. } if *cluster == old),
        "{outcome:?}"
    );
    assert!(net.splits().is_empty(), "split: {:?}", net.splits());
}

/// On a listing that is not authoritative, a candidate that left (a terminated instance, a pod
/// rescheduled under a new address) must not block formation until retries run out, as it
/// would if the view were the union of every listing. It leaves the view once it has been
/// missing from several listings and unreachable.
#[tokio::test(start_paused = true)]
async fn l4_a_departed_candidate_leaves_the_view() {
    let (a, b, d) = (n(1), n(2), n(3));
    let dir = Directory::new(BackendMode::Eventual, 6);
    dir.set_registration_ttl(Some(Duration::from_secs(1)));
    let net = Network::new(NetworkFaults::default(), 6);
    let cfg = FormationConfig {
        target_cluster_size_hint: 2,
        ..shipped(Duration::from_secs(5), 2)
    };
    let td = start_woken(&cfg, &dir, &net, &d);
    let ta = start_woken(&cfg, &dir, &net, &a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // d is terminated for good: its process and, after the TTL, its registration are gone.
    td.abort();
    net.crash(&d);
    dir.crashed(&d);
    let tb = start_woken(&cfg, &dir, &net, &b);
    ta.await.unwrap().expect("a forms without d");
    tb.await.unwrap().expect("b forms without d");
    assert_one_cluster(&net, &[a, b]);
}

/// A member of an existing cluster that is down (here frozen) and that the backend stops
/// listing (a health-checked DNS record) must not leave the views as fast as a node heard blank:
/// it never answered, so it may hold a cluster, and it stays for `stable_margin` (a listing is
/// trusted to miss a node that holds data for less than that). Cluster C = {c, x, y}; c and x
/// lost their disks; y is frozen for 6.5 s and de-listed from 2 s on; a new node a is the seed.
/// Were y to leave every view after three listings, nobody would probe it again and a would form
/// beside C; it stays, answers once it wakes, and everyone ends in C.
#[tokio::test(start_paused = true)]
async fn a_silent_cluster_member_dropped_from_the_listing_stays_in_the_view() {
    let (a, c, x, y) = (n(1), n(2), n(3), n(4));
    let dir = Directory::new(BackendMode::Eventual, 7);
    let net = Network::new(NetworkFaults::default(), 7);
    let old = net.preform(&[c.clone(), x.clone(), y.clone()]);
    net.wipe(&c);
    net.wipe(&x);
    let cfg = shipped(Duration::from_secs(5), 3);
    let ty = start_woken(&cfg, &dir, &net, &y);
    net.pause(&y, tokio::time::Instant::now() + Duration::from_millis(6500));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let runs: Vec<Run> = [&a, &c, &x]
        .iter()
        .map(|node| start_woken(&cfg, &dir, &net, node))
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    dir.deregister(&y);
    ty.await.unwrap().unwrap();
    for run in runs {
        run.await.unwrap().unwrap();
    }
    assert_eq!(assert_one_cluster(&net, &[a, c, x, y]), old);
}

/// The crash window of a service's bootstrap hook: the seed persisted that it began forming
/// cluster X and ran the hook (its service state now belongs to X), then crashed before X was
/// persisted. Nobody forms another cluster while it is down, whatever the lock-free backends'
/// commitments or the fencing record say; at its restart it completes X (the hook runs again for
/// the same X) and the others join X.
async fn a_seed_that_crashed_during_its_bootstrap_hook_completes_that_formation(mode: BackendMode) {
    let nodes = [n(1), n(2), n(3)];
    let dir = Directory::new(mode, 7);
    let net = Network::new(NetworkFaults::default(), 7);
    net.set_form_latency(Duration::from_secs(3));
    let cfg = FormationConfig {
        target_cluster_size_hint: 3,
        ..config()
    };
    let mut runs: Vec<Run> = nodes.iter().map(|n| start_plain(&cfg, &dir, &net, n)).collect();
    let forming = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(i) = nodes.iter().position(|n| net.forming(n).is_some()) {
            break i;
        }
    };
    let cluster = net.forming(&nodes[forming]).unwrap();
    runs.remove(forming).abort();
    net.crash(&nodes[forming]);
    dir.crashed(&nodes[forming]);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(net.splits().is_empty(), "split: {:?}", net.splits());
    assert!(
        net.clusters().is_empty(),
        "nothing forms while the seed is down: {:?}",
        net.clusters()
    );
    let back = start_plain(&cfg, &dir, &net, &nodes[forming]);
    back.await.unwrap().unwrap();
    for r in runs {
        r.await.unwrap().unwrap();
    }
    assert_eq!(assert_one_cluster(&net, &nodes), cluster);
    assert_eq!(
        net.hook_runs(),
        (2, 1),
        "the hook ran again for the same cluster at the restart"
    );
}

#[tokio::test(start_paused = true)]
async fn a_seed_that_crashed_during_its_bootstrap_hook_completes_that_formation_static() {
    let nodes = vec![n(1), n(2), n(3)];
    a_seed_that_crashed_during_its_bootstrap_hook_completes_that_formation(BackendMode::Static(nodes)).await;
}

#[tokio::test(start_paused = true)]
async fn a_seed_that_crashed_during_its_bootstrap_hook_completes_that_formation_locking() {
    a_seed_that_crashed_during_its_bootstrap_hook_completes_that_formation(BackendMode::Locking).await;
}

#[tokio::test(start_paused = true)]
async fn a_seed_that_crashed_during_its_bootstrap_hook_completes_that_formation_eventual() {
    a_seed_that_crashed_during_its_bootstrap_hook_completes_that_formation(BackendMode::Eventual).await;
}

/// The seen-cluster memory across rounds, as peers see it: blank nodes that saw cluster X (a
/// member in its restart window, not ready) publish it, keep publishing it while any member of X
/// is down — it may still hold X — and forget it only once every member answers blank; then
/// they form.
#[tokio::test(start_paused = true)]
async fn a_seen_cluster_is_published_while_it_may_exist_and_forgotten_when_its_members_are_blank() {
    let nodes: Vec<NodeName> = (1..=4).map(n).collect();
    let dir = Directory::new(BackendMode::Static(nodes.clone()), 1);
    let net = Network::new(NetworkFaults::default(), 1);
    let cfg = config();
    // Nodes 3 and 4 are X; 3 is started and waits for 4 in its restart window, answering as a
    // member of X that is not ready; 4 is down.
    let x = net.preform(&[n(3), n(4)]);
    net.crash(&n(4));
    let _t3 = start_plain(&cfg, &dir, &net, &n(3));
    let t1 = start_plain(&cfg, &dir, &net, &n(1));
    let t2 = start_plain(&cfg, &dir, &net, &n(2));
    let sees = |node: u32| net.published_view(&n(node)).and_then(|v| v.sees_cluster);
    let both = |c: Option<ClusterId>| (c.clone(), c);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!((sees(1), sees(2)), both(Some(x.clone())));
    // X's started member goes down too: X is kept.
    net.crash(&n(3));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!((sees(1), sees(2)), both(Some(x.clone())));
    // It comes back without its data; 4, still down, may hold X: X is kept, nobody forms.
    net.wipe(&n(3));
    let t3 = start_plain(&cfg, &dir, &net, &n(3));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!((sees(1), sees(2)), both(Some(x.clone())));
    assert_eq!(net.formations(), 0);
    // 4 comes back without its data too: X is forgotten and the four form one new cluster.
    net.wipe(&n(4));
    let t4 = start_plain(&cfg, &dir, &net, &n(4));
    for t in [t1, t2, t3, t4] {
        t.await.unwrap().unwrap();
    }
    assert_eq!((sees(1), sees(2)), both(None));
    assert_ne!(assert_one_cluster(&net, &nodes), x);
}
