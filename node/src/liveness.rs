//! Failure detection: each pair of members exchanges a ping and its answer every `interval` on the
//! peer channel they already keep open (the member whose name sorts first asks), and any message
//! from a member counts as hearing from it. A member not
//! heard from for `suspect_after` is not yet unreachable: up to `helpers` other members are asked
//! whether they heard from it lately, and only when none did is it marked unreachable. One
//! stalled connection (a lost segment waiting for its retransmission) therefore never marks a
//! live member unreachable, while a dead or paused one is reported by every member within about
//! `suspect_after` plus one round trip to the helpers. Members are judged only once pings have run
//! for `suspect_after`: the silence of the warm-up, when nobody pings, says nothing of a member.
//! Liveness never removes a member.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use muster::NodeName;

use crate::node::Node;
use crate::proto::{Request, Response};

/// Failure detection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LivenessConfig {
    /// How often this node pings each other member (default 500 ms).
    pub interval: Duration,
    /// How long a member may go unheard before others are asked about it (default 1.2 s).
    pub suspect_after: Duration,
    /// How many other members are asked before a member is marked unreachable (default 2).
    pub helpers: usize,
    /// How long a node that just became ready waits before it starts pinging (default 2 s; it
    /// judges members from `suspect_after` later):
    /// a forming cluster's joins and pushes go first, and every pair's connection is opened
    /// once, after them, instead of in the middle of a crowd of joins.
    pub warmup: Duration,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        LivenessConfig {
            interval: Duration::from_millis(500),
            suspect_after: Duration::from_millis(1200),
            helpers: 2,
            warmup: Duration::from_secs(2),
        }
    }
}

impl LivenessConfig {
    /// Settings with pings every `interval` and suspicion after `suspect_after`.
    pub fn new(interval: Duration, suspect_after: Duration) -> Self {
        LivenessConfig {
            interval,
            suspect_after,
            ..LivenessConfig::default()
        }
    }
}

/// Runs the detector while the node runs: pings go out every `interval` in tasks of their own
/// (a member that does not answer never delays the others), and members are judged twice per
/// interval, so that a member is marked within about half an interval of the moment the
/// freshest report of it grew older than `suspect_after`. Judging starts `suspect_after` after
/// pinging does, so that every live member has been heard from by then.
pub async fn run(node: Arc<Node>, cfg: LivenessConfig) {
    let mut pinger = tokio::time::interval(cfg.interval);
    pinger.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut judging = tokio::time::interval((cfg.interval / 2).max(Duration::from_millis(5)));
    judging.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The pings in flight end with this task (when the node stops, it is aborted).
    let mut pings = tokio::task::JoinSet::new();
    let mut ready_since = None;
    loop {
        let ping = tokio::select! {
            _ = pinger.tick() => true,
            _ = judging.tick() => false,
            Some(_) = pings.join_next() => continue,
        };
        if !node.is_ready() {
            ready_since = None;
            continue;
        }
        let ready_for = ready_since
            .get_or_insert_with(tokio::time::Instant::now)
            .elapsed();
        if ready_for < cfg.warmup {
            continue;
        }
        let mut others = node.members_now();
        others.retain(|m| m != node.name());
        if ping {
            let (node, targets) = (node.clone(), to_ping(&node, &others, &cfg));
            pings.spawn(async move { ping_all(&node, &targets, cfg.interval).await });
        } else if ready_for >= cfg.warmup + cfg.suspect_after {
            judge(&node, &others, &cfg).await;
        }
    }
}

/// One ping per pair and interval: the node whose name sorts first asks, and the request and
/// its answer let each side hear from the other; the other asks too when it has not heard for two
/// intervals (the first is not serving, or its pings are lost).
fn to_ping(node: &Node, others: &[NodeName], cfg: &LivenessConfig) -> Vec<NodeName> {
    let quiet = cfg.interval.saturating_mul(2);
    others
        .iter()
        .filter(|m| node.name() < *m || !node.contacts.heard_within(m, quiet))
        .cloned()
        .collect()
}

/// Pings every member in `members` at once, each bounded by `within`; answers land in the
/// node's contacts, as every exchange does.
async fn ping_all(node: &Node, members: &[NodeName], within: Duration) {
    join_all(
        members
            .iter()
            .map(|m| tokio::time::timeout(within, node.call(m, &Request::Ping))),
    )
    .await;
}

/// Marks each member up when heard from lately, and unreachable when silent and no helper heard
/// from it either.
async fn judge(node: &Arc<Node>, members: &[NodeName], cfg: &LivenessConfig) {
    let silent: Vec<&NodeName> = members
        .iter()
        .filter(|m| {
            let heard = node.contacts.heard_within(m, cfg.suspect_after);
            if heard && node.members.is_unreachable(m) && node.members.set_reachable(m, true) {
                tracing::info!(node = %node.name(), "{m} is reachable again");
            } else if heard {
                node.members.set_reachable(m, true);
            }
            !heard && !node.members.is_unreachable(m)
        })
        .collect();
    if silent.is_empty() {
        return;
    }
    let helpers: Vec<&NodeName> = members
        .iter()
        .filter(|m| !silent.contains(m) && !node.members.is_unreachable(m))
        .take(cfg.helpers)
        .collect();
    let helpers = &helpers;
    let verdicts = join_all(silent.iter().map(|s| async move {
        let asked = join_all(helpers.iter().map(|h| ask(node, h, s, cfg)));
        let vouched = asked.await.into_iter().any(|heard| heard);
        (*s, vouched)
    }))
    .await;
    for (member, vouched) in verdicts {
        if !vouched {
            tracing::info!(node = %node.name(), "{member} is unreachable: not heard from for {:?}, nor by the members asked", cfg.suspect_after);
            node.members.set_reachable(member, false);
        }
    }
}

/// Whether `helper` heard from `member` within the suspicion window.
async fn ask(node: &Node, helper: &NodeName, member: &NodeName, cfg: &LivenessConfig) -> bool {
    let req = Request::Heard { node: member.clone() };
    match tokio::time::timeout(cfg.interval, node.call(helper, &req)).await {
        Ok(Ok(Response::Heard { ago_ms: Some(ms) })) => Duration::from_millis(ms) <= cfg.suspect_after,
        _ => false,
    }
}
