//! The fake API server behaves like the real one where kube (and so the backend) can tell:
//! watches as JSON lines that kube decodes (ADDED / MODIFIED / DELETED / BOOKMARK), 410 Expired
//! as an ERROR event for a compacted start version, list items without `kind`, label selectors,
//! and the write semantics (409 AlreadyExists / Conflict, 422 for a Lease without a version).

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{ListParams, PostParams, WatchEvent, WatchParams};
use kube::{Api, Client};
use muster_test_support::k8s::FakeApi;
use serde_json::json;

async fn client(fake: &FakeApi) -> Client {
    let kc = kube::config::Kubeconfig::read_from(fake.kubeconfig("t")).unwrap();
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .unwrap();
    cfg.default_retry = false;
    Client::try_from(cfg).unwrap()
}

fn cm(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_stream_changes_bookmarks_and_expire_compacted_versions() {
    let fake = FakeApi::start("t").await;
    let api: Api<ConfigMap> = Api::namespaced(client(&fake).await, "ns");
    let first = api
        .create(&PostParams::default(), &cm("a", json!({"app": "x"})))
        .await
        .unwrap();
    let rv = first.metadata.resource_version.clone().unwrap();
    let params = WatchParams::default().labels("app=x").timeout(10);
    let mut events = api.watch(&params, &rv).await.unwrap().boxed();
    // Changes after `rv`: a modification, another object (filtered by label), a deletion.
    let mut changed = first.clone();
    changed.data = Some([("k".to_string(), "w".to_string())].into());
    api.replace("a", &PostParams::default(), &changed).await.unwrap();
    api.create(&PostParams::default(), &cm("other", json!({"app": "y"})))
        .await
        .unwrap();
    api.delete("a", &Default::default()).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(5), events.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(WatchEvent::Modified(c)) => seen.push(format!("modified {}", c.metadata.name.unwrap())),
            Some(WatchEvent::Deleted(c)) => seen.push(format!("deleted {}", c.metadata.name.unwrap())),
            Some(WatchEvent::Bookmark(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        seen,
        ["modified a", "deleted a"],
        "the label selector filters the watch"
    );
    // Bookmarks carry the current version.
    let mut bookmarked = false;
    for _ in 0..5 {
        if let Ok(Ok(Some(WatchEvent::Bookmark(b)))) =
            tokio::time::timeout(Duration::from_secs(3), events.try_next()).await
        {
            assert!(!b.metadata.resource_version.is_empty());
            bookmarked = true;
            break;
        }
    }
    assert!(bookmarked, "kube asked for bookmarks and got them");
    // Compacted: a watch from the old version gets the 410 ERROR event, as from a real server.
    fake.compact();
    let mut expired = api.watch(&params, &rv).await.unwrap().boxed();
    match tokio::time::timeout(Duration::from_secs(5), expired.next())
        .await
        .unwrap()
    {
        Some(Ok(WatchEvent::Error(e))) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
        }
        other => panic!("expected the expired ERROR event, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_the_api_servers_rules_and_lists_select_by_label_and_field() {
    let fake = FakeApi::start("t").await;
    let c = client(&fake).await;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "ns");
    let made = cms
        .create(&PostParams::default(), &cm("a", json!({})))
        .await
        .unwrap();
    let again = cms
        .create(&PostParams::default(), &cm("a", json!({})))
        .await
        .unwrap_err();
    assert!(
        matches!(&again, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{again:?}"
    );
    let mut stale = made.clone();
    cms.replace("a", &PostParams::default(), &made).await.unwrap();
    stale.data = Some([("k".to_string(), "stale".to_string())].into());
    let conflict = cms
        .replace("a", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(&conflict, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"),
        "{conflict:?}"
    );
    // A ConfigMap without a version is overwritten blindly; a Lease is refused (422).
    let mut blind = stale.clone();
    blind.metadata.resource_version = None;
    cms.replace("a", &PostParams::default(), &blind).await.unwrap();
    let leases: Api<Lease> = Api::namespaced(c.clone(), "ns");
    let lease: Lease =
        serde_json::from_value(json!({"metadata": {"name": "l"}, "spec": {"holderIdentity": "x"}})).unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();
    let e = leases
        .replace("l", &PostParams::default(), &lease)
        .await
        .unwrap_err();
    assert!(matches!(&e, kube::Error::Api(s) if s.code == 422), "{e:?}");
    // Lists: items without kind (k8s-openapi accepts both), label and field selectors.
    fake.pod("ns", "web-0", "10.0.0.1");
    fake.pod("ns", "web-1", "10.0.0.2");
    fake.pod("ns", "db-0", "10.0.0.3");
    let pods: Api<Pod> = Api::namespaced(c, "ns");
    let names = |l: kube::core::ObjectList<Pod>| {
        l.items
            .into_iter()
            .map(|p| p.metadata.name.unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(pods.list(&ListParams::default().labels("app=web")).await.unwrap()),
        ["web-0", "web-1"]
    );
    assert_eq!(
        names(
            pods.list(&ListParams::default().labels("app!=web"))
                .await
                .unwrap()
        ),
        ["db-0"]
    );
    assert_eq!(
        names(
            pods.list(&ListParams::default().fields("metadata.name=web-1"))
                .await
                .unwrap()
        ),
        ["web-1"]
    );
    let bad = pods
        .list(&ListParams::default().fields("spec.nope=1"))
        .await
        .unwrap_err();
    assert!(matches!(&bad, kube::Error::Api(s) if s.code == 400), "{bad:?}");
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.contains("labelSelector=app%3Dweb") || r.contains("labelSelector=app=web"))
    );
}
