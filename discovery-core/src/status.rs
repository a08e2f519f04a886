//! The live formation status (published on a watch channel) and its decision trace.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::decision::Decision;
use crate::membership::ClusterId;
use crate::node_name::NodeName;

/// Where formation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Not started.
    Starting,
    /// Running discovery rounds.
    Discovering,
    /// A previously clustered node waiting for its peers.
    Restarting,
    /// Done: see the outcome.
    Formed,
    /// Gave up: see `detail`.
    Failed,
}

impl Phase {
    /// Every phase, in order (metrics publish one series per phase).
    pub const ALL: [Phase; 5] = [
        Phase::Starting,
        Phase::Discovering,
        Phase::Restarting,
        Phase::Formed,
        Phase::Failed,
    ];

    /// The name used in status JSON and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Discovering => "discovering",
            Phase::Restarting => "restarting",
            Phase::Formed => "formed",
            Phase::Failed => "failed",
        }
    }
}

/// How formation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum FormationOutcome {
    /// This node formed a new cluster.
    NewCluster {
        /// The new cluster.
        cluster: ClusterId,
        /// True when only `on_exhausted = "standalone"` allowed it.
        standalone: bool,
    },
    /// This node joined an existing cluster.
    JoinedExisting {
        /// The cluster.
        cluster: ClusterId,
        /// The member it joined through.
        via: NodeName,
    },
    /// A previously clustered node came back.
    Rejoined {
        /// Its cluster.
        cluster: ClusterId,
        /// The peer it synced from (`None`: booted on its own state).
        via: Option<NodeName>,
    },
}

impl FormationOutcome {
    /// The cluster formation ended in.
    pub fn cluster(&self) -> &ClusterId {
        match self {
            FormationOutcome::NewCluster { cluster, .. }
            | FormationOutcome::JoinedExisting { cluster, .. }
            | FormationOutcome::Rejoined { cluster, .. } => cluster,
        }
    }
}

/// A duration as seconds (a JSON number, `1.25`), which people and monitoring read, rather than
/// serde's `{secs, nanos}`.
mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

/// One line of the decision trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEntry {
    /// Time since the engine started (in JSON: seconds, a number).
    #[serde(with = "seconds")]
    pub at: Duration,
    /// The attempt.
    pub attempt: u32,
    /// Candidates in the view, counting this node.
    pub discovered: usize,
    /// Candidates that answered, counting this node.
    pub reachable: usize,
    /// What was decided.
    pub decision: Decision,
    /// The same, as a sentence.
    pub summary: String,
}

/// How many trace entries the status keeps.
pub const TRACE_LEN: usize = 32;

/// The live status of the formation engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormationStatus {
    /// The phase.
    pub phase: Phase,
    /// The current attempt.
    pub attempt: u32,
    /// What the node is doing or waiting for, as a sentence.
    pub detail: String,
    /// The outcome, once formed.
    pub outcome: Option<FormationOutcome>,
    /// The last backend error, if any.
    pub last_backend_error: Option<String>,
    /// Registration with the backend succeeded.
    pub registered: bool,
    /// The latest decisions, oldest first.
    pub trace: Vec<TraceEntry>,
}

impl Default for FormationStatus {
    fn default() -> Self {
        FormationStatus {
            phase: Phase::Starting,
            attempt: 0,
            detail: "starting".to_string(),
            outcome: None,
            last_backend_error: None,
            registered: false,
            trace: Vec::new(),
        }
    }
}

impl FormationStatus {
    /// Appends a trace entry, keeping the last [`TRACE_LEN`].
    pub fn push_trace(&mut self, entry: TraceEntry) {
        if self.trace.len() == TRACE_LEN {
            self.trace.remove(0);
        }
        self.trace.push(entry);
    }
}

/// A sentence for a decision.
pub fn summarize(decision: &Decision) -> String {
    match decision {
        Decision::Join { via, cluster } => format!("joining cluster {cluster} via {via}"),
        Decision::Form { standalone: false } => "forming a new cluster".to_string(),
        Decision::Form { standalone: true } => {
            "retries exhausted: forming a standalone cluster (on_exhausted = \"standalone\")".to_string()
        }
        Decision::Lock => "taking the backend lock to re-check under it".to_string(),
        Decision::Wait(reason) => reason.to_string(),
        Decision::GiveUp(reason) => format!("giving up: {reason}"),
        Decision::Refuse(reason) => format!("refusing: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::{Phase, TraceEntry};
    use crate::decision::{Decision, WaitReason};

    #[test]
    fn a_trace_entry_gives_its_time_in_seconds() {
        let e = TraceEntry {
            at: std::time::Duration::from_millis(1250),
            attempt: 3,
            discovered: 2,
            reachable: 1,
            decision: Decision::Wait(WaitReason::NoCandidates),
            summary: String::new(),
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["at"], 1.25);
        assert_eq!(serde_json::from_value::<TraceEntry>(v).unwrap(), e);
    }

    #[test]
    fn phase_names_match_their_json() {
        for p in Phase::ALL {
            assert_eq!(
                serde_json::to_value(p)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .as_deref(),
                Some(p.as_str())
            );
        }
    }
}
