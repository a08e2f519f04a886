//! Cleanup of unknown nodes: members the backend no longer lists.
//!
//! A member is unknown only when it was absent from `consecutive_absences` successful discovery
//! rounds in a row AND unreachable in each of them. A round whose listing failed is skipped (it
//! neither counts nor resets). A backend whose list is not authoritative never causes removal,
//! unless it knows departures (an autoscaling group), and the local node is never a candidate.
//! By default (`only_log_warning`) unknown nodes are only reported.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::CleanupConfig;
use crate::decision::Probe;
use crate::discovery::{Discovery, DiscoveryResult};
use crate::error::DiscoveryError;
use crate::membership::Membership;
use crate::node_name::NodeName;
use crate::probe::probe_all;

/// The pure bookkeeping of absences.
#[derive(Debug, Clone, Default)]
pub struct CleanupTracker {
    absences: BTreeMap<NodeName, u32>,
}

/// What one cleanup round concluded.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CleanupRound {
    /// The listing failed: the round was skipped.
    pub skipped: Option<String>,
    /// Members absent and unreachable for the required number of rounds.
    pub unknown: Vec<NodeName>,
    /// Members absent and unreachable this round, with their absence counts.
    pub absent: Vec<(NodeName, u32)>,
    /// The listing may remove members: it is authoritative, or its backend knows departures
    /// (an autoscaling group). Only then may unknown nodes be removed.
    pub authoritative: bool,
    /// Members forgotten this round.
    pub forgotten: Vec<NodeName>,
}

impl CleanupTracker {
    /// Feeds one round: the current members, this round's listing, and which members answered a
    /// probe. Returns the unknown members (absent and unreachable for `required` rounds).
    pub fn observe(
        &mut self,
        local: &NodeName,
        members: &[NodeName],
        listing: Result<&DiscoveryResult, &DiscoveryError>,
        reachable: &BTreeSet<NodeName>,
        required: u32,
    ) -> CleanupRound {
        let listing = match listing {
            Ok(l) => l,
            Err(e) => {
                return CleanupRound {
                    skipped: Some(e.to_string()),
                    ..CleanupRound::default()
                };
            }
        };
        let member_set: BTreeSet<&NodeName> = members.iter().collect();
        self.absences.retain(|n, _| member_set.contains(n));
        let mut round = CleanupRound {
            authoritative: listing.authoritative || listing.departures_known,
            ..CleanupRound::default()
        };
        for member in members.iter().filter(|m| *m != local) {
            if listing.nodes.contains(member) || reachable.contains(member) {
                self.absences.remove(member);
                continue;
            }
            let count = self.absences.entry(member.clone()).or_insert(0);
            *count += 1;
            round.absent.push((member.clone(), *count));
            if *count >= required {
                round.unknown.push(member.clone());
            }
        }
        round
    }

    /// Forgets the count of a member (after it was removed).
    pub fn clear(&mut self, node: &NodeName) {
        self.absences.remove(node);
    }
}

/// The periodic cleanup task.
pub struct Cleanup {
    config: CleanupConfig,
    discovery: Arc<dyn Discovery>,
    membership: Arc<dyn Membership>,
    probe_timeout: std::time::Duration,
    tracker: CleanupTracker,
}

impl Cleanup {
    /// A new cleanup task.
    pub fn new(
        config: CleanupConfig,
        probe_timeout: std::time::Duration,
        discovery: Arc<dyn Discovery>,
        membership: Arc<dyn Membership>,
    ) -> Self {
        Cleanup {
            config,
            discovery,
            membership,
            probe_timeout,
            tracker: CleanupTracker::default(),
        }
    }

    /// Runs one round: list, probe the members, count, act. A member that does not answer this
    /// node but that another member reports in contact counts as reachable: cleanup removes only
    /// what nobody reaches, never a member cut off from this node alone.
    pub async fn run_once(&mut self) -> CleanupRound {
        let local = self.membership.local_node();
        let members = self.membership.members().await;
        let listing = self.discovery.list().await;
        let mut reachable = BTreeSet::new();
        if let Ok(l) = &listing {
            let others: Vec<NodeName> = members.iter().filter(|m| **m != local).cloned().collect();
            // Only worth a round of probes when some member is not listed.
            if others.iter().any(|m| !l.nodes.contains(m)) {
                let answers = probe_all(self.membership.as_ref(), &others, self.probe_timeout).await;
                for (member, probe) in answers {
                    if let Probe::Answered(info) = probe {
                        reachable.extend(info.in_contact.iter().filter(|n| **n != local).cloned());
                        reachable.insert(member);
                    }
                }
            }
        }
        let mut round = self.tracker.observe(
            &local,
            &members,
            listing.as_ref(),
            &reachable,
            self.config.consecutive_absences,
        );
        if let Some(why) = &round.skipped {
            warn!(node = %local, "node cleanup skipped this round: discovery failed: {why}");
            return round;
        }
        for node in round.unknown.clone() {
            if !round.authoritative {
                warn!(
                    node = %local,
                    "member {node} is unreachable and not listed by the {} backend, whose list is not \
                     authoritative: not removing it",
                    self.discovery.name()
                );
            } else if self.config.only_log_warning {
                warn!(
                    node = %local,
                    "member {node} is unreachable and no longer listed by the {} backend; set \
                     node_cleanup.only_log_warning = false to remove such members",
                    self.discovery.name()
                );
            } else {
                match self.membership.forget(&node).await {
                    Ok(()) => {
                        info!(node = %local, "forgot member {node}: unreachable and unlisted for {} rounds", self.config.consecutive_absences);
                        self.tracker.clear(&node);
                        round.forgotten.push(node);
                    }
                    Err(e) => warn!(node = %local, "could not forget member {node}: {e}"),
                }
            }
        }
        round
    }

    /// Runs rounds every `interval` forever; `on_round` sees each result (for metrics).
    pub async fn run(mut self, mut on_round: impl FnMut(&CleanupRound) + Send) {
        let mut ticker = tokio::time::interval(self.config.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let round = self.run_once().await;
            on_round(&round);
        }
    }
}

#[cfg(test)]
mod tests;
