//! Test helper: takes the k8s backend's formation Lease (renewing it), prints `locked`, and holds
//! it until it is killed. Usage: k8s-lock-holder KUBECONFIG NAMESPACE
use std::io::Write;
use std::time::Duration;

use muster::{FormationConfig, FormationLock, LockWait, NodeName};
use muster_backend_k8s::K8sBackend;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, kubeconfig, namespace] = args.as_slice() else {
        eprintln!("usage: k8s-lock-holder KUBECONFIG NAMESPACE");
        std::process::exit(2);
    };
    let text = format!(
        "[cluster_formation]\npeer_discovery_backend = \"k8s\"\n[cluster_formation.k8s]\napi = \"kubeconfig\"\n\
         kubeconfig = \"{kubeconfig}\"\nnamespace = \"{namespace}\"\nrequest_timeout = \"1s\"\nlease_duration = \"3s\"\n"
    );
    let me: NodeName = format!("muster@muster-9.muster-nodes.{namespace}.svc.cluster.local:4370")
        .parse()
        .expect("name");
    let backend =
        K8sBackend::from_config(&FormationConfig::from_toml(&text).expect("config"), &me).expect("backend");
    let guard = backend
        .lock(&me, &LockWait::within(Duration::from_secs(30)))
        .await
        .expect("lock");
    println!("locked");
    std::io::stdout().flush().expect("stdout");
    std::mem::forget(guard);
    std::future::pending::<()>().await;
}
