//! # muster-discovery-core
//!
//! The contract and the engine of Muster, a peer discovery and cluster formation framework:
//!
//! - [`NodeName`]: validated `prefix@host[:port]` names with a total order;
//! - [`Discovery`]: what a backend implements (a listing, plus [`Registration`],
//!   [`FormationLock`] and [`Fencing`] where the backend has them);
//! - [`Membership`]: what the embedding broker implements (probe, form, join, forget, resume);
//! - [`decision::decide`]: the pure formation rule (see `docs/formation.md`);
//! - [`FormationEngine`]: the loop that runs the rule, plus the restart window;
//! - [`cleanup`]: forced removal of members the backend no longer lists;
//! - [`config`]: the `[cluster_formation]` table;
//! - `testing` (feature): in-memory backend and cluster, and the deterministic simulator.

pub mod cleanup;
pub mod config;
pub mod decision;
pub mod discovery;
pub mod engine;
pub mod error;
pub mod layers;
pub mod lease_keeper;
pub mod lock_wait;
pub mod membership;
pub mod node_name;
pub mod probe;
pub mod registry;
pub mod retry;
pub mod status;
#[cfg(feature = "testing")]
pub mod testing;
pub mod trigger;
pub mod wait_log;

pub use config::{ConfigError, FormationConfig, OnExhausted};
pub use decision::{Decision, WaitReason};
pub use discovery::{
    Capabilities, ClaimError, Discovery, DiscoveryResult, Fencing, FormationLock, LockGuard, Milestone,
    Registration, RegistrationStatus,
};
pub use engine::{AwaitError, FormationEngine, FormationError, FormationHandle, Refusal, Unanswered};
pub use error::{DiscoveryError, ErrorKind, MembershipError, RetryClass};
pub use lock_wait::LockWait;
pub use membership::{
    ClusterId, Commitment, FormationView, Membership, PeerInfo, PublishedView, RestartState,
};
pub use node_name::{Host, NodeName, NodeNameError};
pub use registry::BackendFactory;
pub use status::{FormationOutcome, FormationStatus, Phase};
pub use trigger::Trigger;
