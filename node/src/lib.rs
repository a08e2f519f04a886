//! # muster-node
//!
//! The reference broker node that embeds Muster: a peer protocol encrypted and authenticated with the shared cookie (Noise), persisted
//! membership that implements discovery-core's `Membership`, a rabbitmqctl-style CLI, health,
//! status and metrics endpoints, and `muster demo`.

pub mod cli;
pub mod client;
pub mod config;
pub mod cookie;
pub mod ctl;
pub mod demo;
pub mod http;
pub mod launch;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod proto;
pub mod random;
pub mod run;
pub mod server;
pub mod state;
