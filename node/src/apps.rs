//! Application requests: request and answer bytes between members on the peer channel, so that
//! a service needs no second port or TLS set-up for its own peer traffic. Sizes, the handlers
//! running at once, and each call's time are bounded.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use muster::NodeName;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::Semaphore;

use crate::client::CallError;
use crate::node::Node;
use crate::proto::{Request, Response};

/// The largest request or answer body, in bytes (a body travels hex-encoded in one message).
pub const MAX_BODY: usize = 256 * 1024;
/// Application handlers running at once on one node; more requests are refused as busy.
pub const MAX_CONCURRENT: usize = 64;

/// A request or answer body (hex in the message).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Body(pub Vec<u8>);

impl Serialize for Body {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Body, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text).map(Body).map_err(serde::de::Error::custom)
    }
}

/// What an application handler returns: the answer, or why the request was refused (sent back
/// to the caller as [`AppError::Refused`]).
pub type HandlerResult = Result<Vec<u8>, String>;

/// The service's handler of requests from other members: the sender's name and the body in,
/// the answer out.
pub type AppHandler =
    Arc<dyn Fn(NodeName, Vec<u8>) -> Pin<Box<dyn Future<Output = HandlerResult> + Send>> + Send + Sync>;

/// Wraps an async closure as an [`AppHandler`].
pub fn handler<F, Fut>(f: F) -> AppHandler
where
    F: Fn(NodeName, Vec<u8>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    Arc::new(move |from, body| Box::pin(f(from, body)))
}

/// Why an application request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// The body is larger than [`MAX_BODY`].
    #[error("a body of {size} bytes is larger than the {max} bytes allowed")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The member did not answer within the timeout.
    #[error("{peer} did not answer within {timeout:?}")]
    Timeout {
        /// The member.
        peer: NodeName,
        /// The timeout.
        timeout: Duration,
    },
    /// The member could not be reached.
    #[error(transparent)]
    Unreachable(#[from] CallError),
    /// The member's handler refused the request, or the member has no handler or is busy.
    #[error("{peer} refused the request: {message}")]
    Refused {
        /// The member.
        peer: NodeName,
        /// Why.
        message: String,
    },
    /// Only members of this node's cluster are sent requests.
    #[error("{0} is not a member of this node's cluster")]
    NotMember(NodeName),
}

/// A node's handler and its concurrency budget.
pub struct Apps {
    handler: OnceLock<AppHandler>,
    running: Arc<Semaphore>,
}

impl Default for Apps {
    fn default() -> Self {
        Apps {
            handler: OnceLock::new(),
            running: Arc::new(Semaphore::new(MAX_CONCURRENT)),
        }
    }
}

impl std::fmt::Debug for Apps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Apps(handler: {})", self.handler.get().is_some())
    }
}

impl Apps {
    /// Sets the handler (once).
    pub fn set_handler(&self, h: AppHandler) {
        let _ = self.handler.set(h);
    }

    /// Answers a request from member `from`.
    pub async fn answer(&self, from: NodeName, body: Vec<u8>) -> Response {
        let refuse = |message: String| Response::Error { message };
        let Some(h) = self.handler.get().cloned() else {
            return refuse("this node serves no application requests".into());
        };
        if body.len() > MAX_BODY {
            return refuse(format!(
                "a body of {} bytes is larger than {MAX_BODY}",
                body.len()
            ));
        }
        let Ok(_slot) = self.running.clone().try_acquire_owned() else {
            return refuse(format!("busy: {MAX_CONCURRENT} application requests are running"));
        };
        match h(from, body).await {
            Ok(answer) if answer.len() > MAX_BODY => refuse(format!(
                "the handler's answer of {} bytes is larger than {MAX_BODY}",
                answer.len()
            )),
            Ok(answer) => Response::App { body: Body(answer) },
            Err(message) => refuse(message),
        }
    }
}

/// Sends `body` to member `to` and waits at most `timeout` for its answer.
pub async fn call(node: &Node, to: &NodeName, body: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, AppError> {
    if body.len() > MAX_BODY {
        return Err(AppError::TooLarge {
            size: body.len(),
            max: MAX_BODY,
        });
    }
    if !node.state().is_member(to) {
        return Err(AppError::NotMember(to.clone()));
    }
    let req = Request::App { body: Body(body) };
    let answer = tokio::time::timeout(timeout, node.call_within(to, &req, timeout))
        .await
        .map_err(|_| AppError::Timeout {
            peer: to.clone(),
            timeout,
        })??;
    match answer {
        Response::App { body } => Ok(body.0),
        Response::Error { message } => Err(AppError::Refused {
            peer: to.clone(),
            message,
        }),
        other => Err(AppError::Refused {
            peer: to.clone(),
            message: format!("unexpected answer {other:?}"),
        }),
    }
}
