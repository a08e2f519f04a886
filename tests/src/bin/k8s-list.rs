//! Test helper: builds the k8s backend from a config file for a node name and prints one
//! listing (or the error), so that a test can run it where the in-cluster service-account
//! files exist (a private mount namespace). Usage: k8s-list CONFIG NODE_NAME
use muster::{Discovery, FormationConfig, NodeName};
use muster_backend_k8s::K8sBackend;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, config, name] = args.as_slice() else {
        eprintln!("usage: k8s-list CONFIG NODE_NAME");
        std::process::exit(2);
    };
    let text = std::fs::read_to_string(config).expect("the config file");
    let me: NodeName = name.parse().expect("a node name");
    let backend = match K8sBackend::from_config(&FormationConfig::from_toml(&text).expect("config"), &me) {
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
