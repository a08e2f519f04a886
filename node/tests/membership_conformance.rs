//! The `Membership` conformance suite against the runtime's own implementation: real stores in
//! temporary data dirs and the real peer protocol on loopback, one process.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use muster::testing::membership_conformance::{Harness, run};
use muster::{Membership, NodeName};
use muster_node::Cookie;
use muster_node::node::{Node, NodeMembership};
use muster_node::state::Store;
use tokio::task::JoinHandle;

struct Runtime {
    dir: tempfile::TempDir,
    cookie: Cookie,
    names: Vec<NodeName>,
    running: HashMap<usize, (Arc<Node>, Store, JoinHandle<()>)>,
}

impl Runtime {
    fn new() -> Runtime {
        let names = (0..3)
            .map(|i| {
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .unwrap()
                    .local_addr()
                    .unwrap()
                    .port();
                format!("r{i}@127.0.0.1:{port}").parse().unwrap()
            })
            .collect();
        Runtime {
            dir: tempfile::tempdir().unwrap(),
            cookie: Cookie::random().unwrap(),
            names,
            running: HashMap::new(),
        }
    }
}

#[async_trait]
impl Harness for Runtime {
    fn name(&self, i: usize) -> NodeName {
        self.names[i].clone()
    }

    async fn start(&mut self, i: usize) -> Arc<dyn Membership> {
        let store = Store::open(&self.dir.path().join(i.to_string())).unwrap();
        let node = Node::open(
            self.names[i].clone(),
            "conformance".into(),
            self.cookie.clone(),
            None,
            store.clone(),
            Duration::from_secs(1),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", self.names[i].port().unwrap());
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let server = tokio::spawn(muster_node::server::serve(listener, node.clone()));
        self.running.insert(i, (node.clone(), store, server));
        Arc::new(NodeMembership(node))
    }

    async fn crash(&mut self, i: usize) {
        if let Some((node, store, server)) = self.running.remove(&i) {
            server.abort();
            let _ = server.await;
            node.close();
            store.close();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_conforms() {
    run(&mut Runtime::new()).await;
}
