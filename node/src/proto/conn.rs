//! Multiplexed peer connections. After the handshake either side may send requests on the
//! channel: each request carries an id, and its answer the same id. So one connection between
//! two nodes serves calls in both directions (one handshake per pair instead of one per
//! direction), and concurrent calls share it instead of opening one-off connections.
//!
//! A connection ends when either side closes it, when a frame fails (decryption, size, format),
//! or when nothing arrives for [`IDLE_TIMEOUT`]; every call still waiting then fails with
//! [`ChannelError::Closed`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use muster::NodeName;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore, oneshot};
use tokio::task::JoinHandle;

use super::channel::{Channel, ChannelError, ChannelReceiver, ChannelSender};
use super::{Request, Response};
use crate::tls::PeerStream;

/// A connection on which nothing arrives for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests from the other side handled at once on one connection; more are answered with an
/// error at once.
const MAX_IN_FLIGHT: usize = 64;

/// One message on a multiplexed connection (borrowed: a call sends the caller's request as it
/// is, a membership state of a hundred members included, without a copy).
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
enum Envelope<'a> {
    /// A request; the answer carries the same id.
    Call { id: u64, req: &'a Request },
    /// The answer to the request with this id.
    Reply { id: u64, resp: &'a Response },
}

/// [`Envelope`] as received: the request is parsed on its own, so that one this node does not
/// understand (a newer peer's, or garbage) gets an error answer under its id instead of ending
/// the connection.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Incoming {
    Call { id: u64, req: serde_json::Value },
    Reply { id: u64, resp: Response },
}

/// What a handler returns: the answer, and what to do once it has been sent.
pub struct Handled {
    /// The answer.
    pub resp: Response,
    /// Run after the answer is written (a `stop` stops the node only then).
    pub after: Option<Box<dyn FnOnce() + Send>>,
    /// Close the connection after the answer (the node has stopped).
    pub close: bool,
}

impl From<Response> for Handled {
    fn from(resp: Response) -> Self {
        Handled {
            resp,
            after: None,
            close: false,
        }
    }
}

/// Answers requests from the other side of a connection (given its authenticated node name).
pub type Handler = Arc<dyn Fn(Request, Option<NodeName>) -> BoxFuture<'static, Handled> + Send + Sync>;

/// A multiplexed connection; cheap to share.
pub struct Conn {
    peer: Option<NodeName>,
    tx: tokio::sync::Mutex<ChannelSender<PeerStream>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Response>>>,
    next_id: AtomicU64,
    closed: AtomicBool,
    stop: Notify,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("peer", &self.peer)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Removes a call's waiter when the call ends early (timeout, cancellation).
struct Waiting<'a>(&'a Conn, u64);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiters().remove(&self.1);
    }
}

impl Conn {
    /// Starts serving `channel`: requests from the other side go to `handler` (`None`: they are
    /// answered with an error, as a CLI does). `peer` is the other side's authenticated name.
    /// The returned task ends with the connection, with the error that ended it (`None` for a
    /// clean close or the idle timeout).
    pub fn start(
        channel: Channel<PeerStream>,
        peer: Option<NodeName>,
        handler: Option<Handler>,
    ) -> (Arc<Conn>, JoinHandle<Option<ChannelError>>) {
        let (tx, rx) = channel.split();
        let conn = Arc::new(Conn {
            peer,
            tx: tokio::sync::Mutex::new(tx),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            stop: Notify::new(),
        });
        let task = tokio::spawn(read_loop(conn.clone(), rx, handler));
        (conn, task)
    }

    /// The other side's authenticated node name (`None` for a CLI).
    pub fn peer(&self) -> Option<&NodeName> {
        self.peer.as_ref()
    }

    /// True once the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Response>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `req` and waits for its answer (the caller bounds the wait).
    pub async fn call(&self, req: &Request) -> Result<Response, ChannelError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer, wait) = oneshot::channel();
        self.waiters().insert(id, answer);
        let _waiting = Waiting(self, id);
        if self.is_closed() {
            return Err(ChannelError::Closed);
        }
        let sent = self.tx.lock().await.send(&Envelope::Call { id, req }).await;
        if let Err(e) = sent {
            self.close();
            return Err(e);
        }
        wait.await.map_err(|_| ChannelError::Closed)
    }

    /// Ends the connection: the reader stops, the other side sees it closed, and every
    /// waiting call fails.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.stop.notify_one();
        self.waiters().clear();
    }

    async fn reply(&self, id: u64, resp: Response) -> Result<(), ChannelError> {
        self.tx
            .lock()
            .await
            .send(&Envelope::Reply { id, resp: &resp })
            .await
    }
}

async fn read_loop(
    conn: Arc<Conn>,
    mut rx: ChannelReceiver<PeerStream>,
    handler: Option<Handler>,
) -> Option<ChannelError> {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let ended = loop {
        let received = tokio::select! {
            _ = conn.stop.notified() => break None,
            r = tokio::time::timeout(IDLE_TIMEOUT, rx.recv::<Incoming>()) => r,
        };
        let envelope = match received {
            Err(_) | Ok(Err(ChannelError::Closed)) => break None,
            Ok(Err(e)) => break Some(e),
            Ok(Ok(envelope)) => envelope,
        };
        match envelope {
            Incoming::Reply { id, resp } => {
                if let Some(waiter) = conn.waiters().remove(&id) {
                    let _ = waiter.send(resp);
                }
            }
            Incoming::Call { id, req } => {
                let req = match serde_json::from_value::<Request>(req) {
                    Ok(req) => req,
                    Err(e) => {
                        let refused = Response::Error {
                            message: format!("malformed request: {e}"),
                        };
                        if conn.reply(id, refused).await.is_err() {
                            break None;
                        }
                        continue;
                    }
                };
                let Some(handler) = handler.clone() else {
                    let refused = Response::Error {
                        message: "this side of the connection serves no requests".into(),
                    };
                    if conn.reply(id, refused).await.is_err() {
                        break None;
                    }
                    continue;
                };
                // Never wait for a slot: the reader must keep reading answers, which the running
                // handlers may be waiting for.
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    let busy = Response::Error {
                        message: format!("more than {MAX_IN_FLIGHT} requests in flight on this connection"),
                    };
                    if conn.reply(id, busy).await.is_err() {
                        break None;
                    }
                    continue;
                };
                let conn = conn.clone();
                tokio::spawn(async move {
                    let Handled { resp, after, close } = handler(req, conn.peer.clone()).await;
                    let sent = conn.reply(id, resp).await;
                    drop(slot);
                    if close {
                        conn.close();
                    }
                    if sent.is_ok()
                        && let Some(after) = after
                    {
                        after();
                    }
                });
            }
        }
    };
    conn.closed.store(true, Ordering::Release);
    conn.waiters().clear();
    // The other side sees the end at once (not when the last handle here is dropped).
    conn.tx.lock().await.shutdown().await;
    ended
}

#[cfg(test)]
mod tests;
