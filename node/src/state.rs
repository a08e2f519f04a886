//! Membership state, its merge rule, and its atomic persistence in the data dir.
//!
//! Each member entry carries an incarnation and a removed flag. Merging takes, per node, the entry
//! with the higher incarnation, and at equal incarnations a removal wins ("adds minus removes",
//! keyed by node and incarnation). So concurrent joins through different members never lose a
//! member, a forget is never undone by an old copy, and a reset node (new incarnation) can rejoin.
//!
//! The data dir keeps the state in two slots, `state.a` and `state.b` ([`slot`]). A save
//! overwrites the older slot in place and returns once it is flushed, so a save costs one
//! `fdatasync` and the other slot always holds the save before it: a crash in the middle of a
//! save loses only that save, which was never acknowledged.

pub mod slot;

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use muster::{ClusterId, Commitment, NodeName};
use serde::{Deserialize, Serialize};

/// One member's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Bumped when the node resets and rejoins.
    pub incarnation: u64,
    /// Forgotten.
    pub removed: bool,
    /// Removed because the node itself left (see `ClusterState::leave`), not forgotten.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub left: bool,
}

/// A cluster's membership as one node knows it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClusterState {
    /// The cluster, `None` when blank.
    pub cluster: Option<ClusterId>,
    /// Every node ever added, with removals kept as tombstones.
    pub members: BTreeMap<NodeName, Member>,
    /// Increases with every change this node makes or merges.
    pub version: u64,
    /// The node that formed the cluster (unknown in states written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub founder: Option<NodeName>,
}

/// A node the cluster removed at this incarnation or later cannot be added back as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{node} was removed from cluster {}; reset it before it rejoins", cluster.as_ref().map(|c| c.to_string()).unwrap_or_default())]
pub struct Removed {
    /// The node.
    pub node: NodeName,
    /// The cluster that removed it.
    pub cluster: Option<ClusterId>,
}

/// Merging states of two different clusters is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state belongs to cluster {theirs}, this node is in cluster {ours}")]
pub struct ForeignCluster {
    /// This node's cluster.
    pub ours: ClusterId,
    /// The other state's cluster.
    pub theirs: ClusterId,
}

/// How far ahead of a node's clock a peer's incarnation (a join time in ms) may be: hosts' clocks
/// differ by far less than an hour.
pub const INCARNATION_SKEW_MS: u64 = 3_600_000;

impl ClusterState {
    /// A new cluster with one member.
    pub fn formed(cluster: ClusterId, node: &NodeName, incarnation: u64) -> Self {
        ClusterState {
            cluster: Some(cluster),
            members: BTreeMap::from([(
                node.clone(),
                Member {
                    incarnation,
                    removed: false,
                    left: false,
                },
            )]),
            version: 1,
            founder: Some(node.clone()),
        }
    }

    /// The members that are not removed.
    pub fn alive(&self) -> Vec<NodeName> {
        self.members
            .iter()
            .filter(|(_, m)| !m.removed)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Whether `node` is a current member.
    pub fn is_member(&self, node: &NodeName) -> bool {
        self.members.get(node).is_some_and(|m| !m.removed)
    }

    /// Adds or re-adds `node` at `incarnation`; refused if it was removed at that incarnation or
    /// later. Returns whether anything changed.
    pub fn add(&mut self, node: &NodeName, incarnation: u64) -> Result<bool, Removed> {
        match self.members.get(node) {
            Some(m) if m.removed && m.incarnation >= incarnation => Err(Removed {
                node: node.clone(),
                cluster: self.cluster.clone(),
            }),
            Some(m) if !m.removed && m.incarnation >= incarnation => Ok(false),
            _ => {
                self.members.insert(
                    node.clone(),
                    Member {
                        incarnation,
                        removed: false,
                        left: false,
                    },
                );
                self.version = self.version.saturating_add(1);
                Ok(true)
            }
        }
    }

    /// The incarnation an accepting member gives a joining node: its own clock, but always above
    /// whatever the cluster already knows of that node (a tombstone after a forget, an old entry
    /// after a wiped disk), so a joiner whose clock stepped back is never locked out.
    pub fn next_incarnation(&self, node: &NodeName, now_ms: u64) -> u64 {
        match self.members.get(node) {
            Some(m) => now_ms.max(m.incarnation.saturating_add(1)),
            None => now_ms,
        }
    }

    /// Marks `node` removed because it left on its own (its members report it left, not
    /// forgotten). Returns whether anything changed.
    pub fn leave(&mut self, node: &NodeName) -> bool {
        let changed = self.remove(node);
        if let Some(m) = self.members.get_mut(node) {
            m.left = true;
        }
        changed
    }

    /// The nodes that left on their own (tombstones of `leave`).
    pub fn departed(&self) -> Vec<NodeName> {
        self.members
            .iter()
            .filter(|(_, m)| m.removed && m.left)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Marks `node` removed at its current incarnation. Returns whether anything changed.
    pub fn remove(&mut self, node: &NodeName) -> bool {
        match self.members.get_mut(node) {
            Some(m) if !m.removed => {
                m.removed = true;
                self.version = self.version.saturating_add(1);
                true
            }
            _ => false,
        }
    }

    /// Merges a copy a peer sent, ignoring entries whose incarnation is further ahead of this
    /// node's clock (`now_ms`) than [`INCARNATION_SKEW_MS`]: such an entry could never be
    /// superseded (a tombstone at the largest incarnation would forget a node for good).
    pub fn merge_from_peer(&mut self, other: &ClusterState, now_ms: u64) -> Result<bool, ForeignCluster> {
        let limit = now_ms.saturating_add(INCARNATION_SKEW_MS);
        if other.members.values().all(|m| m.incarnation <= limit) {
            return self.merge(other);
        }
        let mut plausible = other.clone();
        plausible.members.retain(|_, m| m.incarnation <= limit);
        let ignored: Vec<String> = other
            .members
            .iter()
            .filter(|(_, m)| m.incarnation > limit)
            .map(|(n, _)| n.to_string())
            .collect();
        tracing::warn!(
            "ignored the entries of {} from a peer: their incarnations are more than an hour ahead of \
             this node's clock (a clock set wrong on this node or on the member that assigned them?)",
            ignored.join(", ")
        );
        self.merge(&plausible)
    }

    /// Merges another copy of the same cluster's state. Returns whether this state changed.
    pub fn merge(&mut self, other: &ClusterState) -> Result<bool, ForeignCluster> {
        match (&self.cluster, &other.cluster) {
            (Some(a), Some(b)) if a != b => {
                return Err(ForeignCluster {
                    ours: a.clone(),
                    theirs: b.clone(),
                });
            }
            (None, Some(b)) => self.cluster = Some(b.clone()),
            _ => {}
        }
        let mut changed = false;
        if self.founder.is_none() && other.founder.is_some() {
            self.founder.clone_from(&other.founder);
            changed = true;
        }
        for (node, theirs) in &other.members {
            let wins = match self.members.get(node) {
                None => true,
                Some(mine) => {
                    theirs.incarnation > mine.incarnation
                        || (theirs.incarnation == mine.incarnation && theirs.removed && !mine.removed)
                }
            };
            if wins {
                self.members.insert(node.clone(), *theirs);
                changed = true;
            }
        }
        // Peer-supplied versions are untrusted: saturate instead of overflowing.
        self.version = self.version.max(other.version).saturating_add(u64::from(changed));
        Ok(changed)
    }
}

/// Everything a node persists.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Persisted {
    /// The membership.
    pub state: ClusterState,
    /// This node's incarnation (set when it forms or joins; a reset picks a new one).
    pub incarnation: u64,
    /// Members that were running when this node last stopped gracefully.
    pub running_at_shutdown: Vec<NodeName>,
    /// No other member was running when this node stopped.
    pub last_to_stop: bool,
    /// A blank node's standing commitment to a seed's intent (or its own claim); see
    /// `muster::Commitment`. Cleared when the node forms, joins or resets.
    /// Stored under the key `vouch`: the on-disk format does not change with the name.
    #[serde(rename = "vouch", default, skip_serializing_if = "Option::is_none")]
    pub commitment: Option<Commitment>,
    /// This data dir's id (`Membership::disk_id`): drawn when first loaded without one, new after
    /// a reset, so that peers can tell a seed that restarted from one that lost its data.
    #[serde(default)]
    pub disk: u64,
    /// A formation begun and not finished: persisted before the service's `on_form` hook runs
    /// (its state then belongs to this cluster), completed at the next start if interrupted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forming: Option<ClusterId>,
}

/// The two slots (see [`slot`]): each save overwrites the older one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    A,
    B,
}

impl Slot {
    const BOTH: [Slot; 2] = [Slot::A, Slot::B];

    fn file(self) -> &'static str {
        match self {
            Slot::A => "state.a",
            Slot::B => "state.b",
        }
    }

    fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

/// The single state file of earlier versions: read when no slot exists, removed by the first
/// save.
const LEGACY_FILE: &str = "state.json";

/// Test knob: `MUSTER_TEST_FSYNC_DELAY_MS` makes every state fsync this much slower (an SD card
/// on a bad day), so tests can check that a slow disk never delays probe answers.
fn slow_disk() {
    static DELAY: std::sync::OnceLock<Option<std::time::Duration>> = std::sync::OnceLock::new();
    let delay = DELAY.get_or_init(|| {
        std::env::var("MUSTER_TEST_FSYNC_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(std::time::Duration::from_millis)
    });
    if let Some(d) = delay {
        std::thread::sleep(*d);
    }
}
const FORCE_BOOT_FILE: &str = "force_boot";

/// The error for a state the node cannot read: it will not start on it.
fn corrupt(what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!(
            "{what}; the node will not start on a state it cannot read. Restore the files from a \
             backup, or move them away to reset the node: it then starts blank and joins its \
             cluster again (what `muster ctl reset` does on a running node)"
        ),
    )
}

/// Writes `bytes` at the start of `f` and newlines after them up to `size`, so that the slot
/// reads clean and its blocks stay allocated.
fn write_padded(f: &std::fs::File, bytes: &[u8], size: usize) -> std::io::Result<()> {
    const NEWLINES: [u8; 1024] = [b'\n'; 1024];
    f.write_all_at(bytes, 0)?;
    let mut at = bytes.len();
    while at < size {
        let n = (size - at).min(NEWLINES.len());
        f.write_all_at(NEWLINES.get(..n).unwrap_or_default(), at as u64)?;
        at += n;
    }
    Ok(())
}

/// Reads the single state file of earlier versions; a missing file is a blank node.
fn load_legacy(path: &Path) -> std::io::Result<Persisted> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| corrupt(&format!("{} is corrupt ({e})", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Persisted::default()),
        Err(e) => Err(e),
    }
}

/// The data dir: the state in two slots, written in turn, and the force-boot marker, under an
/// exclusive lock so that a second process pointed at the same dir cannot interleave its writes.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    /// The exclusive lock (advisory `flock`), held until [`Store::close`] or until every clone
    /// of the store is dropped.
    lock: Arc<Mutex<Option<std::fs::File>>>,
    /// Set by [`Store::close`]: saves are refused from then on.
    closed: Arc<std::sync::atomic::AtomicBool>,
    /// Which slot holds the last save, once the slots were read.
    cursor: Arc<Mutex<Option<Cursor>>>,
}

const LOCK_FILE: &str = "lock";

/// What the store knows of its slots between saves.
#[derive(Debug, Clone, Copy, Default)]
struct Cursor {
    /// The slot holding the newest good state, if any.
    newest: Option<Slot>,
    /// Its sequence number (0 when there is none).
    seq: u64,
    /// Each slot file's size (0: missing).
    sizes: (usize, usize),
    /// The legacy state file is still there.
    legacy: bool,
}

impl Cursor {
    fn size(&mut self, slot: Slot) -> &mut usize {
        match slot {
            Slot::A => &mut self.sizes.0,
            Slot::B => &mut self.sizes.1,
        }
    }
}

/// One slot as read from disk.
enum Read {
    Missing,
    Good {
        seq: u64,
        state: Box<Persisted>,
        size: usize,
    },
    Bad {
        why: String,
        size: usize,
    },
}

impl Store {
    /// A store in `dir`, creating it (mode 0700) if needed, and taking its exclusive lock: a
    /// data dir another running node holds is refused with the path in the error.
    /// Whether `dir` can be a data dir, without changing anything: a writable directory, or a
    /// path whose nearest existing ancestor is a writable directory (it is created at start).
    /// The error says which path is wrong and why.
    pub fn check_dir(dir: &Path) -> std::io::Result<()> {
        let mut at = dir;
        loop {
            match std::fs::metadata(at) {
                Ok(m) if m.is_dir() => break,
                Ok(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotADirectory,
                        format!("{} is a file, not a directory", at.display()),
                    ));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => match at.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => at = parent,
                    _ => return Ok(()),
                },
                Err(e) => return Err(std::io::Error::new(e.kind(), format!("{}: {e}", at.display()))),
            }
        }
        if !writable(at) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("{} is not writable by this user", at.display()),
            ));
        }
        Ok(())
    }

    pub fn open(dir: &Path) -> std::io::Result<Store> {
        Store::check_dir(dir)?;
        let mut store = Store::unlocked(dir)?;
        let path = dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    format!(
                        "data dir {} is in use by another muster process (it holds {}); stop that \
                         node first, or give this one its own data_dir",
                        dir.display(),
                        path.display()
                    ),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        store.lock = Arc::new(Mutex::new(Some(file)));
        Ok(store)
    }

    /// A store in `dir` without the lock: for offline tools (`ctl force-boot --data-dir`) that
    /// only touch the force-boot marker, and for tests that read a stopped node's state.
    pub fn unlocked(dir: &Path) -> std::io::Result<Store> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        Ok(Store {
            dir: dir.to_path_buf(),
            lock: Arc::default(),
            closed: Arc::default(),
            cursor: Arc::default(),
        })
    }

    /// Refuses every later save and releases the data dir's lock, after a save in progress has
    /// finished: another store (in this process or another) may open the dir from then on, while
    /// a task of the stopped node that still holds a clone can no longer write to it.
    pub fn close(&self) {
        let _no_save_in_progress = self.cursor.lock().unwrap_or_else(|e| e.into_inner());
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(self.lock.lock().unwrap_or_else(|e| e.into_inner()).take());
    }

    /// The data dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The paths of the two state slots.
    pub fn slot_paths(&self) -> [PathBuf; 2] {
        Slot::BOTH.map(|s| self.dir.join(s.file()))
    }

    fn read_slot(path: &Path) -> std::io::Result<Read> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Read::Missing),
            Err(e) => return Err(e),
        };
        let size = bytes.len();
        let decoded = slot::decode(&bytes).map_err(|e| e.to_string()).and_then(|d| {
            serde_json::from_slice::<Persisted>(d.json)
                .map(|p| (d.seq, p))
                .map_err(|e| format!("the state does not parse: {e}"))
        });
        Ok(match decoded {
            Ok((seq, state)) => Read::Good {
                seq,
                state: Box::new(state),
                size,
            },
            Err(why) => Read::Bad { why, size },
        })
    }

    /// Loads the persisted state: the newer good slot. A slot that does not decode while the
    /// other does is a save a crash tore (that save never completed, so the other slot holds
    /// the last one): it is named in a warning and overwritten by the next save. Neither slot
    /// good is an error that names both and the fix; no slot at all reads the state file of
    /// earlier versions, and without that the node is blank.
    pub fn load(&self) -> std::io::Result<Persisted> {
        let mut reads = Vec::with_capacity(2);
        for slot in Slot::BOTH {
            let path = self.dir.join(slot.file());
            let read = Self::read_slot(&path)?;
            reads.push((slot, path, read));
        }
        let mut cursor = Cursor::default();
        let mut best: Option<(Slot, &Path, u64, &Persisted)> = None;
        for (slot, path, r) in &reads {
            match r {
                Read::Missing => {}
                Read::Good { seq, state, size } => {
                    *cursor.size(*slot) = *size;
                    if best.is_none_or(|(_, _, s, _)| *seq > s) {
                        best = Some((*slot, path, *seq, state));
                    }
                }
                Read::Bad { size, .. } => *cursor.size(*slot) = *size,
            }
        }
        let legacy = self.dir.join(LEGACY_FILE);
        cursor.legacy = legacy.exists();
        let state = match best {
            Some((slot, good, seq, state)) => {
                for (_, path, r) in &reads {
                    if let Read::Bad { why, .. } = r {
                        tracing::warn!(
                            "{} is torn or damaged ({why}); using {}, the save before it: the next \
                             save overwrites the damaged slot",
                            path.display(),
                            good.display()
                        );
                    }
                }
                cursor.newest = Some(slot);
                cursor.seq = seq;
                state.clone()
            }
            None if reads.iter().any(|(_, _, r)| matches!(r, Read::Bad { .. })) => {
                let whys: Vec<String> = reads
                    .iter()
                    .filter_map(|(_, p, r)| match r {
                        Read::Bad { why, .. } => Some(format!("{} is corrupt ({why})", p.display())),
                        _ => None,
                    })
                    .collect();
                return Err(corrupt(&format!(
                    "{}; no good copy of the state is left",
                    whys.join("; ")
                )));
            }
            None => load_legacy(&legacy)?,
        };
        *self.cursor.lock().unwrap_or_else(|e| e.into_inner()) = Some(cursor);
        Ok(state)
    }

    /// Writes the state into the older slot, and returns once it is on disk. The slot is
    /// overwritten in place and `fdatasync`ed: one flush, no metadata to journal. A slot that is
    /// missing or too small is replaced whole instead (temp file, fsync, rename, fsync of the
    /// directory), at twice the size needed. A failed write names the file and leaves the other
    /// slot, the last save, as it was.
    pub fn save(&self, p: &Persisted) -> std::io::Result<()> {
        let mut guard = self.cursor.lock().unwrap_or_else(|e| e.into_inner());
        let mut cursor = match *guard {
            Some(c) => c,
            None => {
                drop(guard);
                self.load()?;
                guard = self.cursor.lock().unwrap_or_else(|e| e.into_inner());
                guard.unwrap_or_default()
            }
        };
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::other(format!(
                "the node using {} has stopped; its state is no longer written",
                self.dir.display()
            )));
        }
        let target = cursor.newest.map_or(Slot::A, Slot::other);
        let path = self.dir.join(target.file());
        let seq = cursor.seq.saturating_add(1);
        let mut bytes = slot::buffer();
        serde_json::to_writer_pretty(&mut bytes, p).map_err(std::io::Error::other)?;
        slot::seal(seq, &mut bytes);
        let size = cursor.size(target);
        let written = if bytes.len() <= *size {
            self.overwrite(&path, &bytes, *size)
        } else {
            let grown = slot::capacity_for(bytes.len());
            self.replace(&path, &bytes, grown).map(|()| *size = grown)
        };
        written.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot write {}: {e} (the previous state is kept)",
                    path.display()
                ),
            )
        })?;
        cursor.newest = Some(target);
        cursor.seq = seq;
        if cursor.legacy {
            // The slot is on disk and its directory entry too: the old file can go. If this
            // removal is lost, the good slot still wins over it at the next start.
            match std::fs::remove_file(self.dir.join(LEGACY_FILE)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!("cannot remove {}: {e}", self.dir.join(LEGACY_FILE).display())
                }
                _ => cursor.legacy = false,
            }
        }
        *guard = Some(cursor);
        Ok(())
    }

    /// The fast path: the slot's blocks are already allocated, so `fdatasync` has only data to
    /// flush.
    fn overwrite(&self, path: &Path, bytes: &[u8], size: usize) -> std::io::Result<()> {
        let f = std::fs::OpenOptions::new().write(true).open(path)?;
        write_padded(&f, bytes, size)?;
        slow_disk();
        f.sync_data()
    }

    /// The slow path, for a new or outgrown slot: the whole file is replaced atomically.
    fn replace(&self, path: &Path, bytes: &[u8], size: usize) -> std::io::Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let written = (|| {
            let f = std::fs::File::create(&tmp)?;
            write_padded(&f, bytes, size)?;
            slow_disk();
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// Whether the force-boot marker is set.
    pub fn force_boot(&self) -> bool {
        self.dir.join(FORCE_BOOT_FILE).exists()
    }

    /// Sets or clears the force-boot marker.
    pub fn set_force_boot(&self, on: bool) -> std::io::Result<()> {
        let path = self.dir.join(FORCE_BOOT_FILE);
        if on {
            std::fs::write(&path, b"force boot at next start\n")
        } else {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }
    }
}

/// Whether this process may create files in the directory `dir` (access(2), which honours
/// root, ACLs and read-only mounts).
fn writable(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `path` is a valid NUL-terminated string that lives for the call.
    unsafe { libc::access(path.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeName {
        format!("m@{s}").parse().unwrap()
    }

    fn c() -> ClusterId {
        ClusterId("c1".into())
    }

    #[test]
    fn concurrent_joins_through_different_members_are_both_kept() {
        let base = ClusterState::formed(c(), &n("a"), 1);
        let mut x = base.clone();
        let mut y = base.clone();
        x.add(&n("b"), 5).unwrap();
        y.add(&n("c"), 7).unwrap();
        let mut x2 = x.clone();
        x2.merge(&y).unwrap();
        y.merge(&x).unwrap();
        assert_eq!(x2.alive(), vec![n("a"), n("b"), n("c")]);
        assert_eq!(y.alive(), x2.alive());
    }

    #[test]
    fn a_removal_wins_at_equal_incarnation_and_is_not_undone_by_an_old_copy() {
        let mut s = ClusterState::formed(c(), &n("a"), 1);
        s.add(&n("b"), 5).unwrap();
        let old = s.clone();
        s.remove(&n("b"));
        assert!(!s.merge(&old).unwrap());
        assert_eq!(s.alive(), vec![n("a")]);
        let mut o = old.clone();
        o.merge(&s).unwrap();
        assert_eq!(o.alive(), vec![n("a")]);
        assert!(s.add(&n("b"), 5).unwrap_err().to_string().contains("reset it"));
        assert!(
            s.add(&n("b"), 6).unwrap(),
            "a reset node (new incarnation) may rejoin"
        );
    }

    /// A member cannot forget another for good by pushing a tombstone nobody can supersede.
    #[test]
    fn a_peers_entry_from_the_far_future_is_ignored() {
        let now = 1_000_000;
        let mut s = ClusterState::formed(c(), &n("a"), 1);
        s.add(&n("b"), now).unwrap();
        let mut pushed = s.clone();
        pushed.members.insert(
            n("b"),
            Member {
                incarnation: u64::MAX,
                removed: true,
                left: false,
            },
        );
        pushed.add(&n("c"), now + 10).unwrap();
        assert!(
            s.merge_from_peer(&pushed, now).unwrap(),
            "the plausible entry is merged"
        );
        assert!(s.is_member(&n("b")), "the far-future tombstone is not");
        assert!(s.is_member(&n("c")));
        let skewed = now + INCARNATION_SKEW_MS;
        pushed.members.insert(
            n("b"),
            Member {
                incarnation: skewed,
                removed: true,
                left: false,
            },
        );
        assert!(s.merge_from_peer(&pushed, now).unwrap());
        assert!(!s.is_member(&n("b")), "within the allowed clock skew it counts");
    }

    #[test]
    fn the_accepting_member_assigns_incarnations_above_any_tombstone() {
        let mut s = ClusterState::formed(c(), &n("a"), 1);
        s.add(&n("b"), 5_000).unwrap();
        s.remove(&n("b"));
        // b's clock stepped back (no RTC): it asks with an older time; it still gets in.
        let inc = s.next_incarnation(&n("b"), 1_000);
        assert_eq!(inc, 5_001);
        assert!(s.add(&n("b"), inc).unwrap());
        assert_eq!(s.next_incarnation(&n("c"), 1_000), 1_000);
    }

    #[test]
    fn versions_from_peers_saturate_instead_of_overflowing() {
        let mut a = ClusterState::formed(c(), &n("a"), 1);
        let mut b = a.clone();
        b.add(&n("b"), 2).unwrap();
        b.version = u64::MAX;
        assert!(a.merge(&b).unwrap());
        assert_eq!(a.version, u64::MAX);
        a.add(&n("c"), 3).unwrap();
        a.remove(&n("c"));
        assert_eq!(a.version, u64::MAX);
    }

    #[test]
    fn merge_refuses_another_cluster_and_is_idempotent() {
        let mut a = ClusterState::formed(c(), &n("a"), 1);
        let b = ClusterState::formed(ClusterId("c2".into()), &n("b"), 1);
        assert!(a.merge(&b).is_err());
        let copy = a.clone();
        assert!(!a.merge(&copy).unwrap());
        assert_eq!(a, copy);
    }

    #[test]
    fn store_round_trips_atomically_and_keeps_the_marker_separately() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("data")).unwrap();
        assert_eq!(store.load().unwrap(), Persisted::default());
        let p = Persisted {
            state: ClusterState::formed(c(), &n("a"), 9),
            incarnation: 9,
            ..Persisted::default()
        };
        store.save(&p).unwrap();
        assert_eq!(store.load().unwrap(), p);
        assert!(!dir.path().join("data/state.a.tmp").exists());
        assert!(!store.force_boot());
        store.set_force_boot(true).unwrap();
        assert!(store.force_boot());
        store.set_force_boot(false).unwrap();
        store.set_force_boot(false).unwrap();
        assert!(!store.force_boot());
    }

    #[test]
    fn a_second_process_on_the_same_data_dir_is_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path()).unwrap();
        let e = Store::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("in use by another muster process"), "{e}");
        assert!(e.contains(&dir.path().display().to_string()), "{e}");
        drop(first);
        assert!(Store::open(dir.path()).is_ok(), "the lock goes with the process");
    }

    fn persisted(members: usize) -> Persisted {
        let mut p = Persisted {
            state: ClusterState::formed(c(), &n("a"), 1),
            incarnation: 1,
            ..Persisted::default()
        };
        for i in 0..members {
            p.state.add(&n(&format!("h{i}")), 2).unwrap();
        }
        p
    }

    /// A store in a fresh dir that saved `persisted(k)` for each `k` in turn.
    fn saved(members: &[usize]) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for k in members {
            store.save(&persisted(*k)).unwrap();
        }
        (dir, store)
    }

    fn inode(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().ino()
    }

    #[test]
    fn saves_alternate_between_the_slots_and_overwrite_them_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let [a, b] = store.slot_paths();
        store.save(&persisted(1)).unwrap();
        assert!(a.exists() && !b.exists(), "the first save creates the first slot");
        store.save(&persisted(2)).unwrap();
        assert!(b.exists(), "the second save creates the other");
        let (ia, ib) = (inode(&a), inode(&b));
        let size = std::fs::metadata(&a).unwrap().len();
        for k in 3..8 {
            store.save(&persisted(k)).unwrap();
            assert_eq!(store.load().unwrap(), persisted(k));
        }
        assert_eq!((inode(&a), inode(&b)), (ia, ib), "written in place, not replaced");
        assert_eq!(std::fs::metadata(&a).unwrap().len(), size, "and not resized");
        // A fresh store (a restart) finds the newest save, and goes on from it.
        let again = Store::unlocked(dir.path()).unwrap();
        assert_eq!(again.load().unwrap(), persisted(7));
        again.save(&persisted(8)).unwrap();
        assert_eq!(store.load().unwrap(), persisted(8));
    }

    #[test]
    fn a_state_that_outgrows_its_slot_is_written_whole() {
        let (dir, store) = saved(&[0, 0, 500, 500]);
        let big = persisted(500);
        assert_eq!(Store::unlocked(dir.path()).unwrap().load().unwrap(), big);
        for p in store.slot_paths() {
            assert!((std::fs::metadata(&p).unwrap().len() as usize).is_multiple_of(slot::PAGE));
            assert!(
                !dir.path()
                    .join(format!("{}.tmp", p.file_name().unwrap().display()))
                    .exists()
            );
        }
    }

    #[test]
    fn a_torn_newest_slot_falls_back_to_the_save_before_it() {
        let (dir, store) = saved(&[1, 2, 3]);
        // The third save went to the first slot; tear it, as a crash mid-write would.
        let [a, b] = store.slot_paths();
        let mut bytes = std::fs::read(&a).unwrap();
        bytes[200] ^= 1;
        std::fs::write(&a, &bytes).unwrap();
        let restarted = Store::unlocked(dir.path()).unwrap();
        assert_eq!(restarted.load().unwrap(), persisted(2));
        let good = std::fs::read(&b).unwrap();
        restarted.save(&persisted(4)).unwrap();
        assert_eq!(
            std::fs::read(&b).unwrap(),
            good,
            "the good slot is kept; the torn one rewritten"
        );
        assert_eq!(Store::unlocked(dir.path()).unwrap().load().unwrap(), persisted(4));
    }

    #[test]
    fn both_slots_corrupt_refuses_and_names_both_and_the_fix() {
        let (dir, store) = saved(&[1, 2]);
        let [a, b] = store.slot_paths();
        std::fs::write(&a, b"{not json").unwrap();
        let half = std::fs::read(&b).unwrap();
        let header = half.iter().position(|c| *c == b'\n').unwrap();
        std::fs::write(&b, &half[..header + 10]).unwrap();
        let e = Store::unlocked(dir.path())
            .unwrap()
            .load()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("{} is corrupt (no header line)", a.display())),
            "{e}"
        );
        assert!(
            e.contains(&format!("{} is corrupt (the header announces", b.display())),
            "{e}"
        );
        assert!(e.contains("move them away to reset the node"), "{e}");
    }

    #[test]
    fn a_slot_written_by_this_version_stays_readable() {
        // Committed bytes (the fuzzer's seed): a change of the on-disk format fails here.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/state_file/slot_two_members");
        let bytes = std::fs::read(&path).unwrap();
        let d = slot::decode(&bytes).unwrap();
        assert_eq!(d.seq, 42);
        let p: Persisted = serde_json::from_slice(d.json).unwrap();
        assert_eq!(p.state.alive().len(), 1);
        assert_eq!(p.running_at_shutdown.len(), 1);
        let torn = std::fs::read(path.with_file_name("slot_torn")).unwrap();
        assert_eq!(slot::decode(&torn), Err(slot::SlotError::Checksum));
    }

    #[test]
    fn a_persisted_commitment_is_read_from_its_on_disk_key() {
        // Committed bytes (the fuzzer's seed): a node restarted on this file keeps its
        // commitment, whatever the field is called in the code.
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/state_file/vouch");
        let p: Persisted = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let c = p.commitment.clone().expect("the commitment in the file");
        assert_eq!(c.seed.to_string(), "node1@127.0.0.1:4000");
        assert_eq!(c.intent.0, "c-99");
        let written = serde_json::to_value(&p).unwrap();
        assert_eq!(written["vouch"]["intent"], "c-99", "{written}");
    }

    #[test]
    fn the_state_file_of_earlier_versions_is_read_and_replaced_by_the_slots() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join("state.json");
        std::fs::write(&legacy, serde_json::to_vec_pretty(&persisted(2)).unwrap()).unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap(), persisted(2));
        store.save(&persisted(3)).unwrap();
        assert!(!legacy.exists(), "the first save retires it");
        assert_eq!(Store::unlocked(dir.path()).unwrap().load().unwrap(), persisted(3));
        std::fs::write(&legacy, b"{not json").unwrap();
        let e = Store::unlocked(dir.path()).unwrap();
        assert_eq!(
            e.load().unwrap(),
            persisted(3),
            "a good slot wins over a stale old file"
        );
        std::fs::remove_file(&store.slot_paths()[0]).unwrap();
        let e = Store::unlocked(dir.path())
            .unwrap()
            .load()
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("{} is corrupt", legacy.display())), "{e}");
    }

    mod merge_properties {
        //! The merge is a join: commutative, associative and idempotent on the membership, so
        //! members converge whatever order states travel in; and a forgotten node never comes
        //! back through an older copy of the state.
        use super::*;
        use proptest::prelude::*;

        fn state() -> impl Strategy<Value = ClusterState> {
            let entry = (0..4u32, 0..4u64, any::<bool>());
            prop::collection::vec(entry, 0..6).prop_map(|entries| {
                let mut s = ClusterState {
                    cluster: Some(ClusterId("c".into())),
                    ..ClusterState::default()
                };
                for (i, incarnation, removed) in entries {
                    s.members.insert(
                        n(&format!("h{i}")),
                        Member {
                            incarnation,
                            removed,
                            left: false,
                        },
                    );
                }
                s
            })
        }

        fn join(a: &ClusterState, b: &ClusterState) -> ClusterState {
            let mut out = a.clone();
            out.merge(b).unwrap();
            out
        }

        proptest! {
            #[test]
            fn commutative(a in state(), b in state()) {
                prop_assert_eq!(join(&a, &b).members, join(&b, &a).members);
            }

            #[test]
            fn associative(a in state(), b in state(), c in state()) {
                prop_assert_eq!(join(&join(&a, &b), &c).members, join(&a, &join(&b, &c)).members);
            }

            #[test]
            fn idempotent(a in state(), b in state()) {
                prop_assert_eq!(&join(&a, &a).members, &a.members);
                let ab = join(&a, &b);
                prop_assert_eq!(join(&ab, &b).members, ab.members);
            }

            #[test]
            fn a_forgotten_node_never_resurrects_through_an_older_state(a in state(), old in state(), who in 0..4u32) {
                let x = n(&format!("h{who}"));
                let mut current = a.clone();
                current.add(&x, 2).ok();
                let before_forget = current.clone();
                current.remove(&x);
                let at = current.members[&x].incarnation;
                // Any state that knows x at most at the incarnation it was forgotten at.
                let mut older = join(&old, &before_forget);
                older.members.retain(|m, e| *m != x || e.incarnation <= at);
                let merged = join(&current, &older);
                prop_assert!(!merged.is_member(&x), "{x} came back: {:?}", merged.members.get(&x));
                let merged = join(&older, &current);
                prop_assert!(!merged.is_member(&x), "{x} came back the other way: {:?}", merged.members.get(&x));
            }
        }
    }
}
