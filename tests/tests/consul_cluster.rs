//! End to end with the Consul backend: real `muster` processes against the fake agent.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use muster_node::launch::Layout;
use muster_tests::consul::FakeConsul;
use muster_tests::{cluster_ids, cluster_status, eventually, local_cluster_of, node_exe};

const FORM: Duration = Duration::from_secs(30);

fn layout(fake: &FakeConsul, nodes: usize, cluster: &str, extra: &str) -> Layout {
    Layout {
        nodes,
        backend: Some((
            "consul".into(),
            format!(
                "[cluster_formation.consul]\naddress = \"{}\"\ncluster_name = \"{cluster}\"\ncheck_ttl = \"2s\"\n\
                 lock_ttl = \"10s\"\nrequest_timeout = \"1s\"\nlock_timeout = \"5s\"\n",
                fake.address
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
    let fake = FakeConsul::start(1.0).await;
    for round in 1..=10 {
        let (_dir, mut c) = local_cluster_of(&node_exe!(), &layout(&fake, 5, &format!("round{round}"), ""));
        c.start_all().unwrap();
        if let Err(e) = c.wait_members(&[0, 1, 2, 3, 4], 5, FORM).await {
            panic!("round {round}: {e}\n{}", c.log_tail(0, 30));
        }
        assert_eq!(
            cluster_ids(&c, &[0, 1, 2, 3, 4]).len(),
            1,
            "round {round}: one cluster"
        );
        let (_, recorded) = fake
            .key(&format!("muster/round{round}/cluster-id"))
            .expect("the id is recorded");
        assert_eq!(BTreeSet::from([recorded]), cluster_ids(&c, &[0]), "round {round}");
        c.stop_all(Duration::from_secs(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_alone_refuses_to_form_a_second_cluster() {
    let fake = FakeConsul::start(1.0).await;
    let (_dir, mut c) = local_cluster_of(&node_exe!(), &layout(&fake, 3, "fenced", ""));
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
async fn cleanup_forgets_a_killed_node_once_its_check_is_critical_and_never_while_the_agent_is_down() {
    let fake = FakeConsul::start(1.0).await;
    let cleanup = "\n[cluster_formation.node_cleanup]\ninterval = \"1s\"\nonly_log_warning = false\nconsecutive_absences = 2\n";
    let (_dir, mut c) = local_cluster_of(&node_exe!(), &layout(&fake, 3, "clean", cleanup));
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
