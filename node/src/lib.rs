//! # muster-node
//!
//! The Muster runtime that a service embeds: a node that finds its peers through the configured
//! backend and forms or joins exactly one cluster, a peer protocol encrypted and authenticated
//! with the shared cookie (Noise), persisted membership that implements discovery-core's
//! `Membership`, and, with the `http` feature, health, status and metrics endpoints. The
//! `muster` command (crate `muster-cli`) is built on it.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use muster_node::{Cluster, Cookie};
//! use muster_node::muster::FormationConfig;
//!
//! let formation = FormationConfig::from_toml(
//!     "[cluster_formation.classic_config]\nnodes = [\"a@10.0.0.1:4370\", \"a@10.0.0.2:4370\"]",
//! )?;
//! let cluster = Cluster::builder("a@10.0.0.1:4370".parse()?, "/var/lib/a", Cookie::from_file("/etc/a/cookie".as_ref())?)
//!     .formation(formation)
//!     .metadata("client_port", "9000")
//!     .on_form(|cluster| async move {
//!         println!("bootstrapping the service's state for cluster {cluster}");
//!         Ok(())
//!     })
//!     .start()
//!     .await?;
//! println!("{:?}", cluster.formed(Duration::from_secs(60)).await?);
//! let mut members = cluster.members();
//! members.changed().await?;
//! for m in &members.borrow().members {
//!     println!("{m}");
//! }
//! cluster.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! The guide, with what each part guarantees, is `docs/embedding.md`.

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

/// The embedding guide's examples, compiled with the doctests.
#[cfg(doctest)]
#[doc = include_str!("../../docs/embedding.md")]
pub struct EmbeddingGuide;
