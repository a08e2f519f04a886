//! `deploy/aws/muster.yaml`: it passes cfn-lint with no finding, it is created in moto, and the
//! backend then discovers the stack's group and instances; its IAM policy grants exactly the
//! actions the backend calls; the `muster.toml` its user data writes passes `muster config check`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use muster::{Discovery, FormationConfig, NodeName};
use muster_backend_aws::AwsBackend;
use muster_tests::aws::{FakeImds, FaultProxy, Moto, Setup, python, venv_bin};
use muster_tests::{node_exe, text};

fn template() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/aws/muster.yaml")
}

#[test]
fn the_template_passes_cfn_lint_and_a_broken_one_does_not() {
    let lint = |path: &Path| {
        Command::new(venv_bin("cfn-lint"))
            .arg(path)
            .output()
            .expect("cfn-lint runs")
    };
    let out = lint(&template());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "cfn-lint found:\n{stdout}{stderr}");
    // The linter really reads it: a reference to a parameter that does not exist is an error.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.yaml");
    let t = std::fs::read_to_string(template()).unwrap();
    std::fs::write(&broken, t.replace("VpcId: !Ref VpcId", "VpcId: !Ref NoSuchVpc")).unwrap();
    let out = lint(&broken);
    assert!(!out.status.success(), "cfn-lint must reject a dangling !Ref");
    assert!(text(&out).0.contains("NoSuchVpc"), "{}", text(&out).0);
}

/// The `ec2:`, `autoscaling:` and `ssm:` actions the template's policy grants.
fn granted() -> BTreeSet<String> {
    let t = std::fs::read_to_string(template()).unwrap();
    t.lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .filter(|a| ["ec2:", "autoscaling:", "ssm:"].iter().any(|p| a.starts_with(p)))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_is_created_in_moto_and_the_backend_finds_its_group() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.url).await;
    let out = python(
        &moto.url,
        &format!(
            "import runpy, sys; sys.argv = ['aws_stack.py', {:?}, 'prod']; runpy.run_path({:?})",
            template().display().to_string(),
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("src/aws_stack.py")
                .display()
                .to_string()
        ),
    );
    let stack: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(stack["status"], "CREATE_COMPLETE", "{stack}");
    let group = stack["outputs"]["AutoScalingGroupName"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(group, "prod-muster");
    let setup = Setup::new(&moto.url).await;
    let ids = setup.members(&group).await;
    assert_eq!(ids.len(), 3, "desired capacity 3");
    let ips = setup.private_ips(&ids).await;
    let imds = FakeImds::start(&ids[0], &ips[0]).await;
    let me: NodeName = format!("muster@{}:4370", ips[0]).parse().unwrap();
    // The backend as the user data configures it, pointed at moto through the proxy.
    let text = format!(
        "[cluster_formation]\npeer_discovery_backend = \"aws\"\n[cluster_formation.aws]\n\
         use_autoscaling_group = true\nfencing = true\nendpoint_url = \"{}\"\nimds_endpoint = \"{}\"\n\
         startup_jitter = \"0s\"\n",
        proxy.url, imds.url
    );
    let b = AwsBackend::from_config(&FormationConfig::from_toml(&text).unwrap(), &me).unwrap();
    let l = b.list().await.unwrap();
    let mut want: Vec<String> = ips.iter().map(|ip| format!("muster@{ip}:4370")).collect();
    want.sort();
    assert_eq!(l.nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>(), want);
    assert_eq!(l.expected_size, Some(3));
    let id = muster::ClusterId("c-stack".into());
    b.fencing().unwrap().claim(&id, None).await.unwrap();
    let param = stack["outputs"]["ClusterIdParameter"].as_str().unwrap();
    let stored = setup.ssm.get_parameter().name(param).send().await.unwrap();
    assert_eq!(
        stored.parameter().and_then(|p| p.value()),
        Some("c-stack"),
        "the claim lands in the parameter the stack's policy allows"
    );
    // Every API action the backend called is granted by the template's policy, and nothing more.
    let called: BTreeSet<String> = proxy.log().into_iter().collect();
    let granted = granted();
    assert!(
        called.is_subset(&granted),
        "called {called:?}, granted {granted:?}"
    );
    let cookie_read = BTreeSet::from(["ssm:GetParameter".to_string()]);
    let unused: Vec<&String> = granted
        .iter()
        .filter(|a| !called.contains(*a) && !cookie_read.contains(*a))
        .collect();
    assert!(unused.is_empty(), "granted but never called: {unused:?}");
}

#[test]
fn the_user_data_config_passes_config_check() {
    let t = std::fs::read_to_string(template()).unwrap();
    let start = t
        .find("cat > /etc/muster/muster.toml <<EOF\n")
        .expect("the user data writes muster.toml");
    let body = &t[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    let end = body.find("\n              EOF").expect("the heredoc ends");
    let toml: String = body[..end]
        .lines()
        .map(|l| l.strip_prefix("              ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("$IP", "10.0.1.4")
        .replace("${AWS::StackName}", "prod");
    let dir = tempfile::tempdir().unwrap();
    let cookie = dir.path().join("cookie");
    std::fs::write(&cookie, "0123456789abcdefGHIJ").unwrap();
    std::fs::set_permissions(&cookie, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let file = dir.path().join("muster.toml");
    std::fs::write(
        &file,
        toml.replace("/etc/muster/cookie", &cookie.display().to_string())
            .replace("/var/lib/muster", &dir.path().join("data").display().to_string()),
    )
    .unwrap();
    let out = Command::new(node_exe!())
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "config check failed:\n{stderr}\n{toml}");
    assert!(stdout.contains("aws"), "{stdout}");
    assert!(stdout.contains("muster@10.0.1.4:4370"), "{stdout}");
}
