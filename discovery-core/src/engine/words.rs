//! Probe answers and failures in words, for logs and for the error that ends formation.

use super::*;

/// Each probe's answer in a few words, for the debug log of a round.
pub(super) fn describe_answers(probes: &BTreeMap<NodeName, Probe>) -> String {
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
pub(super) fn note_failures(failures: &mut BTreeMap<NodeName, String>, probes: &BTreeMap<NodeName, Probe>) {
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
