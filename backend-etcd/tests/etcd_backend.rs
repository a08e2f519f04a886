//! The etcd backend against a real etcd server: every setting changes behaviour, registration
//! expires and is re-established, the lock is exclusive and freed when its holder dies.

use std::io::BufRead;
use std::process::Stdio;
use std::time::{Duration, Instant};

use etcd_client::GetOptions;
use muster_backend_etcd::{EtcdBackend, EtcdSettings};
use muster_discovery_core::{Discovery, ErrorKind, FormationLock, LockWait, NodeName, Registration};
use muster_test_support::etcd::{EtcdServer, Tls};
use muster_test_support::{child, eventually};

fn n(s: &str) -> NodeName {
    format!("m@{s}").parse().unwrap()
}

fn settings(server: &EtcdServer) -> EtcdSettings {
    EtcdSettings {
        endpoints: vec![server.endpoint.clone()],
        node_ttl: Duration::from_secs(5),
        lock_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        ..EtcdSettings::default()
    }
}

async fn keys(server: &EtcdServer, prefix: &str) -> Vec<String> {
    let mut c = server.client().await;
    let r = c
        .get(prefix, Some(GetOptions::new().with_prefix().with_keys_only()))
        .await
        .unwrap();
    r.kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

#[tokio::test]
async fn registration_is_visible_under_prefix_and_cluster_name() {
    let server = EtcdServer::start().await;
    let s = EtcdSettings {
        key_prefix: "acme".into(),
        cluster_name: "blue".into(),
        ..settings(&server)
    };
    let a = EtcdBackend::new(s.clone(), &n("a"));
    a.register().await.unwrap();
    assert_eq!(
        keys(&server, "/acme/").await,
        vec!["/acme/blue/nodes/m@a".to_string()]
    );
    let listed = a.list().await.unwrap();
    assert_eq!(listed.nodes, vec![n("a")]);
    assert!(listed.authoritative);
    assert!(a.status().registered);

    // Another cluster name (and another prefix) is another world.
    let other = EtcdBackend::new(
        EtcdSettings {
            cluster_name: "green".into(),
            ..s.clone()
        },
        &n("b"),
    );
    other.register().await.unwrap();
    assert_eq!(other.list().await.unwrap().nodes, vec![n("b")]);
    assert_eq!(a.list().await.unwrap().nodes, vec![n("a")]);
    let third = EtcdBackend::new(
        EtcdSettings {
            key_prefix: "zeta".into(),
            ..s
        },
        &n("c"),
    );
    third.register().await.unwrap();
    assert_eq!(
        keys(&server, "/zeta/").await,
        vec!["/zeta/blue/nodes/m@c".to_string()]
    );

    a.unregister().await.unwrap();
    assert!(keys(&server, "/acme/blue/").await.is_empty());
}

#[tokio::test]
async fn node_ttl_sets_the_lease_and_a_killed_node_disappears_after_it() {
    let server = EtcdServer::start().await;
    let a = EtcdBackend::new(settings(&server), &n("a"));
    a.register().await.unwrap();
    let mut c = server.client().await;
    let ttl = c.lease_time_to_live(a.lease().unwrap(), None).await.unwrap();
    assert_eq!(ttl.granted_ttl(), 5, "the lease has node_ttl");
    // Survives well past its TTL while alive (keep-alive every ttl/3).
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(keys(&server, "/muster/").await.len(), 1);
    assert!(a.status().renewals >= 2);
    // "Killed": the keeper stops without unregistering.
    drop(a);
    let gone = eventually(Duration::from_secs(9), async || {
        keys(&server, "/muster/").await.is_empty()
    })
    .await;
    let gone = gone.expect("the key expires with its lease");
    assert!(
        gone >= Duration::from_secs(2),
        "not before the lease ran out: {gone:?}"
    );
}

#[tokio::test]
async fn a_lease_revoked_behind_the_backends_back_is_re_established() {
    let server = EtcdServer::start().await;
    let a = EtcdBackend::new(settings(&server), &n("a"));
    a.register().await.unwrap();
    let first = a.lease().unwrap();
    let mut c = server.client().await;
    c.lease_revoke(first).await.unwrap();
    // The keeper may already have registered again, on another lease.
    let listed = c
        .get("/muster/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(
        listed.kvs().iter().all(|kv| kv.lease() != first),
        "revoking the lease removed the key"
    );
    let back = eventually(Duration::from_secs(8), async || {
        keys(&server, "/muster/").await.len() == 1
    })
    .await;
    assert!(back.is_some(), "the registration comes back");
    assert_ne!(a.lease(), Some(first), "on a new lease");
    let st = a.status();
    assert!(st.registered && st.re_registrations >= 1, "{st:?}");
}

#[tokio::test]
async fn the_lock_is_exclusive_and_released() {
    let server = EtcdServer::start().await;
    let a = EtcdBackend::new(settings(&server), &n("a"));
    let b = EtcdBackend::new(settings(&server), &n("b"));
    let held = a
        .lock(&n("a"), &LockWait::within(Duration::from_secs(2)))
        .await
        .unwrap();
    let err = b
        .lock(&n("b"), &LockWait::within(Duration::from_millis(800)))
        .await
        .err()
        .expect("b must wait");
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert!(err.to_string().contains("held by another node"), "{err}");
    held.release().await.unwrap();
    let got = b
        .lock(&n("b"), &LockWait::within(Duration::from_secs(2)))
        .await
        .expect("free after release");
    got.release().await.unwrap();
}

/// Where [`holder`] finds the server: the endpoint and the lock's `lock_timeout` in seconds.
const HOLDER_ENV: &str = "MUSTER_TEST_ETCD_HOLDER";

/// A child process of [`lock_timeout_frees_the_lock_of_a_sigkilled_holder_process`]: takes the
/// lock, prints `locked`, and holds it until it is killed.
#[tokio::test]
#[ignore = "a child process of lock_timeout_frees_the_lock_of_a_sigkilled_holder_process, run by it"]
async fn holder() {
    let Ok(arg) = std::env::var(HOLDER_ENV) else {
        return eprintln!("run by lock_timeout_frees_the_lock_of_a_sigkilled_holder_process");
    };
    let (endpoint, ttl) = arg.split_once(' ').expect("ENDPOINT SECS");
    let settings = EtcdSettings {
        endpoints: vec![endpoint.to_string()],
        lock_timeout: Duration::from_secs(ttl.parse().expect("seconds")),
        ..EtcdSettings::default()
    };
    let guard = EtcdBackend::new(settings, &n("holder"))
        .lock(&n("holder"), &LockWait::within(Duration::from_secs(30)))
        .await
        .expect("lock");
    println!("locked");
    std::io::Write::flush(&mut std::io::stdout()).expect("stdout");
    std::mem::forget(guard);
    std::future::pending::<()>().await;
}

#[tokio::test]
async fn lock_timeout_frees_the_lock_of_a_sigkilled_holder_process() {
    let server = EtcdServer::start().await;
    let mut holder = child::Running(
        child::command("holder")
            .env(HOLDER_ENV, format!("{} 6", server.endpoint))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let locked = std::io::BufReader::new(holder.0.stdout.as_mut().unwrap())
        .lines()
        .map_while(Result::ok)
        .any(|l| l == "locked");
    assert!(locked, "the holder process took the lock");
    let b = EtcdBackend::new(settings(&server), &n("b"));
    assert!(
        b.lock(&n("b"), &LockWait::within(Duration::from_secs(3)))
            .await
            .is_err(),
        "held while the holder lives (lease kept alive)"
    );
    holder.0.kill().unwrap();
    holder.0.wait().unwrap();
    let killed = Instant::now();
    let got = b
        .lock(&n("b"), &LockWait::within(Duration::from_secs(15)))
        .await
        .expect("free after the lease expires");
    let waited = killed.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited <= Duration::from_secs(8),
        "lock_timeout 6 s, waited {waited:?}"
    );
    got.release().await.unwrap();
}

#[tokio::test]
async fn endpoints_and_connect_timeout_bound_an_unreachable_etcd() {
    // A listener that accepts and never speaks: only the timeouts end the wait.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    for (timeout, max) in [
        (Duration::from_millis(500), Duration::from_millis(1500)),
        (Duration::from_secs(3), Duration::from_secs(5)),
    ] {
        let s = EtcdSettings {
            endpoints: vec![addr.clone()],
            connect_timeout: timeout,
            ..EtcdSettings::default()
        };
        let b = EtcdBackend::new(s, &n("a"));
        let start = Instant::now();
        let err = b.list().await.expect_err("no etcd there");
        let took = start.elapsed();
        assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
        assert!(err.is_temporary());
        assert!(
            took >= timeout.mul_f32(0.8) && took <= max,
            "connect_timeout {timeout:?}, took {took:?}"
        );
    }
}

#[tokio::test]
async fn username_and_password_are_used() {
    let server = EtcdServer::start().await;
    let mut c = server.client().await;
    c.user_add("root", "rootpw", None).await.unwrap();
    c.user_grant_role("root", "root").await.unwrap();
    c.auth_enable().await.unwrap();
    let with = |u: Option<&str>, p: Option<&str>| EtcdSettings {
        username: u.map(String::from),
        password: p.map(muster_discovery_core::config::Secret::new),
        ..settings(&server)
    };
    let ok = EtcdBackend::new(with(Some("root"), Some("rootpw")), &n("a"));
    ok.register().await.unwrap();
    assert_eq!(ok.list().await.unwrap().nodes, vec![n("a")]);
    for (u, p) in [(Some("root"), Some("wrong")), (None, None)] {
        let b = EtcdBackend::new(with(u, p), &n("b"));
        let err = b.list().await.expect_err("refused");
        assert_eq!(err.kind, ErrorKind::PermissionDenied, "{err}");
        assert!(err.to_string().contains("username/password"), "{err}");
        assert!(
            !err.to_string().contains("rootpw") && !err.to_string().contains("wrong"),
            "{err}"
        );
    }
}

#[tokio::test]
async fn ca_file_cert_file_and_key_file_are_used_and_verification_is_never_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let tls = Tls::generate(dir.path());
    let server = EtcdServer::start_tls(&tls).await;
    let base = EtcdSettings {
        ca_file: Some(tls.ca.clone()),
        cert_file: Some(tls.client_cert.clone()),
        key_file: Some(tls.client_key.clone()),
        ..settings(&server)
    };
    let ok = EtcdBackend::new(base.clone(), &n("a"));
    ok.register().await.unwrap();
    assert_eq!(ok.list().await.unwrap().nodes, vec![n("a")]);

    let no_client_cert = EtcdSettings {
        cert_file: None,
        key_file: None,
        ..base.clone()
    };
    assert!(
        EtcdBackend::new(no_client_cert, &n("b")).list().await.is_err(),
        "client certificate required"
    );
    let wrong_ca = EtcdSettings {
        ca_file: Some(tls.other_ca.clone()),
        ..base.clone()
    };
    let err = EtcdBackend::new(wrong_ca, &n("b"))
        .list()
        .await
        .expect_err("server not trusted");
    assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
    let missing = EtcdSettings {
        ca_file: Some(dir.path().join("nope.pem")),
        ..base
    };
    let err = EtcdBackend::new(missing, &n("b")).list().await.err().unwrap();
    assert_eq!(err.kind, ErrorKind::Misconfigured, "{err}");
    assert!(
        err.to_string().contains("cluster_formation.etcd.ca_file"),
        "{err}"
    );
}

#[tokio::test]
async fn fencing_claims_the_first_cluster_only_and_lists_it_with_the_key_to_delete() {
    use muster_discovery_core::{ClaimError, ClusterId, Fencing};
    let server = EtcdServer::start().await;
    let a = EtcdBackend::new(settings(&server), &n("a"));
    assert!(a.list().await.unwrap().recorded_cluster.is_none());
    let first = ClusterId("first".into());
    a.claim(&first, None).await.unwrap();
    a.claim(&first, None)
        .await
        .expect("claiming the recorded id again succeeds");
    match a.claim(&ClusterId("second".into()), None).await {
        Err(ClaimError::Taken(id)) => assert_eq!(id, first),
        other => panic!("a different id must be Taken, got {other:?}"),
    }
    let r = a.list().await.unwrap();
    assert_eq!(r.recorded_cluster, Some(first));
    let hint = r.fencing_hint.unwrap();
    assert!(
        hint.contains("etcdctl") && hint.contains("del /muster/default/cluster-id"),
        "{hint}"
    );
}

#[tokio::test]
async fn a_claim_under_a_lapsed_lock_is_refused_and_lost_resolves() {
    use muster_discovery_core::{ClaimError, ClusterId, Fencing};
    let server = EtcdServer::start().await;
    let a = EtcdBackend::new(settings(&server), &n("a"));
    let guard = a
        .lock(&n("a"), &LockWait::within(Duration::from_secs(5)))
        .await
        .unwrap();
    let lost = guard.lost();
    // The lease lapses behind the holder's back (what a long pause does): revoke every lease.
    let mut c = server.client().await;
    for lease in c.leases().await.unwrap().leases() {
        c.lease_revoke(lease.id()).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), lost)
        .await
        .expect("lost() resolves once the lock's lease cannot be renewed");
    match a.claim(&ClusterId("x".into()), Some(guard.as_ref())).await {
        Err(ClaimError::LockLost) => {}
        other => panic!("a claim under a lapsed lock must be LockLost, got {other:?}"),
    }
    assert!(
        a.list().await.unwrap().recorded_cluster.is_none(),
        "nothing recorded"
    );
}

/// The backend conformance suite against a real etcd, and one nobody listens on.
#[tokio::test]
async fn etcd_backend_passes_the_conformance_suite() {
    use muster_discovery_core::testing::conformance::{Subject, run};
    use std::sync::Arc;
    let server = EtcdServer::start().await;
    let s = settings(&server);
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = EtcdSettings {
        endpoints: vec![silent.local_addr().unwrap().to_string()],
        connect_timeout: Duration::from_millis(500),
        ..settings(&server)
    };
    let subject = Subject::new(vec![n("a"), n("b")], move |node| {
        Arc::new(EtcdBackend::new(s.clone(), node)) as Arc<dyn Discovery>
    })
    .with_unreachable(Arc::new(EtcdBackend::new(dead, &n("a"))));
    run(&subject).await;
}
