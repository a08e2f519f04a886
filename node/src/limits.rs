//! Connection budgets for the peer and HTTP listeners.
//!
//! - Connections that have not authenticated (every HTTP connection, and a peer connection until
//!   its handshake succeeds) live in a small fixed [`Gate`] that does not grow with the
//!   descriptor limit, with a share per source network (a /24 for IPv4, a /64 for IPv6). A full
//!   gate admits the newcomer by closing a connection of its network or, when the whole gate is
//!   full, of the fullest network: of the address holding the most places there, the oldest that
//!   has sent nothing yet, else the oldest. A flood of idle connections, even one reopened as fast
//!   as it is closed, only ever displaces itself, while a CLI's or a member's handshake and a
//!   health probe, which send at once, get in.
//! - Authenticated peer connections (members and the CLI) count against [`Limits`], half the
//!   process's file-descriptor limit, which leaves the rest to the gates and the node's own
//!   outgoing connections; a connector without the cookie never reaches them.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use muster::NodeName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tracing::warn;

/// Failed accepts (out of descriptors) repeat every 50 ms while they last: logged per window.
static ACCEPT_FAILURES: crate::log_limit::LogLimit = crate::log_limit::LogLimit::new();

/// Accepts connections on `listener` until dropped, each handled by `handle` in a task of its own
/// with its place in `gate` (which it gives up once authenticated). Closing a connection to make
/// room is logged at powers of two, so a flood cannot flood the log; accept errors (out of
/// descriptors) pause instead of spinning. `port` names the listener in the log.
pub async fn serve<F, Fut>(listener: TcpListener, node: &NodeName, port: &str, gate: Arc<Gate>, handle: F)
where
    F: Fn(TcpStream, SocketAddr, Ticket) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    // The connections' tasks end with this loop (when the node stops, it is aborted).
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = conns.join_next() => continue,
        };
        match accepted {
            Ok((stream, addr)) => {
                let (ticket, evicted) = gate.enter(addr.ip(), stream.as_raw_fd());
                if let Some(n) = evicted
                    && n.is_power_of_two()
                {
                    warn!(
                        node = %node,
                        "{port}: {n} connection(s) that had not authenticated closed so far to make \
                         room ({} at most, {} per /24 or /64 network), the latest for one from {addr}",
                        gate.total,
                        gate.per_group
                    );
                }
                conns.spawn(handle(stream, addr, ticket));
            }
            Err(e) => {
                if let Some(n) = ACCEPT_FAILURES.admit(port) {
                    warn!(node = %node, "{port}: accept failed: {e}{}", crate::log_limit::more(n));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The source network a connection counts against: its /24 (IPv4, also when IPv4-mapped) or
/// its /64 (IPv6), so that one host's many addresses share one budget.
pub fn group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(Ipv4Addr::from(v4.to_bits() & !0xff)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => group(IpAddr::V4(v4)),
            None => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

/// The budget for connections that have not authenticated: fixed, shared per network, full
/// means the oldest connection goes.
#[derive(Debug)]
pub struct Gate {
    total: usize,
    per_group: usize,
    evicted: AtomicU64,
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    next: u64,
    count: usize,
    /// Per network, its connections by age (oldest first); dropping one closes it.
    groups: HashMap<IpAddr, BTreeMap<u64, Place>>,
}

/// One connection in the gate.
#[derive(Debug)]
struct Place {
    /// Where it came from.
    source: IpAddr,
    /// Dropped to close the connection.
    _close: oneshot::Sender<()>,
    /// The connection's socket, to see whether it has sent something.
    fd: Option<RawFd>,
    /// The connection has sent something.
    spoke: bool,
}

impl Place {
    /// Whether the connection has sent something: seen by its task, or waiting in its socket.
    fn spoke(&self) -> bool {
        self.spoke || self.fd.is_some_and(has_data)
    }
}

/// Whether bytes wait to be read on `fd` (a peek that neither blocks nor consumes).
fn has_data(fd: RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: recv writes at most one byte into `byte`, which lives for the call; MSG_PEEK leaves
    // the data in the socket and MSG_DONTWAIT never blocks. A descriptor closed (or reused) since
    // only makes the answer wrong for that one choice of connection to close, never unsafe.
    let n = unsafe { libc::recv(fd, (&raw mut byte).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    n > 0
}

/// A connection's place in the gate; dropping it frees the place.
#[derive(Debug)]
pub struct Ticket {
    gate: Arc<Gate>,
    group: IpAddr,
    id: u64,
    closed: oneshot::Receiver<()>,
    /// `closed` fired (a oneshot is not polled again after it completed).
    was_closed: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut g = self.gate.state.lock().unwrap_or_else(|e| e.into_inner());
        g.remove(self.group, self.id);
    }
}

impl GateState {
    fn remove(&mut self, group: IpAddr, id: u64) -> bool {
        let Some(members) = self.groups.get_mut(&group) else {
            return false;
        };
        let removed = members.remove(&id).is_some();
        if members.is_empty() {
            self.groups.remove(&group);
        }
        if removed {
            self.count -= 1;
        }
        removed
    }

    /// The connection to close for a newcomer from `group`: in its network when that is full,
    /// else in the fullest network when the gate is full; there, from the address holding the
    /// most places (a flood's, rather than a lone client's that the flood shares a network
    /// with), the oldest that has not spoken, else the oldest.
    fn victim(&self, group: IpAddr, per_group: usize, total: usize) -> Option<(IpAddr, u64)> {
        let pick = |g: &IpAddr| {
            let places = self.groups.get(g)?;
            let mut per_source: HashMap<IpAddr, usize> = HashMap::new();
            for p in places.values() {
                *per_source.entry(p.source).or_default() += 1;
            }
            let most = per_source.values().copied().max()?;
            // The busiest addresses' places, oldest first: the first that has not spoken (the
            // check reads the socket, so it stops at the first), else the oldest.
            let busiest = || {
                places
                    .iter()
                    .filter(|(_, p)| per_source.get(&p.source) == Some(&most))
            };
            let silent = busiest().find(|(_, p)| !p.spoke()).map(|(id, _)| *id);
            silent
                .or_else(|| busiest().next().map(|(id, _)| *id))
                .map(|id| (*g, id))
        };
        if self.groups.get(&group).map_or(0, BTreeMap::len) >= per_group {
            return pick(&group);
        }
        if self.count >= total {
            let fullest = self.groups.iter().max_by_key(|(_, m)| m.len()).map(|(g, _)| *g)?;
            return pick(&fullest);
        }
        None
    }
}

impl Gate {
    /// A gate for `total` connections, `per_group` from any one network.
    pub fn new(total: usize, per_group: usize) -> Arc<Gate> {
        Arc::new(Gate {
            total: total.max(1),
            per_group: per_group.clamp(1, total.max(1)),
            evicted: AtomicU64::new(0),
            state: Mutex::default(),
        })
    }

    /// Admits a connection from `source` (its socket `fd`, when it has one), closing one of its
    /// network or of the fullest network when full; with how many were closed so far when one
    /// was.
    pub fn enter(self: &Arc<Self>, source: IpAddr, fd: impl Into<Option<RawFd>>) -> (Ticket, Option<u64>) {
        let group = group(source);
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut evicted = None;
        if let Some((victim_group, victim)) = g.victim(group, self.per_group, self.total) {
            g.remove(victim_group, victim);
            evicted = Some(self.evicted.fetch_add(1, Ordering::Relaxed) + 1);
        }
        let id = g.next;
        g.next += 1;
        let (tx, rx) = oneshot::channel();
        g.groups.entry(group).or_default().insert(
            id,
            Place {
                source,
                _close: tx,
                fd: fd.into(),
                spoke: false,
            },
        );
        g.count += 1;
        let ticket = Ticket {
            gate: self.clone(),
            group,
            id,
            closed: rx,
            was_closed: false,
        };
        (ticket, evicted)
    }

    /// How many connections hold a place now.
    pub fn open(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).count
    }
}

impl Ticket {
    /// Waits until `stream` has something to read, then counts this connection as one that
    /// spoke (closed last when room is needed); `false` when the gate closed it first or the
    /// other side closed it without a byte.
    pub async fn heard(&mut self, stream: &TcpStream) -> bool {
        let mut byte = [0u8; 1];
        // A peek, not readiness: readiness can be spurious, and an idle connection must not pass.
        if !matches!(self.run(stream.peek(&mut byte)).await, Some(Ok(1..))) {
            return false;
        }
        let mut g = self.gate.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(place) = g.groups.get_mut(&self.group).and_then(|m| m.get_mut(&self.id)) {
            place.spoke = true;
        }
        true
    }

    /// Runs `work` unless the gate closes this connection first (`None`, also on every later
    /// call).
    pub async fn run<F: Future>(&mut self, work: F) -> Option<F::Output> {
        if self.was_closed {
            return None;
        }
        tokio::select! {
            out = work => Some(out),
            _ = &mut self.closed => {
                self.was_closed = true;
                None
            }
        }
    }
}

/// The cap on authenticated peer connections (members and the CLI): every one of them holds
/// the cookie, so there is no share per network, only a total the descriptors can afford.
#[derive(Debug)]
pub struct Limits {
    total: usize,
    open: AtomicU64,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Admitted {
    limits: Arc<Limits>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.limits.open.fetch_sub(1, Ordering::AcqRel);
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
    /// The cap for a process allowed `fd_limit` open files: half of them (between 64 and 8,192),
    /// leaving the rest to the gates, outgoing connections and files.
    pub fn for_fd_limit(fd_limit: usize) -> Arc<Limits> {
        Limits::new((fd_limit / 2).clamp(64, 8192))
    }

    /// An explicit cap.
    pub fn new(total: usize) -> Arc<Limits> {
        Arc::new(Limits {
            total,
            open: AtomicU64::new(0),
        })
    }

    /// The cap.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Admits an authenticated connection, or `None` when the cap is reached (close it).
    pub fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let total = self.total as u64;
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < total).then_some(n + 1)
            })
            .ok()
            .map(|_| Admitted { limits: self.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_are_slash_24_and_slash_64() {
        assert_eq!(group(ip("192.0.2.7")), ip("192.0.2.0"));
        assert_eq!(group(ip("::ffff:192.0.2.7")), ip("192.0.2.0"));
        assert_eq!(group(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_ne!(group(ip("192.0.3.7")), group(ip("192.0.2.7")));
    }

    #[tokio::test]
    async fn a_full_network_closes_its_own_oldest_connection_and_spares_others() {
        let gate = Gate::new(8, 2);
        let (mut other, _) = gate.enter(ip("198.51.100.1"), None);
        let (mut first, none) = gate.enter(ip("192.0.2.1"), None);
        assert_eq!(none, None);
        let (_second, _) = gate.enter(ip("192.0.2.2"), None);
        let (_third, evicted) = gate.enter(ip("192.0.2.3"), None);
        assert_eq!(evicted, Some(1), "the /24 was full");
        assert_eq!(
            first.run(std::future::pending::<()>()).await,
            None,
            "its oldest was closed"
        );
        let alive =
            tokio::time::timeout(Duration::from_millis(50), other.run(std::future::pending::<()>())).await;
        assert!(alive.is_err(), "another network's connection stays");
        assert_eq!(gate.open(), 3);
    }

    #[tokio::test]
    async fn a_full_gate_closes_the_oldest_of_the_fullest_network() {
        let gate = Gate::new(4, 3);
        let (mut lone, _) = gate.enter(ip("198.51.100.1"), None);
        let (mut flood_oldest, _) = gate.enter(ip("192.0.2.1"), None);
        let _f2 = gate.enter(ip("192.0.2.2"), None);
        let _f3 = gate.enter(ip("192.0.2.3"), None);
        let (_cli, evicted) = gate.enter(ip("203.0.113.9"), None);
        assert_eq!(evicted, Some(1));
        assert_eq!(flood_oldest.run(std::future::pending::<()>()).await, None);
        let alive =
            tokio::time::timeout(Duration::from_millis(50), lone.run(std::future::pending::<()>())).await;
        assert!(alive.is_err(), "the older connection of a small network stays");
        assert_eq!(gate.open(), 4);
    }

    #[tokio::test]
    async fn a_connection_that_spoke_is_closed_after_every_silent_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let gate = Gate::new(3, 3);
        let (mut probe, _) = gate.enter(ip("192.0.2.1"), None);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GET")
            .await
            .unwrap();
        assert!(probe.heard(&server).await);
        let (mut idle, _) = gate.enter(ip("192.0.2.2"), None);
        let _idle2 = gate.enter(ip("192.0.2.3"), None);
        let _newcomer = gate.enter(ip("192.0.2.4"), None);
        assert_eq!(
            idle.run(std::future::pending::<()>()).await,
            None,
            "the oldest silent one goes"
        );
        let alive =
            tokio::time::timeout(Duration::from_millis(50), probe.run(std::future::pending::<()>())).await;
        assert!(alive.is_err(), "the older one that spoke stays");
    }

    /// A lone client sharing a network with a flood is spared even while it has not spoken yet
    /// (a starved client between its connect and its first write): the flood's address goes.
    #[tokio::test]
    async fn the_busiest_address_of_a_network_loses_its_connections_first() {
        let gate = Gate::new(8, 4);
        let (mut flood_1, _) = gate.enter(ip("192.0.2.66"), None);
        let (mut cli, _) = gate.enter(ip("192.0.2.1"), None);
        let _flood_2 = gate.enter(ip("192.0.2.66"), None);
        let _flood_3 = gate.enter(ip("192.0.2.66"), None);
        let mut held = Vec::new();
        for _ in 0..10 {
            let (again, evicted) = gate.enter(ip("192.0.2.66"), None);
            assert!(evicted.is_some());
            held.push(again);
        }
        assert_eq!(flood_1.run(std::future::pending::<()>()).await, None);
        let alive =
            tokio::time::timeout(Duration::from_millis(50), cli.run(std::future::pending::<()>())).await;
        assert!(alive.is_err(), "the lone client's connection stays");
    }

    #[test]
    fn a_dropped_ticket_frees_its_place() {
        let gate = Gate::new(2, 2);
        let (t, _) = gate.enter(ip("192.0.2.1"), None);
        assert_eq!(gate.open(), 1);
        drop(t);
        assert_eq!(gate.open(), 0);
    }

    #[test]
    fn authenticated_connections_are_capped_and_freed_on_drop() {
        let l = Limits::new(2);
        let a = l.admit().unwrap();
        let _b = l.admit().unwrap();
        assert!(l.admit().is_none());
        drop(a);
        assert!(l.admit().is_some());
        assert_eq!(Limits::for_fd_limit(1024).total(), 512);
        assert_eq!(Limits::for_fd_limit(100).total(), 64);
        assert!(open_files_limit() >= 64);
    }
}
