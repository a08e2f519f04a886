//! The DNS backend against real dnsmasq and bind9 servers on loopback: every mode against each
//! server, NXDOMAIN, a server that never answers, and record churn through dynamic updates.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use muster_backend_dns::{AddressType, DnsBackend, DnsSettings, NameForm};
use muster_discovery_core::{Discovery, ErrorKind, NodeName};
use muster_test_support::dns::{DnsServer, SilentDns, Zone};

fn zone() -> Zone {
    let h = |n: &str, ip: &str| (format!("{n}.cluster.test"), ip.to_string());
    Zone {
        hosts: vec![
            h("alpha", "192.0.2.1"),
            h("alpha", "fd00::1"),
            h("beta", "192.0.2.2"),
            h("beta", "fd00::2"),
            h("peers", "192.0.2.1"),
            h("peers", "192.0.2.2"),
            h("peers", "fd00::1"),
            h("peers", "fd00::2"),
            h("v4only", "192.0.2.3"),
            h("v6only", "fd00::3"),
        ],
        srv: vec![
            (
                "_muster._tcp.cluster.test".into(),
                "beta.cluster.test".into(),
                7002,
                20,
                0,
            ),
            (
                "_muster._tcp.cluster.test".into(),
                "alpha.cluster.test".into(),
                7001,
                10,
                50,
            ),
        ],
    }
}

fn local() -> NodeName {
    "m@self:4370".parse().unwrap()
}

fn backend(ns: SocketAddr, f: impl FnOnce(&mut DnsSettings)) -> DnsBackend {
    let mut s = DnsSettings {
        nameservers: vec![ns],
        timeout: Duration::from_millis(500),
        attempts: 1,
        ..DnsSettings::default()
    };
    f(&mut s);
    DnsBackend::new(s, &local()).unwrap()
}

fn names(list: &[&str]) -> Vec<NodeName> {
    let mut v: Vec<NodeName> = list.iter().map(|s| s.parse().unwrap()).collect();
    v.sort();
    v
}

async fn every_mode(server: &DnsServer) {
    let ns = server.addr;
    let ip = |host: &str| {
        backend(ns, |s| {
            s.hostname = Some(host.into());
            s.address_type = AddressType::Ip;
        })
    };
    let r = ip("v4only.cluster.test").list().await.unwrap();
    assert_eq!(r.nodes, names(&["m@192.0.2.3:4370"]), "A");
    assert!(!r.authoritative, "DNS is never authoritative");
    assert_eq!(
        ip("v6only.cluster.test").list().await.unwrap().nodes,
        names(&["m@[fd00::3]:4370"]),
        "AAAA"
    );
    assert_eq!(
        ip("peers.cluster.test").list().await.unwrap().nodes,
        names(&[
            "m@192.0.2.1:4370",
            "m@192.0.2.2:4370",
            "m@[fd00::1]:4370",
            "m@[fd00::2]:4370"
        ]),
        "A + AAAA as addresses"
    );

    let ptr = |form: NameForm| {
        backend(ns, |s| {
            s.hostname = Some("peers.cluster.test".into());
            s.name_form = form;
        })
    };
    assert_eq!(
        ptr(NameForm::Short).list().await.unwrap().nodes,
        names(&["m@alpha:4370", "m@beta:4370"]),
        "A+PTR short"
    );
    assert_eq!(
        ptr(NameForm::Fqdn).list().await.unwrap().nodes,
        names(&["m@alpha.cluster.test:4370", "m@beta.cluster.test:4370"]),
        "A+PTR fqdn"
    );

    let srv = backend(ns, |s| s.srv = Some("_muster._tcp.cluster.test".into()));
    assert_eq!(
        srv.list().await.unwrap().nodes,
        names(&["m@alpha.cluster.test:7001", "m@beta.cluster.test:7002"]),
        "SRV targets with their ports"
    );

    for mode in ["hostname", "srv"] {
        let b = backend(ns, |s| {
            if mode == "srv" {
                s.srv = Some("_nothing._tcp.cluster.test".into());
            } else {
                s.hostname = Some("nothing.cluster.test".into());
            }
        });
        let r = b.list().await.expect("NXDOMAIN is not an error");
        assert!(
            r.nodes.is_empty() && !r.authoritative,
            "{mode}: no candidates yet"
        );
    }

    // The node resolves peer names with the same nameservers.
    let ips = srv
        .resolve_host("alpha.cluster.test")
        .await
        .expect("explicit nameservers")
        .unwrap();
    assert_eq!(ips.len(), 2, "{ips:?}");
    let err = srv
        .resolve_host("nothing.cluster.test")
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
}

#[tokio::test]
async fn every_mode_against_dnsmasq() {
    let server = DnsServer::dnsmasq(&zone()).await;
    every_mode(&server).await;
}

#[tokio::test]
async fn every_mode_against_bind9() {
    let server = DnsServer::bind9(&zone()).await;
    every_mode(&server).await;
}

#[tokio::test]
async fn a_server_that_never_answers_is_a_temporary_error_within_the_configured_time() {
    let silent = SilentDns::start();
    for (timeout, attempts) in [(Duration::from_millis(300), 1), (Duration::from_millis(300), 3)] {
        let b = backend(silent.addr, |s| {
            s.hostname = Some("peers.cluster.test".into());
            s.timeout = timeout;
            s.attempts = attempts;
        });
        let start = Instant::now();
        let err = b.list().await.expect_err("no answer");
        let took = start.elapsed();
        assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
        assert!(err.is_temporary());
        let budget = timeout * attempts * 2 + Duration::from_millis(700); // A and AAAA queries
        assert!(
            took >= timeout && took <= budget,
            "timeout {timeout:?} x {attempts}: took {took:?}"
        );
    }
}

#[tokio::test]
async fn records_added_and_removed_with_nsupdate_show_on_the_next_round() {
    let server = DnsServer::bind9(&zone()).await;
    let srv = backend(server.addr, |s| s.srv = Some("_muster._tcp.cluster.test".into()));
    assert_eq!(srv.list().await.unwrap().nodes.len(), 2);
    server.nsupdate(
        "update add gamma.cluster.test 1 A 192.0.2.9\nupdate add _muster._tcp.cluster.test 1 SRV 10 10 7003 gamma.cluster.test.",
    );
    assert_eq!(
        srv.list().await.unwrap().nodes,
        names(&[
            "m@alpha.cluster.test:7001",
            "m@beta.cluster.test:7002",
            "m@gamma.cluster.test:7003"
        ]),
        "an added record is discovered on the next round"
    );
    server.nsupdate("update delete _muster._tcp.cluster.test SRV 20 0 7002 beta.cluster.test.");
    assert_eq!(
        srv.list().await.unwrap().nodes,
        names(&["m@alpha.cluster.test:7001", "m@gamma.cluster.test:7003"]),
        "a removed record disappears"
    );
    let a = backend(server.addr, |s| {
        s.hostname = Some("peers.cluster.test".into());
        s.address_type = AddressType::Ip;
    });
    server.nsupdate("update add peers.cluster.test 1 A 192.0.2.77");
    assert!(
        a.list()
            .await
            .unwrap()
            .nodes
            .contains(&"m@192.0.2.77:4370".parse().unwrap())
    );
}

/// The backend conformance suite against dnsmasq (SRV mode) and a silent nameserver.
#[tokio::test]
async fn dns_backend_passes_the_conformance_suite() {
    use muster_discovery_core::testing::conformance::{Subject, run};
    use std::sync::Arc;
    let server = DnsServer::dnsmasq(&zone()).await;
    let silent = SilentDns::start();
    let ns = server.addr;
    let nodes = names(&["m@alpha.cluster.test:7001", "m@beta.cluster.test:7002"]);
    let make = move |node: &NodeName, ns: SocketAddr| {
        let s = DnsSettings {
            nameservers: vec![ns],
            timeout: Duration::from_millis(300),
            attempts: 1,
            srv: Some("_muster._tcp.cluster.test".into()),
            ..DnsSettings::default()
        };
        Arc::new(DnsBackend::new(s, node).unwrap()) as Arc<dyn Discovery>
    };
    let subject = Subject::new(nodes.clone(), move |node| make(node, ns))
        .with_unreachable(make(&nodes[0], silent.addr));
    run(&subject).await;
}

/// Settings built by hand (skipping `from_config`'s validation) without hostname or srv: a
/// misconfigured error naming both keys, never a panic.
#[tokio::test]
async fn settings_without_hostname_or_srv_are_an_error_not_a_panic() {
    let silent = SilentDns::start();
    let b = backend(silent.addr, |_| {});
    let e = b.list().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Misconfigured, "{e}");
    assert!(
        e.to_string().contains("cluster_formation.dns.hostname") && e.to_string().contains("srv"),
        "{e}"
    );
}
