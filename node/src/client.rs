//! The peer-protocol client: one secure channel (see `proto::channel`) per call.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use muster::NodeName;
use tokio::net::TcpStream;

use crate::config::peer_address;
use crate::cookie::Cookie;
use crate::proto::channel::{Channel, ChannelError};
use crate::proto::conn::{Conn, Handler};
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
    let (conn, _) = Conn::start(open(creds, node, addrs).await?, Some(node.clone()), None);
    let answer = conn.call(req).await.map_err(|source| CallError::Frame {
        node: node.clone(),
        source,
    });
    conn.close();
    answer
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
            .map_err(|source| handshake_error(node, source))?;
    if answered != *node {
        return Err(CallError::WrongNode {
            asked: node.clone(),
            answered,
        });
    }
    Ok(channel)
}

/// A failed handshake as a [`CallError`]: an answer that refuses (wrong cookie or cluster name,
/// another protocol version, a rejection) or is not this protocol at all (a TLS alert from a peer
/// that requires TLS) is [`CallError::Auth`]; a connection that ends or resets mid-handshake with
/// no refusal to read is a broken connection, so a peer that shuts down while a probe is under way
/// is not reported as refusing it.
fn handshake_error(node: &NodeName, source: ChannelError) -> CallError {
    let node = node.clone();
    match source {
        ChannelError::Tls(reason) => CallError::Tls { node, reason },
        ChannelError::Closed | ChannelError::Io(_) => CallError::Frame { node, source },
        source => CallError::Auth { node, source },
    }
}

/// Open connections to peers, shared by every call: one handshake per peer (and, since the
/// other side may call back on it, often one per pair of nodes), concurrent calls multiplexed
/// on it. A node's pool also holds the connections peers opened to it ([`Pool::adopt`]), and
/// answers requests arriving on the connections it opens with its handler.
#[derive(Default)]
pub struct Pool {
    conns: std::sync::Mutex<HashMap<NodeName, Arc<Conn>>>,
    opening: std::sync::Mutex<HashMap<NodeName, Arc<tokio::sync::Mutex<()>>>>,
    handler: std::sync::OnceLock<Handler>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.conns.lock().map(|c| c.len()).unwrap_or(0);
        write!(f, "Pool({n} connections)")
    }
}

impl Pool {
    /// Requests that peers send on connections this pool opens go to `handler` (a node's pool;
    /// without one, such requests are answered with an error). Set once.
    pub fn serve_with(&self, handler: Handler) {
        let _ = self.handler.set(handler);
    }

    /// Closes every pooled connection.
    pub fn close_all(&self) {
        let conns = std::mem::take(&mut *self.conns.lock().unwrap_or_else(|e| e.into_inner()));
        for c in conns.into_values() {
            c.close();
        }
    }

    /// Uses `conn`, opened by `peer` to this node, for calls to `peer` too (unless a connection
    /// to it is already open).
    pub fn adopt(&self, peer: &NodeName, conn: Arc<Conn>) {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        match conns.get(peer) {
            Some(open) if !open.is_closed() => {}
            _ => {
                conns.insert(peer.clone(), conn);
            }
        }
    }

    /// The open connection to `node`, if any (a closed one is dropped).
    fn current(&self, node: &NodeName) -> Option<Arc<Conn>> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        match conns.get(node) {
            Some(c) if !c.is_closed() => Some(c.clone()),
            Some(_) => {
                conns.remove(node);
                None
            }
            None => None,
        }
    }

    /// Opens a connection to `node`, one at a time per peer (concurrent callers wait for it).
    async fn open(
        &self,
        creds: &Credentials,
        node: &NodeName,
        addrs: Option<Vec<std::net::SocketAddr>>,
    ) -> Result<Arc<Conn>, CallError> {
        let gate = {
            let mut opening = self.opening.lock().unwrap_or_else(|e| e.into_inner());
            opening.entry(node.clone()).or_default().clone()
        };
        let _one_at_a_time = gate.lock().await;
        if let Some(conn) = self.current(node) {
            return Ok(conn);
        }
        // Boxed: setting up a channel takes a few KiB of state, which every call's future would
        // otherwise carry, whether it opens a connection or (mostly) reuses one.
        let channel = Box::pin(open(creds, node, addrs)).await?;
        let (conn, ended) = Conn::start(channel, Some(node.clone()), self.handler.get().cloned());
        let peer = node.clone();
        tokio::spawn(async move {
            if let Ok(Some(e)) = ended.await {
                tracing::warn!("connection to {peer} ended: {e}");
            }
        });
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.insert(node.clone(), conn.clone());
        Ok(conn)
    }

    /// Like [`call_at`], on the pooled connection (opened when there is none).
    pub async fn call(
        &self,
        creds: &Credentials,
        node: &NodeName,
        addrs: Option<Vec<std::net::SocketAddr>>,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        let frame = |source| CallError::Frame {
            node: node.clone(),
            source,
        };
        let pooled = async {
            let reused = self.current(node);
            let conn = match &reused {
                Some(c) => c.clone(),
                None => self.open(creds, node, addrs.clone()).await?,
            };
            match conn.call(req).await {
                Ok(resp) => Ok(resp),
                // The peer closed a reused connection meanwhile (restarted, idle): once more on
                // a new one.
                Err(ChannelError::Closed | ChannelError::Io(_)) if reused.is_some() => {
                    conn.close();
                    let fresh = self.open(creds, node, addrs).await?;
                    fresh.call(req).await.map_err(frame)
                }
                Err(e) => {
                    conn.close();
                    Err(frame(e))
                }
            }
        };
        bounded(node, timeout, pooled).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    fn creds(cookie: &str) -> Credentials {
        Credentials {
            cookie: Cookie::parse(cookie, "test").unwrap(),
            cluster_name: "local".into(),
            node: Some("a@127.0.0.1".parse().unwrap()),
            tls: None,
        }
    }

    /// Calls a peer served by `serve` on a loopback port and returns the call's error.
    async fn call_error<F, Fut>(serve: F) -> CallError
    where
        F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            serve(stream).await;
        });
        let peer: NodeName = "b@127.0.0.1".parse().unwrap();
        let creds = creds("0123456789abcdef0123456789abcdef");
        call_at(
            &creds,
            &peer,
            Some(vec![addr]),
            &Request::Ping,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err()
    }

    #[tokio::test]
    async fn a_peer_refusing_the_cookie_is_an_authentication_failure() {
        let e = call_error(|stream| async move {
            let other = Cookie::parse("fedcba9876543210fedcba9876543210", "test").unwrap();
            let me: NodeName = "b@127.0.0.1".parse().unwrap();
            let _ = Channel::accept(tls::plain(stream), &other, "local", &me).await;
        })
        .await;
        assert!(e.is_auth(), "{e}");
        assert!(e.to_string().contains(crate::proto::channel::AUTH_FAILED), "{e}");
    }

    /// A peer that refuses this side's protocol version at once and closes without reading the
    /// rest: its refusal is what the call reports, whether the client's own send broke first or not.
    #[tokio::test]
    async fn a_refusal_sent_before_the_peer_closes_is_reported_as_the_refusal() {
        for _ in 0..20 {
            let e = call_error(|mut stream| async move {
                use tokio::io::AsyncWriteExt;
                let reason = "protocol version 9 is not supported: this node speaks protocol 3".to_string();
                let json =
                    serde_json::to_vec(&crate::proto::messages::Handshake::Rejected { reason }).unwrap();
                let mut frame = u32::try_from(json.len()).unwrap().to_be_bytes().to_vec();
                frame.extend(json);
                stream.write_all(&frame).await.unwrap();
            })
            .await;
            assert!(e.is_auth(), "{e:?}");
            assert!(e.to_string().contains("protocol version 9"), "{e}");
        }
    }

    /// A peer that stops mid-handshake (it is shutting down) did not refuse anything: reporting
    /// it as an authentication failure would hide the real refusal seen earlier.
    #[tokio::test]
    async fn a_handshake_cut_by_the_peer_is_a_broken_connection_not_a_refusal() {
        let e = call_error(|mut stream| async move {
            let mut buf = [0u8; 64];
            let _ = stream.read(&mut buf).await;
            drop(stream);
        })
        .await;
        assert!(!e.is_auth(), "{e}");
        assert!(matches!(e, CallError::Frame { .. }), "{e:?}");
    }
}
