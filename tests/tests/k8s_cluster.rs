//! End to end on "Kubernetes": real `muster` processes as the pods of a StatefulSet, their pod
//! IPs 127.0.20.x, the fake API server (`muster_test_support::k8s`) serving the StatefulSet, the pods,
//! the EndpointSlices, the Lease and the fencing ConfigMap. Peers are resolved through the API
//! (pod name → pod IP), as in a cluster.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use muster_cli::launch::{Layout, LocalCluster};
use muster_test_support::eventually;
use muster_test_support::k8s::{FakeApi, StatefulSetPods};
use muster_tests::{cluster_ids, cluster_status, ctl, local_cluster_of, node_exe, text};

const NS: &str = "prod";
const TOKEN: &str = "e2e-token";
const FORM: Duration = Duration::from_secs(30);

/// The pods of these tests.
const PODS: StatefulSetPods = StatefulSetPods {
    ns: NS,
    ip_prefix: "127.0.20",
};

/// `pods` pod processes (all created, none started), in `mode`, against `fake`.
fn pods(fake: &FakeApi, pods: usize, mode: &str, extra: &str) -> (tempfile::TempDir, LocalCluster) {
    pods_with(&fake.kubeconfig(TOKEN), pods, mode, extra)
}

fn pods_with(
    kubeconfig: &std::path::Path,
    pods: usize,
    mode: &str,
    extra: &str,
) -> (tempfile::TempDir, LocalCluster) {
    let layout = Layout {
        extra: extra.into(),
        ..PODS.layout(kubeconfig, pods, mode)
    };
    local_cluster_of(&node_exe!(), &layout)
}

/// The API objects of a StatefulSet with `replicas` running pods.
fn scale(fake: &FakeApi, replicas: usize) {
    PODS.scale(fake, replicas);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pods_started_at_once_form_one_cluster_ten_times_in_each_mode() {
    for mode in ["statefulset", "endpoints"] {
        for round in 1..=10 {
            let fake = FakeApi::start(TOKEN).await;
            scale(&fake, 3);
            let (_dir, mut c) = pods(&fake, 3, mode, "");
            c.start_all().unwrap();
            if let Err(e) = c.wait_members(&[0, 1, 2], 3, FORM).await {
                panic!("{mode} round {round}: {e}\n{}", c.log_tail(0, 30));
            }
            assert_eq!(
                cluster_ids(&c, &[0, 1, 2]).len(),
                1,
                "{mode} round {round}: one cluster"
            );
            let record = fake
                .get("configmaps", NS, "muster-muster-cluster")
                .expect("the cluster id is recorded");
            assert_eq!(
                BTreeSet::from([record["data"]["cluster_id"].as_str().unwrap().to_string()]),
                cluster_ids(&c, &[0]),
                "{mode} round {round}: the recorded id is the cluster's"
            );
            // Each pod says how it ended, as an Event on itself: one formed, the others joined.
            let reasons = |fake: &FakeApi| {
                let mut r: Vec<String> = fake
                    .list("events", NS)
                    .iter()
                    .map(|e| e["reason"].as_str().unwrap_or("").to_string())
                    .collect();
                r.sort();
                r
            };
            eventually(Duration::from_secs(5), async || reasons(&fake).len() >= 3).await;
            assert_eq!(
                reasons(&fake),
                ["Formed", "Joined", "Joined"],
                "{mode} round {round}"
            );
            c.stop_all(Duration::from_secs(5)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_up_joins_and_scaling_down_forgets_the_removed_ordinals() {
    let fake = FakeApi::start(TOKEN).await;
    scale(&fake, 3);
    let cleanup = "\n[cluster_formation.node_cleanup]\ninterval = \"1s\"\nonly_log_warning = false\nconsecutive_absences = 2\n";
    let (_dir, mut c) = pods(&fake, 5, "statefulset", cleanup);
    for i in 0..3 {
        c.start(i).unwrap();
    }
    c.wait_members(&[0, 1, 2], 3, FORM).await.unwrap();
    scale(&fake, 5);
    c.start(3).unwrap();
    c.start(4).unwrap();
    c.wait_members(&[0, 1, 2, 3, 4], 5, FORM).await.unwrap();
    assert_eq!(cluster_ids(&c, &[0, 1, 2, 3, 4]).len(), 1);
    // Scale back to 3: the StatefulSet says 3, pods 3 and 4 are gone.
    fake.statefulset(NS, "muster", 3, 0);
    c.stop(3, Duration::from_secs(5)).await.unwrap();
    c.stop(4, Duration::from_secs(5)).await.unwrap();
    fake.delete("pods", NS, "muster-3");
    fake.delete("pods", NS, "muster-4");
    c.wait_members(&[0, 1, 2], 3, FORM)
        .await
        .unwrap_or_else(|e| panic!("ordinals 3 and 4 are forgotten: {e}\n{}", c.log_tail(0, 30)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_0_with_a_lost_volume_rejoins_and_never_forms_a_second_cluster() {
    let fake = FakeApi::start(TOKEN).await;
    scale(&fake, 3);
    let (_dir, mut c) = pods(&fake, 3, "statefulset", "");
    c.start_all().unwrap();
    c.wait_members(&[0, 1, 2], 3, FORM).await.unwrap();
    let before = cluster_ids(&c, &[0, 1, 2]);
    c.kill(0).unwrap();
    std::fs::remove_dir_all(&c.nodes[0].data_dir).unwrap();
    // Restarted with a new pod IP, as a rescheduled pod would be.
    fake.pod(NS, "muster-0", "127.0.20.1");
    c.start(0).unwrap();
    c.wait_members(&[0, 1, 2], 3, FORM)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tail(0, 30)));
    assert_eq!(
        cluster_ids(&c, &[0, 1, 2]),
        before,
        "the wiped pod-0 rejoined the same cluster"
    );
    // With every other member down, a wiped pod-0 refuses instead of forming.
    c.stop_all(Duration::from_secs(5)).await;
    std::fs::remove_dir_all(&c.nodes[0].data_dir).unwrap();
    c.start(0).unwrap();
    let hint = "kubectl -n prod delete configmap muster-muster-cluster";
    // Only this start's lines: the earlier rejoin may have waited on the record too.
    let refused = eventually(Duration::from_secs(20), async || {
        c.log_since_start(0).contains(hint)
    })
    .await;
    assert!(
        refused.is_some(),
        "pod-0 names the command that re-bootstraps:\n{}",
        c.log_tail(0, 30)
    );
    let out = ctl(&c, 0, &["cluster-status", "--json"]);
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "pod-0 keeps running and answering after it refused: {stderr}\n{}",
        c.log_tail(0, 40)
    );
    let s: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(s["cluster"].is_null(), "no second cluster: {s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_lease_holder_delays_formation_until_the_lease_expires() {
    use std::io::BufRead;
    let fake = FakeApi::start(TOKEN).await;
    scale(&fake, 3);
    // Another process takes the Lease and renews it, then is SIGKILLed.
    let mut holder = std::process::Command::new(env!("CARGO_BIN_EXE_k8s-lock-holder"))
        .arg(fake.kubeconfig(TOKEN))
        .arg(NS)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(holder.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "locked");
    tokio::time::sleep(Duration::from_millis(1500)).await; // renewed at least once
    holder.kill().unwrap(); // SIGKILL: no release
    holder.wait().unwrap();
    let killed = Instant::now();
    let (_dir, mut c) = pods(&fake, 3, "statefulset", "");
    c.start_all().unwrap();
    c.wait_members(&[0, 1, 2], 3, FORM).await.unwrap();
    let waited = killed.elapsed();
    assert!(
        waited >= Duration::from_secs(3),
        "not before the Lease expired: {waited:?}"
    );
    assert_eq!(cluster_ids(&c, &[0, 1, 2]).len(), 1);
    let lease = fake.get("leases", NS, "muster-muster-formation").unwrap();
    assert!(
        lease["spec"]["leaseTransitions"].as_i64().unwrap() >= 1,
        "taken over: {lease}"
    );
    assert!(
        !lease["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or("")
            .starts_with("muster@muster-9"),
        "{lease}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_outage_during_formation_ends_in_one_cluster() {
    let fake = FakeApi::start(TOKEN).await;
    scale(&fake, 3);
    let (_dir, mut c) = pods(&fake, 3, "statefulset", "");
    fake.set_down(true);
    c.start_all().unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    for i in 0..3 {
        let s = cluster_status(&c, i);
        assert!(
            s["cluster"].is_null(),
            "nothing formed while the API was down: {s}"
        );
    }
    fake.set_down(false);
    c.wait_members(&[0, 1, 2], 3, FORM).await.unwrap();
    assert_eq!(cluster_ids(&c, &[0, 1, 2]).len(), 1);
}

/// A rotating service-account token: the file changes, the API server accepts both tokens for a
/// while (as Kubernetes does until the old one expires), then only the new one. kube re-reads
/// the file within a minute, so the pods never see a 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_is_picked_up_without_an_error() {
    let fake = FakeApi::start(TOKEN).await;
    scale(&fake, 3);
    let token_file = fake.dir().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let kubeconfig = fake.kubeconfig_with_token_file(&token_file);
    let cleanup = "\n[cluster_formation.node_cleanup]\ninterval = \"1s\"\n";
    let (_dir, mut c) = pods_with(&kubeconfig, 4, "statefulset", cleanup);
    for i in 0..3 {
        c.start(i).unwrap();
    }
    c.wait_members(&[0, 1, 2], 3, FORM).await.unwrap();
    std::fs::write(&token_file, "rotated-token").unwrap();
    fake.rotate_token("rotated-token", true);
    // kube re-reads a token file that is 50 s old; the old token stays valid until then.
    tokio::time::sleep(Duration::from_secs(56)).await;
    fake.rotate_token("rotated-token", false);
    scale(&fake, 4);
    c.start(3).unwrap();
    c.wait_members(&[0, 1, 2, 3], 4, FORM).await.unwrap_or_else(|e| {
        panic!(
            "the new pod joins with the rotated token: {e}\n{}",
            c.log_tail(3, 20)
        )
    });
    for i in 0..4 {
        let log = std::fs::read_to_string(&c.nodes[i].log).unwrap();
        assert!(!log.contains("rejected the token"), "pod {i} saw a 401:\n{log}");
    }
}
