//! raft-kv as real processes: five nodes started at once with random offsets form one Raft
//! cluster with one leader and five voters, `initialize` having run exactly once; a write through
//! any node is readable on every node.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use muster_cli::launch::Ports;
use muster_tests::{Layout, LocalCluster, http_get};

const WAIT: Duration = Duration::from_secs(60);

/// `n` raft-kv nodes on loopback (classic backend, tuned formation), each with a client port.
fn kv_cluster(n: usize) -> (tempfile::TempDir, LocalCluster, Vec<SocketAddr>) {
    let layout = Layout {
        nodes: n,
        prefix: "kv".into(),
        ..Layout::default()
    };
    let (dir, c) =
        muster_tests::local_cluster_of(std::path::Path::new(env!("CARGO_BIN_EXE_raft-kv")), &layout);
    let mut ports = Ports::new();
    let mut apis = Vec::new();
    for node in &c.nodes {
        let api = SocketAddr::from(([127, 0, 0, 1], ports.take().unwrap()));
        let mut cfg = std::fs::read_to_string(&node.config).unwrap();
        cfg.push_str(&format!("\n[service]\nhttp = \"{api}\"\n"));
        std::fs::write(&node.config, cfg).unwrap();
        apis.push(api);
    }
    (dir, c, apis)
}

/// `GET /cluster` of every node, once each reports `voters` voters and the same leader.
fn settled(apis: &[SocketAddr], voters: usize) -> Option<(u64, Vec<u64>)> {
    let mut seen = None;
    for api in apis {
        let (code, body) = std::panic::catch_unwind(|| http_get(*api, "/cluster")).ok()?;
        if code != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let leader = v["leader"].as_u64()?;
        let mut ids: Vec<u64> = v["voters"]
            .as_array()?
            .iter()
            .filter_map(|x| x.as_u64())
            .collect();
        ids.sort_unstable();
        if ids.len() != voters || seen.as_ref().is_some_and(|s| *s != (leader, ids.clone())) {
            return None;
        }
        seen = Some((leader, ids));
    }
    seen
}

fn put(api: SocketAddr, key: &str, value: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "PUT /kv/{key} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{value}",
        value.len()
    )
    .unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_started_at_once_form_one_raft_cluster_initialized_once() {
    let rounds: usize = std::env::var("RAFT_KV_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    for round in 1..=rounds {
        let (_dir, mut c, apis) = kv_cluster(5);
        let seed = Instant::now().elapsed().as_nanos() as u64 ^ (round as u64 * 7919);
        for i in 0..5 {
            c.start(i).unwrap();
            let offset = (seed.wrapping_mul(i as u64 + 1).wrapping_mul(2654435761)) % 300;
            tokio::time::sleep(Duration::from_millis(offset)).await;
        }
        let started = Instant::now();
        let mut view = None;
        while view.is_none() && started.elapsed() < WAIT {
            tokio::time::sleep(Duration::from_millis(100)).await;
            view = settled(&apis, 5);
        }
        let logs: String = (0..5).map(|i| c.log_since_start(i)).collect();
        let Some((leader, voters)) = view else {
            panic!("round {round}: no single leader with five voters within {WAIT:?}\n{logs}");
        };
        let inits = logs.matches("initialized Raft for cluster").count();
        assert_eq!(inits, 1, "round {round}: initialize ran {inits} times\n{logs}");
        assert!(voters.contains(&leader));
        assert_eq!(
            put(apis[3], "round", &round.to_string()),
            200,
            "round {round}: a write through a follower"
        );
        for api in &apis {
            let mut got = String::new();
            for _ in 0..50 {
                got = http_get(*api, "/kv/round").1;
                if got == round.to_string() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(got, round.to_string(), "round {round}: read on {api}");
        }
        eprintln!(
            "round {round}: leader {leader}, five voters, {:.2} s after the last start",
            started.elapsed().as_secs_f64()
        );
        c.stop_all(Duration::from_secs(5)).await;
    }
}
