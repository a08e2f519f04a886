//! End to end on "EC2": an autoscaling group in moto whose instances' private IPs (10.77.x.y,
//! sequential in an explicit subnet) are added to `lo` inside this test's private network
//! namespace, one real `muster` process per instance listening on its instance's IP, each with
//! its own fake IMDSv2 (instance id, region, role credentials) named by the process's own
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT`, as on an instance. The group's desired capacity is the
//! only size hint the nodes get.

use std::time::Duration;

use muster::NodeName;
use muster_cli::launch::{Layout, LocalCluster, Ports};
use muster_test_support::aws::{FakeImds, FaultProxy, Moto, Setup, add_loopback_address};
use muster_tests::{cluster_ids, local_cluster_of, node_exe};

const FORM: Duration = Duration::from_secs(30);

struct Group {
    _moto: Moto,
    proxy: FaultProxy,
    setup: Setup,
    ids: Vec<String>,
    ips: Vec<String>,
}

/// moto, the proxy, and group `name` with `desired` instances in `cidr` (IPs on `lo`).
async fn group(name: &str, desired: i32, cidr: &str) -> Group {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.url).await;
    let setup = Setup::new(&moto.url).await;
    let subnet = setup.subnet(cidr).await;
    let ids = setup.group(name, desired, &subnet).await;
    let ips = setup.private_ips(&ids).await;
    for ip in &ips {
        add_loopback_address(ip);
    }
    Group {
        _moto: moto,
        proxy,
        setup,
        ids,
        ips,
    }
}

/// One node per `(ip, imds)`, every node with the same config (as from one launch template).
fn nodes(g: &Group, slots: &[(String, &FakeImds)], extra: &str) -> (tempfile::TempDir, LocalCluster) {
    let port = Ports::new().take().unwrap();
    let names = slots
        .iter()
        .map(|(ip, _)| {
            let n: NodeName = format!("muster@{ip}:{port}").parse().unwrap();
            (n, format!("{ip}:{port}").parse().unwrap())
        })
        .collect();
    let tables = format!(
        "[cluster_formation.aws]\nuse_autoscaling_group = true\nendpoint_url = \"{}\"\nstartup_jitter = \"300ms\"\n\
         request_timeout = \"3s\"\n",
        g.proxy.url
    );
    let layout = Layout {
        nodes: slots.len(),
        names: Some(names),
        backend: Some(("aws".into(), tables)),
        extra: extra.into(),
        ..Layout::default()
    };
    let (dir, mut c) = local_cluster_of(&node_exe!(), &layout);
    for (node, (_, imds)) in c.nodes.iter_mut().zip(slots) {
        node.env.extend([
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT".to_string(), imds.url.clone()),
            (
                "AWS_CONFIG_FILE".to_string(),
                "/nonexistent/muster-test".to_string(),
            ),
            (
                "AWS_SHARED_CREDENTIALS_FILE".to_string(),
                "/nonexistent/muster-test".to_string(),
            ),
        ]);
    }
    (dir, c)
}

async fn imds_for(g: &Group) -> Vec<FakeImds> {
    let mut v = Vec::new();
    for (id, ip) in g.ids.iter().zip(&g.ips) {
        v.push(FakeImds::start(id, ip).await);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_three_started_at_once_forms_one_cluster_ten_times() {
    let g = group("muster-e2e", 3, "10.77.1.0/24").await;
    let imds = imds_for(&g).await;
    let slots: Vec<(String, &FakeImds)> = g.ips.iter().cloned().zip(imds.iter()).collect();
    for round in 1..=10 {
        let (_dir, mut c) = nodes(&g, &slots, "");
        c.start_all().unwrap();
        if let Err(e) = c.wait_members(&[0, 1, 2], 3, FORM).await {
            panic!("round {round}: {e}\n{}", c.log_tail(0, 30));
        }
        assert_eq!(cluster_ids(&c, &[0, 1, 2]).len(), 1, "round {round}: one cluster");
        c.stop_all(Duration::from_secs(5)).await;
        // The role's credentials never reach a log.
        for i in 0..3 {
            let log = std::fs::read_to_string(&c.nodes[i].log).unwrap();
            assert!(
                !log.contains("imds-session-token"),
                "node {i} logged its session token"
            );
        }
    }
    // Each instance asked its own IMDS for its identity, region and role.
    for (i, m) in imds.iter().enumerate() {
        let reqs = m.requests();
        for path in [
            "/latest/meta-data/instance-id",
            "/latest/meta-data/placement/region",
            "/latest/meta-data/iam/security-credentials/muster-node",
        ] {
            assert!(
                reqs.iter().any(|r| r == path),
                "instance {i} did not read {path}: {reqs:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_instance_is_forgotten_and_a_scaled_out_one_joins() {
    let g = group("muster-scale", 3, "10.78.1.0/24").await;
    let mut imds = imds_for(&g).await;
    // moto hands out the subnet's addresses in order: the next instance gets the next one.
    let next_ip = {
        let last: Vec<u8> = g
            .ips
            .iter()
            .map(|ip| ip.rsplit('.').next().unwrap().parse().unwrap())
            .collect();
        format!("10.78.1.{}", last.iter().max().unwrap() + 1)
    };
    imds.push(FakeImds::start("i-00000000", &next_ip).await);
    let mut ips = g.ips.clone();
    ips.push(next_ip.clone());
    let slots: Vec<(String, &FakeImds)> = ips.iter().cloned().zip(imds.iter()).collect();
    let cleanup = "\n[cluster_formation.node_cleanup]\ninterval = \"1s\"\nonly_log_warning = false\nconsecutive_absences = 2\n";
    let (_dir, mut c) = nodes(&g, &slots, cleanup);
    for i in 0..3 {
        c.start(i).unwrap();
    }
    c.wait_members(&[0, 1, 2], 3, FORM).await.unwrap();
    let first = cluster_ids(&c, &[0, 1, 2]);
    assert_eq!(first.len(), 1);
    // Scale-in of one instance: the group no longer lists it, so cleanup forgets it.
    c.kill(2).unwrap();
    g.setup
        .asg
        .terminate_instance_in_auto_scaling_group()
        .instance_id(&g.ids[2])
        .should_decrement_desired_capacity(true)
        .send()
        .await
        .unwrap();
    c.wait_members(&[0, 1], 2, FORM)
        .await
        .unwrap_or_else(|e| panic!("the terminated instance is forgotten: {e}\n{}", c.log_tail(0, 30)));
    // Scale-out: the new instance's node joins the same cluster.
    g.setup.scale("muster-scale", 3).await;
    let members = g.setup.members("muster-scale").await;
    let new: Vec<String> = members.into_iter().filter(|m| !g.ids.contains(m)).collect();
    assert_eq!(new.len(), 1, "one instance launched");
    let got = g.setup.private_ips(&new).await;
    assert_eq!(
        got,
        std::slice::from_ref(&next_ip),
        "moto assigns addresses in order"
    );
    add_loopback_address(&next_ip);
    let id = new[0].clone();
    imds[3].set(|s| s.instance_id = id);
    c.start(3).unwrap();
    c.wait_members(&[0, 1, 3], 3, FORM)
        .await
        .unwrap_or_else(|e| panic!("the new instance joins: {e}\n{}", c.log_tail(3, 30)));
    assert_eq!(cluster_ids(&c, &[0, 1, 3]), first, "the same cluster");
    assert!(
        g.proxy
            .log()
            .iter()
            .any(|a| a == "autoscaling:DescribeAutoScalingGroups"),
        "the nodes went through the proxy"
    );
}
