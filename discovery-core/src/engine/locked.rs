//! The locked path: the lock taken (or its wait ended once the backend records a cluster), a
//! round under it, the identity claimed, the action, the lock released.

use super::*;

impl FormationEngine {
    /// Waits for the formation lock; `None` (recorded as this attempt's wait) when the backend
    /// has none, the wait failed, or it ended because the backend now records a cluster: then
    /// this node joins it without the lock (docs/formation.md, "Waiting for the lock").
    async fn acquire(&self, st: &mut RunState, attempt: u32) -> Option<Box<dyn LockGuard>> {
        let lock = self.discovery.formation_lock()?;
        let recorded = Trigger::new();
        let wait = LockWait::within(self.config.lock_acquire_timeout).or_until(recorded.clone());
        let acquired = tokio::select! {
            biased;
            r = lock.lock(&self.local, &wait) => r,
            never = self.until_recorded(&recorded) => match never {},
        };
        let message = match acquired {
            Ok(guard) => return Some(guard),
            Err(_) if wait.woken() => "stopped waiting: the backend now records a cluster".to_string(),
            Err(e) => e.to_string(),
        };
        self.record(
            st,
            attempt,
            0,
            &Decision::Wait(WaitReason::LockFailed { message }),
        );
        if wait.woken() {
            // The wait took the fires: the next attempt runs now, not at the interval.
            self.trigger.fire();
        }
        None
    }

    /// Takes the lock, runs a round under it, claims the identity, acts, releases the lock.
    /// Everything up to the claim races the lock's `lost()`: a lapsed hold cancels it.
    pub(super) async fn under_lock(&self, st: &mut RunState, attempt: u32) -> Step {
        let Some(guard) = self.acquire(st, attempt).await else {
            return Step::Again;
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
    pub(super) async fn until_recorded(&self, recorded: &Trigger) -> std::convert::Infallible {
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

    /// Claims `id` with a fencing backend before forming (the commit point of a formation).
    /// The claim is persisted locally first, so that after a crash between the claim and the
    /// form this node resumes its own claim instead of fencing everyone out.
    pub(super) async fn claim(
        &self,
        id: &ClusterId,
        guard: Option<&dyn LockGuard>,
    ) -> Result<(), FormationError> {
        let Some(fencing) = self.discovery.fencing() else {
            return Ok(());
        };
        let own = Commitment {
            seed: self.local.clone(),
            intent: id.clone(),
            disk: Some(self.membership.disk_id()),
        };
        self.membership.persist_commitment(Some(&own)).await?;
        match fencing.claim(id, guard).await {
            Ok(()) => {
                info!(node = %self.local, "claimed cluster identity {id} in the {} backend", self.discovery.name());
                Ok(())
            }
            Err(why) => Err(FormationError::ClaimLost { id: id.clone(), why }),
        }
    }
}

/// What the part of a locked attempt that races the lock's loss produced.
pub(super) enum Held {
    /// Ended as a step (joined, formed without fencing, waits or stops).
    Ended(Step),
    /// The identity is claimed; forming it must not be cancelled.
    Claimed(ClusterId, bool),
}
