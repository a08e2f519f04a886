//! Three real `muster` nodes on 127.0.10.1-3, discovered through SRV records served by bind9 and
//! resolving each other's names through the same bind9 (never the system resolver).

use std::collections::BTreeSet;
use std::time::Duration;

use muster_cli::launch::Ports;
use muster_test_support::dns::{DnsServer, Zone, cluster_nodes};
use muster_tests::{Layout, cluster_status, local_cluster_of, members, node_exe};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_discovered_through_srv_from_bind9_form_one_cluster_ten_times() {
    for round in 1..=10 {
        let mut ports = Ports::new();
        let nodes = cluster_nodes(3, &mut ports);
        let zone = Zone::cluster(&nodes.iter().map(|(_, l)| *l).collect::<Vec<_>>());
        let dns = DnsServer::bind9(&zone).await;
        let tables = format!(
            "[cluster_formation.dns]\nsrv = \"_muster._tcp.cluster.test\"\nnameservers = [\"{}\"]\ntimeout = \"500ms\"\n",
            dns.addr
        );
        let layout = Layout {
            nodes: 3,
            names: Some(nodes.clone()),
            backend: Some(("dns".into(), tables)),
            formation:
                "discovery_retry_interval = \"100ms\"\nprobe_timeout = \"250ms\"\nstable_margin = \"1s\"\n\
                        target_cluster_size_hint = 3\n"
                    .into(),
            ..Layout::default()
        };
        let (_dir, mut c) = local_cluster_of(&node_exe!(), &layout);
        c.start_all().unwrap();
        if let Err(e) = c.wait_members(&[0, 1, 2], 3, Duration::from_secs(30)).await {
            panic!("round {round}: {e}\n{}\n{}", c.log_tail(0, 15), dns.log());
        }
        let expected: BTreeSet<String> = nodes.iter().map(|(n, _)| n.to_string()).collect();
        let mut ids = BTreeSet::new();
        for i in 0..3 {
            let s = cluster_status(&c, i);
            assert_eq!(
                members(&s).into_iter().collect::<BTreeSet<_>>(),
                expected,
                "round {round}, node {i}"
            );
            ids.insert(s["cluster"].as_str().unwrap().to_string());
        }
        assert_eq!(ids.len(), 1, "round {round}: one cluster");
        c.stop_all(Duration::from_secs(5)).await;
    }
}
