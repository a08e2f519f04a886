//! Table-driven tests of the pure decision rule.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::*;
use crate::membership::FormationView;

fn n(i: u32) -> NodeName {
    format!("m@n{i}").parse().unwrap()
}

fn c(id: &str) -> ClusterId {
    ClusterId(id.to_string())
}

/// The disk id of test node `i` (every node on its first disk).
fn disk(i: u32) -> u64 {
    1000 + u64::from(i)
}

/// A blank peer whose view names `seed`.
fn blank(i: u32, seed: Option<u32>, stable_ms: u64) -> (NodeName, Probe) {
    with_view(i, seed, stable_ms, None, None)
}

/// A blank peer with an announced intent and/or a commitment (`(seed, intent)`).
fn with_view(
    i: u32,
    seed: Option<u32>,
    stable_ms: u64,
    intent: Option<&str>,
    committed: Option<(u32, &str)>,
) -> (NodeName, Probe) {
    (
        n(i),
        Probe::Answered(Box::new(PeerInfo {
            node: n(i),
            cluster: None,
            members: vec![],
            ready: false,
            start_time_ms: 0,
            view: Some(FormationView {
                seed: seed.map(n),
                sees_cluster: None,
                candidates: 3,
                unchanged_for: Duration::from_millis(stable_ms),
                intent: intent.map(c),
                committed: committed.map(|(s, id)| Commitment {
                    seed: n(s),
                    intent: c(id),
                    disk: Some(disk(s)),
                }),
                disk: Some(disk(i)),
                disowned: vec![],
            }),
            in_contact: vec![],
        })),
    )
}

/// A blank peer committed to `seed`'s intent `intent` (it publishes `seed` as its seed).
fn committed(i: u32, seed: u32, intent: &str, stable_ms: u64) -> (NodeName, Probe) {
    with_view(i, Some(seed), stable_ms, None, Some((seed, intent)))
}

/// The intent every test node announces.
const OWN_INTENT: &str = "p1";

fn member(i: u32, cluster: &str, members: &[u32], ready: bool) -> (NodeName, Probe) {
    (
        n(i),
        Probe::Answered(Box::new(PeerInfo {
            node: n(i),
            cluster: Some(c(cluster)),
            members: members.iter().map(|m| n(*m)).collect(),
            ready,
            start_time_ms: 0,
            view: None,
            in_contact: vec![],
        })),
    )
}

fn down(i: u32) -> (NodeName, Probe) {
    (n(i), Probe::Unreachable("connection refused".into()))
}

struct Case {
    name: &'static str,
    local: u32,
    listed: Vec<u32>,
    authoritative: bool,
    preferred: Option<u32>,
    recorded: Option<&'static str>,
    peers: Vec<(NodeName, Probe)>,
    lock: LockState,
    attempt: u32,
    on_exhausted: OnExhausted,
    hint: u32,
    expected_size: Option<usize>,
    unchanged_ms: u64,
    commitment: Option<(u32, &'static str)>,
    /// The local node's intent was announced during the round.
    intent_announced: bool,
    /// The cluster remembered from earlier rounds, and its members.
    seen: Option<(&'static str, Vec<u32>)>,
    expect: Decision,
}

impl Default for Case {
    fn default() -> Self {
        Case {
            name: "",
            local: 1,
            listed: vec![1, 2, 3],
            authoritative: true,
            preferred: None,
            recorded: None,
            peers: vec![],
            commitment: None,
            intent_announced: true,
            seen: None,
            lock: LockState::NotSupported,
            attempt: 1,
            on_exhausted: OnExhausted::Fail,
            hint: 1,
            expected_size: None,
            unchanged_ms: 10_000,
            expect: Decision::Lock,
        }
    }
}

fn run(case: &Case) -> Verdict {
    let mut listing = DiscoveryResult::new(case.listed.iter().map(|i| n(*i)), case.authoritative);
    listing.preferred_seed = case.preferred.map(n);
    listing.recorded_cluster = case.recorded.map(c);
    listing.expected_size = case.expected_size;
    let mut view: BTreeSet<NodeName> = listing.nodes.iter().cloned().collect();
    view.extend(listing.preferred_seed.clone());
    view.insert(n(case.local));
    let probes: BTreeMap<NodeName, Probe> = case.peers.iter().cloned().collect();
    let config = FormationConfig {
        discovery_retry_limit: 5,
        on_exhausted: case.on_exhausted,
        target_cluster_size_hint: case.hint,
        stable_margin: Duration::from_secs(3),
        ..FormationConfig::default()
    };
    let local = n(case.local);
    let commitment = case.commitment.map(|(s, id)| Commitment {
        seed: n(s),
        intent: c(id),
        disk: Some(disk(s)),
    });
    let seen = case.seen.as_ref().map(|(id, members)| SeenCluster {
        id: c(id),
        members: members.iter().map(|m| n(*m)).collect(),
    });
    decide(&DecisionInput {
        local: &local,
        discovery: &listing,
        view: &view,
        view_unchanged_for: Duration::from_millis(case.unchanged_ms),
        probes: &probes,
        lock: case.lock,
        commitment: commitment.as_ref(),
        intent: &c(OWN_INTENT),
        intent_announced: case.intent_announced,
        disk: disk(case.local),
        attempt: case.attempt,
        config: &config,
        seen: seen.as_ref(),
    })
}

fn wait_seed(seed: u32, reachable: bool) -> Decision {
    Decision::Wait(WaitReason::WaitingForSeed {
        seed: n(seed),
        reachable,
    })
}

#[test]
fn decision_table() {
    let cases = vec![
        Case {
            name: "no peers: an empty listing waits",
            listed: vec![],
            authoritative: false,
            expect: Decision::Wait(WaitReason::NoCandidates),
            ..Case::default()
        },
        Case {
            name: "no peers: a one-node static list forms",
            listed: vec![1],
            expect: Decision::Form { standalone: false },
            ..Case::default()
        },
        Case {
            name: "no peers yet: the seed of an authoritative list waits for every listed node",
            peers: vec![down(2), down(3)],
            expect: Decision::Wait(WaitReason::TooFewReachable {
                reachable: 1,
                required: 3,
                discovered: 3,
                unreachable: vec![n(2), n(3)],
            }),
            ..Case::default()
        },
        Case {
            name: "one cluster visible: join it, even as the seed",
            peers: vec![member(2, "c1", &[2], true), blank(3, Some(1), 0)],
            expect: Decision::Join {
                via: n(2),
                cluster: c("c1"),
            },
            ..Case::default()
        },
        Case {
            name: "one cluster visible but not ready: wait, never form",
            peers: vec![member(2, "c1", &[2], false), blank(3, Some(1), 0)],
            expect: Decision::Wait(WaitReason::ClusterNotReady {
                cluster: c("c1"),
                members: vec![n(2)],
            }),
            ..Case::default()
        },
        Case {
            name: "two clusters visible: the one with most members wins",
            listed: vec![1, 2, 3, 4],
            local: 4,
            peers: vec![
                member(1, "a", &[1], true),
                member(2, "b", &[2, 3], true),
                member(3, "b", &[2, 3], true),
            ],
            expect: Decision::Join {
                via: n(2),
                cluster: c("b"),
            },
            ..Case::default()
        },
        Case {
            name: "two clusters of equal size: the one with the lowest member wins",
            listed: vec![1, 2, 3],
            local: 3,
            peers: vec![member(2, "z", &[2], true), member(1, "y", &[1], true)],
            expect: Decision::Join {
                via: n(1),
                cluster: c("y"),
            },
            ..Case::default()
        },
        Case {
            name: "seed unreachable: a non-seed waits for it",
            local: 2,
            peers: vec![down(1), blank(3, Some(1), 0)],
            expect: wait_seed(1, false),
            ..Case::default()
        },
        Case {
            name: "seed reachable: a non-seed waits for it to form",
            local: 3,
            peers: vec![blank(1, Some(1), 0), blank(2, Some(1), 0)],
            expect: wait_seed(1, true),
            ..Case::default()
        },
        Case {
            name: "a majority is not enough: a listed node that is down may hold a cluster",
            peers: vec![blank(2, Some(1), 0), down(3)],
            expect: Decision::Wait(WaitReason::TooFewReachable {
                reachable: 2,
                required: 3,
                discovered: 3,
                unreachable: vec![n(3)],
            }),
            ..Case::default()
        },
        Case {
            name: "every listed node agrees: the seed announces its intent and collects commitments",
            peers: vec![blank(2, Some(1), 0), blank(3, Some(1), 0)],
            expect: Decision::Wait(WaitReason::CollectingCommitments {
                intent: c(OWN_INTENT),
                missing: vec![n(2), n(3)],
            }),
            ..Case::default()
        },
        Case {
            name: "every candidate committed to this intent: the seed forms",
            peers: vec![committed(2, 1, OWN_INTENT, 0), committed(3, 1, OWN_INTENT, 0)],
            expect: Decision::Form { standalone: false },
            ..Case::default()
        },
        Case {
            name: "a commitment to a withdrawn intent does not count",
            peers: vec![committed(2, 1, "older", 0), committed(3, 1, OWN_INTENT, 0)],
            expect: Decision::Wait(WaitReason::CollectingCommitments {
                intent: c(OWN_INTENT),
                missing: vec![n(2)],
            }),
            ..Case::default()
        },
        Case {
            name: "a peer committed to another seed blocks the seed",
            peers: vec![committed(2, 0, "x", 0), blank(3, Some(1), 0)],
            expect: Decision::Wait(WaitReason::PeerCommitted {
                peer: n(2),
                seed: n(0),
            }),
            ..Case::default()
        },
        Case {
            name: "a non-seed commits to the seed's announced intent",
            local: 2,
            peers: vec![with_view(1, Some(1), 0, Some("x"), None), blank(3, Some(1), 0)],
            expect: Decision::Wait(WaitReason::CommittedToSeed {
                seed: n(1),
                intent: c("x"),
                reachable: true,
            }),
            ..Case::default()
        },
        Case {
            name: "a committed node stays committed while its seed is unreachable, whatever the list says",
            local: 2,
            commitment: Some((3, "x")),
            peers: vec![blank(1, Some(1), 0), down(3)],
            expect: Decision::Wait(WaitReason::CommittedToSeed {
                seed: n(3),
                intent: c("x"),
                reachable: false,
            }),
            ..Case::default()
        },
        Case {
            name: "a committed node releases when its seed answers without that intent, then follows the new one",
            local: 2,
            commitment: Some((1, "old")),
            peers: vec![with_view(1, Some(1), 0, Some("new"), None), blank(3, Some(1), 0)],
            expect: Decision::Wait(WaitReason::CommittedToSeed {
                seed: n(1),
                intent: c("new"),
                reachable: true,
            }),
            ..Case::default()
        },
        Case {
            name: "recorded cluster and only another cluster visible: refuse (inconsistent cluster)",
            local: 3,
            recorded: Some("rec"),
            peers: vec![
                member(1, "other", &[1, 2], true),
                member(2, "other", &[1, 2], true),
            ],
            expect: Decision::Refuse(WaitReason::ForeignCluster {
                recorded: c("rec"),
                found: c("other"),
                members: vec![n(1), n(2)],
            }),
            ..Case::default()
        },
        Case {
            name: "recorded cluster visible: join it, not the bigger one",
            listed: vec![1, 2, 3, 4],
            local: 4,
            recorded: Some("a"),
            peers: vec![
                member(1, "a", &[1], true),
                member(2, "b", &[2, 3], true),
                member(3, "b", &[2, 3], true),
            ],
            expect: Decision::Join {
                via: n(1),
                cluster: c("a"),
            },
            ..Case::default()
        },
        Case {
            name: "this node's own recorded claim does not block it under the lock",
            recorded: Some(OWN_INTENT),
            peers: vec![blank(2, None, 0), blank(3, None, 0)],
            lock: LockState::Held,
            expect: Decision::Form { standalone: false },
            ..Case::default()
        },
        Case {
            name: "standalone with a lock goes through the lock",
            local: 2,
            attempt: 5,
            on_exhausted: OnExhausted::Standalone,
            peers: vec![down(1), blank(3, Some(1), 0)],
            lock: LockState::Available,
            expect: Decision::Lock,
            ..Case::default()
        },
        Case {
            name: "a peer believing in another seed blocks the seed",
            peers: vec![blank(2, Some(0), 0), blank(3, Some(1), 0)],
            expect: Decision::Wait(WaitReason::PeerDisagrees {
                peer: n(2),
                peer_seed: Some(n(0)),
                peer_sees: None,
            }),
            ..Case::default()
        },
        Case {
            name: "a peer without a view yet blocks the seed",
            peers: vec![blank(2, None, 0), blank(3, Some(1), 0)],
            expect: Decision::Wait(WaitReason::PeerDisagrees {
                peer: n(2),
                peer_seed: None,
                peer_sees: None,
            }),
            ..Case::default()
        },
        Case {
            name: "lock available: a node that may form takes the lock first",
            local: 3,
            peers: vec![blank(1, Some(1), 0), blank(2, Some(1), 0)],
            lock: LockState::Available,
            expect: Decision::Lock,
            ..Case::default()
        },
        Case {
            name: "lock available, nothing recorded: joining goes through the lock",
            peers: vec![member(2, "c1", &[2], true), blank(3, None, 0)],
            lock: LockState::Available,
            expect: Decision::Lock,
            ..Case::default()
        },
        Case {
            name: "lock available, the visible cluster is the recorded one: join it without the lock",
            recorded: Some("c1"),
            peers: vec![member(2, "c1", &[2], true), blank(3, None, 0)],
            lock: LockState::Available,
            expect: Decision::Join {
                via: n(2),
                cluster: c("c1"),
            },
            ..Case::default()
        },
        Case {
            name: "lock available, the recorded cluster's only member is not ready: wait, no lock",
            recorded: Some("c1"),
            peers: vec![member(2, "c1", &[2], false), blank(3, None, 0)],
            lock: LockState::Available,
            expect: Decision::Wait(WaitReason::ClusterNotReady {
                cluster: c("c1"),
                members: vec![n(2)],
            }),
            ..Case::default()
        },
        Case {
            name: "lock available, another cluster than the recorded one: refuse, no lock",
            recorded: Some("c1"),
            peers: vec![member(2, "c2", &[2], true), blank(3, None, 0)],
            lock: LockState::Available,
            expect: Decision::Refuse(WaitReason::ForeignCluster {
                recorded: c("c1"),
                found: c("c2"),
                members: vec![n(2)],
            }),
            ..Case::default()
        },
        Case {
            name: "lock held and nobody clustered: any holder forms (no seed needed)",
            local: 3,
            peers: vec![blank(1, Some(1), 0), blank(2, Some(1), 0)],
            lock: LockState::Held,
            expect: Decision::Form { standalone: false },
            ..Case::default()
        },
        Case {
            name: "lock held but a candidate is unreachable: wait (it may be the last holder)",
            local: 3,
            peers: vec![blank(1, Some(1), 0), down(2)],
            lock: LockState::Held,
            expect: Decision::Wait(WaitReason::TooFewReachable {
                reachable: 2,
                required: 3,
                discovered: 3,
                unreachable: vec![n(2)],
            }),
            ..Case::default()
        },
        Case {
            name: "lock held and a cluster visible under it: join",
            local: 3,
            peers: vec![member(1, "c1", &[1], true), blank(2, None, 0)],
            lock: LockState::Held,
            expect: Decision::Join {
                via: n(1),
                cluster: c("c1"),
            },
            ..Case::default()
        },
        Case {
            name: "backend-preferred seed forms even though it is not the lowest",
            local: 3,
            preferred: Some(3),
            peers: vec![committed(1, 3, OWN_INTENT, 0), committed(2, 3, OWN_INTENT, 0)],
            expect: Decision::Form { standalone: false },
            ..Case::default()
        },
        Case {
            name: "backend-preferred seed: the lowest node still waits for it",
            preferred: Some(3),
            peers: vec![blank(2, Some(3), 0), down(3)],
            expect: wait_seed(3, false),
            ..Case::default()
        },
        Case {
            name: "view still changing: the seed of a non-authoritative list waits",
            authoritative: false,
            unchanged_ms: 400,
            peers: vec![blank(2, Some(1), 9000), blank(3, Some(1), 9000)],
            expect: Decision::Wait(WaitReason::ViewChanging {
                unchanged_for: Duration::from_millis(400),
                required: Duration::from_secs(3),
            }),
            ..Case::default()
        },
        Case {
            name: "a peer's view still changing blocks the seed of a non-authoritative list",
            authoritative: false,
            peers: vec![blank(2, Some(1), 9000), blank(3, Some(1), 100)],
            expect: Decision::Wait(WaitReason::PeerViewChanging {
                peer: n(3),
                unchanged_for: Duration::from_millis(100),
                required: Duration::from_secs(3),
            }),
            ..Case::default()
        },
        Case {
            name: "non-authoritative: every candidate must answer",
            authoritative: false,
            peers: vec![blank(2, Some(1), 9000), down(3)],
            expect: Decision::Wait(WaitReason::TooFewReachable {
                reachable: 2,
                required: 3,
                discovered: 3,
                unreachable: vec![n(3)],
            }),
            ..Case::default()
        },
        Case {
            name: "non-authoritative: fewer candidates than the hint",
            authoritative: false,
            hint: 4,
            peers: vec![blank(2, Some(1), 9000), blank(3, Some(1), 9000)],
            expect: Decision::Wait(WaitReason::TooFewCandidates {
                discovered: 3,
                required: 4,
            }),
            ..Case::default()
        },
        Case {
            name: "the backend's expected size raises a hint of 1",
            authoritative: false,
            expected_size: Some(4),
            peers: vec![blank(2, Some(1), 9000), blank(3, Some(1), 9000)],
            expect: Decision::Wait(WaitReason::TooFewCandidates {
                discovered: 3,
                required: 4,
            }),
            ..Case::default()
        },
        Case {
            name: "non-authoritative, settled, agreed and committed: the seed forms",
            authoritative: false,
            peers: vec![
                committed(2, 1, OWN_INTENT, 9000),
                committed(3, 1, OWN_INTENT, 9000),
            ],
            expect: Decision::Form { standalone: false },
            ..Case::default()
        },
        Case {
            name: "the backend does not list this node yet",
            listed: vec![2, 3],
            peers: vec![blank(2, Some(1), 0), blank(3, Some(1), 0)],
            expect: Decision::Wait(WaitReason::NotListed),
            ..Case::default()
        },
        Case {
            name: "the backend records a cluster nobody can reach: refuse to form",
            recorded: Some("old"),
            peers: vec![blank(2, Some(1), 0), blank(3, Some(1), 0)],
            expect: Decision::Wait(WaitReason::RecordedCluster {
                cluster: c("old"),
                hint: None,
            }),
            ..Case::default()
        },
        Case {
            name: "retries exhausted, on_exhausted = fail: give up with the reason",
            local: 2,
            attempt: 5,
            peers: vec![down(1), blank(3, Some(1), 0)],
            expect: Decision::GiveUp(WaitReason::WaitingForSeed {
                seed: n(1),
                reachable: false,
            }),
            ..Case::default()
        },
        Case {
            name: "retries exhausted, on_exhausted = standalone: form alone",
            local: 2,
            attempt: 5,
            on_exhausted: OnExhausted::Standalone,
            peers: vec![down(1), blank(3, Some(1), 0)],
            expect: Decision::Form { standalone: true },
            ..Case::default()
        },
        Case {
            name: "retries exhausted, on_exhausted = wait: keep waiting",
            local: 2,
            attempt: 5,
            on_exhausted: OnExhausted::Wait,
            peers: vec![down(1), blank(3, Some(1), 0)],
            expect: wait_seed(1, false),
            ..Case::default()
        },
        Case {
            name: "retries exhausted but a cluster is visible: join anyway",
            local: 2,
            attempt: 50,
            peers: vec![member(1, "c1", &[1], true), blank(3, None, 0)],
            expect: Decision::Join {
                via: n(1),
                cluster: c("c1"),
            },
            ..Case::default()
        },
        Case {
            name: "retries exhausted with a recorded cluster: standalone still refuses",
            attempt: 5,
            on_exhausted: OnExhausted::Standalone,
            recorded: Some("old"),
            expect: Decision::GiveUp(WaitReason::RecordedCluster {
                cluster: c("old"),
                hint: None,
            }),
            ..Case::default()
        },
    ];
    let mut failures = Vec::new();
    for case in &cases {
        let got = run(case).decision;
        if got != case.expect {
            failures.push(format!(
                "{}:\n    expected {:?}\n    got      {:?}",
                case.name, case.expect, got
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn verdict_publishes_the_seed_or_the_cluster_seen() {
    let v = run(&Case {
        local: 3,
        peers: vec![blank(1, Some(1), 0), blank(2, Some(1), 0)],
        ..Case::default()
    });
    assert_eq!(v.seed, Some(n(1)));
    assert_eq!(v.seen, None);
    let v = run(&Case {
        peers: vec![member(2, "c1", &[2], true)],
        ..Case::default()
    });
    assert_eq!(v.seed, None);
    assert_eq!(v.seen.map(|s| s.id), Some(c("c1")));
}

/// The cluster a node remembers across rounds: seen with the members its members report, kept
/// while any known member may still hold it, forgotten once every one answers blank or has left
/// the view.
#[test]
fn a_seen_cluster_is_remembered_until_every_known_member_answers_blank_or_left() {
    /// A remembered cluster: its id and members.
    type Seen = Option<(&'static str, Vec<u32>)>;
    let cases: Vec<(&str, Case, Seen)> = vec![
        (
            "a visible cluster is remembered with its reported members",
            Case {
                listed: vec![1, 2, 3, 4],
                peers: vec![member(2, "c1", &[2, 3], true), down(3), blank(4, None, 0)],
                ..Case::default()
            },
            Some(("c1", vec![2, 3])),
        ),
        (
            "a remembered cluster grows with what its members report",
            Case {
                listed: vec![1, 2, 3, 4],
                seen: Some(("c1", vec![2, 3])),
                peers: vec![member(2, "c1", &[2, 3, 4], true), down(3), down(4)],
                ..Case::default()
            },
            Some(("c1", vec![2, 3, 4])),
        ),
        (
            "the first cluster seen keeps its id",
            Case {
                seen: Some(("c1", vec![2, 3])),
                peers: vec![member(2, "c2", &[2], true), down(3)],
                ..Case::default()
            },
            Some(("c1", vec![2, 3])),
        ),
        (
            "every known member answers blank: forgotten",
            Case {
                seen: Some(("c1", vec![2, 3])),
                peers: vec![blank(2, None, 0), blank(3, None, 0)],
                ..Case::default()
            },
            None,
        ),
        (
            "a known member that does not answer may still hold it: kept",
            Case {
                seen: Some(("c1", vec![2, 3])),
                peers: vec![blank(2, None, 0), down(3)],
                ..Case::default()
            },
            Some(("c1", vec![2, 3])),
        ),
        (
            "a known member that left the view counts as gone",
            Case {
                listed: vec![1, 2],
                seen: Some(("c1", vec![2, 3])),
                peers: vec![blank(2, None, 0)],
                ..Case::default()
            },
            None,
        ),
        (
            "this node among the known members does not keep it",
            Case {
                seen: Some(("c1", vec![1, 2])),
                peers: vec![blank(2, None, 0), blank(3, None, 0)],
                ..Case::default()
            },
            None,
        ),
        (
            "a refused foreign cluster is not remembered",
            Case {
                recorded: Some("c9"),
                lock: LockState::Available,
                peers: vec![member(2, "c2", &[2], true), blank(3, None, 0)],
                ..Case::default()
            },
            None,
        ),
        (
            "a known member answering with a foreign cluster is not blank: kept",
            Case {
                recorded: Some("c9"),
                lock: LockState::Available,
                seen: Some(("c1", vec![2])),
                peers: vec![member(2, "c2", &[2], true), blank(3, None, 0)],
                ..Case::default()
            },
            Some(("c1", vec![2])),
        ),
    ];
    let mut failures = Vec::new();
    for (name, case, want) in &cases {
        let want = want.as_ref().map(|(id, members)| SeenCluster {
            id: c(id),
            members: members.iter().map(|m| n(*m)).collect(),
        });
        let got = run(case).seen;
        if got != want {
            failures.push(format!("{name}: got {got:?}, want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn wait_reasons_read_as_the_trace_says() {
    let r = WaitReason::ViewChanging {
        unchanged_for: Duration::from_millis(400),
        required: Duration::from_secs(3),
    };
    assert_eq!(
        r.to_string(),
        "discovered set changed 0.4 s ago (needs 3.0 s stable)"
    );
    let r = WaitReason::TooFewReachable {
        reachable: 2,
        required: 3,
        discovered: 3,
        unreachable: vec![n(3)],
    };
    assert_eq!(
        r.to_string(),
        "2 of 3 candidates reachable, 3 required (unreachable: m@n3)"
    );
    assert_eq!(
        wait_seed(1, true),
        Decision::Wait(WaitReason::WaitingForSeed {
            seed: n(1),
            reachable: true
        })
    );
    assert_eq!(
        WaitReason::WaitingForSeed {
            seed: n(1),
            reachable: true
        }
        .to_string(),
        "waiting for seed m@n1 to form the cluster"
    );
}

#[test]
fn the_same_input_gives_the_same_verdict() {
    let case = Case {
        peers: vec![blank(2, Some(1), 0), down(3)],
        ..Case::default()
    };
    assert_eq!(run(&case), run(&case));
}

#[test]
fn verdict_carries_the_intent_and_the_commitment() {
    // The seed with full agreement announces its intent.
    let v = run(&Case {
        peers: vec![blank(2, Some(1), 0), blank(3, Some(1), 0)],
        ..Case::default()
    });
    assert!(v.announce_intent);
    assert_eq!(v.commitment, None);
    // A passing probe failure keeps the intent (commitments already given stay valid) ...
    let v = run(&Case {
        peers: vec![committed(2, 1, OWN_INTENT, 0), down(3)],
        ..Case::default()
    });
    assert!(v.announce_intent, "{v:?}");
    // ... a peer committed to a lower seed withdraws it (no deadlock between two seeds) ...
    let v = run(&Case {
        local: 2,
        listed: vec![2, 3, 4],
        peers: vec![committed(3, 1, "x", 0), blank(4, Some(2), 0)],
        ..Case::default()
    });
    assert!(!v.announce_intent, "{v:?}");
    // ... one committed to a higher seed does not (that seed withdraws instead).
    let v = run(&Case {
        peers: vec![committed(2, 5, "x", 0), blank(3, Some(1), 0)],
        ..Case::default()
    });
    assert!(v.announce_intent, "{v:?}");
    // A non-seed that commits reports the commitment for the engine to persist.
    let v = run(&Case {
        local: 2,
        peers: vec![with_view(1, Some(1), 0, Some("x"), None), blank(3, Some(1), 0)],
        ..Case::default()
    });
    assert_eq!(
        v.commitment,
        Some(Commitment {
            seed: n(1),
            intent: c("x"),
            disk: Some(disk(1)),
        })
    );
    assert_eq!(v.seed, Some(n(1)));
    // A committed node keeps its commitment while it joins a visible cluster.
    let v = run(&Case {
        local: 2,
        commitment: Some((1, "x")),
        peers: vec![member(1, "x", &[1], true)],
        ..Case::default()
    });
    assert!(matches!(v.decision, Decision::Join { .. }));
    assert!(v.commitment.is_some());
}

/// `peer` with its answer's disk id replaced (a seed that lost its data answers from another).
fn on_disk(mut peer: (NodeName, Probe), id: u64, disowned: &[&str]) -> (NodeName, Probe) {
    if let Probe::Answered(info) = &mut peer.1
        && let Some(view) = info.view.as_mut()
    {
        view.disk = Some(id);
        view.disowned = disowned.iter().map(|d| c(d)).collect();
    }
    peer
}

#[test]
fn a_commitment_is_released_only_by_the_same_disk_or_a_disowning_seed() {
    // The seed answers from the disk that announced "old", without it: released, and the node
    // follows the seed's new intent.
    let same = run(&Case {
        local: 2,
        commitment: Some((1, "old")),
        peers: vec![with_view(1, Some(1), 0, Some("new"), None), blank(3, Some(1), 0)],
        ..Case::default()
    });
    assert_eq!(same.commitment.map(|v| v.intent), Some(c("new")));
    // From another disk it cannot say whether it formed "old": the commitment stands.
    let wiped = run(&Case {
        local: 2,
        commitment: Some((1, "old")),
        peers: vec![
            on_disk(with_view(1, Some(1), 0, Some("new"), None), 7, &[]),
            blank(3, Some(1), 0),
        ],
        ..Case::default()
    });
    assert_eq!(
        wiped.decision,
        Decision::Wait(WaitReason::SeedLostData {
            seed: n(1),
            intent: c("old")
        })
    );
    assert_eq!(wiped.commitment.map(|v| v.intent), Some(c("old")));
    // Unless it disowns "old".
    let disowned = run(&Case {
        local: 2,
        commitment: Some((1, "old")),
        peers: vec![
            on_disk(with_view(1, Some(1), 0, Some("new"), None), 7, &["old"]),
            blank(3, Some(1), 0),
        ],
        ..Case::default()
    });
    assert_eq!(disowned.commitment.map(|v| v.intent), Some(c("new")));
}

#[test]
fn a_seed_disowns_the_intents_of_its_lost_disk_only_on_an_authoritative_listing() {
    // Peers committed to this seed's intent "lost" from another disk (the seed's old one).
    let peers = || {
        vec![
            on_disk(committed(2, 1, "lost", 0), disk(2), &[]),
            on_disk(committed(3, 1, "lost", 0), disk(3), &[]),
        ]
    };
    let stale = |peer: (NodeName, Probe)| match peer.1 {
        Probe::Answered(mut info) => {
            if let Some(v) = info.view.as_mut().and_then(|v| v.committed.as_mut()) {
                v.disk = Some(99);
            }
            (peer.0, Probe::Answered(info))
        }
        other => (peer.0, other),
    };
    let v = run(&Case {
        peers: peers().into_iter().map(stale).collect(),
        ..Case::default()
    });
    assert_eq!(v.disown, vec![c("lost")]);
    assert!(matches!(
        v.decision,
        Decision::Wait(WaitReason::CollectingCommitments { .. })
    ));
    let v = run(&Case {
        authoritative: false,
        peers: peers().into_iter().map(stale).collect(),
        ..Case::default()
    });
    assert!(v.disown.is_empty(), "{v:?}");
}

#[test]
fn a_follower_commits_only_after_every_candidate_it_lists_answered() {
    let announce = || with_view(1, Some(1), 0, Some("x"), None);
    // On an authoritative listing the seed heard every candidate itself: the seed's answer is
    // enough.
    let v = run(&Case {
        local: 2,
        peers: vec![announce()],
        ..Case::default()
    });
    assert!(v.commitment.is_some(), "{v:?}");
    // Not authoritative: candidate 3 was not probed in this round (a seed-only round).
    let v = run(&Case {
        authoritative: false,
        local: 2,
        peers: vec![announce()],
        ..Case::default()
    });
    assert_eq!(v.commitment, None, "{v:?}");
    // Candidate 3 did not answer: no commitment.
    let v = run(&Case {
        authoritative: false,
        local: 2,
        peers: vec![announce(), down(3)],
        ..Case::default()
    });
    assert_eq!(v.commitment, None, "{v:?}");
    // Candidate 3 has seen a cluster this node cannot reach: no commitment.
    let mut sees = blank(3, None, 0);
    if let Probe::Answered(info) = &mut sees.1 {
        info.view.as_mut().unwrap().sees_cluster = Some(c("elsewhere"));
    }
    let v = run(&Case {
        authoritative: false,
        local: 2,
        peers: vec![announce(), sees],
        ..Case::default()
    });
    assert_eq!(v.commitment, None, "{v:?}");
}

#[test]
fn a_seed_announces_only_when_nothing_blocks_and_forms_only_under_an_announced_intent() {
    // Too few candidates reachable: no intent, not even in the first round.
    let v = run(&Case {
        intent_announced: false,
        peers: vec![blank(2, Some(1), 0), down(3)],
        ..Case::default()
    });
    assert!(!v.announce_intent, "{v:?}");
    // Once announced, passing trouble keeps it.
    let v = run(&Case {
        peers: vec![blank(2, Some(1), 0), down(3)],
        ..Case::default()
    });
    assert!(v.announce_intent, "{v:?}");
    // Every peer committed to the intent, but it was not announced during the round (a
    // restarted seed): announce first, form in a later round.
    let v = run(&Case {
        intent_announced: false,
        peers: vec![committed(2, 1, OWN_INTENT, 0), committed(3, 1, OWN_INTENT, 0)],
        ..Case::default()
    });
    assert!(
        v.announce_intent && matches!(v.decision, Decision::Wait(_)),
        "{v:?}"
    );
    let v = run(&Case {
        peers: vec![committed(2, 1, OWN_INTENT, 0), committed(3, 1, OWN_INTENT, 0)],
        ..Case::default()
    });
    assert_eq!(v.decision, Decision::Form { standalone: false });
}

#[test]
fn standalone_needs_a_round_that_probed_every_candidate() {
    let exhausted = |peers| Case {
        local: 3,
        attempt: 5,
        on_exhausted: OnExhausted::Standalone,
        peers,
        ..Case::default()
    };
    let v = run(&exhausted(vec![down(1)]));
    assert!(matches!(v.decision, Decision::Wait(_)), "{v:?}");
    let v = run(&exhausted(vec![down(1), down(2)]));
    assert_eq!(v.decision, Decision::Form { standalone: true });
}

#[test]
fn the_seeds_disk_releases_a_commitment_under_another_name() {
    // Seed 1 came back as node 4 (an address-based name that changed), same disk, blank, no
    // intent: the commitment to (1, "old") is released.
    let v = run(&Case {
        local: 2,
        listed: vec![2, 3, 4],
        commitment: Some((1, "old")),
        peers: vec![
            on_disk(blank(4, Some(2), 0), disk(1), &[]),
            blank(3, Some(2), 0),
            down(1),
        ],
        ..Case::default()
    });
    assert_eq!(v.commitment, None, "{v:?}");
}

#[test]
fn the_lock_path_keeps_a_persisted_commitment() {
    let v = run(&Case {
        lock: LockState::Available,
        commitment: Some((1, "x")),
        local: 2,
        peers: vec![blank(1, None, 0), blank(3, None, 0)],
        ..Case::default()
    });
    assert_eq!(v.commitment.map(|c| c.intent), Some(c("x")));
}
