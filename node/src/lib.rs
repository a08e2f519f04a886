//! # muster-node
//!
//! The Muster runtime that a service embeds: a node that finds its peers through the configured
//! backend and forms or joins exactly one cluster, a peer protocol encrypted and authenticated
//! with the shared cookie (Noise), persisted membership that implements discovery-core's
//! `Membership`, and, with the `http` feature, health, status and metrics endpoints. The
//! `muster` command (crate `muster-cli`) is built on it.

// No panics on input from the network, a file or the environment (tests and the test harness
// modules below opt out where the index or value is the program's own).
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod apps;
pub mod client;
pub mod cluster;
pub mod config;
pub mod contact;
pub mod cookie;
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "http")]
pub mod http;
pub mod limits;
pub mod liveness;
pub mod log_limit;
pub mod members;
pub mod metrics;
pub mod node;
pub mod preflight;
pub mod proto;
pub mod random;
pub mod server;
pub mod state;
pub mod tls;

pub use apps::{AppError, AppHandler};
pub use cluster::{Cluster, ClusterBuilder, FormHook, FormedError, HookError, StartError, StopError};
pub use cookie::Cookie;
pub use liveness::LivenessConfig;
pub use members::{Event, Events, MemberInfo, MemberStatus, Members, MetadataError};
pub use muster;
