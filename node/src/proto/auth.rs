//! Mutual authentication: HMAC-SHA256 challenge-response over fresh nonces, keyed with the shared
//! cookie, compared in constant time. The server proves itself first; the client's proof uses a
//! different label, so a server's proof can never be replayed as a client's.

use hmac::{Hmac, Mac};
use muster::NodeName;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};

use super::frame::{FrameError, recv, send};
use super::messages::{Handshake, VERSION};
use crate::cookie::Cookie;

type HmacSha256 = Hmac<Sha256>;

/// What every side logs on a bad proof; it never contains the cookie.
pub const AUTH_FAILED: &str = "authentication failed (cookie mismatch?)";

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The other side's proof was wrong, or it rejected ours.
    #[error("{AUTH_FAILED}")]
    BadProof,
    /// The cluster names differ.
    #[error("cluster name mismatch: this side is {ours:?}, the other side is {theirs:?}")]
    ClusterMismatch {
        /// Ours.
        ours: String,
        /// Theirs.
        theirs: String,
    },
    /// The other side speaks another protocol version.
    #[error("protocol version {0} is not supported (this build speaks {VERSION})")]
    Version(u32),
    /// Rejected for another reason.
    #[error("rejected: {0}")]
    Rejected(String),
    /// The connection failed or the bytes were not a handshake.
    #[error("handshake: {0}")]
    Frame(#[from] FrameError),
    /// The other side sent something out of order.
    #[error("handshake: unexpected message")]
    Unexpected,
}

fn nonce() -> String {
    crate::random::hex(32)
}

fn proof(cookie: &Cookie, label: &str, first: &str, second: &str, cluster: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(cookie.bytes()).expect("HMAC takes any key length");
    for part in [label, first, second, cluster] {
        mac.update(&(part.len() as u32).to_be_bytes());
        mac.update(part.as_bytes());
    }
    mac
}

fn hex(mac: HmacSha256) -> String {
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// Constant-time check of a hex proof.
fn verify(expected: HmacSha256, given: &str) -> bool {
    unhex(given).is_some_and(|bytes| expected.verify_slice(&bytes).is_ok())
}

/// Client side. Returns the server's node name.
pub async fn client<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    cookie: &Cookie,
    cluster_name: &str,
    node: Option<&NodeName>,
) -> Result<NodeName, AuthError> {
    let my_nonce = nonce();
    send(
        io,
        &Handshake::Hello {
            version: VERSION,
            cluster_name: cluster_name.to_string(),
            node: node.cloned(),
            nonce: my_nonce.clone(),
        },
    )
    .await?;
    let (server, server_nonce, server_proof) = match recv(io).await? {
        Handshake::Challenge {
            version,
            node,
            nonce,
            proof,
        } if version == VERSION => (node, nonce, proof),
        Handshake::Challenge { version, .. } => return Err(AuthError::Version(version)),
        Handshake::Rejected { reason } => return Err(rejected(reason, cluster_name)),
        _ => return Err(AuthError::Unexpected),
    };
    if !verify(
        proof(cookie, "server", &my_nonce, &server_nonce, cluster_name),
        &server_proof,
    ) {
        let _ = send(
            io,
            &Handshake::Rejected {
                reason: AUTH_FAILED.into(),
            },
        )
        .await;
        return Err(AuthError::BadProof);
    }
    let mine = hex(proof(cookie, "client", &server_nonce, &my_nonce, cluster_name));
    send(io, &Handshake::Proof { proof: mine }).await?;
    match recv(io).await? {
        Handshake::Welcome => Ok(server),
        Handshake::Rejected { reason } => Err(rejected(reason, cluster_name)),
        _ => Err(AuthError::Unexpected),
    }
}

fn rejected(reason: String, ours: &str) -> AuthError {
    if reason == AUTH_FAILED {
        AuthError::BadProof
    } else if let Some(theirs) = reason.strip_prefix("cluster name mismatch: server is ") {
        AuthError::ClusterMismatch {
            ours: ours.to_string(),
            theirs: theirs.trim_matches('"').to_string(),
        }
    } else {
        AuthError::Rejected(reason)
    }
}

/// Server side. Returns the client's node name (`None` for the CLI).
pub async fn server<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    cookie: &Cookie,
    cluster_name: &str,
    me: &NodeName,
) -> Result<Option<NodeName>, AuthError> {
    let (client_nonce, client_node) = match recv(io).await? {
        Handshake::Hello { version, .. } if version != VERSION => {
            let reason = format!("protocol version {version} is not supported");
            let _ = send(io, &Handshake::Rejected { reason }).await;
            return Err(AuthError::Version(version));
        }
        Handshake::Hello {
            cluster_name: theirs, ..
        } if theirs != cluster_name => {
            let reason = format!("cluster name mismatch: server is {cluster_name:?}");
            let _ = send(io, &Handshake::Rejected { reason }).await;
            return Err(AuthError::ClusterMismatch {
                ours: cluster_name.to_string(),
                theirs,
            });
        }
        Handshake::Hello { nonce, node, .. } if unhex(&nonce).is_some_and(|n| n.len() == 32) => (nonce, node),
        _ => return Err(AuthError::Unexpected),
    };
    let my_nonce = nonce();
    let mine = hex(proof(cookie, "server", &client_nonce, &my_nonce, cluster_name));
    send(
        io,
        &Handshake::Challenge {
            version: VERSION,
            node: me.clone(),
            nonce: my_nonce.clone(),
            proof: mine,
        },
    )
    .await?;
    match recv(io).await? {
        Handshake::Proof { proof: theirs }
            if verify(
                proof(cookie, "client", &my_nonce, &client_nonce, cluster_name),
                &theirs,
            ) =>
        {
            send(io, &Handshake::Welcome).await?;
            Ok(client_node)
        }
        Handshake::Proof { .. } | Handshake::Rejected { .. } => {
            let _ = send(
                io,
                &Handshake::Rejected {
                    reason: AUTH_FAILED.into(),
                },
            )
            .await;
            Err(AuthError::BadProof)
        }
        _ => Err(AuthError::Unexpected),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeName {
        s.parse().unwrap()
    }

    async fn pair(
        client_cookie: &str,
        server_cookie: &str,
        client_cluster: &str,
    ) -> (Result<NodeName, AuthError>, Result<Option<NodeName>, AuthError>) {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let cc = Cookie::parse(client_cookie, "t").unwrap();
        let sc = Cookie::parse(server_cookie, "t").unwrap();
        let cl = client_cluster.to_string();
        let c = tokio::spawn(async move { client(&mut a, &cc, &cl, Some(&n("m@client"))).await });
        let s = server(&mut b, &sc, "prod", &n("m@server")).await;
        (c.await.unwrap(), s)
    }

    #[tokio::test]
    async fn same_cookie_authenticates_both_ways() {
        let (c, s) = pair("secret", "secret", "prod").await;
        assert_eq!(c.unwrap(), n("m@server"));
        assert_eq!(s.unwrap(), Some(n("m@client")));
    }

    #[tokio::test]
    async fn wrong_cookie_fails_on_both_sides_with_the_promised_message() {
        let (c, s) = pair("wrong", "secret", "prod").await;
        let (c, s) = (c.unwrap_err().to_string(), s.unwrap_err().to_string());
        assert_eq!(c, AUTH_FAILED);
        assert_eq!(s, AUTH_FAILED);
        assert!(!c.contains("secret") && !s.contains("secret"));
    }

    #[tokio::test]
    async fn cluster_name_is_checked() {
        let (c, s) = pair("secret", "secret", "staging").await;
        assert!(c.unwrap_err().to_string().contains("cluster name mismatch"));
        assert!(matches!(s, Err(AuthError::ClusterMismatch { .. })));
    }

    #[test]
    fn proofs_depend_on_label_nonces_and_cluster() {
        let k = Cookie::parse("k", "t").unwrap();
        let base = hex(proof(&k, "server", "a", "b", "c"));
        assert_ne!(base, hex(proof(&k, "client", "a", "b", "c")));
        assert_ne!(base, hex(proof(&k, "server", "b", "a", "c")));
        assert_ne!(base, hex(proof(&k, "server", "a", "b", "d")));
        assert!(verify(proof(&k, "server", "a", "b", "c"), &base));
        assert!(!verify(proof(&k, "server", "a", "b", "c"), "zz"));
    }
}
