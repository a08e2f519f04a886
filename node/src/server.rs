//! The peer listener: authenticate each connection, then answer requests. A bad handshake, a
//! garbage or oversized frame, or a stalled client ends only that connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::metrics::Metrics;
use crate::node::{Node, NodeMembership};
use crate::proto::auth::{self, AUTH_FAILED, AuthError};
use crate::proto::frame::{FrameError, recv, send};
use crate::proto::{Request, Response};
use muster::{Membership, MembershipError, PeerInfo, Phase};

/// Time allowed for the whole handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// An authenticated connection idle this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts peer connections forever.
pub async fn serve(listener: TcpListener, node: Arc<Node>) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let node = node.clone();
                tokio::spawn(async move { connection(node, stream, addr).await });
            }
            Err(e) => {
                warn!(node = %node.name(), "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(node: Arc<Node>, mut stream: TcpStream, addr: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let creds = node.credentials();
    let hs = auth::server(&mut stream, &creds.cookie, &creds.cluster_name, node.name());
    // Only node-to-node traffic counts as peer messages (the CLI's calls do not).
    let from_peer = match tokio::time::timeout(HANDSHAKE_TIMEOUT, hs).await {
        Ok(Ok(client)) => client.is_some(),
        Ok(Err(AuthError::BadProof)) => {
            Metrics::inc(&node.metrics.auth_failures);
            warn!(node = %node.name(), "{AUTH_FAILED}: connection from {addr} refused");
            return;
        }
        Ok(Err(e @ AuthError::ClusterMismatch { .. })) => {
            warn!(node = %node.name(), "connection from {addr} refused: {e}");
            return;
        }
        Ok(Err(e)) => {
            debug!(node = %node.name(), "handshake with {addr} failed: {e}");
            return;
        }
        Err(_) => {
            debug!(node = %node.name(), "handshake with {addr} timed out");
            return;
        }
    };
    loop {
        let req: Request = match tokio::time::timeout(IDLE_TIMEOUT, recv(&mut stream)).await {
            Ok(Ok(r)) => r,
            Ok(Err(FrameError::Closed)) | Err(_) => return,
            Ok(Err(e)) => {
                warn!(node = %node.name(), "bad request from {addr}: {e}");
                return;
            }
        };
        if from_peer {
            Metrics::inc(&node.metrics.messages_received);
        }
        let stop = matches!(req, Request::Stop);
        let resp = dispatch(&node, req).await;
        if from_peer {
            Metrics::inc(&node.metrics.messages_sent);
        }
        if send(&mut stream, &resp).await.is_err() {
            return;
        }
        if stop {
            node.request_stop();
            return;
        }
    }
}

fn done(r: Result<(), impl std::fmt::Display>) -> Response {
    match r {
        Ok(()) => Response::Ok,
        Err(e) => Response::Error {
            message: e.to_string(),
        },
    }
}

/// Answers one request.
pub async fn dispatch(node: &Arc<Node>, req: Request) -> Response {
    match req {
        Request::Ping => Response::Pong {
            node: node.name().clone(),
        },
        Request::Probe => Response::Peer {
            info: Box::new(node.peer_info()),
        },
        Request::Join {
            node: joiner,
            incarnation,
        } => node.accept_join(&joiner, incarnation),
        Request::Sync { state } => node.accept_sync(&state),
        Request::Forget { node: member } => done(node.forget_member(&member)),
        Request::Status => Response::Status {
            status: Box::new(node.status().await),
        },
        Request::FormationStatus => Response::Formation {
            status: Box::new(node.formation()),
        },
        Request::Reset => done(node.reset().await),
        Request::JoinCluster { peer } => {
            if node.formation().phase != Phase::Formed {
                return Response::Error {
                    message: "formation is still running on this node; wait for it to finish".into(),
                };
            }
            let m = NodeMembership(node.clone());
            // The operator names a member; the join carries the cluster it is in right now.
            let joined = match m.probe(&peer).await {
                Ok(PeerInfo {
                    cluster: Some(cluster),
                    ..
                }) => m.join(&peer, &cluster).await,
                Ok(_) => Err(MembershipError::Refused(
                    peer.clone(),
                    "it is not in a cluster".into(),
                )),
                Err(e) => Err(e),
            };
            done(joined)
        }
        Request::ForceBoot => done(node.store().set_force_boot(true)),
        Request::Stop => Response::Ok,
    }
}
