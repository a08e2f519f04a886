//! Which peers this node heard from lately (a call it made was answered, or a peer's call
//! arrived). Probe answers report them, so that another member's cleanup never forgets a member
//! that this node still reaches (the "reachable by anyone" rule).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use muster::NodeName;

/// The shortest window a contact counts for, in anti-entropy periods.
const MIN_PERIODS: u32 = 3;

/// Last contact per peer.
#[derive(Debug)]
pub struct Contacts {
    seen: Mutex<HashMap<NodeName, Instant>>,
    /// The anti-entropy period in ms: each member is visited once per `members` periods.
    period_ms: AtomicU64,
}

impl Default for Contacts {
    fn default() -> Self {
        Contacts {
            seen: Mutex::default(),
            period_ms: AtomicU64::new(2_000),
        }
    }
}

impl Contacts {
    /// Records that a call to `peer` failed: this node does not reach it now.
    pub fn lost(&self, peer: &NodeName) {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).remove(peer);
    }

    /// Records an exchange with `peer` now.
    pub fn saw(&self, peer: &NodeName) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.get_mut(peer) {
            Some(t) => *t = Instant::now(),
            None => {
                seen.insert(peer.clone(), Instant::now());
            }
        }
    }

    /// How long ago `peer` was last heard from (`None`: not since the last failed call).
    pub fn ago(&self, peer: &NodeName) -> Option<Duration> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(peer).map(|t| t.elapsed())
    }

    /// Whether `peer` was heard from within `window`.
    pub fn heard_within(&self, peer: &NodeName, window: Duration) -> bool {
        self.ago(peer).is_some_and(|ago| ago <= window)
    }

    /// Sets the anti-entropy period, which bounds how long two live members go without contact.
    pub fn set_period(&self, period: Duration) {
        let ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
        self.period_ms.store(ms, Ordering::Relaxed);
    }

    /// The members of `members` heard from within the window, and not lost since: twice a full
    /// anti-entropy cycle over the members (each visits every other once per cycle), and never
    /// less than three periods. A member that died drops out within that window, or at once
    /// when a call to it fails.
    pub fn recent(&self, members: &[NodeName]) -> Vec<NodeName> {
        let period = Duration::from_millis(self.period_ms.load(Ordering::Relaxed));
        let cycle = period
            .saturating_mul(u32::try_from(members.len()).unwrap_or(u32::MAX))
            .saturating_mul(2);
        let window = cycle.max(period.saturating_mul(MIN_PERIODS));
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        members
            .iter()
            .filter(|m| seen.get(*m).is_some_and(|t| t.elapsed() <= window))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeName {
        format!("m@{s}").parse().unwrap()
    }

    #[test]
    fn only_members_heard_from_are_reported() {
        let c = Contacts::default();
        c.saw(&n("a"));
        c.saw(&n("stranger"));
        assert_eq!(c.recent(&[n("a"), n("b")]), vec![n("a")]);
    }

    #[test]
    fn the_window_grows_with_the_members_and_the_period() {
        let c = Contacts::default();
        c.set_period(Duration::from_secs(10));
        c.saw(&n("a"));
        *c.seen.lock().unwrap().get_mut(&n("a")).unwrap() = Instant::now() - Duration::from_secs(45);
        // Three members at 10 s: a 60 s window, so 45 s ago still counts; one member: three
        // periods, 30 s.
        assert_eq!(c.recent(&[n("a"), n("b"), n("c")]), vec![n("a")]);
        assert!(c.recent(&[n("a")]).is_empty());
    }

    #[test]
    fn a_failed_call_ends_the_contact_at_once() {
        let c = Contacts::default();
        c.saw(&n("a"));
        c.lost(&n("a"));
        assert!(c.recent(&[n("a"), n("b")]).is_empty());
    }
}
