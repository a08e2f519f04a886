//! Test support (feature `testing`): an in-memory backend, an in-memory cluster of `Membership`
//! nodes, the backend and `Membership` conformance suites, and a deterministic simulator of
//! parallel formation.

pub mod conformance;
pub mod membership_conformance;
mod memory_backend;
mod memory_cluster;
mod rng;
pub mod sim;

pub use memory_backend::{BackendMode, Directory, MemoryBackend};
pub use memory_cluster::{MemoryMember, Network, NetworkFaults};
pub use rng::SimRng;
