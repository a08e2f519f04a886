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
use crate::discovery::{ClaimError, LockGuard, Milestone};
use crate::discovery::{Discovery, DiscoveryResult};
use crate::error::{DiscoveryError, ErrorKind, FormationError};
use crate::lock_wait::LockWait;
use crate::membership::{ClusterId, FormationView, Membership, Vouch};
use crate::node_name::NodeName;
use crate::probe::probe_all;
use crate::retry::{Jitter, Retry, RetryError};
use crate::status::{FormationOutcome, FormationStatus, Phase, TraceEntry, summarize};
use crate::trigger::Trigger;

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

/// What the part of a locked attempt that races the lock's loss produced.
enum Held {
    /// Ended as a step (joined, formed without fencing, waits or stops).
    Ended(Step),
    /// The identity is claimed; forming it must not be cancelled.
    Claimed(ClusterId, bool),
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
    commitment: Option<Vouch>,
    /// The identity this node announces when it is the seed, and forms under.
    proposal: ClusterId,
    /// Whether `proposal` is announced as this node's intent.
    intending: bool,
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
            Err(e @ FormationError::Refused { .. }) => Milestone::Refused {
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

    async fn run_inner(&self) -> Result<FormationOutcome, FormationError> {
        let restart = self.membership.restart_state();
        let disk = self.membership.disk_id();
        let mut st = RunState {
            view: BTreeSet::from([self.local.clone()]),
            view_changed_at: Instant::now(),
            seen: None,
            seed: None,
            registered: false,
            // A record of this disk's own intent is no commitment, whatever name the node had
            // when it wrote it (an address-based name may have changed since).
            commitment: restart
                .vouch
                .clone()
                .filter(|v| v.seed != self.local && v.disk != Some(disk)),
            // A claim this node made before it restarted is resumed, not abandoned: the backend
            // records that identity, and only this node can complete its formation.
            proposal: match &restart.vouch {
                Some(v) if v.seed == self.local => v.intent.clone(),
                _ => self.membership.new_cluster_id(),
            },
            intending: false,
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
        };
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
                "this node committed to seed {} (intent {}) before it restarted; it vouches for no \
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

    /// One attempt: a round, a decision, maybe an action.
    async fn attempt(&self, st: &mut RunState, attempt: u32) -> Step {
        self.try_register(st).await;
        // A timer set by the previous attempt has done its work (or is overtaken by this one).
        st.cancel_wake();
        // The budget is time, not rounds: rounds woken early by notices do not spend it.
        let attempt = self.paced_attempt(st, attempt);
        // Halfway through the budget: say so once, with what the node is waiting for.
        if !st.told_waiting_long && attempt >= (self.config.discovery_retry_limit / 2).max(2) {
            st.told_waiting_long = true;
            let detail = self.status.borrow().detail.clone();
            self.discovery.milestone(&Milestone::WaitingLong { detail }).await;
        }
        self.status.send_modify(|s| s.attempt = attempt);
        let lock = if self.discovery.formation_lock().is_some() {
            LockState::Available
        } else {
            LockState::NotSupported
        };
        let verdict = match self.round(st, attempt).await {
            Ok(round) => {
                let verdict = self.judge(st, &round, lock, attempt).await;
                self.wake_when_stable(st, &round, &verdict.decision);
                verdict
            }
            Err(e) if e.kind == ErrorKind::Misconfigured => return Step::Stop(e.into()),
            Err(e) => {
                let message = e.to_string();
                self.status
                    .send_modify(|s| s.last_backend_error = Some(message.clone()));
                let decision = Decision::Wait(WaitReason::BackendError { message });
                self.record(st, attempt, 0, &decision);
                return Step::Again;
            }
        };
        match verdict.decision {
            Decision::Lock => self.under_lock(st, attempt).await,
            other => self.act(st, &other, None, attempt).await,
        }
    }

    /// When the rule waits only until views have been unchanged for `stable_margin`, runs the
    /// next attempt when the last of them (this node's and its answering candidates') will have
    /// been, rather than at the next interval: a timer fires the trigger, and like any fire it
    /// only moves an attempt earlier (the attempt lists and probes afresh).
    fn wake_when_stable(&self, st: &mut RunState, round: &Round, decision: &Decision) {
        if !matches!(
            decision,
            Decision::Wait(WaitReason::ViewChanging { .. } | WaitReason::PeerViewChanging { .. })
        ) {
            return;
        }
        let margin = self.config.stable_margin;
        let peers = round.probes.iter().filter_map(|(n, p)| match p {
            Probe::Answered(info) if st.view.contains(n) => info.view.as_ref().map(|v| v.unchanged_for),
            _ => None,
        });
        let remaining = peers
            .chain([st.view_changed_at.elapsed()])
            .map(|unchanged_for| margin.saturating_sub(unchanged_for))
            .max()
            .unwrap_or_default();
        // Later than the next interval: that attempt sees it and sets the timer then.
        if remaining >= self.config.discovery_retry_interval {
            return;
        }
        let trigger = self.trigger.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(remaining + Duration::from_millis(1)).await;
            trigger.fire();
        });
        st.wake = Some(timer.abort_handle());
    }

    /// Takes the lock, runs a round under it, claims the identity, acts, releases the lock.
    /// Everything up to the claim races the lock's `lost()`: a lapsed hold cancels it.
    async fn under_lock(&self, st: &mut RunState, attempt: u32) -> Step {
        let Some(lock) = self.discovery.formation_lock() else {
            return Step::Again;
        };
        // The wait ends early once the backend records a cluster: then this node joins it
        // without the lock (docs/formation.md, "Waiting for the lock").
        let recorded = Trigger::new();
        let wait = LockWait::within(self.config.lock_acquire_timeout).or_until(recorded.clone());
        let acquired = tokio::select! {
            biased;
            r = lock.lock(&self.local, &wait) => r,
            never = self.until_recorded(&recorded) => match never {},
        };
        let guard = match acquired {
            Ok(g) => g,
            Err(_) if wait.woken() => {
                let d = Decision::Wait(WaitReason::LockFailed {
                    message: "stopped waiting: the backend now records a cluster".into(),
                });
                self.record(st, attempt, 0, &d);
                // The wait took the fires: the next attempt runs now, not at the interval.
                self.trigger.fire();
                return Step::Again;
            }
            Err(e) => {
                let decision = Decision::Wait(WaitReason::LockFailed {
                    message: e.to_string(),
                });
                self.record(st, attempt, 0, &decision);
                return Step::Again;
            }
        };
        let lost = guard.lost();
        let held = async {
            let round = match self.round(st, attempt).await {
                Ok(round) => round,
                Err(e) => {
                    let d = Decision::Wait(WaitReason::BackendError {
                        message: e.to_string(),
                    });
                    self.record(st, attempt, 0, &d);
                    return Held::Ended(Step::Again);
                }
            };
            let verdict = self.judge(st, &round, LockState::Held, attempt).await;
            if let (Decision::Form { standalone }, Some(_)) = (&verdict.decision, self.discovery.fencing()) {
                // The claim is the commit point: once it succeeded the form must not be cancelled
                // (the identity is recorded), so it runs after the race.
                let id = self.form_id(st, *standalone);
                return match self.claim(&id, Some(guard.as_ref())).await {
                    Ok(()) => Held::Claimed(id, *standalone),
                    Err(e) => {
                        self.record_failure(attempt, st, &e);
                        Held::Ended(Step::Again)
                    }
                };
            }
            Held::Ended(
                self.act(st, &verdict.decision, Some(guard.as_ref()), attempt)
                    .await,
            )
        };
        let result = tokio::select! {
            biased;
            r = held => r,
            _ = lost => {
                let d = Decision::Wait(WaitReason::LockFailed {
                    message: "the formation lock was lost (lease lapsed); the action in progress \
                              was cancelled".into(),
                });
                self.record(st, attempt, 0, &d);
                Held::Ended(Step::Again)
            }
        };
        let result = match result {
            Held::Claimed(id, standalone) => match self.membership.form(&id).await {
                Ok(()) => Step::Done(FormationOutcome::NewCluster {
                    cluster: id,
                    standalone,
                }),
                Err(e) => {
                    self.record_failure(attempt, st, &e.into());
                    Step::Again
                }
            },
            Held::Ended(step) => step,
        };
        if let Err(e) = guard.release().await {
            warn!(node = %self.local, "releasing the formation lock failed (its lease will expire): {e}");
        }
        result
    }

    /// While this node waits for the formation lock: at each fire of its trigger (a notice, a
    /// backend watch), lists again, and fires `recorded` once the listing records a cluster.
    /// Other fires keep the node's place in the lock's queue. Never returns.
    async fn until_recorded(&self, recorded: &Trigger) -> std::convert::Infallible {
        loop {
            self.trigger.fired().await;
            if let Ok(listing) = self.discovery.list().await
                && listing.recorded_cluster.is_some()
            {
                recorded.fire();
                return std::future::pending().await;
            }
        }
    }

    /// Persists this seed's intent before it is announced: after a restart on the same disk the
    /// seed resumes it, and peers committed to it can tell a restart from a lost disk.
    async fn persist_intent(&self, st: &RunState) -> Result<(), crate::MembershipError> {
        let own = Vouch {
            seed: self.local.clone(),
            intent: st.proposal.clone(),
            disk: Some(st.disk),
        };
        self.membership.persist_vouch(Some(&own)).await
    }

    fn record_failure(&self, attempt: u32, st: &RunState, e: &FormationError) {
        let d = Decision::Wait(WaitReason::ActionFailed {
            message: e.to_string(),
        });
        self.record(st, attempt, 0, &d);
    }

    /// The identity a formation uses: the announced proposal, or a fresh one for standalone.
    fn form_id(&self, st: &RunState, standalone: bool) -> ClusterId {
        if standalone {
            self.membership.new_cluster_id()
        } else {
            st.proposal.clone()
        }
    }

    /// Claims `id` with a fencing backend before forming (the commit point of a formation).
    /// The claim is persisted locally first, so that after a crash between the claim and the
    /// form this node resumes its own claim instead of fencing everyone out.
    async fn claim(&self, id: &ClusterId, guard: Option<&dyn LockGuard>) -> Result<(), FormationError> {
        let Some(fencing) = self.discovery.fencing() else {
            return Ok(());
        };
        let own = Vouch {
            seed: self.local.clone(),
            intent: id.clone(),
            disk: Some(self.membership.disk_id()),
        };
        self.membership.persist_vouch(Some(&own)).await?;
        match fencing.claim(id, guard).await {
            Ok(()) => {
                info!(node = %self.local, "claimed cluster identity {id} in the {} backend", self.discovery.name());
                Ok(())
            }
            Err(ClaimError::Taken(other)) => Err(FormationError::ClaimLost(format!(
                "the backend already records cluster {other}; joining or waiting instead of forming"
            ))),
            Err(ClaimError::LockLost) => Err(FormationError::ClaimLost(
                "the formation lock was lost before the claim; not forming".into(),
            )),
            Err(ClaimError::Backend(e)) => Err(FormationError::ClaimLost(format!(
                "claiming cluster identity {id} failed ({e}); not forming"
            ))),
        }
    }

    /// Lists, updates the view, publishes it, probes the candidates this round needs.
    async fn round(&self, st: &mut RunState, attempt: u32) -> Result<Round, DiscoveryError> {
        let listing = self.discovery.list().await?;
        let mut view: BTreeSet<NodeName> = if listing.authoritative {
            BTreeSet::new()
        } else {
            self.note_absences(st, &listing);
            st.view
                .iter()
                .filter(|n| !self.departed(st, n))
                .cloned()
                .collect()
        };
        view.extend(listing.nodes.iter().cloned());
        if let Some(seed) = &listing.preferred_seed {
            view.insert(seed.clone());
        }
        view.insert(self.local.clone());
        if view != st.view {
            st.absent.retain(|n, _| view.contains(n));
            st.view = view;
            st.view_changed_at = Instant::now();
        }
        st.seed = listing
            .preferred_seed
            .clone()
            .or_else(|| st.view.first().cloned());
        self.publish(st);
        let timeout = self.config.probe_timeout;
        let member = self.membership.as_ref();
        let seed_only = self.seed_only(st, attempt);
        let mut first = match &seed_only {
            Some(seed) => vec![seed.clone()],
            None => {
                st.probed_all_at = Instant::now();
                st.peers(&self.local)
            }
        };
        // A committed node keeps probing its seed even when the backend stopped listing it.
        if let Some(v) = &st.commitment
            && v.seed != self.local
            && !first.contains(&v.seed)
        {
            first.push(v.seed.clone());
        }
        let mut probes = probe_all(member, &first, timeout).await;
        // A seed that announces an intent asks for a commitment, which on a listing that is not
        // authoritative needs every candidate's answer: the rest are probed in this same round.
        if let Some(seed) = seed_only
            && !listing.authoritative
            && st.commitment.is_none()
            && announces_intent(probes.get(&seed))
        {
            let rest: Vec<NodeName> = st.peers(&self.local).into_iter().filter(|p| *p != seed).collect();
            probes.extend(probe_all(member, &rest, timeout).await);
            st.probed_all_at = Instant::now();
        }
        self.note_answers(st, &probes);
        if tracing::enabled!(tracing::Level::DEBUG) {
            debug!(
                node = %self.local,
                "attempt {attempt}: the {} backend listed [{}]{}; answers: {}",
                self.discovery.name(),
                listing.nodes.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                if listing.authoritative { " (authoritative)" } else { "" },
                describe_answers(&probes)
            );
        }
        Ok(Round { listing, probes })
    }

    /// Counts, for a non-authoritative listing, how many listings in a row each candidate of the
    /// view has been missing from (a listed candidate is no longer absent).
    fn note_absences(&self, st: &mut RunState, listing: &DiscoveryResult) {
        let listed = |n: &NodeName| listing.nodes.contains(n) || listing.preferred_seed.as_ref() == Some(n);
        st.absent.retain(|n, _| !listed(n));
        let committed_seed = st.commitment.as_ref().map(|v| &v.seed);
        for n in st.view.iter() {
            if *n == self.local || listed(n) || Some(n) == committed_seed {
                continue;
            }
            st.absent
                .entry(n.clone())
                .and_modify(|a| a.listings += 1)
                .or_insert(Absence {
                    listings: 1,
                    since: Instant::now(),
                    unreachable: false,
                });
        }
    }

    /// Records what the absent candidates' probes said.
    fn note_answers(&self, st: &mut RunState, probes: &BTreeMap<NodeName, Probe>) {
        for (n, p) in probes {
            if let Probe::Answered(info) = p {
                let idle = info.cluster.is_none() && info.view.as_ref().is_none_or(|v| v.intent.is_none());
                st.last_blank.insert(n.clone(), idle);
            }
        }
        // An answer restarts the count: only silence since then counts towards leaving.
        st.absent
            .retain(|n, _| !matches!(probes.get(n), Some(Probe::Answered(_))));
        for (n, a) in st.absent.iter_mut() {
            if matches!(probes.get(n), Some(Probe::Unreachable(_))) {
                a.unreachable = true;
            }
        }
    }

    /// A candidate that left: missing from [`DEPARTED_AFTER`] listings, unreachable when probed
    /// and silent meanwhile, for two retry intervals when its last answer in this run was blank
    /// without an intent, for `stable_margin` when it never answered (it may hold data, and a
    /// listing that is not authoritative is trusted to miss such a node for less than that), and
    /// never when it last answered from a cluster or with an intent (see docs/formation.md).
    fn departed(&self, st: &RunState, node: &NodeName) -> bool {
        let departed = st.absent.get(node).is_some_and(|a| {
            let missing_for = a.since.elapsed();
            let long_enough = match st.last_blank.get(node) {
                Some(true) => missing_for >= self.config.discovery_retry_interval * 2,
                // Never heard: it may hold data, so it is kept as long as a listing may miss a
                // node that holds data (`stable_margin`, the non-authoritative assumption).
                None => {
                    missing_for
                        >= self
                            .config
                            .stable_margin
                            .max(self.config.discovery_retry_interval * 2)
                }
                Some(false) => false,
            };
            a.listings >= DEPARTED_AFTER && long_enough && a.unreachable
        });
        if departed {
            info!(
                node = %self.local,
                "candidate {node} left the view: missing from the last {DEPARTED_AFTER} listings and unreachable"
            );
        }
        departed
    }

    /// The seed, when this round may probe it alone: a blank non-seed without a lock, while its
    /// seed announces nothing, can only wait or join what the seed shows, so a formation costs
    /// about 2N probes per round instead of N². The safety argument this relies on: no decision
    /// that forms or commits trusts a partial round — forming and a standalone formation, and a
    /// commitment on a listing that is not authoritative, check in the decision that every
    /// candidate of the view answered in that round (`round` probes the rest when the seed
    /// announces). Everyone is probed too when it has seen a cluster the seed is not in, in the
    /// round that may spend the budget, and at least every [`PROBE_ALL_EVERY`] retry intervals.
    /// The seed itself always probes everyone (docs/formation.md, "Who probes whom").
    fn seed_only(&self, st: &RunState, attempt: u32) -> Option<NodeName> {
        let seed = st.seed.clone()?;
        // The round that may spend the last of the budget probes everyone: a standalone
        // formation needs every candidate's answer.
        if attempt + 1 >= self.config.discovery_retry_limit {
            return None;
        }
        let lockless = self.discovery.formation_lock().is_none();
        let due = self
            .config
            .discovery_retry_interval
            .saturating_mul(PROBE_ALL_EVERY);
        // A cluster seen through the seed is joined through the seed; one seen elsewhere needs
        // every candidate's answer (to join it, or to learn that it is gone).
        let seed_side = st.seen.as_ref().is_none_or(|c| c.members.contains(&seed));
        (lockless && seed != self.local && seed_side && st.probed_all_at.elapsed() < due).then_some(seed)
    }

    /// Publishes the view for peers' probes and, when something a peer decides on changed,
    /// notices who must hear it: every candidate when this node is (or names no) seed, since its
    /// intent is what they commit to; otherwise the seed it names, which collects their views.
    fn publish(&self, st: &mut RunState) {
        let view = FormationView {
            // A committed node names the seed it committed to, whatever its own view says.
            seed: match (&st.seen, &st.commitment) {
                (Some(_), _) => None,
                (None, Some(v)) => Some(v.seed.clone()),
                (None, None) => st.seed.clone(),
            },
            sees_cluster: st.seen.as_ref().map(|c| c.id.clone()),
            candidates: st.view.len(),
            unchanged_for: st.view_changed_at.elapsed(),
            intent: st.intending.then(|| st.proposal.clone()),
            committed: st.commitment.clone(),
            disk: Some(st.disk),
            disowned: st.disowned.clone(),
        };
        // What peers act on: the view without its age.
        let notable = FormationView {
            unchanged_for: Duration::ZERO,
            ..view.clone()
        };
        self.membership.publish_view(Some(view));
        if st.noticed.as_ref() == Some(&notable) {
            return;
        }
        let targets = match (&notable.seed, &notable.sees_cluster, &st.seed) {
            (Some(seed), _, _) if *seed != self.local => vec![seed.clone()],
            // A node that sees a cluster names no seed; the seed it would have named is the one
            // that must hear it (a seed collecting commitments withdraws). The other candidates
            // decide on their own probes: a notice to each of N peers from each of N joiners
            // would cost N² rounds.
            (None, Some(_), Some(seed)) if *seed != self.local => vec![seed.clone()],
            _ => st.peers(&self.local),
        };
        st.noticed = Some(notable);
        if !targets.is_empty() {
            self.membership.notify(&targets);
        }
    }

    /// Runs the pure decision on a round, applies its published state (persisting a changed
    /// commitment before publishing it) and records it.
    async fn judge(&self, st: &mut RunState, round: &Round, lock: LockState, attempt: u32) -> Verdict {
        let input = DecisionInput {
            local: &self.local,
            discovery: &round.listing,
            view: &st.view,
            view_unchanged_for: st.view_changed_at.elapsed(),
            probes: &round.probes,
            lock,
            commitment: st.commitment.as_ref(),
            proposal: &st.proposal,
            intending: st.intending,
            disk: st.disk,
            attempt,
            config: &self.config,
            seen: st.seen.as_ref(),
        };
        let mut verdict = (self.rule)(&input);
        let mut changed = false;
        if let (Some(forgotten), None) = (&st.seen, &verdict.seen) {
            info!(node = %self.local, "every known member of cluster {} answers blank; it no longer exists", forgotten.id);
        }
        if st.seen.as_ref().map(|c| &c.id) != verdict.seen.as_ref().map(|c| &c.id) {
            changed = true;
        }
        st.seen = verdict.seen.clone();
        if verdict.commitment != st.commitment {
            match self.membership.persist_vouch(verdict.commitment.as_ref()).await {
                Ok(()) => {
                    match &verdict.commitment {
                        Some(v) => {
                            info!(node = %self.local, "committed to seed {} forming cluster {}", v.seed, v.intent)
                        }
                        None => {
                            info!(node = %self.local, "released the commitment to seed {:?}", st.commitment.as_ref().map(|v| v.seed.to_string()))
                        }
                    }
                    st.commitment = verdict.commitment.clone();
                    changed = true;
                }
                Err(e) => {
                    // Not persisted, so not published: this round is a wait, and changes nothing
                    // else either (an intent next to an unreleased commitment would be overwritten
                    // by the release's next attempt).
                    verdict.decision = Decision::Wait(WaitReason::ActionFailed {
                        message: format!("could not persist the commitment: {e}"),
                    });
                    verdict.intend = st.intending;
                }
            }
        }
        if verdict.disown != st.disowned {
            st.disowned = verdict.disown.clone();
            changed = true;
        }
        if verdict.intend != st.intending {
            if st.intending {
                // A withdrawn intent is not announced again by this run (a restart on the same
                // disk may resume the persisted one, which the argument allows: a form needs the
                // intent published throughout its round); stale commitments are released by
                // their holders, who see this disk answer without it.
                st.proposal = self.membership.new_cluster_id();
                st.intending = false;
                changed = true;
                // The withdrawn intent's record is no longer needed: its holders release on this
                // disk's answer. A failed clear only leaves a record that a restart would resume.
                if st.commitment.is_none()
                    && let Err(e) = self.membership.persist_vouch(None).await
                {
                    warn!(node = %self.local, "could not clear the withdrawn intent's record: {e}");
                }
            } else if let Err(e) = self.persist_intent(st).await {
                // Not persisted, so not announced: this round is a wait.
                verdict.decision = Decision::Wait(WaitReason::ActionFailed {
                    message: format!("could not persist the intent: {e}"),
                });
            } else {
                st.intending = true;
                changed = true;
            }
        }
        if changed {
            self.publish(st);
        }
        note_failures(&mut st.failures, &round.probes);
        let reachable = 1 + round
            .probes
            .values()
            .filter(|p| matches!(p, Probe::Answered(_)))
            .count();
        self.record(st, attempt, reachable, &verdict.decision);
        verdict
    }

    fn record(&self, st: &RunState, attempt: u32, reachable: usize, decision: &Decision) {
        let discovered = st.view.len();
        let summary = summarize(decision);
        match decision {
            Decision::Wait(_) => {
                let waited = st.began.elapsed().as_secs_f64();
                if self.waits.info(&summary) {
                    info!(node = %self.local, "{}, waited {waited:.1} s: waiting: {summary}", self.budget(st, attempt))
                } else {
                    debug!(node = %self.local, "{}, waited {waited:.1} s: waiting: {summary}", self.budget(st, attempt))
                }
            }
            _ => {
                self.waits.reset();
                info!(node = %self.local, "{}: {summary}", self.budget(st, attempt))
            }
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

    /// Carries out a join or a form (claiming the identity first with a fencing backend), or
    /// stops on a decision that ends formation; a failed action is recorded and tried again.
    async fn act(
        &self,
        st: &mut RunState,
        decision: &Decision,
        guard: Option<&dyn LockGuard>,
        attempt: u32,
    ) -> Step {
        let acted = match decision {
            Decision::Join { via, cluster } => self
                .membership
                .join(via, cluster)
                .await
                .map(|()| FormationOutcome::JoinedExisting {
                    cluster: cluster.clone(),
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
                let id = self.form_id(st, *standalone);
                match self.claim(&id, guard).await {
                    Ok(()) => self
                        .membership
                        .form(&id)
                        .await
                        .map(|()| FormationOutcome::NewCluster {
                            cluster: id,
                            standalone: *standalone,
                        })
                        .map_err(Into::into),
                    Err(e) => Err(e),
                }
            }
            other => {
                return match stop_for(other, attempt, &st.failures) {
                    Some(e) => Step::Stop(e),
                    None => Step::Again,
                };
            }
        };
        match acted {
            Ok(outcome) => Step::Done(outcome),
            Err(e) => {
                self.record_failure(attempt, st, &e);
                Step::Again
            }
        }
    }

    /// The restart path: no discovery; wait for a known peer within the restart window.
    async fn restart_window(
        &self,
        cluster: ClusterId,
        restart: crate::membership::RestartState,
    ) -> Result<FormationOutcome, FormationError> {
        self.status.send_modify(|s| s.phase = Phase::Restarting);
        let peers = self.known_peers(&restart);
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
            // Consistency first (RabbitMQ's inconsistent-cluster check): a known peer that
            // answers from another cluster means a split or stale data; an operator must choose.
            // (The waiting path below makes the same check in every attempt.)
            let answers = probe_all(self.membership.as_ref(), &peers, self.config.probe_timeout).await;
            if let Some(e) = self.inconsistency(&cluster, &answers) {
                return Err(e);
            }
            if peers.is_empty() {
                self.check_alone(&cluster).await?;
            }
            info!(node = %self.local, "restarting in cluster {cluster} without waiting: {why}");
            self.membership.resume(None).await?;
            return Ok(FormationOutcome::Rejoined { cluster, via: None });
        }
        let cfg = &self.config.restart;
        let retry = Retry::every(self.config.discovery_retry_interval.min(cfg.retry_timeout))
            .within(cfg.retry_timeout * cfg.retry_limit)
            .jitter(self.jitter());
        let per_attempt = cfg.retry_timeout;
        let started = Instant::now();
        let result = retry
            .run_woken(&self.trigger, |_| {
                let (peers, cluster) = (&peers, &cluster);
                async move {
                    let attempt = (started.elapsed().as_millis() / per_attempt.as_millis().max(1)) as u32 + 1;
                    self.status.send_modify(|s| s.attempt = attempt);
                    match self.restart_probe(cluster, peers).await {
                        Ok(via) => ControlFlow::Break(Ok(via)),
                        Err(RestartWait::Refused(e)) => ControlFlow::Break(Err(Some(e))),
                        Err(RestartWait::Waiting { missing, back }) => {
                            let what = restart_wait(&self.local, cluster, &missing, &back);
                            let left = (per_attempt * cfg.retry_limit).saturating_sub(started.elapsed());
                            let detail = format!(
                                "restart attempt {attempt} of {}, {:.1} s left, waited {:.1} s: {what}",
                                cfg.retry_limit,
                                left.as_secs_f64(),
                                started.elapsed().as_secs_f64()
                            );
                            if self.waits.info(&what) {
                                info!(node = %self.local, "{detail}");
                            } else {
                                debug!(node = %self.local, "{detail}");
                            }
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
            Err(RetryError::Stopped(Some(e))) => Err(e),
            _ => Err(FormationError::RestartTimeout {
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
    ) -> Result<Option<NodeName>, RestartWait> {
        let answers = probe_all(self.membership.as_ref(), peers, self.config.probe_timeout).await;
        if let Some(e) = self.inconsistency(cluster, &answers) {
            return Err(RestartWait::Refused(e));
        }
        let mut waiting = Vec::new();
        let mut holders = Vec::new();
        let mut all_present_and_waiting = true;
        for (peer, answer) in &answers {
            match answer {
                Probe::Answered(info) if info.cluster.as_ref() == Some(cluster) && info.ready => {
                    return Ok(Some(peer.clone()));
                }
                Probe::Answered(info) if info.cluster.as_ref() == Some(cluster) => holders.push(peer),
                // Back, but blank (disk wiped, or reset): it will join, it cannot boot the cluster.
                Probe::Answered(info) if info.cluster.is_none() => {}
                _ => {
                    all_present_and_waiting = false;
                    waiting.push(peer.clone());
                }
            }
        }
        // No member runs (one that does was joined above): the operator's force-boot applies
        // while the node waits, not only at its next start.
        if self.membership.restart_state().force_boot {
            info!(node = %self.local, "force-boot is set: restarting in cluster {cluster} without waiting longer");
            return Ok(None);
        }
        let lowest = holders.iter().all(|p| **p > self.local);
        if all_present_and_waiting && lowest {
            info!(
                node = %self.local,
                "every known member of cluster {cluster} is back (waiting, or blank after losing its \
                 data); this node is the lowest holder and boots first"
            );
            return Ok(None);
        }
        Err(RestartWait::Waiting {
            missing: waiting,
            back: holders.into_iter().cloned().collect(),
        })
    }

    /// A known peer that answers from another cluster, as a refusal naming both clusters.
    fn inconsistency(&self, ours: &ClusterId, answers: &BTreeMap<NodeName, Probe>) -> Option<FormationError> {
        answers.iter().find_map(|(peer, answer)| match answer {
            Probe::Answered(info) => match &info.cluster {
                Some(theirs) if theirs != ours => Some(inconsistent(&self.local, ours, peer, theirs)),
                _ => None,
            },
            Probe::Unreachable(_) => None,
        })
    }

    /// A member with no other members checks its backend once: a recorded identity or a
    /// reachable candidate in another cluster means its lone cluster is not the cluster.
    async fn check_alone(&self, ours: &ClusterId) -> Result<(), FormationError> {
        let listing = match self.discovery.list().await {
            Ok(l) => l,
            Err(e) => {
                warn!(node = %self.local, "could not list candidates to check cluster {ours} is the only one: {e}");
                return Ok(());
            }
        };
        if let Some(recorded) = listing.recorded_cluster.as_ref().filter(|r| *r != ours) {
            return Err(FormationError::Refused {
                reason: format!(
                    "inconsistent cluster: this node is the only member of cluster {ours}, but the \
                     {} backend records cluster {recorded}; reset this node (`muster ctl reset`) \
                     so it joins {recorded}, or replace the backend's record if {ours} is the one \
                     to keep",
                    self.discovery.name()
                ),
            });
        }
        let candidates: Vec<NodeName> = listing.nodes.into_iter().filter(|n| *n != self.local).collect();
        let answers = probe_all(self.membership.as_ref(), &candidates, self.config.probe_timeout).await;
        match self.inconsistency(ours, &answers) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Whether a probe answer is a blank seed announcing an intent.
fn announces_intent(probe: Option<&Probe>) -> bool {
    matches!(probe, Some(Probe::Answered(info))
        if info.cluster.is_none() && info.view.as_ref().is_some_and(|v| v.intent.is_some()))
}

/// Each probe's answer in a few words, for the debug log of a round.
fn describe_answers(probes: &BTreeMap<NodeName, Probe>) -> String {
    if probes.is_empty() {
        return "none (no other candidate)".into();
    }
    probes
        .iter()
        .map(|(peer, p)| match p {
            Probe::Answered(info) => {
                let cluster = match (&info.cluster, info.ready) {
                    (Some(c), true) => format!("ready in cluster {c}"),
                    (Some(c), false) => format!("in cluster {c}, not ready"),
                    (None, _) => "blank".into(),
                };
                let intent = info
                    .view
                    .as_ref()
                    .and_then(|v| v.intent.as_ref())
                    .map(|i| format!(", announcing cluster {i}"))
                    .unwrap_or_default();
                format!("{peer}: {cluster}{intent}")
            }
            Probe::Unreachable(why) => format!("{peer}: no answer ({why})"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Records why each candidate that did not answer this round failed, and forgets those that
/// answered. A refusal (the peer answered and refused: a wrong cookie, TLS) is kept over a later
/// plain failure to connect: when the other side gave up first, its refusal is still the cause.
fn note_failures(failures: &mut BTreeMap<NodeName, String>, probes: &BTreeMap<NodeName, Probe>) {
    for (peer, probe) in probes {
        match probe {
            Probe::Answered(_) => {
                failures.remove(peer);
            }
            Probe::Unreachable(why) => {
                let refusal = |text: &str| {
                    text.starts_with(
                        &crate::MembershipError::Refused(peer.clone(), String::new()).to_string(),
                    )
                };
                let keep = failures
                    .get(peer)
                    .is_some_and(|old| refusal(old) && !refusal(why));
                if !keep {
                    failures.insert(peer.clone(), why.clone());
                }
            }
        }
    }
}

/// Why candidates did not answer, for an error that gives up: "; why they did not answer: a: …"
/// (at most three), so that a wrong cookie or a TLS refusal is named where the node stops, not
/// only in earlier warnings.
fn failure_causes(failures: &BTreeMap<NodeName, String>) -> String {
    if failures.is_empty() {
        return String::new();
    }
    let shown: Vec<&str> = failures.values().take(3).map(String::as_str).collect();
    let more = failures.len().saturating_sub(3);
    format!(
        "; why they did not answer: {}{}",
        shown.join("; "),
        if more > 0 {
            format!(" (and {more} more)")
        } else {
            String::new()
        }
    )
}

/// The error a decision that ends formation stops with: `GiveUp` (retries ran out) or `Refuse`
/// (going on could split the cluster); `None` for every other decision.
fn stop_for(
    decision: &Decision,
    attempt: u32,
    failures: &BTreeMap<NodeName, String>,
) -> Option<FormationError> {
    match decision {
        Decision::GiveUp(reason) => Some(FormationError::Exhausted {
            attempts: attempt,
            reason: format!("{reason}{}", failure_causes(failures)),
        }),
        Decision::Refuse(reason) => Some(FormationError::Refused {
            reason: reason.to_string(),
        }),
        _ => None,
    }
}

/// Why a restart check did not resume.
enum RestartWait {
    /// Still waiting for the `missing` peers; the `back` ones answer, waiting too.
    Waiting {
        /// Not back (or not answering).
        missing: Vec<NodeName>,
        /// Back, holding the cluster, waiting.
        back: Vec<NodeName>,
    },
    /// Going on could split the cluster.
    Refused(FormationError),
}

/// What a restarting node waits for, in words; when every other member is back and waiting and
/// only some are missing, also which node may boot first and the command for it.
fn restart_wait(local: &NodeName, cluster: &ClusterId, missing: &[NodeName], back: &[NodeName]) -> String {
    let names = |nodes: &[NodeName]| nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ");
    if missing.is_empty() {
        let lowest = back.iter().chain(std::iter::once(local)).min().unwrap_or(local);
        return format!(
            "every member of cluster {cluster} is back and waiting; the lowest, {lowest}, boots first"
        );
    }
    let mut what = format!(
        "waiting for a running member of cluster {cluster}; missing: {}",
        names(missing)
    );
    if !back.is_empty() {
        // Every node that is back holds the same cluster and none runs, so booting the lowest
        // forms no second cluster; the others, and the missing ones when they come back, join
        // it. As with any force-boot, changes only the missing nodes saw are lost.
        let lowest = back.iter().chain(std::iter::once(local)).min().unwrap_or(local);
        let who = if lowest == local {
            "this node".to_string()
        } else {
            lowest.to_string()
        };
        what.push_str(&format!(
            "; back and waiting: {}. If {} will not come back, boot {who} first (it is the lowest \
             member that is back; the others then join it): muster ctl --node {lowest} force-boot",
            names(back),
            names(missing)
        ));
    }
    what
}

fn inconsistent(local: &NodeName, ours: &ClusterId, peer: &NodeName, theirs: &ClusterId) -> FormationError {
    FormationError::Refused {
        reason: format!(
            "inconsistent cluster: {local} was a member of cluster {ours}, but its peer {peer} is \
             now a member of cluster {theirs}. To keep {theirs}: reset this node (`muster ctl \
             reset`, its data from {ours} is discarded) and it joins {theirs}. To keep {ours}: \
             stop {peer}, reset it, and start it again so that it rejoins {ours}"
        ),
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
mod tests {
    use super::*;
    use crate::membership::PeerInfo;

    fn n(s: &str) -> NodeName {
        s.parse().unwrap()
    }

    #[test]
    fn a_rounds_answers_read_as_words_for_the_debug_log() {
        let mut probes = BTreeMap::new();
        probes.insert(
            n("a@h1"),
            Probe::Answered(Box::new(PeerInfo {
                node: n("a@h1"),
                cluster: Some(ClusterId("c1".into())),
                members: vec![n("a@h1")],
                ready: true,
                start_time_ms: 0,
                view: None,
                in_contact: Vec::new(),
            })),
        );
        probes.insert(n("b@h2"), Probe::Unreachable("connection refused".into()));
        assert_eq!(
            describe_answers(&probes),
            "a@h1: ready in cluster c1; b@h2: no answer (connection refused)"
        );
    }

    #[test]
    fn a_refusal_is_kept_over_a_later_failure_to_connect() {
        let mut failures = BTreeMap::new();
        let b = n("b@h2");
        let refused = crate::MembershipError::Refused(b.clone(), "authentication failed".into()).to_string();
        let round = |p: Probe| BTreeMap::from([(b.clone(), p)]);
        note_failures(&mut failures, &round(Probe::Unreachable(refused.clone())));
        note_failures(
            &mut failures,
            &round(Probe::Unreachable("connection refused".into())),
        );
        assert_eq!(failures.get(&b), Some(&refused));
        assert!(failure_causes(&failures).contains("authentication failed"));
    }
}
