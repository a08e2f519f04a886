//! Formation benchmark: starts N real `muster` node processes at once on loopback, with any
//! backend (`--backend classic,dns,etcd,k8s,k8s-endpoints,consul,aws`; the benchmark starts the
//! servers: etcd, a Consul dev agent, bind9, the Kubernetes fake API server, moto with a fake IMDS
//! per node), and measures the time from the last process start until every node reports all N
//! members (by the nodes' own record of when their membership last changed, so the polling's
//! period adds nothing; the polled time is shown beside it), the peak RSS (VmHWM) and the private
//! RSS of the largest node (the seed, which every other node talks to), each node's PSS (its
//! private memory plus its share of what the node processes share, the binary above all: what
//! one more node costs), the peer messages per node, and what the secure channel costs: the CPU
//! time the nodes spent in its cryptography (Noise handshakes, frame encryption and decryption,
//! measured inside each node and read from `/metrics`) as a share of the CPU time the machine had
//! while the cluster formed (cores × formation time); with `--channel-cost`, also measured
//! directly by comparing runs of the same build with that cryptography made four times as
//! expensive. Both figures are conservative: they also count the handshakes of the benchmark's
//! own status calls.
//!
//! `cargo run --release -p muster-tests --bin formation-bench -- --nodes 3,5,10,25 --runs 5`
//! runs with tuned settings (100 ms interval, 250 ms probe timeout); `--defaults` with the
//! shipped settings, nothing tuned: `--defaults --nodes 5,25,100 --runs 10`. It also reports the
//! CPU seconds each node used (utime + stime from /proc), and raises its own open-file limit so
//! that 100 nodes' connections fit.
//!
//! The classic backend runs the node as deployed: `target/dist/muster`, the classic-only binary
//! of `cargo build --profile dist -p muster-cli`; the other backends run
//! `target/release/muster-test-node` (every backend compiled in); both are built first when run
//! under cargo, and `--exe PATH` runs another build instead. Backends whose listing is not
//! authoritative (dns, k8s-endpoints, aws) wait `stable_margin` with an unchanged view before
//! anyone forms: their rows also give the time after that wait. `aws` adds the instances'
//! addresses to `lo`, so it runs only in a private network namespace:
//! `unshare -rn bash -c 'ip link set lo up && target/release/formation-bench --backend aws'`. `--data-dir DIR` puts the nodes' data dirs there: all N
//! share one disk, so at N = 100 their fsyncs queue on one journal; `--data-dir /dev/shm` stands
//! for nodes that each have their own disk.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use muster_tests::LocalCluster;
use muster_tests::bench::{cpu_seconds, percentile, sample, unix_seconds};
use muster_tests::bench_rig::{self, Backend, Rig};

/// With `--channel-cost`, the comparison runs make the channel's cryptography this many times
/// as expensive; the extra formation time divided by `COST_FACTOR - 1` is what it costs once
/// (a large factor lifts the signal above the run-to-run spread of round-paced formation).
const COST_FACTOR: u32 = 4;

struct Args {
    backends: Vec<Backend>,
    nodes: Vec<usize>,
    runs: usize,
    channel_cost: bool,
    defaults: bool,
    /// The node binary, when given.
    exe: Option<PathBuf>,
    /// Where the nodes' configs and data dirs go (default: the system's temp dir).
    data_dir: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut backends = vec![Backend::Classic];
    let mut nodes = vec![3, 5, 10, 25];
    let mut runs = 5;
    let mut channel_cost = false;
    let mut defaults = false;
    let mut exe = None;
    let mut data_dir = None;
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
                if nodes.iter().any(|n| !(1..=100).contains(n)) {
                    return Err("--nodes: each size must be 1 to 100".into());
                }
            }
            "--runs" => {
                let v = it.next().ok_or("--runs needs a number")?;
                runs = v.parse().map_err(|_| format!("--runs: {v:?} is not a number"))?;
                if runs == 0 {
                    return Err("--runs must be at least 1".into());
                }
            }
            "--backend" => {
                let v = it.next().ok_or("--backend needs a list, e.g. classic,etcd,k8s")?;
                backends = v
                    .split(',')
                    .map(|b| {
                        Backend::parse(b.trim()).ok_or_else(|| {
                            let all: Vec<&str> = bench_rig::ALL.iter().map(|b| b.name()).collect();
                            format!("--backend: {b:?} is not one of {}", all.join(", "))
                        })
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--channel-cost" => channel_cost = true,
            "--data-dir" => data_dir = Some(PathBuf::from(it.next().ok_or("--data-dir needs a directory")?)),
            "--exe" => {
                exe = Some(PathBuf::from(
                    it.next().ok_or("--exe needs the path of a muster binary")?,
                ))
            }
            "--defaults" => defaults = true,
            "-h" | "--help" => {
                println!(
                    "formation-bench [--backend classic,...] [--nodes 3,5,10,25] [--runs 5] [--defaults] [--channel-cost] [--exe PATH] [--data-dir DIR]\n\n\
                     --backend: any of classic, dns, etcd, k8s, k8s-endpoints, consul, aws (default classic);\n\
                     the benchmark starts their servers; aws only inside unshare -rn (see the source)\n\
                     --defaults: the shipped [cluster_formation] settings (default: a 100 ms interval\n\
                     and a 250 ms probe timeout)\n\
                     --channel-cost: also run every size with the channel's cryptography made four\n\
                     times as expensive (MUSTER_BENCH_CHANNEL_WORK=4), interleaved with the normal\n\
                     runs; a third of the extra median formation time is what the cryptography costs\n\
                     --exe: the node binary to run (default: target/dist/muster, the classic-only\n\
                     node as `cargo build --profile dist -p muster-cli` builds it for deployment;\n\
                     e.g. target/release/muster-test-node, every backend, the release profile)\n\
                     --data-dir: where the nodes' data dirs go (default: the system temp dir). All N\n\
                     nodes share that one disk, so their fsyncs queue on one journal; /dev/shm\n\
                     (tmpfs, no fsync cost) stands for nodes that each have their own disk"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}; see --help")),
        }
    }
    Ok(Args {
        backends,
        nodes,
        runs,
        channel_cost,
        defaults,
        exe,
        data_dir,
    })
}

struct Run {
    /// From the last process start until every node had all N members, by the nodes' clocks.
    seconds: f64,
    /// The same, as the polling saw it (later by up to a sweep over the nodes).
    seen_seconds: f64,
    peak_rss_kib: u64,
    /// The largest private (anonymous) RSS of a node once formed.
    private_rss_kib: u64,
    /// Proportional set size after formation: the median node's, and the largest.
    pss_median_kib: u64,
    pss_max_kib: u64,
    /// CPU seconds (user + system) per node, mean.
    cpu_seconds: f64,
    messages_per_node: f64,
    /// CPU seconds all nodes together spent in the channel's cryptography.
    crypto_seconds: f64,
}

/// One run's inputs.
struct RunSpec<'a> {
    exe: &'a std::path::Path,
    n: usize,
    /// Which run of this size (names the cluster where the backend keeps records).
    run: usize,
    work: u32,
    defaults: bool,
    base: Option<&'a std::path::Path>,
}

async fn one_run(rig: &mut Rig, spec: &RunSpec<'_>) -> Result<Run, String> {
    let (exe, n, work) = (spec.exe, spec.n, spec.work);
    let dir = match spec.base {
        Some(b) => tempfile::Builder::new().prefix("formation-bench").tempdir_in(b),
        None => tempfile::tempdir(),
    }
    .map_err(|e| e.to_string())?;
    let formation = if spec.defaults {
        String::new()
    } else {
        muster_tests::Layout::default().formation
    };
    let setup = rig.run_setup(n, spec.run, &formation, spec.defaults).await;
    let layout = setup.layout;
    let mut c = LocalCluster::create(exe, dir.path(), &layout).map_err(|e| e.to_string())?;
    for (node, env) in c.nodes.iter_mut().zip(setup.env) {
        node.env
            .push(("MUSTER_BENCH_CHANNEL_WORK".into(), work.to_string()));
        node.env.extend(env);
    }
    c.start_all().map_err(|e| e.to_string())?;
    let last_start = c
        .nodes
        .iter()
        .filter_map(|x| x.started)
        .max()
        .unwrap_or_else(Instant::now);
    // The same instant on the wall clock, which the nodes' timestamps use.
    let last_start_unix = unix_seconds() - last_start.elapsed().as_secs_f64();
    let all: Vec<usize> = (0..n).collect();
    let times = match c.wait_members(&all, n, Duration::from_secs(60)).await {
        Ok(t) => t,
        Err(e) => {
            c.stop_all(Duration::from_secs(2)).await;
            let kept = dir.keep();
            return Err(format!("{e}\n  configs and logs kept in {}", kept.display()));
        }
    };
    let seen = times.into_iter().max().unwrap_or(last_start);
    let seen_seconds = seen.saturating_duration_since(last_start).as_secs_f64();
    let peak_rss_kib = (0..n).filter_map(|i| c.peak_rss_kib(i)).max().unwrap_or(0);
    let private_rss_kib = (0..n).filter_map(|i| c.private_rss_kib(i)).max().unwrap_or(0);
    let mut pss: Vec<u64> = (0..n).filter_map(|i| c.pss_kib(i)).collect();
    pss.sort_unstable();
    let pss_median_kib = pss.get(pss.len() / 2).copied().unwrap_or(0);
    let pss_max_kib = pss.last().copied().unwrap_or(0);
    let cpu: Vec<f64> = c
        .nodes
        .iter()
        .filter_map(|x| x.child.as_ref().and_then(|ch| cpu_seconds(ch.id())))
        .collect();
    let cpu_seconds = cpu.iter().sum::<f64>() / cpu.len().max(1) as f64;
    // One /metrics page per node. Its membership-changed timestamp is the node's own record of
    // when its readiness or member list last changed: once every node reports all N members,
    // that is when it got there, to the millisecond, whatever the polling's period and however
    // long one sweep over N nodes takes.
    let (mut messages, mut crypto_seconds, mut formed) = (0.0, 0.0, f64::MIN);
    for node in &c.nodes {
        let (_, page) = muster_tests::http_get(node.http.ok_or("http disabled")?, "/metrics");
        let required = |name: &str| sample(&page, name).ok_or(format!("a node did not report {name}"));
        formed = formed.max(required("muster_membership_changed_timestamp_seconds")?);
        messages += sample(&page, "muster_peer_messages_sent_total").unwrap_or(0.0);
        crypto_seconds += required("muster_peer_channel_crypto_seconds_total")?;
    }
    let seconds = (formed - last_start_unix).max(0.0);
    c.stop_all(Duration::from_secs(5)).await;
    if std::env::var_os("MUSTER_BENCH_KEEP").is_some() {
        eprintln!("N={n}: configs and logs kept in {}", dir.keep().display());
    }
    Ok(Run {
        seconds,
        seen_seconds,
        peak_rss_kib,
        private_rss_kib,
        pss_median_kib,
        pss_max_kib,
        cpu_seconds,
        messages_per_node: messages / n as f64,
        crypto_seconds,
    })
}

/// The node binary for `backend`: `--exe`, else the deployed classic-only build for classic and
/// the every-backend build for the others.
fn node_exe(args: &Args, backend: Backend) -> Result<PathBuf, String> {
    match args.exe.clone() {
        Some(e) if e.exists() => Ok(e),
        Some(e) => Err(format!("--exe {}: no such file", e.display())),
        None if backend == Backend::Classic => muster_tests::dist_node_exe(),
        None => muster_tests::all_backends_node_exe(),
    }
}

/// The `stable_margin` the nodes wait on a listing that is not authoritative.
fn stable_margin(args: &Args) -> Duration {
    if args.defaults {
        muster::FormationConfig::default().stable_margin
    } else {
        Duration::from_secs(1)
    }
}

/// Every run of one size: the normal runs, and with `--channel-cost` the costlier ones.
async fn measure(rig: &mut Rig, exe: &std::path::Path, n: usize, args: &Args) -> (Vec<Run>, Vec<f64>, bool) {
    let (mut runs, mut doubled, mut failed) = (Vec::new(), Vec::new(), false);
    let works: &[u32] = if args.channel_cost {
        &[1, COST_FACTOR]
    } else {
        &[1]
    };
    for r in 0..args.runs {
        for &work in works {
            let spec = RunSpec {
                exe,
                n,
                run: r * works.len() + work as usize,
                work,
                defaults: args.defaults,
                base: args.data_dir.as_deref(),
            };
            match one_run(rig, &spec).await {
                Ok(run) if work == 1 => runs.push(run),
                Ok(run) => doubled.push(run.seconds),
                Err(e) => {
                    eprintln!("N={n} run {} (channel work x{work}): {e}", r + 1);
                    failed = true;
                }
            }
        }
    }
    (runs, doubled, failed)
}

fn sorted(values: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v
}

/// One table row for `runs` of `n` nodes on `backend`.
fn print_row(backend: Backend, n: usize, runs: &[Run], margin: Option<&(Duration, String)>, cores: usize) {
    let secs = sorted(runs.iter().map(|r| r.seconds));
    let seen = sorted(runs.iter().map(|r| r.seen_seconds));
    let msgs = sorted(runs.iter().map(|r| r.messages_per_node));
    let cpu = sorted(runs.iter().map(|r| r.cpu_seconds));
    let rss = runs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0) as f64 / 1024.0;
    let private = runs.iter().map(|r| r.private_rss_kib).max().unwrap_or(0) as f64 / 1024.0;
    let pss_median = sorted(runs.iter().map(|r| r.pss_median_kib as f64));
    let pss_median = percentile(&pss_median, 0.5) / 1024.0;
    let pss_max = runs.iter().map(|r| r.pss_max_kib).max().unwrap_or(0) as f64 / 1024.0;
    // CPU time all nodes spent in the channel's cryptography, over the CPU time the machine
    // had during formation (cores × formation time), per run; the median.
    let crypto = sorted(runs.iter().map(|r| r.crypto_seconds * 1000.0 / n as f64));
    let share = sorted(
        runs.iter()
            .map(|r| r.crypto_seconds / (cores as f64 * r.seconds.max(1e-3))),
    );
    let median = percentile(&secs, 0.5);
    let after_margin = match margin {
        Some((m, label)) => format!("{label}; {:.3}", (median - m.as_secs_f64()).max(0.0)),
        None => "—".into(),
    };
    println!(
        "| {} | {n} | {} | {median:.3} | {after_margin} | {:.3} | {:.3} | {:.3} | {rss:.1} | {private:.1} | {pss_median:.1} / {pss_max:.1} | {:.3} | {:.0} | {:.2} | {:.1} % |",
        backend.name(),
        runs.len(),
        percentile(&secs, 0.9),
        secs[secs.len() - 1],
        percentile(&seen, 0.5),
        percentile(&cpu, 0.5),
        percentile(&msgs, 0.5),
        percentile(&crypto, 0.5),
        percentile(&share, 0.5) * 100.0
    );
}

fn print_header(args: &Args) {
    println!(
        "formation-bench: {} run(s) per size, loopback, {} settings, data dirs in {}",
        args.runs,
        if args.defaults {
            "the shipped"
        } else {
            "tuned (100 ms interval, 250 ms probe timeout, 1 s stable_margin)"
        },
        args.data_dir.clone().unwrap_or_else(std::env::temp_dir).display()
    );
    println!();
    println!(
        "| backend | nodes | runs | median (s) | stable_margin waited; median after it (s) | p90 (s) | max (s) | median as polled (s) | peak RSS, largest node (MiB) | private RSS, largest node, formed (MiB) | \
         PSS per node, formed: median / largest (MiB) | CPU per node (s) | \
         peer messages per node | channel crypto per node (ms CPU) | channel crypto share of the machine's CPU |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
}

/// Runs every size on one backend; the channel-cost comparisons it measured.
async fn bench_backend(
    backend: Backend,
    args: &Args,
    costs: &mut Vec<(usize, usize, f64, f64)>,
) -> Result<bool, String> {
    if backend.needs_private_network() && muster_test_support::hosts::interfaces() != ["lo"] {
        return Err(format!(
            "--backend {} adds addresses to lo: run it in a private network namespace, \
             unshare -rn bash -c 'ip link set lo up && <this command>'",
            backend.name()
        ));
    }
    let exe = node_exe(args, backend)?;
    eprintln!("{}: node binary {}", backend.name(), exe.display());
    let mut rig = Rig::start(backend).await;
    let margin = backend.fixed_wait(stable_margin(args), args.defaults);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut failed = false;
    for &n in &args.nodes {
        let (runs, doubled, f) = measure(&mut rig, &exe, n, args).await;
        failed |= f;
        if runs.is_empty() {
            continue;
        }
        print_row(backend, n, &runs, margin.as_ref(), cores);
        if !doubled.is_empty() {
            let secs = sorted(runs.iter().map(|r| r.seconds));
            let doubled = sorted(doubled.into_iter());
            costs.push((
                n,
                doubled.len(),
                percentile(&secs, 0.5),
                percentile(&doubled, 0.5),
            ));
        }
    }
    Ok(failed)
}

fn print_costs(costs: &[(usize, usize, f64, f64)]) {
    println!();
    println!(
        "Channel cost, measured: the same build with its cryptography made {COST_FACTOR} times as \
         expensive (interleaved runs); the extra median formation time over {} is what the \
         cryptography costs.",
        COST_FACTOR - 1
    );
    println!();
    println!(
        "| nodes | runs | median (s) | median, crypto x{COST_FACTOR} (s) | channel cost (s) | channel cost (% of formation) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for (n, runs, normal, doubled) in costs {
        let cost = (doubled - normal) / f64::from(COST_FACTOR - 1);
        println!(
            "| {n} | {runs} | {normal:.3} | {doubled:.3} | {cost:+.3} | {:+.1} % |",
            cost / normal.max(1e-3) * 100.0
        );
    }
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
    muster_tests::raise_open_files();
    print_header(&args);
    let mut failed = false;
    let mut costs = Vec::new();
    for &backend in &args.backends {
        match bench_backend(backend, &args, &mut costs).await {
            Ok(f) => failed |= f,
            Err(e) => {
                eprintln!("formation-bench: {e}");
                failed = true;
            }
        }
    }
    if !costs.is_empty() {
        print_costs(&costs);
    }
    if failed {
        std::process::exit(1);
    }
}
