//! Test certificates made with the openssl CLI (Debian's `openssl`, installed by scripts/test.sh):
//! CAs and leaves signed by them, as `<name>.crt` / `<name>.key` in a directory.

use std::path::Path;
use std::process::Command;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl is needed for the TLS tests ({e}); apt-get install -y openssl"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA `<name>.crt` / `<name>.key`.
pub fn ca(dir: &Path, name: &str) {
    let (subj, key, crt) = (
        format!("/CN={name}"),
        format!("{name}.key"),
        format!("{name}.crt"),
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &subj,
            "-keyout",
            &key,
            "-out",
            &crt,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A leaf `<name>.crt` / `<name>.key` signed by the CA `<ca>`, with the extensions `ext`
/// (openssl extfile syntax, e.g. `subjectAltName=IP:127.0.0.1`).
pub fn leaf(dir: &Path, name: &str, ca: &str, ext: &str) {
    let (subj, key, csr, crt, extfile) = (
        format!("/CN={name}"),
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
        format!("{name}.ext"),
    );
    openssl(
        dir,
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", &subj, "-keyout", &key, "-out", &csr,
        ],
    );
    std::fs::write(dir.join(&extfile), ext).expect("write the extension file");
    let (ca_crt, ca_key) = (format!("{ca}.crt"), format!("{ca}.key"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &crt,
            "-extfile",
            &extfile,
        ],
    );
}

/// The extensions of a node certificate for `san` (e.g. `IP:127.0.0.1`), good for both ends of
/// a peer connection.
pub fn node_ext(san: &str) -> String {
    format!("basicConstraints=CA:FALSE\nsubjectAltName={san}\nextendedKeyUsage=serverAuth,clientAuth\n")
}
