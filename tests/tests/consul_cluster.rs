//! End to end with the Consul backend: real `muster` processes against a real Consul dev agent
//! (`muster_test_support::consul_agent`, Consul 1.8.7 unless `MUSTER_CONSUL_BIN` names another), and
//! against the fake where only it can answer 500 `No cluster leader` for a while.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use muster_cli::launch::Layout;
use muster_test_support::consul::FakeConsul;
use muster_test_support::consul_agent::ConsulAgent;
use muster_test_support::eventually;
use muster_tests::{cluster_ids, cluster_status, local_cluster_of, node_exe};

const FORM: Duration = Duration::from_secs(30);
const CLEANUP: &str = "\n[cluster_formation.node_cleanup]\ninterval = \"1s\"\nonly_log_warning = false\nconsecutive_absences = 2\n";

fn layout(address: &str, nodes: usize, cluster: &str, extra: &str) -> Layout {
    Layout {
        nodes,
        backend: Some((
            "consul".into(),
            format!(
                "[cluster_formation.consul]\naddress = \"{address}\"\ncluster_name = \"{cluster}\"\ncheck_ttl = \"2s\"\n\
                 lock_ttl = \"10s\"\nrequest_timeout = \"1s\"\nlock_timeout = \"5s\"\n"
            ),
        )),
        formation:
            "discovery_retry_interval = \"100ms\"\nprobe_timeout = \"250ms\"\nstable_margin = \"1s\"\n".into(),
        extra: extra.into(),
        ..Layout::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_started_at_once_form_one_cluster_ten_times() {
    let agent = ConsulAgent::start().await;
    for round in 1..=10 {
        let (_dir, mut c) = local_cluster_of(
            &node_exe!(),
            &layout(&agent.addr(), 5, &format!("round{round}"), ""),
        );
        c.start_all().unwrap();
        if let Err(e) = c.wait_members(&[0, 1, 2, 3, 4], 5, FORM).await {
            panic!(
                "round {round}: {e}\n{}\nagent:\n{}",
                c.log_tail(0, 30),
                agent.log_tail(20)
            );
        }
        assert_eq!(
            cluster_ids(&c, &[0, 1, 2, 3, 4]).len(),
            1,
            "round {round}: one cluster"
        );
        let (_, recorded) = agent
            .key(&format!("muster/round{round}/cluster-id"))
            .await
            .expect("the id is recorded");
        assert_eq!(BTreeSet::from([recorded]), cluster_ids(&c, &[0]), "round {round}");
        c.stop_all(Duration::from_secs(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_alone_refuses_to_form_a_second_cluster() {
    let agent = ConsulAgent::start().await;
    let (_dir, mut c) = local_cluster_of(&node_exe!(), &layout(&agent.addr(), 3, "fenced", ""));
    c.start_all().unwrap();
    c.wait_members(&[0, 1, 2], 3, FORM).await.unwrap();
    c.stop_all(Duration::from_secs(5)).await;
    std::fs::remove_dir_all(&c.nodes[0].data_dir).unwrap();
    c.start(0).unwrap();
    // Only this start's lines: the first run may have waited on the record too.
    let refused = eventually(Duration::from_secs(20), async || {
        c.log_since_start(0)
            .contains("consul kv delete muster/fenced/cluster-id")
    })
    .await;
    assert!(
        refused.is_some(),
        "the refusal names the key:\n{}",
        c.log_tail(0, 20)
    );
    assert!(cluster_status(&c, 0)["cluster"].is_null(), "no second cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_cleanup_forgets_nobody_while_the_agent_answers_500_and_a_killed_node_once_its_check_is_critical()
 {
    let fake = FakeConsul::start(1.0).await;
    let (_dir, mut c) = local_cluster_of(&node_exe!(), &layout(&fake.address, 3, "clean", CLEANUP));
    c.start_all().unwrap();
    c.wait_members(&[0, 1, 2], 3, FORM).await.unwrap();
    // The agent is down (every call fails): nobody is forgotten, even a killed node.
    fake.fault("/v1/", Some((500, "rpc error making call: No cluster leader")));
    c.kill(2).unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    for i in 0..2 {
        let members = cluster_status(&c, i)["members"].as_array().unwrap().len();
        assert_eq!(members, 3, "node {i} forgot nobody while the agent was down");
    }
    fake.fault("/v1/", None);
    // Back: node 3's check goes critical at its 2 s TTL, it drops out of the listing, and after
    // two absent rounds it is forgotten.
    let t = Instant::now();
    c.wait_members(&[0, 1], 2, FORM)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tail(0, 30)));
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "not before its check went critical: {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_forgets_a_killed_node_once_its_check_is_critical_and_nobody_while_the_agent_is_down() {
    let mut agent = ConsulAgent::start().await;
    let (_dir, mut c) = local_cluster_of(&node_exe!(), &layout(&agent.addr(), 3, "clean", CLEANUP));
    c.start_all().unwrap();
    c.wait_members(&[0, 1, 2], 3, FORM).await.unwrap();
    // Node 3 is killed: its check goes critical at its 2 s TTL, it leaves the listing, and after
    // two absent rounds it is forgotten.
    let t = Instant::now();
    c.kill(2).unwrap();
    c.wait_members(&[0, 1], 2, FORM)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tail(0, 30)));
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "not before its check went critical: {:?}",
        t.elapsed()
    );
    // The agent is down (every call is refused) and node 2 is killed: nobody is forgotten.
    agent.stop();
    c.kill(1).unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let members = cluster_status(&c, 0)["members"].as_array().unwrap().len();
    assert_eq!(members, 2, "node 1 forgot nobody while the agent was down");
    // The agent is back, having forgotten everything: node 1 registers again, node 2 cannot,
    // and is forgotten.
    agent.restart().await;
    c.wait_members(&[0], 1, FORM)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}\nagent:\n{}", c.log_tail(0, 30), agent.log_tail(20)));
    assert!(
        agent
            .service(&format!("muster:{}", c.nodes[0].name))
            .await
            .is_some(),
        "node 1 re-registered after the agent restart: {:?}",
        agent.services().await
    );
}
