//! The peer protocol: frames, the authentication handshake, and messages.

pub mod auth;
pub mod frame;
pub mod messages;

pub use messages::{ForeignPeer, NodeStatus, Request, Response};
