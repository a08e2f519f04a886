//! Entry points for the fuzzers (`fuzz/`, `cargo fuzz`) and for the stable test that replays
//! their corpora: each takes arbitrary bytes and must never panic, hang or allocate without
//! bound, whatever the bytes. Where an input parses, it also checks a property (a round trip,
//! an idempotent merge).

use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use muster::NodeName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::cookie::Cookie;
use crate::proto::channel::Channel;
use crate::proto::messages::Handshake;
use crate::proto::{Request, Response};
use crate::state::Persisted;

/// A fuzz target: bytes in, a panic if something is wrong.
pub type Target = fn(&[u8]);

/// Every target, by the name its fuzzer and its corpus directory have.
pub const TARGETS: &[(&str, Target)] = &[
    ("frames", frames),
    ("handshake", handshake),
    ("node_name", node_name),
    ("config", config),
    ("state_file", state_file),
    #[cfg(feature = "dns")]
    ("dns_answers", dns_answers),
    #[cfg(feature = "etcd")]
    ("etcd_listing", etcd_listing),
];

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("a runtime for the fuzz targets: {e}"))
    })
}

fn cookie() -> Cookie {
    Cookie::parse("fuzzing-cookie-0123456789abcdef", "the fuzz targets")
        .unwrap_or_else(|e| panic!("a valid cookie: {e}"))
}

fn me() -> NodeName {
    NodeName::new("fuzz", muster::Host::Dns("server".into()), Some(4000))
        .unwrap_or_else(|e| panic!("a valid name: {e}"))
}

/// A peer that sends `input` and then closes, and discards whatever it is sent.
struct Scripted {
    input: Vec<u8>,
    at: usize,
}

impl AsyncRead for Scripted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let rest = self.input.get(self.at..).unwrap_or_default();
        let n = rest.len().min(buf.remaining());
        buf.put_slice(rest.get(..n).unwrap_or_default());
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Scripted {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The handshake state machine against a peer that sends arbitrary bytes: the first byte picks
/// the side under test (even: the server accepting, odd: the client connecting), the rest is
/// what the other side sends (length-delimited frames or not). It must end in an error or a
/// channel, never a panic or a hang; without the cookie it can never authenticate.
pub fn handshake(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let io = Scripted {
        input: rest.to_vec(),
        at: 0,
    };
    let cookie = cookie();
    runtime().block_on(async {
        if mode % 2 == 0 {
            let r = Channel::accept(io, &cookie, "fuzz", &me()).await;
            assert!(
                r.is_err(),
                "a scripted peer without the cookie's keys authenticated"
            );
        } else {
            let r = Channel::connect(io, &cookie, "fuzz", Some(&me())).await;
            assert!(
                r.is_err(),
                "a scripted server without the cookie's keys authenticated"
            );
        }
    });
}

/// Frame decoding and message parsing behind an authenticated channel. The first byte picks:
/// even — the rest are raw bytes on the wire after the handshake (length prefixes, frames that
/// fail decryption); odd — the rest are chunks (`u16` big-endian length, then a flag byte and
/// data) sealed with the right keys, reaching chunk reassembly and the JSON of a `Request`.
/// Also parses the rest directly as each plaintext message type, with a round trip when it parses.
pub fn frames(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    messages(rest);
    let cookie = cookie();
    runtime().block_on(async {
        let (client_io, server_io) = tokio::io::duplex(4 << 20);
        let me = me();
        let server = Channel::accept(server_io, &cookie, "fuzz", &me);
        let client = Channel::connect(client_io, &cookie, "fuzz", None);
        let (Ok((mut server, _)), Ok((mut client, _))) = tokio::join!(server, client) else {
            panic!("an in-memory handshake with the same cookie failed");
        };
        if mode % 2 == 0 {
            use tokio::io::AsyncWriteExt;
            let mut write = client.into_inner();
            let _ = write.write_all(rest).await;
            let _ = write.shutdown().await;
        } else {
            let mut chunks = Vec::new();
            let mut at = rest;
            while let [hi, lo, tail @ ..] = at {
                let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
                let (chunk, next) = tail.split_at(len);
                chunks.push(chunk);
                at = next;
            }
            let _ = client.send_raw_chunks(&chunks).await;
            drop(client);
        }
        // Read until the stream ends or fails: every frame is a message or an error.
        for _ in 0..1024 {
            if server.recv::<Request>().await.is_err() {
                break;
            }
        }
    });
}

/// The plaintext message types: parse, and when they parse, serialize and parse again.
fn messages(data: &[u8]) {
    if let Ok(h) = serde_json::from_slice::<Handshake>(data) {
        let again = serde_json::to_vec(&h).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            serde_json::from_slice::<Handshake>(&again).ok(),
            Some(h),
            "a handshake round trip"
        );
    }
    if let Ok(r) = serde_json::from_slice::<Request>(data) {
        let again = serde_json::to_vec(&r).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            serde_json::from_slice::<Request>(&again).ok(),
            Some(r),
            "a request round trip"
        );
    }
    if let Ok(r) = serde_json::from_slice::<Response>(data) {
        let again = serde_json::to_vec(&r).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            serde_json::from_slice::<Response>(&again).is_ok(),
            "a response round trip"
        );
    }
}

/// Node names: parse; a name that parses prints as text that parses to the same name.
pub fn node_name(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(name) = text.parse::<NodeName>() {
        let printed = name.to_string();
        let again: NodeName = printed
            .parse()
            .unwrap_or_else(|e| panic!("{printed:?} (printed from {text:?}) does not parse: {e}"));
        assert_eq!(again, name, "{text:?} round trip");
        let _ = (name.host(), name.port(), name.prefix(), name.seed());
    }
}

/// The node config file (with its `[cluster_formation]` table) and the `[cluster_formation]`
/// TOML on its own: an error or a config, never a panic.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::config::NodeConfig::from_text(text);
    if let Ok(f) = muster::config::FormationConfig::from_toml(text) {
        assert!(f.validate().is_ok(), "a parsed formation config validates again");
        let _ = f.discovery_budget();
    }
}

/// A persisted state slot (`state.a`, `state.b`) and the single `state.json` of earlier
/// versions: decode; a slot that decodes encodes back to the same JSON and sequence; a state
/// that parses merges into itself without change and into a blank state to an equal membership.
pub fn state_file(data: &[u8]) {
    let json = match crate::state::slot::decode(data) {
        Ok(d) => {
            let again = crate::state::slot::encode(d.seq, d.json, data.len());
            assert_eq!(
                crate::state::slot::decode(&again),
                Ok(d.clone()),
                "a decoded slot encodes back to itself"
            );
            d.json
        }
        Err(_) => data,
    };
    let Ok(p) = serde_json::from_slice::<Persisted>(json) else {
        return;
    };
    let mut same = p.state.clone();
    assert_eq!(
        same.merge(&p.state),
        Ok(false),
        "merging a state into itself changes nothing"
    );
    assert_eq!(same.members, p.state.members);
    let mut blank = crate::state::ClusterState::default();
    assert!(blank.merge(&p.state).is_ok(), "a blank state takes any cluster");
    assert_eq!(blank.members, p.state.members);
    let _ = p.state.alive();
}

/// A DNS message on the wire (as a resolver receives it), through the backend's decoders.
#[cfg(feature = "dns")]
pub fn dns_answers(data: &[u8]) {
    use muster::dns::decode;
    let Some(answers) = decode::wire_answers(data) else {
        return;
    };
    let _ = decode::srv_nodes("fuzz", decode::srv_records(&answers));
    let _ = decode::addresses(&answers);
    let _ = decode::ptr_name(&answers);
}

/// An etcd range answer (keys and values: each a `u8` length, then the bytes), through the
/// backend's listing decoder.
#[cfg(feature = "etcd")]
pub fn etcd_listing(data: &[u8]) {
    let mut kvs = Vec::new();
    let mut at = data;
    while let [klen, rest @ ..] = at {
        let (key, rest) = rest.split_at(usize::from(*klen).min(rest.len()));
        let [vlen, rest @ ..] = rest else {
            kvs.push((key, &[][..]));
            break;
        };
        let (value, rest) = rest.split_at(usize::from(*vlen).min(rest.len()));
        kvs.push((key, value));
        at = rest;
    }
    let (nodes, _) =
        muster::etcd::decode_listing(kvs, "/muster/default/nodes/", "/muster/default/cluster_id");
    for n in nodes {
        node_name(n.to_string().as_bytes());
    }
}
