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
    assert!(Unanswered(failures).to_string().contains("authentication failed"));
}

#[test]
fn a_give_up_names_at_most_three_causes() {
    let failures: BTreeMap<NodeName, String> = (1..=5)
        .map(|i| (n(&format!("m@h{i}")), format!("cause {i}")))
        .collect();
    let e = FormationError::Exhausted {
        attempts: 7,
        waiting: WaitReason::NoCandidates,
        unanswered: Unanswered(failures),
    };
    let text = e.to_string();
    assert!(
        text.contains("after 7 discovery attempts: the backend lists no candidates yet; why they did not answer: cause 1; cause 2; cause 3 (and 2 more); check"),
        "{text}"
    );
    let quiet = FormationError::Exhausted {
        attempts: 1,
        waiting: WaitReason::NoCandidates,
        unanswered: Unanswered::default(),
    };
    assert!(!quiet.to_string().contains("why they did not answer"));
}

#[test]
fn restart_timeout_names_peers_and_force_boot() {
    let e = FormationError::RestartTimeout {
        peers: vec!["m@a".parse().unwrap(), "m@b".parse().unwrap()],
        attempts: 10,
        per_attempt: std::time::Duration::from_secs(30),
    };
    let text = e.to_string();
    assert!(text.contains("[m@a, m@b]"), "{text}");
    assert!(text.contains("force-boot"), "{text}");
}
