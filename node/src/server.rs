//! The peer listener: set up a secure channel per connection (`proto::channel`), then answer
//! requests. A bad handshake, a frame that fails authentication, a garbage or oversized frame,
//! or a stalled client ends only that connection.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::limits::{Limits, Ticket};
use crate::log_limit::{LogLimit, more};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::node::{Node, NodeMembership};
use crate::proto::channel::{AUTH_FAILED, Channel, ChannelError};
use crate::proto::conn::{Conn, Handled, Handler};
use crate::proto::{Request, Response};
use crate::tls;
use muster::{ClusterId, Membership, MembershipError, NodeName, PeerInfo, Phase};

/// Refused connections: anyone can cause most of them, so their warnings are limited per window
/// (per process), each reason once, with one limit per kind so that one kind (whose reasons a
/// connector may vary) cannot silence another.
static TLS_REFUSALS: LogLimit = LogLimit::new();
static COOKIE_REFUSALS: LogLimit = LogLimit::new();
static VERSION_REFUSALS: LogLimit = LogLimit::new();
static MEMBER_REFUSALS: LogLimit = LogLimit::new();

/// Time allowed for the whole handshake (TLS included), from the connection's first byte.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// Peer connections still in their handshake: a fixed budget, half of it for one network (a
/// local cluster's nodes share one address; a burst of them forming at once fits).
const PEER_GATE: usize = 256;
const PEER_GATE_PER_NETWORK: usize = 128;

/// Accepts peer connections forever: each handshakes within the unauthenticated budget, then
/// counts against the cap on authenticated connections.
pub async fn serve(listener: TcpListener, node: Arc<Node>) {
    let name = node.name().clone();
    let gate = crate::limits::Gate::new(PEER_GATE, PEER_GATE_PER_NETWORK);
    let established = crate::limits::Limits::for_fd_limit(crate::limits::open_files_limit());
    crate::limits::serve(listener, &name, "peer port", gate, move |stream, addr, ticket| {
        connection(node.clone(), stream, addr, ticket, established.clone())
    })
    .await
}

/// Why a connection was refused before its first request.
enum Refused {
    /// TLS failed, or the certificate does not carry the name the client claimed.
    Tls(String),
    /// The secure channel's handshake failed.
    Channel(ChannelError),
}

async fn connection(
    node: Arc<Node>,
    stream: TcpStream,
    addr: SocketAddr,
    mut ticket: Ticket,
    established: Arc<Limits>,
) {
    let _ = stream.set_nodelay(true);
    if !ticket.heard(&stream).await {
        return;
    }
    let creds = node.credentials();
    let hs = async {
        let (stream, cert) = match &creds.tls {
            Some(tls) => match tls.accept(stream).await {
                Ok((s, cert)) => (s, Some(cert)),
                Err(e) => return Err(Refused::Tls(e.to_string())),
            },
            None => (tls::plain(stream), None),
        };
        let (channel, peer) = Channel::accept(stream, &creds.cookie, &creds.cluster_name, node.name())
            .await
            .map_err(Refused::Channel)?;
        // With TLS, a node authenticates only as a name its certificate carries.
        if let (Some(cert), Some(peer)) = (&cert, &peer) {
            tls::certifies(cert, peer).map_err(|why| Refused::Tls(format!("{peer}: {why}")))?;
        }
        Ok((channel, peer))
    };
    // Boxed: the handshake's state is freed once it is done, instead of staying in this task's
    // state (which lives as long as the connection) for every connection a seed holds.
    let handshake = ticket
        .run(Box::pin(tokio::time::timeout(HANDSHAKE_TIMEOUT, hs)))
        .await;
    let Some(handshake) = handshake else {
        debug!(node = %node.name(), "handshake with {addr} closed to make room for a newer connection");
        return;
    };
    // Authenticated: out of the unauthenticated budget, into the cap for members and the CLI.
    drop(ticket);
    let Some((channel, peer)) = authenticated(&node, addr, handshake) else {
        return;
    };
    let Some(_admitted) = established.admit() else {
        if let Some(n) = MEMBER_REFUSALS.admit("authenticated cap") {
            warn_full(&node, addr, &established, n);
        }
        return;
    };
    let binding = match &peer {
        Some(p) => match node.bind_name(p, addr.ip().to_canonical()).await {
            Ok(binding) => Some(binding),
            Err(holder) => {
                let why = format!("{p} is connected from {holder}");
                if let Some(n) = MEMBER_REFUSALS.admit(&why) {
                    warn!(
                        node = %node.name(),
                        "connection from {addr} refused: it authenticated as {why}, which still \
                         answers (a name is held by one address at a time){}",
                        more(n)
                    );
                }
                return;
            }
        },
        None => None,
    };
    let (conn, ended) = Conn::start(channel, peer.clone(), Some(handler(Arc::downgrade(&node))));
    if let (Some(p), Some(binding)) = (&peer, &binding) {
        node.bound(binding, &conn);
        node.adopt_connection(p, addr.ip().to_canonical(), conn).await;
    } else {
        drop(conn);
    }
    if let Ok(Some(e)) = ended.await {
        warn_ended(&node, addr, &e);
    }
}

/// The authenticated channel and peer, or `None` once the failed handshake is logged (warnings
/// for refusals an operator can fix, rate-limited; debug for the rest).
fn authenticated<C>(
    node: &Node,
    addr: SocketAddr,
    handshake: Result<Result<(C, Option<NodeName>), Refused>, tokio::time::error::Elapsed>,
) -> Option<(C, Option<NodeName>)> {
    match handshake {
        Ok(Ok(authenticated)) => return Some(authenticated),
        Ok(Err(Refused::Tls(why))) => {
            node.metrics.auth_failures.inc();
            if let Some(n) = TLS_REFUSALS.admit(&why) {
                warn!(node = %node.name(), "TLS refused the connection from {addr}: {why}{}", more(n));
            }
        }
        Ok(Err(Refused::Channel(ChannelError::BadProof))) => {
            node.metrics.auth_failures.inc();
            if let Some(n) = COOKIE_REFUSALS.admit(AUTH_FAILED) {
                warn!(node = %node.name(), "{AUTH_FAILED}: connection from {addr} refused{}", more(n));
            }
        }
        Ok(Err(Refused::Channel(e @ ChannelError::Version(_)))) => {
            if let Some(n) = VERSION_REFUSALS.admit("version") {
                warn!(node = %node.name(), "connection from {addr} refused: {e}{}", more(n));
            }
        }
        Ok(Err(Refused::Channel(e))) => debug!(node = %node.name(), "handshake with {addr} failed: {e}"),
        Err(_) => debug!(node = %node.name(), "handshake with {addr} timed out"),
    }
    None
}

/// Logs a connection refused because the authenticated connections are at their cap.
fn warn_full(node: &Node, addr: SocketAddr, established: &Limits, n: u64) {
    warn!(
        node = %node.name(),
        "connection from {addr} refused: {} authenticated connections are open, the most \
         this node's file-descriptor limit allows (raise LimitNOFILE){}",
        established.total(),
        more(n)
    );
}

/// An operator request over a member's connection is refused: operator requests come from the
/// CLI only.
fn operator_refusal(req: &Request, peer: Option<&NodeName>) -> Option<Response> {
    let (p, what) = (peer?, req.operator_request()?);
    Some(Response::Error {
        message: format!(
            "{what} refused: it is an operator request, accepted from the CLI only, and this \
             connection is authenticated as member {p}"
        ),
    })
}

/// Logs how an authenticated connection ended in error (a tampered frame counts as an
/// authentication failure).
fn warn_ended(node: &Node, addr: SocketAddr, e: &ChannelError) {
    if matches!(e, ChannelError::Tampered) {
        node.metrics.auth_failures.inc();
        warn!(node = %node.name(), "connection from {addr}: {e}");
    } else {
        warn!(node = %node.name(), "bad request from {addr}: {e}");
    }
}

/// Answers the requests arriving on a connection, from the peer it authenticated (`None`: the
/// CLI). Holds the node weakly: the node's pool holds the handler.
pub fn handler(node: Weak<Node>) -> Handler {
    Arc::new(move |req, peer| {
        let node = node.upgrade();
        Box::pin(async move {
            let Some(node) = node.filter(|n| !n.is_closed()) else {
                return Handled {
                    close: true,
                    ..Handled::from(Response::Error {
                        message: "the node is shutting down".into(),
                    })
                };
            };
            // Only node-to-node traffic counts as peer messages (the CLI's calls do not).
            let from_peer = peer.is_some();
            if let Some(p) = &peer {
                node.metrics.messages_received.inc();
                node.contacts.saw(p);
            }
            let stop = matches!(req, Request::Stop) && !from_peer;
            let resp = dispatch(&node, req, peer.as_ref()).await;
            if from_peer {
                node.metrics.messages_sent.inc();
            }
            let after: Option<Box<dyn FnOnce() + Send>> = if stop {
                Some(Box::new(move || node.request_stop()))
            } else {
                None
            };
            Handled {
                resp,
                after,
                close: false,
            }
        })
    })
}

/// A state push from `peer`. It is merged from a current member, or from a node this one has no
/// entry for that the pushed state lists (a joiner whose accepting member has not pushed it here
/// yet); never from a forgotten node, which could push itself back: that one is answered with
/// this node's state, so that it learns it was removed.
fn sync(
    node: &Arc<Node>,
    peer: Option<&NodeName>,
    pushed: &crate::state::ClusterState,
    meta: &crate::proto::messages::MetaGossip,
) -> Response {
    let Some(p) = peer else {
        return Response::Error {
            message: "sync refused: state comes from members, not from the CLI".into(),
        };
    };
    let ours = node.state();
    let merge = match ours.members.get(p) {
        Some(m) if m.removed => return node.state_response(ours),
        Some(_) => true,
        None => pushed.is_member(p),
    };
    if !merge {
        return Response::Error {
            message: format!("sync refused: {p} is not a member of this cluster"),
        };
    }
    // A member pushing its own removal leaves (reset, or `Cluster::leave`).
    if pushed.members.get(p).is_some_and(|m| m.removed) && ours.is_member(p) {
        node.members.set_leaving(p);
    } else {
        // Only a member that runs pushes its state.
        node.peer_running(p);
    }
    node.members.merge(meta);
    node.accept_sync(pushed)
}

fn done(r: Result<(), impl std::fmt::Display>) -> Response {
    match r {
        Ok(()) => Response::Ok,
        Err(e) => Response::Error {
            message: e.to_string(),
        },
    }
}

/// Answers one request from `peer` (the node the channel authenticated; `None` for the CLI).
pub async fn dispatch(node: &Arc<Node>, req: Request, peer: Option<&NodeName>) -> Response {
    if let Some(refused) = operator_refusal(&req, peer) {
        return refused;
    }
    match req {
        Request::Ping => Response::Pong {
            node: node.name().clone(),
        },
        Request::Probe => Response::Peer {
            info: Box::new(node.peer_info()),
        },
        // Only from a peer (the channel authenticated it); the CLI has no formation state.
        Request::Notice => match peer {
            Some(_) => {
                node.noticed();
                Response::Ok
            }
            None => Response::Error {
                message: "a notice comes from a peer, not from the CLI".into(),
            },
        },
        // A node joins only as itself: the name in the request must be the channel's.
        Request::Join {
            node: joiner,
            incarnation,
            cluster,
        } => join(node, peer, &joiner, incarnation, cluster.as_ref()).await,
        Request::Sync { state, meta } => sync(node, peer, &state, &meta),
        Request::Forget { node: member } => done(node.forget_member(&member)),
        Request::Status => Response::Status {
            status: Box::new(node.status(true).await),
        },
        Request::FormationStatus => Response::Formation {
            status: Box::new(node.formation()),
        },
        Request::Reset => done(node.reset().await),
        Request::JoinCluster { peer } => join_cluster(node, &peer).await,
        Request::ForceBoot => force_boot(node),
        Request::Stop => Response::Ok,
        Request::SetMetadata { key, value } => match node.members.set_own_entry(&key, value.as_deref()) {
            Ok(()) => {
                node.clone().broadcast();
                Response::Ok
            }
            Err(e) => Response::Error {
                message: e.to_string(),
            },
        },
        Request::Members { after } => Response::Members {
            members: Box::new(node.members.after(after).await),
        },
        Request::Heard { node: member } => match peer {
            Some(_) => Response::Heard {
                ago_ms: node.contacts.ago(&member).map(|d| d.as_millis() as u64),
            },
            None => Response::Error {
                message: "liveness questions come from peers, not from the CLI".into(),
            },
        },
        Request::App { body } => match peer {
            Some(p) if node.state().is_member(p) => node.apps.answer(p.clone(), body.0).await,
            Some(p) => Response::Error {
                message: format!("{p} is not a member of this node's cluster"),
            },
            None => Response::Error {
                message: "application requests come from members, not from the CLI".into(),
            },
        },
        Request::Stopping => match peer {
            Some(p) => {
                node.peer_stopped(p);
                Response::Ok
            }
            None => Response::Error {
                message: "a stopping notice comes from a peer, not from the CLI".into(),
            },
        },
    }
}

/// A node joining: only as itself (the name in the request must be the channel's).
async fn join(
    node: &Arc<Node>,
    peer: Option<&NodeName>,
    joiner: &NodeName,
    incarnation: u64,
    cluster: Option<&ClusterId>,
) -> Response {
    match peer {
        Some(p) if p == joiner => match node.accept_join(joiner, incarnation, cluster).await {
            Ok(state) => {
                node.peer_running(p);
                node.state_response(state)
            }
            Err(e) => Response::Error {
                message: e.to_string(),
            },
        },
        Some(p) => Response::Error {
            message: format!("join for {joiner} refused: this connection is authenticated as {p}"),
        },
        None => Response::Error {
            message: format!("join for {joiner} refused: a node joins over its own connection"),
        },
    }
}

/// The operator's `join-cluster`: joins the cluster the named member is in right now.
async fn join_cluster(node: &Arc<Node>, peer: &NodeName) -> Response {
    if node.formation().phase != Phase::Formed {
        return Response::Error {
            message: "formation is still running on this node; wait for it to finish".into(),
        };
    }
    let m = NodeMembership(node.clone());
    // The operator names a member; the join carries the cluster it is in right now.
    let joined = match m.probe(peer).await {
        Ok(PeerInfo {
            cluster: Some(cluster),
            ..
        }) => m.join(peer, &cluster).await,
        Ok(_) => Err(MembershipError::Refused(
            peer.clone(),
            "it is not in a cluster".into(),
        )),
        Err(e) => Err(e),
    };
    if let (Ok(()), Some(cluster)) = (&joined, node.state().cluster) {
        node.set_operator_status(
            format!("joined existing cluster {cluster} via {peer} (join-cluster)"),
            Some(muster::FormationOutcome::JoinedExisting {
                cluster,
                via: peer.clone(),
            }),
        );
    }
    done(joined)
}

/// The operator's `force-boot`: a node waiting for its peers boots now, else at its next start.
fn force_boot(node: &Arc<Node>) -> Response {
    let set = node.store().set_force_boot(true);
    if set.is_ok() {
        info!(
            node = %node.name(),
            "force-boot set by the operator: if it waits for its peers it boots now, else at its next start"
        );
        // A node in its restart window sees the marker at once.
        node.noticed();
    }
    done(set)
}
