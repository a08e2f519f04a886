//! The pure formation decision: no I/O, no clock reads. Every input is a value, so the rule can be
//! tested from a table and replayed from a trace. The rule and its safety argument are written
//! down in `docs/formation.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{FormationConfig, OnExhausted};
use crate::discovery::DiscoveryResult;
use crate::membership::{ClusterId, Commitment, PeerInfo};
use crate::node_name::NodeName;

/// What a probe of one candidate produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The peer answered.
    Answered(Box<PeerInfo>),
    /// The peer did not answer (refused, timed out, not running); the text says how.
    Unreachable(String),
}

/// The state of the backend's formation lock for this decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockState {
    /// The backend has no lock: only the seed may form.
    NotSupported,
    /// The backend has a lock that this node does not hold.
    Available,
    /// This node holds the lock and the probes were taken under it.
    Held,
}

/// Everything the decision looks at.
#[derive(Debug, Clone)]
pub struct DecisionInput<'a> {
    /// This node.
    pub local: &'a NodeName,
    /// This round's listing.
    pub discovery: &'a DiscoveryResult,
    /// The candidate set the decision works on, always holding `local`: the listing itself for
    /// authoritative backends, the union of every listing this run for the others.
    pub view: &'a BTreeSet<NodeName>,
    /// How long `view` has been unchanged.
    pub view_unchanged_for: Duration,
    /// A probe result for every member of `view` except `local`.
    pub probes: &'a BTreeMap<NodeName, Probe>,
    /// The lock.
    pub lock: LockState,
    /// This node's standing commitment to a seed's intent (lockless backends), if any.
    pub commitment: Option<&'a Commitment>,
    /// The identity this node announces as its intent when it is the seed, and forms under.
    pub intent: &'a ClusterId,
    /// `intent` was published throughout this round's probes: only then
    /// may the commitments the probes show count for a formation.
    pub intent_announced: bool,
    /// This node's [`Membership::disk_id`](crate::Membership::disk_id).
    pub disk: u64,
    /// The attempt number paced by the interval (time since the run began divided by
    /// `discovery_retry_interval`, from 1), so that early attempts woken by notices do not
    /// spend `discovery_retry_limit`.
    pub attempt: u32,
    /// The configuration.
    pub config: &'a FormationConfig,
    /// The cluster this node saw in earlier rounds of this run, if it may still exist.
    pub seen: Option<&'a SeenCluster>,
}

/// A cluster this node has seen among its peers during a run, with its members as they reported
/// them. While it may exist this node commits to no seed (its published view names it); it is
/// forgotten once every known member answers blank or has left the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenCluster {
    /// Its identity.
    pub id: ClusterId,
    /// Its members, as its members reported them.
    pub members: BTreeSet<NodeName>,
}

/// Why a node waits. Each variant reads as one line of the decision trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum WaitReason {
    /// The backend listed no candidates.
    NoCandidates,
    /// The backend's full membership does not list this node yet.
    NotListed,
    /// A cluster is visible but none of its reachable members accepts joins yet.
    ClusterNotReady {
        /// The cluster.
        cluster: ClusterId,
        /// Its reachable members.
        members: Vec<NodeName>,
    },
    /// Another node is the seed; this one waits for it to form.
    WaitingForSeed {
        /// The seed.
        seed: NodeName,
        /// Whether the seed answered its probe.
        reachable: bool,
    },
    /// Fewer candidates discovered than `target_cluster_size_hint`.
    TooFewCandidates {
        /// Discovered, counting this node.
        discovered: usize,
        /// Required.
        required: usize,
    },
    /// Fewer candidates reachable than required.
    TooFewReachable {
        /// Reachable, counting this node.
        reachable: usize,
        /// Required.
        required: usize,
        /// Discovered, counting this node.
        discovered: usize,
        /// Those that did not answer.
        unreachable: Vec<NodeName>,
    },
    /// This node's discovered set changed too recently.
    ViewChanging {
        /// Time since the last change.
        unchanged_for: Duration,
        /// Required.
        required: Duration,
    },
    /// A peer believes in another seed, sees a cluster, or has no view yet.
    PeerDisagrees {
        /// The peer.
        peer: NodeName,
        /// What the peer believes.
        peer_seed: Option<NodeName>,
        /// A cluster the peer has seen.
        peer_sees: Option<ClusterId>,
    },
    /// A peer's discovered set changed too recently.
    PeerViewChanging {
        /// The peer.
        peer: NodeName,
        /// Time since its last change.
        unchanged_for: Duration,
        /// Required.
        required: Duration,
    },
    /// The backend records a cluster but none of its members is reachable.
    RecordedCluster {
        /// The recorded cluster.
        cluster: ClusterId,
        /// The backend's remediation text.
        #[serde(skip_serializing_if = "Option::is_none")]
        hint: Option<String>,
    },
    /// A peer is committed to another seed's formation.
    PeerCommitted {
        /// The peer.
        peer: NodeName,
        /// The seed it is committed to.
        seed: NodeName,
    },
    /// This node is the seed and has announced its intent; these candidates have not committed.
    CollectingCommitments {
        /// The cluster identity announced.
        intent: ClusterId,
        /// Candidates that have not committed to it yet.
        missing: Vec<NodeName>,
    },
    /// This node committed to a seed's intent and waits for that seed to form or withdraw.
    CommittedToSeed {
        /// The seed.
        seed: NodeName,
        /// The identity it announced.
        intent: ClusterId,
        /// Whether the seed answered its probe.
        reachable: bool,
    },
    /// The seed this node committed to answers from a new disk: it cannot tell whether it
    /// formed under the intent before it lost its data, so the commitment stands.
    SeedLostData {
        /// The seed.
        seed: NodeName,
        /// The identity it announced before it lost its data.
        intent: ClusterId,
    },
    /// The backend records one cluster but the reachable members belong to another: the
    /// cluster is split or was re-bootstrapped; joining either side could lose data.
    ForeignCluster {
        /// The cluster the backend records.
        recorded: ClusterId,
        /// The cluster the reachable members are in.
        found: ClusterId,
        /// Its reachable members.
        members: Vec<NodeName>,
    },
    /// The backend failed this round.
    BackendError {
        /// The error text.
        message: String,
    },
    /// The lock could not be taken this round.
    LockFailed {
        /// The error text.
        message: String,
    },
    /// Joining or forming failed this round.
    ActionFailed {
        /// The error text.
        message: String,
    },
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn names(nodes: &[NodeName]) -> String {
    nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitReason::NoCandidates => write!(f, "the backend lists no candidates yet"),
            WaitReason::NotListed => write!(f, "the backend does not list this node yet"),
            WaitReason::ClusterNotReady { cluster, members } => write!(
                f,
                "cluster {cluster} is visible but none of its reachable members ({}) is ready",
                names(members)
            ),
            WaitReason::WaitingForSeed {
                seed,
                reachable: true,
            } => {
                write!(f, "waiting for seed {seed} to form the cluster")
            }
            WaitReason::WaitingForSeed {
                seed,
                reachable: false,
            } => {
                write!(f, "waiting for seed {seed} (unreachable) to form the cluster")
            }
            WaitReason::TooFewCandidates { discovered, required } => {
                write!(f, "{discovered} of {required} expected candidates discovered")
            }
            WaitReason::TooFewReachable { .. }
            | WaitReason::ViewChanging { .. }
            | WaitReason::PeerViewChanging { .. } => self.fmt_views(f),
            WaitReason::PeerDisagrees {
                peer,
                peer_seed,
                peer_sees,
            } => match (peer_sees, peer_seed) {
                (Some(c), _) => write!(f, "peer {peer} has seen cluster {c}"),
                (None, Some(s)) => write!(f, "peer {peer} believes the seed is {s}"),
                (None, None) => write!(f, "peer {peer} has not settled on a seed yet"),
            },
            WaitReason::RecordedCluster { cluster, hint } => {
                write!(
                    f,
                    "cluster {cluster} exists (recorded in the backend) but none of its members is \
                     reachable; refusing to form another"
                )?;
                if let Some(hint) = hint {
                    write!(f, "; {hint}")?;
                }
                Ok(())
            }
            WaitReason::PeerCommitted { peer, seed } => {
                write!(f, "peer {peer} is committed to seed {seed}'s formation")
            }
            WaitReason::CollectingCommitments { intent, missing } => write!(
                f,
                "this node is the seed and announced cluster {intent}; waiting for {} to commit",
                names(missing)
            ),
            WaitReason::CommittedToSeed { .. } | WaitReason::SeedLostData { .. } => self.fmt_committed(f),
            WaitReason::ForeignCluster {
                recorded,
                found,
                members,
            } => write!(
                f,
                "inconsistent cluster: the backend records cluster {recorded}, but the reachable \
                 members ({}) belong to cluster {found}; refusing to join or form. Start a member \
                 of {recorded}, or, if {found} is the one to keep, replace the backend's record \
                 with {found} (see the backend's docs on re-bootstrapping)",
                names(members)
            ),
            WaitReason::BackendError { message } => write!(f, "backend error: {message}"),
            WaitReason::LockFailed { message } => write!(f, "could not take the lock: {message}"),
            WaitReason::ActionFailed { message } => write!(f, "last action failed: {message}"),
        }
    }
}

impl WaitReason {
    /// The waits on candidates that do not answer and on views that are still changing.
    fn fmt_views(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitReason::TooFewReachable {
                reachable,
                required,
                discovered,
                unreachable,
            } => write!(
                f,
                "{reachable} of {discovered} candidates reachable, {required} required \
                 (unreachable: {})",
                names(unreachable)
            ),
            WaitReason::ViewChanging {
                unchanged_for,
                required,
            } => write!(
                f,
                "discovered set changed {} ago (needs {} stable)",
                secs(*unchanged_for),
                secs(*required)
            ),
            WaitReason::PeerViewChanging {
                peer,
                unchanged_for,
                required,
            } => write!(
                f,
                "peer {peer}'s discovered set changed {} ago (needs {} stable)",
                secs(*unchanged_for),
                secs(*required)
            ),
            other => fmt::Display::fmt(other, f),
        }
    }

    /// The waits of a node committed to a seed's intent, with what an operator can do.
    fn fmt_committed(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitReason::CommittedToSeed {
                seed,
                intent,
                reachable,
            } => write!(
                f,
                "committed to seed {seed}{} forming cluster {intent}; waiting for it to form or \
                 withdraw (if {seed} is gone for good and never formed, stop this blank node, \
                 delete its data dir and start it again)",
                if *reachable { "" } else { " (unreachable)" }
            ),
            WaitReason::SeedLostData { seed, intent } => write!(
                f,
                "committed to seed {seed} forming cluster {intent}, but {seed} came back without its \
                 data and cannot say whether it formed {intent}; waiting to see that cluster (if no \
                 node holds {intent}, stop this blank node, delete its data dir and start it again)"
            ),
            other => fmt::Display::fmt(other, f),
        }
    }
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Decision {
    /// Join the cluster `cluster` through its member `via`.
    Join {
        /// The member to join through.
        via: NodeName,
        /// Its cluster.
        cluster: ClusterId,
    },
    /// Form a new cluster. `standalone` is true when only `on_exhausted = "standalone"` allows it.
    Form {
        /// Formed because retries ran out.
        standalone: bool,
    },
    /// Take the backend lock, probe again under it, and decide again with [`LockState::Held`].
    Lock,
    /// Wait for the next attempt.
    Wait(WaitReason),
    /// Stop: retries ran out with `on_exhausted = "fail"`.
    GiveUp(WaitReason),
    /// Stop at once: going on (forming or joining) could split the cluster.
    Refuse(WaitReason),
}

/// The decision plus the seed this node believes in (published to peers' probes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// What to do.
    pub decision: Decision,
    /// The node this one believes is entitled to form (`None` once a cluster is visible).
    pub seed: Option<NodeName>,
    /// The cluster this node has seen among its peers and remembers after this round.
    pub seen: Option<SeenCluster>,
    /// This node is the seed and announces [`DecisionInput::intent`] as its intent.
    pub announce_intent: bool,
    /// The node's commitment after this round (persisted by the engine when it changed).
    pub commitment: Option<Commitment>,
    /// Intents of this seed's lost disk that no candidate holds (see
    /// [`FormationView::disowned`](crate::FormationView::disowned)).
    pub disown: Vec<ClusterId>,
}

/// A cluster to join: its id, its ready reachable members, its reachable members.
type Chosen = (ClusterId, Vec<NodeName>, Vec<NodeName>);

/// A cluster seen in this round's probes.
struct Seen {
    members: BTreeSet<NodeName>,
    reachable: Vec<NodeName>,
    ready: Vec<NodeName>,
}

fn seen_clusters(probes: &BTreeMap<NodeName, Probe>) -> BTreeMap<ClusterId, Seen> {
    let mut clusters: BTreeMap<ClusterId, Seen> = BTreeMap::new();
    for (node, probe) in probes {
        let Probe::Answered(info) = probe else { continue };
        let Some(id) = &info.cluster else { continue };
        let seen = clusters.entry(id.clone()).or_insert_with(|| Seen {
            members: BTreeSet::new(),
            reachable: Vec::new(),
            ready: Vec::new(),
        });
        seen.members.extend(info.members.iter().cloned());
        seen.members.insert(node.clone());
        seen.reachable.push(node.clone());
        if info.ready {
            seen.ready.push(node.clone());
        }
    }
    clusters
}

/// The cluster to join when some are visible. With a recorded identity only that cluster may be
/// joined (`Err` names the foreign one otherwise); without, most members, then lowest member,
/// then id. Returns the cluster, its ready reachable members and its reachable members.
fn choose_cluster(
    probes: &BTreeMap<NodeName, Probe>,
    recorded: Option<&ClusterId>,
) -> Result<Option<Chosen>, Box<WaitReason>> {
    let mut clusters = seen_clusters(probes);
    if let Some(recorded) = recorded {
        if let Some(seen) = clusters.remove(recorded) {
            return Ok(Some((recorded.clone(), seen.ready, seen.reachable)));
        }
        if let Some((found, seen)) = clusters.into_iter().next() {
            return Err(Box::new(WaitReason::ForeignCluster {
                recorded: recorded.clone(),
                found,
                members: seen.reachable,
            }));
        }
        return Ok(None);
    }
    Ok(clusters
        .into_iter()
        .min_by(|(ida, a), (idb, b)| {
            b.members
                .len()
                .cmp(&a.members.len())
                .then_with(|| a.members.first().cmp(&b.members.first()))
                .then_with(|| ida.cmp(idb))
        })
        .map(|(id, seen)| (id, seen.ready, seen.reachable)))
}

/// Decides the next step. Pure: the same input always gives the same verdict.
pub fn decide(input: &DecisionInput<'_>) -> Verdict {
    let lock_path = input.lock != LockState::NotSupported;
    // A commitment is kept on the lock path too (it is not consulted there): a lock that turns
    // out to be unavailable later in the run must find it still persisted.
    let commitment = input.commitment.cloned();
    let chosen = choose_cluster(input.probes, input.discovery.recorded_cluster.as_ref());
    let seen = remember(
        input,
        chosen.as_ref().ok().and_then(Option::as_ref).map(|(id, ..)| id),
    );
    let verdict = |decision, seed, announce_intent, commitment| Verdict {
        decision,
        seed,
        seen: seen.clone(),
        announce_intent,
        commitment,
        disown: Vec::new(),
    };
    match chosen {
        Err(reason) => return verdict(Decision::Refuse(*reason), None, false, commitment),
        Ok(Some((cluster, ready, reachable))) => {
            // Rule 1: a visible cluster is always joined, never competed with. The commitment
            // stays until the join lands (a restart before it must not free this node to commit elsewhere).
            // The recorded cluster is joined without the lock: no holder can form another one
            // (docs/formation.md, "Joins of the recorded cluster take no lock").
            let recorded = input.discovery.recorded_cluster.as_ref() == Some(&cluster);
            let decision = match ready.first() {
                Some(_) if input.lock == LockState::Available && !recorded => Decision::Lock,
                Some(via) => Decision::Join {
                    via: via.clone(),
                    cluster: cluster.clone(),
                },
                None => exhausted(
                    input,
                    WaitReason::ClusterNotReady {
                        cluster: cluster.clone(),
                        members: reachable,
                    },
                    false,
                ),
            };
            return verdict(decision, None, false, commitment);
        }
        Ok(None) => {}
    }
    if lock_path {
        let seed = seed_of(input);
        let decision = match formation_blocker(input, seed.as_ref()) {
            None if input.lock == LockState::Available => Decision::Lock,
            None => Decision::Form { standalone: false },
            // Standalone, too, goes through the lock and the claim.
            Some(reason) => match exhausted(input, reason, true) {
                Decision::Form { .. } if input.lock == LockState::Available => Decision::Lock,
                other => other,
            },
        };
        return verdict(decision, seed, false, commitment);
    }
    Verdict {
        seen,
        ..lockless(input, commitment)
    }
}

/// What this node remembers after a round that shows `visible` (the cluster it would join): a
/// visible cluster is remembered (the first one seen keeps its id) with the members its members
/// report; a remembered one is forgotten once every known member other than this node answers
/// blank (a wiped disk, a reset node) or has left the view (unlisted by an authoritative
/// backend, or departed), since a cluster nobody lists never blocked a formation either.
fn remember(input: &DecisionInput<'_>, visible: Option<&ClusterId>) -> Option<SeenCluster> {
    match (visible, input.seen) {
        (Some(id), previous) => {
            let mut seen = previous.cloned().unwrap_or_else(|| SeenCluster {
                id: id.clone(),
                members: BTreeSet::new(),
            });
            for probe in input.probes.values() {
                if let Probe::Answered(info) = probe
                    && info.cluster.as_ref() == Some(id)
                {
                    seen.members.insert(info.node.clone());
                    seen.members.extend(info.members.iter().cloned());
                }
            }
            Some(seen)
        }
        (None, Some(previous)) => {
            let gone = previous.members.iter().filter(|m| *m != input.local).all(|m| {
                !input.view.contains(m)
                    || matches!(input.probes.get(m), Some(Probe::Answered(info)) if info.cluster.is_none())
            });
            (!gone).then(|| previous.clone())
        }
        (None, None) => None,
    }
}

/// The seed every node derives the same way: the backend-preferred one, else the lowest name.
fn seed_of(input: &DecisionInput<'_>) -> Option<NodeName> {
    input
        .discovery
        .preferred_seed
        .clone()
        .or_else(|| input.view.first().cloned())
}

/// Rule 3 for lockless backends: the seed announces an intent, every candidate commits to it
/// (persisted, sticky), and only then does the seed form.
fn lockless(input: &DecisionInput<'_>, commitment: Option<Commitment>) -> Verdict {
    let local = input.local;
    if let Some(c) = commitment.filter(|c| !released(input, c)) {
        let seed_view = match input.probes.get(&c.seed) {
            Some(Probe::Answered(info)) => Some(info.view.as_ref()),
            _ => None,
        };
        let reason = match seed_view {
            Some(Some(v)) if v.disk.is_some() && v.disk != c.disk => WaitReason::SeedLostData {
                seed: c.seed.clone(),
                intent: c.intent.clone(),
            },
            _ => WaitReason::CommittedToSeed {
                seed: c.seed.clone(),
                intent: c.intent.clone(),
                reachable: seed_view.is_some(),
            },
        };
        return Verdict {
            decision: exhausted(input, reason, false),
            seed: Some(c.seed.clone()),
            seen: None,
            announce_intent: false,
            commitment: Some(c),
            disown: Vec::new(),
        };
    }
    let seed = seed_of(input);
    let blocker = formation_blocker(input, seed.as_ref());
    let Some(seed) = seed.clone().filter(|s| s == local) else {
        return follower(input, seed, blocker);
    };
    let (decision, announce_intent, disown) = match blocker {
        None => {
            let (missing, disown) = commitments(input);
            // Commitments count only for an intent that was published while they were read.
            if missing.is_empty() && input.intent_announced {
                (Decision::Form { standalone: false }, true, disown)
            } else {
                let reason = WaitReason::CollectingCommitments {
                    intent: input.intent.clone(),
                    missing,
                };
                (Decision::Wait(reason), true, disown)
            }
        }
        Some(reason) => {
            // An intent is announced only once nothing blocks; once announced, it is kept through
            // passing trouble (a probe lost, a view still settling), so commitments already given
            // stay valid. It is withdrawn when another seed must win: a peer believes in, or
            // committed to, a lower seed, or has seen a cluster.
            let keep = input.intent_announced
                && match &reason {
                    WaitReason::PeerCommitted { seed, .. } => seed > local,
                    WaitReason::PeerDisagrees {
                        peer_sees: Some(_), ..
                    } => false,
                    WaitReason::PeerDisagrees {
                        peer_seed: Some(s), ..
                    } => s > local,
                    WaitReason::RecordedCluster { .. } | WaitReason::NotListed | WaitReason::NoCandidates => {
                        false
                    }
                    _ => true,
                };
            (exhausted(input, reason, true), keep, Vec::new())
        }
    };
    Verdict {
        decision,
        seed: Some(seed),
        seen: None,
        announce_intent,
        commitment: None,
        disown,
    }
}

/// Whether a standing commitment is released: the seed's disk, answering blank under any name,
/// no longer announces the intent (that disk remembers it did not form under it), or the seed
/// disowns the intent of a disk it lost. A seed that answers from another disk may have formed
/// under the intent before it lost its data, so that is no release.
fn released(input: &DecisionInput<'_>, c: &Commitment) -> bool {
    if c.seed == *input.local {
        return true;
    }
    let blank_view = |probe: Option<&Probe>| match probe {
        Some(Probe::Answered(info)) if info.cluster.is_none() => info.view.clone(),
        _ => None,
    };
    // The seed's disk may answer under another name (an address-based name that changed).
    let same_disk = c.disk.is_some()
        && input
            .probes
            .values()
            .filter_map(|p| blank_view(Some(p)))
            .any(|v| v.disk == c.disk && v.intent.as_ref() != Some(&c.intent));
    same_disk || blank_view(input.probes.get(&c.seed)).is_some_and(|v| v.disowned.contains(&c.intent))
}

/// A blank node that is not the seed: it commits to the seed's intent once the seed announces
/// one (on a listing that is not authoritative, once a full round also shows that no candidate it
/// lists holds or sees a cluster).
fn follower(input: &DecisionInput<'_>, seed: Option<NodeName>, blocker: Option<WaitReason>) -> Verdict {
    let wait = |decision| Verdict {
        decision,
        seed: seed.clone(),
        seen: None,
        announce_intent: false,
        commitment: None,
        disown: Vec::new(),
    };
    if let (Some(WaitReason::WaitingForSeed { seed: s, .. }), Some(Probe::Answered(info))) =
        (&blocker, seed.as_ref().and_then(|s| input.probes.get(s)))
        && let Some(view) = info.view.as_ref()
        && let (Some(intent), None, Some(true)) =
            (&view.intent, &info.cluster, view.seed.as_ref().map(|v| v == s))
    {
        // On a listing that is not authoritative the seed's view may miss a candidate this node
        // lists (a member of an existing cluster): its answer must be heard first. An
        // authoritative listing is the same for the seed, which hears every candidate itself.
        if let Some(reason) = (!input.discovery.authoritative)
            .then(|| full_round_blocker(input))
            .flatten()
        {
            return wait(exhausted(input, reason, false));
        }
        let commitment = Commitment {
            seed: s.clone(),
            intent: intent.clone(),
            disk: view.disk,
        };
        return Verdict {
            decision: Decision::Wait(WaitReason::CommittedToSeed {
                seed: s.clone(),
                intent: intent.clone(),
                reachable: true,
            }),
            commitment: Some(commitment),
            ..wait(Decision::Wait(WaitReason::NoCandidates))
        };
    }
    wait(match blocker {
        Some(reason) => exhausted(input, reason, true),
        None => Decision::Wait(WaitReason::NoCandidates),
    })
}

/// Why this round does not let a follower commit: a candidate of its view was not heard from,
/// or a peer has seen a cluster (one this node cannot reach may still exist).
fn full_round_blocker(input: &DecisionInput<'_>) -> Option<WaitReason> {
    let unheard: Vec<NodeName> = input
        .view
        .iter()
        .filter(|n| *n != input.local && !matches!(input.probes.get(*n), Some(Probe::Answered(_))))
        .cloned()
        .collect();
    if !unheard.is_empty() {
        let discovered = input.view.len();
        return Some(WaitReason::TooFewReachable {
            reachable: discovered - unheard.len(),
            required: discovered,
            discovered,
            unreachable: unheard,
        });
    }
    input.probes.iter().find_map(|(peer, probe)| match probe {
        Probe::Answered(info) => {
            info.view
                .as_ref()
                .and_then(|v| v.sees_cluster.clone())
                .map(|c| WaitReason::PeerDisagrees {
                    peer: peer.clone(),
                    peer_seed: None,
                    peer_sees: Some(c),
                })
        }
        Probe::Unreachable(_) => None,
    })
}

/// For a seed with nothing blocking it: the candidates not committed to its current intent, and
/// the intents of its own lost disk that candidates are committed to. Those are disowned only on
/// an authoritative listing, where every candidate answered blank: no member of them is left.
fn commitments(input: &DecisionInput<'_>) -> (Vec<NodeName>, Vec<ClusterId>) {
    let local = input.local;
    let mut missing = Vec::new();
    let mut disown = BTreeSet::new();
    for n in input.view.iter().filter(|n| *n != local) {
        let committed = match input.probes.get(n) {
            Some(Probe::Answered(info)) => info.view.as_ref().and_then(|v| v.committed.as_ref()),
            _ => None,
        };
        match committed {
            Some(c) if c.seed == *local && c.intent == *input.intent => {}
            Some(c) => {
                if c.seed == *local && c.disk != Some(input.disk) && input.discovery.authoritative {
                    disown.insert(c.intent.clone());
                }
                missing.push(n.clone());
            }
            None => missing.push(n.clone()),
        }
    }
    (missing, disown.into_iter().collect())
}

/// Applies `on_exhausted` to a wait. A standalone formation needs a round that probed every
/// candidate, so that it never forms beside a cluster one of them could have shown.
fn exhausted(input: &DecisionInput<'_>, reason: WaitReason, may_form: bool) -> Decision {
    if input.attempt < input.config.discovery_retry_limit {
        return Decision::Wait(reason);
    }
    match input.config.on_exhausted {
        OnExhausted::Wait => Decision::Wait(reason),
        OnExhausted::Standalone if may_form && !matches!(reason, WaitReason::RecordedCluster { .. }) => {
            let probed_all = input
                .view
                .iter()
                .all(|n| n == input.local || input.probes.contains_key(n));
            match probed_all {
                true => Decision::Form { standalone: true },
                false => Decision::Wait(reason),
            }
        }
        OnExhausted::Standalone | OnExhausted::Fail => Decision::GiveUp(reason),
    }
}

/// Why this node may not form now (no cluster being visible), or `None` when it may.
fn formation_blocker(input: &DecisionInput<'_>, seed: Option<&NodeName>) -> Option<WaitReason> {
    let cfg = input.config;
    let d = input.discovery;
    // The recorded identity is this node's own unfinished claim: it may complete it.
    if let Some(cluster) = d.recorded_cluster.as_ref().filter(|c| *c != input.intent) {
        return Some(WaitReason::RecordedCluster {
            cluster: cluster.clone(),
            hint: d.fencing_hint.clone(),
        });
    }
    if d.nodes.is_empty() && d.preferred_seed.is_none() {
        return Some(WaitReason::NoCandidates);
    }
    if d.authoritative && !d.nodes.contains(input.local) {
        return Some(WaitReason::NotListed);
    }
    let discovered = input.view.len();
    // A backend that knows the intended size (a StatefulSet's replicas) raises the hint.
    let hint = (cfg.target_cluster_size_hint as usize).max(d.expected_size.unwrap_or(0));
    if discovered < hint {
        return Some(WaitReason::TooFewCandidates {
            discovered,
            required: hint,
        });
    }
    let unreachable: Vec<NodeName> = input
        .probes
        .iter()
        .filter(|(n, p)| matches!(p, Probe::Unreachable(_)) && input.view.contains(*n))
        .map(|(n, _)| n.clone())
        .collect();
    let reachable = discovered - unreachable.len();
    let lock_path = input.lock != LockState::NotSupported;

    if !lock_path {
        let seed = seed?;
        if seed != input.local {
            let reachable = matches!(input.probes.get(seed), Some(Probe::Answered(_)));
            return Some(WaitReason::WaitingForSeed {
                seed: seed.clone(),
                reachable,
            });
        }
    }
    // Every candidate must answer, on every backend: under a lock the previous holder may have
    // formed; without one, a node that is down may hold a cluster (a member whose seed lost its
    // disk, an old member of a list that grew), and only its answer can reveal it.
    if reachable < discovered {
        return Some(WaitReason::TooFewReachable {
            reachable,
            required: discovered,
            discovered,
            unreachable,
        });
    }
    if !d.authoritative && input.view_unchanged_for < cfg.stable_margin {
        return Some(WaitReason::ViewChanging {
            unchanged_for: input.view_unchanged_for,
            required: cfg.stable_margin,
        });
    }
    if lock_path {
        return None;
    }
    peers_blocker(input)
}

/// Without a lock, the seed forms only once every candidate in the view agrees that it is the
/// seed, has seen no cluster, is committed to no other seed and (for listings that are not
/// authoritative) has had a stable view for `stable_margin`.
fn peers_blocker(input: &DecisionInput<'_>) -> Option<WaitReason> {
    let margin = input.config.stable_margin;
    for (peer, probe) in input.probes {
        let Probe::Answered(info) = probe else { continue };
        if !input.view.contains(peer) {
            continue;
        }
        let view = info.view.as_ref();
        if let Some(c) = view.and_then(|v| v.committed.as_ref())
            && c.seed != *input.local
        {
            return Some(WaitReason::PeerCommitted {
                peer: peer.clone(),
                seed: c.seed.clone(),
            });
        }
        let agrees = view.is_some_and(|v| v.sees_cluster.is_none() && v.seed.as_ref() == Some(input.local));
        if !agrees {
            return Some(WaitReason::PeerDisagrees {
                peer: peer.clone(),
                peer_seed: view.and_then(|v| v.seed.clone()),
                peer_sees: view.and_then(|v| v.sees_cluster.clone()),
            });
        }
        let unchanged_for = view.map(|v| v.unchanged_for).unwrap_or_default();
        if !input.discovery.authoritative && unchanged_for < margin {
            return Some(WaitReason::PeerViewChanging {
                peer: peer.clone(),
                unchanged_for,
                required: margin,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests;
