//! One raft-kv node: its Raft instance on the redb store, started inside a Muster node that
//! bootstraps it. The node that forms the Muster cluster initializes Raft with itself in the
//! `on_form` hook (exactly once per cluster, completed after a crash); every other node asks the
//! leader to add it as a learner and then as a voter; a member that Muster forgets, or that left,
//! is removed from the voters by the leader.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use muster_node::config::ResolvedConfig;
use muster_node::muster::NodeName;
use muster_node::{Cluster, Event, apps};
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, ChangeMembers, Membership, Raft};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::network::{Call, ClusterCell, Network, RaftRpc};
use crate::store::Db;
use crate::types::{NodeId, Request, Response, TypeConfig};

/// The `[service]` table of the node's config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where the client API listens (`PUT`/`GET /kv/{key}`, `GET /cluster`).
    pub http: std::net::SocketAddr,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            http: ([127, 0, 0, 1], 8080).into(),
        }
    }
}

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The `[service]` table is wrong.
    #[error(transparent)]
    Config(#[from] muster_node::muster::config::ConfigError),
    /// The Raft database cannot be opened.
    #[error("cannot open the Raft database {}: {reason}", path.display())]
    Store {
        /// Its path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Raft did not start.
    #[error("Raft did not start: {0}")]
    Raft(String),
    /// The Muster node did not start.
    #[error(transparent)]
    Muster(#[from] muster_node::StartError),
}

/// A running node.
pub struct KvNode {
    /// Its Raft id.
    pub id: NodeId,
    /// Its Raft instance.
    pub raft: Raft<TypeConfig>,
    /// Its Muster node.
    pub cluster: Arc<Cluster>,
    /// Its store (local reads).
    pub db: Db,
    /// The client API's settings.
    pub settings: Settings,
}

/// The Raft timings: a leader's heartbeat every 250 ms, elections after 1–2 s without one.
fn raft_config() -> Result<Arc<openraft::Config>, StartError> {
    let config = openraft::Config {
        cluster_name: "raft-kv".into(),
        heartbeat_interval: 250,
        election_timeout_min: 1000,
        election_timeout_max: 2000,
        // Every message is one Muster application request of at most 256 KiB.
        snapshot_max_chunk_size: 64 * 1024,
        max_payload_entries: 64,
        ..openraft::Config::default()
    };
    config
        .validate()
        .map(Arc::new)
        .map_err(|e| StartError::Raft(e.to_string()))
}

/// Starts the node `cfg` describes: Raft first (the bootstrap hook needs it), then Muster.
pub async fn start(cfg: &ResolvedConfig) -> Result<KvNode, StartError> {
    let settings: Settings = cfg.file.service()?;
    let path = cfg.data_dir.join("raft-kv.redb");
    let store_err = |reason: String| StartError::Store {
        path: path.clone(),
        reason,
    };
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| store_err(e.to_string()))?;
    let db = Db::open(&path).map_err(|e| store_err(e.to_string()))?;
    let id = db.node_id().map_err(store_err)?;
    let (log, sm) = db.stores();
    let cell = ClusterCell::default();
    let network = Network {
        cluster: cell.clone(),
    };
    let raft = Raft::new(id, raft_config()?, network, log, sm)
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
    let me = cfg.name.clone();
    let changes = Changes::default();
    let handler = {
        let (raft, cell, changes) = (raft.clone(), cell.clone(), changes.clone());
        apps::handler(move |from, body| {
            let (raft, cell, changes) = (raft.clone(), cell.clone(), changes.clone());
            async move { answer(&raft, &cell, &changes, &from, &body).await }
        })
    };
    let bootstrap = {
        let (raft, me) = (raft.clone(), me.clone());
        move |cluster: muster_node::muster::ClusterId| {
            let (raft, me) = (raft.clone(), me.clone());
            async move { initialize(&raft, id, &me, &cluster).await }
        }
    };
    let cluster = Cluster::from_config(cfg)?
        .metadata("raft_id", id.to_string())
        .metadata("kv_http", settings.http.to_string())
        .on_request(handler)
        .on_form(bootstrap)
        .start()
        .await?;
    let cluster = Arc::new(cluster);
    let _ = cell.set(cluster.clone());
    info!(node = %me, "raft-kv node {id} started");
    tokio::spawn(become_voter(raft.clone(), cluster.clone(), id, me.clone()));
    tokio::spawn(publish_role(raft.clone(), cluster.clone(), id));
    tokio::spawn(remove_departed(raft.clone(), cluster.clone(), changes));
    Ok(KvNode {
        id,
        raft,
        cluster,
        db,
        settings,
    })
}

/// The `on_form` hook: this node formed the Muster cluster, so it initializes Raft with itself
/// as the only voter. Idempotent: a Raft that is already initialized (a completed formation run
/// again after a crash) is left as it is.
async fn initialize(
    raft: &Raft<TypeConfig>,
    id: NodeId,
    me: &NodeName,
    cluster: &muster_node::muster::ClusterId,
) -> Result<(), muster_node::HookError> {
    let members = BTreeMap::from([(id, BasicNode::new(me.to_string()))]);
    match raft.initialize(members).await {
        Ok(()) => {
            info!(node = %me, "initialized Raft for cluster {cluster} with node {id} as its first voter");
            Ok(())
        }
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
            info!(node = %me, "Raft was already initialized for cluster {cluster}");
            Ok(())
        }
        Err(e) => Err(Box::new(e)),
    }
}

/// The membership changes this node makes when it leads, one at a time. Each change is also
/// stated relative to the configuration it changes (add these voters, remove those), never as a
/// whole voter set read beforehand: two joins at once then never drop one another.
#[derive(Clone, Default)]
struct Changes(Arc<tokio::sync::Mutex<()>>);

/// True when `id` is a voter of `membership` and no change is half done (a joint configuration
/// whose second step failed may still lose it).
fn settled_voter(membership: &Membership<NodeId, BasicNode>, id: NodeId) -> bool {
    membership.get_joint_config().len() == 1 && membership.voter_ids().any(|v| v == id)
}

/// Answers another node's call.
async fn answer(
    raft: &Raft<TypeConfig>,
    cell: &ClusterCell,
    changes: &Changes,
    from: &NodeName,
    body: &[u8],
) -> apps::HandlerResult {
    let call: Call = serde_json::from_slice(body).map_err(|e| format!("malformed call: {e}"))?;
    let encoded = match call {
        Call::Raft { to, rpc } => {
            let me = raft.metrics().borrow().id;
            if to != me {
                return Err(format!("this is Raft node {me}, not {to}"));
            }
            match rpc {
                RaftRpc::AppendEntries(r) => serde_json::to_vec(&raft.append_entries(r).await),
                RaftRpc::Vote(r) => serde_json::to_vec(&raft.vote(r).await),
                RaftRpc::InstallSnapshot(r) => serde_json::to_vec(&raft.install_snapshot(r).await),
            }
        }
        Call::Join { id, name } => {
            if name != *from {
                return Err(format!("{from} cannot ask to add {name}"));
            }
            add_voter(raft, changes, id, &name).await?;
            serde_json::to_vec(&())
        }
        Call::Write(req) => {
            let cluster = cell.get().ok_or("this node is still starting")?;
            serde_json::to_vec(&write(raft, cluster, req).await?)
        }
    };
    encoded.map_err(|e| e.to_string())
}

/// On the leader: adds node `id` at `name` as a learner, then makes it a voter in place of any
/// older id under the same name (a node that lost its disk comes back under a new id).
async fn add_voter(
    raft: &Raft<TypeConfig>,
    changes: &Changes,
    id: NodeId,
    name: &NodeName,
) -> Result<(), String> {
    let _one_at_a_time = changes.0.lock().await;
    let membership = raft.metrics().borrow().membership_config.clone();
    if settled_voter(membership.membership(), id) {
        return Ok(());
    }
    let stale: BTreeSet<NodeId> = membership
        .nodes()
        .filter(|(other, node)| **other != id && node.addr == name.to_string())
        .map(|(other, _)| *other)
        .collect();
    // The old id goes first: while it is a member the leader replicates to it at the new node's
    // address, which would then receive two streams meant for two different nodes.
    if !stale.is_empty() {
        raft.change_membership(ChangeMembers::RemoveVoters(stale.clone()), false)
            .await
            .map_err(leader_hint)?;
    }
    raft.add_learner(id, BasicNode::new(name.to_string()), true)
        .await
        .map_err(leader_hint)?;
    raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
        .await
        .map_err(leader_hint)?;
    info!(
        "node {id} ({name}) is a voter{}",
        if stale.is_empty() {
            String::new()
        } else {
            format!(", in place of {stale:?}")
        }
    );
    Ok(())
}

/// A write: applied here when this node leads, else forwarded to the leader.
pub async fn write(raft: &Raft<TypeConfig>, cluster: &Cluster, req: Request) -> Result<Response, String> {
    match raft.client_write(req.clone()).await {
        Ok(r) => Ok(r.data),
        Err(e) => match e.forward_to_leader() {
            Some(f) => {
                let leader = f
                    .leader_node
                    .as_ref()
                    .ok_or_else(|| "no leader is known yet; try again".to_string())?;
                let to: NodeName = leader.addr.parse().map_err(|e| format!("{e}"))?;
                let body = serde_json::to_vec(&Call::Write(req)).map_err(|e| e.to_string())?;
                let answer = cluster
                    .request(&to, body, Duration::from_secs(5))
                    .await
                    .map_err(|e| e.to_string())?;
                serde_json::from_slice(&answer).map_err(|e| e.to_string())
            }
            None => Err(e.to_string()),
        },
    }
}

/// A refused membership change, with the leader to ask when there is one.
fn leader_hint(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> String {
    match e.forward_to_leader() {
        Some(f) => format!(
            "not the leader; ask {:?}",
            f.leader_node.as_ref().map(|n| &n.addr)
        ),
        None => e.to_string(),
    }
}

/// Publishes in this node's Muster metadata whether it leads (`raft_role = leader`), so that a
/// joiner finds the leader in the members' metadata.
async fn publish_role(raft: Raft<TypeConfig>, cluster: Arc<Cluster>, id: NodeId) {
    let mut metrics = raft.metrics();
    let mut leading = None;
    loop {
        let now = metrics.borrow_and_update().current_leader == Some(id);
        if leading != Some(now) {
            let role = if now { "leader" } else { "follower" };
            if cluster.set_metadata("raft_role", Some(role)).is_ok() {
                leading = Some(now);
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Until this node is a voter: asks the leader its metadata names (the others in turn when none
/// does yet) to add it.
async fn become_voter(raft: Raft<TypeConfig>, cluster: Arc<Cluster>, id: NodeId, me: NodeName) {
    if cluster.formed(Duration::from_secs(24 * 3600)).await.is_err() {
        return;
    }
    let mut members = cluster.members();
    loop {
        if settled_voter(raft.metrics().borrow().membership_config.membership(), id) {
            info!(node = %me, "node {id} is a voter");
            return;
        }
        // The leader first, as the members' metadata says.
        let mut others: Vec<(bool, NodeName)> = members
            .borrow_and_update()
            .up()
            .filter(|m| m.name != me)
            .map(|m| {
                (
                    m.metadata.get("raft_role").map(String::as_str) != Some("leader"),
                    m.name.clone(),
                )
            })
            .collect();
        others.sort();
        let others = others.into_iter().map(|(_, n)| n);
        for other in others {
            let body = match serde_json::to_vec(&Call::Join { id, name: me.clone() }) {
                Ok(b) => b,
                Err(_) => return,
            };
            match cluster.request(&other, body, Duration::from_secs(10)).await {
                Ok(_) => break,
                Err(e) => tracing::debug!(node = %me, "{other} did not add node {id}: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// On the leader: removes from the voters every node whose member left Muster's cluster or was
/// forgotten.
async fn remove_departed(raft: Raft<TypeConfig>, cluster: Arc<Cluster>, changes: Changes) {
    let mut events = cluster.events();
    while let Some(event) = events.next().await {
        let gone = match event {
            Event::Left { name } | Event::Forgotten { name } => name,
            _ => continue,
        };
        let _one_at_a_time = changes.0.lock().await;
        let membership = raft.metrics().borrow().membership_config.clone();
        let ids: BTreeSet<NodeId> = membership
            .nodes()
            .filter(|(_, node)| node.addr == gone.to_string())
            .map(|(id, _)| *id)
            .collect();
        if ids.is_empty() {
            continue;
        }
        match raft
            .change_membership(ChangeMembers::RemoveVoters(ids.clone()), false)
            .await
        {
            Ok(_) => info!("removed node(s) {ids:?} of {gone} from the voters"),
            Err(e) => warn!("could not remove {gone} from the voters: {}", leader_hint(e)),
        }
    }
}

impl KvNode {
    /// Sets `key` to `value` through the leader.
    pub async fn set(&self, key: String, value: String) -> Result<Response, String> {
        write(&self.raft, &self.cluster, Request::Set { key, value }).await
    }

    /// The value of `key`: read after confirming leadership when this node leads, else this
    /// node's own copy.
    pub async fn get(&self, key: &str) -> Result<Option<String>, String> {
        if self.raft.current_leader().await == Some(self.id) {
            self.raft.ensure_linearizable().await.map_err(|e| e.to_string())?;
        }
        self.db.get(key).map_err(|e| e.to_string())
    }

    /// Stops Raft, then the Muster node.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
        self.cluster.shutdown().await;
    }
}

/// What `GET /cluster` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterView {
    /// This node's Raft id.
    pub id: NodeId,
    /// The leader it knows.
    pub leader: Option<NodeId>,
    /// The voters.
    pub voters: Vec<NodeId>,
    /// The learners.
    pub learners: Vec<NodeId>,
    /// The current term.
    pub term: u64,
}

impl KvNode {
    /// The Raft view this node has now.
    pub fn view(&self) -> ClusterView {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        ClusterView {
            id: self.id,
            leader: m.current_leader,
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            term: m.current_term,
        }
    }
}
