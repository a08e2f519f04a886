//! Optional mutual TLS under the peer channel, with real node processes: a cluster forms over
//! TLS; a node with a certificate from another CA, a node whose certificate names another host,
//! and a client without TLS are all refused (and logged), while the cluster keeps serving.

use std::process::Command;
use std::time::Duration;

use muster_node::client::{Credentials, call};
use muster_node::cookie::Cookie;
use muster_node::proto::{Request, Response};
use muster_node::tls::{PeerTls, TlsSection};
use muster_test_support::certs::{ca, leaf, node_ext};
use muster_tests::{Layout, local_cluster_of, node_exe, relist, text};

fn section(dir: &std::path::Path, leaf: &str) -> TlsSection {
    TlsSection {
        cert: dir.join(format!("{leaf}.crt")),
        key: dir.join(format!("{leaf}.key")),
        ca: dir.join("ca.crt"),
    }
}

fn table(s: &TlsSection) -> String {
    format!(
        "\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
        s.cert.display(),
        s.key.display(),
        s.ca.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_forms_the_cluster_and_refuses_untrusted_misnamed_or_missing_certificates() {
    let pki = tempfile::tempdir().unwrap();
    let d = pki.path();
    ca(d, "ca");
    ca(d, "other-ca");
    leaf(d, "node", "ca", &node_ext("IP:127.0.0.1"));
    leaf(d, "rogue", "other-ca", &node_ext("IP:127.0.0.1"));
    leaf(d, "elsewhere", "ca", &node_ext("IP:127.0.0.9"));
    let good = section(d, "node");
    let layout = Layout {
        nodes: 5,
        extra: table(&good),
        ..Layout::default()
    };
    let (_dir, mut c) = local_cluster_of(&node_exe!(), &layout);
    for i in 0..3 {
        relist(&c, i, &[0, 1, 2]);
    }
    // Node 4 has a certificate from another CA; node 5 one from the right CA for another host.
    for (i, bad) in [(3, "rogue"), (4, "elsewhere")] {
        let cfg = std::fs::read_to_string(&c.nodes[i].config).unwrap();
        let cfg = cfg.replace(&table(&good), &table(&section(d, bad)));
        std::fs::write(&c.nodes[i].config, cfg).unwrap();
    }
    c.set_tls(Some(PeerTls::load(&good).unwrap()));
    for i in 0..3 {
        c.start(i).unwrap();
    }
    c.wait_members(&[0, 1, 2], 3, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", c.log_tail(0, 20)));

    // The CLI reads [tls] from the node's config.
    let out = Command::new(&c.exe)
        .args(["ctl", "--config"])
        .arg(&c.nodes[0].config)
        .args(["cluster-status"])
        .env_remove("MUSTER_COOKIE")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "ctl over TLS: {stdout}{stderr}");

    // A client with the right cookie but no TLS is refused, and the refusal is logged.
    let cookie = Cookie::load(Some(&c.cookie_file)).unwrap();
    let plain = Credentials {
        cookie,
        cluster_name: "local".into(),
        node: None,
        tls: None,
    };
    let r = call(&plain, &c.nodes[0].name, &Request::Ping, Duration::from_secs(5)).await;
    let refused = r.expect_err("a plaintext channel must not be served when TLS is on");
    assert!(
        refused.is_auth(),
        "the plaintext client is told it was refused, not that the connection broke: {refused:?}"
    );

    c.start(3).unwrap();
    c.start(4).unwrap();
    // Both refusals are logged once the newcomers tried; wait for them rather than guess a time.
    let members_logs = || -> String {
        (0..3)
            .map(|i| std::fs::read_to_string(&c.nodes[i].log).unwrap())
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        let logs = members_logs();
        let rogue = std::fs::read_to_string(&c.nodes[3].log).unwrap();
        if logs.contains("invalid peer certificate")
            && logs.contains("its certificate is not valid for")
            && rogue.contains("refused this node's certificate")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..3 {
        let s = c.status(i).await.expect("members keep serving");
        assert_eq!(s.members.len(), 3, "nobody got in: {s:?}");
    }
    let logs = members_logs();
    assert!(logs.contains("TLS refused the connection"), "{logs}");
    assert!(
        logs.contains("its certificate is not valid for 127.0.0.1"),
        "a CA-signed certificate for another host cannot claim this host's names:\n{logs}"
    );
    let rogue = std::fs::read_to_string(&c.nodes[3].log).unwrap();
    assert!(
        rogue.contains("TLS: the peer refused this node's certificate"),
        "the rogue node says why it cannot reach anyone:\n{rogue}"
    );
    assert!(
        !matches!(
            call(&plain, &c.nodes[3].name, &Request::Ping, Duration::from_secs(2)).await,
            Ok(Response::Pong { .. })
        ),
        "the rogue node does not talk plaintext either"
    );
    if std::env::var_os("MUSTER_TEST_SHOW_LOGS").is_some() {
        eprintln!("{logs}\n--- rogue\n{rogue}");
    }
    c.stop_all(Duration::from_secs(5)).await;
}

#[test]
fn tls_files_that_are_missing_or_wrong_are_named() {
    let pki = tempfile::tempdir().unwrap();
    let d = pki.path();
    let missing = section(d, "absent");
    let e = PeerTls::load(&missing).unwrap_err().to_string();
    assert!(e.starts_with("tls.cert = ") && e.contains("absent.crt"), "{e}");
    std::fs::write(d.join("junk.crt"), "not pem").unwrap();
    std::fs::write(d.join("junk.key"), "not pem").unwrap();
    let e = PeerTls::load(&section(d, "junk")).unwrap_err().to_string();
    assert!(e.contains("tls.cert") && e.contains("no PEM certificate"), "{e}");
    ca(d, "ca");
    leaf(d, "a", "ca", &node_ext("IP:127.0.0.1"));
    leaf(d, "b", "ca", &node_ext("IP:127.0.0.1"));
    let mut mixed = section(d, "a");
    mixed.key = d.join("b.key");
    let e = PeerTls::load(&mixed).unwrap_err().to_string();
    assert!(
        e.starts_with("tls:"),
        "a key that does not match the certificate: {e}"
    );
    // A private key that group or others can read is refused, naming the file and the fix.
    use std::os::unix::fs::PermissionsExt;
    let key = d.join("a.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = PeerTls::load(&section(d, "a")).unwrap_err().to_string();
    assert!(
        e.starts_with("tls.key = ") && e.contains("mode 644") && e.contains("chmod 600"),
        "{e}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    PeerTls::load(&section(d, "a")).expect("a private key readable by its owner only loads");
}
