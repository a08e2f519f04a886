//! Test helper: builds the configured backend (any compiled in) from a config file for a node
//! name and prints one listing (or the error), so that a test can run it in an environment of
//! its own: the in-cluster service-account files in a private mount namespace, or AWS profile
//! files named by process-wide variables. Usage: backend-list CONFIG NODE_NAME
use muster::{FormationConfig, NodeName};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, config, name] = args.as_slice() else {
        eprintln!("usage: backend-list CONFIG NODE_NAME");
        std::process::exit(2);
    };
    let text = std::fs::read_to_string(config).expect("the config file");
    let me: NodeName = name.parse().expect("a node name");
    let backend = match muster::build_backend(&FormationConfig::from_toml(&text).expect("config"), &me) {
        Ok(b) => b,
        Err(e) => {
            println!("error: {e}");
            std::process::exit(1);
        }
    };
    match backend.list().await {
        Ok(l) => {
            for n in l.nodes {
                println!("{n}");
            }
        }
        Err(e) => {
            println!("error: {e}");
            std::process::exit(1);
        }
    }
}
