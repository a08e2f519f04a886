//! The peer-protocol client: one secure channel (see `proto::channel`) per call.

use std::time::Duration;

use muster::NodeName;
use tokio::net::TcpStream;

use crate::config::peer_address;
use crate::cookie::Cookie;
use crate::proto::channel::{Channel, ChannelError};
use crate::proto::{Request, Response};

/// Who the client is: the cookie, the cluster name and (for nodes) its own name.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The shared cookie.
    pub cookie: Cookie,
    /// The cluster name.
    pub cluster_name: String,
    /// The calling node, `None` for the CLI.
    pub node: Option<NodeName>,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No TCP connection could be made.
    #[error("cannot connect to {node} at {addr}: {reason}")]
    Connect {
        /// The peer.
        node: NodeName,
        /// Its address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The handshake failed (wrong cookie, cluster name or protocol version).
    #[error("{node}: {source}")]
    Auth {
        /// The peer.
        node: NodeName,
        /// Why.
        source: ChannelError,
    },
    /// The connection broke, a frame failed authentication, or the answer was malformed.
    #[error("{node}: {source}")]
    Frame {
        /// The peer.
        node: NodeName,
        /// Why.
        source: ChannelError,
    },
    /// No answer in time.
    #[error("{node} did not answer within {timeout:?}")]
    Timeout {
        /// The peer.
        node: NodeName,
        /// The limit.
        timeout: Duration,
    },
    /// The peer is another node than the one asked for.
    #[error("asked {asked} but {answered} answered at that address")]
    WrongNode {
        /// Who was asked.
        asked: NodeName,
        /// Who answered.
        answered: NodeName,
    },
}

impl CallError {
    /// True when the peer answered and failed authentication (as opposed to being down).
    pub fn is_auth(&self) -> bool {
        matches!(self, CallError::Auth { .. })
    }
}

/// Calls `node` once: connect, authenticate, send `req`, read the answer; all within `timeout`.
pub async fn call(
    creds: &Credentials,
    node: &NodeName,
    req: &Request,
    timeout: Duration,
) -> Result<Response, CallError> {
    call_at(creds, node, None, req, timeout).await
}

/// Same as [`call`], connecting to `addrs` when the caller resolved the host itself.
pub async fn call_at(
    creds: &Credentials,
    node: &NodeName,
    addrs: Option<Vec<std::net::SocketAddr>>,
    req: &Request,
    timeout: Duration,
) -> Result<Response, CallError> {
    match tokio::time::timeout(timeout, call_inner(creds, node, addrs, req)).await {
        Ok(r) => r,
        Err(_) => Err(CallError::Timeout {
            node: node.clone(),
            timeout,
        }),
    }
}

async fn call_inner(
    creds: &Credentials,
    node: &NodeName,
    addrs: Option<Vec<std::net::SocketAddr>>,
    req: &Request,
) -> Result<Response, CallError> {
    let addr = peer_address(node);
    let connected = match addrs {
        Some(list) => TcpStream::connect(&list[..]).await,
        None => TcpStream::connect(&addr).await,
    };
    let stream = connected.map_err(|e| CallError::Connect {
        node: node.clone(),
        addr: addr.clone(),
        reason: e.to_string(),
    })?;
    let _ = stream.set_nodelay(true);
    let (mut channel, answered) =
        Channel::connect(stream, &creds.cookie, &creds.cluster_name, creds.node.as_ref())
            .await
            .map_err(|source| CallError::Auth {
                node: node.clone(),
                source,
            })?;
    if answered != *node {
        return Err(CallError::WrongNode {
            asked: node.clone(),
            answered,
        });
    }
    let frame = |source| CallError::Frame {
        node: node.clone(),
        source,
    };
    channel.send(req).await.map_err(frame)?;
    channel.recv().await.map_err(frame)
}
