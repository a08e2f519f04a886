//! The peer-protocol client: one secure channel (see `proto::channel`) per call.

use std::time::Duration;

use muster::NodeName;
use tokio::net::TcpStream;

use crate::config::peer_address;
use crate::cookie::Cookie;
use crate::proto::channel::{Channel, ChannelError};
use crate::proto::{Request, Response};
use crate::tls::{self, PeerStream, PeerTls};

/// Who the client is: the cookie, the cluster name and (for nodes) its own name.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The shared cookie.
    pub cookie: Cookie,
    /// The cluster name.
    pub cluster_name: String,
    /// The calling node, `None` for the CLI.
    pub node: Option<NodeName>,
    /// Mutual TLS under the channel, when `[tls]` is configured.
    pub tls: Option<PeerTls>,
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
    /// The TLS handshake failed (certificate not trusted, not for this host, or none).
    #[error("{node}: TLS: {reason}")]
    Tls {
        /// The peer.
        node: NodeName,
        /// Why.
        reason: String,
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
        matches!(self, CallError::Auth { .. } | CallError::Tls { .. })
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
    bounded(node, timeout, call_inner(creds, node, addrs, req)).await
}

/// `call` within `timeout`, a timeout becoming [`CallError::Timeout`].
async fn bounded(
    node: &NodeName,
    timeout: Duration,
    call: impl std::future::Future<Output = Result<Response, CallError>>,
) -> Result<Response, CallError> {
    match tokio::time::timeout(timeout, call).await {
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
    let mut channel = open(creds, node, addrs).await?;
    exchange(&mut channel, node, req).await
}

/// Connects and sets up the secure channel; checks that `node` is who answered.
async fn open(
    creds: &Credentials,
    node: &NodeName,
    addrs: Option<Vec<std::net::SocketAddr>>,
) -> Result<Channel<PeerStream>, CallError> {
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
    let stream = match &creds.tls {
        Some(tls) => tls.connect(stream, node).await.map_err(|e| CallError::Tls {
            node: node.clone(),
            reason: e.to_string(),
        })?,
        None => tls::plain(stream),
    };
    let (channel, answered) =
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
    Ok(channel)
}

/// One request and its answer on an open channel.
async fn exchange(
    channel: &mut Channel<PeerStream>,
    node: &NodeName,
    req: &Request,
) -> Result<Response, CallError> {
    let frame = |source| CallError::Frame {
        node: node.clone(),
        source,
    };
    channel.send(req).await.map_err(frame)?;
    channel.recv().await.map_err(frame)
}

/// A pooled channel may be reused this long after its last use; servers close idle channels
/// after 30 s, so a reused one is rarely stale (and a stale one is replaced at once).
const REUSE_FOR: Duration = Duration::from_secs(20);

struct Pooled {
    channel: Channel<PeerStream>,
    used: std::time::Instant,
}

type Slot = std::sync::Arc<tokio::sync::Mutex<Option<Pooled>>>;

/// Open channels to peers, reused across calls: one handshake per peer instead of one per call.
/// A call to a peer whose channel is busy opens a one-off channel rather than waiting.
#[derive(Default)]
pub struct Pool {
    slots: std::sync::Mutex<std::collections::HashMap<NodeName, Slot>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.slots.lock().map(|s| s.len()).unwrap_or(0);
        write!(f, "Pool({n} peers)")
    }
}

impl Pool {
    fn slot(&self, node: &NodeName) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(node.clone()).or_default().clone()
    }

    /// Like [`call_at`], on a pooled channel when one is free.
    pub async fn call(
        &self,
        creds: &Credentials,
        node: &NodeName,
        addrs: Option<Vec<std::net::SocketAddr>>,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        let slot = self.slot(node);
        let Ok(mut guard) = slot.try_lock() else {
            return call_at(creds, node, addrs, req, timeout).await;
        };
        let pooled = async {
            // A channel is taken out while in use: a call cancelled half-way never leaves a
            // channel in an unknown state in the pool.
            if let Some(mut p) = guard.take().filter(|p| p.used.elapsed() < REUSE_FOR) {
                match exchange(&mut p.channel, node, req).await {
                    Ok(resp) => {
                        *guard = Some(Pooled {
                            channel: p.channel,
                            used: std::time::Instant::now(),
                        });
                        return Ok(resp);
                    }
                    // The server closed it meanwhile: open a new one below.
                    Err(CallError::Frame {
                        source: ChannelError::Closed | ChannelError::Io(_),
                        ..
                    }) => {}
                    Err(e) => return Err(e),
                }
            }
            let mut channel = open(creds, node, addrs).await?;
            let resp = exchange(&mut channel, node, req).await?;
            *guard = Some(Pooled {
                channel,
                used: std::time::Instant::now(),
            });
            Ok(resp)
        };
        bounded(node, timeout, pooled).await
    }
}
