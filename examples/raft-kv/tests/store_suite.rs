//! openraft's own storage test suite against the redb store: logs, vote, purge and truncate,
//! applying entries, snapshots built and installed.

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use raft_kv::store::{Db, LogStore, StateMachine};
use raft_kv::types::{NodeId, TypeConfig};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("a temp dir");
        let db = Db::open(&dir.path().join("raft.redb")).expect("the database opens");
        let (log, sm) = db.stores();
        Ok((dir, log, sm))
    }
}

#[test]
fn the_redb_store_passes_openraft_storage_suite() {
    Suite::test_all(Builder).expect("openraft's storage suite");
}
