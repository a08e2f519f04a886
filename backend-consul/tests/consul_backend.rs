//! The Consul backend against a real agent and against the fake.
//!
//! - A real dev agent (`muster_test_support::consul_agent`, Consul 1.8.7 unless `MUSTER_CONSUL_BIN`
//!   names another; fetched by `scripts/fetch-servers.sh`): registration passing at once and
//!   kept passing by the heartbeat, a stopped heartbeat going critical, an agent restart that
//!   forgets everything healed by re-registration, the session lock with its lock-delay, `cas=0`
//!   fencing, blocking reads, every registration field, the conformance suite, and the raw API
//!   calls the fake imitates, answered alike by both.
//! - The fake agent (`muster_test_support::consul`) for what a dev agent cannot do: Consul 1.11+
//!   answers, a restart of a client agent that keeps the KV store, injected 500s, delays and
//!   dropped connections, leader loss, ACL denials, TLS, and scaled time (a dead holder's session
//!   expiring at 2 x TTL, the reaper).

use std::sync::Arc;
use std::time::{Duration, Instant};

use muster_backend_consul::ConsulBackend;
use muster_discovery_core::testing::conformance;
use muster_discovery_core::{
    ClaimError, ClusterId, Discovery, ErrorKind, Fencing, FormationConfig, FormationLock, LockWait, NodeName,
    Registration,
};
use muster_test_support::consul::FakeConsul;
use muster_test_support::consul_agent::{self, ConsulAgent};
use muster_test_support::eventually;

fn n(i: u32) -> NodeName {
    format!("m@127.0.0.{i}:4370").parse().unwrap()
}

fn backend(fake: &FakeConsul, local: &NodeName, extra: &str) -> ConsulBackend {
    backend_at(&fake.address, local, extra)
}

fn backend_at(address: &str, local: &NodeName, extra: &str) -> ConsulBackend {
    // Test defaults, unless `extra` sets the key itself.
    let defaults: String = [
        "check_ttl = \"3s\"",
        "lock_ttl = \"10s\"",
        "request_timeout = \"2s\"",
        "lock_timeout = \"5s\"",
    ]
    .iter()
    .filter(|d| !extra.contains(d.split(' ').next().unwrap_or_default()))
    .map(|d| format!("{d}\n"))
    .collect();
    let text = format!(
        "[cluster_formation]\npeer_discovery_backend = \"consul\"\n[cluster_formation.consul]\naddress = \"{address}\"\n\
         {defaults}{extra}"
    );
    ConsulBackend::from_config(&FormationConfig::from_toml(&text).unwrap(), local).unwrap()
}

/// Whether `b` lists exactly `want` within `limit` (a registration reaches the catalog a moment
/// after the agent answers).
async fn lists(b: &ConsulBackend, want: &[NodeName], limit: Duration) -> bool {
    eventually(limit, async || b.list().await.is_ok_and(|l| l.nodes == want))
        .await
        .is_some()
}

fn check(i: u32) -> String {
    format!("service:muster:m@127.0.0.{i}:4370")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_agent_a_registration_passes_at_once_is_listed_oldest_first_and_heals_after_an_agent_restart() {
    let mut agent = ConsulAgent::start().await;
    let (a, b) = (
        backend_at(&agent.addr(), &n(1), ""),
        backend_at(&agent.addr(), &n(2), ""),
    );
    a.register().await.unwrap();
    b.register().await.unwrap();
    assert_eq!(agent.check_status(&check(1)).await.as_deref(), Some("passing"));
    assert!(
        lists(&a, &[n(1), n(2)], Duration::from_secs(5)).await,
        "both listed: {:?}\n{}",
        a.list().await,
        agent.log_tail(20)
    );
    let listed = a.list().await.unwrap();
    assert_eq!(
        listed.preferred_seed,
        Some(n(1)),
        "the oldest registration is the seed"
    );
    assert!(listed.authoritative, "a consistent read with a known leader");
    // The heartbeat (every second) keeps the 3 s check passing past its TTL.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(a.list().await.unwrap().nodes, vec![n(1), n(2)]);
    assert_eq!(agent.check_status(&check(2)).await.as_deref(), Some("passing"));
    assert!(a.status().renewals >= 2, "{:?}", a.status());
    // The dev agent restarts and forgets everything: Consul 1.8 answers the next heartbeat 500
    // `does not have associated TTL`, and each backend registers again.
    agent.restart().await;
    assert!(
        lists(&a, &[n(1), n(2)], Duration::from_secs(10)).await,
        "re-registered after the agent restart: {:?}\n{}",
        a.list().await,
        agent.log_tail(20)
    );
    assert!(a.status().re_registrations >= 1, "{:?}", a.status());
    assert!(b.status().re_registrations >= 1, "{:?}", b.status());
    assert_eq!(agent.check_status(&check(1)).await.as_deref(), Some("passing"));
    // Unregistered: gone.
    b.unregister().await.unwrap();
    assert!(agent.service("muster:m@127.0.0.2:4370").await.is_none());
    assert!(lists(&a, &[n(1)], Duration::from_secs(5)).await);
    b.unregister()
        .await
        .expect("deregistering twice is fine (Consul 1.8 answers 200)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_agent_a_stopped_heartbeat_goes_critical_and_unlisted_and_a_warning_is_listed_only_with_include_warning()
 {
    let agent = ConsulAgent::start().await;
    let (a, b) = (
        backend_at(&agent.addr(), &n(1), ""),
        backend_at(&agent.addr(), &n(2), ""),
    );
    a.register().await.unwrap();
    b.register().await.unwrap();
    assert!(lists(&a, &[n(1), n(2)], Duration::from_secs(5)).await);
    // Its process is gone: the heartbeat stops and the 3 s check goes critical.
    drop(b);
    let waited = eventually(Duration::from_secs(10), async || {
        a.list().await.is_ok_and(|l| !l.nodes.contains(&n(2)))
    })
    .await
    .expect("a critical instance is not listed");
    assert!(waited >= Duration::from_secs(1), "not before its TTL: {waited:?}");
    assert_eq!(agent.check_status(&check(2)).await.as_deref(), Some("critical"));
    let checks = agent.get("/v1/agent/checks").await.unwrap().json();
    assert!(
        checks[check(2)]["Output"]
            .as_str()
            .is_some_and(|o| o.contains("TTL expired")),
        "{checks}"
    );
    // Still registered: the reaper (DeregisterCriticalServiceAfter, at least 1 minute on a
    // real agent) has not run; the fake's scaled clock covers it.
    assert!(agent.service("muster:m@127.0.0.2:4370").await.is_some());
    // include_warning keeps a warning instance; a critical one never.
    let c = backend_at(
        &agent.addr(),
        &n(3),
        "include_warning = true\ncheck_ttl = \"60s\"",
    );
    c.register().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // its first pass is done
    let warned = agent
        .put(&format!("/v1/agent/check/warn/{}", check(3)), "")
        .await
        .unwrap();
    assert_eq!(warned.status, 200, "{warned:?}");
    assert!(
        lists(&c, &[n(1), n(3)], Duration::from_secs(5)).await,
        "{:?}",
        c.list().await
    );
    assert!(
        lists(&a, &[n(1)], Duration::from_secs(5)).await,
        "without include_warning, only passing: {:?}",
        a.list().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_agent_clusters_and_service_names_separate_what_is_listed_and_stale_reads_are_not_authoritative()
{
    let agent = ConsulAgent::start().await;
    let blue = backend_at(
        &agent.addr(),
        &n(1),
        "cluster_name = \"blue\"\nservice_tags = [\"x\"]\nservice_meta = { zone = \"a\" }",
    );
    let green = backend_at(&agent.addr(), &n(2), "cluster_name = \"green\"");
    blue.register().await.unwrap();
    green.register().await.unwrap();
    assert!(lists(&blue, &[n(1)], Duration::from_secs(5)).await);
    assert!(lists(&green, &[n(2)], Duration::from_secs(5)).await);
    let other = backend_at(
        &agent.addr(),
        &n(4),
        "service_name = \"other\"\ncluster_name = \"blue\"",
    );
    assert!(
        other.list().await.unwrap().nodes.is_empty(),
        "another service name is another world"
    );
    let stale = backend_at(
        &agent.addr(),
        &n(1),
        "cluster_name = \"blue\"\nconsistency = \"stale\"",
    );
    let listed = stale.list().await.unwrap();
    assert_eq!(listed.nodes, vec![n(1)]);
    assert!(!listed.authoritative && !stale.full_membership());
    let default = backend_at(
        &agent.addr(),
        &n(1),
        "cluster_name = \"blue\"\nconsistency = \"default\"",
    );
    assert!(!default.list().await.unwrap().authoritative);
}

/// `short` (`lock_timeout = "1s"`) gives up on a held lock long before the engine's 30 s wait.
async fn gives_up_within_its_lock_timeout(short: &ConsulBackend) {
    let t = Instant::now();
    assert!(
        short
            .lock(&n(3), &LockWait::within(Duration::from_secs(30)))
            .await
            .is_err()
    );
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "lock_timeout = 1s: {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_agent_the_lock_is_exclusive_and_a_dead_holders_lock_delay_is_applied() {
    let agent = ConsulAgent::start().await;
    let (a, b) = (
        backend_at(&agent.addr(), &n(1), "lock_timeout = \"20s\""),
        backend_at(&agent.addr(), &n(2), "lock_delay = \"4s\""),
    );
    let key = "muster/default/formation-lock";
    let held = a
        .lock(&n(1), &LockWait::within(Duration::from_secs(5)))
        .await
        .unwrap();
    let first = String::from_utf8_lossy(held.token()).into_owned();
    assert_eq!(agent.key(key).await, Some((Some(first), n(1).to_string())));
    assert!(
        b.lock(&n(2), &LockWait::within(Duration::from_millis(500)))
            .await
            .is_err(),
        "a second holder is refused while the first holds"
    );
    // lock_timeout bounds the engine's longer wait.
    gives_up_within_its_lock_timeout(&backend_at(&agent.addr(), &n(3), "lock_timeout = \"1s\"")).await;
    held.release().await.unwrap();
    assert_eq!(
        agent.key(key).await.map(|k| k.0),
        Some(None),
        "released: no holder"
    );
    // Released (not invalidated): free at once, no lock-delay. b is registered, so its session
    // is tied to its service check.
    b.register().await.unwrap();
    let g = b
        .lock(&n(2), &LockWait::within(Duration::from_secs(2)))
        .await
        .expect("free at once after a release");
    let second = String::from_utf8_lossy(g.token()).into_owned();
    let info = agent
        .get(&format!("/v1/session/info/{second}"))
        .await
        .unwrap()
        .json();
    assert_eq!(info[0]["LockDelay"], 4_000_000_000u64, "{info}");
    // Consul 1.8 keeps the legacy `Checks` the backend sends, and adds the node's serfHealth.
    assert_eq!(info[0]["Checks"], serde_json::json!([check(2)]), "{info}");
    // The holder dies (guard and backend dropped: no renewals, no heartbeat). Its check goes
    // critical at its 3 s TTL, which invalidates the session and starts the 4 s lock-delay.
    drop(g);
    drop(b);
    let freed = eventually(Duration::from_secs(10), async || {
        agent.key(key).await.is_some_and(|k| k.0.is_none())
    })
    .await;
    assert!(
        freed.is_some(),
        "the session died with its check\n{}",
        agent.log_tail(20)
    );
    let invalidated = Instant::now();
    // The key shows no holder, yet an acquire is refused: the lock-delay.
    let probe = agent
        .put(
            "/v1/session/create",
            r#"{"TTL":"10s","Checks":[],"LockDelay":"0s"}"#,
        )
        .await
        .unwrap()
        .json();
    let probe = probe["ID"].as_str().unwrap().to_string();
    let refused = agent
        .put(&format!("/v1/kv/{key}?acquire={probe}"), "probe")
        .await
        .unwrap();
    assert_eq!(refused.body.trim(), "false", "lock-delay: {refused:?}");
    agent
        .put(&format!("/v1/session/destroy/{probe}"), "")
        .await
        .unwrap();
    let taken = a
        .lock(&n(1), &LockWait::within(Duration::from_secs(20)))
        .await
        .unwrap();
    let waited = invalidated.elapsed();
    assert!(
        waited >= Duration::from_secs(3),
        "not before the 4 s lock-delay passed: {waited:?}"
    );
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    taken.release().await.unwrap();
}

/// `a` claims the id "aaaa" under the lock; `b` is then refused another id and accepted the same.
async fn claimed_once(a: &ConsulBackend, b: &ConsulBackend) {
    let guard = a
        .lock(&n(1), &LockWait::within(Duration::from_secs(5)))
        .await
        .unwrap();
    a.claim(&ClusterId("aaaa".into()), Some(guard.as_ref()))
        .await
        .unwrap();
    guard.release().await.unwrap();
    assert!(
        matches!(b.claim(&ClusterId("bbbb".into()), None).await, Err(ClaimError::Taken(id)) if id.0 == "aaaa")
    );
    b.claim(&ClusterId("aaaa".into()), None)
        .await
        .expect("the same id again is Ok");
}

/// `b`'s listing records "aaaa" and says how to delete the record.
async fn listed_with_the_fencing_hint(b: &ConsulBackend) {
    let listed = b.list().await.unwrap();
    assert_eq!(listed.recorded_cluster, Some(ClusterId("aaaa".into())));
    assert!(
        listed
            .fencing_hint
            .unwrap()
            .contains("consul kv delete muster/default/cluster-id")
    );
}

/// `b` takes the lock, `lose` takes it away, and a claim under it is refused as lost.
async fn refused_under_a_lost_lock(b: &ConsulBackend, lose: impl std::future::Future<Output = ()>) {
    let guard = b
        .lock(&n(2), &LockWait::within(Duration::from_secs(5)))
        .await
        .unwrap();
    lose.await;
    let r = b.claim(&ClusterId("cccc".into()), Some(guard.as_ref())).await;
    assert!(matches!(r, Err(ClaimError::LockLost)), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_agent_the_cluster_id_is_claimed_once_by_cas_0_and_a_restarted_dev_agent_forgets_it() {
    let mut agent = ConsulAgent::start().await;
    let (a, b) = (
        backend_at(&agent.addr(), &n(1), ""),
        backend_at(&agent.addr(), &n(2), ""),
    );
    claimed_once(&a, &b).await;
    let key = "muster/default/cluster-id";
    assert_eq!(agent.key(key).await, Some((None, "aaaa".into())));
    // A second create is refused by Consul itself.
    let again = agent.put(&format!("/v1/kv/{key}?cas=0"), "zzzz").await.unwrap();
    assert_eq!((again.status, again.body.trim()), (200, "false"));
    assert_eq!(agent.key(key).await, Some((None, "aaaa".into())));
    listed_with_the_fencing_hint(&b).await;
    // Under a lock that is no longer held (the dev agent restarted: sessions and keys gone).
    refused_under_a_lost_lock(&b, agent.restart()).await;
    assert_eq!(
        agent.key(key).await,
        None,
        "a dev agent keeps no KV across a restart"
    );
    assert_eq!(b.list().await.unwrap().recorded_cluster, None);
    // Another key prefix is another record.
    a.claim(&ClusterId("dddd".into()), None).await.unwrap();
    let other = backend_at(&agent.addr(), &n(3), "key_prefix = \"other\"");
    assert_eq!(other.list().await.unwrap().recorded_cluster, None);
}

/// `b` waits for the lock `a` holds, longer than its request timeout (1 s), and gets it within a
/// second of the release: its blocking read returns on the release, not at a poll.
async fn waiter_is_woken_by_the_release(a: ConsulBackend, b: ConsulBackend) {
    let held = a
        .lock(&n(1), &LockWait::within(Duration::from_secs(5)))
        .await
        .unwrap();
    let waiter = tokio::spawn(async move {
        let t = Instant::now();
        let g = b.lock(&n(2), &LockWait::within(Duration::from_secs(10))).await;
        (g.map(|_| ()), t.elapsed())
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let released = Instant::now();
    held.release().await.unwrap();
    let (got, waited) = waiter.await.unwrap();
    got.expect("the waiter gets the lock, its blocking read outlasting request_timeout");
    assert!(waited >= Duration::from_secs(3), "{waited:?}");
    assert!(
        released.elapsed() < Duration::from_secs(1),
        "woken by the release, not by a poll: {:?}",
        released.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_agent_a_blocking_wait_longer_than_the_request_timeout_returns_on_the_release() {
    let agent = ConsulAgent::start().await;
    let (a, b) = (
        backend_at(&agent.addr(), &n(1), "request_timeout = \"1s\""),
        backend_at(&agent.addr(), &n(2), "request_timeout = \"1s\""),
    );
    waiter_is_woken_by_the_release(a, b).await;
}

/// Every registration setting, for the tests that read the registration back.
const EVERY_FIELD: &str = "service_address = \"10.1.2.3\"\nservice_port = 5999\nservice_tags = [\"blue\", \"v2\"]\n\
                           service_meta = { zone = \"a\" }\nderegister_critical_after = \"5m\"\ncheck_ttl = \"7s\"";

/// A registered service as the agent stores it carries the fields of [`EVERY_FIELD`].
fn assert_configured_fields(body: &serde_json::Value) {
    assert_eq!(body["Address"], "10.1.2.3");
    assert_eq!(body["Port"], 5999);
    assert_eq!(
        body["Tags"],
        serde_json::json!(["default", "blue", "v2"]),
        "the cluster name first"
    );
    assert_eq!(body["Meta"]["zone"], "a");
    assert_eq!(body["Meta"]["muster-node"], "m@127.0.0.1:4370");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_agent_the_registration_carries_every_configured_field() {
    let agent = ConsulAgent::start().await;
    let b = backend_at(
        &agent.addr(),
        &n(1),
        &format!("{EVERY_FIELD}\ndatacenter = \"dc1\""),
    );
    b.register().await.unwrap();
    let body = agent
        .service("muster:m@127.0.0.1:4370")
        .await
        .expect("registered under its unique ID");
    assert_eq!(body["Service"], "muster");
    assert_configured_fields(&body);
    let checks = agent.get("/v1/agent/checks").await.unwrap().json();
    assert_eq!(checks[check(1)]["Status"], "passing", "{checks}");
    assert_eq!(checks[check(1)]["ServiceID"], "muster:m@127.0.0.1:4370");
    assert_eq!(checks[check(1)]["Type"], "ttl");
    assert!(
        lists(&b, &[n(1)], Duration::from_secs(5)).await,
        "listed with dc=dc1"
    );
    // Another datacenter the agent does not know: an error, never an empty listing.
    let elsewhere = backend_at(&agent.addr(), &n(1), "datacenter = \"dc2\"");
    let e = elsewhere.list().await.unwrap_err();
    assert!(e.to_string().contains("No path to datacenter"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_a_1_11_agent_answers_a_lost_check_404_and_a_client_agent_restart_is_healed() {
    let fake = FakeConsul::start(1.0).await;
    let (a, b) = (backend(&fake, &n(1), ""), backend(&fake, &n(2), ""));
    a.register().await.unwrap();
    b.register().await.unwrap();
    assert_eq!(
        fake.check_status("service:muster:m@127.0.0.1:4370").as_deref(),
        Some("passing")
    );
    let listed = a.list().await.unwrap();
    assert_eq!(listed.nodes, vec![n(1), n(2)]);
    assert_eq!(
        listed.preferred_seed,
        Some(n(1)),
        "the oldest registration is the seed"
    );
    assert!(listed.authoritative, "a consistent read with a known leader");
    // The heartbeat (every second) keeps the 3 s check passing.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(a.list().await.unwrap().nodes.len(), 2);
    assert!(a.status().renewals >= 2, "{:?}", a.status());
    // The agent restarts and forgets both: each heartbeat re-registers within a second.
    fake.agent_restart();
    eventually(Duration::from_secs(5), async || {
        a.list().await.unwrap().nodes.len() >= 2
    })
    .await;
    assert_eq!(
        a.list().await.unwrap().nodes.len(),
        2,
        "re-registered after the agent restart"
    );
    assert!(a.status().re_registrations >= 1);
    // Unregistered: gone at once.
    b.unregister().await.unwrap();
    assert_eq!(a.list().await.unwrap().nodes, vec![n(1)]);
    b.unregister().await.expect("deregistering twice is fine (404)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_leader_loss_fails_consistent_reads_and_default_reads_are_not_authoritative() {
    let fake = FakeConsul::start(1.0).await;
    let blue = backend(&fake, &n(1), "cluster_name = \"blue\"");
    blue.register().await.unwrap();
    assert!(blue.list().await.unwrap().authoritative);
    fake.leaderless(true);
    let e = blue.list().await.unwrap_err();
    assert!(
        e.is_temporary() && e.to_string().contains("No cluster leader"),
        "{e}"
    );
    let default = backend(&fake, &n(1), "cluster_name = \"blue\"\nconsistency = \"default\"");
    let listed = default.list().await.unwrap();
    assert_eq!(listed.nodes, vec![n(1)]);
    assert!(!listed.authoritative, "no known leader: not authoritative");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_the_lock_is_freed_after_a_dead_holders_session_ttl_and_lock_delay_is_waited_out_without_spinning()
 {
    // Twice as fast: a 10 s session TTL expires within 10 s (renewed every 5 s while alive).
    let fake = FakeConsul::start(0.5).await;
    let (a, b) = (
        backend(&fake, &n(1), "lock_timeout = \"20s\""),
        backend(&fake, &n(2), "lock_delay = \"4s\""),
    );
    let held = a
        .lock(&n(1), &LockWait::within(Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(
        b.lock(&n(2), &LockWait::within(Duration::from_millis(500)))
            .await
            .is_err()
    );
    // lock_timeout bounds the engine's longer wait.
    gives_up_within_its_lock_timeout(&backend(&fake, &n(3), "lock_timeout = \"1s\"")).await;
    let before_release = fake.requests().len();
    held.release().await.unwrap();
    let after: Vec<String> = fake.requests()[before_release..].to_vec();
    let release = after
        .iter()
        .position(|r| r.contains("release="))
        .expect("a release");
    let destroy = after
        .iter()
        .position(|r| r.contains("/v1/session/destroy/"))
        .expect("a destroy");
    assert!(
        release < destroy,
        "release first, then destroy (no lock-delay): {after:?}"
    );
    let g = b
        .lock(&n(2), &LockWait::within(Duration::from_secs(2)))
        .await
        .expect("free at once after a release");
    // The holder dies (dropped, its renewals stop): the session expires at up to 2 × TTL, and
    // its lock-delay (4 s, 2 s here) keeps the key refused a while longer; the waiter sleeps.
    drop(g);
    let before = fake.requests().len();
    let t = Instant::now();
    let taken = a
        .lock(&n(1), &LockWait::within(Duration::from_secs(20)))
        .await
        .unwrap();
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_secs(2),
        "not before the session expired and the lock-delay passed: {waited:?}"
    );
    let acquires = fake.requests()[before..]
        .iter()
        .filter(|r| r.contains("acquire="))
        .count();
    assert!(
        acquires < 20,
        "waited on blocking reads and slept through the lock-delay: {acquires} acquires"
    );
    taken.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_a_client_agent_restart_keeps_the_cluster_id_and_loses_the_lock() {
    let fake = FakeConsul::start(1.0).await;
    let (a, b) = (backend(&fake, &n(1), ""), backend(&fake, &n(2), ""));
    claimed_once(&a, &b).await;
    listed_with_the_fencing_hint(&b).await;
    // Under a lock that is no longer held: refused (sessions gone, the key released).
    refused_under_a_lost_lock(&b, async { fake.agent_restart() }).await;
    assert_eq!(
        b.list().await.unwrap().recorded_cluster,
        Some(ClusterId("aaaa".into())),
        "the servers keep the KV store when a client agent restarts"
    );
    // Another key prefix is another record.
    let other = backend(&fake, &n(3), "key_prefix = \"other\"");
    assert_eq!(other.list().await.unwrap().recorded_cluster, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_acl_denials_say_which_rule_is_missing_and_never_show_the_token() {
    let fake = FakeConsul::start(1.0).await;
    fake.require_tokens(&["s3cr3t-token"]);
    let wrong = backend(&fake, &n(1), "token = \"wr0ng-token\"");
    let e = wrong.register().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied);
    let text = e.to_string();
    assert!(
        text.contains("ACL not found") && !text.contains("wr0ng-token"),
        "{text}"
    );
    let right = backend(&fake, &n(1), "token = \"s3cr3t-token\"");
    right.register().await.unwrap();
    fake.deny("/v1/kv/", true);
    let e = right
        .lock(&n(1), &LockWait::within(Duration::from_secs(1)))
        .await
        .err()
        .expect("denied")
        .to_string();
    assert!(
        e.contains("Permission denied") && e.contains("key_prefix \"muster\" { policy = \"write\" }"),
        "{e}"
    );
    assert!(!e.contains("s3cr3t-token"));
    assert!(
        fake.requests().iter().all(|r| !r.contains("token")),
        "the token travels only in the X-Consul-Token header, never in a URL"
    );
    let e = right.list().await.unwrap_err().to_string();
    assert!(e.contains("Permission denied"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_outages_and_errors_are_temporary_and_bad_addresses_are_named() {
    let fake = FakeConsul::start(1.0).await;
    let a = backend(&fake, &n(1), "");
    fake.fault(
        "/v1/health/",
        Some((500, "rpc error making call: No cluster leader")),
    );
    let e = a.list().await.unwrap_err();
    assert!(e.is_temporary(), "{e}");
    fake.fault("/v1/health/", None);
    // A slow agent is bounded by request_timeout (2 s); a dropped connection is temporary too.
    fake.delay("/v1/health/", Some(Duration::from_secs(4)));
    let t = Instant::now();
    assert!(a.list().await.unwrap_err().is_temporary());
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    fake.delay("/v1/health/", None);
    fake.drop_connections("/v1/health/", true);
    assert!(a.list().await.unwrap_err().is_temporary());
    fake.drop_connections("/v1/health/", false);
    a.list().await.expect("served again");
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        port
    };
    let text = format!(
        "[cluster_formation]\npeer_discovery_backend = \"consul\"\n[cluster_formation.consul]\naddress = \"127.0.0.1:{dead}\"\n"
    );
    let down = ConsulBackend::from_config(&FormationConfig::from_toml(&text).unwrap(), &n(1)).unwrap();
    let e = down.list().await.unwrap_err();
    assert!(e.is_temporary() && e.kind == ErrorKind::Unavailable, "{e}");
    let bad = "[cluster_formation]\npeer_discovery_backend = \"consul\"\n[cluster_formation.consul]\naddress = \"ftp://x\"\n";
    let e = ConsulBackend::from_config(&FormationConfig::from_toml(bad).unwrap(), &n(1))
        .err()
        .unwrap();
    assert_eq!(e.key.as_deref(), Some("cluster_formation.consul.address"), "{e}");
}

/// The conformance suite at `address`, with `token` if any.
async fn conformance_at(address: &str, token: Option<String>) {
    let cluster = format!("conformance-{}", std::process::id());
    let nodes: Vec<NodeName> = (1..=3).map(n).collect();
    let make = move |local: &NodeName, addr: &str| {
        let mut text = format!(
            "[cluster_formation]\npeer_discovery_backend = \"consul\"\n[cluster_formation.consul]\naddress = \"{addr}\"\n\
             check_ttl = \"3s\"\nlock_ttl = \"10s\"\nrequest_timeout = \"1s\"\ncluster_name = \"{cluster}\"\n"
        );
        if let Some(t) = &token {
            text.push_str(&format!("token = \"{t}\"\n"));
        }
        ConsulBackend::from_config(&FormationConfig::from_toml(&text).unwrap(), local).unwrap()
    };
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("http://127.0.0.1:{port}")
    };
    let backends: Vec<Arc<dyn Discovery>> = nodes
        .iter()
        .map(|x| Arc::new(make(x, address)) as Arc<dyn Discovery>)
        .collect();
    let by_name = nodes.clone();
    let subject = conformance::Subject::new(nodes.clone(), move |x| {
        backends[by_name.iter().position(|y| y == x).expect("a subject node")].clone()
    })
    .with_unreachable(Arc::new(make(&nodes[0], &dead)));
    conformance::run(&subject).await;
}

/// The conformance suite against a real dev agent, or against the agent
/// `MUSTER_CONSUL_TEST_ADDR` names (with `MUSTER_CONSUL_TEST_TOKEN`), for example one with ACLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_agent_consul_backend_passes_the_conformance_suite() {
    let external = std::env::var("MUSTER_CONSUL_TEST_ADDR")
        .ok()
        .filter(|a| !a.is_empty());
    let token = std::env::var("MUSTER_CONSUL_TEST_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    match external {
        Some(address) => conformance_at(&address, token).await,
        None => {
            let agent = ConsulAgent::start().await;
            conformance_at(&agent.addr(), None).await;
        }
    }
}

/// The same suite against the fake, which the fake-only tests rely on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_consul_passes_the_conformance_suite_too() {
    let fake = FakeConsul::start(1.0).await;
    conformance_at(&fake.address, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_the_registration_body_carries_every_configured_field_and_the_datacenter() {
    let fake = FakeConsul::start(1.0).await;
    let b = backend(&fake, &n(1), &format!("{EVERY_FIELD}\ndatacenter = \"dc2\""));
    b.register().await.unwrap();
    let body = fake
        .service("muster:m@127.0.0.1:4370")
        .expect("registered under its unique ID");
    assert_configured_fields(&body);
    assert_eq!(body["Check"]["Status"], "passing", "passing from the start");
    assert_eq!(body["Check"]["TTL"], "7000ms");
    assert_eq!(body["Check"]["DeregisterCriticalServiceAfter"], "300000ms");
    assert!(
        fake.requests().iter().all(|r| r.contains("dc=dc2")),
        "every call names the datacenter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_a_token_file_is_read_and_acl_filtered_rows_make_a_listing_not_authoritative() {
    let fake = FakeConsul::start(1.0).await;
    fake.require_tokens(&["from-a-file"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "from-a-file\n").unwrap();
    let b = backend(&fake, &n(1), &format!("token_file = \"{}\"", file.display()));
    b.register().await.unwrap();
    assert!(b.list().await.unwrap().authoritative);
    fake.acl_filtered(true);
    assert!(
        !b.list().await.unwrap().authoritative,
        "rows hidden by ACLs: not the full membership"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_a_blocking_wait_is_one_read_not_a_poll() {
    let fake = FakeConsul::start(1.0).await;
    let (a, b) = (
        backend(&fake, &n(1), "request_timeout = \"1s\""),
        backend(&fake, &n(2), "request_timeout = \"1s\""),
    );
    waiter_is_woken_by_the_release(a, b).await;
    let blocking = fake
        .requests()
        .iter()
        .filter(|r| r.contains("formation-lock") && r.contains("index="))
        .count();
    assert!(
        (1..=3).contains(&blocking),
        "one blocking read, not a poll: {blocking}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_tls_with_a_ca_and_a_client_certificate() {
    use muster_test_support::certs;
    use rustls::pki_types::pem::PemObject;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    certs::ca(d, "ca");
    certs::ca(d, "other-ca");
    certs::leaf(
        d,
        "server",
        "ca",
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    certs::leaf(
        d,
        "client",
        "ca",
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    );
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(d.join("ca.crt")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .unwrap();
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(d.join("server.crt"))
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(d.join("server.key")).unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let fake = FakeConsul::start_with(1.0, Some(Arc::new(tls))).await;
    assert!(fake.address.starts_with("https://"));
    let files = |ca: &str, client: bool| {
        let mut t = format!("ca_file = \"{}\"\n", d.join(format!("{ca}.crt")).display());
        if client {
            t.push_str(&format!(
                "cert_file = \"{}\"\nkey_file = \"{}\"\n",
                d.join("client.crt").display(),
                d.join("client.key").display()
            ));
        }
        t
    };
    let good = backend(&fake, &n(1), &files("ca", true));
    good.register().await.unwrap();
    assert_eq!(good.list().await.unwrap().nodes, vec![n(1)]);
    let no_client_cert = backend(&fake, &n(2), &files("ca", false));
    assert!(
        no_client_cert.list().await.is_err(),
        "the agent requires a client certificate"
    );
    let wrong_ca = backend(&fake, &n(2), &files("other-ca", true));
    assert!(
        wrong_ca.list().await.is_err(),
        "an agent certificate from another CA is not trusted"
    );
}

/// An agent address that answers with a redirect does not get the token sent on: the client
/// follows no redirect, so a second host never sees `X-Consul-Token`.
#[tokio::test]
async fn a_redirect_never_carries_the_token_to_another_host() {
    use std::io::{Read, Write};
    let elsewhere = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let elsewhere_addr = elsewhere.local_addr().unwrap();
    elsewhere.set_nonblocking(true).unwrap();
    let redirector = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("http://{}", redirector.local_addr().unwrap());
    std::thread::spawn(move || {
        for mut s in redirector.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let reply = format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://{elsewhere_addr}/v1/catalog\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = s.write_all(reply.as_bytes());
        }
    });
    let text = format!(
        "[cluster_formation]\npeer_discovery_backend = \"consul\"\n[cluster_formation.consul]\naddress = \"{address}\"\n\
         token = \"redirect-t0ken\"\nrequest_timeout = \"2s\"\n"
    );
    let b = ConsulBackend::from_config(&FormationConfig::from_toml(&text).unwrap(), &n(1)).unwrap();
    let listed = b.list().await;
    assert!(
        listed.is_err(),
        "a redirect is an error, not a listing: {listed:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        elsewhere.accept().is_err(),
        "nothing connected to the redirect's target"
    );
}

/// The raw calls the backend makes and the answers it relies on, as Consul 1.8.7 gives them:
/// the same assertions run against the real agent and against the fake (in its pre-1.11 mode),
/// so the fake cannot drift from the real agent unnoticed.
async fn answers_like_consul_1_8(address: &str, who: &str) {
    use reqwest::Method;
    let http = reqwest::Client::new();
    let call = async |m: Method, path: &str, body: &str| {
        consul_agent::request(&http, address, m, path, Some(body.as_bytes().to_vec()))
            .await
            .unwrap_or_else(|| panic!("{who}: no answer to {path}"))
    };
    let reg = r#"{"Name":"raw","ID":"raw:1","Tags":["t"],"Meta":{"k":"v"},
        "Check":{"CheckID":"service:raw:1","TTL":"30s","Status":"passing","DeregisterCriticalServiceAfter":"1m"}}"#;
    let a = call(Method::PUT, "/v1/agent/service/register", reg).await;
    assert_eq!(a.status, 200, "{who}: register {a:?}");
    let a = call(Method::GET, "/v1/agent/service/raw:1", "").await;
    assert_eq!(
        (a.status, a.json()["ID"].clone()),
        (200, "raw:1".into()),
        "{who}: {a:?}"
    );
    let a = call(Method::GET, "/v1/agent/service/nope", "").await;
    assert_eq!(a.status, 404, "{who}: unknown service {a:?}");
    let a = call(Method::PUT, "/v1/agent/check/pass/nope", "").await;
    assert!(
        a.status == 500 && a.body.contains("does not have associated TTL"),
        "{who}: pass of an unknown check {a:?}"
    );
    let a = call(Method::PUT, "/v1/agent/service/deregister/nope", "").await;
    assert_eq!(a.status, 200, "{who}: deregister of an unknown service {a:?}");
    // Health: the service's check and the node's serfHealth, both passing.
    let row = eventually(Duration::from_secs(5), async || {
        call(
            Method::GET,
            "/v1/health/service/raw?passing=1&tag=t&consistent",
            "",
        )
        .await
        .json()
        .as_array()
        .is_some_and(|r| r.len() == 1)
    })
    .await;
    assert!(row.is_some(), "{who}: the passing service is listed");
    let a = call(
        Method::GET,
        "/v1/health/service/raw?passing=1&tag=t&consistent",
        "",
    )
    .await;
    assert!(a.index.is_some_and(|i| i >= 1), "{who}: {a:?}");
    let row = a.json()[0].clone();
    assert_eq!(row["Service"]["ID"], "raw:1", "{who}: {row}");
    assert!(row["Service"]["CreateIndex"].as_u64().is_some(), "{who}: {row}");
    let mut ids: Vec<String> = row["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{}={}",
                c["CheckID"].as_str().unwrap(),
                c["Status"].as_str().unwrap()
            )
        })
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        ["serfHealth=passing", "service:raw:1=passing"],
        "{who}: {row}"
    );
    let a = call(Method::GET, "/v1/health/service/raw?passing=1&tag=other", "").await;
    assert_eq!(
        (a.status, a.body.trim()),
        (200, "[]"),
        "{who}: no match is [] {a:?}"
    );
    // Sessions.
    let a = call(Method::PUT, "/v1/session/create", r#"{"TTL":"5s"}"#).await;
    assert!(
        a.status == 500 && a.body.contains("Invalid Session TTL"),
        "{who}: a 5 s TTL {a:?}"
    );
    let a = call(
        Method::PUT,
        "/v1/session/create",
        r#"{"TTL":"10s","Checks":["nope"]}"#,
    )
    .await;
    assert_eq!(a.status, 500, "{who}: a session on a missing check {a:?}");
    let session = async |body: &str| {
        let a = call(Method::PUT, "/v1/session/create", body).await;
        assert_eq!(a.status, 200, "{who}: session {body}: {a:?}");
        a.json()["ID"].as_str().unwrap().to_string()
    };
    let s1 = session(r#"{"TTL":"10s","LockDelay":"1500ms","Behavior":"release","Checks":["service:raw:1"]}"#)
        .await;
    let s2 = session(r#"{"TTL":"10s","LockDelay":"0s","Checks":[]}"#).await;
    let a = call(Method::GET, &format!("/v1/session/info/{s1}"), "").await;
    let info = a.json()[0].clone();
    assert_eq!(
        info["Checks"],
        serde_json::json!(["service:raw:1"]),
        "{who}: {info}"
    );
    assert_eq!(
        info["NodeChecks"],
        serde_json::json!(["serfHealth"]),
        "{who}: {info}"
    );
    assert_eq!(info["LockDelay"], 1_500_000_000u64, "{who}: {info}");
    let a = call(Method::GET, &format!("/v1/session/info/{s2}"), "").await;
    let info = a.json()[0].clone();
    assert_eq!(
        info["NodeChecks"],
        serde_json::json!([]),
        "{who}: TTL-only {info}"
    );
    assert_eq!(info["TTL"], "10s", "{who}: {info}");
    // KV: a missing key, acquire, a blocking read woken by the release.
    let a = call(Method::GET, "/v1/kv/raw/lock?consistent", "").await;
    assert!(
        a.status == 404 && a.index.is_some_and(|i| i >= 1),
        "{who}: missing key {a:?}"
    );
    let a = call(Method::PUT, &format!("/v1/kv/raw/lock?acquire={s1}"), "one").await;
    assert_eq!(a.body.trim(), "true", "{who}: acquire {a:?}");
    let a = call(Method::PUT, &format!("/v1/kv/raw/lock?acquire={s2}"), "two").await;
    assert_eq!(a.body.trim(), "false", "{who}: a second holder {a:?}");
    let a = call(Method::GET, "/v1/kv/raw/lock", "").await;
    let entry = a.json()[0].clone();
    assert_eq!(entry["Session"], s1.as_str(), "{who}: {entry}");
    assert_eq!(entry["LockIndex"], 1, "{who}: {entry}");
    let index = entry["ModifyIndex"].as_u64().unwrap();
    assert_eq!(a.index, Some(index), "{who}: a key's index is its ModifyIndex");
    let (woken, blocked) = tokio::join!(
        async {
            let t = Instant::now();
            let a = call(Method::GET, &format!("/v1/kv/raw/lock?index={index}&wait=5s"), "").await;
            (a, t.elapsed())
        },
        async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            call(Method::PUT, &format!("/v1/kv/raw/lock?release={s1}"), "").await
        }
    );
    assert_eq!(blocked.body.trim(), "true", "{who}: release {blocked:?}");
    let (a, took) = woken;
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "{who}: the blocking read returned on the release: {took:?}"
    );
    let after = a.index.unwrap();
    assert!(after > index, "{who}: {a:?}");
    assert!(a.json()[0].get("Session").is_none(), "{who}: released {a:?}");
    // No change: the read waits its `wait` and returns the same index.
    let t = Instant::now();
    let a = call(Method::GET, &format!("/v1/kv/raw/lock?index={after}&wait=1s"), "").await;
    assert!(
        t.elapsed() >= Duration::from_millis(900) && a.index == Some(after),
        "{who}: {:?} {a:?}",
        t.elapsed()
    );
    // A destroyed holder: the key is free, yet refused for the lock-delay.
    let a = call(Method::PUT, &format!("/v1/kv/raw/lock?acquire={s1}"), "one").await;
    assert_eq!(a.body.trim(), "true", "{who}: {a:?}");
    let destroyed = Instant::now();
    let a = call(Method::PUT, &format!("/v1/session/destroy/{s1}"), "").await;
    assert_eq!((a.status, a.body.trim()), (200, "true"), "{who}: destroy {a:?}");
    let a = call(Method::GET, "/v1/kv/raw/lock", "").await;
    assert!(a.json()[0].get("Session").is_none(), "{who}: {a:?}");
    let a = call(Method::PUT, &format!("/v1/kv/raw/lock?acquire={s2}"), "two").await;
    assert_eq!(a.body.trim(), "false", "{who}: within the lock-delay {a:?}");
    tokio::time::sleep(Duration::from_millis(1700).saturating_sub(destroyed.elapsed())).await;
    let a = call(Method::PUT, &format!("/v1/kv/raw/lock?acquire={s2}"), "two").await;
    assert_eq!(a.body.trim(), "true", "{who}: after the lock-delay {a:?}");
    let a = call(Method::PUT, &format!("/v1/session/renew/{s1}"), "").await;
    assert_eq!(a.status, 404, "{who}: renewing a destroyed session {a:?}");
    let a = call(Method::PUT, &format!("/v1/session/renew/{s2}"), "").await;
    assert_eq!(
        (a.status, a.json()[0]["TTL"].clone()),
        (200, "10s".into()),
        "{who}: {a:?}"
    );
    // cas=0 creates once.
    let a = call(Method::PUT, "/v1/kv/raw/id?cas=0", "first").await;
    assert_eq!(a.body.trim(), "true", "{who}: {a:?}");
    let a = call(Method::PUT, "/v1/kv/raw/id?cas=0", "second").await;
    assert_eq!(a.body.trim(), "false", "{who}: {a:?}");
    let a = call(Method::GET, "/v1/kv/raw/id?raw", "").await;
    assert_eq!(a.body, "first", "{who}: {a:?}");
    let a = call(Method::PUT, &format!("/v1/kv/raw/id?cas=0&acquire={s2}"), "x").await;
    assert_eq!(a.status, 400, "{who}: conflicting flags {a:?}");
    // A check left to lapse goes critical at its TTL and takes its sessions with it; no session
    // can be tied to it then.
    let reg =
        r#"{"Name":"raw","ID":"raw:2","Check":{"CheckID":"service:raw:2","TTL":"1s","Status":"passing"}}"#;
    assert_eq!(
        call(Method::PUT, "/v1/agent/service/register", reg).await.status,
        200
    );
    let s3 = session(r#"{"TTL":"10s","Checks":["service:raw:2"]}"#).await;
    let critical = eventually(Duration::from_secs(5), async || {
        let rows = call(Method::GET, "/v1/health/service/raw", "").await.json();
        rows.as_array().unwrap().iter().any(|r| {
            r["Checks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["CheckID"] == "service:raw:2" && c["Status"] == "critical")
        })
    })
    .await;
    assert!(critical.is_some(), "{who}: the TTL lapsed");
    let gone = eventually(Duration::from_secs(2), async || {
        call(Method::GET, &format!("/v1/session/info/{s3}"), "")
            .await
            .body
            .trim()
            == "[]"
    })
    .await;
    assert!(gone.is_some(), "{who}: the session died with its check");
    let a = call(
        Method::PUT,
        "/v1/session/create",
        r#"{"TTL":"10s","Checks":["service:raw:2"]}"#,
    )
    .await;
    assert!(
        a.status == 500 && a.body.contains("critical"),
        "{who}: a session on a critical check {a:?}"
    );
    let a = call(Method::PUT, "/v1/agent/service/deregister/raw:1", "").await;
    assert_eq!(a.status, 200, "{who}: {a:?}");
    let a = call(Method::GET, "/v1/agent/service/raw:1", "").await;
    assert_eq!(a.status, 404, "{who}: deregistered {a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_agent_and_fake_answer_the_raw_api_alike() {
    let agent = ConsulAgent::start().await;
    let fake = FakeConsul::start(1.0).await;
    fake.pre_1_11(true);
    let real = agent.addr();
    tokio::join!(
        answers_like_consul_1_8(&real, "the real agent"),
        answers_like_consul_1_8(&fake.address, "the fake"),
    );
}

/// The reaper: a real agent removes a service critical longer than
/// DeregisterCriticalServiceAfter only after at least a minute (plus up to its 30 s reap
/// period), too slow for these tests, so the fake's scaled clock (50 times faster) shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_a_service_critical_longer_than_deregister_critical_after_is_reaped() {
    let fake = FakeConsul::start(0.02).await;
    let b = backend(&fake, &n(1), "deregister_critical_after = \"1m\"");
    b.register().await.unwrap();
    let t = Instant::now();
    drop(b); // no heartbeat: critical at its (scaled) TTL, reaped a (scaled) minute later
    let reaped = eventually(Duration::from_secs(10), async || fake.services().is_empty()).await;
    assert!(reaped.is_some(), "reaped: {:?}", fake.services());
    assert!(
        t.elapsed() >= Duration::from_millis(1000),
        "not before the 1 minute (1.2 s here): {:?}",
        t.elapsed()
    );
    assert_eq!(fake.check_status(&check(1)), None, "its check went with it");
}
