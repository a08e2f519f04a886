//! # muster-cli
//!
//! The `muster` command on the muster-node runtime: `start` runs a node from its TOML file until
//! SIGTERM or SIGINT, `ctl` controls running nodes, `config check`, `discover`, `cookie
//! generate`, and `demo`. The launcher of local node processes that the demo, the process tests
//! and the benchmarks share lives here too.

#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod cli;
pub mod ctl;
pub mod demo;
pub mod launch;
pub mod start;
