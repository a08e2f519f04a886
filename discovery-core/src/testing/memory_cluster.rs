//! An in-memory cluster of `Membership` nodes on a simulated network.
//!
//! Each cluster's member set lives in one shared place (a perfectly replicated store), so the
//! simulator checks the formation rule, not a replication protocol. Probes and joins take a
//! random latency and may fail; links can be blocked in one direction (partitions that last and
//! heal); processes can be paused (their calls and their probe answers freeze); `form` can take
//! time while probes are answered; crashed nodes keep their persisted state (cluster id,
//! last-to-stop, force-boot, commitment) and lose everything else; wiped nodes lose it all.
//!
//! Every formation is checked when it happens: forming while another cluster is still held by
//! some node's persisted state is recorded as a split (formations are counted, not survivors).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::error::MembershipError;
use tokio::time::Instant;

use crate::membership::{
    ClusterId, Commitment, FormationView, Membership, PeerInfo, PublishedView, RestartState,
};
use crate::node_name::NodeName;
use crate::testing::SimRng;

/// Latency and failure injection for probes and joins.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetworkFaults {
    /// Smallest one-way latency of a call.
    pub min_latency: Duration,
    /// Largest one-way latency of a call.
    pub max_latency: Duration,
    /// Probability that a call to a running node fails anyway.
    pub failure_rate: f64,
    /// Probability that a formation notice is lost (on top of partitions, pauses and stopped
    /// receivers, which drop notices too). Latencies are drawn per notice, so notices reorder.
    pub notice_loss: f64,
}

impl Default for NetworkFaults {
    fn default() -> Self {
        NetworkFaults {
            min_latency: Duration::from_millis(1),
            max_latency: Duration::from_millis(5),
            failure_rate: 0.0,
            notice_loss: 0.0,
        }
    }
}

#[derive(Debug, Default)]
struct NodeState {
    up: bool,
    ready: bool,
    cluster: Option<ClusterId>,
    last_to_stop: bool,
    force_boot: bool,
    view: Option<PublishedView>,
    commitment: Option<Commitment>,
    /// The disk's id (`Membership::disk_id`); 0 until first started, new after a wipe.
    disk: u64,
    /// Members that told this running node they stopped (in memory: lost at a restart).
    stopped_peers: BTreeSet<NodeName>,
    start_ms: u64,
    paused_until: Option<Instant>,
    /// Every cluster this node was a member of since its disk was last wiped (the simulator's
    /// "never dropped" check).
    joined: Vec<ClusterId>,
    /// The running engine's trigger: what a delivered notice fires.
    trigger: Option<crate::trigger::Trigger>,
    /// A formation begun and not finished: persisted before the service's bootstrap hook runs
    /// (its state now belongs to that cluster), completed at the next start if interrupted.
    forming: Option<ClusterId>,
}

#[derive(Debug)]
struct NetInner {
    nodes: BTreeMap<NodeName, NodeState>,
    clusters: BTreeMap<ClusterId, BTreeSet<NodeName>>,
    next_cluster: u64,
    next_disk: u64,
    faults: NetworkFaults,
    rng: SimRng,
    probes: u64,
    notices_sent: u64,
    notices_delivered: u64,
    epoch: tokio::time::Instant,
    /// Directed links that drop every call: (from, to).
    blocked: BTreeSet<(NodeName, NodeName)>,
    form_latency: Duration,
    formations: u64,
    splits: Vec<String>,
    /// Seeds whose disk was lost while it held their own announced intent.
    lost_intents: u64,
    /// Bootstrap hook runs, and how many of them were interrupted formations completed at a
    /// restart.
    hook_runs: u64,
    completed_at_restart: u64,
}

/// The simulated network and the shared membership store.
#[derive(Debug, Clone)]
pub struct Network {
    inner: Arc<Mutex<NetInner>>,
}

impl Network {
    /// An empty network; `seed` drives latencies and failures.
    pub fn new(faults: NetworkFaults, seed: u64) -> Self {
        Network {
            inner: Arc::new(Mutex::new(NetInner {
                nodes: BTreeMap::new(),
                clusters: BTreeMap::new(),
                next_cluster: 1,
                next_disk: 1,
                faults,
                rng: SimRng::new(seed),
                probes: 0,
                notices_sent: 0,
                notices_delivered: 0,
                epoch: tokio::time::Instant::now(),
                blocked: BTreeSet::new(),
                form_latency: Duration::ZERO,
                formations: 0,
                splits: Vec::new(),
                lost_intents: 0,
                hook_runs: 0,
                completed_at_restart: 0,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetInner> {
        self.inner.lock().expect("network mutex poisoned")
    }

    /// Starts (or restarts) a node process and returns its `Membership`.
    pub fn start(&self, node: &NodeName) -> MemoryMember {
        let mut g = self.lock();
        let now_ms = g.epoch.elapsed().as_millis() as u64;
        let disk = g.next_disk;
        let st = g.nodes.entry(node.clone()).or_default();
        if st.disk == 0 {
            st.disk = disk;
            g.next_disk += 1;
        }
        let st = g.nodes.get_mut(node).expect("inserted above");
        // An interrupted formation is completed before the node answers anyone: the hook runs
        // again, and the cluster its state belongs to is formed.
        if let (Some(id), None) = (st.forming.clone(), st.cluster.as_ref()) {
            g.hook_runs += 1;
            g.completed_at_restart += 1;
            Network::finish_forming(&mut g, node, &id);
        }
        let st = g.nodes.get_mut(node).expect("inserted above");
        st.stopped_peers.clear();
        st.up = true;
        st.ready = false;
        st.view = None;
        st.paused_until = None;
        st.start_ms = now_ms;
        MemoryMember {
            net: self.clone(),
            local: node.clone(),
        }
    }

    /// Kills a node: volatile state is lost, persisted state stays.
    pub fn crash(&self, node: &NodeName) {
        if let Some(st) = self.lock().nodes.get_mut(node) {
            st.up = false;
            st.ready = false;
            st.view = None;
        }
    }

    /// Stops a node gracefully. It tells the running members it can reach that it stops, and
    /// records itself last to stop only when every other member told it so: a member it cannot
    /// reach may still be running (on the other side of a partition).
    pub fn stop(&self, node: &NodeName) {
        let mut g = self.lock();
        let cluster = g.nodes.get(node).and_then(|s| s.cluster.clone());
        let members: Vec<NodeName> = cluster
            .as_ref()
            .and_then(|c| g.clusters.get(c))
            .map(|m| m.iter().filter(|m| *m != node).cloned().collect())
            .unwrap_or_default();
        for m in &members {
            let linked = !g.blocked.contains(&(node.clone(), m.clone()))
                && !g.blocked.contains(&(m.clone(), node.clone()));
            if let Some(st) = g.nodes.get_mut(m).filter(|st| st.up && linked) {
                st.stopped_peers.insert(node.clone());
            }
        }
        if let Some(st) = g.nodes.get_mut(node) {
            st.up = false;
            st.ready = false;
            st.view = None;
            st.last_to_stop = cluster.is_some() && members.iter().all(|m| st.stopped_peers.contains(m));
        }
    }

    /// Erases a (stopped) node's disk: it comes back blank.
    pub fn wipe(&self, node: &NodeName) {
        let mut g = self.lock();
        let announced = g
            .nodes
            .get(node)
            .and_then(|st| st.commitment.as_ref())
            .is_some_and(|v| v.seed == *node);
        g.lost_intents += u64::from(announced);
        if let Some(st) = g.nodes.get_mut(node) {
            st.cluster = None;
            st.last_to_stop = false;
            st.force_boot = false;
            st.commitment = None;
            st.disk = 0;
            st.joined.clear();
            st.forming = None;
        }
    }

    /// The formation a node began and has not finished (its bootstrap hook ran for it).
    pub fn forming(&self, node: &NodeName) -> Option<ClusterId> {
        self.lock().nodes.get(node).and_then(|s| s.forming.clone())
    }

    /// Bootstrap hook runs so far, and how many completed an interrupted formation at a restart.
    pub fn hook_runs(&self) -> (u64, u64) {
        let g = self.lock();
        (g.hook_runs, g.completed_at_restart)
    }

    /// Forms `id` with `node` as its only member, recording a split when another cluster is
    /// still held by some node's disk, as a membership or as a formation in progress.
    fn finish_forming(g: &mut NetInner, node: &NodeName, id: &ClusterId) {
        let held: BTreeSet<ClusterId> = g
            .nodes
            .iter()
            .flat_map(|(n, s)| {
                let pending = s.forming.clone().filter(|_| n != node);
                s.cluster.clone().into_iter().chain(pending)
            })
            .collect();
        if let Some(other) = held.iter().find(|c| *c != id) {
            let holders: Vec<String> = g
                .nodes
                .iter()
                .filter(|(_, s)| s.cluster.as_ref() == Some(other) || s.forming.as_ref() == Some(other))
                .map(|(n, _)| n.to_string())
                .collect();
            let line = format!(
                "{node} formed {id} while {other} was held by [{}]",
                holders.join(", ")
            );
            g.splits.push(line);
        }
        g.formations += 1;
        g.clusters.insert(id.clone(), BTreeSet::from([node.clone()]));
        let st = g.nodes.entry(node.clone()).or_default();
        st.cluster = Some(id.clone());
        st.forming = None;
        st.ready = true;
        st.commitment = None;
        st.joined.push(id.clone());
    }

    /// Gives `nodes` a cluster formed before the run (they are down; start them later).
    pub fn preform(&self, nodes: &[NodeName]) -> ClusterId {
        let mut g = self.lock();
        let id = ClusterId(format!("pre{}", g.next_cluster));
        g.next_cluster += 1;
        g.clusters.insert(id.clone(), nodes.iter().cloned().collect());
        for n in nodes {
            let st = g.nodes.entry(n.clone()).or_default();
            st.cluster = Some(id.clone());
            st.joined.push(id.clone());
        }
        id
    }

    /// How many seeds lost their disk while it held their own announced intent.
    pub fn lost_intents(&self) -> u64 {
        self.lock().lost_intents
    }

    /// Whether some node holds a commitment to a seed whose disk is no longer the one that
    /// announced (the seed lost its data, or left for good).
    pub fn committed_to_a_lost_disk(&self) -> bool {
        let g = self.lock();
        g.nodes.iter().any(|(node, st)| {
            st.commitment.as_ref().is_some_and(|v| {
                v.seed != *node && g.nodes.get(&v.seed).map(|s| s.disk) != Some(v.disk.unwrap_or(0))
            })
        })
    }

    /// The formation view a node publishes now.
    pub fn published_view(&self, node: &NodeName) -> Option<FormationView> {
        self.lock()
            .nodes
            .get(node)
            .and_then(|s| s.view.as_ref().map(PublishedView::current))
    }

    /// The commitment (or own intent) a node has persisted.
    pub fn persisted_commitment(&self, node: &NodeName) -> Option<Commitment> {
        self.lock().nodes.get(node).and_then(|s| s.commitment.clone())
    }

    /// Freezes a running node until `until`: its calls wait, its probe answers stop.
    pub fn pause(&self, node: &NodeName, until: Instant) {
        if let Some(st) = self.lock().nodes.get_mut(node) {
            st.paused_until = Some(until);
        }
    }

    /// Drops every call from `from` to `to` (one direction) until healed.
    pub fn block(&self, from: &NodeName, to: &NodeName) {
        self.lock().blocked.insert((from.clone(), to.clone()));
    }

    /// Heals one directed link.
    pub fn unblock(&self, from: &NodeName, to: &NodeName) {
        self.lock().blocked.remove(&(from.clone(), to.clone()));
    }

    /// Heals every blocked link.
    pub fn heal(&self) {
        self.lock().blocked.clear();
    }

    /// How long `form` takes (probes are answered meanwhile, from the state before it).
    pub fn set_form_latency(&self, latency: Duration) {
        self.lock().form_latency = latency;
    }

    /// Clusters formed so far by `form` (pre-formed ones are not counted).
    pub fn formations(&self) -> u64 {
        self.lock().formations
    }

    /// Formations that happened while another cluster was still held: each a split.
    pub fn splits(&self) -> Vec<String> {
        self.lock().splits.clone()
    }

    async fn wait_unpaused(&self, node: &NodeName) {
        let until = self.lock().nodes.get(node).and_then(|s| s.paused_until);
        if let Some(until) = until {
            tokio::time::sleep_until(until).await;
        }
    }

    fn paused(g: &NetInner, node: &NodeName) -> bool {
        g.nodes
            .get(node)
            .and_then(|s| s.paused_until)
            .is_some_and(|u| u > Instant::now())
    }

    /// Marks a stopped node to boot without its peers.
    pub fn force_boot(&self, node: &NodeName) {
        if let Some(st) = self.lock().nodes.get_mut(node) {
            st.force_boot = true;
        }
    }

    /// Every cluster and its members.
    pub fn clusters(&self) -> BTreeMap<ClusterId, BTreeSet<NodeName>> {
        self.lock().clusters.clone()
    }

    /// The cluster a node belongs to.
    pub fn cluster_of(&self, node: &NodeName) -> Option<ClusterId> {
        self.lock().nodes.get(node).and_then(|s| s.cluster.clone())
    }

    /// Whether a node is up and ready.
    pub fn is_ready(&self, node: &NodeName) -> bool {
        self.lock().nodes.get(node).is_some_and(|s| s.up && s.ready)
    }

    /// Whether a node's process is running.
    pub fn is_up(&self, node: &NodeName) -> bool {
        self.lock().nodes.get(node).is_some_and(|s| s.up)
    }

    /// Every cluster a node has ever joined or formed.
    pub fn history(&self, node: &NodeName) -> Vec<ClusterId> {
        self.lock()
            .nodes
            .get(node)
            .map(|s| s.joined.clone())
            .unwrap_or_default()
    }

    /// Probes served so far.
    pub fn probe_count(&self) -> u64 {
        self.lock().probes
    }

    /// Draws a latency and whether a call fails.
    /// Connects `node`'s running engine to the notices sent to it.
    pub fn set_trigger(&self, node: &NodeName, trigger: crate::trigger::Trigger) {
        if let Some(st) = self.lock().nodes.get_mut(node) {
            st.trigger = Some(trigger);
        }
    }

    /// Notices sent and delivered so far.
    pub fn notices(&self) -> (u64, u64) {
        let g = self.lock();
        (g.notices_sent, g.notices_delivered)
    }

    /// Delivers a notice from `from` to `to` after a drawn latency, unless it is lost, the link
    /// is cut, or the receiver is down or paused then.
    fn send_notice(&self, from: &NodeName, to: &NodeName) {
        let (latency, fails) = self.call_faults();
        let lost = {
            let mut g = self.lock();
            g.notices_sent += 1;
            let p = g.faults.notice_loss;
            g.rng.chance(p) || fails
        };
        let (net, from, to) = (self.clone(), from.clone(), to.clone());
        tokio::spawn(async move {
            tokio::time::sleep(latency).await;
            let trigger = {
                let mut g = net.lock();
                let cut = g.blocked.contains(&(from.clone(), to.clone()));
                let asleep = Network::paused(&g, &to);
                let t = g.nodes.get(&to).filter(|s| s.up).and_then(|s| s.trigger.clone());
                if lost || cut || asleep {
                    return;
                }
                if t.is_some() {
                    g.notices_delivered += 1;
                }
                t
            };
            if let Some(t) = trigger {
                t.fire();
            }
        });
    }

    fn call_faults(&self) -> (Duration, bool) {
        let mut g = self.lock();
        let f = g.faults;
        let ms = g
            .rng
            .range(f.min_latency.as_millis() as u64, f.max_latency.as_millis() as u64);
        let fails = g.rng.chance(f.failure_rate);
        (Duration::from_millis(ms), fails)
    }
}

/// One node's `Membership` on a `Network`.
#[derive(Debug, Clone)]
pub struct MemoryMember {
    net: Network,
    local: NodeName,
}

fn unreachable(peer: &NodeName, why: &str) -> MembershipError {
    MembershipError::Unreachable(peer.clone(), why.to_string())
}

#[async_trait]
impl Membership for MemoryMember {
    fn local_node(&self) -> NodeName {
        self.local.clone()
    }

    fn notify(&self, peers: &[NodeName]) {
        for p in peers {
            self.net.send_notice(&self.local, p);
        }
    }

    async fn probe(&self, peer: &NodeName) -> Result<PeerInfo, MembershipError> {
        self.net.wait_unpaused(&self.local).await;
        let (latency, fails) = self.net.call_faults();
        tokio::time::sleep(latency).await;
        let info = {
            let mut g = self.net.lock();
            g.probes += 1;
            if g.blocked.contains(&(self.local.clone(), peer.clone()))
                || g.blocked.contains(&(peer.clone(), self.local.clone()))
            {
                return Err(unreachable(peer, "partitioned"));
            }
            if Network::paused(&g, peer) {
                return Err(unreachable(peer, "paused (no answer)"));
            }
            let st = g
                .nodes
                .get(peer)
                .filter(|s| s.up)
                .ok_or_else(|| unreachable(peer, "not running"))?;
            if fails {
                return Err(unreachable(peer, "injected network failure"));
            }
            let members: Vec<NodeName> = st
                .cluster
                .as_ref()
                .and_then(|c| g.clusters.get(c))
                .map(|m| m.iter().cloned().collect())
                .unwrap_or_default();
            // The members this peer's own calls would reach now: running, unpaused, unblocked.
            let in_contact = members
                .iter()
                .filter(|m| *m != peer && !g.blocked.contains(&(peer.clone(), (*m).clone())))
                .filter(|m| g.nodes.get(*m).is_some_and(|s| s.up) && !Network::paused(&g, m))
                .cloned()
                .collect();
            PeerInfo {
                node: peer.clone(),
                cluster: st.cluster.clone(),
                members,
                ready: st.ready,
                start_time_ms: st.start_ms,
                view: st.view.as_ref().map(PublishedView::current),
                in_contact,
            }
        };
        tokio::time::sleep(latency).await;
        Ok(info)
    }

    fn new_cluster_id(&self) -> ClusterId {
        let mut g = self.net.lock();
        let id = ClusterId(format!("c{}", g.next_cluster));
        g.next_cluster += 1;
        id
    }

    async fn form(&self, id: &ClusterId) -> Result<(), MembershipError> {
        self.net.wait_unpaused(&self.local).await;
        {
            let mut g = self.net.lock();
            let st = g.nodes.entry(self.local.clone()).or_default();
            if let Some(c) = &st.cluster {
                return Err(MembershipError::Invalid(format!(
                    "already a member of cluster {c}"
                )));
            }
            match &st.forming {
                Some(begun) if begun != id => {
                    return Err(MembershipError::Invalid(format!(
                        "this node began forming cluster {begun}; it completes only that one"
                    )));
                }
                _ => st.forming = Some(id.clone()),
            }
            // The service's bootstrap hook runs now, for as long as the form latency: a crash
            // meanwhile leaves the formation begun, to complete at the next start.
            g.hook_runs += 1;
        }
        let latency = self.net.lock().form_latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let mut g = self.net.lock();
        Network::finish_forming(&mut g, &self.local, id);
        Ok(())
    }

    async fn join(&self, member: &NodeName, cluster: &ClusterId) -> Result<(), MembershipError> {
        self.net.wait_unpaused(&self.local).await;
        let (latency, fails) = self.net.call_faults();
        tokio::time::sleep(latency).await;
        if fails {
            return Err(unreachable(member, "injected network failure"));
        }
        {
            let mut g = self.net.lock();
            if g.blocked.contains(&(self.local.clone(), member.clone())) || Network::paused(&g, member) {
                return Err(unreachable(member, "no answer"));
            }
            let via = g
                .nodes
                .get(member)
                .filter(|s| s.up)
                .ok_or_else(|| unreachable(member, "not running"))?;
            match (&via.cluster, via.ready) {
                (Some(c), true) if c == cluster => {}
                _ => {
                    return Err(MembershipError::Refused(
                        member.clone(),
                        format!("not a ready member of cluster {cluster}"),
                    ));
                }
            }
            if let Some(c) = g.nodes.get(&self.local).and_then(|s| s.cluster.clone()) {
                return Err(MembershipError::Invalid(format!(
                    "already a member of cluster {c}"
                )));
            }
            g.clusters
                .entry(cluster.clone())
                .or_default()
                .insert(self.local.clone());
            let st = g.nodes.entry(self.local.clone()).or_default();
            st.cluster = Some(cluster.clone());
            st.ready = true;
            st.commitment = None;
            st.joined.push(cluster.clone());
        }
        tokio::time::sleep(latency).await;
        Ok(())
    }

    async fn members(&self) -> Vec<NodeName> {
        let g = self.net.lock();
        g.nodes
            .get(&self.local)
            .and_then(|s| s.cluster.as_ref())
            .and_then(|c| g.clusters.get(c))
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default()
    }

    async fn forget(&self, node: &NodeName) -> Result<(), MembershipError> {
        let mut g = self.net.lock();
        let cluster = g
            .nodes
            .get(&self.local)
            .and_then(|s| s.cluster.clone())
            .ok_or_else(|| MembershipError::Invalid("not clustered".into()))?;
        if let Some(m) = g.clusters.get_mut(&cluster) {
            m.remove(node);
        }
        if let Some(st) = g.nodes.get_mut(node) {
            st.cluster = None;
        }
        Ok(())
    }

    fn restart_state(&self) -> RestartState {
        let g = self.net.lock();
        let Some(st) = g.nodes.get(&self.local) else {
            return RestartState::default();
        };
        let known_peers = st
            .cluster
            .as_ref()
            .and_then(|c| g.clusters.get(c))
            .map(|m| m.iter().filter(|n| **n != self.local).cloned().collect())
            .unwrap_or_default();
        RestartState {
            cluster: st.cluster.clone(),
            known_peers,
            last_to_stop: st.last_to_stop,
            force_boot: st.force_boot,
            commitment: st.commitment.clone(),
        }
    }

    async fn resume(&self, _via: Option<&NodeName>) -> Result<(), MembershipError> {
        self.net.wait_unpaused(&self.local).await;
        let mut g = self.net.lock();
        // Running again: the members it told it stopped learn so (its state push, in a node).
        for other in g.nodes.values_mut() {
            other.stopped_peers.remove(&self.local);
        }
        let st = g.nodes.entry(self.local.clone()).or_default();
        st.ready = true;
        st.force_boot = false;
        st.last_to_stop = false;
        Ok(())
    }

    fn publish_view(&self, view: Option<FormationView>) {
        if let Some(st) = self.net.lock().nodes.get_mut(&self.local) {
            st.view = view.map(PublishedView::new);
        }
    }

    fn disk_id(&self) -> u64 {
        self.net.lock().nodes.get(&self.local).map_or(0, |st| st.disk)
    }

    async fn persist_commitment(&self, commitment: Option<&Commitment>) -> Result<(), MembershipError> {
        self.net.wait_unpaused(&self.local).await;
        if let Some(st) = self.net.lock().nodes.get_mut(&self.local) {
            st.commitment = commitment.cloned();
        }
        Ok(())
    }
}
