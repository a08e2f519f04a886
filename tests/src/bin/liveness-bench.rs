//! Liveness benchmark: N real `muster` node processes on loopback (classic backend, default
//! liveness settings), formed; then, per run, how long every other member takes to report one
//! member unreachable after SIGKILL and after SIGSTOP, up again after SIGCONT, and to show a
//! metadata change (`ctl set-metadata`); and, in steady state, each node's CPU use and peer
//! messages per second. Every observation is a long poll of a node's `/members?after=V`, so each
//! member's report is timed from the moment it changed, not by a polling period.
//!
//! `cargo run --release -p muster-tests --bin liveness-bench -- --nodes 5,100 --runs 5`
//! (the dist node binary, built first under cargo; `--exe PATH` for another build,
//! `--steady SECONDS` for the steady-state window, 30 by default).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use muster_tests::bench::{cpu_seconds, percentile, sample};
use muster_tests::{Layout, LocalCluster, ctl, http_get_within};

struct Args {
    nodes: Vec<usize>,
    runs: usize,
    steady: Duration,
    exe: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        nodes: vec![5, 100],
        runs: 5,
        steady: Duration::from_secs(30),
        exe: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |what: &str| it.next().ok_or(format!("{a} needs {what}"));
        match a.as_str() {
            "--nodes" => {
                args.nodes = value("a list, e.g. 5,100")?
                    .split(',')
                    .map(|x| {
                        x.trim()
                            .parse()
                            .map_err(|_| format!("--nodes: {x:?} is not a number"))
                    })
                    .collect::<Result<_, _>>()?;
                if args.nodes.iter().any(|n| !(3..=100).contains(n)) {
                    return Err("--nodes: each size must be 3 to 100".into());
                }
            }
            "--runs" => {
                let v = value("a number")?;
                args.runs = v.parse().map_err(|_| format!("--runs: {v:?} is not a number"))?;
            }
            "--steady" => {
                let v = value("seconds")?;
                args.steady = Duration::from_secs(
                    v.parse()
                        .map_err(|_| format!("--steady: {v:?} is not a number"))?,
                );
            }
            "--exe" => args.exe = Some(PathBuf::from(value("the path of a muster binary")?)),
            "-h" | "--help" => {
                println!("liveness-bench [--nodes 5,100] [--runs 5] [--steady 30] [--exe PATH]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}; see --help")),
        }
    }
    Ok(args)
}

/// `/members` of the node at `addr`, as JSON, waiting for a version above `after`.
fn members(addr: SocketAddr, after: Option<u64>) -> serde_json::Value {
    let path = match after {
        Some(v) => format!("/members?after={v}"),
        None => "/members".to_string(),
    };
    let (_, body) = http_get_within(addr, &path, Duration::from_secs(15));
    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
}

/// The entry of member `name` in a `/members` answer.
fn entry<'a>(m: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    m["members"].as_array()?.iter().find(|e| e["name"] == name)
}

/// Watches every node in `watchers` until `done` holds for its `/members`; then does `act` (the
/// watchers are armed first) and returns each watcher's delay from `act` to its report (`None`
/// when it did not report within `limit`).
fn watch_all(
    addrs: &[SocketAddr],
    limit: Duration,
    done: impl Fn(&serde_json::Value) -> bool + Send + Sync + 'static,
    act: impl FnOnce(),
) -> Vec<Option<f64>> {
    let done = Arc::new(done);
    let armed = Arc::new(Barrier::new(addrs.len() + 1));
    let start: Arc<std::sync::OnceLock<Instant>> = Arc::default();
    let threads: Vec<_> = addrs
        .iter()
        .map(|&addr| {
            let (done, armed, start) = (done.clone(), armed.clone(), start.clone());
            std::thread::spawn(move || {
                let mut version = members(addr, None)["version"].as_u64();
                armed.wait();
                let began = *start.wait();
                while began.elapsed() < limit {
                    let m = members(addr, version);
                    if done(&m) {
                        return Some(began.elapsed().as_secs_f64());
                    }
                    version = m["version"].as_u64().or(version);
                }
                None
            })
        })
        .collect();
    armed.wait();
    let _ = start.set(Instant::now());
    act();
    threads.into_iter().map(|t| t.join().ok().flatten()).collect()
}

fn status_is(name: String, status: &'static str) -> impl Fn(&serde_json::Value) -> bool + Send + Sync {
    move |m| entry(m, &name).is_some_and(|e| e["status"] == status)
}

/// Seconds per observation, and how many never came.
#[derive(Default)]
struct Delays {
    seen: Vec<f64>,
    missed: usize,
}

impl Delays {
    fn add(&mut self, ds: Vec<Option<f64>>) {
        for d in ds {
            match d {
                Some(d) => self.seen.push(d),
                None => self.missed += 1,
            }
        }
    }

    fn cell(&mut self) -> String {
        self.seen.sort_by(f64::total_cmp);
        let s = &self.seen;
        let missed = if self.missed > 0 {
            format!(", {} missed", self.missed)
        } else {
            String::new()
        };
        format!(
            "{:.2} / {:.2} / {:.2}{missed}",
            percentile(s, 0.5),
            percentile(s, 0.99),
            s.last().copied().unwrap_or(0.0)
        )
    }
}

/// Sends `signal` to node `victim` once every other node watches it, and returns how long each
/// took to report it `status`.
fn signal_and_watch(
    c: &LocalCluster,
    addrs: &[SocketAddr],
    victim: usize,
    signal: i32,
    status: &'static str,
) -> Vec<Option<f64>> {
    let others: Vec<SocketAddr> = (0..addrs.len())
        .filter(|i| *i != victim)
        .map(|i| addrs[i])
        .collect();
    let name = c.nodes[victim].name.to_string();
    watch_all(&others, Duration::from_secs(10), status_is(name, status), || {
        c.signal(victim, signal).expect("signal the node");
    })
}

/// Waits until every node reports all `n` members up.
async fn wait_up_everywhere(c: &LocalCluster, addrs: &[SocketAddr], n: usize) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let all_up = addrs.iter().all(|&a| {
            let m = members(a, None);
            m["members"]
                .as_array()
                .is_some_and(|v| v.len() == n && v.iter().all(|e| e["status"] == "up"))
        });
        if all_up && c.nodes.len() == n {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(format!("N={n}: not every node saw every member up within 60 s"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct Row {
    n: usize,
    killed: Delays,
    stopped: Delays,
    resumed: Delays,
    metadata: Delays,
    cpu_percent: f64,
    messages_per_second: f64,
}

fn messages_sent(c: &LocalCluster) -> f64 {
    c.nodes
        .iter()
        .filter_map(|n| n.http)
        .map(|a| {
            sample(
                &http_get_within(a, "/metrics", Duration::from_secs(5)).1,
                "muster_peer_messages_sent_total",
            )
            .unwrap_or(0.0)
        })
        .sum()
}

fn cpu_total(c: &LocalCluster) -> f64 {
    c.nodes
        .iter()
        .filter_map(|n| n.child.as_ref().and_then(|ch| cpu_seconds(ch.id())))
        .sum()
}

async fn one_size(exe: &std::path::Path, n: usize, runs: usize, steady: Duration) -> Result<Row, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let layout = Layout {
        nodes: n,
        prefix: "live".into(),
        http: true,
        ..Layout::default()
    };
    let mut c = LocalCluster::create(exe, dir.path(), &layout).map_err(|e| e.to_string())?;
    for node in &c.nodes {
        let cfg = std::fs::read_to_string(&node.config).map_err(|e| e.to_string())?;
        std::fs::write(
            &node.config,
            cfg.replacen("[http]\n", "[http]\nstatus_detail = true\n", 1),
        )
        .map_err(|e| e.to_string())?;
    }
    c.start_all().map_err(|e| e.to_string())?;
    let all: Vec<usize> = (0..n).collect();
    c.wait_members(&all, n, Duration::from_secs(120)).await?;
    let addrs: Vec<SocketAddr> = c.nodes.iter().filter_map(|x| x.http).collect();
    wait_up_everywhere(&c, &addrs, n).await?;

    // Steady state.
    let (cpu0, msg0, t0) = (cpu_total(&c), messages_sent(&c), Instant::now());
    tokio::time::sleep(steady).await;
    let (cpu1, msg1, t) = (cpu_total(&c), messages_sent(&c), t0.elapsed().as_secs_f64());
    let cpu_percent = (cpu1 - cpu0) / t / n as f64 * 100.0;
    let messages_per_second = (msg1 - msg0) / t / n as f64;

    let mut row = Row {
        n,
        killed: Delays::default(),
        stopped: Delays::default(),
        resumed: Delays::default(),
        metadata: Delays::default(),
        cpu_percent,
        messages_per_second,
    };
    for run in 0..runs {
        // Metadata: node 0 sets a value; every other node shows it.
        let value = format!("r{run}");
        let owner = c.nodes[0].name.to_string();
        let (o, v) = (owner.clone(), value.clone());
        let shown =
            move |m: &serde_json::Value| entry(m, &o).is_some_and(|e| e["metadata"]["bench"] == v.as_str());
        row.metadata
            .add(watch_all(&addrs[1..], Duration::from_secs(10), shown, || {
                let out = ctl(&c, 0, &["set-metadata", "bench", &value]);
                assert!(out.status.success(), "set-metadata failed");
            }));

        // SIGKILL of a member: every other reports it unreachable; then it comes back.
        let victim = 1 + run % (n - 1);
        row.killed
            .add(signal_and_watch(&c, &addrs, victim, libc::SIGKILL, "unreachable"));
        let _ = c.kill(victim);
        c.start(victim).map_err(|e| e.to_string())?;
        wait_up_everywhere(&c, &addrs, n).await?;
        // Steady state again: the restarted node's detector judges from its warm-up and one
        // suspicion window on.
        let liveness = muster_node::LivenessConfig::default();
        tokio::time::sleep(liveness.warmup + liveness.suspect_after + Duration::from_secs(1)).await;

        // SIGSTOP of another member, then SIGCONT.
        let victim = 1 + (run + n / 2) % (n - 1);
        row.stopped
            .add(signal_and_watch(&c, &addrs, victim, libc::SIGSTOP, "unreachable"));
        row.resumed
            .add(signal_and_watch(&c, &addrs, victim, libc::SIGCONT, "up"));
        eprintln!("N={n}: run {} of {runs} done", run + 1);
    }
    c.stop_all(Duration::from_secs(5)).await;
    Ok(row)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("liveness-bench: {e}");
            std::process::exit(2);
        }
    };
    muster_tests::raise_open_files();
    let exe = match args
        .exe
        .clone()
        .map(Ok)
        .unwrap_or_else(muster_tests::dist_node_exe)
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("liveness-bench: {e}");
            std::process::exit(2);
        }
    };
    println!(
        "Liveness: seconds from the fault to each other member's report, p50 / p99 / max over every member and {} runs; steady state over {} s",
        args.runs,
        args.steady.as_secs()
    );
    println!();
    println!(
        "| N | unreachable after SIGKILL | unreachable after SIGSTOP | up after SIGCONT | metadata change seen | CPU per node (% of a core) | peer messages per node per s |"
    );
    println!("|---:|---|---|---|---|---:|---:|");
    for &n in &args.nodes {
        match one_size(&exe, n, args.runs, args.steady).await {
            Ok(mut r) => println!(
                "| {} | {} | {} | {} | {} | {:.2} | {:.0} |",
                r.n,
                r.killed.cell(),
                r.stopped.cell(),
                r.resumed.cell(),
                r.metadata.cell(),
                r.cpu_percent,
                r.messages_per_second
            ),
            Err(e) => {
                eprintln!("liveness-bench: N={n}: {e}");
                std::process::exit(1);
            }
        }
    }
}
