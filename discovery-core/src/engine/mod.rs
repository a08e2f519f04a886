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
use crate::decision::{Decision, DecisionInput, LockState, Probe, SeenCluster, Verdict, WaitReason, decide};
use crate::discovery::{Discovery, DiscoveryResult};
use crate::discovery::{LockGuard, Milestone};
use crate::error::{DiscoveryError, ErrorKind};
use crate::lock_wait::LockWait;
use crate::membership::{ClusterId, Commitment, FormationView, Membership};
use crate::node_name::NodeName;
use crate::probe::probe_all;
use crate::retry::{Jitter, Retry, RetryError};
use crate::status::{FormationOutcome, FormationStatus, Phase, TraceEntry, summarize};
use crate::trigger::Trigger;

mod attempt;
mod error;
mod locked;
mod restart;
mod round;
mod words;

pub use error::{FormationError, Refusal, Unanswered};
use words::{describe_answers, note_failures};

/// Runs formation for one node.
pub struct FormationEngine {
    config: FormationConfig,
    discovery: Arc<dyn Discovery>,
    membership: Arc<dyn Membership>,
    local: NodeName,
    status: watch::Sender<FormationStatus>,
    started: Instant,
    rule: fn(&DecisionInput<'_>) -> Verdict,
    /// Fired by peers' notices (and backend watches): decide again now.
    trigger: Trigger,
    /// Which waits go to `info` (changes, and a summary every 10 s).
    waits: crate::wait_log::WaitLog,
}

/// What one discovery round saw.
struct Round {
    listing: DiscoveryResult,
    probes: BTreeMap<NodeName, Probe>,
}

/// How an attempt, or a part of one, ends.
enum Step {
    /// Try again at the next attempt.
    Again,
    /// Formation is done.
    Done(FormationOutcome),
    /// Formation stops with this error.
    Stop(FormationError),
}

impl Step {
    /// The step as the retry loop takes it.
    fn flow(self) -> ControlFlow<Result<FormationOutcome, FormationError>> {
        match self {
            Step::Again => ControlFlow::Continue(()),
            Step::Done(outcome) => ControlFlow::Break(Ok(outcome)),
            Step::Stop(e) => ControlFlow::Break(Err(e)),
        }
    }
}

/// A blank non-seed probes every candidate at least once per this many retry intervals (it
/// probes only its seed in between; see `FormationEngine::seed_only`).
pub const PROBE_ALL_EVERY: u32 = 10;

/// State carried between rounds of one formation run.
struct RunState {
    view: BTreeSet<NodeName>,
    view_changed_at: Instant,
    /// The cluster seen among the peers while it may exist (kept by the rule: see
    /// [`Verdict::seen`]).
    seen: Option<SeenCluster>,
    seed: Option<NodeName>,
    registered: bool,
    /// The standing commitment to a seed's intent (persisted through `Membership`).
    commitment: Option<Commitment>,
    /// The identity this node announces when it is the seed, and forms under.
    intent: ClusterId,
    /// Whether `intent` is announced as this node's intent.
    intent_announced: bool,
    /// The view the last notice told peers of, without its age (which changes every round and
    /// is nothing a peer acts on).
    noticed: Option<FormationView>,
    /// When this node last probed every candidate (see [`FormationEngine::round`]).
    probed_all_at: Instant,
    /// This node's disk id, published so that committed peers can tell a restart from a wipe.
    disk: u64,
    /// Intents of this seed's lost disk that it disowns (see `FormationView::disowned`).
    disowned: Vec<ClusterId>,
    /// Candidates missing from the latest listings (non-authoritative backends only).
    absent: BTreeMap<NodeName, Absence>,
    /// Whether each candidate's last answer in this run was blank and announced no intent.
    last_blank: BTreeMap<NodeName, bool>,
    /// When the run began: the retry budget is a deadline from here.
    began: Instant,
    /// The "waiting long" milestone was sent.
    told_waiting_long: bool,
    /// Why the candidates that do not answer now did not (a wrong cookie, TLS, a closed port),
    /// for the error that ends formation (see [`note_failures`]).
    failures: BTreeMap<NodeName, String>,
    /// The timer that runs the next attempt when a view will have been stable long enough.
    wake: Option<tokio::task::AbortHandle>,
}

/// A candidate missing from the listings of a non-authoritative backend, counted towards leaving
/// the view (see `FormationEngine::departed`).
#[derive(Debug, Clone, Copy)]
struct Absence {
    listings: u32,
    since: Instant,
    unreachable: bool,
}

/// Listings a departed candidate must be missing from before it leaves the view.
pub const DEPARTED_AFTER: u32 = 3;

impl RunState {
    /// The candidates in the view other than `local`.
    fn peers(&self, local: &NodeName) -> Vec<NodeName> {
        self.view.iter().filter(|n| *n != local).cloned().collect()
    }

    /// Cancels the stable-margin timer, if one is set.
    fn cancel_wake(&mut self) {
        if let Some(timer) = self.wake.take() {
            timer.abort();
        }
    }
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
            trigger: Trigger::new(),
            waits: crate::wait_log::WaitLog::default(),
        }
    }

    /// The trigger that makes this engine decide again now: the embedding broker fires it when
    /// a peer's notice arrives (see [`Membership::notify`]), a backend when its watch sees a
    /// change. Between fires the engine still decides every `discovery_retry_interval`.
    pub fn trigger(&self) -> Trigger {
        self.trigger.clone()
    }

    /// Replaces the decision rule. For the simulator's negative tests (a known-unsafe rule must
    /// be caught); only with the `testing` feature, production code keeps [`decide`].
    #[cfg(feature = "testing")]
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
        let milestone = match &result {
            Ok(FormationOutcome::NewCluster { cluster, .. }) => Milestone::Formed {
                cluster: cluster.clone(),
            },
            Ok(FormationOutcome::JoinedExisting { cluster, via }) => Milestone::Joined {
                cluster: cluster.clone(),
                via: Some(via.clone()),
            },
            Ok(FormationOutcome::Rejoined { cluster, via }) => Milestone::Joined {
                cluster: cluster.clone(),
                via: via.clone(),
            },
            Err(e @ FormationError::Refused(_)) => Milestone::Refused {
                reason: e.to_string(),
            },
            Err(e) => Milestone::Failed {
                reason: e.to_string(),
            },
        };
        self.discovery.milestone(&milestone).await;
        result
    }

    /// Graceful shutdown: withdraws the registration.
    pub async fn shutdown(&self) {
        if let Some(r) = self.registration()
            && let Err(e) = r.unregister().await
        {
            warn!(node = %self.local, "unregister failed: {e}");
        }
    }

    /// The backend's registration, when it has one and registration is enabled.
    fn registration(&self) -> Option<&dyn crate::discovery::Registration> {
        self.discovery
            .registration()
            .filter(|_| self.config.registration.enabled)
    }

    /// The state a run starts from, given what this node persisted before it restarted.
    fn begin(&self, restart: &crate::membership::RestartState) -> RunState {
        let disk = self.membership.disk_id();
        RunState {
            view: BTreeSet::from([self.local.clone()]),
            view_changed_at: Instant::now(),
            seen: None,
            seed: None,
            registered: false,
            // A record of this disk's own intent is no commitment, whatever name the node had
            // when it wrote it (an address-based name may have changed since).
            commitment: restart
                .commitment
                .clone()
                .filter(|v| v.seed != self.local && v.disk != Some(disk)),
            // A claim this node made before it restarted is resumed, not abandoned: the backend
            // records that identity, and only this node can complete its formation.
            intent: match &restart.commitment {
                Some(v) if v.seed == self.local => v.intent.clone(),
                _ => self.membership.new_cluster_id(),
            },
            intent_announced: false,
            noticed: None,
            probed_all_at: Instant::now(),
            disk,
            disowned: Vec::new(),
            absent: BTreeMap::new(),
            last_blank: BTreeMap::new(),
            began: Instant::now(),
            told_waiting_long: false,
            failures: BTreeMap::new(),
            wake: None,
        }
    }

    async fn run_inner(&self) -> Result<FormationOutcome, FormationError> {
        let restart = self.membership.restart_state();
        let mut st = self.begin(&restart);
        // Register before anything else, on every boot, so that peers (and this node) see it.
        self.try_register(&mut st).await;
        // A backend with a watch wakes the engine when its listing changes.
        self.discovery.watch(self.trigger.clone());
        if let Some(cluster) = restart.cluster.clone() {
            let known = self.known_peers(&restart);
            let resumed = self.restart_window(cluster, restart).await;
            // The members it knows may be waiting for it in their own restart window.
            if resumed.is_ok() && !known.is_empty() {
                self.membership.notify(&known);
            }
            return resumed;
        }
        if let Some(v) = &st.commitment {
            info!(
                node = %self.local,
                "this node committed to seed {} (intent {}) before it restarted; it commits to no \
                 other seed until {} forms or withdraws",
                v.seed, v.intent, v.seed
            );
        }
        if !self.discovery.full_membership() && self.config.target_cluster_size_hint <= 1 {
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
        let retry = Retry::every(self.config.discovery_retry_interval).jitter(self.jitter());
        // The retry closure is FnMut; the run state lives behind an (uncontended) async mutex.
        let st = tokio::sync::Mutex::new(st);
        let result = retry
            .run_woken(&self.trigger, |attempt| {
                let st = &st;
                async move { self.attempt(&mut *st.lock().await, attempt).await.flow() }
            })
            .await;
        let mut st = st.into_inner();
        st.cancel_wake();
        match result {
            Ok(outcome) => {
                // The former tells every candidate: they join it now. A joiner tells nobody: the
                // member that accepted it pushes the new membership, and a notice from each of N
                // joiners to N candidates would cost N² rounds.
                if matches!(outcome, FormationOutcome::NewCluster { .. }) {
                    let peers = st.peers(&self.local);
                    if !peers.is_empty() {
                        self.membership.notify(&peers);
                    }
                }
                Ok(outcome)
            }
            Err(RetryError::Stopped(e)) => Err(e),
            Err(RetryError::Exhausted { .. }) => unreachable!("the formation retry has no limit"),
        }
    }

    /// The members a restarting node knew, other than itself.
    fn known_peers(&self, restart: &crate::membership::RestartState) -> Vec<NodeName> {
        restart
            .known_peers
            .iter()
            .filter(|p| **p != self.local)
            .cloned()
            .collect()
    }

    /// Retry jitter seeded from the node name: nodes started together spread their rounds apart,
    /// and a simulated run replays exactly.
    fn jitter(&self) -> Jitter {
        Jitter::Seeded(self.local.seed())
    }

    /// The interval-paced attempt number: 1 + whole retry intervals since the run began, but
    /// never more than the rounds run (rounds slower than the interval do not shorten the budget).
    fn paced_attempt(&self, st: &RunState, rounds: u32) -> u32 {
        let interval = self.config.discovery_retry_interval.as_nanos().max(1);
        let paced = (st.began.elapsed().as_nanos() / interval).min(u128::from(u32::MAX - 1)) as u32 + 1;
        paced.min(rounds)
    }

    /// "attempt k of n, t s left": where the retry budget stands.
    fn budget(&self, st: &RunState, attempt: u32) -> String {
        let left = self.config.discovery_budget().saturating_sub(st.began.elapsed());
        format!(
            "attempt {attempt} of {}, {:.1} s left",
            self.config.discovery_retry_limit,
            left.as_secs_f64()
        )
    }

    async fn try_register(&self, st: &mut RunState) {
        let Some(registration) = self.registration().filter(|_| !st.registered) else {
            return;
        };
        match registration.register().await {
            Ok(()) => {
                st.registered = true;
                self.status.send_modify(|s| s.registered = true);
                debug!(node = %self.local, "registered with the {} backend", self.discovery.name());
            }
            Err(e) => warn!(node = %self.local, "registration failed (will retry): {e}"),
        }
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

#[cfg(test)]
mod tests;
