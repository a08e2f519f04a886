//! Connection caps for the peer and HTTP listeners: a total per listener and a share per source
//! address, derived from the process's file-descriptor limit so that a flood of connections can
//! never take the descriptors the node needs for its own outgoing probes, and so that one source
//! flooding the port leaves room for the others.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use muster::NodeName;
use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

/// Accepts connections on `listener` forever, each handled by `handle` in a task of its own,
/// within caps derived from the descriptor limit. Connections over a cap are closed at once
/// (logged at powers of two, so a flood cannot flood the log); accept errors (out of
/// descriptors) pause instead of spinning. `port` names the listener in the log.
pub async fn serve<F, Fut>(listener: TcpListener, node: &NodeName, port: &str, handle: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limits = Limits::for_fd_limit(open_files_limit());
    let mut refused: u64 = 0;
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                let Some(admitted) = limits.admit(addr.ip()) else {
                    refused += 1;
                    if refused.is_power_of_two() {
                        warn!(
                            node = %node,
                            "{port}: connection cap reached ({} in all, {} per source); {refused} \
                             connection(s) refused so far, the latest from {addr}",
                            limits.total(),
                            limits.per_source()
                        );
                    }
                    drop(stream);
                    continue;
                };
                let handled = handle(stream, addr);
                tokio::spawn(async move {
                    handled.await;
                    drop(admitted);
                });
            }
            Err(e) => {
                warn!(node = %node, "{port}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Caps for one listener.
#[derive(Debug)]
pub struct Limits {
    total: usize,
    per_source: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Admitted {
    limits: Arc<Limits>,
    source: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut g = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
        g.0 = g.0.saturating_sub(1);
        if let Some(n) = g.1.get_mut(&self.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                g.1.remove(&self.source);
            }
        }
    }
}

/// The soft limit on open files, from `/proc/self/limits` (1024 where it cannot be read).
pub fn open_files_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_string))
        })
        .and_then(|soft| soft.parse().ok())
        .unwrap_or(1024)
}

impl Limits {
    /// Caps for a process allowed `fd_limit` open files: a quarter of them per listener (between
    /// 64 and 4,096), and a quarter of that (at least 64, room for a local cluster of dozens of
    /// nodes on one address) per source.
    pub fn for_fd_limit(fd_limit: usize) -> Arc<Limits> {
        let total = (fd_limit / 4).clamp(64, 4096);
        Limits::new(total, (total / 4).max(64))
    }

    /// Explicit caps.
    pub fn new(total: usize, per_source: usize) -> Arc<Limits> {
        Arc::new(Limits {
            total,
            per_source,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// The total cap.
    pub fn total(&self) -> usize {
        self.total
    }

    /// The cap per source address.
    pub fn per_source(&self) -> usize {
        self.per_source
    }

    /// Admits a connection from `source`, or `None` when a cap is reached (close it at once).
    pub fn admit(self: &Arc<Self>, source: IpAddr) -> Option<Admitted> {
        let mut g = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if g.0 >= self.total {
            return None;
        }
        let from_source = g.1.get(&source).copied().unwrap_or(0);
        if from_source >= self.per_source {
            return None;
        }
        g.0 += 1;
        g.1.insert(source, from_source + 1);
        Some(Admitted {
            limits: self.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_the_total_and_each_source_and_frees_on_drop() {
        let l = Limits::new(4, 2);
        let remote: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let a = l.admit(remote).unwrap();
        let _b = l.admit(remote).unwrap();
        assert!(l.admit(remote).is_none(), "per-source cap");
        let _c = l.admit(other).unwrap();
        let _d = l.admit(lo).unwrap();
        assert!(l.admit("192.0.2.9".parse().unwrap()).is_none(), "total cap");
        drop(a);
        assert!(l.admit(remote).is_some(), "a closed connection frees its place");
    }

    #[test]
    fn derives_caps_from_the_descriptor_limit() {
        assert_eq!(Limits::for_fd_limit(1024).total(), 256);
        assert_eq!(Limits::for_fd_limit(100).total(), 64);
        assert_eq!(Limits::for_fd_limit(1 << 20).total(), 4096);
        assert!(open_files_limit() >= 64);
    }
}
