//! One attempt: a round, the rule's verdict applied (the published state persisted first), and
//! the action it calls for.

use super::*;

impl FormationEngine {
    /// One attempt: a round, a decision, maybe an action.
    pub(super) async fn attempt(&self, st: &mut RunState, attempt: u32) -> Step {
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
    pub(super) fn wake_when_stable(&self, st: &mut RunState, round: &Round, decision: &Decision) {
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

    /// Persists this seed's intent before it is announced: after a restart on the same disk the
    /// seed resumes it, and peers committed to it can tell a restart from a lost disk.
    pub(super) async fn persist_intent(&self, st: &RunState) -> Result<(), crate::MembershipError> {
        let own = Commitment {
            seed: self.local.clone(),
            intent: st.intent.clone(),
            disk: Some(st.disk),
        };
        self.membership.persist_commitment(Some(&own)).await
    }

    pub(super) fn record_failure(&self, attempt: u32, st: &RunState, e: &FormationError) {
        let d = Decision::Wait(WaitReason::ActionFailed {
            message: e.to_string(),
        });
        self.record(st, attempt, 0, &d);
    }

    /// The identity a formation uses: the announced intent, or a fresh one for standalone.
    pub(super) fn form_id(&self, st: &RunState, standalone: bool) -> ClusterId {
        if standalone {
            self.membership.new_cluster_id()
        } else {
            st.intent.clone()
        }
    }

    /// Runs the pure decision on a round, applies its published state (persisting a changed
    /// commitment before publishing it) and records it.
    pub(super) async fn judge(
        &self,
        st: &mut RunState,
        round: &Round,
        lock: LockState,
        attempt: u32,
    ) -> Verdict {
        let input = DecisionInput {
            local: &self.local,
            discovery: &round.listing,
            view: &st.view,
            view_unchanged_for: st.view_changed_at.elapsed(),
            probes: &round.probes,
            lock,
            commitment: st.commitment.as_ref(),
            intent: &st.intent,
            intent_announced: st.intent_announced,
            disk: st.disk,
            attempt,
            config: &self.config,
            seen: st.seen.as_ref(),
        };
        let mut verdict = (self.rule)(&input);
        if let (Some(forgotten), None) = (&st.seen, &verdict.seen) {
            info!(node = %self.local, "every known member of cluster {} answers blank; it no longer exists", forgotten.id);
        }
        let mut changed = st.seen.as_ref().map(|c| &c.id) != verdict.seen.as_ref().map(|c| &c.id);
        st.seen = verdict.seen.clone();
        changed |= self.apply_commitment(st, &mut verdict).await;
        if verdict.disown != st.disowned {
            st.disowned = verdict.disown.clone();
            changed = true;
        }
        changed |= self.apply_intent(st, &mut verdict).await;
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

    /// Persists a changed commitment before it is published; true when it changed. When it
    /// cannot be persisted the round is a wait that changes nothing else either (an intent next
    /// to an unreleased commitment would be overwritten by the release's next attempt).
    async fn apply_commitment(&self, st: &mut RunState, verdict: &mut Verdict) -> bool {
        if verdict.commitment == st.commitment {
            return false;
        }
        if let Err(e) = self
            .membership
            .persist_commitment(verdict.commitment.as_ref())
            .await
        {
            verdict.decision = Decision::Wait(WaitReason::ActionFailed {
                message: format!("could not persist the commitment: {e}"),
            });
            verdict.announce_intent = st.intent_announced;
            return false;
        }
        match &verdict.commitment {
            Some(v) => info!(node = %self.local, "committed to seed {} forming cluster {}", v.seed, v.intent),
            None => info!(
                node = %self.local,
                "released the commitment to seed {:?}",
                st.commitment.as_ref().map(|v| v.seed.to_string())
            ),
        }
        st.commitment = verdict.commitment.clone();
        true
    }

    /// Announces or withdraws this seed's intent as the verdict says; true when it changed. An
    /// intent is persisted before it is announced (not persisted, not announced: the round is a
    /// wait). A withdrawn intent is not announced again by this run: the next one is a new
    /// identity (a restart on the same disk may resume the persisted one, which the argument
    /// allows: a form needs the intent published throughout its round); stale commitments are
    /// released by their holders, who see this disk answer without it.
    async fn apply_intent(&self, st: &mut RunState, verdict: &mut Verdict) -> bool {
        if verdict.announce_intent == st.intent_announced {
            return false;
        }
        if st.intent_announced {
            st.intent = self.membership.new_cluster_id();
            st.intent_announced = false;
            // The withdrawn intent's record is no longer needed: its holders release on this
            // disk's answer. A failed clear only leaves a record that a restart would resume.
            if st.commitment.is_none()
                && let Err(e) = self.membership.persist_commitment(None).await
            {
                warn!(node = %self.local, "could not clear the withdrawn intent's record: {e}");
            }
            return true;
        }
        if let Err(e) = self.persist_intent(st).await {
            verdict.decision = Decision::Wait(WaitReason::ActionFailed {
                message: format!("could not persist the intent: {e}"),
            });
            return false;
        }
        st.intent_announced = true;
        true
    }

    pub(super) fn record(&self, st: &RunState, attempt: u32, reachable: usize, decision: &Decision) {
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
    pub(super) async fn act(
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
}

/// The error a decision that ends formation stops with: `GiveUp` (retries ran out) or `Refuse`
/// (going on could split the cluster); `None` for every other decision.
pub(super) fn stop_for(
    decision: &Decision,
    attempt: u32,
    failures: &BTreeMap<NodeName, String>,
) -> Option<FormationError> {
    match decision {
        Decision::GiveUp(reason) => Some(FormationError::Exhausted {
            attempts: attempt,
            waiting: reason.clone(),
            unanswered: Unanswered(failures.clone()),
        }),
        Decision::Refuse(reason) => Some(FormationError::Refused(Refusal::Rule(reason.clone()))),
        _ => None,
    }
}
