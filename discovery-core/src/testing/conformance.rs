//! The backend conformance suite, in the style of `object_store`'s: one set of checks that every
//! backend crate runs from its own `tests/` folder against a real (or faithful) server. Each
//! check panics with a message naming the backend and what it did wrong.
//!
//! ```ignore
//! let subject = Subject::new(nodes.clone(), move |n| Arc::new(MyBackend::new(&server, n)) as _)
//!     .with_unreachable(Arc::new(MyBackend::new(&dead_server, &nodes[0])));
//! muster_discovery_core::testing::conformance::run(&subject).await;
//! ```

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use crate::discovery::{ClaimError, Discovery};
use crate::lock_wait::LockWait;
use crate::membership::ClusterId;
use crate::node_name::NodeName;
use crate::trigger::Trigger;

/// Builds the backend as one node sees it; every call shares the same server or store.
pub type BackendFactory = Box<dyn Fn(&NodeName) -> Arc<dyn Discovery> + Send + Sync>;

/// What a backend's tests hand the suite.
pub struct Subject {
    backend_for: BackendFactory,
    nodes: Vec<NodeName>,
    unreachable: Option<Arc<dyn Discovery>>,
    settle: Duration,
}

impl Subject {
    /// `nodes`: at least two nodes the backend lists once they are registered (for backends
    /// without registration: the nodes its configuration or records name).
    pub fn new(
        nodes: Vec<NodeName>,
        backend_for: impl Fn(&NodeName) -> Arc<dyn Discovery> + Send + Sync + 'static,
    ) -> Self {
        assert!(nodes.len() >= 2, "the conformance suite needs at least two nodes");
        Subject {
            backend_for: Box::new(backend_for),
            nodes,
            unreachable: None,
            settle: Duration::from_secs(5),
        }
    }

    /// A backend pointed at a server that does not answer: its listing must be an error.
    pub fn with_unreachable(mut self, backend: Arc<dyn Discovery>) -> Self {
        self.unreachable = Some(backend);
        self
    }

    /// How long a registration may take to show in listings (eventually consistent backends).
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    fn backend(&self, i: usize) -> Arc<dyn Discovery> {
        (self.backend_for)(&self.nodes[i])
    }
}

/// Runs every check. Claim checks run last: they record an identity in the backend.
pub async fn run(subject: &Subject) {
    capabilities_match_what_is_implemented(subject);
    listing_is_sorted_and_says_whether_it_is_authoritative(subject).await;
    registered_nodes_are_listed_and_unregistered_ones_are_not(subject).await;
    an_error_is_never_an_empty_list(subject).await;
    lock_is_exclusive_and_released(subject).await;
    claim_has_one_winner_and_a_different_id_is_an_error(subject).await;
}

/// `capabilities()` is what the accessors return, and what a backend declares is there.
pub fn capabilities_match_what_is_implemented(subject: &Subject) {
    let b = subject.backend(0);
    let caps = b.capabilities();
    let name = b.name();
    assert_eq!(
        caps.registration,
        b.registration().is_some(),
        "{name}: registration flag"
    );
    assert_eq!(caps.locking, b.formation_lock().is_some(), "{name}: locking flag");
    assert_eq!(caps.fencing, b.fencing().is_some(), "{name}: fencing flag");
    assert_eq!(
        caps.full_membership,
        b.full_membership(),
        "{name}: full_membership flag"
    );
    assert!(
        !caps.locking || caps.fencing,
        "{name}: a lock without fencing cannot make forming atomic with the lock"
    );
}

/// Sorted, de-duplicated, and `authoritative` matches `full_membership()`.
pub async fn listing_is_sorted_and_says_whether_it_is_authoritative(subject: &Subject) {
    for i in 0..subject.nodes.len() {
        let b = subject.backend(i);
        if let Some(r) = b.registration() {
            r.register()
                .await
                .unwrap_or_else(|e| panic!("{}: register failed: {e}", b.name()));
        }
        let listing = b
            .list()
            .await
            .unwrap_or_else(|e| panic!("{}: list failed: {e}", b.name()));
        let mut sorted = listing.nodes.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(
            listing.nodes,
            sorted,
            "{}: listing not sorted and de-duplicated",
            b.name()
        );
        assert_eq!(
            listing.authoritative,
            b.full_membership(),
            "{}: listing.authoritative disagrees with full_membership()",
            b.name()
        );
    }
}

async fn listed_within(b: &dyn Discovery, node: &NodeName, want: bool, settle: Duration) -> bool {
    let poll = crate::retry::Retry::every(Duration::from_millis(50)).within(settle);
    poll.run(|_| async {
        match b.list().await {
            Ok(l) if l.nodes.contains(node) == want => ControlFlow::Break(Ok::<_, ()>(())),
            _ => ControlFlow::Continue(()),
        }
    })
    .await
    .is_ok()
}

/// With registration: the local node is listed after `register` (by itself and by others) and
/// gone after `unregister`. Without: every configured node is listed.
pub async fn registered_nodes_are_listed_and_unregistered_ones_are_not(subject: &Subject) {
    let a = subject.backend(0);
    let observer = subject.backend(1);
    let me = &subject.nodes[0];
    let name = a.name();
    match a.registration() {
        Some(r) => {
            r.register()
                .await
                .unwrap_or_else(|e| panic!("{name}: register failed: {e}"));
            assert!(
                r.status().registered,
                "{name}: status() says not registered after register"
            );
            assert!(
                listed_within(a.as_ref(), me, true, subject.settle).await,
                "{name}: {me} not listed by itself after register"
            );
            assert!(
                listed_within(observer.as_ref(), me, true, subject.settle).await,
                "{name}: {me} not listed by another node after register"
            );
            r.unregister()
                .await
                .unwrap_or_else(|e| panic!("{name}: unregister failed: {e}"));
            assert!(
                listed_within(observer.as_ref(), me, false, subject.settle).await,
                "{name}: {me} still listed after unregister"
            );
            r.register()
                .await
                .unwrap_or_else(|e| panic!("{name}: re-register failed: {e}"));
            assert!(
                listed_within(observer.as_ref(), me, true, subject.settle).await,
                "{name}: {me} not listed again after re-register"
            );
        }
        None => {
            let listing = a
                .list()
                .await
                .unwrap_or_else(|e| panic!("{name}: list failed: {e}"));
            for n in &subject.nodes {
                assert!(
                    listing.nodes.contains(n),
                    "{name}: configured node {n} not listed: {listing:?}"
                );
            }
        }
    }
}

/// A backend that cannot reach its server returns an error, never `Ok` with no nodes.
pub async fn an_error_is_never_an_empty_list(subject: &Subject) {
    let Some(b) = &subject.unreachable else {
        return;
    };
    match tokio::time::timeout(Duration::from_secs(60), b.list()).await {
        Ok(Err(_)) => {}
        Ok(Ok(l)) => panic!(
            "{}: an unreachable server listed {l:?} instead of an error",
            b.name()
        ),
        Err(_) => panic!("{}: listing an unreachable server hung for 60 s", b.name()),
    }
}

/// One holder at a time; a released lock can be taken at once.
pub async fn lock_is_exclusive_and_released(subject: &Subject) {
    let (a, b) = (subject.backend(0), subject.backend(1));
    let (Some(la), Some(lb)) = (a.formation_lock(), b.formation_lock()) else {
        return;
    };
    let name = a.name();
    let (na, nb) = (&subject.nodes[0], &subject.nodes[1]);
    let held = la
        .lock(na, &LockWait::within(Duration::from_secs(5)))
        .await
        .unwrap_or_else(|e| panic!("{name}: lock failed: {e}"));
    assert!(
        !held.token().is_empty(),
        "{name}: a held lock has an empty fencing token"
    );
    assert!(
        lb.lock(nb, &LockWait::within(Duration::from_millis(300)))
            .await
            .is_err(),
        "{name}: a second holder got the lock while it was held"
    );
    // A waiter whose engine is woken stops waiting long before its deadline.
    let trigger = Trigger::new();
    let woken = LockWait::within(Duration::from_secs(60)).or_until(trigger.clone());
    let fire = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        trigger.fire();
    };
    let (gave_up, ()) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(30), lb.lock(nb, &woken)),
        fire
    );
    match gave_up {
        Ok(Err(_)) => assert!(woken.woken(), "{name}: the woken wait does not say it was woken"),
        Ok(Ok(_)) => panic!("{name}: a second holder got the lock while it was held"),
        Err(_) => panic!("{name}: a waiter woken after 200 ms was still waiting 30 s later"),
    }
    let lost = held.lost();
    held.release()
        .await
        .unwrap_or_else(|e| panic!("{name}: release failed: {e}"));
    // Also checks that the woken waiter left nothing behind that would block the lock.
    let second = lb
        .lock(nb, &LockWait::within(Duration::from_secs(5)))
        .await
        .unwrap_or_else(|e| panic!("{name}: lock not free after release: {e}"));
    drop(lost);
    second
        .release()
        .await
        .unwrap_or_else(|e| panic!("{name}: release failed: {e}"));
}

/// Concurrent claims of different identities: exactly one wins, the other learns the winner
/// (an error, never `Ok`); the winner's repeat succeeds; the listing records the winner.
pub async fn claim_has_one_winner_and_a_different_id_is_an_error(subject: &Subject) {
    let (a, b) = (subject.backend(0), subject.backend(1));
    let (Some(fa), Some(fb)) = (a.fencing(), b.fencing()) else {
        return;
    };
    let name = a.name();
    let (ia, ib) = (
        ClusterId("conformance-a".into()),
        ClusterId("conformance-b".into()),
    );
    let (ra, rb) = futures::join!(fa.claim(&ia, None), fb.claim(&ib, None));
    let winner = match (&ra, &rb) {
        (Ok(()), Err(ClaimError::Taken(w))) => {
            assert_eq!(*w, ia, "{name}: the loser was told another winner");
            ia.clone()
        }
        (Err(ClaimError::Taken(w)), Ok(())) => {
            assert_eq!(*w, ib, "{name}: the loser was told another winner");
            ib.clone()
        }
        other => panic!("{name}: two concurrent claims must give one winner and one Taken: {other:?}"),
    };
    let again = if winner == ia {
        fa.claim(&ia, None).await
    } else {
        fb.claim(&ib, None).await
    };
    assert!(
        again.is_ok(),
        "{name}: the winner's repeated claim failed: {again:?}"
    );
    let listing = b
        .list()
        .await
        .unwrap_or_else(|e| panic!("{name}: list failed: {e}"));
    assert_eq!(
        listing.recorded_cluster.as_ref(),
        Some(&winner),
        "{name}: the listing does not report the claimed identity"
    );
    if let Some(lock) = a.formation_lock() {
        // Under a hold, a different identity is still Taken.
        let guard = lock
            .lock(&subject.nodes[0], &LockWait::within(Duration::from_secs(5)))
            .await
            .unwrap_or_else(|e| panic!("{name}: lock failed: {e}"));
        let other = ClusterId("conformance-c".into());
        let r = fa.claim(&other, Some(guard.as_ref())).await;
        assert!(
            matches!(r, Err(ClaimError::Taken(ref w)) if *w == winner),
            "{name}: {r:?}"
        );
        let _ = guard.release().await;
    }
}
