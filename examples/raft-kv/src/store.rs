//! The Raft log, vote and state machine in one redb database file. Every write is a redb
//! transaction that fsyncs on commit: a log append is acknowledged (`LogFlushed`) only once it
//! is on disk, the vote before `save_vote` returns, and a batch of applied entries together with
//! the applied log id, so that after a crash the state machine and its position agree and Raft
//! replays the rest from the log.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::types::{Entry, NodeId, Request, Response, SnapshotData, TypeConfig};

/// Log entries by index (JSON).
const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
/// The vote, the last purged log id, the committed log id (JSON).
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// The state machine's data.
const KV: TableDefinition<&str, &str> = TableDefinition::new("kv");
/// The state machine's position: the last applied log id, its membership, the current snapshot
/// (JSON).
const APPLIED: TableDefinition<&str, &[u8]> = TableDefinition::new("applied");

type Result<T> = std::result::Result<T, StorageError<NodeId>>;
type Node = openraft::BasicNode;
/// Where the state machine is: the last applied log id and the membership it applied last.
type Position = (Option<LogId<NodeId>>, StoredMembership<NodeId, Node>);

/// The database shared by the log store and the state machine.
#[derive(Debug, Clone)]
pub struct Db(Arc<Database>);

impl Db {
    /// Opens (or creates) the database file at `path`.
    pub fn open(path: &Path) -> std::result::Result<Db, redb::Error> {
        let db = Database::create(path)?;
        // Create the tables, so that reads never meet a missing one.
        let txn = db.begin_write()?;
        txn.open_table(LOGS)?;
        txn.open_table(META)?;
        txn.open_table(KV)?;
        txn.open_table(APPLIED)?;
        txn.commit()?;
        Ok(Db(Arc::new(db)))
    }

    /// The log store and the state machine on this database.
    pub fn stores(&self) -> (LogStore, StateMachine) {
        (
            LogStore { db: self.clone() },
            StateMachine {
                db: self.clone(),
                snapshots: 0,
            },
        )
    }

    /// This data's Raft node id: drawn at random when the database is new, then persisted, so a
    /// node keeps its id across restarts and gets a new one when its data is lost.
    pub fn node_id(&self) -> std::result::Result<NodeId, String> {
        if let Some(id) = self.read_json::<NodeId>(META, "node_id")? {
            return Ok(id);
        }
        let id = (muster_node::random::nonzero_u64().map_err(|e| e.to_string())? >> 1).max(1);
        self.write_json(META, "node_id", &id)?;
        Ok(id)
    }

    /// The value of `key` in the state machine (a local read).
    pub fn get(&self, key: &str) -> std::result::Result<Option<String>, redb::Error> {
        let txn = self.0.begin_read()?;
        let kv = txn.open_table(KV)?;
        Ok(kv.get(key)?.map(|v| v.value().to_string()))
    }

    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> std::result::Result<Option<T>, String> {
        let txn = self.0.begin_read().map_err(|e| e.to_string())?;
        let t = txn.open_table(table).map_err(|e| e.to_string())?;
        let Some(v) = t.get(key).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| e.to_string())
    }

    fn write_json<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &T,
    ) -> std::result::Result<(), String> {
        let bytes = serde_json::to_vec(value).map_err(|e| e.to_string())?;
        let txn = self.0.begin_write().map_err(|e| e.to_string())?;
        {
            let mut t = txn.open_table(table).map_err(|e| e.to_string())?;
            t.insert(key, bytes.as_slice()).map_err(|e| e.to_string())?;
        }
        txn.commit().map_err(|e| e.to_string())
    }
}

/// A storage failure as openraft reports it (the message of the underlying error).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failed(String);

fn failed(e: impl ToString) -> Failed {
    Failed(e.to_string())
}

/// The Raft log and vote.
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Db,
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>> {
        let read = || -> std::result::Result<Vec<Entry>, String> {
            let txn = self.db.0.begin_read().map_err(|e| e.to_string())?;
            let logs = txn.open_table(LOGS).map_err(|e| e.to_string())?;
            let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
            let mut out = Vec::new();
            for item in logs.range(bounds).map_err(|e| e.to_string())? {
                let (_, v) = item.map_err(|e| e.to_string())?;
                out.push(serde_json::from_slice(v.value()).map_err(|e| e.to_string())?);
            }
            Ok(out)
        };
        read().map_err(|e| StorageIOError::read_logs(&failed(e)).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self
            .db
            .read_json(META, "last_purged")
            .map_err(|e| StorageIOError::read_logs(&failed(e)))?;
        let last = || -> std::result::Result<Option<LogId<NodeId>>, String> {
            let txn = self.db.0.begin_read().map_err(|e| e.to_string())?;
            let logs = txn.open_table(LOGS).map_err(|e| e.to_string())?;
            let Some((_, v)) = logs.last().map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            let entry: Entry = serde_json::from_slice(v.value()).map_err(|e| e.to_string())?;
            Ok(Some(entry.log_id))
        };
        let last = last().map_err(|e| StorageIOError::read_logs(&failed(e)))?;
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<()> {
        self.db
            .write_json(META, "vote", vote)
            .map_err(|e| StorageIOError::write_vote(&failed(e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>> {
        self.db
            .read_json(META, "vote")
            .map_err(|e| StorageIOError::read_vote(&failed(e)).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<()> {
        self.db
            .write_json(META, "committed", &committed)
            .map_err(|e| StorageIOError::write(&failed(e)).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>> {
        let c: Option<Option<LogId<NodeId>>> = self
            .db
            .read_json(META, "committed")
            .map_err(|e| StorageIOError::read(&failed(e)))?;
        Ok(c.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let write = || -> std::result::Result<(), String> {
            let txn = self.db.0.begin_write().map_err(|e| e.to_string())?;
            {
                let mut logs = txn.open_table(LOGS).map_err(|e| e.to_string())?;
                for entry in entries {
                    let bytes = serde_json::to_vec(&entry).map_err(|e| e.to_string())?;
                    logs.insert(entry.log_id.index, bytes.as_slice())
                        .map_err(|e| e.to_string())?;
                }
            }
            // Commit fsyncs: only then is the append acknowledged.
            txn.commit().map_err(|e| e.to_string())
        };
        match write() {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let io = std::io::Error::other(e.clone());
                callback.log_io_completed(Err(io));
                Err(StorageIOError::write_logs(&failed(e)).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        self.remove_logs(log_id.index..)
            .map_err(|e| StorageIOError::write_logs(&failed(e)).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<()> {
        // The purge point first: a crash in between leaves entries below it, never a hole.
        self.db
            .write_json(META, "last_purged", &log_id)
            .map_err(|e| StorageIOError::write_logs(&failed(e)))?;
        self.remove_logs(..=log_id.index)
            .map_err(|e| StorageIOError::write_logs(&failed(e)).into())
    }
}

impl LogStore {
    fn remove_logs(&self, range: impl RangeBounds<u64>) -> std::result::Result<(), String> {
        let bounds: (Bound<u64>, Bound<u64>) = (range.start_bound().cloned(), range.end_bound().cloned());
        let txn = self.db.0.begin_write().map_err(|e| e.to_string())?;
        {
            let mut logs = txn.open_table(LOGS).map_err(|e| e.to_string())?;
            logs.retain_in(bounds, |_, _| false).map_err(|e| e.to_string())?;
        }
        txn.commit().map_err(|e| e.to_string())
    }
}

/// A snapshot as stored: its meta and the state machine's data.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Node>,
    data: BTreeMap<String, String>,
}

/// The key-value state machine.
#[derive(Debug, Clone)]
pub struct StateMachine {
    db: Db,
    /// Snapshots built by this process (part of their ids).
    snapshots: u64,
}

impl StateMachine {
    /// The state machine's position: the last applied log id and its membership.
    fn position(&self) -> std::result::Result<Position, String> {
        let last: Option<Option<LogId<NodeId>>> = self.db.read_json(APPLIED, "last_applied")?;
        let membership: Option<StoredMembership<NodeId, Node>> = self.db.read_json(APPLIED, "membership")?;
        Ok((last.flatten(), membership.unwrap_or_default()))
    }

    fn all(&self) -> std::result::Result<BTreeMap<String, String>, String> {
        let txn = self.db.0.begin_read().map_err(|e| e.to_string())?;
        let kv = txn.open_table(KV).map_err(|e| e.to_string())?;
        let mut out = BTreeMap::new();
        for item in kv.iter().map_err(|e| e.to_string())? {
            let (k, v) = item.map_err(|e| e.to_string())?;
            out.insert(k.value().to_string(), v.value().to_string());
        }
        Ok(out)
    }

    /// Replaces the whole state with a snapshot's, in one transaction.
    fn replace(&self, snap: &StoredSnapshot) -> std::result::Result<(), String> {
        let txn = self.db.0.begin_write().map_err(|e| e.to_string())?;
        {
            let mut kv = txn.open_table(KV).map_err(|e| e.to_string())?;
            kv.retain(|_, _| false).map_err(|e| e.to_string())?;
            for (k, v) in &snap.data {
                kv.insert(k.as_str(), v.as_str()).map_err(|e| e.to_string())?;
            }
            let mut applied = txn.open_table(APPLIED).map_err(|e| e.to_string())?;
            let position = [
                ("last_applied", serde_json::to_vec(&snap.meta.last_log_id)),
                ("membership", serde_json::to_vec(&snap.meta.last_membership)),
                ("snapshot", serde_json::to_vec(snap)),
            ];
            for (key, bytes) in position {
                let bytes = bytes.map_err(|e| e.to_string())?;
                applied.insert(key, bytes.as_slice()).map_err(|e| e.to_string())?;
            }
        }
        txn.commit().map_err(|e| e.to_string())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let (last_log_id, last_membership) = self
            .position()
            .map_err(|e| StorageIOError::read_state_machine(&failed(e)))?;
        let data = self
            .all()
            .map_err(|e| StorageIOError::read_state_machine(&failed(e)))?;
        let snapshot_id = match &last_log_id {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, self.snapshots),
            None => format!("--{}", self.snapshots),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        let bytes =
            serde_json::to_vec(&stored.data).map_err(|e| StorageIOError::read_state_machine(&failed(e)))?;
        self.db
            .write_json(APPLIED, "snapshot", &stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &failed(e)))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Node>)> {
        self.position()
            .map_err(|e| StorageIOError::read_state_machine(&failed(e)).into())
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let apply = || -> std::result::Result<Vec<Response>, String> {
            let txn = self.db.0.begin_write().map_err(|e| e.to_string())?;
            let mut answers = Vec::new();
            {
                let mut kv = txn.open_table(KV).map_err(|e| e.to_string())?;
                let mut applied = txn.open_table(APPLIED).map_err(|e| e.to_string())?;
                let mut put = |key: &str, bytes: Vec<u8>| {
                    applied
                        .insert(key, bytes.as_slice())
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                };
                for entry in entries {
                    let answer = match entry.payload {
                        EntryPayload::Blank => Response::default(),
                        EntryPayload::Normal(Request::Set { key, value }) => {
                            kv.insert(key.as_str(), value.as_str())
                                .map_err(|e| e.to_string())?;
                            Response { value: Some(value) }
                        }
                        EntryPayload::Membership(m) => {
                            let stored = StoredMembership::new(Some(entry.log_id), m);
                            put(
                                "membership",
                                serde_json::to_vec(&stored).map_err(|e| e.to_string())?,
                            )?;
                            Response::default()
                        }
                    };
                    put(
                        "last_applied",
                        serde_json::to_vec(&Some(entry.log_id)).map_err(|e| e.to_string())?,
                    )?;
                    answers.push(answer);
                }
            }
            // The data and the position it reached are committed together.
            txn.commit().map_err(|e| e.to_string())?;
            Ok(answers)
        };
        apply().map_err(|e| StorageIOError::write_state_machine(&failed(e)).into())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshots += 1;
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<SnapshotData>,
    ) -> Result<()> {
        let data: BTreeMap<String, String> = serde_json::from_slice(snapshot.get_ref())
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &failed(e)))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        self.replace(&stored)
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &failed(e)).into())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        let stored: Option<StoredSnapshot> = self
            .db
            .read_json(APPLIED, "snapshot")
            .map_err(|e| StorageIOError::read_state_machine(&failed(e)))?;
        let Some(s) = stored else {
            return Ok(None);
        };
        let bytes =
            serde_json::to_vec(&s.data).map_err(|e| StorageIOError::read_state_machine(&failed(e)))?;
        Ok(Some(Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}
