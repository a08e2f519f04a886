//! Membership state, its merge rule, and its atomic persistence in the data dir.
//!
//! Each member entry carries an incarnation and a removed flag. Merging takes, per node, the entry
//! with the higher incarnation, and at equal incarnations a removal wins ("adds minus removes",
//! keyed by node and incarnation). So concurrent joins through different members never lose a
//! member, a forget is never undone by an old copy, and a reset node (new incarnation) can rejoin.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use muster::{ClusterId, NodeName, Vouch};
use serde::{Deserialize, Serialize};

/// One member's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Bumped when the node resets and rejoins.
    pub incarnation: u64,
    /// Forgotten.
    pub removed: bool,
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
                },
            )]),
            version: 1,
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
    pub fn add(&mut self, node: &NodeName, incarnation: u64) -> Result<bool, String> {
        match self.members.get(node) {
            Some(m) if m.removed && m.incarnation >= incarnation => Err(format!(
                "{node} was removed from cluster {}; reset it before it rejoins",
                self.cluster.as_ref().map(|c| c.to_string()).unwrap_or_default()
            )),
            Some(m) if !m.removed && m.incarnation >= incarnation => Ok(false),
            _ => {
                self.members.insert(
                    node.clone(),
                    Member {
                        incarnation,
                        removed: false,
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
    /// `muster::Vouch`. Cleared when the node forms, joins or resets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vouch: Option<Vouch>,
}

const STATE_FILE: &str = "state.json";

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

/// The data dir: atomic state writes and the force-boot marker, under an exclusive lock so that a
/// second process pointed at the same dir cannot interleave its writes.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    /// Held (advisory `flock`) for as long as any clone of the store lives.
    _lock: Option<std::sync::Arc<std::fs::File>>,
}

const LOCK_FILE: &str = "lock";

impl Store {
    /// A store in `dir`, creating it (mode 0700) if needed, and taking its exclusive lock: a
    /// data dir another running node holds is refused with the path in the error.
    pub fn open(dir: &Path) -> std::io::Result<Store> {
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
        store._lock = Some(std::sync::Arc::new(file));
        Ok(store)
    }

    /// A store in `dir` without the lock: for offline tools (`ctl force-boot --data-dir`) that
    /// only touch the force-boot marker.
    pub fn unlocked(dir: &Path) -> std::io::Result<Store> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        Ok(Store {
            dir: dir.to_path_buf(),
            _lock: None,
        })
    }

    /// The data dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Loads the persisted state; a missing file is a blank node.
    pub fn load(&self) -> std::io::Result<Persisted> {
        let path = self.dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{} is corrupt ({e}); the node will not start on a state it cannot read. \
                         Restore the file from a backup, or move it away to reset the node: it then \
                         starts blank and joins its cluster again (what `muster ctl reset` does on a \
                         running node)",
                        path.display()
                    ),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Persisted::default()),
            Err(e) => Err(e),
        }
    }

    /// Writes the state atomically: temp file, fsync, rename, fsync of the directory. A failed
    /// write (a full disk) names the file, removes the temp file, and leaves the previous state
    /// file as it was: there is never a partial state file.
    pub fn save(&self, p: &Persisted) -> std::io::Result<()> {
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let path = self.dir.join(STATE_FILE);
        let bytes = serde_json::to_vec_pretty(p).map_err(std::io::Error::other)?;
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            slow_disk();
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(std::io::Error::new(
                e.kind(),
                format!(
                    "cannot write {}: {e} (the previous state is kept)",
                    path.display()
                ),
            ));
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
        assert!(s.add(&n("b"), 5).unwrap_err().contains("reset it"));
        assert!(
            s.add(&n("b"), 6).unwrap(),
            "a reset node (new incarnation) may rejoin"
        );
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
        assert!(!dir.path().join("data/state.json.tmp").exists());
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

    #[test]
    fn a_corrupt_state_file_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("state.json"), b"{not json").unwrap();
        assert!(store.load().unwrap_err().to_string().contains("is corrupt"));
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
                    s.members
                        .insert(n(&format!("h{i}")), Member { incarnation, removed });
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
