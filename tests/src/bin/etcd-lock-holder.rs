//! Test helper: takes the etcd backend's formation lock, prints `locked`, and holds it until it is
//! killed. Usage: etcd-lock-holder ENDPOINT KEY_PREFIX LOCK_TIMEOUT_SECS
use std::io::Write;
use std::time::Duration;

use muster::{FormationLock, LockWait, NodeName};
use muster_backend_etcd::{EtcdBackend, EtcdSettings};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, endpoint, prefix, ttl] = args.as_slice() else {
        eprintln!("usage: etcd-lock-holder ENDPOINT KEY_PREFIX LOCK_TIMEOUT_SECS");
        std::process::exit(2);
    };
    let settings = EtcdSettings {
        endpoints: vec![endpoint.clone()],
        key_prefix: prefix.clone(),
        lock_timeout: Duration::from_secs(ttl.parse().expect("seconds")),
        ..EtcdSettings::default()
    };
    let me: NodeName = "holder@127.0.0.1".parse().expect("name");
    let backend = EtcdBackend::new(settings, &me);
    let guard = backend
        .lock(&me, &LockWait::within(Duration::from_secs(30)))
        .await
        .expect("lock");
    println!("locked");
    std::io::stdout().flush().expect("stdout");
    std::mem::forget(guard);
    std::future::pending::<()>().await;
}
