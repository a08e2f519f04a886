//! The `muster` command line.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::ctl::CtlArgs;
use muster_node::config::NodeConfig;

/// Muster: peer discovery and cluster formation — reference broker node.
#[derive(Debug, Parser)]
#[command(name = "muster", version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Log formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node.
    Start {
        /// The node's TOML config.
        #[arg(long)]
        config: PathBuf,
    },
    /// Config file tools.
    Config {
        /// The action.
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Run the configured backend's listing once (dry run) and print the candidates.
    Discover {
        /// The node's TOML config.
        #[arg(long)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Control a running node.
    Ctl(Box<CtlArgs>),
    /// Cookie tools.
    Cookie {
        /// The action.
        #[command(subcommand)]
        action: CookieAction,
    },
    /// Start N nodes on loopback, show them form one cluster, and stop them.
    Demo {
        /// How many nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Leave the nodes running.
        #[arg(long)]
        keep: bool,
    },
}

/// `config` actions.
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Validate a config and print the effective settings (defaults and env overrides applied).
    Check {
        /// The file.
        file: PathBuf,
    },
}

/// `cookie` actions.
#[derive(Debug, Subcommand)]
pub enum CookieAction {
    /// Make a strong random cookie (48 hex digits): write it to a new file with mode 0600, or
    /// print it when no file is given.
    Generate {
        /// The file to create (refused if it exists).
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

/// Whether log lines carry colour: only on a terminal, and never when `NO_COLOR` is set to
/// anything but the empty string (files, pipes, journald and `kubectl logs` get plain text).
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Logs to stderr at `info`, or as `MUSTER_LOG` says: a level (`debug`), or `target=level`
/// pairs with an optional default (`muster_node=debug,warn`). A value that is neither is named
/// in a warning, and `info` applies.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let info = || Targets::new().with_default(tracing::Level::INFO);
    let (filter, bad) = match std::env::var("MUSTER_LOG") {
        Ok(v) => match v.parse::<Targets>() {
            Ok(t) => (t, None),
            Err(e) => (info(), Some((v, e))),
        },
        Err(_) => (info(), None),
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry.with(layer.with_target(false)).init(),
        LogFormat::Json => registry.with(layer.json()).init(),
    }
    if let Some((v, e)) = bad {
        tracing::warn!(
            "MUSTER_LOG={v:?} is not a log filter ({e}); logging at info. Give a level (debug) or \
             target=level pairs (muster_node=debug,warn)"
        );
    }
}

async fn discover(config: PathBuf, json: bool) -> Result<i32, String> {
    let cfg = NodeConfig::load_with_env(&config).map_err(|e| e.to_string())?;
    let backend = muster::build_backend(&cfg.file.cluster_formation, &cfg.name).map_err(|e| e.to_string())?;
    let r = backend.list().await.map_err(|e| e.to_string())?;
    if json {
        let v = serde_json::json!({
            "backend": backend.name(),
            "nodes": r.nodes,
            "authoritative": r.authoritative,
            "preferred_seed": r.preferred_seed,
            "recorded_cluster": r.recorded_cluster,
        });
        println!("{v:#}");
    } else {
        println!(
            "{} backend listed {} node(s){}:",
            backend.name(),
            r.nodes.len(),
            if r.authoritative { " (authoritative)" } else { "" }
        );
        for n in &r.nodes {
            println!("  {n}");
        }
        if let Some(s) = &r.preferred_seed {
            println!("preferred seed: {s}");
        }
    }
    Ok(0)
}

async fn dispatch(cli: Cli) -> Result<i32, String> {
    match cli.command {
        Command::Start { config } => {
            let cfg = NodeConfig::load_with_env(&config).map_err(|e| e.to_string())?;
            crate::start::run(&cfg).await.map(|()| 0)
        }
        Command::Config {
            action: ConfigAction::Check { file },
        } => {
            let cfg = NodeConfig::load_with_env(&file).map_err(|e| e.to_string())?;
            // What start checks before it starts: the cookie, the data dir, the TLS files.
            muster_node::preflight::preflight(&cfg).map_err(|e| e.to_string())?;
            // The backend's own table too (building it reads no network: clients connect lazily).
            muster::build_backend(&cfg.file.cluster_formation, &cfg.name).map_err(|e| e.to_string())?;
            println!("# {} is valid. Effective settings:", file.display());
            for table in &cfg.unchecked_tables {
                println!(
                    "# note: [cluster_formation.{table}] was not checked: its backend is not compiled into this binary"
                );
            }
            println!(
                "# node.listen = \"{}\" (peers reach {})",
                cfg.listen,
                muster_node::config::peer_address(&cfg.name)
            );
            print!("{}", cfg.file.effective_toml().map_err(|e| e.to_string())?);
            Ok(0)
        }
        Command::Discover { config, json } => discover(config, json).await,
        Command::Cookie {
            action: CookieAction::Generate { file },
        } => match file {
            Some(path) => {
                muster_node::cookie::Cookie::generate(&path)
                    .map_err(|e| format!("cannot create cookie file {}: {e}", path.display()))?;
                println!("wrote a new cookie to {} (mode 0600)", path.display());
                Ok(0)
            }
            None => {
                let cookie = muster_node::cookie::Cookie::random().map_err(|e| e.to_string())?;
                println!("{}", cookie.expose());
                Ok(0)
            }
        },
        Command::Ctl(args) => crate::ctl::run(*args).await,
        Command::Demo { nodes, keep } => {
            let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
            crate::demo::run(&exe, nodes, keep).await
        }
    }
}

/// Keeps glibc's allocator to one arena. The node's few threads allocate little; one arena per
/// thread (glibc's default, up to 8 per core) kept freed memory in each, a third of a seed's
/// private memory at 100 nodes. Elsewhere (musl) the allocator has no arenas to limit.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called first thing, before any thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Prints what argument parsing stopped at and returns the exit code: `--help` and `--version`
/// print in full and exit 0; an argument error is one line on stderr and exit 1, like every other
/// error.
fn argument_error(e: &clap::Error) -> i32 {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                1
            } else {
                0
            }
        }
        _ => {
            eprintln!("muster: {}", one_line(&e.to_string()));
            1
        }
    }
}

/// clap's message on one line: its first line without the "error: " prefix, and where to look.
fn one_line(message: &str) -> String {
    let first = message.lines().next().unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    format!("{first} (see --help)")
}

/// The program: parse arguments, run, exit with 0 or one line on stderr and a non-zero code.
pub fn main() {
    one_malloc_arena();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => std::process::exit(argument_error(&e)),
    };
    init_logging(cli.log_format);
    // A few blocking threads are plenty (state saves, which are serialized anyway): under a
    // crowd of joins, an unbounded pool grew to one thread (and one malloc arena) per waiting
    // save, which cost a seed of 100 nodes over 100 MiB.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("muster: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(line) => {
            eprintln!("muster: {line}");
            1
        }
    };
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::colour;

    #[test]
    fn an_argument_error_is_one_line() {
        use clap::Parser;
        let e = super::Cli::try_parse_from(["muster", "ctl", "--bogus"]).unwrap_err();
        let line = super::one_line(&e.to_string());
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.contains("--bogus") && line.ends_with("(see --help)"),
            "{line}"
        );
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None), "a file, a pipe, journald: plain text");
    }
}
