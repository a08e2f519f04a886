//! `muster ctl`: talk to a running node over the authenticated peer protocol.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use muster::NodeName;

use muster_node::client::{Credentials, call_at};
use muster_node::config::NodeConfig;
use muster_node::cookie::Cookie;
use muster_node::proto::{NodeStatus, Request, Response};
use muster_node::state::Store;

/// Options shared by every `ctl` command.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The node to talk to (`prefix@host[:port]`); defaults to the node in --config.
    #[arg(long)]
    pub node: Option<NodeName>,
    /// The cookie file (or set MUSTER_COOKIE); defaults to the one in --config.
    #[arg(long)]
    pub cookie_file: Option<PathBuf>,
    /// The cluster name; defaults to the one in --config, else "default".
    #[arg(long)]
    pub cluster_name: Option<String>,
    /// A node config file to take --node, --cookie-file and --cluster-name from.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Connect to this address instead of resolving the node's host name.
    #[arg(long)]
    pub address: Option<std::net::SocketAddr>,
    /// Seconds to wait for an answer.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    #[command(subcommand)]
    /// The command.
    pub command: CtlCommand,
}

/// `ctl` commands (rabbitmqctl-style).
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Members, running members, cluster id and formation state.
    ClusterStatus {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every member's status (up, unreachable, stopped, leaving), metadata and since when.
    Members {
        /// Print each change as it happens, until interrupted.
        #[arg(long)]
        watch: bool,
        /// Print JSON (one object per line with --watch).
        #[arg(long)]
        json: bool,
    },
    /// Join the cluster PEER belongs to (the node must be blank: reset it first).
    JoinCluster {
        /// A member of the cluster to join.
        peer: NodeName,
    },
    /// Remove NODE (running or stopped) from the cluster.
    ForgetClusterNode {
        /// The member to forget.
        member: NodeName,
    },
    /// Leave the cluster and become a blank node.
    Reset,
    /// Boot without waiting for peers next time; with --data-dir, works on a stopped node.
    ForceBoot {
        /// The stopped node's data dir.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Exit 0 when the node process answers (liveness).
    Ping,
    /// Exit 0 only when the node is clustered and in sync (readiness).
    CheckRunning,
    /// The formation engine's state and decision trace.
    FormationStatus {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop the node gracefully.
    Stop,
    /// Set one entry of the node's metadata (until it restarts; `[node.metadata]` in its config
    /// sets it at start), or remove it with --remove.
    SetMetadata {
        /// The key.
        key: String,
        /// The value (omit with --remove).
        value: Option<String>,
        /// Remove the key.
        #[arg(long, conflicts_with = "value")]
        remove: bool,
    },
}

fn credentials(args: &CtlArgs) -> Result<(Credentials, NodeName), String> {
    let file = match &args.config {
        Some(p) => Some(NodeConfig::load_with_env(p).map_err(|e| e.to_string())?),
        None => None,
    };
    let node = args
        .node
        .clone()
        .or_else(|| file.as_ref().map(|f| f.name.clone()))
        .ok_or("no node given: pass --node NODE or --config FILE")?;
    let cookie_file = args
        .cookie_file
        .clone()
        .or_else(|| file.as_ref().and_then(|f| f.file.node.cookie_file.clone()));
    let cookie = Cookie::load(cookie_file.as_deref()).map_err(|e| e.to_string())?;
    let cluster_name = args
        .cluster_name
        .clone()
        .or_else(|| file.as_ref().map(|f| f.file.node.cluster_name.clone()))
        .unwrap_or_else(|| "default".to_string());
    let tls = file
        .as_ref()
        .and_then(|f| f.file.tls.as_ref())
        .map(muster_node::tls::PeerTls::load)
        .transpose()
        .map_err(|e| e.to_string())?;
    Ok((
        Credentials {
            cookie,
            cluster_name,
            node: None,
            tls,
        },
        node,
    ))
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn list(nodes: &[NodeName]) -> String {
    if nodes.is_empty() {
        "(none)".to_string()
    } else {
        nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")
    }
}

/// Prints a node status as `cluster-status` does.
pub fn print_status(s: &NodeStatus) {
    println!("Cluster status of node {}", s.node);
    println!(
        "  cluster:   {}",
        s.cluster
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_else(|| "(none: blank node)".into())
    );
    println!("  members:   {}", list(&s.members));
    println!("  running:   {}", list(&s.running));
    for m in &s.member_info {
        println!("    {}", member_line(m));
    }
    if !s.foreign.is_empty() {
        let foreign: Vec<String> = s
            .foreign
            .iter()
            .map(|f| match &f.cluster {
                Some(c) => format!("{} (in another cluster: {c})", f.node),
                None => format!("{} (blank: not in any cluster)", f.node),
            })
            .collect();
        println!("  NOT IN THIS CLUSTER: {}", foreign.join(", "));
    }
    println!("  ready:     {}", yes(s.ready));
    println!("  in sync:   {}", yes(s.in_sync));
    println!("  formation: {} — {}", s.formation, s.detail);
    if let Some(r) = &s.registration {
        println!("  backend:   {r}");
    }
}

/// One member as `members` and `cluster-status` print it: name, status, since when, metadata.
fn member_line(m: &muster_node::MemberInfo) -> String {
    let since = m
        .since
        .elapsed()
        .map(|d| format!("{}s ago", d.as_secs()))
        .unwrap_or_else(|_| "just now".into());
    let meta: Vec<String> = m.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "{:<40} {:<11} since {:<10} {}",
        m.name.to_string(),
        m.status.as_str(),
        since,
        meta.join(" ")
    )
}

/// Prints the members, and with `watch` every later change, until interrupted.
async fn members(
    creds: &Credentials,
    node: &NodeName,
    args: &CtlArgs,
    watch: bool,
    json: bool,
) -> Result<i32, String> {
    let timeout = Duration::from_secs(args.timeout);
    let addrs = args.address.map(|a| vec![a]);
    let mut after = None;
    loop {
        let req = Request::Members { after };
        let resp = call_at(creds, node, addrs.clone(), &req, timeout)
            .await
            .map_err(|e| e.to_string())?;
        let members = match resp {
            Response::Members { members } => members,
            Response::Error { message } => return Err(format!("{node}: {message}")),
            other => return Err(format!("{node}: unexpected answer {other:?}")),
        };
        if after != Some(members.version) {
            if json {
                println!("{}", serde_json::to_string(&members).map_err(|e| e.to_string())?);
            } else {
                println!(
                    "Members of the cluster as {node} sees them (version {}):",
                    members.version
                );
                for m in &members.members {
                    println!("  {}", member_line(m));
                }
            }
        }
        if !watch {
            return Ok(0);
        }
        after = Some(members.version);
    }
}

/// What an operator command that succeeded did, in words.
fn done_message(cmd: &CtlCommand, node: &NodeName) -> String {
    match cmd {
        CtlCommand::JoinCluster { peer } => format!("{node} joined the cluster of {peer}"),
        CtlCommand::ForgetClusterNode { member } => {
            format!("{node}: {member} is forgotten (no longer a member of the cluster)")
        }
        CtlCommand::Reset => format!("{node} was reset: it left its cluster and is blank"),
        CtlCommand::ForceBoot { .. } => format!(
            "{node}: force-boot set: if it waits for its peers it boots now, else it boots without \
             waiting at its next start"
        ),
        CtlCommand::Stop => format!("{node} is stopping"),
        CtlCommand::SetMetadata {
            key, value: Some(v), ..
        } => format!("{node}: metadata {key}={v}"),
        CtlCommand::SetMetadata { key, .. } => format!("{node}: metadata {key} removed"),
        _ => format!("{node}: done"),
    }
}

/// Runs a `ctl` command; `Ok(code)` is the exit code, `Err` one line for stderr.
pub async fn run(args: CtlArgs) -> Result<i32, String> {
    if let CtlCommand::ForceBoot { data_dir: Some(dir) } = &args.command {
        return force_boot_offline(dir);
    }
    let (creds, node) = credentials(&args)?;
    if let CtlCommand::Members { watch, json } = args.command {
        return members(&creds, &node, &args, watch, json).await;
    }
    let timeout = Duration::from_secs(args.timeout);
    let req = request_for(&args.command)?;
    let addrs = args.address.map(|a| vec![a]);
    let resp = call_at(&creds, &node, addrs, &req, timeout)
        .await
        .map_err(|e| e.to_string())?;
    report(&args.command, &node, resp)
}

/// `force-boot --data-dir DIR`: sets the marker in a stopped node's data dir.
fn force_boot_offline(dir: &std::path::Path) -> Result<i32, String> {
    // A typo must not create a directory and report success: the node's data dir exists.
    if !dir.is_dir() {
        return Err(format!(
            "{} is not a node's data dir (no such directory); give the data_dir of the node's config",
            dir.display()
        ));
    }
    let store = Store::unlocked(dir).map_err(|e| format!("cannot open {}: {e}", dir.display()))?;
    store
        .set_force_boot(true)
        .map_err(|e| format!("cannot write the force-boot marker: {e}"))?;
    println!(
        "force-boot set in {}: the node will boot without waiting for its peers",
        dir.display()
    );
    Ok(0)
}

/// The request a command sends.
fn request_for(command: &CtlCommand) -> Result<Request, String> {
    Ok(match command {
        CtlCommand::Members { .. } => Request::Members { after: None },
        CtlCommand::ClusterStatus { .. } | CtlCommand::CheckRunning => Request::Status,
        CtlCommand::JoinCluster { peer } => Request::JoinCluster { peer: peer.clone() },
        CtlCommand::ForgetClusterNode { member } => Request::Forget { node: member.clone() },
        CtlCommand::Reset => Request::Reset,
        CtlCommand::ForceBoot { .. } => Request::ForceBoot,
        CtlCommand::Ping => Request::Ping,
        CtlCommand::FormationStatus { .. } => Request::FormationStatus,
        CtlCommand::Stop => Request::Stop,
        CtlCommand::SetMetadata { key, value, remove } => {
            if value.is_none() && !remove {
                return Err(format!("set-metadata {key}: give a value, or --remove"));
            }
            Request::SetMetadata {
                key: key.clone(),
                value: value.clone(),
            }
        }
    })
}

/// Prints the node's answer to `command`; the exit code, or one line for stderr.
fn report(command: &CtlCommand, node: &NodeName, resp: Response) -> Result<i32, String> {
    match (command, resp) {
        (_, Response::Error { message }) => Err(format!("{node}: {message}")),
        (CtlCommand::ClusterStatus { json }, Response::Status { status }) => {
            if *json {
                let text = serde_json::to_string_pretty(&status).map_err(|e| e.to_string())?;
                println!("{text}");
            } else {
                print_status(&status);
            }
            Ok(0)
        }
        (CtlCommand::CheckRunning, Response::Status { status }) => {
            if status.ready && status.in_sync {
                println!(
                    "{node} is running and in sync with {} members",
                    status.members.len()
                );
                Ok(0)
            } else if !status.ready {
                Err(format!("{node} is not ready: {}", status.detail))
            } else {
                Err(format!(
                    "{node} is ready but its members disagree on membership (not in sync yet)"
                ))
            }
        }
        (CtlCommand::FormationStatus { json }, Response::Formation { status }) => {
            print_formation(node, &status, *json)?;
            Ok(0)
        }
        (CtlCommand::Ping, Response::Pong { node }) => {
            println!("{node} is alive");
            Ok(0)
        }
        (cmd, Response::Ok) => {
            println!("{}", done_message(cmd, node));
            Ok(0)
        }
        (_, other) => Err(format!("{node}: unexpected answer {other:?}")),
    }
}

/// `formation-status`: the phase and the decision trace, or the JSON.
fn print_formation(
    node: &NodeName,
    status: &muster_node::muster::FormationStatus,
    json: bool,
) -> Result<(), String> {
    if json {
        let text = serde_json::to_string_pretty(status).map_err(|e| e.to_string())?;
        println!("{text}");
        return Ok(());
    }
    println!(
        "Formation on {node}: {:?}, attempt {} — {}",
        status.phase, status.attempt, status.detail
    );
    for t in &status.trace {
        println!(
            "  {:>8.3}s  #{:<3} {}/{} reachable  {}",
            t.at.as_secs_f64(),
            t.attempt,
            t.reachable,
            t.discovered,
            t.summary
        );
    }
    Ok(())
}
