//! The servers and node layouts the formation benchmark runs each backend against: etcd and a
//! Consul dev agent (real servers), bind9 with SRV records, the Kubernetes fake API server with a
//! StatefulSet's pods on loopback, and moto with an autoscaling group and a fake IMDS per node.
//! With `shipped`, every setting a user would leave alone keeps its default: only what names
//! the server (addresses, the namespace, the group) and a size hint are written.

use std::net::SocketAddr;
use std::time::Duration;

use muster::NodeName;
use muster_cli::launch::{Layout, Ports};

use muster_test_support::aws::{FakeImds, Moto, Setup, add_loopback_address};
use muster_test_support::consul_agent::ConsulAgent;
use muster_test_support::dns::{CLUSTER_SRV, DnsServer, Zone, cluster_nodes};
use muster_test_support::etcd::EtcdServer;
use muster_test_support::k8s::{FakeApi, StatefulSetPods};

/// A backend the benchmark can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The static list.
    Classic,
    /// DNS SRV records (bind9); not authoritative.
    Dns,
    /// etcd: lock, fencing, lease registrations.
    Etcd,
    /// Kubernetes, StatefulSet mode: Lease lock, ConfigMap fencing.
    K8s,
    /// Kubernetes, endpoints mode; not authoritative.
    K8sEndpoints,
    /// Consul: session lock, fencing, service registrations.
    Consul,
    /// AWS autoscaling group (moto); not authoritative.
    Aws,
}

/// Every backend, in the order the benchmark prints them.
pub const ALL: [Backend; 7] = [
    Backend::Classic,
    Backend::Dns,
    Backend::Etcd,
    Backend::K8s,
    Backend::K8sEndpoints,
    Backend::Consul,
    Backend::Aws,
];

impl Backend {
    /// The name on the command line and in the tables.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Classic => "classic",
            Backend::Dns => "dns",
            Backend::Etcd => "etcd",
            Backend::K8s => "k8s",
            Backend::K8sEndpoints => "k8s-endpoints",
            Backend::Consul => "consul",
            Backend::Aws => "aws",
        }
    }

    /// Parses a command-line name.
    pub fn parse(s: &str) -> Option<Backend> {
        ALL.into_iter().find(|b| b.name() == s)
    }

    /// Whether the backend's listing is not authoritative: formation waits `stable_margin` with
    /// an unchanged view before anyone forms.
    pub fn waits_stable_margin(self) -> bool {
        matches!(self, Backend::Dns | Backend::K8sEndpoints | Backend::Aws)
    }

    /// What the nodes wait for before anyone may form, with the shipped settings: the margin,
    /// and how it reads in the table (AWS also delays each node's first listing by up to
    /// `startup_jitter`).
    pub fn fixed_wait(self, stable_margin: Duration, shipped: bool) -> Option<(Duration, String)> {
        let margin = format!("{:.1} s", stable_margin.as_secs_f64());
        match self {
            Backend::Aws if shipped => Some((stable_margin, format!("{margin} + startup_jitter ≤ 1 s"))),
            Backend::Aws => Some((stable_margin, format!("{margin} + startup_jitter ≤ 0.3 s"))),
            b if b.waits_stable_margin() => Some((stable_margin, margin)),
            _ => None,
        }
    }

    /// Whether it runs only inside a private network namespace (it adds addresses to `lo`).
    pub fn needs_private_network(self) -> bool {
        self == Backend::Aws
    }
}

/// The servers of one backend, started once per benchmark and kept for its runs.
pub enum Rig {
    /// Nothing to serve.
    Classic,
    /// Started per run (the zone names that run's ports).
    Dns(Option<DnsServer>),
    /// One etcd; each run uses its own `cluster_name`.
    Etcd(EtcdServer),
    /// A fresh fake API server per run (the Lease and the fencing ConfigMap start absent).
    K8s(Option<FakeApi>, &'static str),
    /// One agent; each run uses its own `cluster_name`.
    Consul(ConsulAgent),
    /// moto, and per size an autoscaling group with its instances' addresses and IMDS servers.
    Aws(Box<AwsRig>),
}

/// moto and the groups made so far, by size.
pub struct AwsRig {
    moto: Moto,
    setup: Setup,
    groups: Vec<(usize, Vec<(String, FakeImds)>)>,
}

/// What one run needs: the layout, and per node the extra environment.
pub struct RunSetup {
    /// The nodes' layout.
    pub layout: Layout,
    /// Extra environment for node `i`.
    pub env: Vec<Vec<(String, String)>>,
}

const K8S_TOKEN: &str = "bench-token";
const PODS: StatefulSetPods = StatefulSetPods {
    ns: "bench",
    ip_prefix: "127.0.30",
};

impl Rig {
    /// Starts what `backend` needs for every run.
    pub async fn start(backend: Backend) -> Rig {
        match backend {
            Backend::Classic => Rig::Classic,
            Backend::Dns => Rig::Dns(None),
            Backend::Etcd => Rig::Etcd(EtcdServer::start().await),
            Backend::K8s => Rig::K8s(None, "statefulset"),
            Backend::K8sEndpoints => Rig::K8s(None, "endpoints"),
            Backend::Consul => Rig::Consul(ConsulAgent::start().await),
            Backend::Aws => {
                let moto = Moto::start();
                let setup = Setup::new(&moto.url).await;
                Rig::Aws(Box::new(AwsRig {
                    moto,
                    setup,
                    groups: Vec::new(),
                }))
            }
        }
    }

    /// The layout of run `run` with `n` nodes. `formation` holds the `[cluster_formation]`
    /// lines (empty with the shipped settings); `shipped` leaves the backend's own settings at
    /// their defaults too.
    pub async fn run_setup(&mut self, n: usize, run: usize, formation: &str, shipped: bool) -> RunSetup {
        let plain = |layout: Layout| RunSetup {
            env: vec![Vec::new(); layout.nodes],
            layout,
        };
        let base = Layout {
            nodes: n,
            prefix: "bench".into(),
            http: true,
            formation: formation.to_string(),
            ..Layout::default()
        };
        let cluster_name = format!("bench{run}n{n}");
        match self {
            Rig::Classic => plain(base),
            Rig::Etcd(server) => {
                let mut table = if shipped {
                    format!(
                        "[cluster_formation.etcd]\nendpoints = [\"{}\"]\n",
                        server.endpoint
                    )
                } else {
                    server.formation_table()
                };
                table.push_str(&format!("cluster_name = \"{cluster_name}\"\n"));
                plain(Layout {
                    backend: Some(("etcd".into(), table)),
                    ..base
                })
            }
            Rig::Consul(agent) => {
                let mut table = format!(
                    "[cluster_formation.consul]\naddress = \"{}\"\ncluster_name = \"{cluster_name}\"\n",
                    agent.addr()
                );
                if !shipped {
                    table.push_str("check_ttl = \"2s\"\nlock_ttl = \"10s\"\nrequest_timeout = \"1s\"\nlock_timeout = \"5s\"\n");
                }
                plain(Layout {
                    backend: Some(("consul".into(), table)),
                    ..base
                })
            }
            Rig::Dns(server) => {
                let nodes = cluster_nodes(n, &mut Ports::new());
                let listen: Vec<SocketAddr> = nodes.iter().map(|(_, l)| *l).collect();
                // The previous run's server is stopped before this one's starts.
                *server = None;
                let dns = DnsServer::bind9(&Zone::cluster(&listen)).await;
                let table = format!(
                    "[cluster_formation.dns]\nsrv = \"{CLUSTER_SRV}\"\nnameservers = [\"{}\"]\n",
                    dns.addr
                );
                *server = Some(dns);
                plain(Layout {
                    names: Some(nodes),
                    backend: Some(("dns".into(), table)),
                    // Not authoritative: a user sets the size hint (the node warns without it).
                    formation: format!("{formation}target_cluster_size_hint = {n}\n"),
                    ..base
                })
            }
            Rig::K8s(fake, mode) => {
                *fake = None;
                let api = FakeApi::start(K8S_TOKEN).await;
                PODS.scale(&api, n);
                let mut layout = PODS.layout(&api.kubeconfig(K8S_TOKEN), n, mode);
                if shipped {
                    let (name, table) = layout.backend.take().unwrap_or_default();
                    let kept: String = table
                        .lines()
                        .filter(|l| !l.starts_with("request_timeout") && !l.starts_with("lease_duration"))
                        .map(|l| format!("{l}\n"))
                        .collect();
                    layout.backend = Some((name, kept));
                }
                *fake = Some(api);
                plain(Layout {
                    formation: formation.to_string(),
                    http: true,
                    ..layout
                })
            }
            Rig::Aws(rig) => rig.run_setup(n, base, shipped).await,
        }
    }
}

impl AwsRig {
    async fn run_setup(&mut self, n: usize, base: Layout, shipped: bool) -> RunSetup {
        if !self.groups.iter().any(|(size, _)| *size == n) {
            let subnet = self
                .setup
                .subnet(&format!("10.{}.0.0/24", 100 + self.groups.len()))
                .await;
            let ids = self.setup.group(&format!("bench{n}"), n as i32, &subnet).await;
            let ips = self.setup.private_ips(&ids).await;
            let mut nodes = Vec::new();
            for (id, ip) in ids.iter().zip(ips) {
                add_loopback_address(&ip);
                nodes.push((ip.clone(), FakeImds::start(id, &ip).await));
            }
            self.groups.push((n, nodes));
        }
        let nodes = &self
            .groups
            .iter()
            .find(|(size, _)| *size == n)
            .expect("made above")
            .1;
        let port = Ports::new().take().expect("a free port");
        let names: Vec<(NodeName, SocketAddr)> = nodes
            .iter()
            .map(|(ip, _)| {
                (
                    format!("muster@{ip}:{port}").parse().expect("a node name"),
                    format!("{ip}:{port}").parse().expect("an address"),
                )
            })
            .collect();
        let mut table = format!(
            "[cluster_formation.aws]\nuse_autoscaling_group = true\nendpoint_url = \"{}\"\n",
            self.moto.url
        );
        if !shipped {
            table.push_str("startup_jitter = \"300ms\"\nrequest_timeout = \"3s\"\n");
        }
        let env = nodes
            .iter()
            .map(|(_, imds)| {
                vec![
                    ("AWS_EC2_METADATA_SERVICE_ENDPOINT".to_string(), imds.url.clone()),
                    (
                        "AWS_CONFIG_FILE".to_string(),
                        "/nonexistent/muster-bench".to_string(),
                    ),
                    (
                        "AWS_SHARED_CREDENTIALS_FILE".to_string(),
                        "/nonexistent/muster-bench".to_string(),
                    ),
                ]
            })
            .collect();
        RunSetup {
            layout: Layout {
                names: Some(names),
                backend: Some(("aws".into(), table)),
                ..base
            },
            env,
        }
    }
}
