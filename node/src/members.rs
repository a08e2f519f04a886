//! What a service sees of its cluster: every member with its status, metadata and since when,
//! as a watch ([`Members`]) and as events ([`Events`]). The table is fed by the node's persisted
//! membership, the liveness detector, and the metadata that members gossip with their state.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::SystemTime;

use muster::NodeName;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

/// The most metadata one node may carry: keys and values together, in bytes.
pub const MAX_METADATA_BYTES: usize = 4096;
/// Metadata kept for nodes that are not members yet (joiners whose state has not arrived).
const MAX_PENDING_META: usize = 64;
/// The longest a watcher's request for the next change is held open.
pub const LONG_POLL: std::time::Duration = std::time::Duration::from_secs(5);
/// Events kept for a slow consumer before it gets [`Event::Lagged`] instead.
const EVENT_BUFFER: usize = 1024;

/// A member's liveness and place in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum MemberStatus {
    /// A member that answers (this node itself once it serves).
    Up,
    /// A member that neither this node nor the members it asked heard from lately. It stays a
    /// member: liveness never removes anyone (cleanup may, see `node_cleanup`).
    Unreachable,
    /// A member that said it stops gracefully; it stays a member and is expected back.
    Stopped,
    /// A member that said it leaves the cluster for good; it is removed next.
    Leaving,
}

impl MemberStatus {
    /// The status as `ctl members` and `/members` print it.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberStatus::Up => "up",
            MemberStatus::Unreachable => "unreachable",
            MemberStatus::Stopped => "stopped",
            MemberStatus::Leaving => "leaving",
        }
    }
}

/// One member as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Its name.
    pub name: NodeName,
    /// Its status.
    pub status: MemberStatus,
    /// Its metadata, as it last set it (empty until it reached this node).
    pub metadata: BTreeMap<String, String>,
    /// When this node last saw its status change (or first saw it).
    #[serde(with = "unix_ms")]
    pub since: SystemTime,
}

/// Every member this node knows, sorted by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    /// Raised with every change this node saw (a watcher asks for what comes after it).
    pub version: u64,
    /// The members.
    pub members: Vec<MemberInfo>,
}

impl Members {
    /// The member named `name`.
    pub fn get(&self, name: &NodeName) -> Option<&MemberInfo> {
        self.members.iter().find(|m| m.name == *name)
    }

    /// The members that are up.
    pub fn up(&self) -> impl Iterator<Item = &MemberInfo> {
        self.members.iter().filter(|m| m.status == MemberStatus::Up)
    }
}

/// A change in the cluster as this node saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A node became a member.
    Joined {
        /// The member.
        member: MemberInfo,
    },
    /// A member is up again (after being unreachable or stopped).
    Up {
        /// The member.
        member: MemberInfo,
    },
    /// A member stopped answering.
    Unreachable {
        /// The member.
        member: MemberInfo,
    },
    /// A member stopped gracefully (it stays a member).
    Stopped {
        /// The member.
        member: MemberInfo,
    },
    /// A member said it leaves for good.
    Leaving {
        /// The member.
        member: MemberInfo,
    },
    /// A member changed its metadata.
    MetadataChanged {
        /// The member, with its new metadata.
        member: MemberInfo,
    },
    /// A member left the cluster on its own.
    Left {
        /// The node.
        name: NodeName,
    },
    /// A member was removed by cleanup or an operator (`ctl forget`).
    Forgotten {
        /// The node.
        name: NodeName,
    },
    /// The consumer fell behind and missed events: here is the whole current membership.
    Lagged {
        /// Every member now.
        members: Members,
    },
}

impl std::fmt::Display for MemberInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}", self.name, self.status.as_str())?;
        for (k, v) in &self.metadata {
            write!(f, ", {k}={v}")?;
        }
        write!(f, ")")
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Joined { member } => write!(f, "joined {member}"),
            Event::Up { member } => write!(f, "up {member}"),
            Event::Unreachable { member } => write!(f, "unreachable {member}"),
            Event::Stopped { member } => write!(f, "stopped {member}"),
            Event::Leaving { member } => write!(f, "leaving {member}"),
            Event::MetadataChanged { member } => write!(f, "metadata changed {member}"),
            Event::Left { name } => write!(f, "left {name}"),
            Event::Forgotten { name } => write!(f, "forgotten {name}"),
            Event::Lagged { members } => {
                write!(f, "lagged; now {} members:", members.members.len())?;
                for m in &members.members {
                    write!(f, " {m}")?;
                }
                Ok(())
            }
        }
    }
}

/// A stream of [`Event`]s (see `Cluster::events`).
pub struct Events {
    rx: broadcast::Receiver<Event>,
    snapshot: watch::Receiver<Members>,
}

impl Events {
    /// The next event; `None` once the node has stopped.
    pub async fn next(&mut self) -> Option<Event> {
        match self.rx.recv().await {
            Ok(e) => Some(e),
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Skip what is left of the backlog: the snapshot already contains it.
                self.rx = self.rx.resubscribe();
                Some(Event::Lagged {
                    members: self.snapshot.borrow().clone(),
                })
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// Why metadata was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// Keys and values together exceed [`MAX_METADATA_BYTES`].
    #[error("metadata of {size} bytes is larger than the {max} bytes a node may carry")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// An empty key.
    #[error("a metadata key must not be empty")]
    EmptyKey,
}

/// A node's metadata with its version: a node's own later value always has a higher version (a
/// clock reading in ms, raised past the last one), so an older value never overwrites a newer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The version.
    pub version: u64,
    /// The entries.
    pub entries: BTreeMap<String, String>,
}

impl Metadata {
    /// Checked metadata at version 0 (its version is set when it becomes a node's own).
    pub fn new(entries: BTreeMap<String, String>) -> Result<Metadata, MetadataError> {
        let m = Metadata { version: 0, entries };
        m.check()?;
        Ok(m)
    }

    fn size(&self) -> usize {
        self.entries.iter().map(|(k, v)| k.len() + v.len()).sum()
    }

    fn check(&self) -> Result<(), MetadataError> {
        if self.entries.keys().any(|k| k.is_empty()) {
            return Err(MetadataError::EmptyKey);
        }
        let size = self.size();
        if size > MAX_METADATA_BYTES {
            return Err(MetadataError::TooLarge {
                size,
                max: MAX_METADATA_BYTES,
            });
        }
        Ok(())
    }
}

/// What the table knows of one member besides its membership.
#[derive(Debug, Clone)]
struct Entry {
    status: MemberStatus,
    since: SystemTime,
    meta: Metadata,
}

#[derive(Debug, Default)]
struct Table {
    /// Current members (this node included once it is one).
    members: BTreeMap<NodeName, Entry>,
    /// Metadata heard for nodes not (yet) members here: a joiner's arrives with the state that
    /// adds it, in either order.
    pending_meta: BTreeMap<NodeName, Metadata>,
    /// Nodes that said they leave, until their removal arrives.
    leaving: BTreeSet<NodeName>,
    /// Who is unreachable now, by the liveness detector.
    unreachable: BTreeSet<NodeName>,
    /// Who said it stopped gracefully and has not been heard from since.
    stopped: BTreeSet<NodeName>,
    own: Metadata,
    /// The sequence number of the member list applied last (see `set_membership_at`).
    applied: u64,
}

/// The node's member table, its watch and its events.
#[derive(Debug)]
pub struct MemberTable {
    local: NodeName,
    table: Mutex<Table>,
    watch: watch::Sender<Members>,
    events: broadcast::Sender<Event>,
}

impl MemberTable {
    /// An empty table for node `local`.
    pub fn new(local: NodeName) -> MemberTable {
        MemberTable {
            local,
            table: Mutex::default(),
            watch: watch::channel(Members::default()).0,
            events: broadcast::channel(EVENT_BUFFER).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver of the current members.
    pub fn watch(&self) -> watch::Receiver<Members> {
        self.watch.subscribe()
    }

    /// The members now, or with `after`, once their version is above it (a watcher's long
    /// poll), or as they are after [`LONG_POLL`].
    pub async fn after(&self, after: Option<u64>) -> Members {
        let mut rx = self.watch.subscribe();
        if let Some(seen) = after {
            let _ = tokio::time::timeout(LONG_POLL, rx.wait_for(|m| m.version > seen)).await;
        }
        Members::clone(&rx.borrow())
    }

    /// A new event stream, starting now.
    pub fn events(&self) -> Events {
        Events {
            rx: self.events.subscribe(),
            snapshot: self.watch.subscribe(),
        }
    }

    /// This node's own metadata, versioned.
    pub fn own(&self) -> Metadata {
        self.lock().own.clone()
    }

    /// Sets this node's whole metadata.
    pub fn set_own(&self, mut meta: Metadata) {
        let mut t = self.lock();
        meta.version = next_version(t.own.version);
        t.own = meta.clone();
        let local = self.local.clone();
        self.apply_meta(&mut t, &local, meta);
    }

    /// Sets (or with `None` removes) one entry of this node's metadata.
    pub fn set_own_entry(&self, key: &str, value: Option<&str>) -> Result<(), MetadataError> {
        let mut next = self.own();
        match value {
            Some(v) => next.entries.insert(key.to_string(), v.to_string()),
            None => next.entries.remove(key),
        };
        next.check()?;
        self.set_own(next);
        Ok(())
    }

    /// Every member's metadata this node knows (its own included), to send with its state.
    pub fn gossip(&self) -> BTreeMap<NodeName, Metadata> {
        let t = self.lock();
        let mut all: BTreeMap<NodeName, Metadata> = t
            .members
            .iter()
            .map(|(n, e)| (n.clone(), e.meta.clone()))
            .collect();
        all.insert(self.local.clone(), t.own.clone());
        all.retain(|_, m| m.version > 0);
        all
    }

    /// Merges metadata a member sent: each node's newer version wins; this node's own entry
    /// only ever comes from itself, and oversized entries are dropped.
    pub fn merge(&self, theirs: &BTreeMap<NodeName, Metadata>) {
        let mut t = self.lock();
        for (node, meta) in theirs {
            if *node == self.local || meta.check().is_err() {
                continue;
            }
            self.apply_meta(&mut t, node, meta.clone());
        }
    }

    fn apply_meta(&self, t: &mut Table, node: &NodeName, meta: Metadata) {
        match t.members.get_mut(node) {
            Some(e) if meta.version > e.meta.version => {
                let changed = e.meta.entries != meta.entries;
                e.meta = meta;
                if changed {
                    let info = info(node, e);
                    self.publish(t, Some(Event::MetadataChanged { member: info }));
                }
            }
            Some(_) => {}
            None => {
                let newer = t.pending_meta.get(node).is_none_or(|m| meta.version > m.version);
                // Bounded: a member could gossip metadata for names that never join.
                if t.pending_meta.len() >= MAX_PENDING_META && !t.pending_meta.contains_key(node) {
                    t.pending_meta.pop_first();
                }
                if newer {
                    t.pending_meta.insert(node.clone(), meta);
                }
            }
        }
    }

    /// The persisted membership changed: `members` are the current members (tombstones
    /// excluded). Newcomers are joined, the missing left (if they said so) or forgotten.
    pub fn set_membership(&self, members: &[NodeName]) {
        let next = self.lock().applied + 1;
        self.set_membership_at(next, members, &[]);
    }

    /// Like [`MemberTable::set_membership`], for the list numbered `seq`; a list numbered at or
    /// below the last one applied is older and ignored.
    /// `departed` names the removed nodes that left on their own (the others were forgotten).
    pub fn set_membership_at(&self, seq: u64, members: &[NodeName], departed: &[NodeName]) {
        let mut t = self.lock();
        if seq <= t.applied {
            return;
        }
        t.applied = seq;
        let now = SystemTime::now();
        let current: BTreeSet<&NodeName> = members.iter().collect();
        let gone: Vec<NodeName> = t
            .members
            .keys()
            .filter(|n| !current.contains(n))
            .cloned()
            .collect();
        let mut events = Vec::new();
        for name in gone {
            t.members.remove(&name);
            t.unreachable.remove(&name);
            t.stopped.remove(&name);
            if t.leaving.remove(&name) || departed.contains(&name) {
                events.push(Event::Left { name });
            } else {
                events.push(Event::Forgotten { name });
            }
        }
        for name in members {
            if t.members.contains_key(name) {
                continue;
            }
            let meta = if *name == self.local {
                t.own.clone()
            } else {
                t.pending_meta.remove(name).unwrap_or_default()
            };
            let entry = Entry {
                status: status_of(&t, name),
                since: now,
                meta,
            };
            events.push(Event::Joined {
                member: info(name, &entry),
            });
            t.members.insert(name.clone(), entry);
        }
        if events.is_empty() {
            return;
        }
        for e in events {
            let _ = self.events.send(e);
        }
        self.publish(&mut t, None);
    }

    /// The liveness detector's verdict on `node`; whether it changed the node's status.
    pub fn set_reachable(&self, node: &NodeName, reachable: bool) -> bool {
        let mut t = self.lock();
        let changed = if reachable {
            t.unreachable.remove(node)
        } else {
            t.unreachable.insert(node.clone())
        };
        if changed {
            self.restatus(&mut t, node);
        }
        changed
    }

    /// `node` said it stops gracefully.
    pub fn set_stopped(&self, node: &NodeName) {
        let mut t = self.lock();
        if t.stopped.insert(node.clone()) {
            self.restatus(&mut t, node);
        }
    }

    /// `node` runs again (it pushed its state or joined) after it said it stopped.
    pub fn set_running(&self, node: &NodeName) {
        let mut t = self.lock();
        if t.stopped.remove(node) {
            self.restatus(&mut t, node);
        }
    }

    /// `node` said it leaves for good.
    pub fn set_leaving(&self, node: &NodeName) {
        let mut t = self.lock();
        if t.leaving.insert(node.clone()) {
            self.restatus(&mut t, node);
        }
    }

    /// Whether the detector holds `node` unreachable now.
    pub fn is_unreachable(&self, node: &NodeName) -> bool {
        self.lock().unreachable.contains(node)
    }

    fn restatus(&self, t: &mut Table, node: &NodeName) {
        let status = status_of(t, node);
        let Some(e) = t.members.get_mut(node) else {
            return;
        };
        if e.status == status {
            return;
        }
        e.status = status;
        e.since = SystemTime::now();
        let member = info(node, e);
        let event = match status {
            MemberStatus::Up => Event::Up { member },
            MemberStatus::Unreachable => Event::Unreachable { member },
            MemberStatus::Stopped => Event::Stopped { member },
            MemberStatus::Leaving => Event::Leaving { member },
        };
        self.publish(t, Some(event));
    }

    /// Sends `event` and the new snapshot.
    fn publish(&self, t: &mut Table, event: Option<Event>) {
        if let Some(e) = event {
            let _ = self.events.send(e);
        }
        let version = self.watch.borrow().version + 1;
        let members = Members {
            version,
            members: t.members.iter().map(|(n, e)| info(n, e)).collect(),
        };
        self.watch.send_replace(members);
    }
}

fn status_of(t: &Table, node: &NodeName) -> MemberStatus {
    if t.leaving.contains(node) {
        MemberStatus::Leaving
    } else if t.stopped.contains(node) {
        MemberStatus::Stopped
    } else if t.unreachable.contains(node) {
        MemberStatus::Unreachable
    } else {
        MemberStatus::Up
    }
}

fn info(name: &NodeName, e: &Entry) -> MemberInfo {
    MemberInfo {
        name: name.clone(),
        status: e.status,
        metadata: e.meta.entries.clone(),
        since: e.since,
    }
}

/// A version above `last` from the clock in ms: a restarted node's metadata (version from its
/// clock) beats what it set before it stopped.
fn next_version(last: u64) -> u64 {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    now.max(last.saturating_add(1))
}

/// `SystemTime` as Unix milliseconds.
mod unix_ms {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        s.serialize_u64(ms)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let ms = u64::deserialize(d)?;
        Ok(UNIX_EPOCH + Duration::from_millis(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeName {
        format!("m@{s}").parse().unwrap()
    }

    fn meta(version: u64, k: &str, v: &str) -> Metadata {
        Metadata {
            version,
            entries: [(k.to_string(), v.to_string())].into(),
        }
    }

    #[tokio::test]
    async fn joins_status_changes_metadata_and_removals_are_events_and_snapshots() {
        let t = MemberTable::new(n("a"));
        let mut events = t.events();
        let watch = t.watch();
        t.set_membership(&[n("a"), n("b")]);
        assert!(matches!(events.next().await, Some(Event::Joined { member }) if member.name == n("a")));
        assert!(matches!(events.next().await, Some(Event::Joined { member }) if member.name == n("b")));
        t.merge(&[(n("b"), meta(5, "port", "7000"))].into());
        match events.next().await {
            Some(Event::MetadataChanged { member }) => assert_eq!(member.metadata["port"], "7000"),
            other => panic!("{other:?}"),
        }
        // An older version never overwrites a newer one.
        t.merge(&[(n("b"), meta(4, "port", "6000"))].into());
        assert_eq!(watch.borrow().get(&n("b")).unwrap().metadata["port"], "7000");
        t.set_reachable(&n("b"), false);
        assert!(matches!(events.next().await, Some(Event::Unreachable { .. })));
        assert_eq!(
            watch.borrow().get(&n("b")).unwrap().status,
            MemberStatus::Unreachable
        );
        t.set_reachable(&n("b"), true);
        assert!(matches!(events.next().await, Some(Event::Up { .. })));
        t.set_stopped(&n("b"));
        assert!(matches!(events.next().await, Some(Event::Stopped { .. })));
        t.set_reachable(&n("b"), true);
        assert_eq!(
            watch.borrow().get(&n("b")).unwrap().status,
            MemberStatus::Stopped,
            "heard before it stopped"
        );
        t.set_running(&n("b"));
        assert!(matches!(events.next().await, Some(Event::Up { .. })));
        t.set_leaving(&n("b"));
        assert!(matches!(events.next().await, Some(Event::Leaving { .. })));
        t.set_membership(&[n("a")]);
        assert!(matches!(events.next().await, Some(Event::Left { name }) if name == n("b")));
        assert_eq!(watch.borrow().members.len(), 1);
    }

    #[tokio::test]
    async fn a_removal_that_says_the_node_left_is_reported_left_whoever_relayed_it() {
        let t = MemberTable::new(n("a"));
        t.set_membership(&[n("a"), n("b"), n("c")]);
        let mut events = t.events();
        t.set_membership_at(10, &[n("a"), n("c")], &[n("b")]);
        assert!(matches!(events.next().await, Some(Event::Left { name }) if name == n("b")));
        t.set_membership_at(11, &[n("a")], &[n("b")]);
        assert!(matches!(events.next().await, Some(Event::Forgotten { name }) if name == n("c")));
        // An older list told late changes nothing.
        t.set_membership_at(9, &[n("a"), n("b"), n("c")], &[]);
        assert_eq!(t.watch().borrow().members.len(), 1);
    }

    #[tokio::test]
    async fn metadata_that_arrives_before_the_membership_is_kept_for_it() {
        let t = MemberTable::new(n("a"));
        t.merge(&[(n("c"), meta(3, "zone", "b"))].into());
        t.set_membership(&[n("a"), n("c")]);
        assert_eq!(t.watch().borrow().get(&n("c")).unwrap().metadata["zone"], "b");
    }

    #[tokio::test]
    async fn a_slow_consumer_gets_a_snapshot_instead_of_silent_loss() {
        let t = MemberTable::new(n("a"));
        let mut events = t.events();
        let names: Vec<NodeName> = (0..EVENT_BUFFER + 10).map(|i| n(&format!("h{i}"))).collect();
        for i in 1..=names.len() {
            t.set_membership(&names[..i]);
        }
        match events.next().await {
            Some(Event::Lagged { members }) => assert_eq!(members.members.len(), names.len()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn own_metadata_is_bounded_and_never_taken_from_others() {
        let t = MemberTable::new(n("a"));
        let e = t
            .set_own_entry("k", Some(&"x".repeat(MAX_METADATA_BYTES)))
            .unwrap_err();
        assert!(matches!(e, MetadataError::TooLarge { .. }), "{e}");
        t.set_own_entry("k", Some("v")).unwrap();
        let v = t.own().version;
        t.merge(&[(n("a"), meta(v + 100, "k", "forged"))].into());
        assert_eq!(t.own().entries["k"], "v");
        t.set_own_entry("k", Some("w")).unwrap();
        assert!(t.own().version > v);
    }
}
