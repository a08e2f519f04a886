//! Connection floods against a real node: the connection budgets keep it forming and answering.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use muster_tests::{Layout, ctl, http_get, local_cluster_of, node_exe, text};
use tokio::net::{TcpSocket, TcpStream};

const FLOOD: usize = 5_000;

/// Opens up to `n` connections to `addr` from 127.0.0.2 (a source of its own) and holds them.
async fn flood(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = TcpSocket::new_v4().expect("a socket");
        socket
            .bind("127.0.0.2:0".parse().unwrap())
            .expect("bind 127.0.0.2");
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(500), socket.connect(addr)).await {
            held.push(s);
        }
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_connections_on_each_port_leave_the_node_forming_and_answering() {
    // Node 1 waits for the others through the whole flood, however long opening it takes.
    let layout = Layout {
        nodes: 3,
        http: true,
        formation: "on_exhausted = \"wait\"".into(),
        ..Layout::default()
    };
    let (_dir, mut c) = local_cluster_of(&node_exe!(), &layout);
    c.start(0).unwrap();
    let peer = muster_tests::peer_socket(&c, 0);
    let http = c.nodes[0].http.unwrap();
    let up = Instant::now();
    while !ctl(&c, 0, &["ping"]).status.success() {
        assert!(up.elapsed() < Duration::from_secs(10), "node 1 never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held_peer = flood(peer, FLOOD).await;
    let held_http = flood(http, FLOOD).await;
    // While the flood holds its connections the other two nodes start and all three form.
    c.start(1).unwrap();
    c.start(2).unwrap();
    c.wait_members(&[0, 1, 2], 3, Duration::from_secs(20))
        .await
        .unwrap();
    let t = Instant::now();
    let out = ctl(&c, 0, &["ping"]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "ping took {:?}",
        t.elapsed()
    );
    let (code, _) = http_get(http, "/health/live");
    assert_eq!(code, 200);
    let log = c.log_tail(0, 200);
    assert!(
        log.contains("closed so far to make room"),
        "the closed connections are logged:\n{log}"
    );
    eprintln!(
        "held {} peer-port and {} HTTP connections from 127.0.0.2",
        held_peer.len(),
        held_http.len()
    );
    drop((held_peer, held_http));
    c.stop_all(Duration::from_secs(5)).await;
}

/// Unicode and extreme values in every field of every message, sent over a properly
/// authenticated channel: each is answered with an error or ignored, never a panic, and the node
/// keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unicode_and_extreme_values_in_every_message_are_errors_not_panics() {
    use muster_node::cookie::Cookie;
    use muster_node::proto::channel::Channel;
    use serde_json::{Value, json};

    let (_dir, mut c) = local_cluster_of(
        &node_exe!(),
        &Layout {
            nodes: 1,
            ..Layout::default()
        },
    );
    c.start(0).unwrap();
    c.wait_members(&[0], 1, Duration::from_secs(20)).await.unwrap();
    let me = c.nodes[0].name.clone();
    let addr: SocketAddr = me.to_string().split_once('@').unwrap().1.parse().unwrap();
    let cookie = Cookie::from_file(&c.cookie_file).unwrap();
    let cluster = cluster_id(&c);
    let max = u64::MAX;
    let weird = "m@ÿ\u{0}\u{202e}𝔘𝔫𝔦𝔠𝔬𝔡𝔢";
    let nested = (0..200).fold(json!(0), |v, _| json!([v]));
    let requests: Vec<Value> = vec![
        json!({"op": "sync", "state": {"cluster": cluster, "members": {me.to_string(): {"incarnation": max, "removed": true}}, "version": max}}),
        json!({"op": "sync", "state": {"cluster": weird, "members": {}, "version": max}}),
        json!({"op": "sync", "state": {"cluster": null, "members": {"m@x": {"incarnation": max, "removed": false}}, "version": 0}}),
        json!({"op": "join", "node": "m@other", "incarnation": max}),
        json!({"op": "join", "node": weird, "incarnation": max}),
        json!({"op": "forget", "node": weird}),
        json!({"op": "forget", "node": "m@nobody"}),
        json!({"op": "join_cluster", "peer": "m@127.0.0.1:1"}),
        json!({"op": "ping", "extra": "x".repeat(500_000)}),
        json!({"op": "\u{0}\u{ffff}"}),
        json!({"op": "probe", "nested": nested}),
        json!([max, -1, 1e308, weird]),
        json!(null),
    ];
    // Each request in a well-formed envelope, then envelopes that are themselves odd.
    let mut envelopes: Vec<Value> = requests
        .iter()
        .enumerate()
        .map(|(i, req)| json!({"call": {"id": i, "req": req}}))
        .collect();
    envelopes.extend([
        json!({"call": {"id": max, "req": {"op": "ping"}}}),
        json!({"call": {"id": -1, "req": {"op": "ping"}}}),
        json!({"call": {"id": 1e300, "req": {"op": "ping"}}}),
        json!({"reply": {"id": max, "resp": {"type": "ok"}}}),
        json!({"reply": {"id": 7, "resp": weird}}),
        json!({"call": {"req": {"op": "ping"}}}),
        json!({"call": {"id": 1, "req": {"op": "ping"}}, "reply": {"id": 2}}),
        json!({weird: {"id": 1}}),
    ]);
    let mut answered = 0;
    for (i, envelope) in envelopes.iter().enumerate() {
        let stream = TcpStream::connect(addr).await.unwrap();
        let evil: muster::NodeName = "m@evil".parse().unwrap();
        let (mut ch, _) = Channel::connect(stream, &cookie, "local", Some(&evil))
            .await
            .unwrap();
        ch.send(envelope).await.unwrap();
        // An answer with the request's id, or the connection closed on a malformed envelope.
        let answer = tokio::time::timeout(Duration::from_secs(5), ch.recv::<Value>()).await;
        if let Ok(Ok(answer)) = answer {
            answered += 1;
            assert_eq!(
                answer["reply"]["id"], envelope["call"]["id"],
                "envelope {i}: an answer names the request it answers: {answer}"
            );
        }
        let out = ctl(&c, 0, &["ping"]);
        assert!(
            out.status.success(),
            "request {i} broke the node: {}",
            text(&out).1
        );
    }
    // Every request in a well-formed envelope is answered (an error for the malformed ones),
    // except the one nested past the JSON depth limit, which closes its connection; and the
    // call with the largest id is answered.
    assert_eq!(
        answered,
        requests.len(),
        "every well-formed envelope gets its answer"
    );
    let s = muster_tests::cluster_status(&c, 0);
    assert_eq!(s["ready"], true, "{s}");
    assert_eq!(
        s["members"].as_array().unwrap().len(),
        1,
        "no phantom or lost member: {s}"
    );
    let log = c.log_tail(0, 300);
    assert!(!log.contains("panicked"), "{log}");
    c.stop_all(Duration::from_secs(5)).await;
}

fn cluster_id(c: &muster_tests::LocalCluster) -> String {
    muster_tests::cluster_status(c, 0)["cluster"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A slow disk (every fsync 1.5 s late) on the member accepting a join: its probe answers stay
/// fast while it persists, because probes never wait for the state lock or the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_disk_does_not_delay_probe_answers() {
    use muster_node::cookie::Cookie;
    use muster_node::proto::channel::Channel;
    use muster_node::proto::conn::Conn;
    use muster_node::proto::{Request, Response};
    use muster_node::tls::PeerStream;

    let (_dir, mut c) = local_cluster_of(
        &node_exe!(),
        &Layout {
            nodes: 2,
            ..Layout::default()
        },
    );
    c.nodes[0].env = vec![("MUSTER_TEST_FSYNC_DELAY_MS".into(), "1500".into())];
    c.start_all().unwrap();
    c.wait_members(&[0, 1], 2, Duration::from_secs(30)).await.unwrap();
    let out = ctl(&c, 1, &["reset"]);
    assert!(out.status.success(), "{}", text(&out).1);
    tokio::time::sleep(Duration::from_secs(2)).await; // node 0 has persisted the departure
    // Node 1 joins through node 0, whose accept_join spends 1.5 s in fsync.
    let seed = c.nodes[0].name.to_string();
    let cookie = Cookie::from_file(&c.cookie_file).unwrap();
    let addr: SocketAddr = seed.split_once('@').unwrap().1.parse().unwrap();
    let me: muster::NodeName = "m@prober".parse().unwrap();
    let stream: PeerStream = Box::new(TcpStream::connect(addr).await.unwrap());
    let (ch, _) = Channel::connect(stream, &cookie, "local", Some(&me))
        .await
        .unwrap();
    let (conn, _) = Conn::start(ch, None, None);
    let c = std::sync::Arc::new(c);
    let join = {
        let (c, seed) = (c.clone(), seed.clone());
        std::thread::spawn(move || ctl(&c, 1, &["join-cluster", &seed]))
    };
    tokio::time::sleep(Duration::from_millis(300)).await; // the join is inside its fsync
    let mut worst = Duration::ZERO;
    for _ in 0..10 {
        let t = Instant::now();
        let answer = conn.call(&Request::Probe).await.unwrap();
        assert!(matches!(answer, Response::Peer { .. }), "{answer:?}");
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = join.join().unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(
        worst < Duration::from_millis(500),
        "a probe waited {worst:?} for the disk"
    );
    eprintln!("slowest probe answer during a 1.5 s fsync: {worst:?}");
    drop(c);
}
