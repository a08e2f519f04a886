//! Nodes in one process, on loopback, with real stores and the real peer protocol: joins,
//! anti-entropy across clusters, and what a stopping node records.

use std::time::Duration;

use muster::{ClusterId, NodeName};
use tokio::net::TcpListener;

use super::*;
use crate::cookie::Cookie;
use crate::state::Persisted;

const COOKIE: &str = "0123456789abcdef0123456789abcdef";

fn cluster(id: &str) -> ClusterId {
    ClusterId(id.into())
}

/// A node of these tests: its data dir lives as long as it does.
struct Test {
    node: Arc<Node>,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Test {
    type Target = Arc<Node>;
    fn deref(&self) -> &Arc<Node> {
        &self.node
    }
}

/// A loopback listener on a free port, and the node name that reaches it.
async fn listener(short: &str) -> (TcpListener, NodeName) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    (l, format!("{short}@127.0.0.1:{port}").parse().unwrap())
}

/// A name nothing listens on (a member that is down or cut off).
async fn unreachable(short: &str) -> NodeName {
    listener(short).await.1
}

/// `members` (the first one formed it) in cluster `id`, as persisted.
fn persisted(id: &str, members: &[&NodeName]) -> Persisted {
    let mut p = Persisted {
        state: ClusterState::formed(cluster(id), members[0], 1),
        incarnation: 1,
        ..Persisted::default()
    };
    for m in &members[1..] {
        p.state.add(m, 1).unwrap();
    }
    p
}

/// Opens `name` on a data dir holding `p`.
fn open(name: &NodeName, p: &Persisted) -> Test {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.save(p).unwrap();
    let cookie = Cookie::parse(COOKIE, "test").unwrap();
    let node = Node::open(
        name.clone(),
        "test".into(),
        cookie,
        None,
        store,
        Duration::from_millis(500),
    )
    .unwrap();
    Test { node, _dir: dir }
}

/// Opens `name` on `p`, serves its peer port, and resumes it (ready, as after a restart).
async fn running(l: TcpListener, name: &NodeName, p: &Persisted) -> Test {
    let t = open(name, p);
    tokio::spawn(crate::server::serve(l, t.node.clone()));
    NodeMembership(t.node.clone()).resume(None).await.unwrap();
    assert!(t.is_ready());
    t
}

/// Makes every later save of `store` fail: each slot becomes a directory.
fn break_saves(store: &Store) {
    for slot in store.slot_paths() {
        let _ = std::fs::remove_file(&slot);
        std::fs::create_dir_all(&slot).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_whose_save_fails_is_refused_and_never_shown_to_probes_or_syncs() {
    let (l, a) = listener("a").await;
    let a = running(l, &a, &persisted("x", &[&a])).await;
    let joiner = unreachable("j").await;
    break_saves(a.store());
    let answer = a.accept_join(&joiner, 1, Some(&cluster("x"))).await;
    assert!(matches!(&answer, Err(JoinError::State(_))), "{answer:?}");
    assert!(
        !a.peer_info().members.contains(&joiner),
        "a probe shows a joiner that is not on disk: {:?}",
        a.peer_info().members
    );
    assert!(!a.state().is_member(&joiner), "nor does the state syncs send");
    assert!(a.is_ready(), "a failed join leaves the member serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_for_another_cluster_is_refused_naming_both_without_adding_the_joiner() {
    let (l, a) = listener("a").await;
    let a = running(l, &a, &persisted("y", &[&a])).await;
    let joiner = unreachable("j").await;
    let req: Request = serde_json::from_value(serde_json::json!({
        "op": "join", "node": joiner, "incarnation": 1, "cluster": "x",
    }))
    .unwrap();
    let answer = crate::server::dispatch(&a, req, Some(&joiner)).await;
    let Response::Error { message } = &answer else {
        panic!("a member of y accepted a join for x: {answer:?}");
    };
    assert!(
        message.contains("cluster x") && message.contains("cluster y"),
        "{message}"
    );
    assert!(!a.state().is_member(&joiner), "{:?}", a.state().alive());
    assert!(!a.peer_info().members.contains(&joiner));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joiner_aiming_at_a_member_that_moved_leaves_no_phantom_member() {
    let (l, a) = listener("a").await;
    let a = running(l, &a, &persisted("y", &[&a])).await;
    let joiner = open(&unreachable("j").await, &Persisted::default());
    let refused = NodeMembership(joiner.node.clone())
        .join(a.name(), &cluster("x"))
        .await
        .unwrap_err();
    assert_eq!(a.state().alive(), vec![a.name().clone()], "the joiner was added");
    let text = refused.to_string();
    assert!(text.contains("cluster x") && text.contains("cluster y"), "{text}");
    assert_eq!(joiner.state().cluster, None);
}
