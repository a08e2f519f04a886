//! Probing peers: one helper used by formation, the restart window and cleanup. A probe that
//! fails fast (refused, reset) is retried twice within the round so that one lost packet does not
//! cost a whole discovery interval; a probe that times out is not retried.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::time::Duration;

use futures::future::join_all;

use crate::decision::Probe;
use crate::membership::Membership;
use crate::node_name::NodeName;
use crate::retry::{Retry, RetryError};

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

/// Probes every peer concurrently.
pub async fn probe_all(
    membership: &dyn Membership,
    peers: &[NodeName],
    timeout: Duration,
) -> BTreeMap<NodeName, Probe> {
    let answers = join_all(peers.iter().map(|p| probe(membership, p, timeout))).await;
    peers.iter().cloned().zip(answers).collect()
}
