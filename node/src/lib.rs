//! # muster-node
//!
//! The reference broker node that embeds Muster: a peer protocol encrypted and authenticated
//! with the shared cookie (Noise), persisted membership that implements discovery-core's
//! `Membership`, a rabbitmqctl-style CLI, health, status and metrics endpoints, and `muster demo`.

// No panics on input from the network, a file or the environment (tests and the test harness
// modules below opt out where the index or value is the program's own).
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod cli;
pub mod client;
pub mod config;
pub mod contact;
pub mod cookie;
pub mod ctl;
pub mod demo;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod launch;
pub mod limits;
pub mod log_limit;
pub mod metrics;
pub mod node;
pub mod proto;
pub mod random;
pub mod run;
pub mod server;
pub mod state;
pub mod tls;
