//! The channel against honest and hostile peers: a recorded session replayed, a flipped bit in
//! any frame, a frame moved between connections, a wrong cookie, protocol-1 peers both ways.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use tokio::io::DuplexStream;
use tokio_util::codec::Framed;

use super::*;
use crate::proto::{Request, Response};

const COOKIE: &str = "0123456789abcdef0123456789abcdef";

fn n(s: &str) -> NodeName {
    s.parse().unwrap()
}

fn cookie(v: &str) -> Cookie {
    Cookie::parse(v, "test").unwrap()
}

/// Which way a frame travels through the relay.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dir {
    Up,
    Down,
}

type Tamper = Arc<dyn Fn(Dir, usize, &mut BytesMut) + Send + Sync>;

/// Relays frames between `a` (client side) and `b` (server side), recording the client's frames
/// and letting `tamper` change any frame on the way.
fn relay(a: DuplexStream, b: DuplexStream, tamper: Tamper) -> Arc<Mutex<Vec<BytesMut>>> {
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let (mut a_tx, mut a_rx) = Framed::new(a, codec()).split();
    let (mut b_tx, mut b_rx) = Framed::new(b, codec()).split();
    let (rec, t) = (recorded.clone(), tamper.clone());
    tokio::spawn(async move {
        let mut i = 0;
        while let Some(Ok(mut f)) = a_rx.next().await {
            rec.lock().unwrap().push(f.clone());
            t(Dir::Up, i, &mut f);
            i += 1;
            if b_tx.send(f.freeze()).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut i = 0;
        while let Some(Ok(mut f)) = b_rx.next().await {
            tamper(Dir::Down, i, &mut f);
            i += 1;
            if a_tx.send(f.freeze()).await.is_err() {
                break;
            }
        }
    });
    recorded
}

type Outcome = (
    Result<Response, ChannelError>,
    Result<Request, ChannelError>,
    Vec<BytesMut>,
);

/// One session through a relay: the client pings, the server answers. Returns the client's
/// result, the server's (the request it got, or why not), and the recorded client frames.
async fn session(tamper: Tamper) -> Outcome {
    let (client_io, relay_a) = tokio::io::duplex(1 << 20);
    let (relay_b, server_io) = tokio::io::duplex(1 << 20);
    let recorded = relay(relay_a, relay_b, tamper);
    let server = tokio::spawn(async move {
        let (mut ch, _) = Channel::accept(server_io, &cookie(COOKIE), "prod", &n("m@server")).await?;
        let req: Request = ch.recv().await?;
        ch.send(&Response::Pong { node: n("m@server") }).await?;
        Ok::<_, ChannelError>(req)
    });
    let client = async {
        let (mut ch, _) = Channel::connect(client_io, &cookie(COOKIE), "prod", Some(&n("m@client"))).await?;
        ch.send(&Request::Ping).await?;
        ch.recv::<Response>().await
    };
    // In-memory pipes: a side still waiting after a second has been cut off by tampering.
    let c = tokio::time::timeout(Duration::from_secs(1), client)
        .await
        .unwrap_or(Err(ChannelError::Closed));
    let s = tokio::time::timeout(Duration::from_secs(1), server)
        .await
        .map(|r| r.unwrap())
        .unwrap_or(Err(ChannelError::Closed));
    let frames = recorded.lock().unwrap().clone();
    (c, s, frames)
}

fn untouched() -> Tamper {
    Arc::new(|_, _, _| {})
}

#[tokio::test]
async fn an_honest_session_round_trips_and_carries_both_identities() {
    let (c, s, frames) = session(untouched()).await;
    assert!(matches!(c, Ok(Response::Pong { .. })), "{c:?}");
    assert!(matches!(s, Ok(Request::Ping)), "{s:?}");
    assert_eq!(frames.len(), 3, "hello, handshake, one request");
    // The cluster name is nowhere on the wire, not even in the hello.
    for f in &frames {
        assert!(
            !String::from_utf8_lossy(f).contains("prod"),
            "cluster name in clear"
        );
    }
    // Nothing after the hello is readable: no node names, no request in clear.
    for f in &frames[1..] {
        assert!(
            !String::from_utf8_lossy(f).contains("m@client"),
            "identity in clear"
        );
        assert!(!String::from_utf8_lossy(f).contains("ping"), "request in clear");
    }
}

#[tokio::test]
async fn messages_larger_than_one_noise_message_are_chunked_and_reassembled() {
    let (a, b) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(async move {
        let (mut ch, who) = Channel::accept(b, &cookie(COOKIE), "prod", &n("m@s"))
            .await
            .unwrap();
        assert_eq!(who, Some(n("m@c")));
        let big: String = ch.recv().await.unwrap();
        ch.send(&big.len()).await.unwrap();
    });
    let (mut ch, server_name) = Channel::connect(a, &cookie(COOKIE), "prod", Some(&n("m@c")))
        .await
        .unwrap();
    assert_eq!(server_name, n("m@s"));
    let big = "x".repeat(300_000);
    ch.send(&big).await.unwrap();
    let len: usize = ch.recv().await.unwrap();
    assert_eq!(len, 300_000);
    server.await.unwrap();
    let huge = "y".repeat(MAX_MESSAGE + 1);
    assert!(matches!(ch.send(&huge).await, Err(ChannelError::TooLarge)));
}

#[tokio::test]
async fn split_halves_carry_big_messages_and_give_the_grown_buffers_back() {
    let (a, b) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(async move {
        let (ch, _) = Channel::accept(b, &cookie(COOKIE), "prod", &n("m@s"))
            .await
            .unwrap();
        let (mut tx, mut rx) = ch.split();
        let big: String = rx.recv().await.unwrap();
        // The read buffer grew to carry a 100 KB message, and is back to its start size.
        assert!(rx.io.read_buffer().capacity() <= KEEP_CAPACITY);
        tx.send(&big).await.unwrap();
        assert!(tx.io.write_buffer().capacity() <= KEEP_CAPACITY);
        let small: String = rx.recv().await.unwrap();
        assert_eq!(small, "after");
    });
    let (ch, _) = Channel::connect(a, &cookie(COOKIE), "prod", Some(&n("m@c")))
        .await
        .unwrap();
    let (mut tx, mut rx) = ch.split();
    let big = "x".repeat(100_000);
    tx.send(&big).await.unwrap();
    assert!(tx.io.write_buffer().capacity() <= KEEP_CAPACITY);
    let echoed: String = rx.recv().await.unwrap();
    assert_eq!(echoed, big);
    assert!(rx.io.read_buffer().capacity() <= KEEP_CAPACITY);
    tx.send(&"after").await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn a_wrong_cookie_fails_on_both_sides_without_revealing_either() {
    let (a, b) = tokio::io::duplex(4096);
    let server = tokio::spawn(async move {
        Channel::accept(b, &cookie(COOKIE), "prod", &n("m@s"))
            .await
            .map(|_| ())
    });
    let wrong = "fedcba9876543210fedcba9876543210";
    let c = Channel::connect(a, &cookie(wrong), "prod", None)
        .await
        .map(|_| ());
    let s = server.await.unwrap();
    for e in [c.unwrap_err(), s.unwrap_err()] {
        assert!(matches!(e, ChannelError::BadProof), "{e:?}");
        let text = e.to_string();
        assert_eq!(text, AUTH_FAILED);
        assert!(!text.contains(COOKIE) && !text.contains(wrong));
    }
}

/// A connector cannot learn the cluster name: a wrong one is answered exactly like a wrong
/// cookie, with the same words on both sides.
#[tokio::test]
async fn a_wrong_cluster_name_is_answered_like_a_wrong_cookie() {
    let (a, b) = tokio::io::duplex(4096);
    let server = tokio::spawn(async move {
        Channel::accept(b, &cookie(COOKIE), "prod", &n("m@s"))
            .await
            .map(|_| ())
    });
    let c = Channel::connect(a, &cookie(COOKIE), "staging", None)
        .await
        .map(|_| ());
    for e in [c.unwrap_err(), server.await.unwrap().unwrap_err()] {
        assert!(matches!(e, ChannelError::BadProof), "{e:?}");
        assert_eq!(e.to_string(), AUTH_FAILED);
        assert!(!e.to_string().contains("prod"), "{e}");
    }
}

/// The key depends on the cluster name (the salt) and is derived once per process.
#[test]
fn the_key_is_salted_with_the_cluster_name_and_derived_once() {
    let c = cookie(COOKIE);
    let prod = c.key("prod");
    assert_ne!(prod, c.key("staging"));
    assert_ne!(prod, cookie("fedcba9876543210fedcba9876543210").key("prod"));
    assert!(!c.has_key("derived once"));
    let first = c.key("derived once");
    assert!(
        c.has_key("derived once"),
        "the key is kept for the next handshake"
    );
    assert_eq!(c.key("derived once"), first);
}

#[tokio::test]
async fn a_recorded_session_replayed_is_rejected_before_any_request() {
    let (_, _, frames) = session(untouched()).await;
    let (mut attacker, server_io) = tokio::io::duplex(1 << 16);
    let server = tokio::spawn(async move {
        let (mut ch, _) = Channel::accept(server_io, &cookie(COOKIE), "prod", &n("m@server")).await?;
        ch.recv::<Request>().await
    });
    let mut w = Framed::new(&mut attacker, codec());
    for f in frames {
        let _ = w.send(f.freeze()).await;
    }
    let got = server.await.unwrap();
    assert!(matches!(got, Err(ChannelError::Tampered)), "{got:?}");
}

#[tokio::test]
async fn a_flipped_bit_in_any_frame_ends_the_session_without_a_request() {
    // Client→server: hello, handshake, request. Server→client: handshake answer, response.
    for (dir, frames) in [(Dir::Up, 3), (Dir::Down, 2)] {
        for index in 0..frames {
            let tamper: Tamper = Arc::new(move |d, i, f: &mut BytesMut| {
                if d == dir && i == index && !f.is_empty() {
                    let mid = f.len() / 2;
                    f[mid] ^= 0x01;
                }
            });
            let (c, s, _) = session(tamper).await;
            match dir {
                Dir::Up => assert!(s.is_err(), "{dir:?} frame {index}: the server accepted {s:?}"),
                Dir::Down => assert!(c.is_err(), "{dir:?} frame {index}: the client accepted {c:?}"),
            }
        }
    }
}

#[tokio::test]
async fn a_frame_moved_from_another_connection_is_rejected() {
    // Session A's request frame, recorded, replaces session B's.
    let (_, _, frames_a) = session(untouched()).await;
    let moved = frames_a[2].clone();
    let tamper: Tamper = Arc::new(move |d, i, f: &mut BytesMut| {
        if d == Dir::Up && i == 2 {
            *f = moved.clone();
        }
    });
    let (c, s, _) = session(tamper).await;
    assert!(matches!(s, Err(ChannelError::Tampered)), "{s:?}");
    assert!(c.is_err(), "{c:?}");
}

#[tokio::test]
async fn a_protocol_1_client_gets_a_readable_version_error() {
    let (a, b) = tokio::io::duplex(4096);
    let server = tokio::spawn(async move {
        Channel::accept(b, &cookie(COOKIE), "prod", &n("m@s"))
            .await
            .map(|_| ())
    });
    let mut old = Framed::new(a, codec());
    let hello = serde_json::json!({
        "type": "hello", "version": 1, "cluster_name": "prod", "node": null, "nonce": "ab".repeat(32)
    });
    old.send(Bytes::from(serde_json::to_vec(&hello).unwrap()))
        .await
        .unwrap();
    let answer = old.next().await.unwrap().unwrap();
    let Handshake::Rejected { reason } = serde_json::from_slice(&answer).unwrap() else {
        panic!("expected a refusal")
    };
    assert!(
        reason.contains("protocol version 1 is not supported")
            && reason.contains(&format!("protocol {VERSION}")),
        "{reason}"
    );
    assert!(matches!(server.await.unwrap(), Err(ChannelError::Version(_))));
}

#[tokio::test]
async fn an_older_server_gives_this_client_a_readable_version_error() {
    let (a, b) = tokio::io::duplex(4096);
    // A protocol-1 server parses the hello (its layout is kept for that) and refuses it.
    tokio::spawn(async move {
        let mut old = Framed::new(b, codec());
        let hello = old.next().await.unwrap().unwrap();
        let Handshake::Hello { version, .. } = serde_json::from_slice(&hello).unwrap() else {
            panic!("expected a hello")
        };
        let reason = format!("protocol version {version} is not supported");
        let bytes = serde_json::to_vec(&Handshake::Rejected { reason }).unwrap();
        let _ = old.send(Bytes::from(bytes)).await;
    });
    let e = Channel::connect(a, &cookie(COOKIE), "prod", None)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(e, ChannelError::Version(_)), "{e:?}");
    assert!(
        e.to_string()
            .contains(&format!("protocol version {VERSION} is not supported")),
        "{e}"
    );
}

/// A server that refused and closed before this client sent its first message: the send breaks,
/// and the refusal still waiting to be read is what the handshake reports, not the broken pipe.
#[tokio::test]
async fn a_refusal_waiting_behind_a_broken_send_is_what_the_client_reports() {
    let (a, b) = tokio::io::duplex(4096);
    let mut server = Framed::new(b, codec());
    let reason = "protocol version 9 is not supported".to_string();
    let bytes = serde_json::to_vec(&Handshake::Rejected { reason }).unwrap();
    server.send(Bytes::from(bytes)).await.unwrap();
    drop(server);
    let e = Channel::connect(a, &cookie(COOKIE), "prod", None)
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(e, ChannelError::Version(_)), "{e:?}");
}

#[tokio::test]
async fn a_connector_that_stops_mid_handshake_is_left_to_the_callers_timeout() {
    let (a, b) = tokio::io::duplex(4096);
    let mut stalled = Framed::new(a, codec());
    stalled
        .send(Bytes::from(hello_bytes("prod").unwrap()))
        .await
        .unwrap();
    let r = tokio::time::timeout(
        Duration::from_millis(200),
        Channel::accept(b, &cookie(COOKIE), "prod", &n("m@s")),
    )
    .await;
    assert!(
        r.is_err(),
        "accept waits for the handshake; the server's timeout ends it"
    );
    drop(stalled);
}

/// Before the handshake a frame over about 1 KiB ends the connection at its length prefix, so an
/// unauthenticated peer cannot make the node buffer a 64 KiB frame; the longest node name still
/// fits, and after the handshake messages of any size flow again.
#[tokio::test]
async fn frames_before_the_handshake_are_small_and_the_longest_name_fits() {
    let (client, server) = tokio::io::duplex(1 << 20);
    let me = n("m@server:1");
    let srv = tokio::spawn(async move { Channel::accept(server, &cookie(COOKIE), "c", &me).await });
    // A length prefix announcing 60,000 bytes, then a trickle: refused at the prefix, without
    // waiting for (or buffering) the rest.
    let mut raw = client;
    tokio::io::AsyncWriteExt::write_all(&mut raw, &60_000u32.to_be_bytes())
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut raw, b"{\"Hello\"")
        .await
        .unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(1), srv).await;
    assert!(
        matches!(refused, Ok(Ok(Err(_)))),
        "an oversized first frame is refused at once"
    );

    // 64-character prefix, 253-character host of 63-character labels, 5-digit port.
    let host = vec!["h".repeat(63); 4].join(".")[..253].to_string();
    let longest = n(&format!("{}@{host}:65535", "p".repeat(64)));
    let (client, server) = tokio::io::duplex(1 << 20);
    let me = n("m@server:1");
    let srv =
        tokio::spawn(
            async move { Channel::accept(server, &cookie(COOKIE), "c".repeat(255).as_str(), &me).await },
        );
    let (mut ch, _) = Channel::connect(client, &cookie(COOKIE), &"c".repeat(255), Some(&longest))
        .await
        .expect("the longest name and cluster name fit the handshake frames");
    let (mut server_ch, who) = srv.await.unwrap().unwrap();
    assert_eq!(who, Some(longest));
    let big = "z".repeat(200_000);
    let (sent, got) = tokio::join!(ch.send(&big), server_ch.recv::<String>());
    sent.unwrap();
    assert_eq!(got.unwrap(), big);
}
