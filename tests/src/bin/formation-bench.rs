//! Formation benchmark: starts N real `muster` node processes at once on loopback (classic
//! backend) and measures the time from the last process start until every node reports all N
//! members, the peak RSS per node (VmHWM) and the peer messages per node.
//!
//! `cargo run --release -p muster-tests --bin formation-bench -- --nodes 3,5,10,25 --runs 5`
//!
//! It runs the `muster-test-node` binary next to itself (the `muster` CLI built into this
//! package), building it first with the same profile when it is missing or older.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use muster_tests::{Layout, LocalCluster};

struct Args {
    nodes: Vec<usize>,
    runs: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut nodes = vec![3, 5, 10, 25];
    let mut runs = 5;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--nodes" => {
                let v = it.next().ok_or("--nodes needs a list, e.g. 3,5,10")?;
                nodes = v
                    .split(',')
                    .map(|x| {
                        x.trim()
                            .parse::<usize>()
                            .map_err(|_| format!("--nodes: {x:?} is not a number"))
                    })
                    .collect::<Result<_, _>>()?;
                if nodes.iter().any(|n| !(1..=64).contains(n)) {
                    return Err("--nodes: each size must be 1 to 64".into());
                }
            }
            "--runs" => {
                let v = it.next().ok_or("--runs needs a number")?;
                runs = v.parse().map_err(|_| format!("--runs: {v:?} is not a number"))?;
                if runs == 0 {
                    return Err("--runs must be at least 1".into());
                }
            }
            "-h" | "--help" => {
                println!("formation-bench [--nodes 3,5,10,25] [--runs 5]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}; see --help")),
        }
    }
    Ok(Args { nodes, runs })
}

/// The node binary beside this one, built with the same profile if needed.
fn node_exe() -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = me.parent().ok_or("no parent dir")?;
    let exe = dir.join("muster-test-node");
    let release = dir.ends_with("release");
    if let Ok(cargo) = std::env::var("CARGO") {
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-q", "-p", "muster-tests", "--bin", "muster-test-node"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() {
            return Err("building muster-test-node failed".into());
        }
    }
    if !exe.exists() {
        return Err(format!(
            "{} is missing: run `cargo build --release -p muster-tests --bins` first",
            exe.display()
        ));
    }
    Ok(exe)
}

/// Reads a counter from a node's /metrics.
fn metric(addr: std::net::SocketAddr, name: &str) -> Option<u64> {
    let (_, body) = muster_tests::http_get(addr, "/metrics");
    body.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

struct Run {
    seconds: f64,
    peak_rss_kib: u64,
    messages_per_node: f64,
}

async fn one_run(exe: &std::path::Path, n: usize) -> Result<Run, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let layout = Layout {
        nodes: n,
        prefix: "bench".into(),
        http: true,
        ..Layout::default()
    };
    let mut c = LocalCluster::create(exe, dir.path(), &layout).map_err(|e| e.to_string())?;
    c.start_all().map_err(|e| e.to_string())?;
    let last_start = c
        .nodes
        .iter()
        .filter_map(|x| x.started)
        .max()
        .unwrap_or_else(Instant::now);
    let all: Vec<usize> = (0..n).collect();
    let times = match c.wait_members(&all, n, Duration::from_secs(60)).await {
        Ok(t) => t,
        Err(e) => {
            c.stop_all(Duration::from_secs(2)).await;
            let kept = dir.keep();
            return Err(format!("{e}\n  configs and logs kept in {}", kept.display()));
        }
    };
    let formed = times.into_iter().max().unwrap_or(last_start);
    let seconds = formed.saturating_duration_since(last_start).as_secs_f64();
    let peak_rss_kib = (0..n).filter_map(|i| c.peak_rss_kib(i)).max().unwrap_or(0);
    let mut messages = 0;
    for node in &c.nodes {
        let addr = node.http.ok_or("http disabled")?;
        messages += metric(addr, "muster_peer_messages_sent_total").unwrap_or(0);
    }
    c.stop_all(Duration::from_secs(5)).await;
    Ok(Run {
        seconds,
        peak_rss_kib,
        messages_per_node: messages as f64 / n as f64,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("formation-bench: {e}");
            std::process::exit(2);
        }
    };
    let exe = match node_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("formation-bench: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "formation-bench: {} run(s) per size, classic backend, loopback, {}",
        args.runs,
        exe.display()
    );
    println!();
    println!(
        "| nodes | runs | median (s) | p90 (s) | max (s) | peak RSS per node (MiB) | peer messages per node |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mut failed = false;
    for &n in &args.nodes {
        let mut runs = Vec::new();
        for r in 0..args.runs {
            match one_run(&exe, n).await {
                Ok(run) => runs.push(run),
                Err(e) => {
                    eprintln!("N={n} run {}: {e}", r + 1);
                    failed = true;
                }
            }
        }
        if runs.is_empty() {
            continue;
        }
        let mut secs: Vec<f64> = runs.iter().map(|r| r.seconds).collect();
        secs.sort_by(f64::total_cmp);
        let mut msgs: Vec<f64> = runs.iter().map(|r| r.messages_per_node).collect();
        msgs.sort_by(f64::total_cmp);
        let rss = runs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0) as f64 / 1024.0;
        println!(
            "| {n} | {} | {:.3} | {:.3} | {:.3} | {rss:.1} | {:.0} |",
            runs.len(),
            percentile(&secs, 0.5),
            percentile(&secs, 0.9),
            secs[secs.len() - 1],
            percentile(&msgs, 0.5)
        );
    }
    if failed {
        std::process::exit(1);
    }
}
