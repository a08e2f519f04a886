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

/// Polls `cond` every 20 ms for up to `limit`.
async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < until {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// A plain HTTP GET of `path` from the node's HTTP endpoint: the status code and the body.
#[cfg(feature = "http")]
async fn http_get(node: &Arc<Node>, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(crate::http::serve(l, node.clone(), true));
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// Runs the formation engine on `node` (classic list `nodes`) and returns its refusal.
async fn engine_refusal(node: &Arc<Node>, nodes: Vec<NodeName>) -> String {
    let backend = muster::classic::ClassicBackend::new(node.name(), nodes);
    let membership = Arc::new(NodeMembership(node.clone()));
    let engine = muster::FormationEngine::new(Default::default(), Arc::new(backend), membership);
    match engine.run().await {
        Err(muster::FormationError::Refused(refusal)) => refusal.to_string(),
        other => panic!("the engine did not refuse: {other:?}"),
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

/// A running member of x whose known peer b is now in y: the engine refuses such a node at
/// restart; a running one stops serving too, with the same words, until b is back out of y.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_member_whose_peer_moved_to_another_cluster_stops_serving_with_the_refusal() {
    let (lb, b) = listener("b").await;
    let b = running(lb, &b, &persisted("y", &[&b])).await;
    let a = unreachable("a").await;
    let was = Persisted {
        last_to_stop: true,
        ..persisted("x", &[&a, b.name()])
    };
    let a = open(&a, &was);
    let refusal = engine_refusal(&a, vec![a.name().clone(), b.name().clone()]).await;
    // The same node as it was while b was still in x: running, ready.
    NodeMembership(a.node.clone()).resume(None).await.unwrap();
    assert!(a.is_ready());
    tokio::spawn(a.node.clone().anti_entropy(Duration::from_millis(50)));
    assert!(
        eventually(Duration::from_secs(5), || !a.is_ready()).await,
        "a still serves x while its peer b is in y"
    );
    assert!(!a.peer_info().ready, "probes answer not ready");
    let status = a.status(false).await;
    assert!(!status.ready);
    assert_eq!(
        status.detail, refusal,
        "cluster-status shows the engine's refusal"
    );
    #[cfg(feature = "http")]
    {
        let (code, body) = http_get(&a, "/health/ready").await;
        assert_eq!(code, 503, "{body}");
        assert!(body.contains(&refusal), "{body}");
    }
    let refused = a
        .accept_join(&unreachable("j").await, 1, Some(&cluster("x")))
        .await;
    assert!(matches!(refused, Err(JoinError::NotReady { .. })), "{refused:?}");
    // Several rounds later it still does not serve; once b leaves y, it serves x again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!a.is_ready());
    b.reset().await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || a.is_ready()).await,
        "a serves again once b is out of y"
    );
    let detail = a.status(false).await.detail;
    assert!(!detail.contains("inconsistent cluster"), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_does_not_answer_is_not_taken_for_stopped() {
    // b is cut off (or frozen, or crashed): nothing says it stopped, so a is not the last.
    let (la, a) = listener("a").await;
    let b = unreachable("b").await;
    let a = running(la, &a, &persisted("x", &[&a, &b])).await;
    a.record_shutdown().await;
    let p = a.store().load().unwrap();
    assert!(!p.last_to_stop, "a recorded itself last while b may still run");
    assert!(!a.is_ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_member_every_other_member_told_it_stopped_is_the_last_to_stop() {
    let (la, a) = listener("a").await;
    let (lb, b) = listener("b").await;
    let both = persisted("x", &[&a, &b]);
    let a = running(la, &a, &both).await;
    let b = running(lb, &b, &both).await;
    b.record_shutdown().await;
    assert!(!b.store().load().unwrap().last_to_stop, "a was still running");
    a.record_shutdown().await;
    let p = a.store().load().unwrap();
    assert!(p.last_to_stop, "b stopped first and said so");
    assert!(p.running_at_shutdown.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_said_it_stopped_counts_as_running_again_once_it_pushes_its_state() {
    let (la, a) = listener("a").await;
    let b = unreachable("b").await;
    let both = persisted("x", &[&a, &b]);
    let a = running(la, &a, &both).await;
    let reply = crate::server::dispatch(&a, Request::Stopping, Some(&b)).await;
    assert_eq!(reply, Response::Ok);
    assert!(a.not_known_stopped(&both.state, &[]).is_empty());
    // b restarted and resumed: its push says it runs.
    crate::server::dispatch(
        &a,
        Request::Sync {
            state: both.state.clone(),
            meta: Default::default(),
        },
        Some(&b),
    )
    .await;
    assert_eq!(a.not_known_stopped(&both.state, &[]), vec![b.clone()]);
    a.record_shutdown().await;
    assert!(!a.store().load().unwrap().last_to_stop);
}

/// One compromised member cannot stop, reset or rewire another: operator requests over a
/// member's connection are refused and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_requests_from_a_member_are_refused_and_change_nothing() {
    let (la, a) = listener("a").await;
    let (lb, b) = listener("b").await;
    let p = persisted("x", &[&a, &b]);
    let node_a = running(la, &a, &p).await;
    let node_b = running(lb, &b, &p).await;
    let requests = [
        Request::Stop,
        Request::Reset,
        Request::ForceBoot,
        Request::Forget { node: b.clone() },
        Request::JoinCluster { peer: b.clone() },
    ];
    for req in requests {
        let what = req.operator_request().expect("an operator request");
        let answer = node_b.call(&a, &req).await.expect("a answers");
        let Response::Error { message } = &answer else {
            panic!("{what} from member b was accepted: {answer:?}");
        };
        assert!(
            message.contains("operator request") && message.contains(&b.to_string()),
            "{message}"
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(node_a.is_ready(), "a still serves");
    assert!(node_a.state().is_member(&b), "b is still a member");
    assert!(!node_a.store().force_boot(), "no force boot was recorded");
    assert!(
        matches!(node_b.call(&a, &Request::Ping).await, Ok(Response::Pong { .. })),
        "a was not stopped"
    );
}

/// An authenticated connection from `source` (a loopback address) to `to`, claiming to be
/// `claimed`, answering requests as `claimed` would (Ping).
async fn impostor(source: &str, to: &NodeName, claimed: &NodeName) -> Arc<crate::proto::conn::Conn> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let stream = socket
        .connect(crate::config::peer_address(to).parse().unwrap())
        .await
        .unwrap();
    let cookie = Cookie::parse(COOKIE, "test").unwrap();
    let (channel, _) =
        crate::proto::channel::Channel::connect(crate::tls::plain(stream), &cookie, "test", Some(claimed))
            .await
            .unwrap();
    let me = claimed.clone();
    let answer: crate::proto::conn::Handler = Arc::new(move |_, _| {
        let me = me.clone();
        Box::pin(async move { crate::proto::conn::Handled::from(Response::Pong { node: me }) })
    });
    crate::proto::conn::Conn::start(channel, Some(claimed.clone()), Some(answer)).0
}

/// Without TLS a name is bound to the address that holds it: a second connection claiming a
/// connected member's name from another address is closed, and once the holder is gone, a
/// claimer from an address the name does not resolve to is never used for calls to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_is_held_by_one_address_and_calls_never_go_to_a_claimer() {
    let (la, a) = listener("a").await;
    let b = unreachable("b").await;
    let node_a = running(la, &a, &persisted("x", &[&a, &b])).await;
    // b's connection from 127.0.0.1, the address its name says, holds the name.
    let holder = impostor("127.0.0.1", &a, &b).await;
    assert!(matches!(
        holder.call(&Request::Ping).await,
        Ok(Response::Pong { .. })
    ));
    let claimer = impostor("127.0.0.2", &a, &b).await;
    let refused = claimer.call(&Request::Probe).await;
    assert!(
        refused.is_err(),
        "a second holder of b's name was served: {refused:?}"
    );
    // The holder goes; a claimer from 127.0.0.2 is served, but a's calls to b never use it.
    holder.close();
    let served = async {
        loop {
            let claimer = impostor("127.0.0.2", &a, &b).await;
            if matches!(claimer.call(&Request::Ping).await, Ok(Response::Pong { .. })) {
                return claimer;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let _claimer = tokio::time::timeout(Duration::from_secs(5), served)
        .await
        .expect("the name is free once its holder closed");
    let r = node_a.call(&b, &Request::Ping).await;
    assert!(
        !matches!(r, Ok(Response::Pong { .. })),
        "a's call to b was answered by the claimer: {r:?}"
    );
}

/// State pushes: a forgotten member is answered with the state that records its removal (never
/// merged, it could push itself back); a joiner this node has not heard of yet is merged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_member_learns_its_removal_and_an_unknown_joiner_is_merged() {
    let (la, a) = listener("a").await;
    let b = unreachable("b").await;
    let j = unreachable("j").await;
    let mut p = persisted("x", &[&a, &b]);
    p.state.remove(&b);
    let node_a = running(la, &a, &p).await;
    // b still believes it is a member and pushes its state.
    let b_view = persisted("x", &[&a, &b]).state;
    let answer = crate::server::dispatch(
        &node_a,
        Request::Sync {
            state: b_view.clone(),
            meta: Default::default(),
        },
        Some(&b),
    )
    .await;
    let Response::State { state, .. } = &answer else {
        panic!("a forgotten member is told, not refused: {answer:?}");
    };
    assert!(state.members.get(&b).is_some_and(|m| m.removed), "{state:?}");
    assert!(!node_a.state().is_member(&b), "its push was not merged");
    // j joined through another member; its push reaches a first.
    let mut j_view = persisted("x", &[&a]).state;
    j_view.add(&j, 5).unwrap();
    let answer = crate::server::dispatch(
        &node_a,
        Request::Sync {
            state: j_view,
            meta: Default::default(),
        },
        Some(&j),
    )
    .await;
    assert!(matches!(answer, Response::State { .. }), "{answer:?}");
    assert!(node_a.state().is_member(&j), "the joiner is merged");
}

/// A node that recorded a begun formation (its service's on_form hook ran for it) forms that
/// cluster and nothing else: no other identity, no join, no commitment to another seed, no reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_began_forming_does_nothing_else_until_it_has_formed() {
    let a = unreachable("a").await;
    let p = Persisted {
        forming: Some(cluster("c1")),
        ..Persisted::default()
    };
    let t = open(&a, &p);
    assert_eq!(t.unfinished_formation(), Some(cluster("c1")));
    let e = t.reset().await.unwrap_err().to_string();
    assert!(e.contains("forming cluster c1"), "{e}");
    let m = NodeMembership(t.node.clone());
    assert!(m.persist_commitment(None).await.is_err());
    assert!(m.join(&a, &cluster("c2")).await.is_err());
    assert!(m.form(&cluster("c2")).await.is_err());
    m.form(&cluster("c1")).await.unwrap();
    assert_eq!(t.state().cluster, Some(cluster("c1")));
    assert_eq!(t.state().founder, Some(a.clone()));
    assert_eq!(t.unfinished_formation(), None);
}
