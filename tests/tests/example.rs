//! The embedding example (`examples/hello-cluster`) as three processes: they form one cluster
//! and print each other joining; one leaves (Ctrl-C) and the others print it left; one is killed
//! and the last prints it unreachable. Also: the example builds outside the workspace without
//! the command's dependencies.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use muster::NodeName;
use muster_cli::launch::Ports;

const WAIT: Duration = Duration::from_secs(60);

struct Proc {
    child: Child,
    out: PathBuf,
}

impl Proc {
    fn output(&self) -> String {
        let mut s = String::new();
        let _ = std::fs::File::open(&self.out).and_then(|mut f| f.read_to_string(&mut s));
        s
    }

    /// Waits until the output has a line containing every part of `parts`.
    fn wait_for(&self, parts: &[&str]) {
        let started = Instant::now();
        while started.elapsed() < WAIT {
            if self.output().lines().any(|l| parts.iter().all(|p| l.contains(p))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "no line with {parts:?} within {WAIT:?}; output:\n{}",
            self.output()
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, i: usize, name: &NodeName, cookie: &Path, all: &[NodeName]) -> Proc {
    let out = dir.join(format!("out{i}"));
    let err = dir.join(format!("err{i}"));
    let child = Command::new(env!("CARGO_BIN_EXE_hello-cluster"))
        .arg(name.to_string())
        .arg(dir.join(format!("data{i}")))
        .arg(cookie)
        .args(all.iter().map(|n| n.to_string()))
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(err).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .expect("the example starts");
    Proc { child, out }
}

#[test]
fn three_example_processes_form_print_events_and_see_one_leave_and_one_die() {
    let dir = tempfile::tempdir().unwrap();
    let cookie = dir.path().join("cookie");
    muster_node::Cookie::generate(&cookie).unwrap();
    let mut ports = Ports::new();
    let names: Vec<NodeName> = (0..3)
        .map(|i| {
            format!("hello{i}@127.0.0.1:{}", ports.take().unwrap())
                .parse()
                .unwrap()
        })
        .collect();
    let procs: Vec<Proc> = (0..3)
        .map(|i| start(dir.path(), i, &names[i], &cookie, &names))
        .collect();
    for p in &procs {
        p.wait_for(&["formed:"]);
    }
    // Every process has seen every other join before one leaves (a member that never saw a
    // node join has nothing to report when it leaves).
    for p in &procs {
        for other in &names {
            p.wait_for(&["joined", &other.to_string()]);
        }
    }
    // hello2 leaves with Ctrl-C: it says so, and the others see it leave (not forgotten).
    let pid = procs[2].child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    procs[2].wait_for(&["left the cluster"]);
    procs[0].wait_for(&["left", &names[2].to_string()]);
    procs[1].wait_for(&["left", &names[2].to_string()]);
    // hello1 is killed: hello0 reports it unreachable, with its metadata.
    let mut procs = procs;
    procs[1].child.kill().unwrap();
    procs[1].child.wait().unwrap();
    procs[0].wait_for(&["unreachable", &names[1].to_string(), "pid="]);
}

/// A program outside the workspace that depends on the runtime by path builds without the
/// command line's dependencies.
#[test]
fn the_example_depends_on_no_cli_http_or_log_subscriber_crates() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello-cluster/Cargo.toml");
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "--locked",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .expect("cargo tree runs");
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && tree.contains("muster-node"),
        "cargo tree failed (after a dependency change, refresh the example's lock file: cp \
         Cargo.lock examples/hello-cluster/ && cargo tree --offline --manifest-path \
         examples/hello-cluster/Cargo.toml): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for unwanted in ["clap ", "axum ", "prometheus-client ", "tracing-subscriber "] {
        assert!(
            !tree.contains(unwanted),
            "{unwanted}is in the example's dependencies:\n{tree}"
        );
    }
}
