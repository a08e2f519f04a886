//! The backend conformance suite against the classic (static list) backend.

use std::sync::Arc;

use muster_backend_classic::ClassicBackend;
use muster_discovery_core::testing::conformance::{Subject, run};
use muster_discovery_core::{Discovery, NodeName};

#[tokio::test]
async fn classic_backend_passes_the_conformance_suite() {
    let nodes: Vec<NodeName> = ["m@a", "m@b", "m@c"].iter().map(|s| s.parse().unwrap()).collect();
    let list = nodes.clone();
    let subject = Subject::new(nodes, move |node| {
        Arc::new(ClassicBackend::new(node, list.clone())) as Arc<dyn Discovery>
    });
    run(&subject).await;
}
