//! The AWS backend against moto (a real EC2 / Auto Scaling / SSM emulator), a fake IMDSv2 per
//! simulated instance, and a fault proxy in front of moto for throttling, 5xx, missing
//! permissions, `pending` and listing lag. Credentials come through the standard chain from
//! each instance's fake IMDS role, as on EC2.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use muster_backend_aws::AwsBackend;
use muster_discovery_core::testing::conformance;
use muster_discovery_core::{Discovery, DiscoveryError, ErrorKind, FormationConfig, NodeName};
use muster_test_support::aws::{FakeImds, FaultProxy, Moto, Setup};
use muster_test_support::child;

const PORT: u16 = 4370;

fn name(ip: &str) -> NodeName {
    format!("muster@{ip}:{PORT}").parse().unwrap()
}

/// moto, the proxy in front of it, and setup clients that bypass the proxy.
struct Env {
    _moto: Moto,
    proxy: FaultProxy,
    setup: Setup,
}

async fn env() -> Env {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.url).await;
    let setup = Setup::new(&moto.url).await;
    Env {
        _moto: moto,
        proxy,
        setup,
    }
}

/// moto with autoscaling group `name` of `desired` instances in `cidr`: the members' ids and
/// private IPs, and a fake IMDS for the first member (the node under test).
struct Group {
    env: Env,
    ids: Vec<String>,
    ips: Vec<String>,
    imds: FakeImds,
}

async fn group(name: &str, desired: i32, cidr: &str) -> Group {
    let env = env().await;
    let subnet = env.setup.subnet(cidr).await;
    let ids = env.setup.group(name, desired, &subnet).await;
    let ips = env.setup.private_ips(&ids).await;
    let imds = FakeImds::start(&ids[0], &ips[0]).await;
    Group { env, ids, ips, imds }
}

/// A backend for node `local` through the proxy, credentials from `imds`'s role.
fn backend(env: &Env, imds: &FakeImds, local: &NodeName, table: &str) -> AwsBackend {
    let text = format!(
        "[cluster_formation]\npeer_discovery_backend = \"aws\"\n[cluster_formation.aws]\n\
         region = \"us-east-1\"\nendpoint_url = \"{}\"\nimds_endpoint = \"{}\"\nstartup_jitter = \"0s\"\n{table}",
        env.proxy.url, imds.url
    );
    AwsBackend::from_config(&FormationConfig::from_toml(&text).unwrap(), local).unwrap()
}

async fn list(b: &AwsBackend) -> Vec<String> {
    b.list()
        .await
        .unwrap_or_else(|e| panic!("listing failed: {e}"))
        .nodes
        .iter()
        .map(|n| n.to_string())
        .collect()
}

fn names(ips: &[String]) -> Vec<String> {
    let mut v: Vec<String> = ips.iter().map(|ip| name(ip).to_string()).collect();
    v.sort();
    v
}

fn list_err(r: Result<muster_discovery_core::DiscoveryResult, DiscoveryError>) -> DiscoveryError {
    match r {
        Ok(l) => panic!("expected an error, got a listing of {:?}", l.nodes),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_must_all_match_and_the_state_filter_applies() {
    let env = env().await;
    let both = env
        .setup
        .run(3, &[("cluster", "c1"), ("role", "broker")], None)
        .await;
    env.setup.run(1, &[("cluster", "c1")], None).await;
    env.setup
        .run(1, &[("cluster", "c2"), ("role", "broker")], None)
        .await;
    let ips = env.setup.private_ips(&both).await;
    let imds = FakeImds::start(&both[0], &ips[0]).await;
    let me = name(&ips[0]);
    let tags = "instance_tags = { cluster = \"c1\", role = \"broker\" }\n";
    let b = backend(&env, &imds, &me, tags);
    let l = b.list().await.unwrap();
    assert_eq!(
        l.nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        names(&ips),
        "both tags (AND)"
    );
    assert!(!l.authoritative, "an EC2 listing is never authoritative");
    assert_eq!(l.expected_size, None);
    assert!(!l.departures_known, "a tags listing never removes");
    // Stopped and terminated instances are not peers by default; instance_states widens it.
    env.setup
        .ec2
        .stop_instances()
        .instance_ids(&both[1])
        .send()
        .await
        .unwrap();
    env.setup.terminate(&both[2..]).await;
    assert_eq!(list(&b).await, names(&ips[..1]));
    let wide = backend(
        &env,
        &imds,
        &me,
        &format!("{tags}instance_states = [\"running\", \"stopped\"]\n"),
    );
    assert_eq!(list(&wide).await, names(&ips[..2]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_type_picks_the_field_that_names_a_peer() {
    let env = env().await;
    let ids = env.setup.run(2, &[("cluster", "addr")], None).await;
    let out = env
        .setup
        .ec2
        .describe_instances()
        .set_instance_ids(Some(ids.clone()))
        .send()
        .await
        .unwrap();
    let insts: Vec<_> = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .cloned()
        .collect();
    let imds = FakeImds::start(&ids[0], "10.0.0.1").await;
    for (t, field) in [
        (
            "private_ip",
            insts
                .iter()
                .map(|i| i.private_ip_address().unwrap().to_string())
                .collect::<Vec<_>>(),
        ),
        (
            "private_dns",
            insts
                .iter()
                .map(|i| i.private_dns_name().unwrap().to_string())
                .collect(),
        ),
        (
            "public_ip",
            insts
                .iter()
                .map(|i| i.public_ip_address().unwrap().to_string())
                .collect(),
        ),
        (
            "public_dns",
            insts
                .iter()
                .map(|i| i.public_dns_name().unwrap().to_string())
                .collect(),
        ),
    ] {
        let b = backend(
            &env,
            &imds,
            &name("10.0.0.1"),
            &format!("instance_tags = {{ cluster = \"addr\" }}\naddress_type = \"{t}\"\n"),
        );
        assert_eq!(list(&b).await, names(&field), "address_type = {t}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_follows_every_page() {
    let env = env().await;
    let ids = env.setup.run(105, &[("cluster", "big")], None).await;
    let imds = FakeImds::start(&ids[0], "10.0.0.1").await;
    let b = backend(
        &env,
        &imds,
        &name("10.0.0.1"),
        "instance_tags = { cluster = \"big\" }\n",
    );
    assert_eq!(list(&b).await.len(), 105);
    let pages = env
        .proxy
        .log()
        .iter()
        .filter(|a| *a == "ec2:DescribeInstances")
        .count();
    assert!(pages >= 2, "moto pages at 100 reservations: {pages} page(s) read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_mode_lists_the_members_with_the_desired_capacity_and_asks_for_its_own_group_once() {
    let Group { env, ids, ips, imds } = group("peers", 3, "10.70.1.0/24").await;
    let subnet = env.setup.subnet("10.70.2.0/24").await;
    env.setup.group("others", 2, &subnet).await;
    let b = backend(&env, &imds, &name(&ips[0]), "use_autoscaling_group = true\n");
    for _ in 0..3 {
        let l = b.list().await.unwrap();
        assert_eq!(
            l.nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            names(&ips)
        );
        assert_eq!(l.expected_size, Some(3), "the desired capacity");
        assert!(!l.authoritative);
        assert!(l.departures_known, "a member the group no longer lists has left");
    }
    let log = env.proxy.log();
    let lookups = log
        .iter()
        .filter(|a| *a == "autoscaling:DescribeAutoScalingInstances")
        .count();
    assert_eq!(lookups, 1, "the own group is looked up once: {log:?}");
    assert!(
        imds.requests()
            .contains(&"/latest/meta-data/instance-id".to_string()),
        "the instance id comes from IMDS"
    );
    // Scale-out: the new members and the new desired capacity.
    env.setup.scale("peers", 5).await;
    let now = env.setup.members("peers").await;
    let l = b.list().await.unwrap();
    assert_eq!(l.expected_size, Some(5));
    assert_eq!(
        l.nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        names(&env.setup.private_ips(&now).await)
    );
    // A terminated member leaves the listing (moto replaces it at once).
    let victim = now.iter().find(|i| **i != ids[0]).unwrap().clone();
    let victim_ip = env.setup.private_ips(std::slice::from_ref(&victim)).await;
    env.setup.terminate(std::slice::from_ref(&victim)).await;
    let after = list(&b).await;
    assert!(!after.contains(&name(&victim_ip[0]).to_string()), "{after:?}");
    assert_eq!(after.len(), 5, "with its replacement");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_mode_tags_filter_the_members_and_the_overrides_replace_the_lookups() {
    let Group { env, ids, ips, imds } = group("g1", 3, "10.71.1.0/24").await;
    env.setup
        .ec2
        .create_tags()
        .resources(&ids[0])
        .resources(&ids[1])
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("muster")
                .value("yes")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let tagged = backend(
        &env,
        &imds,
        &name(&ips[0]),
        "use_autoscaling_group = true\ninstance_tags = { muster = \"yes\" }\n",
    );
    assert_eq!(list(&tagged).await, names(&ips[..2]), "tags AND group membership");
    // instance_id and asg_name, for a host outside EC2: no IMDS lookup, no group lookup.
    let id_lookups = || {
        imds.requests()
            .iter()
            .filter(|r| *r == "/latest/meta-data/instance-id")
            .count()
    };
    let asked = id_lookups();
    let by_id = backend(
        &env,
        &imds,
        &name(&ips[0]),
        &format!("use_autoscaling_group = true\ninstance_id = \"{}\"\n", ids[1]),
    );
    assert_eq!(list(&by_id).await, names(&ips));
    assert_eq!(id_lookups(), asked, "instance_id replaces the IMDS lookup");
    let lookups = || {
        env.proxy
            .log()
            .iter()
            .filter(|a| *a == "autoscaling:DescribeAutoScalingInstances")
            .count()
    };
    let before = lookups();
    let by_name = backend(
        &env,
        &imds,
        &name(&ips[0]),
        "use_autoscaling_group = true\nasg_name = \"g1\"\n",
    );
    assert_eq!(list(&by_name).await, names(&ips));
    assert_eq!(lookups(), before, "asg_name needs no group lookup");
    let missing = backend(
        &env,
        &imds,
        &name(&ips[0]),
        "use_autoscaling_group = true\nasg_name = \"nope\"\n",
    );
    let e = list_err(missing.list().await);
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert!(
        e.to_string().contains("autoscaling group nope does not exist"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_outside_any_group_is_told_so() {
    let env = env().await;
    let ids = env.setup.run(1, &[("cluster", "lone")], None).await;
    let imds = FakeImds::start(&ids[0], "10.0.0.9").await;
    let b = backend(&env, &imds, &name("10.0.0.9"), "use_autoscaling_group = true\n");
    let e = list_err(b.list().await);
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    let text = e.to_string();
    assert!(
        text.contains(&format!("instance {} is not in any autoscaling group", ids[0])),
        "{text}"
    );
    assert!(text.contains("asg_name"), "says what to do: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_instances_count_by_default_and_lagging_ones_are_missing_not_an_error() {
    let env = env().await;
    let ids = env.setup.run(3, &[("cluster", "pend")], None).await;
    let ips = env.setup.private_ips(&ids).await;
    let imds = FakeImds::start(&ids[0], &ips[0]).await;
    env.proxy.set(|f| {
        f.pending.insert(ids[1].clone());
    });
    let tags = "instance_tags = { cluster = \"pend\" }\n";
    let b = backend(&env, &imds, &name(&ips[0]), tags);
    assert_eq!(list(&b).await, names(&ips), "pending peers are listed");
    let running = backend(
        &env,
        &imds,
        &name(&ips[0]),
        &format!("{tags}instance_states = [\"running\"]\n"),
    );
    let mut want = vec![ips[0].clone(), ips[2].clone()];
    want.sort();
    assert_eq!(list(&running).await, names(&want), "running only");
    // EC2 has not shown the third instance to this caller yet.
    env.proxy.set(|f| {
        f.pending.clear();
        f.hidden.insert(ids[2].clone());
    });
    assert_eq!(list(&b).await, names(&ips[..2]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_5xx_are_retried_then_temporary_errors() {
    let env = env().await;
    let ids = env.setup.run(2, &[("cluster", "thr")], None).await;
    let ips = env.setup.private_ips(&ids).await;
    let imds = FakeImds::start(&ids[0], &ips[0]).await;
    let tags = "instance_tags = { cluster = \"thr\" }\n";
    let b = backend(&env, &imds, &name(&ips[0]), tags);
    assert_eq!(list(&b).await, names(&ips));
    let calls = || {
        env.proxy
            .log()
            .iter()
            .filter(|a| *a == "ec2:DescribeInstances")
            .count()
    };
    // Two throttled answers, then success: the SDK's retry absorbs them.
    let before = calls();
    env.proxy.set(|f| f.throttle = 2);
    assert_eq!(list(&b).await, names(&ips));
    assert_eq!(calls() - before, 3, "two throttled attempts and one that passed");
    // More than max_attempts: a temporary error that says throttled, never an empty list.
    env.proxy.set(|f| f.throttle = 100);
    let e = list_err(b.list().await);
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert!(e.is_temporary());
    assert!(
        e.to_string().contains("throttled by AWS (RequestLimitExceeded"),
        "{e}"
    );
    env.proxy.set(|f| {
        f.throttle = 0;
        f.errors_500 = 100;
    });
    let e = list_err(b.list().await);
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert!(e.is_temporary());
    assert!(e.to_string().contains("HTTP 500"), "{e}");
    // max_attempts = 1: the first throttled answer is the error.
    env.proxy.set(|f| {
        f.errors_500 = 0;
        f.throttle = 1;
    });
    let once = backend(&env, &imds, &name(&ips[0]), &format!("{tags}max_attempts = 1\n"));
    assert!(once.list().await.is_err(), "no retry with max_attempts = 1");
    assert_eq!(list(&once).await, names(&ips));
    // request_timeout bounds a call that hangs.
    env.proxy.set(|f| f.delay = Some(Duration::from_secs(5)));
    let quick = backend(
        &env,
        &imds,
        &name(&ips[0]),
        &format!("{tags}request_timeout = \"1s\"\n"),
    );
    let started = Instant::now();
    let e = list_err(quick.list().await);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert!(e.to_string().contains("timed out"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_permissions_name_the_iam_action_to_grant() {
    let Group { env, ips, imds, .. } = group("perm", 2, "10.72.1.0/24").await;
    for (action, iam) in [
        (
            "DescribeAutoScalingInstances",
            "autoscaling:DescribeAutoScalingInstances",
        ),
        (
            "DescribeAutoScalingGroups",
            "autoscaling:DescribeAutoScalingGroups",
        ),
        ("DescribeInstances", "ec2:DescribeInstances"),
    ] {
        env.proxy.set(|f| {
            f.denied = BTreeSet::from([action.to_string()]);
        });
        let b = backend(&env, &imds, &name(&ips[0]), "use_autoscaling_group = true\n");
        let e = list_err(b.list().await);
        assert_eq!(e.kind, ErrorKind::PermissionDenied, "{action}: {e}");
        assert!(!e.is_temporary(), "{e}");
        let text = e.to_string();
        assert!(
            text.contains(&format!("grant {iam} to the instance's role")),
            "{text}"
        );
        assert!(text.contains(&format!("\"Action\": [\"{iam}\"]")), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_and_credentials_come_from_imds_and_its_failures_say_what_to_fix() {
    assert!(
        std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none(),
        "run this test without AWS_REGION/AWS_DEFAULT_REGION: it checks the region from IMDS"
    );
    let env = env().await;
    // Instances in eu-west-1: found only if the region came from IMDS.
    let eu = {
        let c = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("eu-west-1"))
            .endpoint_url(&env._moto.url)
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                "testing", "testing", None, None, "t",
            ))
            .load()
            .await;
        aws_sdk_ec2::Client::new(&c)
    };
    let image = eu
        .describe_images()
        .send()
        .await
        .unwrap()
        .images()
        .first()
        .and_then(|i| i.image_id())
        .unwrap()
        .to_string();
    let tag = aws_sdk_ec2::types::TagSpecification::builder()
        .resource_type(aws_sdk_ec2::types::ResourceType::Instance)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("cluster")
                .value("eu")
                .build(),
        )
        .build();
    let out = eu
        .run_instances()
        .image_id(image)
        .min_count(2)
        .max_count(2)
        .tag_specifications(tag)
        .send()
        .await
        .unwrap();
    let mut ips: Vec<String> = out
        .instances()
        .iter()
        .map(|i| i.private_ip_address().unwrap().to_string())
        .collect();
    ips.sort();
    let imds = FakeImds::start("i-0123456789abcdef0", &ips[0]).await;
    imds.set(|s| s.region = "eu-west-1".into());
    let table = |extra: &str| {
        format!(
            "[cluster_formation]\npeer_discovery_backend = \"aws\"\n[cluster_formation.aws]\n\
             endpoint_url = \"{}\"\nimds_endpoint = \"{}\"\nstartup_jitter = \"0s\"\ninstance_tags = {{ cluster = \"eu\" }}\n{extra}",
            env.proxy.url, imds.url
        )
    };
    let at = |extra: &str| {
        AwsBackend::from_config(
            &FormationConfig::from_toml(&table(extra)).unwrap(),
            &name(&ips[0]),
        )
        .unwrap()
    };
    assert_eq!(list(&at("")).await, names(&ips), "region eu-west-1 from IMDS");
    let reqs = imds.requests();
    assert!(
        reqs.contains(&"/latest/meta-data/placement/region".to_string()),
        "{reqs:?}"
    );
    assert!(
        reqs.iter()
            .any(|r| r == "/latest/meta-data/iam/security-credentials/muster-node"),
        "the role's credentials: {reqs:?}"
    );
    // No instance profile: the credential chain's failure is a configuration error that says
    // how to provide credentials.
    imds.set(|s| s.role = None);
    let e = list_err(at("").list().await);
    assert_eq!(e.kind, ErrorKind::Misconfigured, "{e}");
    assert!(e.to_string().contains("instance profile (IAM role)"), "{e}");
    imds.set(|s| s.role = Some("muster-node".into()));
    // IMDSv2 behind hop limit 1: the token PUT never answers. Without a region the backend says
    // so within seconds and names the hop limit.
    imds.set(|s| s.hang_token = true);
    let started = Instant::now();
    let e = list_err(at("").list().await);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(e.kind, ErrorKind::Misconfigured, "{e}");
    let text = e.to_string();
    assert!(text.contains("no region"), "{text}");
    assert!(text.contains("HttpPutResponseHopLimit to 2"), "{text}");
    // The same with a token response that lacks its TTL header (moto's own IMDS).
    imds.set(|s| {
        s.hang_token = false;
        s.no_ttl = true;
    });
    let e = list_err(at("").list().await);
    assert!(e.to_string().contains("no region"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_records_one_cluster_id_in_ssm_and_a_listing_reports_it() {
    use muster_discovery_core::{ClaimError, ClusterId};
    let Group { env, ips, imds, .. } = group("fenced", 2, "10.73.1.0/24").await;
    let off = backend(&env, &imds, &name(&ips[0]), "use_autoscaling_group = true\n");
    assert!(off.fencing().is_none(), "fencing is off unless asked for");
    off.list().await.unwrap();
    assert!(
        !env.proxy.log().iter().any(|a| a.starts_with("ssm:")),
        "no SSM call without fencing"
    );
    let b = backend(
        &env,
        &imds,
        &name(&ips[0]),
        "use_autoscaling_group = true\nfencing = true\n",
    );
    let f = b.fencing().expect("fencing = true");
    assert_eq!(b.list().await.unwrap().recorded_cluster, None);
    let id = ClusterId("c-one".into());
    f.claim(&id, None).await.unwrap();
    f.claim(&id, None).await.expect("the same id again is idempotent");
    match f.claim(&ClusterId("c-two".into()), None).await {
        Err(ClaimError::Taken(theirs)) => assert_eq!(theirs, id),
        other => panic!("a second id must be refused: {other:?}"),
    }
    let l = b.list().await.unwrap();
    assert_eq!(l.recorded_cluster, Some(id.clone()));
    assert_eq!(
        l.fencing_hint.as_deref(),
        Some(
            "to re-bootstrap from scratch (every member's data is gone): aws ssm delete-parameter \
             --name /muster/fenced/cluster-id"
        )
    );
    let stored = env
        .setup
        .ssm
        .get_parameter()
        .name("/muster/fenced/cluster-id")
        .send()
        .await
        .unwrap();
    assert_eq!(stored.parameter().and_then(|p| p.value()), Some("c-one"));
    // ssm_parameter names another parameter; a denied PutParameter names the action.
    let other = backend(
        &env,
        &imds,
        &name(&ips[0]),
        "use_autoscaling_group = true\nfencing = true\nssm_parameter = \"/prod/muster-id\"\n",
    );
    assert_eq!(other.list().await.unwrap().recorded_cluster, None);
    env.proxy.set(|f| {
        f.denied.insert("PutParameter".into());
    });
    match other.fencing().unwrap().claim(&id, None).await {
        Err(ClaimError::Backend(e)) => {
            assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");
            assert!(e.to_string().contains("grant ssm:PutParameter"), "{e}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_listing_waits_its_share_of_startup_jitter() {
    let env = env().await;
    let ids = env.setup.run(1, &[("cluster", "jit")], None).await;
    let imds = FakeImds::start(&ids[0], "10.0.0.1").await;
    let jitter = Duration::from_secs(2);
    // A name whose share is at least a quarter of the window, so the wait is measurable.
    let me = (1..255)
        .map(|i| name(&format!("10.9.0.{i}")))
        .find(|n| muster_backend_aws::startup_delay(n, jitter) >= jitter / 4)
        .unwrap();
    let delay = muster_backend_aws::startup_delay(&me, jitter);
    assert!(delay < jitter);
    let text = format!(
        "[cluster_formation]\npeer_discovery_backend = \"aws\"\n[cluster_formation.aws]\nregion = \"us-east-1\"\n\
         endpoint_url = \"{}\"\nimds_endpoint = \"{}\"\nstartup_jitter = \"2s\"\ninstance_tags = {{ cluster = \"jit\" }}\n",
        env.proxy.url, imds.url
    );
    let b = AwsBackend::from_config(&FormationConfig::from_toml(&text).unwrap(), &me).unwrap();
    let started = Instant::now();
    b.list().await.unwrap();
    assert!(started.elapsed() >= delay, "first listing after {delay:?}");
    let again = Instant::now();
    b.list().await.unwrap();
    assert!(again.elapsed() < delay, "only the first listing waits");
}

/// The conformance suite against moto: a tags listing of three instances, fencing on, and a
/// backend pointed at a port where nothing listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_backend_passes_the_conformance_suite() {
    let env = Arc::new(env().await);
    let ids = env.setup.run(3, &[("cluster", "conf")], None).await;
    let ips = env.setup.private_ips(&ids).await;
    let imds = Arc::new(FakeImds::start(&ids[0], &ips[0]).await);
    let nodes: Vec<NodeName> = ips.iter().map(|ip| name(ip)).collect();
    let table = "instance_tags = { cluster = \"conf\" }\nfencing = true\nssm_parameter = \"/muster/conf/cluster-id\"\n";
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let text = format!(
            "[cluster_formation]\npeer_discovery_backend = \"aws\"\n[cluster_formation.aws]\nregion = \"us-east-1\"\n\
             endpoint_url = \"http://127.0.0.1:{port}\"\nimds_endpoint = \"{}\"\nstartup_jitter = \"0s\"\n\
             request_timeout = \"2s\"\nmax_attempts = 1\n{table}",
            imds.url
        );
        AwsBackend::from_config(&FormationConfig::from_toml(&text).unwrap(), &nodes[0]).unwrap()
    };
    let (e, i) = (env.clone(), imds.clone());
    let subject = conformance::Subject::new(nodes, move |n| {
        Arc::new(backend(&e, &i, n, table)) as Arc<dyn Discovery>
    })
    .with_unreachable(Arc::new(dead));
    conformance::run(&subject).await;
}

/// `profile`: region and credentials from a shared-config profile (the files are named by
/// process-wide variables, so the listing runs in a process of its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_supplies_region_and_credentials() {
    let env = env().await;
    let ids = env.setup.run(2, &[("cluster", "prof")], None).await;
    let ips = env.setup.private_ips(&ids).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let creds = dir.path().join("credentials");
    std::fs::write(&config, "[profile muster-test]\nregion = us-east-1\n").unwrap();
    std::fs::write(
        &creds,
        "[muster-test]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
    )
    .unwrap();
    // IMDS on a port where nothing listens: neither region nor credentials can come from it.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("http://127.0.0.1:{port}")
    };
    let run = |profile: &str| {
        let file = dir.path().join(format!("muster{}.toml", profile.len()));
        std::fs::write(
            &file,
            format!(
                "[cluster_formation]\npeer_discovery_backend = \"aws\"\n[cluster_formation.aws]\n\
                 endpoint_url = \"{}\"\nimds_endpoint = \"{dead}\"\nstartup_jitter = \"0s\"\n\
                 instance_tags = {{ cluster = \"prof\" }}\n{profile}",
                env.proxy.url
            ),
        )
        .unwrap();
        let out = child::command("list_once")
            .env(child::LIST_ENV, format!("{} {}", file.display(), name(&ips[0])))
            .env("AWS_CONFIG_FILE", &config)
            .env("AWS_SHARED_CREDENTIALS_FILE", &creds)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_REGION")
            .env_remove("AWS_DEFAULT_REGION")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = run("profile = \"muster-test\"\n");
    let mut got = child::lines(&listed, "listed: ");
    got.sort();
    assert_eq!(got, names(&ips), "{listed}");
    let without = run("");
    let error = child::lines(&without, "error: ").join("\n");
    assert!(error.contains("no region"), "{without}");
}

/// A child process of the tests above that list in an environment of their own.
#[tokio::test]
#[ignore = "a child process of profile_supplies_region_and_credentials, run by it"]
async fn list_once() {
    child::list_once(&muster_backend_aws::FACTORY).await;
}
