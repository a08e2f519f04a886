//! `deploy/aws/muster.yaml`: it passes cfn-lint with no finding, it is created in moto, and the
//! backend then discovers the stack's group and instances; its IAM policy grants exactly the
//! actions the backend calls, the SSM ones on the cluster-id parameter and the cookie only, and
//! denies overwriting the cluster id; the load balancer forwards only /health/* and admits no
//! address range by default; the `muster.toml` its user data writes passes `muster config check`;
//! the unit it writes is hardened like deploy/home-lan/muster.service and gets the cookie from a
//! root-only file; the download is installed only when its SHA-256 matches.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use muster::{Discovery, FormationConfig, NodeName};
use muster_backend_aws::AwsBackend;
use muster_test_support::aws::{FakeImds, FaultProxy, Moto, Setup, python, venv_bin};
use muster_tests::{node_exe, text};

/// The binary's S3 object the stack test passes as MusterS3Object.
const S3_OBJECT: &str = "muster-builds/prod/muster";

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

/// A policy statement's `Action` or `Resource`: one string or a list.
fn strings(v: &serde_json::Value) -> Vec<String> {
    match v {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(a) => a.iter().map(|x| x.as_str().unwrap().to_string()).collect(),
        other => panic!("not a string or a list: {other}"),
    }
}

/// The statements of the node role's policies as the stack created them, with `effect`.
fn statements<'a>(stack: &'a serde_json::Value, effect: &str) -> Vec<&'a serde_json::Value> {
    stack["policies"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["Statement"].as_array().unwrap())
        .filter(|s| s["Effect"] == effect)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_is_created_in_moto_and_the_backend_finds_its_group() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(&moto.url).await;
    let out = python(
        &moto.url,
        &format!(
            "import runpy, sys; sys.argv = ['aws_stack.py', {:?}, 'prod', 'MusterS3Object={S3_OBJECT}', \
             'MusterSha256={}']; runpy.run_path({:?})",
            template().display().to_string(),
            "0".repeat(64),
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
    // Create-once: a second claim with another id is refused and the record stays.
    let other = b
        .fencing()
        .unwrap()
        .claim(&muster::ClusterId("c-other".into()), None)
        .await;
    assert!(
        matches!(&other, Err(muster::ClaimError::Taken(id)) if id.0 == "c-stack"),
        "{other:?}"
    );
    let stored = setup.ssm.get_parameter().name(param).send().await.unwrap();
    assert_eq!(stored.parameter().and_then(|p| p.value()), Some("c-stack"));
    // Every API action the backend called is granted by the template's policy, and nothing more.
    let called: BTreeSet<String> = proxy.log().into_iter().collect();
    let allow = statements(&stack, "Allow");
    let granted: BTreeSet<String> = allow.iter().flat_map(|s| strings(&s["Action"])).collect();
    assert!(
        called.is_subset(&granted),
        "called {called:?}, granted {granted:?}"
    );
    // The user data's own calls at boot: the cookie, and the binary from S3.
    let boot_reads = BTreeSet::from(["ssm:GetParameter".to_string(), "s3:GetObject".to_string()]);
    let unused: Vec<&String> = granted
        .iter()
        .filter(|a| !called.contains(*a) && !boot_reads.contains(*a))
        .collect();
    assert!(unused.is_empty(), "granted but never called: {unused:?}");
    // The SSM actions on exactly two parameters: the cluster id (read and created) and the
    // cookie (read).
    let arn_of = |name: &str| format!("arn:aws:ssm:us-east-1:123456789012:parameter{name}");
    let mut on_ssm: Vec<(String, String)> = allow
        .iter()
        .flat_map(|s| {
            let resources = strings(&s["Resource"]);
            strings(&s["Action"])
                .into_iter()
                .filter(|a| a.starts_with("ssm:"))
                .flat_map(move |a| {
                    resources
                        .iter()
                        .map(move |r| (a.clone(), r.clone()))
                        .collect::<Vec<_>>()
                })
        })
        .collect();
    on_ssm.sort();
    let mut want = vec![
        ("ssm:GetParameter".to_string(), arn_of(param)),
        ("ssm:PutParameter".to_string(), arn_of(param)),
        ("ssm:GetParameter".to_string(), arn_of("/muster/cookie")),
    ];
    want.sort();
    assert_eq!(on_ssm, want);
    // The binary in S3: that one object, read only.
    let on_s3: Vec<(String, String)> = allow
        .iter()
        .filter(|s| strings(&s["Action"]).iter().any(|a| a.starts_with("s3:")))
        .map(|s| (strings(&s["Action"]).join(","), strings(&s["Resource"]).join(",")))
        .collect();
    assert_eq!(
        on_s3,
        vec![("s3:GetObject".to_string(), format!("arn:aws:s3:::{S3_OBJECT}"))]
    );
    // Overwriting the cluster id is denied outright.
    let deny = statements(&stack, "Deny");
    assert!(
        deny.iter().any(|s| strings(&s["Action"]) == ["ssm:PutParameter"]
            && strings(&s["Resource"]) == [arn_of(param)]
            && s["Condition"]["StringEquals"]["ssm:Overwrite"] == "true"),
        "no Deny of ssm:PutParameter with ssm:Overwrite = true: {deny:?}"
    );
    // The load balancer: /health/* to the target group, 404 for everything else.
    let listener = &stack["listener"];
    assert_eq!(
        listener["default_actions"],
        serde_json::json!([{"Type": "fixed-response", "FixedResponseConfig": {
            "StatusCode": "404", "ContentType": "text/plain", "MessageBody": "not found"}}]),
    );
    let rules = listener["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(
        rules[0]["Conditions"],
        serde_json::json!([{"Field": "path-pattern", "PathPatternConfig": {"Values": ["/health/*"]}}])
    );
    assert_eq!(
        rules[0]["Actions"],
        serde_json::json!([{"Type": "forward", "TargetGroupArn": listener["target_group"]}])
    );
    // By default no address range reaches the load balancer: only the client security group.
    let ingress = stack["load_balancer_ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 1, "{ingress:?}");
    assert_eq!(ingress[0]["IpRanges"], serde_json::json!([]), "{ingress:?}");
    assert_eq!(ingress[0]["Ipv6Ranges"], serde_json::json!([]), "{ingress:?}");
    assert_eq!(
        ingress[0]["UserIdGroupPairs"].as_array().unwrap().len(),
        1,
        "{ingress:?}"
    );
    assert!(
        stack["outputs"]["ClientSecurityGroupId"]
            .as_str()
            .is_some_and(|g| ingress[0]["UserIdGroupPairs"][0]["GroupId"] == g),
        "{ingress:?}"
    );
    // The README's describe-target-health reads the target group from the outputs.
    assert!(
        stack["outputs"]["TargetGroupArn"]
            .as_str()
            .is_some_and(|arn| arn.contains(":targetgroup/")),
        "{}",
        stack["outputs"]
    );
}

/// The body of the user data's heredoc that starts with `opening` (the line after it), dedented.
fn heredoc(opening: &str) -> String {
    let t = std::fs::read_to_string(template()).unwrap();
    let start = t.find(opening).unwrap_or_else(|| panic!("no {opening:?}"));
    let body = &t[start..];
    let body = &body[body.find('\n').unwrap() + 1..];
    let end = body.find("\n              EOF").expect("the heredoc ends");
    body[..end]
        .lines()
        .map(|l| l.strip_prefix("              ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A unit's `[Service]` lines (no comments, no blank lines).
fn service_lines(unit: &str) -> Vec<String> {
    unit.lines()
        .map(str::trim)
        .skip_while(|l| *l != "[Service]")
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_user_data_unit_is_hardened_like_the_home_lan_unit_and_reads_a_root_only_cookie() {
    let unit = heredoc("cat > /etc/systemd/system/muster.service <<'EOF'\n");
    let aws = service_lines(&unit);
    let home = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/home-lan/muster.service"),
    )
    .unwrap();
    let missing: Vec<String> = service_lines(&home)
        .into_iter()
        .filter(|l| !aws.contains(l))
        .collect();
    assert!(missing.is_empty(), "the AWS unit lacks {missing:?}");
    for l in [
        "LimitNOFILE=65536",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "User=muster",
    ] {
        assert!(aws.iter().any(|a| a == l), "{l}");
    }
    // The cookie: the user data writes it root-only; the unit copies it, as root, for the node
    // into its runtime directory, which is where the config points.
    let t = std::fs::read_to_string(template()).unwrap();
    assert!(
        t.contains("(umask 077; aws ssm get-parameter"),
        "written with umask 077"
    );
    assert!(t.contains("chown root:root /etc/muster/cookie\n"));
    assert!(t.contains("chmod 0600 /etc/muster/cookie\n"));
    assert!(!t.contains("chown muster:muster /etc/muster/cookie"));
    let toml: toml::Table = toml::from_str(&heredoc("cat > /etc/muster/muster.toml <<EOF\n")).unwrap();
    let cookie_file = toml["node"]["cookie_file"].as_str().unwrap();
    assert!(
        aws.contains(&format!(
            "ExecStartPre=+/usr/bin/install -m 0400 -o muster -g muster /etc/muster/cookie {cookie_file}"
        )),
        "{aws:?}"
    );
    let runtime = Path::new(cookie_file).parent().unwrap();
    assert_eq!(runtime, Path::new("/run/muster"));
    assert!(aws.iter().any(|l| l == "RuntimeDirectory=muster"), "{aws:?}");
    assert!(aws.iter().any(|l| l == "RuntimeDirectoryMode=0700"), "{aws:?}");
}

#[test]
fn the_download_is_installed_only_when_its_sha256_matches() {
    let t = std::fs::read_to_string(template()).unwrap();
    // A download needs its checksum: the template refuses the URL without it.
    assert!(t.contains("RuleCondition: !Not [!Equals [!Ref MusterDownloadUrl, \"\"]]"));
    assert!(t.contains("- Assert: !Not [!Equals [!Ref MusterSha256, \"\"]]"));
    assert!(t.contains("RuleCondition: !Not [!Equals [!Ref MusterS3Object, \"\"]]"));
    assert!(t.contains(
        "if [ -n \"${S3}\" ]; then fetch_muster \"s3://${S3}\" \"${Sha256}\" /usr/local/bin/muster"
    ));
    assert!(t.contains(
        "elif [ -n \"${Url}\" ]; then fetch_muster \"${Url}\" \"${Sha256}\" /usr/local/bin/muster; fi"
    ));
    assert!(t.contains("s3://*) aws s3 cp --only-show-errors \"$1\" \"$tmp\""));
    // The user data's function, run with a file:// URL.
    let start = t.find("              fetch_muster() {\n").expect("fetch_muster");
    let end = start + t[start..].find("\n              }\n").unwrap() + "\n              }".len();
    let function: String = t[start..end]
        .lines()
        .map(|l| l.strip_prefix("              ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("muster-download");
    std::fs::write(&src, b"#!/bin/sh\necho muster\n").unwrap();
    let sum = {
        let out = Command::new("sha256sum").arg(&src).output().unwrap();
        text(&out).0.split_whitespace().next().unwrap().to_string()
    };
    let run = |hash: &str, dest: &Path| {
        Command::new("bash")
            .args(["-euo", "pipefail", "-c"])
            .arg(format!(
                "{function}\nfetch_muster \"file://{}\" \"{hash}\" \"{}\"\necho installed",
                src.display(),
                dest.display()
            ))
            .env("TMPDIR", dir.path())
            .output()
            .unwrap()
    };
    let good = dir.path().join("good");
    let out = run(&sum, &good);
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(std::fs::read(&good).unwrap(), std::fs::read(&src).unwrap());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&good).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let wrong = format!("{}0", &sum[..63]);
    for (hash, what) in [(wrong.as_str(), "a wrong checksum"), ("", "no checksum")] {
        let dest = dir.path().join("bad");
        let out = run(hash, &dest);
        let (stdout, stderr) = text(&out);
        assert!(!out.status.success(), "{what}: {stdout}");
        assert!(!stdout.contains("installed"), "{what}: the boot stops");
        assert!(stderr.contains("SHA-256 is not MusterSha256"), "{what}: {stderr}");
        assert!(!dest.exists(), "{what}: nothing installed");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("tmp."))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

#[test]
fn the_user_data_config_passes_config_check() {
    let toml: String = heredoc("cat > /etc/muster/muster.toml <<EOF\n")
        .replace("$IP", "10.0.1.4")
        .replace("${AWS::StackName}", "prod");
    let dir = tempfile::tempdir().unwrap();
    let cookie = dir.path().join("cookie");
    std::fs::write(&cookie, "0123456789abcdefGHIJ").unwrap();
    std::fs::set_permissions(&cookie, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let file = dir.path().join("muster.toml");
    std::fs::write(
        &file,
        toml.replace("/run/muster/cookie", &cookie.display().to_string())
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
