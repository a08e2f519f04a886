//! The peer protocol: the secure channel (Noise NNpsk0 keyed with the cookie) and messages.

pub mod channel;
pub mod conn;
pub mod messages;
mod x25519;

pub use messages::{ForeignPeer, NodeStatus, Request, Response};
