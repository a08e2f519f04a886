//! A test step that needs a process of its own (one to SIGKILL, or one with another environment
//! or mount namespace) runs as a child: this test binary again, with only one ignored test
//! selected. The child test reads what it needs from variables its parent sets.

use std::process::Command;

/// The program and arguments that run the ignored test `test` (its full path in the test
/// binary) of the running test binary alone, its output not captured.
pub fn argv(test: &str) -> Vec<String> {
    let exe = std::env::current_exe().expect("the running test binary");
    [exe.display().to_string()]
        .into_iter()
        .chain(
            [
                "--exact",
                test,
                "--ignored",
                "--nocapture",
                "--quiet",
                "--test-threads",
                "1",
            ]
            .map(String::from),
        )
        .collect()
}

/// [`argv`] as a command.
pub fn command(test: &str) -> Command {
    let argv = argv(test);
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd
}

/// The lines of a child's output that start with `prefix`, without it (the test harness
/// prints its own lines around the child's).
pub fn lines(output: &str, prefix: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .map(str::to_string)
        .collect()
}

/// Where a listing child ([`list_once`]) finds its config file and node name, as
/// `CONFIG_PATH NODE_NAME`.
pub const LIST_ENV: &str = "MUSTER_TEST_LIST";

/// A listing child's body: builds `factory`'s backend from the config file named in [`LIST_ENV`]
/// for the node named there, lists once, and prints each node as `listed: <name>`, or the error
/// as `error: <error>`. Run in its own process so that its environment (process-wide variables,
/// a private mount namespace) is the one under test; without [`LIST_ENV`] it does nothing.
pub async fn list_once(factory: &muster_discovery_core::BackendFactory) {
    let Ok(arg) = std::env::var(LIST_ENV) else {
        return eprintln!("a child process: run by the tests that set {LIST_ENV}");
    };
    let (config, name) = arg.split_once(' ').expect("CONFIG_PATH NODE_NAME");
    let text = std::fs::read_to_string(config).expect("the config file");
    let config = muster_discovery_core::FormationConfig::from_toml(&text).expect("a valid config");
    let me = name.parse().expect("a node name");
    let listed = match (factory.build)(&config, &me) {
        Ok(backend) => backend.list().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match listed {
        Ok(listing) => listing.nodes.iter().for_each(|n| println!("listed: {n}")),
        Err(e) => println!("error: {e}"),
    }
}

/// A process killed and reaped when dropped, so that a failing test leaves none behind: a
/// child test, a server, a namespace's holder.
#[derive(Debug)]
pub struct Running(pub std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
