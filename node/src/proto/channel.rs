//! The secure channel between nodes (protocol 4): the Noise protocol framework's
//! `Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s` (via `snow`), keyed with the shared cookie.
//!
//! 1. The client sends a plaintext `Hello` (version; the cluster name field empty). The server
//!    answers a version mismatch with a plaintext `Rejected`, which older peers also read.
//! 2. Noise handshake, with the `Hello` carrying this side's own cluster name as prologue, and a
//!    PSK derived from the cookie and the cluster name (Argon2id, salted with the name;
//!    `Cookie::key`): the client's first message carries its node name and an authentication
//!    tag under the PSK. A wrong
//!    cookie and a wrong cluster name fail the same check and get the same answer, so a
//!    connector without the cookie cannot learn the cluster name; a server that cannot verify
//!    the message answers `Rejected` without producing anything that depends on its key (no
//!    offline guessing oracle for a connector without the cookie). The server's answer carries
//!    its node name and proves the server knows the cookie too.
//! 3. Every later frame is a Noise transport message: encrypted and authenticated, with keys
//!    bound to this handshake and implicit per-direction counters, so a replayed, reordered,
//!    altered, or injected frame (including one moved from another connection) fails to decrypt
//!    and ends the connection.
//!
//! Frames on the wire are length-delimited (`tokio_util::codec`); a message larger than one Noise
//! message (64 KiB) is split into chunks, each with a one-byte "more follows" flag, and
//! reassembled up to [`MAX_MESSAGE`].

use std::sync::atomic::{AtomicU64, Ordering};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{Sink, SinkExt, Stream, StreamExt};
use muster::NodeName;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use snow::{HandshakeState, TransportState};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio_util::codec::{Framed, FramedRead, FramedWrite, LengthDelimitedCodec};

use super::messages::Handshake;
use crate::cookie::Cookie;

/// The protocol version this build speaks.
pub const VERSION: u32 = 4;
/// The largest application message accepted: 1 MiB.
pub const MAX_MESSAGE: usize = 1 << 20;
/// What every side logs on a failed authentication; it never contains the cookie.
pub const AUTH_FAILED: &str = "authentication failed (cookie or cluster name mismatch?)";

const NOISE: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
const NOISE_MAX: usize = 65535;
/// The initial read and write buffer of a connection. Requests and small answers fit; bigger
/// ones grow it for as long as they take. A seed holds a connection per member, so tokio-util's
/// default of 8 KiB each way would cost 16 KiB per member before anything is said.
const FRAMED_CAPACITY: usize = 256;
/// The largest frame before the handshake succeeds: a hello, an identity (a node name is at most
/// 324 characters) with its Noise overhead, or a refusal all fit, so an unauthenticated peer can
/// make a connection hold about 1 KiB, not a 64 KiB frame.
const HANDSHAKE_FRAME_MAX: usize = 1024;
/// A buffer an idle connection keeps after a big message: one that grew beyond this (to carry
/// a full membership state, say) goes back to [`FRAMED_CAPACITY`] once empty, so a hundred
/// connections do not each keep the largest message they ever carried.
const KEEP_CAPACITY: usize = 4096;
const TAG: usize = 16;
/// Plaintext bytes per chunk: one flag byte, the rest data.
const CHUNK: usize = NOISE_MAX - TAG - 1;
/// Room a handshake message needs besides its payload: an ephemeral key and two tags.
const HANDSHAKE_OVERHEAD: usize = 32 + 2 * TAG;
const MORE: u8 = 1;
const LAST: u8 = 0;

/// Why a connection could not be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The other side does not know the cookie, uses another cluster name, or tampered with the
    /// handshake (the three look the same, by design).
    #[error("{AUTH_FAILED}")]
    BadProof,
    /// The other side speaks another protocol version.
    #[error("protocol version mismatch: {0}")]
    Version(String),
    /// Rejected for another reason.
    #[error("rejected: {0}")]
    Rejected(String),
    /// A frame failed to decrypt: replayed, reordered, altered, or injected.
    #[error("a frame failed authentication (replayed, reordered, altered or injected); connection closed")]
    Tampered,
    /// The connection ended (possibly mid-frame).
    #[error("connection closed")]
    Closed,
    /// A message larger than the limit.
    #[error("message of more than {MAX_MESSAGE} bytes refused")]
    TooLarge,
    /// The bytes are not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// TLS under the channel failed after its handshake, typically the peer's alert refusing
    /// this side's certificate.
    #[error("TLS: {0}")]
    Tls(String),
    /// Another I/O error.
    #[error("i/o: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for ChannelError {
    /// Sorts an I/O error by its cause: an oversized frame, TLS, the end of the stream, or other.
    fn from(e: std::io::Error) -> Self {
        if let Some(inner) = e.get_ref() {
            if inner.is::<tokio_util::codec::LengthDelimitedCodecError>() {
                return ChannelError::Malformed("frame larger than a Noise message".into());
            }
            if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                return ChannelError::Tls(tls_reason(tls));
            }
        }
        match e.kind() {
            std::io::ErrorKind::UnexpectedEof => ChannelError::Closed,
            _ => ChannelError::Io(e),
        }
    }
}

/// A TLS failure in words an operator can act on: an alert after the handshake means the peer
/// refused this side's certificate.
fn tls_reason(e: &rustls::Error) -> String {
    match e {
        rustls::Error::AlertReceived(alert) => format!(
            "the peer refused this node's certificate (alert {alert:?}): is it signed by the CA the peer trusts, and valid for this node's host?"
        ),
        other => other.to_string(),
    }
}

impl ChannelError {
    /// True for failures that mean "the other side is not one of us" (as opposed to broken).
    pub fn is_auth(&self) -> bool {
        matches!(self, ChannelError::BadProof | ChannelError::Tampered)
    }
}

/// The identity carried inside the Noise handshake.
#[derive(Debug, Serialize, Deserialize)]
struct Identity {
    node: Option<NodeName>,
}

/// An established channel.
pub struct Channel<S> {
    io: Framed<S, LengthDelimitedCodec>,
    noise: Arc<Mutex<TransportState>>,
}

/// The sending half of a split channel.
pub struct ChannelSender<S> {
    io: FramedWrite<WriteHalf<S>, LengthDelimitedCodec>,
    noise: Arc<Mutex<TransportState>>,
}

/// The receiving half of a split channel.
pub struct ChannelReceiver<S> {
    io: FramedRead<ReadHalf<S>, LengthDelimitedCodec>,
    noise: Arc<Mutex<TransportState>>,
}

/// Gives an empty buffer that grew beyond [`KEEP_CAPACITY`] back (see there).
fn trim(buf: &mut BytesMut) {
    if !buf.is_empty() {
        return;
    }
    // An empty buffer's `capacity` counts only what lies after the bytes already sent or
    // decoded; reserving on it takes back the whole allocation (no copy, nothing to move), so
    // that its size shows.
    buf.reserve(FRAMED_CAPACITY);
    if buf.capacity() > KEEP_CAPACITY {
        *buf = BytesMut::with_capacity(FRAMED_CAPACITY);
    }
}

/// CPU time this process spent in the channel's cryptography, when accounted ([`accounting`]) (Noise handshakes and frame
/// encryption and decryption), for the benchmark's cost figure and `/metrics`.
static CRYPTO_NANOS: AtomicU64 = AtomicU64::new(0);

/// Seconds this process has spent in the channel's cryptography so far.
pub fn crypto_seconds() -> f64 {
    CRYPTO_NANOS.load(Ordering::Relaxed) as f64 / 1e9
}

/// CPU time of the calling thread in nanoseconds (not wall time: a thread descheduled in the
/// middle of a handshake on a busy machine does not count the wait).
fn thread_cpu_nanos() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the valid pointer it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Benchmark knob: with `MUSTER_BENCH_CHANNEL_WORK=K` set, the channel accounts the CPU time
/// of its cryptography (for the formation benchmark, through `/metrics`) and makes every step
/// cost K times that time (the extra spent spinning), so that the benchmark can measure what the
/// cryptography costs in formation time by comparing K = 1 and K = 2 in one build. Unset (in
/// production), nothing is measured: the clock calls would cost about as much as a small frame.
pub fn accounting() -> Option<u64> {
    static FACTOR: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *FACTOR.get_or_init(|| {
        std::env::var("MUSTER_BENCH_CHANNEL_WORK")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|k| (1..=16).contains(k))
    })
}

fn crypto<R>(op: impl FnOnce() -> R) -> R {
    let Some(factor) = accounting() else {
        return op();
    };
    let start = thread_cpu_nanos();
    let r = op();
    let spent = thread_cpu_nanos().saturating_sub(start);
    if factor > 1 {
        let until = start + spent * factor;
        while thread_cpu_nanos() < until {
            std::hint::spin_loop();
        }
    }
    CRYPTO_NANOS.fetch_add(spent, Ordering::Relaxed);
    r
}

fn noise_err(e: snow::Error) -> ChannelError {
    ChannelError::Malformed(format!("noise: {e}"))
}

fn json_err(e: serde_json::Error) -> ChannelError {
    ChannelError::Malformed(e.to_string())
}

/// Writes this side's handshake message, carrying its node name.
async fn write_identity<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Framed<S, LengthDelimitedCodec>,
    hs: &mut HandshakeState,
    node: Option<&NodeName>,
) -> Result<(), ChannelError> {
    let payload = serde_json::to_vec(&Identity { node: node.cloned() }).map_err(json_err)?;
    let mut buf = vec![0u8; payload.len() + HANDSHAKE_OVERHEAD];
    let n = crypto(|| hs.write_message(&payload, &mut buf)).map_err(noise_err)?;
    io.send(Bytes::copy_from_slice(prefix(&buf, n))).await?;
    Ok(())
}

/// Reads the other side's handshake message: `None` when it fails Noise authentication (a wrong
/// cookie, or not a handshake message at all), else the node name it carries.
fn read_identity(hs: &mut HandshakeState, frame: &[u8]) -> Option<Result<Option<NodeName>, ChannelError>> {
    let mut payload = vec![0u8; frame.len()];
    let n = crypto(|| hs.read_message(frame, &mut payload)).ok()?;
    Some(
        serde_json::from_slice::<Identity>(prefix(&payload, n))
            .map(|i| i.node)
            .map_err(json_err),
    )
}

/// The first `n` bytes that `snow` wrote or read (never more than the buffer; no panic if it were).
fn prefix(buf: &[u8], n: usize) -> &[u8] {
    buf.get(..n).unwrap_or(buf)
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(NOISE_MAX)
        .new_codec()
}

/// The framing of a connection still in its handshake: [`HANDSHAKE_FRAME_MAX`] until
/// [`authenticated`] lifts it.
fn handshake_framing<S: AsyncRead + AsyncWrite>(io: S) -> Framed<S, LengthDelimitedCodec> {
    let mut codec = codec();
    codec.set_max_frame_length(HANDSHAKE_FRAME_MAX);
    Framed::with_capacity(io, codec, FRAMED_CAPACITY)
}

/// Lifts the frame limit once both sides have proved the cookie.
fn authenticated<S>(io: &mut Framed<S, LengthDelimitedCodec>) {
    io.codec_mut().set_max_frame_length(NOISE_MAX);
}

fn noise(cookie: &Cookie, cluster_name: &str, initiator: bool) -> Result<HandshakeState, ChannelError> {
    let params = NOISE
        .parse()
        .map_err(|e| ChannelError::Malformed(format!("noise parameters: {e}")))?;
    let key = crypto(|| cookie.key(cluster_name)).map_err(|e| ChannelError::Malformed(e.to_string()))?;
    let prologue = hello_bytes(cluster_name)?;
    let fail = |e: snow::Error| ChannelError::Malformed(format!("noise setup: {e}"));
    let b = snow::Builder::with_resolver(params, super::x25519::resolver())
        .psk(0, &key)
        .map_err(fail)?
        .prologue(&prologue)
        .map_err(fail)?;
    crypto(|| {
        if initiator {
            b.build_initiator()
        } else {
            b.build_responder()
        }
    })
    .map_err(fail)
}

fn hello_bytes(cluster_name: &str) -> Result<Vec<u8>, ChannelError> {
    // `node` and `nonce` keep the layout protocol-1 servers parse, so they answer with a readable
    // version error instead of dropping the connection.
    serde_json::to_vec(&Handshake::Hello {
        version: VERSION,
        cluster_name: cluster_name.to_string(),
        node: None,
        nonce: String::new(),
    })
    .map_err(json_err)
}

async fn next<R>(io: &mut R) -> Result<Bytes, ChannelError>
where
    R: Stream<Item = Result<BytesMut, std::io::Error>> + Unpin,
{
    match io.next().await {
        Some(Ok(b)) => Ok(b.freeze()),
        Some(Err(e)) => Err(e.into()),
        None => Err(ChannelError::Closed),
    }
}

async fn reject<S: AsyncRead + AsyncWrite + Unpin>(io: &mut Framed<S, LengthDelimitedCodec>, reason: &str) {
    if let Ok(bytes) = serde_json::to_vec(&Handshake::Rejected {
        reason: reason.to_string(),
    }) {
        let _ = io.send(Bytes::from(bytes)).await;
    }
}

/// How long a client whose handshake send failed looks for the refusal that may explain it.
const REFUSAL_READ: Duration = Duration::from_millis(100);

/// A send that fails mid-handshake may fail because the peer refused this side and closed (a
/// version refusal comes before the peer reads the identity): its refusal, if it is still there
/// to be read, names the cause better than the broken connection, which is returned otherwise.
async fn refusal_or<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut Framed<S, LengthDelimitedCodec>,
    failed: ChannelError,
) -> ChannelError {
    if !matches!(failed, ChannelError::Io(_) | ChannelError::Closed) {
        return failed;
    }
    match tokio::time::timeout(REFUSAL_READ, next(io)).await {
        Ok(Ok(answer)) => rejected(&answer).unwrap_or(failed),
        _ => failed,
    }
}

/// A plaintext refusal as the error it stands for; `None` when `bytes` are not a refusal.
fn rejected(bytes: &[u8]) -> Option<ChannelError> {
    match serde_json::from_slice::<Handshake>(bytes) {
        Ok(Handshake::Rejected { reason }) if reason == AUTH_FAILED => Some(ChannelError::BadProof),
        Ok(Handshake::Rejected { reason }) if reason.contains("version") => {
            Some(ChannelError::Version(reason))
        }
        Ok(Handshake::Rejected { reason }) => Some(ChannelError::Rejected(reason)),
        _ => None,
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Channel<S> {
    /// Client side: authenticates as `node` (`None` for the CLI); returns the server's name.
    pub async fn connect(
        io: S,
        cookie: &Cookie,
        cluster_name: &str,
        node: Option<&NodeName>,
    ) -> Result<(Channel<S>, NodeName), ChannelError> {
        let mut io = handshake_framing(io);
        // The cluster name stays off the wire: it is in the prologue each side builds itself.
        if let Err(e) = io.send(Bytes::from(hello_bytes("")?)).await {
            return Err(refusal_or(&mut io, e.into()).await);
        }
        let mut hs = noise(cookie, cluster_name, true)?;
        if let Err(e) = write_identity(&mut io, &mut hs, node).await {
            return Err(refusal_or(&mut io, e).await);
        }
        let answer = next(&mut io).await?;
        let server = match read_identity(&mut hs, &answer) {
            Some(named) => {
                named?.ok_or_else(|| ChannelError::Malformed("the server sent no node name".into()))?
            }
            // Not a Noise answer: a plaintext refusal (version, cluster name, cookie).
            None => return Err(rejected(&answer).unwrap_or(ChannelError::BadProof)),
        };
        let noise = hs.into_transport_mode().map_err(noise_err)?;
        authenticated(&mut io);
        Ok((
            Channel {
                io,
                noise: Arc::new(Mutex::new(noise)),
            },
            server,
        ))
    }

    /// Server side: returns the channel and the client's node name (`None` for the CLI).
    pub async fn accept(
        io: S,
        cookie: &Cookie,
        cluster_name: &str,
        me: &NodeName,
    ) -> Result<(Channel<S>, Option<NodeName>), ChannelError> {
        let mut io = handshake_framing(io);
        let hello = next(&mut io).await?;
        match serde_json::from_slice::<Handshake>(&hello) {
            Ok(Handshake::Hello { version, .. }) if version != VERSION => {
                let reason = format!(
                    "protocol version {version} is not supported: this node speaks protocol {VERSION}; \
                     upgrade every node to the same release"
                );
                reject(&mut io, &reason).await;
                return Err(ChannelError::Version(reason));
            }
            // The client's cluster name is not compared here: the prologue is this side's own
            // hello, so a different name fails the Noise check exactly like a different cookie.
            Ok(Handshake::Hello { .. }) => {}
            _ => return Err(ChannelError::Malformed("the first frame is not a hello".into())),
        }
        let mut hs = noise(cookie, cluster_name, false)?;
        let first = next(&mut io).await?;
        let Some(client) = read_identity(&mut hs, &first) else {
            reject(&mut io, AUTH_FAILED).await;
            return Err(ChannelError::BadProof);
        };
        let client = client?;
        write_identity(&mut io, &mut hs, Some(me)).await?;
        let noise = hs.into_transport_mode().map_err(noise_err)?;
        authenticated(&mut io);
        Ok((
            Channel {
                io,
                noise: Arc::new(Mutex::new(noise)),
            },
            client,
        ))
    }

    /// The underlying stream, after the handshake (the fuzzer writes raw bytes on it).
    pub(crate) fn into_inner(self) -> S {
        self.io.into_inner()
    }

    /// Seals each of `chunks` (a flag byte, then data) as one transport frame, as they are: the
    /// fuzzer's way to reach the receiver's chunk reassembly with chunks no sender would make.
    pub(crate) async fn send_raw_chunks(&mut self, chunks: &[&[u8]]) -> Result<(), ChannelError> {
        for plain in chunks {
            seal_and_feed(&mut self.io, &self.noise, plain).await?;
        }
        SinkExt::<Bytes>::flush(&mut self.io).await?;
        Ok(())
    }

    /// Sends one message, encrypted (split into chunks when larger than one Noise message).
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), ChannelError> {
        let sent = send_on(&mut self.io, &self.noise, msg).await;
        trim(self.io.write_buffer_mut());
        sent
    }

    /// Receives one message; any frame that fails to decrypt ends the channel.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<T, ChannelError> {
        let received = recv_on(&mut self.io, &self.noise).await;
        trim(self.io.read_buffer_mut());
        received
    }

    /// Splits the channel so that one task can send while another receives. Each half keeps
    /// its own buffer (bytes already read stay with the receiver).
    pub fn split(self) -> (ChannelSender<S>, ChannelReceiver<S>) {
        let parts = self.io.into_parts();
        let (read, write) = tokio::io::split(parts.io);
        let mut rx = FramedRead::with_capacity(read, codec(), FRAMED_CAPACITY);
        rx.read_buffer_mut().extend_from_slice(&parts.read_buf);
        let mut tx = FramedWrite::with_capacity(write, codec(), FRAMED_CAPACITY);
        tx.write_buffer_mut().extend_from_slice(&parts.write_buf);
        (
            ChannelSender {
                io: tx,
                noise: self.noise.clone(),
            },
            ChannelReceiver {
                io: rx,
                noise: self.noise,
            },
        )
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> ChannelSender<S> {
    /// Sends one message, as [`Channel::send`].
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), ChannelError> {
        let sent = send_on(&mut self.io, &self.noise, msg).await;
        trim(self.io.write_buffer_mut());
        sent
    }

    /// Flushes and shuts down the sending direction (the other side reads the end).
    pub async fn shutdown(&mut self) {
        let _ = SinkExt::<Bytes>::close(&mut self.io).await;
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> ChannelReceiver<S> {
    /// Receives one message, as [`Channel::recv`].
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<T, ChannelError> {
        let received = recv_on(&mut self.io, &self.noise).await;
        trim(self.io.read_buffer_mut());
        received
    }
}

/// The cipher state, locked only for one (synchronous) encryption or decryption.
fn locked(noise: &Mutex<TransportState>) -> std::sync::MutexGuard<'_, TransportState> {
    noise.lock().unwrap_or_else(|e| e.into_inner())
}

async fn send_on<K, T>(io: &mut K, noise: &Mutex<TransportState>, msg: &T) -> Result<(), ChannelError>
where
    K: Sink<Bytes, Error = std::io::Error> + Unpin,
    T: Serialize,
{
    // The JSON goes after a byte left for the chunk flag, so that a message of one chunk (nearly
    // all of them) is encrypted from where it was written, without a copy.
    let mut framed = vec![LAST];
    serde_json::to_writer(&mut framed, msg).map_err(json_err)?;
    let len = framed.len() - 1;
    if len > MAX_MESSAGE {
        return Err(ChannelError::TooLarge);
    }
    if len <= CHUNK {
        seal_and_feed(io, noise, &framed).await?;
    } else {
        let mut chunks = framed.get(1..).unwrap_or_default().chunks(CHUNK).peekable();
        let mut plain = Vec::with_capacity(CHUNK + 1);
        while let Some(chunk) = chunks.next() {
            plain.clear();
            plain.push(if chunks.peek().is_some() { MORE } else { LAST });
            plain.extend_from_slice(chunk);
            seal_and_feed(io, noise, &plain).await?;
        }
    }
    io.flush().await?;
    Ok(())
}

/// Encrypts one chunk (its flag byte first) into a transport frame and queues it.
async fn seal_and_feed<K>(io: &mut K, noise: &Mutex<TransportState>, plain: &[u8]) -> Result<(), ChannelError>
where
    K: Sink<Bytes, Error = std::io::Error> + Unpin,
{
    let mut sealed = vec![0u8; plain.len() + TAG];
    let n = crypto(|| locked(noise).write_message(plain, &mut sealed)).map_err(noise_err)?;
    sealed.truncate(n);
    // Handed over as it is, not copied.
    io.feed(Bytes::from(sealed)).await?;
    Ok(())
}

async fn recv_on<R, T>(io: &mut R, noise: &Mutex<TransportState>) -> Result<T, ChannelError>
where
    R: Stream<Item = Result<BytesMut, std::io::Error>> + Unpin,
    T: DeserializeOwned,
{
    let mut message = Vec::new();
    let mut plain = Vec::new();
    loop {
        let frame = next(io).await?;
        plain.resize(frame.len(), 0);
        let n =
            crypto(|| locked(noise).read_message(&frame, &mut plain)).map_err(|_| ChannelError::Tampered)?;
        let Some((&flag, data)) = prefix(&plain, n).split_first() else {
            return Err(ChannelError::Malformed("empty chunk".into()));
        };
        if flag == LAST && message.is_empty() {
            // A message of one chunk (nearly all): parsed where it was decrypted.
            return serde_json::from_slice(data).map_err(json_err);
        }
        if message.len() + data.len() > MAX_MESSAGE {
            return Err(ChannelError::TooLarge);
        }
        message.extend_from_slice(data);
        match flag {
            LAST => break,
            MORE => continue,
            _ => return Err(ChannelError::Malformed("bad chunk flag".into())),
        }
    }
    serde_json::from_slice(&message).map_err(json_err)
}

#[cfg(test)]
mod tests;
