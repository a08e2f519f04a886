//! `deploy/kubernetes/`: every manifest passes `kubernetes-validate --strict` for Kubernetes 1.33
//! (offline), and the files agree with each other and with the node: the ConfigMap's
//! `muster.toml` passes `muster config check` with the StatefulSet's environment, and ports,
//! probe paths, Service, Secret, ConfigMap and volume names match across the files; the Role
//! grants exactly what the backend uses, pinned to the Lease and ConfigMap names the backend
//! resolves; the NetworkPolicy admits the peer port from the StatefulSet's pods only and the
//! HTTP port from opted-in pods only.

use std::path::{Path, PathBuf};
use std::process::Command;

use muster_tests::{node_exe, text};
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

fn docs(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(dir().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    serde_saphyr::from_multiple::<Value>(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn one(file: &str, kind: &str) -> Value {
    docs(file)
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {file}"))
}

fn manifests() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .collect();
    files.sort();
    files
}

#[test]
fn every_manifest_passes_kubernetes_validate_strict_for_1_33() {
    let probe = Command::new("kubernetes-validate").arg("--version").output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "kubernetes-validate is not installed; install it with: pip install kubernetes-validate==1.37.0 \
         (scripts/test.sh does this)"
    );
    for file in manifests() {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "-k", "1.33.0"])
            .arg(dir().join(&file))
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{file} fails validation:\n{stdout}{stderr}");
    }
}

#[test]
fn kustomization_lists_every_manifest_and_generates_the_cookie_secret() {
    let k = &docs("kustomization.yaml")[0];
    let mut listed: Vec<String> = k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    listed.sort();
    assert_eq!(listed, manifests());
    let sts = one("statefulset.yaml", "StatefulSet");
    let secret = sts["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|v| v["secret"]["secretName"].as_str())
        .unwrap()
        .to_string();
    assert_eq!(k["secretGenerator"][0]["name"], secret.as_str());
}

/// The container's downward-API variables: (name, fieldPath).
fn field_refs(container: &Value) -> Vec<(String, String)> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_string(),
                e["valueFrom"]["fieldRef"]["fieldPath"].as_str()?.to_string(),
            ))
        })
        .collect()
}

fn env_of(container: &Value) -> Vec<(String, String)> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].as_str()?.to_string())))
        .collect()
}

#[test]
fn the_files_agree_with_each_other_and_the_config_passes_config_check() {
    let sts = one("statefulset.yaml", "StatefulSet");
    let spec = &sts["spec"];
    let pod = &spec["template"]["spec"];
    assert_eq!(
        spec["podManagementPolicy"], "Parallel",
        "OrderedReady deadlocks a full restart"
    );
    let headless = one("services.yaml", "Service");
    assert_eq!(spec["serviceName"], headless["metadata"]["name"]);
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true);
    let main = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "muster")
        .unwrap();
    let port = |name: &str| {
        main["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["containerPort"]
            .as_u64()
            .unwrap()
    };
    // The config, with the StatefulSet's environment for pod muster-0 in namespace prod.
    let cm = one("configmap.yaml", "ConfigMap");
    let toml_text = cm["data"]["muster.toml"].as_str().unwrap().to_string();
    let cfg: toml::Table = toml::from_str(&toml_text).unwrap();
    let vols = pod["volumes"].as_array().unwrap();
    assert!(
        vols.iter()
            .any(|v| v["configMap"]["name"] == cm["metadata"]["name"]),
        "the ConfigMap is mounted"
    );
    assert_eq!(
        cfg["cluster_formation"]["k8s"]["service"].as_str(),
        spec["serviceName"].as_str()
    );
    // HTTP listens on the pod's IP (where the kubelet's probes connect), never on 0.0.0.0: the
    // environment sets it, and the file leaves it to the environment.
    assert!(
        cfg.get("http").and_then(|h| h.get("listen")).is_none(),
        "the ConfigMap leaves [http] listen to MUSTER_HTTP_LISTEN"
    );
    let fields = field_refs(main);
    assert!(
        fields.contains(&("POD_IP".to_string(), "status.podIP".to_string())),
        "{fields:?}"
    );
    let raw_env = env_of(main);
    let http_listen = &raw_env
        .iter()
        .find(|(k, _)| k == "MUSTER_HTTP_LISTEN")
        .expect("MUSTER_HTTP_LISTEN is set")
        .1;
    assert_eq!(http_listen, &format!("$(POD_IP):{}", port("http")));
    // $(VAR) expands only variables defined earlier in the list.
    let names: Vec<&str> = main["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    let at = |n: &str| names.iter().position(|x| *x == n).unwrap();
    assert!(at("POD_IP") < at("MUSTER_HTTP_LISTEN"), "{names:?}");
    assert!(at("CLUSTER_DOMAIN") < at("MUSTER_NODE_NAME"), "{names:?}");
    let domain = raw_env
        .iter()
        .find(|(k, _)| k == "CLUSTER_DOMAIN")
        .map(|(_, v)| v.clone())
        .expect("CLUSTER_DOMAIN is set");
    let env: Vec<(String, String)> = raw_env
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                v.replace("$(POD_NAME)", "muster-0")
                    .replace("$(POD_NAMESPACE)", "prod")
                    .replace("$(POD_IP)", "10.1.2.3")
                    .replace("$(CLUSTER_DOMAIN)", &domain),
            )
        })
        .collect();
    let get = |k: &str| {
        env.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{k} missing"))
    };
    let node_name = get("MUSTER_NODE_NAME");
    assert!(node_name.contains(&format!(".svc.{domain}:")), "{node_name}");
    assert!(
        toml_text.contains(&format!("cluster_domain = \"{domain}\"")),
        "the ConfigMap names the same cluster domain as the StatefulSet"
    );
    // The cookie never goes into git nor into the image's build context.
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    for ignore in [".gitignore", ".dockerignore"] {
        let text = std::fs::read_to_string(format!("{root}/{ignore}")).unwrap();
        assert!(
            text.lines()
                .any(|l| l.trim_start_matches('/') == "deploy/kubernetes/cookie"),
            "{ignore}"
        );
    }
    let docker = std::fs::read_to_string(format!("{root}/.dockerignore")).unwrap();
    assert!(
        docker.lines().any(|l| l == "target/"),
        "the build output stays out of the context"
    );
    assert!(node_name.ends_with(&format!(":{}", port("peer"))), "{node_name}");
    assert!(
        node_name.contains(&format!(".{}.", spec["serviceName"].as_str().unwrap())),
        "{node_name}"
    );
    let mounts = main["volumeMounts"].as_array().unwrap();
    let mount_of = |path: &str| {
        mounts
            .iter()
            .find(|m| path.starts_with(m["mountPath"].as_str().unwrap()))
            .cloned()
    };
    let data = mount_of(&get("MUSTER_DATA_DIR")).expect("the data dir is a mount");
    let templates: Vec<&str> = spec["volumeClaimTemplates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["metadata"]["name"].as_str().unwrap())
        .collect();
    assert!(
        templates.contains(&data["name"].as_str().unwrap()),
        "the data dir is a PersistentVolumeClaim"
    );
    assert!(
        mount_of(&get("MUSTER_COOKIE_FILE")).is_some(),
        "the cookie file is on a mount"
    );
    for container in pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(pod["initContainers"].as_array().unwrap())
    {
        // Every container runs the image loaded into the cluster, not a pull of :latest.
        assert_eq!(
            container["imagePullPolicy"], "IfNotPresent",
            "{}",
            container["name"]
        );
        for m in container["volumeMounts"].as_array().unwrap() {
            let name = m["name"].as_str().unwrap();
            assert!(
                vols.iter().any(|v| v["name"] == name) || templates.contains(&name),
                "volume {name} is defined"
            );
        }
    }
    // Probes: the node's health paths, on the http port.
    assert_eq!(main["livenessProbe"]["httpGet"]["path"], "/health/live");
    assert_eq!(main["readinessProbe"]["httpGet"]["path"], "/health/ready");
    assert_eq!(main["startupProbe"]["httpGet"]["path"], "/health/live");
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        assert_eq!(main[probe]["httpGet"]["port"], "http", "{probe}");
    }
    let startup = &main["startupProbe"];
    let window = startup["periodSeconds"].as_u64().unwrap() * startup["failureThreshold"].as_u64().unwrap();
    assert!(
        window >= 300,
        "the startup probe covers the restart window (10 × 30 s): {window} s"
    );
    // The node accepts the config with that environment.
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("muster.toml");
    std::fs::write(&file, &toml_text).unwrap();
    // The pod's cookie and volume, here: config check checks them as start does.
    let cookie = tmp.path().join("cookie");
    muster_node::cookie::Cookie::generate(&cookie).unwrap();
    let out = Command::new(node_exe!())
        .args(["config", "check"])
        .arg(&file)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("MUSTER_COOKIE_FILE", &cookie)
        .env("MUSTER_DATA_DIR", tmp.path().join("data"))
        .env("POD_NAMESPACE", "prod")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "config check: {stdout}{stderr}");
    assert!(stdout.contains("peer_discovery_backend = \"k8s\""), "{stdout}");
    assert!(
        stdout.contains(&format!("listen = \"10.1.2.3:{}\"", port("http"))),
        "HTTP on the pod's IP: {stdout}"
    );
}

/// The Lease and ConfigMap names the backend resolves for pod muster-0 with the ConfigMap's
/// config and the StatefulSet's environment: (statefulset, lease, configmap).
fn backend_names() -> (String, String, String) {
    let cm = one("configmap.yaml", "ConfigMap");
    let cfg: toml::Table = toml::from_str(cm["data"]["muster.toml"].as_str().unwrap()).unwrap();
    let mut doc = toml::Table::new();
    doc.insert("cluster_formation".into(), cfg["cluster_formation"].clone());
    let formation = muster::FormationConfig::from_toml(&toml::to_string(&doc).unwrap()).unwrap();
    let sts = one("statefulset.yaml", "StatefulSet");
    let main = sts["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "muster")
        .unwrap()
        .clone();
    let env = env_of(&main);
    let value = |key: &str| env.iter().find(|(k, _)| k == key).unwrap().1.clone();
    let name = value("MUSTER_NODE_NAME")
        .replace(
            "$(POD_NAME)",
            &format!("{}-0", sts["metadata"]["name"].as_str().unwrap()),
        )
        .replace("$(POD_NAMESPACE)", "prod")
        .replace("$(CLUSTER_DOMAIN)", &value("CLUSTER_DOMAIN"));
    let r = muster_backend_k8s::settings::K8sSettings::resolve(
        &formation,
        &name.parse().unwrap(),
        Some("prod".into()),
        Path::new("/nonexistent/namespace"),
    )
    .unwrap();
    (r.statefulset.unwrap(), r.lease_name, r.fencing_name)
}

#[test]
fn the_role_grants_exactly_what_the_backend_uses() {
    let role = one("role.yaml", "Role");
    // (group, resource, verb, the one object it is pinned to, or "*" for any)
    let mut granted: Vec<(String, String, String, String)> = Vec::new();
    for rule in role["rules"].as_array().unwrap() {
        let names: Vec<String> = match rule["resourceNames"].as_array() {
            Some(n) => n.iter().map(|v| v.as_str().unwrap().to_string()).collect(),
            None => vec!["*".to_string()],
        };
        for g in rule["apiGroups"].as_array().unwrap() {
            for r in rule["resources"].as_array().unwrap() {
                for v in rule["verbs"].as_array().unwrap() {
                    assert!(
                        !(v == "create" && names[0] != "*"),
                        "resourceNames never matches a create request: {rule}"
                    );
                    for n in &names {
                        granted.push((
                            g.as_str().unwrap().into(),
                            r.as_str().unwrap().into(),
                            v.as_str().unwrap().into(),
                            n.clone(),
                        ));
                    }
                }
            }
        }
    }
    granted.sort();
    let (sts_name, lease, configmap) = backend_names();
    let sts = one("statefulset.yaml", "StatefulSet");
    assert_eq!(sts["metadata"]["name"], sts_name.as_str());
    let mut want: Vec<(String, String, String, String)> = [
        ("apps", "statefulsets", "get", sts_name.as_str()),
        // Pod names change with the replicas: not pinned.
        ("", "pods", "get", "*"),
        ("coordination.k8s.io", "leases", "get", lease.as_str()),
        // A node waiting for the formation lock watches the Lease by name.
        ("coordination.k8s.io", "leases", "watch", lease.as_str()),
        ("coordination.k8s.io", "leases", "update", lease.as_str()),
        ("coordination.k8s.io", "leases", "create", "*"),
        ("", "configmaps", "get", configmap.as_str()),
        ("", "configmaps", "create", "*"),
        ("events.k8s.io", "events", "create", "*"),
    ]
    .iter()
    .map(|(g, r, v, n)| (g.to_string(), r.to_string(), v.to_string(), n.to_string()))
    .collect();
    want.sort();
    assert_eq!(granted, want);
    let binding = one("role.yaml", "RoleBinding");
    let sa = one("serviceaccount.yaml", "ServiceAccount");
    assert_eq!(binding["subjects"][0]["name"], sa["metadata"]["name"]);
    assert_eq!(
        sts["spec"]["template"]["spec"]["serviceAccountName"],
        sa["metadata"]["name"]
    );
}

#[test]
fn the_network_policy_admits_peers_from_the_statefulset_and_http_only_from_labelled_pods() {
    let np = one("networkpolicy.yaml", "NetworkPolicy");
    let sts = one("statefulset.yaml", "StatefulSet");
    let own = &sts["spec"]["selector"]["matchLabels"];
    assert_eq!(
        &np["spec"]["podSelector"]["matchLabels"], own,
        "it selects the StatefulSet's pods"
    );
    assert_eq!(np["spec"]["policyTypes"], serde_json::json!(["Ingress"]));
    let main = sts["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "muster")
        .unwrap()
        .clone();
    let mut container_ports: Vec<&str> = main["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    container_ports.sort();
    let rules = np["spec"]["ingress"].as_array().unwrap();
    let mut admitted: Vec<&str> = Vec::new();
    for rule in rules {
        // A rule without `from` or `ports` admits every source or every port.
        let from = rule["from"].as_array().expect("every rule names its sources");
        let ports = rule["ports"].as_array().expect("every rule names its ports");
        assert!(!from.is_empty() && !ports.is_empty(), "{rule}");
        for peer in from {
            assert!(peer.get("ipBlock").is_none(), "no address ranges: {rule}");
            assert!(
                peer["podSelector"]["matchLabels"]
                    .as_object()
                    .is_some_and(|m| !m.is_empty()),
                "every source is a labelled pod: {rule}"
            );
        }
        for p in ports {
            let name = p["port"].as_str().expect("ports by name");
            assert!(container_ports.contains(&name), "{name} is a container port");
            admitted.push(name);
            match name {
                "peer" => assert_eq!(
                    from,
                    &vec![serde_json::json!({"podSelector": {"matchLabels": own}})],
                    "the peer port from the StatefulSet's own pods, in this namespace"
                ),
                "http" => {
                    for peer in from {
                        assert_ne!(
                            &peer["podSelector"]["matchLabels"], own,
                            "HTTP clients are opted in by a label of their own"
                        );
                    }
                }
                other => panic!("unexpected port {other}"),
            }
        }
    }
    admitted.sort();
    assert_eq!(admitted, container_ports, "one rule per port");
}
