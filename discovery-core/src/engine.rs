//! The formation engine: register, then discover → probe → decide → (lock) → act, at
//! `discovery_retry_interval`; or, for a node that was clustered before, the restart window.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::FormationConfig;
use crate::decision::{Decision, DecisionInput, LockState, Probe, Verdict, WaitReason, decide};
use crate::discovery::{Discovery, DiscoveryResult};
use crate::error::{DiscoveryError, ErrorKind, FormationError};
use crate::membership::{ClusterId, FormationView, Membership};
use crate::node_name::NodeName;
use crate::probe::probe_all;
use crate::retry::{Retry, RetryError};
use crate::status::{FormationOutcome, FormationStatus, Phase, TraceEntry, summarize};

/// Runs formation for one node.
pub struct FormationEngine {
    config: FormationConfig,
    discovery: Arc<dyn Discovery>,
    membership: Arc<dyn Membership>,
    local: NodeName,
    status: watch::Sender<FormationStatus>,
    started: Instant,
    rule: fn(&DecisionInput<'_>) -> Verdict,
}

/// What one discovery round saw.
struct Round {
    listing: DiscoveryResult,
    probes: BTreeMap<NodeName, Probe>,
}

/// State carried between rounds of one formation run.
struct RunState {
    view: BTreeSet<NodeName>,
    view_changed_at: Instant,
    sees_cluster: Option<ClusterId>,
    seed: Option<NodeName>,
    registered: bool,
}

impl FormationEngine {
    /// A new engine. Nothing runs until [`FormationEngine::run`].
    pub fn new(
        config: FormationConfig,
        discovery: Arc<dyn Discovery>,
        membership: Arc<dyn Membership>,
    ) -> Self {
        let local = membership.local_node();
        let (status, _) = watch::channel(FormationStatus::default());
        FormationEngine {
            config,
            discovery,
            membership,
            local,
            status,
            started: Instant::now(),
            rule: decide,
        }
    }

    /// Replaces the decision rule. For the simulator's negative tests (a known-unsafe rule must
    /// be caught); production code keeps [`decide`].
    pub fn with_rule(mut self, rule: fn(&DecisionInput<'_>) -> Verdict) -> Self {
        self.rule = rule;
        self
    }

    /// A receiver of the live status.
    pub fn status(&self) -> watch::Receiver<FormationStatus> {
        self.status.subscribe()
    }

    /// A handle for `await_formed`, usable while `run` is in progress.
    pub fn handle(&self) -> FormationHandle {
        FormationHandle {
            status: self.status.subscribe(),
            membership: self.membership.clone(),
            poll: self.config.discovery_retry_interval,
        }
    }

    /// Runs formation to its end: a cluster formed, joined or resumed, or an error.
    pub async fn run(&self) -> Result<FormationOutcome, FormationError> {
        let result = self.run_inner().await;
        self.membership.publish_view(None);
        self.status.send_modify(|s| match &result {
            Ok(outcome) => {
                s.phase = Phase::Formed;
                s.detail = summarize_outcome(outcome);
                s.outcome = Some(outcome.clone());
            }
            Err(e) => {
                s.phase = Phase::Failed;
                s.detail = e.to_string();
            }
        });
        match &result {
            Ok(outcome) => info!(node = %self.local, "{}", summarize_outcome(outcome)),
            Err(e) => warn!(node = %self.local, "formation failed: {e}"),
        }
        result
    }

    /// Graceful shutdown: withdraws the registration.
    pub async fn shutdown(&self) {
        if self.registration_on()
            && let Err(e) = self.discovery.unregister().await
        {
            warn!(node = %self.local, "unregister failed: {e}");
        }
    }

    fn registration_on(&self) -> bool {
        self.config.registration.enabled && self.discovery.capabilities().registration
    }

    async fn run_inner(&self) -> Result<FormationOutcome, FormationError> {
        let restart = self.membership.restart_state();
        let mut st = RunState {
            view: BTreeSet::from([self.local.clone()]),
            view_changed_at: Instant::now(),
            sees_cluster: None,
            seed: None,
            registered: false,
        };
        // Register before anything else, on every boot, so that peers (and this node) see it.
        self.try_register(&mut st).await;
        if let Some(cluster) = restart.cluster.clone() {
            return self.restart_window(cluster, restart).await;
        }
        if !self.discovery.capabilities().full_membership && self.config.target_cluster_size_hint <= 1 {
            warn!(
                node = %self.local,
                backend = self.discovery.name(),
                "the {} backend's list is not authoritative and target_cluster_size_hint is 1: two \
                 groups of nodes that cannot see each other yet could each form a cluster; set \
                 target_cluster_size_hint to more than half of the expected cluster size",
                self.discovery.name()
            );
        }
        self.status.send_modify(|s| s.phase = Phase::Discovering);
        let retry = Retry::every(self.config.discovery_retry_interval);
        // The retry closure is FnMut; the run state lives behind an (uncontended) async mutex.
        let st = tokio::sync::Mutex::new(st);
        let result = retry
            .run(|attempt| {
                let st = &st;
                async move { self.attempt(&mut *st.lock().await, attempt).await }
            })
            .await;
        match result {
            Ok(outcome) => Ok(outcome),
            Err(RetryError::Stopped(e)) => Err(e),
            Err(RetryError::Exhausted { .. }) => unreachable!("the formation retry has no limit"),
        }
    }

    async fn try_register(&self, st: &mut RunState) {
        if st.registered || !self.registration_on() {
            return;
        }
        match self.discovery.register().await {
            Ok(()) => {
                st.registered = true;
                self.status.send_modify(|s| s.registered = true);
                debug!(node = %self.local, "registered with the {} backend", self.discovery.name());
            }
            Err(e) => warn!(node = %self.local, "registration failed (will retry): {e}"),
        }
    }

    /// One attempt: a round, a decision, maybe an action.
    async fn attempt(
        &self,
        st: &mut RunState,
        attempt: u32,
    ) -> ControlFlow<Result<FormationOutcome, FormationError>, ()> {
        self.try_register(st).await;
        self.status.send_modify(|s| s.attempt = attempt);
        let lock = if self.discovery.capabilities().locking {
            LockState::Available
        } else {
            LockState::NotSupported
        };
        let verdict = match self.round(st).await {
            Ok(round) => self.judge(st, &round, lock, attempt),
            Err(e) if e.kind == ErrorKind::Misconfigured => return ControlFlow::Break(Err(e.into())),
            Err(e) => {
                let message = e.to_string();
                self.status
                    .send_modify(|s| s.last_backend_error = Some(message.clone()));
                let decision = Decision::Wait(WaitReason::BackendError { message });
                self.record(attempt, st.view.len(), 0, &decision);
                return ControlFlow::Continue(());
            }
        };
        let decision = match verdict.decision {
            Decision::Lock => match self.under_lock(st, attempt).await {
                Ok(outcome) => return ControlFlow::Break(Ok(outcome)),
                Err(Some(stop)) => return ControlFlow::Break(Err(stop)),
                Err(None) => return ControlFlow::Continue(()),
            },
            other => other,
        };
        match self.act(&decision).await {
            Some(Ok(outcome)) => ControlFlow::Break(Ok(outcome)),
            Some(Err(e)) => {
                let decision = Decision::Wait(WaitReason::ActionFailed {
                    message: e.to_string(),
                });
                self.record(attempt, st.view.len(), 0, &decision);
                ControlFlow::Continue(())
            }
            None if matches!(decision, Decision::GiveUp(_)) => {
                let Decision::GiveUp(reason) = decision else {
                    unreachable!()
                };
                ControlFlow::Break(Err(FormationError::Exhausted {
                    attempts: attempt,
                    reason: reason.to_string(),
                }))
            }
            None => ControlFlow::Continue(()),
        }
    }

    /// Takes the lock, runs a round under it, acts, records the cluster, releases the lock.
    /// `Err(None)`: try again next attempt; `Err(Some(e))`: stop.
    async fn under_lock(
        &self,
        st: &mut RunState,
        attempt: u32,
    ) -> Result<FormationOutcome, Option<FormationError>> {
        let guard = match self
            .discovery
            .lock(&self.local, self.config.lock_acquire_timeout)
            .await
        {
            Ok(g) => g,
            Err(e) => {
                let decision = Decision::Wait(WaitReason::LockFailed {
                    message: e.to_string(),
                });
                self.record(attempt, st.view.len(), 0, &decision);
                return Err(None);
            }
        };
        let result = match self.round(st).await {
            Ok(round) => {
                let verdict = self.judge(st, &round, LockState::Held, attempt);
                match self.act(&verdict.decision).await {
                    Some(Ok(outcome)) => {
                        if let FormationOutcome::NewCluster { cluster, .. } = &outcome {
                            self.record_cluster(cluster).await;
                        }
                        Ok(outcome)
                    }
                    Some(Err(e)) => {
                        let d = Decision::Wait(WaitReason::ActionFailed {
                            message: e.to_string(),
                        });
                        self.record(attempt, st.view.len(), 0, &d);
                        Err(None)
                    }
                    None => match verdict.decision {
                        Decision::GiveUp(reason) => Err(Some(FormationError::Exhausted {
                            attempts: attempt,
                            reason: reason.to_string(),
                        })),
                        _ => Err(None),
                    },
                }
            }
            Err(e) => {
                let d = Decision::Wait(WaitReason::BackendError {
                    message: e.to_string(),
                });
                self.record(attempt, st.view.len(), 0, &d);
                Err(None)
            }
        };
        if let Err(e) = guard.release().await {
            warn!(node = %self.local, "releasing the formation lock failed (its lease will expire): {e}");
        }
        result
    }

    async fn record_cluster(&self, cluster: &ClusterId) {
        if self.discovery.capabilities().fencing
            && let Err(e) = self.discovery.record_cluster(cluster).await
        {
            warn!(node = %self.local, "could not record cluster {cluster} in the backend: {e}");
        }
    }

    /// Lists, updates the view, publishes it, probes every other candidate.
    async fn round(&self, st: &mut RunState) -> Result<Round, DiscoveryError> {
        let listing = self.discovery.list().await?;
        let mut view: BTreeSet<NodeName> = if listing.authoritative {
            BTreeSet::new()
        } else {
            st.view.clone()
        };
        view.extend(listing.nodes.iter().cloned());
        if let Some(seed) = &listing.preferred_seed {
            view.insert(seed.clone());
        }
        view.insert(self.local.clone());
        if view != st.view {
            st.view = view;
            st.view_changed_at = Instant::now();
        }
        st.seed = listing
            .preferred_seed
            .clone()
            .or_else(|| st.view.first().cloned());
        self.publish(st);
        let peers: Vec<NodeName> = st.view.iter().filter(|n| **n != self.local).cloned().collect();
        let probes = probe_all(self.membership.as_ref(), &peers, self.config.probe_timeout).await;
        Ok(Round { listing, probes })
    }

    fn publish(&self, st: &RunState) {
        self.membership.publish_view(Some(FormationView {
            seed: if st.sees_cluster.is_some() {
                None
            } else {
                st.seed.clone()
            },
            sees_cluster: st.sees_cluster.clone(),
            candidates: st.view.len(),
            unchanged_for: st.view_changed_at.elapsed(),
        }));
    }

    /// Runs the pure decision on a round and records it.
    fn judge(&self, st: &mut RunState, round: &Round, lock: LockState, attempt: u32) -> Verdict {
        let input = DecisionInput {
            local: &self.local,
            discovery: &round.listing,
            view: &st.view,
            view_unchanged_for: st.view_changed_at.elapsed(),
            probes: &round.probes,
            lock,
            attempt,
            config: &self.config,
        };
        let verdict = (self.rule)(&input);
        if verdict.sees_cluster.is_some() && st.sees_cluster.is_none() {
            // Once a cluster has been seen, this node never again vouches for a seed.
            st.sees_cluster = verdict.sees_cluster.clone();
            self.publish(st);
        }
        let reachable = 1 + round
            .probes
            .values()
            .filter(|p| matches!(p, Probe::Answered(_)))
            .count();
        self.record(attempt, st.view.len(), reachable, &verdict.decision);
        verdict
    }

    fn record(&self, attempt: u32, discovered: usize, reachable: usize, decision: &Decision) {
        let summary = summarize(decision);
        match decision {
            Decision::Wait(_) => info!(node = %self.local, attempt, "waiting: {summary}"),
            _ => info!(node = %self.local, attempt, "{summary}"),
        }
        let entry = TraceEntry {
            at: self.started.elapsed(),
            attempt,
            discovered,
            reachable,
            decision: decision.clone(),
            summary: summary.clone(),
        };
        self.status.send_modify(|s| {
            s.detail = summary;
            s.push_trace(entry);
        });
    }

    /// Carries out a join or a form; `None` for decisions that are not actions.
    async fn act(&self, decision: &Decision) -> Option<Result<FormationOutcome, FormationError>> {
        Some(match decision {
            Decision::Join { via, .. } => self
                .membership
                .join(via)
                .await
                .map(|cluster| FormationOutcome::JoinedExisting {
                    cluster,
                    via: via.clone(),
                })
                .map_err(Into::into),
            Decision::Form { standalone } => {
                if *standalone {
                    warn!(
                        node = %self.local,
                        "discovery retries exhausted: forming a standalone cluster because \
                         on_exhausted = \"standalone\"; this can split the cluster"
                    );
                }
                self.membership
                    .form()
                    .await
                    .map(|cluster| FormationOutcome::NewCluster {
                        cluster,
                        standalone: *standalone,
                    })
                    .map_err(Into::into)
            }
            _ => return None,
        })
    }

    /// The restart path: no discovery; wait for a known peer within the restart window.
    async fn restart_window(
        &self,
        cluster: ClusterId,
        restart: crate::membership::RestartState,
    ) -> Result<FormationOutcome, FormationError> {
        self.status.send_modify(|s| s.phase = Phase::Restarting);
        let peers: Vec<NodeName> = restart
            .known_peers
            .iter()
            .filter(|p| **p != self.local)
            .cloned()
            .collect();
        let why_now = if restart.force_boot {
            Some("force-boot is set")
        } else if restart.last_to_stop {
            Some("it was the last member to stop")
        } else if peers.is_empty() {
            Some("it has no other members")
        } else {
            None
        };
        if let Some(why) = why_now {
            info!(node = %self.local, "restarting in cluster {cluster} without waiting: {why}");
            self.membership.resume(None).await?;
            return Ok(FormationOutcome::Rejoined { cluster, via: None });
        }
        let cfg = &self.config.restart;
        let retry = Retry::every(self.config.discovery_retry_interval.min(cfg.retry_timeout))
            .within(cfg.retry_timeout * cfg.retry_limit);
        let per_attempt = cfg.retry_timeout;
        let started = Instant::now();
        let result = retry
            .run(|_| {
                let (peers, cluster) = (&peers, &cluster);
                async move {
                    let attempt = (started.elapsed().as_millis() / per_attempt.as_millis().max(1)) as u32 + 1;
                    self.status.send_modify(|s| s.attempt = attempt);
                    match self.restart_probe(cluster, peers).await {
                        Ok(via) => ControlFlow::Break(Ok::<_, ()>(via)),
                        Err(waiting) => {
                            let detail = format!(
                                "restart attempt {attempt} of {}: waiting for a running member of cluster \
                                 {cluster} among [{}]",
                                cfg.retry_limit,
                                waiting
                                    .iter()
                                    .map(|n| n.to_string())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            );
                            info!(node = %self.local, "{detail}");
                            self.status.send_modify(|s| s.detail = detail);
                            ControlFlow::Continue(())
                        }
                    }
                }
            })
            .await;
        match result {
            Ok(via) => {
                self.membership.resume(via.as_ref()).await?;
                Ok(FormationOutcome::Rejoined { cluster, via })
            }
            Err(_) => Err(FormationError::RestartTimeout {
                peers,
                attempts: cfg.retry_limit,
                per_attempt,
            }),
        }
    }

    /// One restart check: `Ok(Some(peer))` to sync from a running member, `Ok(None)` when every
    /// known member is present and waiting and this one is the lowest (it boots first), or the
    /// peers still waited for.
    async fn restart_probe(
        &self,
        cluster: &ClusterId,
        peers: &[NodeName],
    ) -> Result<Option<NodeName>, Vec<NodeName>> {
        let answers = probe_all(self.membership.as_ref(), peers, self.config.probe_timeout).await;
        let mut waiting = Vec::new();
        let mut all_present_and_waiting = true;
        for (peer, answer) in &answers {
            match answer {
                Probe::Answered(info) if info.cluster.as_ref() == Some(cluster) && info.ready => {
                    return Ok(Some(peer.clone()));
                }
                Probe::Answered(info) if info.cluster.as_ref() == Some(cluster) => {}
                _ => {
                    all_present_and_waiting = false;
                    waiting.push(peer.clone());
                }
            }
        }
        let lowest = peers.iter().all(|p| *p > self.local);
        if all_present_and_waiting && lowest {
            info!(
                node = %self.local,
                "every known member of cluster {cluster} is back and waiting; this node is the lowest and boots first"
            );
            return Ok(None);
        }
        if waiting.is_empty() {
            waiting = peers.to_vec();
        }
        Err(waiting)
    }
}

fn summarize_outcome(outcome: &FormationOutcome) -> String {
    match outcome {
        FormationOutcome::NewCluster {
            cluster,
            standalone: false,
        } => format!("formed new cluster {cluster}"),
        FormationOutcome::NewCluster {
            cluster,
            standalone: true,
        } => {
            format!("formed standalone cluster {cluster} after retries ran out")
        }
        FormationOutcome::JoinedExisting { cluster, via } => {
            format!("joined existing cluster {cluster} via {via}")
        }
        FormationOutcome::Rejoined {
            cluster,
            via: Some(v),
        } => {
            format!("rejoined cluster {cluster} after restart (synced from {v})")
        }
        FormationOutcome::Rejoined { cluster, via: None } => {
            format!("rejoined cluster {cluster} after restart (booted first)")
        }
    }
}

/// Why `await_formed` returned without success.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AwaitError {
    /// The timeout passed first; holds the last status detail.
    #[error("cluster not formed with the required members within {timeout:?}: {detail}")]
    Timeout {
        /// The timeout.
        timeout: Duration,
        /// What the node was doing.
        detail: String,
    },
    /// Formation failed.
    #[error("formation failed: {0}")]
    Failed(String),
}

/// Waits for formation from outside the engine.
#[derive(Clone)]
pub struct FormationHandle {
    status: watch::Receiver<FormationStatus>,
    membership: Arc<dyn Membership>,
    poll: Duration,
}

impl FormationHandle {
    /// The current status.
    pub fn status(&self) -> FormationStatus {
        self.status.borrow().clone()
    }

    /// Waits until formation finished and the cluster has at least `min_members` members; says
    /// whether this node formed a new cluster, joined an existing one (via whom) or rejoined.
    pub async fn await_formed(
        &mut self,
        min_members: usize,
        timeout: Duration,
    ) -> Result<FormationOutcome, AwaitError> {
        let wait = async {
            loop {
                let status = self.status.borrow_and_update().clone();
                match status.phase {
                    Phase::Failed => return Err(AwaitError::Failed(status.detail)),
                    Phase::Formed if self.membership.members().await.len() >= min_members => {
                        return Ok(status.outcome.expect("a formed status carries its outcome"));
                    }
                    Phase::Formed => tokio::time::sleep(self.poll).await,
                    _ => {
                        if self.status.changed().await.is_err() {
                            return Err(AwaitError::Failed("the engine was dropped".into()));
                        }
                    }
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(AwaitError::Timeout {
                timeout,
                detail: self.status.borrow().detail.clone(),
            }),
        }
    }
}
