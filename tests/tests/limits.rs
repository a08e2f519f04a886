//! Connection floods against a real node: the connection caps keep it forming and answering.

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
    let layout = Layout {
        nodes: 3,
        http: true,
        ..Layout::default()
    };
    let (_dir, mut c) = local_cluster_of(&node_exe!(), &layout);
    c.start(0).unwrap();
    let peer: SocketAddr = c.nodes[0]
        .name
        .to_string()
        .split_once('@')
        .unwrap()
        .1
        .parse()
        .unwrap();
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
        log.contains("connection cap reached"),
        "the refusals are logged:\n{log}"
    );
    eprintln!(
        "held {} peer-port and {} HTTP connections from 127.0.0.2",
        held_peer.len(),
        held_http.len()
    );
    drop((held_peer, held_http));
    c.stop_all(Duration::from_secs(5)).await;
}
