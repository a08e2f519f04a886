//! The restart path of a node that was clustered before: no discovery; it waits for a known
//! peer within the restart window, or boots first when it may.

use super::*;

impl FormationEngine {
    /// The restart path: no discovery; wait for a known peer within the restart window.
    pub(super) async fn restart_window(
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
    pub(super) async fn restart_probe(
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
    pub(super) fn inconsistency(
        &self,
        ours: &ClusterId,
        answers: &BTreeMap<NodeName, Probe>,
    ) -> Option<FormationError> {
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
    pub(super) async fn check_alone(&self, ours: &ClusterId) -> Result<(), FormationError> {
        let listing = match self.discovery.list().await {
            Ok(l) => l,
            Err(e) => {
                warn!(node = %self.local, "could not list candidates to check cluster {ours} is the only one: {e}");
                return Ok(());
            }
        };
        if let Some(recorded) = listing.recorded_cluster.as_ref().filter(|r| *r != ours) {
            return Err(FormationError::Refused(Refusal::BackendRecordsAnother {
                ours: ours.clone(),
                recorded: recorded.clone(),
                backend: self.discovery.name(),
            }));
        }
        let candidates: Vec<NodeName> = listing.nodes.into_iter().filter(|n| *n != self.local).collect();
        let answers = probe_all(self.membership.as_ref(), &candidates, self.config.probe_timeout).await;
        match self.inconsistency(ours, &answers) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Why a restart check did not resume.
pub(super) enum RestartWait {
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
pub(super) fn restart_wait(
    local: &NodeName,
    cluster: &ClusterId,
    missing: &[NodeName],
    back: &[NodeName],
) -> String {
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

pub(super) fn inconsistent(
    local: &NodeName,
    ours: &ClusterId,
    peer: &NodeName,
    theirs: &ClusterId,
) -> FormationError {
    FormationError::Refused(Refusal::PeerInAnotherCluster {
        local: local.clone(),
        ours: ours.clone(),
        peer: peer.clone(),
        theirs: theirs.clone(),
    })
}
