//! Hostile-connector benchmark: what connectors without the cookie can do to a node, run as
//! deployed (`target/dist/muster`, built first under cargo; `--exe PATH` for another build), one
//! node on loopback with its HTTP endpoint on. Two scenarios, one table each:
//!
//! 1. **Memory**: `--connections` (4,000) connections from four loopback addresses in four /24
//!    networks, opened as fast as the node accepts them, each sending a valid hello and then a
//!    64 KiB frame, and held open. The node's resident memory at start, its peak during the
//!    flood, and 3 s after they closed. Targets: peak under 32 MiB, after within 2 MiB of the
//!    start.
//! 2. **Idle flood**: 384 idle connections from six addresses on the peer port and 384 on the
//!    HTTP port, each reopened as soon as the node closes it, while the operator runs `muster ctl
//!    ping` ten times, a probe GETs `/health/live` ten times, and a new node joins. Targets: 10 of
//!    10, 10 of 10, and the join.
//!
//! `cargo run --release -p muster-tests --bin flood-bench`

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use muster_tests::{Layout, LocalCluster};

struct Args {
    connections: usize,
    exe: Option<std::path::PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        connections: 4_000,
        exe: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--connections" => {
                let v = it.next().ok_or("--connections needs a number")?;
                args.connections = v
                    .parse()
                    .map_err(|_| format!("--connections {v}: not a number"))?;
            }
            "--exe" => args.exe = Some(it.next().ok_or("--exe needs a path")?.into()),
            "-h" | "--help" => {
                return Err("usage: flood-bench [--connections N] [--exe PATH]".into());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(args)
}

/// A valid hello for cluster "local" (the first frame of the handshake), then one 64 KiB frame.
fn hello_and_big_frame() -> Vec<u8> {
    let hello = format!(
        r#"{{"type":"hello","version":{},"cluster_name":"local","node":null,"nonce":""}}"#,
        muster_node::proto::channel::VERSION
    );
    let hello = hello.as_bytes();
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&(hello.len() as u32).to_be_bytes());
    bytes.extend_from_slice(hello);
    bytes.extend_from_slice(&65_536u32.to_be_bytes());
    bytes.extend(std::iter::repeat_n(0x5a, 65_536));
    bytes
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

async fn memory(c: &LocalCluster, connections: usize) {
    let target = muster_tests::peer_socket(c, 0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = c.rss_kib(0);
    let payload = Arc::new(hello_and_big_frame());
    let sources = ["127.0.1.2", "127.0.2.2", "127.0.3.2", "127.0.4.2"];
    let begun = Instant::now();
    let mut held = Vec::with_capacity(connections);
    let mut peak = start.unwrap_or(0);
    let mut failed = 0;
    for i in 0..connections {
        match muster_tests::flood::connect_from(sources[i % sources.len()], target).await {
            Ok(mut s) => {
                // The node may close it at once (room made for newer ones): that is the point.
                let _ = s.write_all(&payload).await;
                held.push(s);
            }
            Err(_) => failed += 1,
        }
        if i % 200 == 0 {
            peak = peak.max(c.rss_kib(0).unwrap_or(0));
        }
    }
    for _ in 0..10 {
        peak = peak.max(c.rss_kib(0).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = begun.elapsed();
    drop(held);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = c.rss_kib(0);
    println!(
        "| connections | from | opened in (s) | refused at connect | RSS at start (MiB) | peak RSS during (MiB) | RSS 3 s after (MiB) | after − start (MiB) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {connections} | 4 networks | {:.2} | {failed} | {} | {} | {} | {} |",
        took.as_secs_f64(),
        mib(start),
        mib(Some(peak)),
        mib(after),
        match (start, after) {
            (Some(s), Some(a)) => format!("{:+.1}", (a as f64 - s as f64) / 1024.0),
            _ => "-".into(),
        }
    );
}

async fn idle(c: &mut LocalCluster) {
    let http = c.nodes[0].http.expect("an HTTP address");
    let flood = muster_tests::flood::IdleFlood::start(&[muster_tests::peer_socket(c, 0), http], 384);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut pings = 0;
    let mut lives = 0;
    let mut failures = Vec::new();
    for _ in 0..10 {
        let out = tokio::task::block_in_place(|| muster_tests::ctl(c, 0, &["ping"]));
        if out.status.success() {
            pings += 1;
        } else if failures.len() < 3 {
            failures.push(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        let code = tokio::task::block_in_place(|| muster_tests::http_get(http, "/health/live").0);
        lives += usize::from(code == 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let begun = Instant::now();
    let joined = match c.start(1) {
        Ok(()) => c.wait_members(&[0, 1], 2, Duration::from_secs(60)).await.is_ok(),
        Err(_) => false,
    };
    let join_time = begun.elapsed();
    let reopened = flood.reopened();
    drop(flood);
    for f in &failures {
        println!("a failed `ctl ping` said: {f}");
    }
    if let Ok(dump) = std::env::var("FLOOD_BENCH_LOG") {
        let _ = std::fs::write(dump, c.log_since_start(0));
    }
    println!(
        "| idle connections | from | reopened during the run | `ctl ping` | `/health/live` | a new member joins |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| 384 peer + 384 HTTP | 6 addresses | {} | {pings} of 10 | {lives} of 10 | {} |",
        reopened,
        if joined {
            format!("yes, in {:.2} s", join_time.as_secs_f64())
        } else {
            "no".into()
        }
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("flood-bench: {e}");
            std::process::exit(2);
        }
    };
    muster_tests::raise_open_files();
    let exe = match args.exe.clone().map_or_else(muster_tests::dist_node_exe, Ok) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("flood-bench: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "flood-bench: {}, one node on loopback, classic backend",
        exe.display()
    );
    println!();
    let layout = Layout {
        nodes: 2,
        http: true,
        ..Layout::default()
    };
    let (_dir, mut c) = muster_tests::local_cluster_of(&exe, &layout);
    muster_tests::relist(&c, 0, &[0]);
    if let Err(e) = c.start(0) {
        eprintln!("flood-bench: cannot start the node: {e}");
        std::process::exit(1);
    }
    if let Err(e) = c.wait_members(&[0], 1, Duration::from_secs(30)).await {
        eprintln!("flood-bench: the node did not form: {e}\n{}", c.log_tail(0, 20));
        std::process::exit(1);
    }
    memory(&c, args.connections).await;
    println!();
    idle(&mut c).await;
    c.stop_all(Duration::from_secs(5)).await;
}
