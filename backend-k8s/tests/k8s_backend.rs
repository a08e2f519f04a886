//! The Kubernetes backend against the fake API server (`muster_test_support::k8s`): both modes, every
//! setting, the Lease lock, ConfigMap fencing, peer resolution, and errors that say what to do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use muster_backend_k8s::K8sBackend;
use muster_discovery_core::testing::conformance;
use muster_discovery_core::{
    ClaimError, ClusterId, Discovery, ErrorKind, FormationConfig, LockWait, Milestone, NodeName,
};
use muster_test_support::child;
use muster_test_support::k8s::FakeApi;
use serde_json::json;

const NS: &str = "prod";
const TOKEN: &str = "token-one";

fn pod_name(i: u32) -> NodeName {
    format!("muster@muster-{i}.muster-nodes.{NS}.svc.cluster.local:4370")
        .parse()
        .unwrap()
}

/// A backend for `local` against the fake, with extra `[cluster_formation.k8s]` lines.
fn backend_at(kubeconfig: &std::path::Path, local: &NodeName, extra: &str) -> K8sBackend {
    let text = format!(
        "[cluster_formation]\npeer_discovery_backend = \"k8s\"\n[cluster_formation.k8s]\napi = \"kubeconfig\"\n\
         kubeconfig = \"{}\"\nnamespace = \"{NS}\"\nrequest_timeout = \"1s\"\nlease_duration = \"3s\"\n{extra}",
        kubeconfig.display()
    );
    let cfg = FormationConfig::from_toml(&text).unwrap();
    K8sBackend::from_config(&cfg, local).unwrap()
}

fn backend(fake: &FakeApi, local: &NodeName, extra: &str) -> K8sBackend {
    backend_at(&fake.kubeconfig(TOKEN), local, extra)
}

async fn cluster(replicas: i32) -> FakeApi {
    let fake = FakeApi::start(TOKEN).await;
    fake.statefulset(NS, "muster", replicas, 0);
    for i in 0..replicas {
        fake.pod(NS, &format!("muster-{i}"), &format!("127.0.20.{}", i + 1));
    }
    fake
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_mode_lists_every_ordinal_with_the_lowest_as_seed() {
    let fake = cluster(3).await;
    let b = backend(&fake, &pod_name(1), "");
    let listed = b.list().await.unwrap();
    assert_eq!(listed.nodes, vec![pod_name(0), pod_name(1), pod_name(2)]);
    assert!(listed.authoritative && b.full_membership());
    assert_eq!(listed.preferred_seed, Some(pod_name(0)));
    // Scaled to 5, renumbered from 2: the list follows the StatefulSet.
    fake.statefulset(NS, "muster", 5, 2);
    let listed = b.list().await.unwrap();
    assert_eq!(listed.nodes, (2..7).map(pod_name).collect::<Vec<_>>());
    assert_eq!(listed.preferred_seed, Some(pod_name(2)));
    // `replicas` in config: no StatefulSet read at all (a Role without `statefulsets get`).
    fake.forbid("get", "statefulsets", true);
    let e = b.list().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied);
    let text = e.to_string();
    assert!(
        text.contains("cannot get statefulsets") && text.contains("apiGroups: [\"apps\"]"),
        "the error prints the Role rule to add: {text}"
    );
    let fixed = backend(&fake, &pod_name(1), "replicas = 2\nordinals_start = 1");
    assert_eq!(fixed.list().await.unwrap().nodes, vec![pod_name(1), pod_name(2)]);
    // A cluster domain and an explicit StatefulSet/Service.
    let named = backend(
        &fake,
        &pod_name(0),
        "replicas = 1\nstatefulset = \"other\"\nservice = \"svc\"\ncluster_domain = \"corp.example\"",
    );
    let n: NodeName = format!("muster@other-0.svc.{NS}.svc.corp.example:4370")
        .parse()
        .unwrap();
    assert_eq!(named.list().await.unwrap().nodes, vec![n]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubeconfig_context_picks_the_cluster_and_skipping_tls_verification_is_refused() {
    let fake = cluster(1).await;
    let path = fake.dir().join("two-contexts");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: dead\nclusters:\n- name: fake\n  cluster:\n    server: {}\n    \
             certificate-authority: {}\n- name: dead\n  cluster:\n    server: https://127.0.0.1:9\ncontexts:\n- name: fake\n  \
             context:\n    cluster: fake\n    user: u\n- name: dead\n  context:\n    cluster: dead\n    user: u\nusers:\n- name: u\n  \
             user:\n    token: {TOKEN}\n",
            fake.url,
            fake.ca.display()
        ),
    )
    .unwrap();
    let current = backend_at(&path, &pod_name(0), "");
    assert!(
        current.list().await.unwrap_err().is_temporary(),
        "the current context is the dead one"
    );
    let chosen = backend_at(&path, &pod_name(0), "context = \"fake\"");
    assert_eq!(chosen.list().await.unwrap().nodes, vec![pod_name(0)]);
    let insecure = fake.dir().join("insecure");
    let text = std::fs::read_to_string(fake.kubeconfig(TOKEN)).unwrap().replace(
        "    certificate-authority:",
        "    insecure-skip-tls-verify: true\n    certificate-authority:",
    );
    std::fs::write(&insecure, text).unwrap();
    let e = backend_at(&insecure, &pod_name(0), "").list().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Misconfigured);
    assert!(
        e.to_string()
            .contains("refuses to talk to an API server it cannot verify"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_statefulset_is_misconfigured_and_a_bad_token_is_named() {
    let fake = FakeApi::start(TOKEN).await;
    let b = backend(&fake, &pod_name(0), "");
    let e = b.list().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Misconfigured, "{e}");
    assert!(
        e.to_string().contains("StatefulSet prod/muster does not exist"),
        "{e}"
    );
    let wrong = backend_at(&fake.kubeconfig("not-the-token"), &pod_name(0), "");
    let e = wrong.list().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied);
    assert!(e.to_string().contains("rejected the token"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_slowness_and_overload_are_temporary_errors_never_an_empty_list() {
    let fake = cluster(3).await;
    let b = backend(&fake, &pod_name(0), "");
    assert_eq!(b.list().await.unwrap().nodes.len(), 3);
    for code in [503, 429] {
        fake.fail_with(Some(code));
        let e = b.list().await.unwrap_err();
        assert!(
            e.is_temporary() && e.kind == ErrorKind::Unavailable,
            "{code}: {e}"
        );
    }
    fake.fail_with(None);
    // Slower than request_timeout (1 s): bounded, not hanging (kube has no read timeout).
    fake.set_latency(Duration::from_secs(3));
    let t = Instant::now();
    let e = b.list().await.unwrap_err();
    assert!(e.is_temporary(), "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "bounded by request_timeout: {:?}",
        t.elapsed()
    );
    fake.set_latency(Duration::ZERO);
    fake.set_down(true);
    let down = backend(&fake, &pod_name(0), "");
    let e = down.list().await.unwrap_err();
    assert!(e.is_temporary(), "{e}");
    fake.set_down(false);
    assert_eq!(b.list().await.unwrap().nodes.len(), 3, "back when the server is");
}

fn slice(name: &str, endpoints: serde_json::Value) -> serde_json::Value {
    json!({"metadata": {"name": name, "labels": {"kubernetes.io/service-name": "muster-nodes"}},
           "addressType": "IPv4", "endpoints": endpoints})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_mode_merges_slices_keeps_not_ready_and_drops_terminating() {
    let fake = FakeApi::start(TOKEN).await;
    // ready is always true with publishNotReadyAddresses; serving says the truth.
    fake.put(
        "endpointslices",
        NS,
        slice(
            "muster-nodes-a",
            json!([
                {"addresses": ["127.0.20.1"], "hostname": "muster-0", "conditions": {"ready": true, "serving": true}},
                {"addresses": ["127.0.20.2"], "hostname": "muster-1", "conditions": {"ready": true, "serving": false}},
                {"addresses": ["127.0.20.9"], "hostname": "muster-9", "conditions": {"ready": true, "terminating": true}}
            ]),
        ),
    );
    // The same endpoint in a second slice, and one more.
    fake.put(
        "endpointslices",
        NS,
        slice(
            "muster-nodes-b",
            json!([
                {"addresses": ["127.0.20.2"], "hostname": "muster-1"},
                {"addresses": ["127.0.20.3"], "hostname": "muster-2"}
            ]),
        ),
    );
    let other = json!({"metadata": {"name": "x", "labels": {"kubernetes.io/service-name": "other"}},
                       "addressType": "IPv4", "endpoints": [{"addresses": ["10.9.9.9"]}]});
    fake.put("endpointslices", NS, other);
    let local: NodeName = "muster@127.0.20.1:4370".parse().unwrap();
    let b = backend(&fake, &local, "mode = \"endpoints\"\nservice = \"muster-nodes\"");
    let listed = b.list().await.unwrap();
    let ips: Vec<String> = listed.nodes.iter().map(|n| n.to_string()).collect();
    assert_eq!(
        ips,
        [
            "muster@127.0.20.1:4370",
            "muster@127.0.20.2:4370",
            "muster@127.0.20.3:4370"
        ]
    );
    assert!(!listed.authoritative && !b.full_membership());
    assert_eq!(listed.preferred_seed, None);
    let by_name = backend(
        &fake,
        &local,
        &format!(
            "mode = \"endpoints\"\nservice = \"muster-nodes\"\naddress_type = \"hostname\"\n\
             hostname_suffix = \".muster-nodes.{NS}.svc.cluster.local\""
        ),
    );
    assert_eq!(
        by_name.list().await.unwrap().nodes,
        vec![pod_name(0), pod_name(1), pod_name(2)]
    );
    assert_eq!(
        by_name.list().await.unwrap().expected_size,
        None,
        "no StatefulSet named: no size"
    );
    // A pod of a readable StatefulSet: its replicas are the expected size.
    fake.statefulset(NS, "muster", 5, 0);
    let in_sts = backend(&fake, &pod_name(0), "mode = \"endpoints\"");
    assert_eq!(in_sts.list().await.unwrap().expected_size, Some(5));
    // A Role without statefulsets get, from the first listing on: the configured hint alone.
    fake.forbid("get", "statefulsets", true);
    let unreadable = backend(&fake, &pod_name(1), "mode = \"endpoints\"");
    assert_eq!(
        unreadable.list().await.unwrap().expected_size,
        None,
        "unreadable: the configured hint alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_mode_waits_rather_than_lose_the_statefulsets_replicas() {
    let fake = cluster(5).await;
    fake.endpoint_controller(NS, "muster-nodes", "app=muster", true);
    let b = backend(&fake, &pod_name(0), "mode = \"endpoints\"");
    assert_eq!(b.list().await.unwrap().expected_size, Some(5));
    // The slices answer, the StatefulSet read fails: an error naming it, never a listing that
    // falls back to the configured hint.
    fake.fail_resource_with("statefulsets", Some(503));
    let e = b.list().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert!(e.is_temporary(), "{e}");
    let text = e.to_string();
    assert!(
        text.contains(&format!("StatefulSet {NS}/muster")) && text.contains("503"),
        "names the StatefulSet and the cause: {text}"
    );
    // The same on a node that has not read it yet.
    let fresh = backend(&fake, &pod_name(1), "mode = \"endpoints\"");
    assert_eq!(fresh.list().await.unwrap_err().kind, ErrorKind::Unavailable);
    fake.fail_resource_with("statefulsets", None);
    assert_eq!(b.list().await.unwrap().expected_size, Some(5));
    // Read once, then forbidden: an error with the Role rule, not the hint alone.
    fake.forbid("get", "statefulsets", true);
    let e = b.list().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied);
    assert!(e.to_string().contains("cannot get statefulsets"), "{e}");
    // Named in the config: forbidden or missing is an error from the first listing on.
    let named = backend(
        &fake,
        &pod_name(2),
        "mode = \"endpoints\"\nstatefulset = \"muster\"",
    );
    assert_eq!(named.list().await.unwrap_err().kind, ErrorKind::PermissionDenied);
    fake.forbid("get", "statefulsets", false);
    let missing = backend(
        &fake,
        &pod_name(2),
        "mode = \"endpoints\"\nstatefulset = \"gone\"",
    );
    let e = missing.list().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Misconfigured);
    assert!(e.to_string().contains(&format!("StatefulSet {NS}/gone")), "{e}");
    // Taken from a pod name that belongs to no StatefulSet: no size, the hint alone.
    let web: NodeName = format!("muster@web-0.muster-nodes.{NS}.svc.cluster.local:4370")
        .parse()
        .unwrap();
    let loose = backend(&fake, &web, "mode = \"endpoints\"");
    assert_eq!(loose.list().await.unwrap().expected_size, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_mode_follows_the_slice_controller_as_pods_change() {
    let fake = cluster(3).await;
    fake.endpoint_controller(NS, "muster-nodes", "app=muster", true);
    let slices = fake.list("endpointslices", NS);
    assert_eq!(
        slices.len(),
        2,
        "three pods, two per slice: the client must merge"
    );
    let b = backend(
        &fake,
        &pod_name(0),
        &format!(
            "mode = \"endpoints\"\naddress_type = \"hostname\"\nhostname_suffix = \".muster-nodes.{NS}.svc.cluster.local\"\nreplicas = 3"
        ),
    );
    assert_eq!(
        b.list().await.unwrap().nodes,
        vec![pod_name(0), pod_name(1), pod_name(2)]
    );
    // Ready or not, a pod is a candidate; a terminating one is not; a new pod appears.
    fake.set_pod_ready(NS, "muster-1", true);
    fake.set_pod_terminating(NS, "muster-2");
    fake.pod(NS, "muster-3", "127.0.20.4");
    assert_eq!(
        b.list().await.unwrap().nodes,
        vec![pod_name(0), pod_name(1), pod_name(3)]
    );
    fake.delete("pods", NS, "muster-3");
    assert_eq!(b.list().await.unwrap().nodes, vec![pod_name(0), pod_name(1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_fall_back_to_the_endpoints_api_only_when_slices_are_not_served() {
    let fake = FakeApi::start(TOKEN).await;
    fake.put(
        "endpoints",
        NS,
        json!({"metadata": {"name": "muster-nodes"}, "subsets": [{
            "addresses": [{"ip": "127.0.20.1"}], "notReadyAddresses": [{"ip": "127.0.20.2"}]}]}),
    );
    let local: NodeName = "muster@127.0.20.1:4370".parse().unwrap();
    let b = backend(&fake, &local, "mode = \"endpoints\"\nservice = \"muster-nodes\"");
    // Slices are served (an empty list): no fallback.
    assert!(b.list().await.unwrap().nodes.is_empty());
    assert!(!fake.requests().iter().any(|r| r.contains("/endpoints/")));
    // A 403 on slices is reported, not papered over with the legacy API.
    fake.forbid("list", "endpointslices", true);
    let e = b.list().await.unwrap_err();
    assert!(e.to_string().contains("cannot list endpointslices"), "{e}");
    assert!(!fake.requests().iter().any(|r| r.contains("/endpoints/")));
    // Not served at all (404): the Endpoints API, ready and not-ready addresses.
    fake.forbid("list", "endpointslices", false);
    fake.unserve("endpointslices");
    let ips: Vec<String> = b
        .list()
        .await
        .unwrap()
        .nodes
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(ips, ["muster@127.0.20.1:4370", "muster@127.0.20.2:4370"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_exclusive_expires_when_its_holder_dies_and_is_lost_when_taken() {
    let fake = cluster(3).await;
    let (a, b) = (backend(&fake, &pod_name(0), ""), backend(&fake, &pod_name(1), ""));
    let (la, lb) = (a.formation_lock().unwrap(), b.formation_lock().unwrap());
    let held = la
        .lock(&pod_name(0), &LockWait::within(Duration::from_secs(5)))
        .await
        .unwrap();
    let lease = fake
        .get("leases", NS, "muster-muster-formation")
        .expect("the Lease exists");
    let holder = lease["spec"]["holderIdentity"].as_str().unwrap().to_string();
    assert!(holder.starts_with(&format!("{}#", pod_name(0))), "{holder}");
    assert!(
        lb.lock(&pod_name(1), &LockWait::within(Duration::from_millis(500)))
            .await
            .is_err()
    );
    // Renewed while held: the record changes every third of the 3 s duration.
    let rv = lease["metadata"]["resourceVersion"].clone();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let renewed = fake.get("leases", NS, "muster-muster-formation").unwrap();
    assert_ne!(renewed["metadata"]["resourceVersion"], rv, "renewed");
    // The holder dies (dropped without release): b takes it once the record stood still 3 s.
    drop(held);
    let t = Instant::now();
    let taken = lb
        .lock(&pod_name(1), &LockWait::within(Duration::from_secs(10)))
        .await
        .unwrap();
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(8),
        "{waited:?}"
    );
    let lease = fake.get("leases", NS, "muster-muster-formation").unwrap();
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    // Someone overwrites the Lease: the guard is lost within a renewal.
    let mut stolen = lease.clone();
    stolen["spec"]["holderIdentity"] = json!("someone-else");
    fake.put("leases", NS, stolen);
    tokio::time::timeout(Duration::from_secs(3), taken.lost())
        .await
        .expect("the guard reports the loss");
    // Released: free at once.
    let c = backend(&fake, &pod_name(2), "");
    fake.delete("leases", NS, "muster-muster-formation");
    let g = c
        .formation_lock()
        .unwrap()
        .lock(&pod_name(2), &LockWait::within(Duration::from_secs(2)))
        .await
        .unwrap();
    g.release().await.unwrap();
    let t = Instant::now();
    let g = a
        .formation_lock()
        .unwrap()
        .lock(&pod_name(0), &LockWait::within(Duration::from_secs(2)))
        .await
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "a released Lease is free at once"
    );
    g.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_id_is_claimed_once_and_listed_with_the_command_that_re_bootstraps() {
    let fake = cluster(3).await;
    let (a, b) = (backend(&fake, &pod_name(0), ""), backend(&fake, &pod_name(1), ""));
    let (ia, ib) = (ClusterId("aaaa".into()), ClusterId("bbbb".into()));
    let guard = a
        .formation_lock()
        .unwrap()
        .lock(&pod_name(0), &LockWait::within(Duration::from_secs(5)))
        .await
        .unwrap();
    a.fencing()
        .unwrap()
        .claim(&ia, Some(guard.as_ref()))
        .await
        .unwrap();
    guard.release().await.unwrap();
    match b.fencing().unwrap().claim(&ib, None).await {
        Err(ClaimError::Taken(id)) => assert_eq!(id, ia),
        other => panic!("{other:?}"),
    }
    b.fencing()
        .unwrap()
        .claim(&ia, None)
        .await
        .expect("claiming the same id again is Ok");
    let listed = b.list().await.unwrap();
    assert_eq!(listed.recorded_cluster, Some(ia));
    let hint = listed.fencing_hint.unwrap();
    assert!(
        hint.contains("kubectl -n prod delete configmap muster-muster-cluster"),
        "{hint}"
    );
    // A claim under a Lease that is no longer ours is refused.
    let guard = b
        .formation_lock()
        .unwrap()
        .lock(&pod_name(1), &LockWait::within(Duration::from_secs(5)))
        .await
        .unwrap();
    fake.delete("leases", NS, "muster-muster-formation");
    let r = b
        .fencing()
        .unwrap()
        .claim(&ClusterId("cccc".into()), Some(guard.as_ref()))
        .await;
    assert!(matches!(r, Err(ClaimError::LockLost)), "{r:?}");
    // fencing = false: no record read or written, and no lock either (auto needs fencing).
    let off = backend(&fake, &pod_name(2), "fencing = false");
    assert!(off.fencing().is_none() && off.formation_lock().is_none());
    assert_eq!(off.list().await.unwrap().recorded_cluster, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_auto_falls_back_without_lease_rights_and_true_reports_them() {
    let fake = cluster(3).await;
    fake.forbid("get", "leases", true);
    let auto = backend(&fake, &pod_name(0), "");
    assert!(
        auto.formation_lock().is_some(),
        "on until the Role says otherwise"
    );
    auto.list().await.unwrap();
    assert!(
        auto.formation_lock().is_none(),
        "lock = \"auto\" without Lease rights"
    );
    let on = backend(&fake, &pod_name(0), "lock = true");
    on.list().await.unwrap();
    let e = on
        .formation_lock()
        .expect("lock = true keeps the lock")
        .lock(&pod_name(0), &LockWait::within(Duration::from_secs(2)))
        .await;
    let e = e.err().expect("forbidden").to_string();
    assert!(
        e.contains("cannot get leases") && e.contains("coordination.k8s.io"),
        "{e}"
    );
    let off = backend(&fake, &pod_name(0), "lock = false");
    assert!(off.formation_lock().is_none() && off.fencing().is_some());
    // Allowed: asked once, not on every listing.
    fake.forbid("get", "leases", false);
    let allowed = backend(&fake, &pod_name(1), "");
    let lease_reads = || {
        fake.requests()
            .iter()
            .filter(|r| r.starts_with("GET /apis/coordination.k8s.io"))
            .count()
    };
    let before = lease_reads();
    allowed.list().await.unwrap();
    allowed.list().await.unwrap();
    assert_eq!(lease_reads() - before, 1, "the Role is probed once");
    assert!(allowed.formation_lock().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_resolve_to_their_pod_ip_through_the_api() {
    let fake = cluster(2).await;
    let b = backend(&fake, &pod_name(0), "");
    let host = format!("muster-1.muster-nodes.{NS}.svc.cluster.local");
    let ips = b
        .resolve_host(&host)
        .await
        .expect("resolved through the API")
        .unwrap();
    assert_eq!(ips, vec!["127.0.20.2".parse::<std::net::IpAddr>().unwrap()]);
    // The pod restarted with a new IP: the address read is reused for at most a second, then
    // the new one is used (no DNS cache in the way).
    fake.pod(NS, "muster-1", "127.0.20.7");
    assert_eq!(
        b.resolve_host(&host).await.unwrap().unwrap(),
        vec!["127.0.20.2".parse::<std::net::IpAddr>().unwrap()],
        "read again within a second"
    );
    tokio::time::sleep(muster_backend_k8s::addresses::FRESH_FOR).await;
    assert_eq!(
        b.resolve_host(&host).await.unwrap().unwrap(),
        vec!["127.0.20.7".parse::<std::net::IpAddr>().unwrap()]
    );
    let gone = b
        .resolve_host(&format!("muster-5.muster-nodes.{NS}.svc.cluster.local"))
        .await
        .unwrap();
    assert_eq!(gone.unwrap_err().kind, ErrorKind::NotFound);
    assert!(
        b.resolve_host("elsewhere.example.com").await.is_none(),
        "not a pod name: system resolver"
    );
    // Without `pods get`: auto falls back to the system resolver, true reports it.
    fake.forbid("get", "pods", true);
    let strict = backend(&fake, &pod_name(0), "resolve_peers_via_api = true");
    let e = strict.resolve_host(&host).await.unwrap().unwrap_err();
    assert!(e.to_string().contains("cannot get pods"), "{e}");
    // Once the address it read is no longer fresh, `auto` asks again and falls back.
    tokio::time::sleep(muster_backend_k8s::addresses::FRESH_FOR).await;
    assert!(b.resolve_host(&host).await.is_none());
    let off = backend(&fake, &pod_name(0), "resolve_peers_via_api = false");
    fake.forbid("get", "pods", false);
    assert!(off.resolve_host(&host).await.is_none());
}

/// The conformance suite against the fake, or against a real cluster when
/// `MUSTER_K8S_TEST_KUBECONFIG` names a kubeconfig (namespace `MUSTER_K8S_TEST_NAMESPACE`,
/// default `default`; the rules of the Role of deploy/kubernetes without their `resourceNames`,
/// plus `delete` on leases and configmaps for the clean-up). On a real cluster the StatefulSet
/// is not read (`replicas = 3`), and the Lease and ConfigMap get names of their own, deleted
/// afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8s_backend_passes_the_conformance_suite() {
    let real = std::env::var_os("MUSTER_K8S_TEST_KUBECONFIG").map(std::path::PathBuf::from);
    let fake = match real {
        Some(_) => None,
        None => Some(cluster(3).await),
    };
    let (kubeconfig, ns, names) = match (&real, &fake) {
        (Some(kc), _) => {
            let ns = std::env::var("MUSTER_K8S_TEST_NAMESPACE").unwrap_or_else(|_| "default".into());
            let suffix = std::process::id();
            (
                kc.clone(),
                ns,
                format!(
                    "replicas = 3\nlease_name = \"muster-conformance-{suffix}\"\nfencing_name = \"muster-conformance-{suffix}\"\n"
                ),
            )
        }
        (None, Some(f)) => (f.kubeconfig(TOKEN), NS.to_string(), String::new()),
        (None, None) => unreachable!(),
    };
    let extra = format!("namespace = \"{ns}\"\n{names}");
    let at = |kc: &std::path::Path, n: &NodeName| {
        let text = format!(
            "[cluster_formation]\npeer_discovery_backend = \"k8s\"\n[cluster_formation.k8s]\napi = \"kubeconfig\"\n\
             kubeconfig = \"{}\"\nrequest_timeout = \"2s\"\nlease_duration = \"5s\"\n{extra}",
            kc.display()
        );
        K8sBackend::from_config(&FormationConfig::from_toml(&text).unwrap(), n).unwrap()
    };
    // A port nobody listens on: the unreachable API server.
    let tmp = tempfile::tempdir().unwrap();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let p = tmp.path().join("dead-kubeconfig");
        std::fs::write(
            &p,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: dead\nclusters:\n- name: dead\n  cluster:\n    \
                 server: https://127.0.0.1:{port}\ncontexts:\n- name: dead\n  context:\n    cluster: dead\n    \
                 user: u\nusers:\n- name: u\n  user:\n    token: t\n"
            ),
        )
        .unwrap();
        p
    };
    let nodes: Vec<NodeName> = (0..3)
        .map(|i| {
            format!("muster@muster-{i}.muster-nodes.{ns}.svc.cluster.local:4370")
                .parse()
                .unwrap()
        })
        .collect();
    let backends: Vec<Arc<dyn Discovery>> = nodes
        .iter()
        .map(|n| Arc::new(at(&kubeconfig, n)) as Arc<dyn Discovery>)
        .collect();
    let by_name = nodes.clone();
    let subject = conformance::Subject::new(nodes.clone(), move |n| {
        let i = by_name.iter().position(|x| x == n).expect("a subject node");
        backends[i].clone()
    })
    .with_unreachable(Arc::new(at(&dead, &nodes[0])));
    conformance::run(&subject).await;
    if real.is_some() {
        let client = kube::Client::try_from(
            kube::Config::from_custom_kubeconfig(
                kube::config::Kubeconfig::read_from(&kubeconfig).unwrap(),
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .unwrap(),
        )
        .unwrap();
        let name = format!("muster-conformance-{}", std::process::id());
        let dp = kube::api::DeleteParams::default();
        let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
            kube::Api::namespaced(client.clone(), &ns);
        let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> = kube::Api::namespaced(client, &ns);
        let _ = leases.delete(&name, &dp).await;
        let _ = cms.delete(&name, &dp).await;
    }
}

fn events(fake: &FakeApi) -> Vec<serde_json::Value> {
    fake.list("events", NS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn milestones_become_events_on_the_pod() {
    let fake = cluster(3).await;
    let b = backend(&fake, &pod_name(1), "");
    b.milestone(&Milestone::Joined {
        cluster: ClusterId("abcd".into()),
        via: Some(pod_name(0)),
    })
    .await;
    b.milestone(&Milestone::WaitingLong {
        detail: "waiting for seed muster-0".into(),
    })
    .await;
    let ev = events(&fake);
    assert_eq!(ev.len(), 2, "{ev:?}");
    let joined = ev
        .iter()
        .find(|e| e["reason"] == "Joined")
        .expect("a Joined event");
    assert_eq!(joined["regarding"]["kind"], "Pod");
    assert_eq!(joined["regarding"]["name"], "muster-1");
    assert_eq!(joined["type"], "Normal");
    assert!(
        joined["note"]
            .as_str()
            .unwrap()
            .contains("joined cluster abcd via"),
        "{joined}"
    );
    let waiting = ev.iter().find(|e| e["reason"] == "WaitingTooLong").unwrap();
    assert_eq!(waiting["type"], "Warning");
    // events = false: none.
    let quiet = backend(&fake, &pod_name(2), "events = false");
    quiet
        .milestone(&Milestone::Formed {
            cluster: ClusterId("x".into()),
        })
        .await;
    assert_eq!(events(&fake).len(), 2);
    // Without `events create`: one warning, then no more attempts.
    fake.forbid("create", "events", true);
    let denied = backend(&fake, &pod_name(2), "");
    denied
        .milestone(&Milestone::Formed {
            cluster: ClusterId("x".into()),
        })
        .await;
    denied
        .milestone(&Milestone::Formed {
            cluster: ClusterId("x".into()),
        })
        .await;
    let posts = fake
        .requests()
        .iter()
        .filter(|r| r.starts_with("POST /apis/events.k8s.io"))
        .count();
    assert_eq!(posts, 3, "two published, one refused, then none");
}

/// The default: in-cluster config from the pod's service account (`KUBERNETES_SERVICE_HOST` /
/// `_PORT` and the files under /var/run/secrets/kubernetes.io/serviceaccount, here on a tmpfs in
/// a private mount namespace, so the host's /run is untouched), namespace from its file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_cluster_config_uses_the_service_account_files() {
    let fake = cluster(2).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("muster.toml");
    std::fs::write(&config, "[cluster_formation]\npeer_discovery_backend = \"k8s\"\n[cluster_formation.k8s]\nrequest_timeout = \"2s\"\n")
        .unwrap();
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    let script = format!(
        "set -e; mount -t tmpfs tmpfs /run; mkdir -p {sa}; printf %s {TOKEN} > {sa}/token; cp {ca} {sa}/ca.crt; \
         printf %s {NS} > {sa}/namespace; exec {child}",
        ca = fake.ca.display(),
        child = child::argv("list_once")
            .iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(" "),
    );
    let port = fake.url.rsplit(':').next().unwrap().to_string();
    let out = tokio::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "--", "sh", "-c", &script])
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .env("KUBERNETES_SERVICE_PORT", &port)
        .env_remove("POD_NAMESPACE")
        .env(child::LIST_ENV, format!("{} {}", config.display(), pod_name(0)))
        .output()
        .await
        .expect("unshare (util-linux) runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "in-cluster listing failed (needs root for the mount namespace): {stdout}{stderr}"
    );
    assert_eq!(
        child::lines(&stdout, "listed: "),
        [pod_name(0).to_string(), pod_name(1).to_string()],
        "{stdout}{stderr}"
    );
}

/// A child process of the test above that lists in a mount namespace of its own.
#[tokio::test]
#[ignore = "a child process of in_cluster_config_uses_the_service_account_files, run by it"]
async fn list_once() {
    child::list_once(&muster_backend_k8s::FACTORY).await;
}
