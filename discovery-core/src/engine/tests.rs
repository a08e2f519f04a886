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
