//! A service that joins a cluster through Muster and prints what happens to its members; Ctrl-C
//! leaves the cluster. Usage: `hello-cluster NAME DATA_DIR COOKIE_FILE NODE...` (every node of
//! the static list, this one included), for example
//! `hello-cluster a@127.0.0.1:4371 /tmp/a cookie a@127.0.0.1:4371 b@127.0.0.1:4372`.

use std::time::Duration;

use muster_node::muster::FormationConfig;
use muster_node::{Cluster, Cookie};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [name, data_dir, cookie_file, nodes @ ..] = args.as_slice() else {
        return Err("usage: hello-cluster NAME DATA_DIR COOKIE_FILE NODE...".into());
    };
    let list: Vec<String> = nodes.iter().map(|n| format!("{n:?}")).collect();
    let formation = FormationConfig::from_toml(&format!(
        "[cluster_formation.classic_config]\nnodes = [{}]",
        list.join(", ")
    ))?;
    let cluster = Cluster::builder(name.parse()?, data_dir, Cookie::from_file(cookie_file.as_ref())?)
        .formation(formation)
        .metadata("pid", std::process::id().to_string())
        .start()
        .await?;
    let mut events = cluster.events();
    println!("formed: {:?}", cluster.formed(Duration::from_secs(120)).await?);
    loop {
        tokio::select! {
            Some(event) = events.next() => println!("{event}"),
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    cluster.leave().await?;
    println!("left the cluster");
    Ok(())
}
