//! Hostile connectors for the flood test and benchmark: connections from chosen loopback
//! addresses, and idle floods that reopen every connection the node closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

/// A connection to `to` from the loopback address `from`.
pub async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().map_err(std::io::Error::other)?)?;
    socket.connect(to).await
}

/// Six loopback addresses of one /24 network, where a local node's CLI (127.0.0.1) is too.
pub const SIX_SOURCES: &[&str] = &[
    "127.0.0.2",
    "127.0.0.3",
    "127.0.0.4",
    "127.0.0.5",
    "127.0.0.6",
    "127.0.0.7",
];

/// Idle connections held open to some ports from [`SIX_SOURCES`], each reopened as soon as the
/// node closes it; the flood ends when this is dropped.
pub struct IdleFlood {
    stop: Arc<AtomicBool>,
    reopened: Arc<AtomicU64>,
}

impl IdleFlood {
    /// `per_port` idle connections to each of `ports`.
    pub fn start(ports: &[SocketAddr], per_port: usize) -> IdleFlood {
        let flood = IdleFlood {
            stop: Arc::new(AtomicBool::new(false)),
            reopened: Arc::new(AtomicU64::new(0)),
        };
        for port in ports {
            idle_flood(
                *port,
                SIX_SOURCES,
                per_port,
                flood.stop.clone(),
                flood.reopened.clone(),
            );
        }
        flood
    }

    /// How many connections were reopened after the node closed them.
    pub fn reopened(&self) -> u64 {
        self.reopened.load(Ordering::Relaxed)
    }
}

impl Drop for IdleFlood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Keeps `n` idle connections from `sources` open to `to`, reopening each as it is closed,
/// until `stop`; counts the reopenings.
fn idle_flood(
    to: SocketAddr,
    sources: &'static [&'static str],
    n: usize,
    stop: Arc<AtomicBool>,
    reopened: Arc<AtomicU64>,
) {
    for i in 0..n {
        let from = sources[i % sources.len()];
        let stop = stop.clone();
        let reopened = reopened.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = connect_from(from, to).await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let mut buf = [0u8; 64];
                // Idle: wait until the node closes it (or the flood ends).
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => break,
                        _ => {}
                    }
                }
                reopened.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}
