//! The runtime's public API in one process: three `Cluster`s on loopback form one cluster, see
//! each other up with their metadata, exchange application requests, notice a member that stops,
//! vanishes or leaves, and a node restarts on its data dir in the same process.

use std::time::Duration;

use muster::{FormationConfig, FormationOutcome, NodeName};
use muster_cli::launch::Ports;
use muster_node::{AppError, Cluster, Cookie, Event, MemberStatus, Members, apps};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(30);

fn formation(nodes: &[NodeName]) -> FormationConfig {
    let list = nodes
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    FormationConfig::from_toml(&format!(
        "[cluster_formation]\ndiscovery_retry_interval = \"100ms\"\nprobe_timeout = \"250ms\"\n\
         stable_margin = \"1s\"\n[cluster_formation.classic_config]\nnodes = [{list}]\n"
    ))
    .expect("a valid formation config")
}

struct Setup {
    names: Vec<NodeName>,
    dir: tempfile::TempDir,
    cookie: Cookie,
}

impl Setup {
    fn new(n: usize) -> Setup {
        let mut ports = Ports::new();
        let names = (0..n)
            .map(|i| {
                format!("app{i}@127.0.0.1:{}", ports.take().unwrap())
                    .parse()
                    .unwrap()
            })
            .collect();
        Setup {
            names,
            dir: tempfile::tempdir().unwrap(),
            cookie: Cookie::random().unwrap(),
        }
    }

    fn builder(&self, i: usize) -> muster_node::ClusterBuilder {
        Cluster::builder(
            self.names[i].clone(),
            self.dir.path().join(format!("data{i}")),
            self.cookie.clone(),
        )
        .formation(formation(&self.names))
        .metadata("index", i.to_string())
    }
}

/// Waits until `members` satisfies `ok`.
async fn until(members: &mut watch::Receiver<Members>, what: &str, ok: impl Fn(&Members) -> bool) {
    let waited = tokio::time::timeout(WAIT, members.wait_for(|m| ok(m)))
        .await
        .map(|r| r.is_ok());
    assert!(
        waited == Ok(true),
        "timed out waiting until {what}; members: {:?}",
        members.borrow()
    );
}

fn status(m: &Members, name: &NodeName) -> Option<MemberStatus> {
    m.get(name).map(|i| i.status)
}

/// The next event matching `pick`, skipping others.
async fn next_event(events: &mut muster_node::Events, what: &str, pick: impl Fn(&Event) -> bool) -> Event {
    let found = tokio::time::timeout(WAIT, async {
        loop {
            match events.next().await {
                Some(e) if pick(&e) => return e,
                Some(_) => {}
                None => panic!("events ended before {what}"),
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no event: {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_embedded_nodes_form_watch_each_other_talk_and_stop_cleanly() {
    let s = Setup::new(3);
    let echo = apps::handler(|from: NodeName, body: Vec<u8>| async move {
        if body == b"refuse" {
            return Err(format!("not from {from}"));
        }
        Ok(body.to_ascii_uppercase())
    });
    let (a, b, c) = tokio::join!(
        s.builder(0).start(),
        s.builder(1).start(),
        s.builder(2).on_request(echo.clone()).start()
    );
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    let outcomes = [
        a.formed(WAIT).await.unwrap(),
        b.formed(WAIT).await.unwrap(),
        c.formed(WAIT).await.unwrap(),
    ];
    let new = outcomes
        .iter()
        .filter(|o| matches!(o, FormationOutcome::NewCluster { .. }))
        .count();
    assert_eq!(new, 1, "exactly one node forms: {outcomes:?}");
    let cluster = outcomes[0].cluster().clone();
    assert!(outcomes.iter().all(|o| *o.cluster() == cluster), "{outcomes:?}");

    // Everyone up, with everyone's metadata.
    let mut seen_by_a = a.members();
    until(
        &mut seen_by_a,
        "a sees three members up with their metadata",
        |m| {
            m.members.len() == 3
                && m.up().count() == 3
                && m.members
                    .iter()
                    .enumerate()
                    .all(|(i, info)| info.metadata.get("index").map(String::as_str) == Some(&*i.to_string()))
        },
    )
    .await;

    // A metadata change reaches the others as an event.
    let mut b_events = b.events();
    a.set_metadata("port", Some("7001")).unwrap();
    let changed = next_event(
        &mut b_events,
        "a's metadata change",
        |e| matches!(e, Event::MetadataChanged { member } if member.name == s.names[0]),
    )
    .await;
    let Event::MetadataChanged { member } = changed else {
        unreachable!()
    };
    assert_eq!(member.metadata.get("port").map(String::as_str), Some("7001"));
    assert!(matches!(
        a.set_metadata("big", Some(&"x".repeat(5000))),
        Err(muster_node::MetadataError::TooLarge { .. })
    ));

    // Application requests: answered by c's handler, refusals typed.
    let answer = a.request(&s.names[2], b"hello".to_vec(), WAIT).await.unwrap();
    assert_eq!(answer, b"HELLO");
    match a.request(&s.names[2], b"refuse".to_vec(), WAIT).await {
        Err(AppError::Refused { message, .. }) => assert!(message.contains("not from app0"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        a.request(&s.names[1], b"x".to_vec(), WAIT).await,
        Err(AppError::Refused { .. })
    ));
    let stranger: NodeName = "stranger@127.0.0.1:1".parse().unwrap();
    assert!(matches!(
        a.request(&stranger, b"x".to_vec(), WAIT).await,
        Err(AppError::NotMember(_))
    ));

    // c stops gracefully: the others see it stopped, not gone; it restarts on its data dir in
    // this process (the lock was released) and comes back up.
    c.shutdown().await;
    until(&mut seen_by_a, "a sees c stopped", |m| {
        status(m, &s.names[2]) == Some(MemberStatus::Stopped)
    })
    .await;
    // Stopped, not unreachable: it said so, and stays so while it is down.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        status(&a.members().borrow(), &s.names[2]),
        Some(MemberStatus::Stopped)
    );
    let c = s
        .builder(2)
        .on_request(echo)
        .start()
        .await
        .expect("a restart on the same data dir");
    assert!(matches!(
        c.formed(WAIT).await.unwrap(),
        FormationOutcome::Rejoined { .. }
    ));
    until(&mut seen_by_a, "a sees c up again", |m| {
        status(m, &s.names[2]) == Some(MemberStatus::Up)
    })
    .await;

    // c vanishes without a word (its tasks and connections end): unreachable, still a member.
    drop(c);
    until(&mut seen_by_a, "a sees c unreachable", |m| {
        status(m, &s.names[2]) == Some(MemberStatus::Unreachable)
    })
    .await;

    // b leaves for good: a sees it leave, not forgotten.
    let mut a_events = a.events();
    b.leave().await.unwrap();
    let left = next_event(&mut a_events, "b leaves", |e| {
        matches!(e, Event::Left { .. } | Event::Forgotten { .. })
    })
    .await;
    assert_eq!(
        left,
        Event::Left {
            name: s.names[1].clone()
        }
    );
    until(&mut seen_by_a, "a no longer lists b", |m| {
        m.get(&s.names[1]).is_none()
    })
    .await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_on_a_data_dir_in_use_is_refused_with_the_path() {
    let s = Setup::new(1);
    let a = s.builder(0).start().await.unwrap();
    let again = s.builder(0).start().await;
    let e = again.expect_err("the data dir is in use").to_string();
    assert!(e.contains("data0") && e.contains("in use"), "{e}");
    a.shutdown().await;
    s.builder(0)
        .start()
        .await
        .expect("free after shutdown")
        .shutdown()
        .await;
}

/// The bootstrap hook's crash window, in process: the node that forms runs `on_form` and is
/// killed while the hook runs (its tasks end mid-hook), or the hook fails. The others form
/// nothing meanwhile; its restart on the same data dir completes the same cluster, running the
/// hook again for it, and the others join; the founder is recorded.
async fn an_interrupted_on_form_hook_completes_that_cluster_at_restart(fail: bool) {
    use std::sync::{Arc, Mutex};
    let s = Setup::new(3);
    let calls: Arc<Mutex<Vec<(usize, muster::ClusterId)>>> = Arc::default();
    let hooked = |i: usize, interrupt: bool| {
        let calls = calls.clone();
        s.builder(i).on_form(move |id| {
            let calls = calls.clone();
            async move {
                calls.lock().unwrap().push((i, id));
                match (interrupt, fail) {
                    (true, true) => Err("the service's bootstrap failed".into()),
                    (true, false) => std::future::pending().await,
                    (false, _) => Ok(()),
                }
            }
        })
    };
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(Some(hooked(i, true).start().await.unwrap()));
    }
    let (seed, cluster) = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(first) = calls.lock().unwrap().first().cloned() {
                return first;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a node runs its on_form hook");
    let interrupted = nodes[seed].take().unwrap();
    if fail {
        match interrupted.formed(WAIT).await {
            Err(muster_node::FormedError::Failed(why)) => {
                assert!(
                    why.contains("bootstrap failed") && why.contains(&cluster.to_string()),
                    "{why}"
                )
            }
            other => panic!("a failed hook fails formation: {other:?}"),
        }
        interrupted.shutdown().await;
    } else {
        drop(interrupted);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for n in nodes.iter().flatten() {
        assert!(
            matches!(
                n.formed(Duration::ZERO).await,
                Err(muster_node::FormedError::Timeout(_))
            ),
            "{} formed while the seed was down",
            n.name()
        );
    }
    let back = hooked(seed, false)
        .start()
        .await
        .expect("restart on the same data dir");
    assert_eq!(back.formed(WAIT).await.unwrap().cluster(), &cluster);
    for n in nodes.iter().flatten() {
        assert_eq!(n.formed(WAIT).await.unwrap().cluster(), &cluster);
    }
    let calls = calls.lock().unwrap().clone();
    assert!(calls.len() >= 2, "{calls:?}");
    assert!(
        calls.iter().all(|c| *c == (seed, cluster.clone())),
        "the hook ran only on the seed, only for one cluster: {calls:?}"
    );
    assert_eq!(back.node().state().founder.as_ref(), Some(&s.names[seed]));
    back.shutdown().await;
    for n in nodes.into_iter().flatten() {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_during_its_on_form_hook_completes_that_cluster_at_restart() {
    an_interrupted_on_form_hook_completes_that_cluster_at_restart(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_on_form_hook_fails_stops_and_completes_that_cluster_at_restart() {
    an_interrupted_on_form_hook_completes_that_cluster_at_restart(true).await;
}

/// A member that vanishes right after formation, before the others' detectors have started, is
/// reported unreachable; the two live members never report each other, though each has no helper
/// left to ask and heard nothing from the other during the warm-up, when nobody pings.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_lost_during_the_warm_up_never_makes_the_live_ones_unreachable() {
    let s = Setup::new(3);
    let (a, b, c) = tokio::join!(s.builder(0).start(), s.builder(1).start(), s.builder(2).start());
    let (a, b, c) = (a.unwrap(), b.unwrap(), c.unwrap());
    for node in [&a, &b, &c] {
        node.formed(WAIT).await.unwrap();
    }
    let mut events = [a.events(), b.events()];
    drop(c);
    // Warm-up, then suspicion, then a round trip: by then c is reported, and a false report of
    // a live member would have come before it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    for (i, events) in events.iter_mut().enumerate() {
        let mut unreachable = Vec::new();
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.next()).await {
            if let Event::Unreachable { member } = event {
                unreachable.push(member.name);
            }
        }
        assert_eq!(unreachable, [s.names[2].clone()], "node {i} reported unreachable");
    }
    a.shutdown().await;
    b.shutdown().await;
}
