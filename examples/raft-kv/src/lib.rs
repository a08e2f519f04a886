//! A replicated key-value service on openraft, bootstrapped by Muster: the node that forms the
//! Muster cluster initializes Raft in its `on_form` hook, joiners are added as learners and then
//! voters, and Raft's messages travel as Muster application requests.

pub mod http;
pub mod network;
pub mod node;
pub mod store;
pub mod types;
