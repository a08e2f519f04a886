//! Probing peers: one helper used by formation, the restart window and cleanup. A probe that
//! fails fast (refused, reset) is retried twice within the round so that one lost packet does not
//! cost a whole discovery interval; a probe that times out is not retried.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesOrdered;

use crate::decision::Probe;
use crate::membership::Membership;
use crate::node_name::NodeName;
use crate::retry::{Retry, RetryError};

/// Probes of one round in flight at once. A probe in flight holds a few KiB (the connection
/// being set up, the answer being read), and a seed probes every candidate: with a hundred
/// candidates, all at once would be most of the seed's memory. Up to this many candidates a
/// round takes one probe; beyond, a round of candidates that do not answer takes one
/// `probe_timeout` per this many.
pub const PROBE_FANOUT: usize = 64;
/// Attempts per probe within one round.
pub const PROBE_ATTEMPTS: u32 = 3;
const PROBE_RETRY_PAUSE: Duration = Duration::from_millis(5);

/// Probes one peer, waiting at most `timeout` per attempt.
pub async fn probe(membership: &dyn Membership, peer: &NodeName, timeout: Duration) -> Probe {
    let retry = Retry::every(PROBE_RETRY_PAUSE).attempts(PROBE_ATTEMPTS);
    let result = retry
        .run(|_| async move {
            match tokio::time::timeout(timeout, membership.probe(peer)).await {
                Ok(Ok(info)) => ControlFlow::Break(Ok(info)),
                Ok(Err(e)) => ControlFlow::Continue(e.to_string()),
                Err(_) => ControlFlow::Break(Err(format!("no answer within {timeout:?}"))),
            }
        })
        .await;
    match result {
        Ok(info) => Probe::Answered(Box::new(info)),
        Err(RetryError::Stopped(why)) | Err(RetryError::Exhausted { last: why, .. }) => {
            Probe::Unreachable(why)
        }
    }
}

/// Probes every peer concurrently, [`PROBE_FANOUT`] at a time.
pub async fn probe_all(
    membership: &dyn Membership,
    peers: &[NodeName],
    timeout: Duration,
) -> BTreeMap<NodeName, Probe> {
    let mut waiting = peers.iter();
    let mut in_flight = FuturesOrdered::new();
    for p in waiting.by_ref().take(PROBE_FANOUT) {
        in_flight.push_back(probe(membership, p, timeout));
    }
    let mut answers = Vec::with_capacity(peers.len());
    while let Some(answer) = in_flight.next().await {
        answers.push(answer);
        if let Some(p) = waiting.next() {
            in_flight.push_back(probe(membership, p, timeout));
        }
    }
    peers.iter().cloned().zip(answers).collect()
}
