//! The Consul backend against the fake agent (`muster_tests::consul`): registration passing at
//! once and healing itself, listings, the session lock (exclusive, freed after a dead holder's
//! TTL, lock-delay waited out without spinning), fencing, ACL errors that never show the token.

use std::sync::Arc;
use std::time::{Duration, Instant};

use muster::{
    ClaimError, ClusterId, Discovery, ErrorKind, Fencing, FormationConfig, FormationLock, NodeName,
    Registration,
};
use muster_backend_consul::ConsulBackend;
use muster_discovery_core::testing::conformance;
use muster_tests::consul::FakeConsul;
use muster_tests::eventually;

fn n(i: u32) -> NodeName {
    format!("m@127.0.0.{i}:4370").parse().unwrap()
}

fn backend(fake: &FakeConsul, local: &NodeName, extra: &str) -> ConsulBackend {
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
        "[cluster_formation]\npeer_discovery_backend = \"consul\"\n[cluster_formation.consul]\naddress = \"{}\"\n\
         {defaults}{extra}",
        fake.address
    );
    ConsulBackend::from_config(&FormationConfig::from_toml(&text).unwrap(), local).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_is_passing_at_once_listed_oldest_first_and_heals_after_an_agent_restart() {
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
async fn a_stopped_heartbeat_goes_critical_and_unlisted_and_old_agents_are_healed_too() {
    let fake = FakeConsul::start(1.0).await;
    let (a, b) = (backend(&fake, &n(1), ""), backend(&fake, &n(2), ""));
    a.register().await.unwrap();
    b.register().await.unwrap();
    // Its process is gone: the heartbeat stops and the 3 s check goes critical.
    drop(b);
    let waited = eventually(Duration::from_secs(6), async || {
        !a.list().await.unwrap().nodes.contains(&n(2))
    })
    .await
    .unwrap_or(Duration::MAX);
    assert!(
        !a.list().await.unwrap().nodes.contains(&n(2)),
        "a critical instance is not listed"
    );
    assert!(waited >= Duration::from_secs(1), "not before its TTL: {waited:?}");
    assert_eq!(
        fake.check_status("service:muster:m@127.0.0.2:4370").as_deref(),
        Some("critical")
    );
    // An agent before 1.11 answers 500 for an unknown check: that heals too.
    fake.pre_1_11(true);
    fake.agent_restart();
    eventually(Duration::from_secs(5), async || {
        a.list().await.unwrap().nodes.contains(&n(1))
    })
    .await;
    assert!(
        a.list().await.unwrap().nodes.contains(&n(1)),
        "re-registered on the old 500 text"
    );
    // include_warning keeps a warning instance; a critical one never.
    let c = backend(&fake, &n(3), "include_warning = true\ncheck_ttl = \"60s\"");
    c.register().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // its first heartbeat is done
    fake.set_check("service:muster:m@127.0.0.3:4370", "warning");
    assert!(c.list().await.unwrap().nodes.contains(&n(3)));
    assert!(
        !a.list().await.unwrap().nodes.contains(&n(3)),
        "without include_warning, only passing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_tags_meta_and_consistency_change_what_is_listed() {
    let fake = FakeConsul::start(1.0).await;
    let blue = backend(
        &fake,
        &n(1),
        "cluster_name = \"blue\"\nservice_tags = [\"x\"]\nservice_meta = { zone = \"a\" }",
    );
    let green = backend(&fake, &n(2), "cluster_name = \"green\"");
    blue.register().await.unwrap();
    green.register().await.unwrap();
    assert_eq!(blue.list().await.unwrap().nodes, vec![n(1)]);
    assert_eq!(green.list().await.unwrap().nodes, vec![n(2)]);
    let other = backend(&fake, &n(4), "service_name = \"other\"\ncluster_name = \"blue\"");
    assert!(
        other.list().await.unwrap().nodes.is_empty(),
        "another service name is another world"
    );
    // Stale reads are never authoritative; a leaderless cluster fails consistent reads.
    let stale = backend(&fake, &n(1), "cluster_name = \"blue\"\nconsistency = \"stale\"");
    assert!(!stale.list().await.unwrap().authoritative && !stale.full_membership());
    fake.leaderless(true);
    let e = blue.list().await.unwrap_err();
    assert!(
        e.is_temporary() && e.to_string().contains("No cluster leader"),
        "{e}"
    );
    let default = backend(&fake, &n(1), "cluster_name = \"blue\"\nconsistency = \"default\"");
    assert!(
        !default.list().await.unwrap().authoritative,
        "no known leader: not authoritative"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_is_exclusive_freed_after_a_dead_holders_ttl_and_lock_delay_is_waited_out_without_spinning()
{
    // Twice as fast: a 10 s session TTL expires within 10 s (renewed every 5 s while alive).
    let fake = FakeConsul::start(0.5).await;
    let (a, b) = (
        backend(&fake, &n(1), "lock_timeout = \"20s\""),
        backend(&fake, &n(2), "lock_delay = \"4s\""),
    );
    let held = a.lock(&n(1), Duration::from_secs(5)).await.unwrap();
    assert!(b.lock(&n(2), Duration::from_millis(500)).await.is_err());
    // lock_timeout bounds the engine's longer wait.
    let short = backend(&fake, &n(3), "lock_timeout = \"1s\"");
    let t = Instant::now();
    assert!(short.lock(&n(3), Duration::from_secs(30)).await.is_err());
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "lock_timeout = 1s: {:?}",
        t.elapsed()
    );
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
        .lock(&n(2), Duration::from_secs(2))
        .await
        .expect("free at once after a release");
    // The holder dies (dropped, its renewals stop): the session expires at up to 2 × TTL, and
    // its lock-delay (4 s, 2 s here) keeps the key refused a while longer; the waiter sleeps.
    drop(g);
    let before = fake.requests().len();
    let t = Instant::now();
    let taken = a.lock(&n(1), Duration::from_secs(20)).await.unwrap();
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
async fn the_cluster_id_is_claimed_once_and_listed_with_the_command_that_re_bootstraps() {
    let fake = FakeConsul::start(1.0).await;
    let (a, b) = (backend(&fake, &n(1), ""), backend(&fake, &n(2), ""));
    let guard = a.lock(&n(1), Duration::from_secs(5)).await.unwrap();
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
    let listed = b.list().await.unwrap();
    assert_eq!(listed.recorded_cluster, Some(ClusterId("aaaa".into())));
    assert!(
        listed
            .fencing_hint
            .unwrap()
            .contains("consul kv delete muster/default/cluster-id")
    );
    // Under a lock that is no longer held: refused.
    let guard = b.lock(&n(2), Duration::from_secs(5)).await.unwrap();
    fake.agent_restart(); // sessions gone, the key released
    let r = b.claim(&ClusterId("cccc".into()), Some(guard.as_ref())).await;
    assert!(matches!(r, Err(ClaimError::LockLost)), "{r:?}");
    // Another key prefix is another record.
    let other = backend(&fake, &n(3), "key_prefix = \"other\"");
    assert_eq!(other.list().await.unwrap().recorded_cluster, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_denials_say_which_rule_is_missing_and_never_show_the_token() {
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
        .lock(&n(1), Duration::from_secs(1))
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
async fn outages_and_errors_are_temporary_and_bad_addresses_are_named() {
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
    assert_eq!(e.kind, ErrorKind::Misconfigured);
    assert!(e.to_string().contains("cluster_formation.consul.address"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// The conformance suite against the fake, or against a real agent when
/// `MUSTER_CONSUL_TEST_ADDR` (and `MUSTER_CONSUL_TEST_TOKEN`) is set; the other tests in this
/// file need the fake's hooks (agent restart, faults, ACL switches) and always use it.
async fn consul_backend_passes_the_conformance_suite() {
    let real = std::env::var("MUSTER_CONSUL_TEST_ADDR")
        .ok()
        .filter(|a| !a.is_empty());
    let fake = match real {
        Some(_) => None,
        None => Some(FakeConsul::start(1.0).await),
    };
    let address = real
        .clone()
        .or_else(|| fake.as_ref().map(|f| f.address.clone()))
        .unwrap_or_default();
    let token = std::env::var("MUSTER_CONSUL_TEST_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
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
        .map(|x| Arc::new(make(x, &address)) as Arc<dyn Discovery>)
        .collect();
    let by_name = nodes.clone();
    let subject = conformance::Subject::new(nodes.clone(), move |x| {
        backends[by_name.iter().position(|y| y == x).expect("a subject node")].clone()
    })
    .with_unreachable(Arc::new(make(&nodes[0], &dead)));
    conformance::run(&subject).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registration_carries_every_configured_field() {
    let fake = FakeConsul::start(1.0).await;
    let b = backend(
        &fake,
        &n(1),
        "service_address = \"10.1.2.3\"\nservice_port = 5999\nservice_tags = [\"blue\", \"v2\"]\n\
         service_meta = { zone = \"a\" }\nderegister_critical_after = \"5m\"\ncheck_ttl = \"7s\"\ndatacenter = \"dc2\"",
    );
    b.register().await.unwrap();
    let body = fake
        .service("muster:m@127.0.0.1:4370")
        .expect("registered under its unique ID");
    assert_eq!(body["Address"], "10.1.2.3");
    assert_eq!(body["Port"], 5999);
    assert_eq!(
        body["Tags"],
        serde_json::json!(["default", "blue", "v2"]),
        "the cluster name first"
    );
    assert_eq!(body["Meta"]["zone"], "a");
    assert_eq!(body["Meta"]["muster-node"], "m@127.0.0.1:4370");
    assert_eq!(body["Check"]["Status"], "passing", "passing from the start");
    assert_eq!(body["Check"]["TTL"], "7000ms");
    assert_eq!(body["Check"]["DeregisterCriticalServiceAfter"], "300000ms");
    assert!(
        fake.requests().iter().all(|r| r.contains("dc=dc2")),
        "every call names the datacenter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_is_read_and_acl_filtered_rows_make_a_listing_not_authoritative() {
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
async fn a_blocking_wait_longer_than_the_request_timeout_does_not_time_out() {
    let fake = FakeConsul::start(1.0).await;
    let (a, b) = (
        backend(&fake, &n(1), "request_timeout = \"1s\""),
        backend(&fake, &n(2), "request_timeout = \"1s\""),
    );
    let held = a.lock(&n(1), Duration::from_secs(5)).await.unwrap();
    let waiter = tokio::spawn(async move {
        let t = Instant::now();
        let g = b.lock(&n(2), Duration::from_secs(10)).await;
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
        "woken by the release, not by polling"
    );
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
async fn tls_with_a_ca_and_a_client_certificate() {
    use muster_tests::certs;
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
