//! Event-driven decisions: a [`Trigger`] wakes a formation engine to decide again now instead of
//! at its next interval (a peer's notice that its view changed or that it formed or joined; a
//! backend's watch). Fires coalesce: however many arrive during a round, one more round follows,
//! after a floor of [`FLOOR`], so a crowd of nodes starting together cannot cause a storm.
//!
//! A fire never carries facts into the decision: the round it causes lists and probes afresh,
//! so the rule decides on exactly what it would have seen at its interval, only sooner.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// The least time between a woken round and the one before it.
pub const FLOOR: Duration = Duration::from_millis(5);

/// Wakes an engine (cloneable; every clone wakes the same engine).
#[derive(Debug, Clone, Default)]
pub struct Trigger(Arc<Notify>);

impl Trigger {
    /// A trigger nobody has fired.
    pub fn new() -> Self {
        Trigger::default()
    }

    /// Asks for a new round as soon as the floor allows. Fires while a round runs coalesce into
    /// one more round.
    pub fn fire(&self) {
        self.0.notify_one();
    }

    /// Resolves at the next fire (or at once if one is pending).
    pub async fn fired(&self) {
        self.0.notified().await;
    }

    /// Forgets a pending fire: the round about to start covers every fire before it.
    pub fn clear(&self) {
        use futures::FutureExt;
        let _ = self.0.notified().now_or_never();
    }
}
