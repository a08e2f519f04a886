//! `muster demo`: N node processes on loopback with the classic backend, a temp data dir and a
//! generated cookie; prints a timeline, each node's status and the formation time.

// Not network input: the demo indexes the nodes it launched itself.
#![allow(clippy::indexing_slicing, clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::ctl::print_status;
use crate::launch::{Layout, LocalCluster};

/// Runs the demo; returns the process exit code.
pub async fn run(exe: &Path, nodes: usize, keep: bool) -> Result<i32, String> {
    if !(1..=64).contains(&nodes) {
        return Err(format!("--nodes {nodes} is out of range: allowed 1 to 64"));
    }
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("muster-demo-{}-{stamp}", std::process::id()));
    let layout = Layout {
        nodes,
        prefix: "demo".into(),
        ..Layout::default()
    };
    let mut cluster = LocalCluster::create(exe, &dir, &layout)
        .map_err(|e| format!("cannot set up {}: {e}", dir.display()))?;
    println!(
        "Starting {nodes} muster nodes on loopback (classic backend, cookie in {})",
        cluster.cookie_file.display()
    );
    let t0 = Instant::now();
    cluster
        .start_all()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let last_start = cluster.nodes.iter().filter_map(|n| n.started).max().unwrap_or(t0);
    for n in &cluster.nodes {
        let pid = n.child.as_ref().map(|c| c.id()).unwrap_or(0);
        let at = n.started.map(|s| s - t0).unwrap_or_default();
        println!("  +{:.3}s  started {} (pid {pid})", at.as_secs_f64(), n.name);
    }
    let all: Vec<usize> = (0..nodes).collect();
    let result = cluster.wait_members(&all, nodes, Duration::from_secs(30)).await;
    let code = match result {
        Ok(times) => {
            print_formed(&cluster, times, t0, last_start).await;
            0
        }
        Err(e) => {
            eprintln!("demo failed: {e}");
            for i in 0..nodes {
                eprintln!(
                    "--- {} log (last lines):\n{}",
                    cluster.nodes[i].name,
                    cluster.log_tail(i, 10)
                );
            }
            1
        }
    };
    if keep && code == 0 {
        keep_running(&mut cluster, &dir);
        return Ok(0);
    }
    cluster.stop_all(Duration::from_secs(5)).await;
    println!("Stopped all nodes.");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(code)
}

/// Each node's formation in the order they formed, every node's status, and the time from the
/// last start to one cluster.
async fn print_formed(cluster: &LocalCluster, times: Vec<Instant>, t0: Instant, last_start: Instant) {
    let mut order: Vec<(usize, Instant)> = times.into_iter().enumerate().collect();
    order.sort_by_key(|(_, t)| *t);
    for (i, t) in &order {
        let detail = cluster.status(*i).await.map(|s| s.detail).unwrap_or_default();
        println!(
            "  +{:.3}s  {}: {detail}",
            (*t - t0).as_secs_f64(),
            cluster.nodes[*i].name
        );
    }
    let formed = order.last().map(|(_, t)| *t).unwrap_or(last_start);
    println!();
    for i in 0..cluster.nodes.len() {
        if let Some(s) = cluster.status(i).await {
            print_status(&s);
        }
    }
    println!(
        "\nAll {} nodes formed one cluster {:.3} s after the last process started.",
        cluster.nodes.len(),
        formed.saturating_duration_since(last_start).as_secs_f64()
    );
}

/// `--keep`: detaches the nodes (they outlive the demo) and says how to reach and stop them.
fn keep_running(cluster: &mut LocalCluster, dir: &Path) {
    println!("\n--keep: the nodes keep running. Talk to them with, for example:");
    let n = &cluster.nodes[0];
    println!(
        "  muster ctl --node {} --cookie-file {} --cluster-name local cluster-status",
        n.name,
        cluster.cookie_file.display()
    );
    println!(
        "and stop each with `... stop`. Their configs, data and logs are in {}",
        dir.display()
    );
    for n in &mut cluster.nodes {
        n.child = None; // detach: the processes outlive the demo
    }
}
