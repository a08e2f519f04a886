//! The `Membership` conformance suite against the in-memory member the simulator uses.

use std::sync::Arc;

use async_trait::async_trait;
use muster_discovery_core::testing::membership_conformance::{Harness, run};
use muster_discovery_core::testing::{Network, NetworkFaults};
use muster_discovery_core::{Membership, NodeName};

struct Memory {
    net: Network,
}

#[async_trait]
impl Harness for Memory {
    fn name(&self, i: usize) -> NodeName {
        format!("m@n{i}").parse().unwrap()
    }
    async fn start(&mut self, i: usize) -> Arc<dyn Membership> {
        Arc::new(self.net.start(&self.name(i)))
    }
    async fn crash(&mut self, i: usize) {
        self.net.crash(&self.name(i));
    }
}

#[tokio::test]
async fn the_in_memory_member_conforms() {
    let mut h = Memory {
        net: Network::new(NetworkFaults::default(), 1),
    };
    run(&mut h).await;
}

/// A member that forgets its commitment at a crash: the suite must catch it.
struct Forgetful {
    net: Network,
}

struct NoVouch(muster_discovery_core::testing::MemoryMember);

#[async_trait]
impl Membership for NoVouch {
    fn local_node(&self) -> NodeName {
        self.0.local_node()
    }
    async fn probe(
        &self,
        peer: &NodeName,
    ) -> Result<muster_discovery_core::PeerInfo, muster_discovery_core::MembershipError> {
        self.0.probe(peer).await
    }
    async fn form(
        &self,
        id: &muster_discovery_core::ClusterId,
    ) -> Result<(), muster_discovery_core::MembershipError> {
        self.0.form(id).await
    }
    async fn join(
        &self,
        member: &NodeName,
        cluster: &muster_discovery_core::ClusterId,
    ) -> Result<(), muster_discovery_core::MembershipError> {
        self.0.join(member, cluster).await
    }
    async fn members(&self) -> Vec<NodeName> {
        self.0.members().await
    }
    async fn forget(&self, node: &NodeName) -> Result<(), muster_discovery_core::MembershipError> {
        self.0.forget(node).await
    }
    fn restart_state(&self) -> muster_discovery_core::RestartState {
        self.0.restart_state()
    }
    async fn resume(&self, via: Option<&NodeName>) -> Result<(), muster_discovery_core::MembershipError> {
        self.0.resume(via).await
    }
    fn publish_view(&self, view: Option<muster_discovery_core::FormationView>) {
        self.0.publish_view(view)
    }
    fn disk_id(&self) -> u64 {
        self.0.disk_id()
    }
    async fn persist_commitment(
        &self,
        _commitment: Option<&muster_discovery_core::Commitment>,
    ) -> Result<(), muster_discovery_core::MembershipError> {
        Ok(())
    }
}

#[async_trait]
impl Harness for Forgetful {
    fn name(&self, i: usize) -> NodeName {
        format!("m@n{i}").parse().unwrap()
    }
    async fn start(&mut self, i: usize) -> Arc<dyn Membership> {
        Arc::new(NoVouch(self.net.start(&self.name(i))))
    }
    async fn crash(&mut self, i: usize) {
        self.net.crash(&self.name(i));
    }
}

#[tokio::test]
async fn a_member_that_does_not_persist_its_commitment_fails_the_suite() {
    let failed = tokio::spawn(async {
        let mut h = Forgetful {
            net: Network::new(NetworkFaults::default(), 1),
        };
        run(&mut h).await;
    })
    .await;
    let panic = failed.expect_err("the suite must fail").into_panic();
    let message = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(message.contains("commitment survives a crash"), "{message}");
}
