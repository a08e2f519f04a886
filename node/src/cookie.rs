//! The shared cookie: read from a file that only its owner may read, or from `MUSTER_COOKIE`.
//! The value is never logged or printed; `Debug` shows `Cookie(<redacted>)`.

use std::fmt;
use std::path::Path;
use std::sync::Mutex;

/// The shared secret every node and the CLI authenticate with.
#[derive(Clone, PartialEq, Eq)]
pub struct Cookie(String);

impl fmt::Debug for Cookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cookie(<redacted>)")
    }
}

/// Why no cookie could be had. Messages say how to fix it and never include the value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CookieError {
    /// The file could not be read.
    #[error("cannot read cookie file {path}: {reason}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Group or others may read or write the file.
    #[error(
        "cookie file {path} is accessible by group or others (mode {mode:o}); \
         run: chmod 600 {path}"
    )]
    Permissions {
        /// The file.
        path: String,
        /// Its mode bits.
        mode: u32,
    },
    /// The value is empty, too long, or has characters that are not printable ASCII.
    #[error("cookie from {source_name} is invalid: {reason} (it must be 16-255 printable ASCII characters)")]
    Invalid {
        /// Where it came from.
        source_name: String,
        /// What is wrong.
        reason: String,
    },
    /// Too short or too uniform to resist guessing: the cookie keys the channel's encryption, and
    /// anyone who records one handshake can try candidate cookies against it offline.
    #[error(
        "cookie from {source_name} is too weak ({length} characters, {distinct} different; at least \
         {MIN_LEN} characters with {MIN_DISTINCT} different ones are required); generate a strong one \
         with: muster cookie generate --file PATH"
    )]
    Weak {
        /// Where it came from.
        source_name: String,
        /// Its length.
        length: usize,
        /// How many different characters it has.
        distinct: usize,
    },
    /// The key could not be derived from the cookie (out of memory, most likely).
    #[error("cannot derive the channel key from the cookie: {reason}")]
    KeyDerivation {
        /// Why.
        reason: String,
    },
}

/// The shortest cookie accepted.
pub const MIN_LEN: usize = 16;
/// The fewest different characters a cookie must have.
pub const MIN_DISTINCT: usize = 8;

/// The permission bits of a secret file (a cookie, a private key) that group or others can
/// access, or `None` when only its owner can.
pub fn shared_mode(path: &Path) -> std::io::Result<Option<u32>> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
    Ok((mode & 0o077 != 0).then_some(mode))
}

impl Cookie {
    /// Validates a cookie value; `source_name` names where it came from for the error.
    pub fn parse(value: &str, source_name: &str) -> Result<Cookie, CookieError> {
        let v = value.trim_end_matches(['\n', '\r']);
        let invalid = |reason: &str| CookieError::Invalid {
            source_name: source_name.to_string(),
            reason: reason.to_string(),
        };
        if v.is_empty() {
            return Err(invalid("it is empty"));
        }
        if v.len() > 255 {
            return Err(invalid("it is longer than 255 characters"));
        }
        if !v.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
            return Err(invalid("it contains a character that is not printable ASCII"));
        }
        let distinct = v.bytes().collect::<std::collections::BTreeSet<u8>>().len();
        if v.len() < MIN_LEN || distinct < MIN_DISTINCT {
            return Err(CookieError::Weak {
                source_name: source_name.to_string(),
                length: v.len(),
                distinct,
            });
        }
        Ok(Cookie(v.to_string()))
    }

    /// Reads a cookie file, refusing files that group or others can access.
    pub fn from_file(path: &Path) -> Result<Cookie, CookieError> {
        let shown = path.display().to_string();
        let open = shared_mode(path).map_err(|e| CookieError::Unreadable {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        if let Some(mode) = open {
            return Err(CookieError::Permissions { path: shown, mode });
        }
        let text = std::fs::read_to_string(path).map_err(|e| CookieError::Unreadable {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        Cookie::parse(&text, &shown)
    }

    /// The cookie from `MUSTER_COOKIE` if set, else from `file`.
    pub fn load(file: Option<&Path>) -> Result<Cookie, CookieError> {
        if let Ok(v) = std::env::var("MUSTER_COOKIE") {
            return Cookie::parse(&v, "MUSTER_COOKIE");
        }
        Cookie::from_configured(file)
    }

    /// The cookie from `file`, the config's `cookie_file` (none configured is an error naming
    /// the key).
    pub fn from_configured(file: Option<&Path>) -> Result<Cookie, CookieError> {
        match file {
            Some(p) => Cookie::from_file(p),
            None => Err(CookieError::Unreadable {
                path: "(none)".into(),
                reason: "no cookie: set [node] cookie_file, pass --cookie-file, or set MUSTER_COOKIE".into(),
            }),
        }
    }

    /// A new random cookie: 48 hex digits (192 bits from the operating system).
    pub fn random() -> std::io::Result<Cookie> {
        crate::random::hex(24).map(Cookie)
    }

    /// The value, for `muster cookie generate` to print; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Writes a new random cookie to `path` with mode 0600 (never over an existing file).
    pub fn generate(path: &Path) -> std::io::Result<Cookie> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let value = Cookie::random()?.0;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(value.as_bytes())?;
        f.sync_all()?;
        Ok(Cookie(value))
    }

    /// The channel's key for clusters named `cluster_name`: Argon2id of the cookie, salted with
    /// the cluster name, so that a recorded handshake costs an attacker a memory-hard derivation
    /// per guessed cookie and per cluster. Derived once per process (per cookie and name).
    pub fn key(&self, cluster_name: &str) -> Result<[u8; 32], CookieError> {
        let id = self.memo_id(cluster_name);
        let mut keys = KEYS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, key)) = keys.iter().find(|(k, _)| *k == id) {
            return Ok(*key);
        }
        let key = derive(self.0.as_bytes(), cluster_name).map_err(|e| CookieError::KeyDerivation {
            reason: e.to_string(),
        })?;
        keys.push((id, key));
        Ok(key)
    }

    /// Whether the key for `cluster_name` was derived already.
    pub fn has_key(&self, cluster_name: &str) -> bool {
        let id = self.memo_id(cluster_name);
        let keys = KEYS.lock().unwrap_or_else(|p| p.into_inner());
        keys.iter().any(|(k, _)| *k == id)
    }

    fn memo_id(&self, cluster_name: &str) -> [u8; 32] {
        digest(&[
            b"muster cookie memo\0",
            self.0.as_bytes(),
            b"\0",
            cluster_name.as_bytes(),
        ])
    }
}

/// Keys derived in this process, by a digest of the cookie and the cluster name.
static KEYS: Mutex<Vec<([u8; 32], [u8; 32])>> = Mutex::new(Vec::new());

/// Argon2id's cost: 7 MiB and five passes (one of the parameter sets OWASP recommends), tens of
/// milliseconds once per process, freed right after.
const KDF_MEMORY_KIB: u32 = 7 * 1024;
const KDF_PASSES: u32 = 5;

fn digest(parts: &[&[u8]]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn derive(cookie: &[u8], cluster_name: &str) -> Result<[u8; 32], argon2::Error> {
    // Argon2 wants a salt of at least 8 bytes; a cluster name may be shorter.
    let salt = digest(&[b"muster cookie salt, protocol 4\0", cluster_name.as_bytes()]);
    let params = argon2::Params::new(KDF_MEMORY_KIB, KDF_PASSES, 1, Some(32))?;
    let kdf = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = [0u8; 32];
    kdf.hash_password_into(cookie, &salt, &mut key)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const GOOD: &str = "0123456789abcdef0123";

    #[test]
    fn validates_length_and_characters() {
        assert!(Cookie::parse(&format!("{GOOD}\n"), "t").is_ok());
        assert!(Cookie::parse(&format!("{GOOD}{}", "x".repeat(235)), "t").is_ok());
        let long = format!("{GOOD}{}", "x".repeat(236));
        for bad in [
            "",
            "\n",
            &long,
            "tab\there0123456789abcdef",
            "naïve0123456789abcdef",
        ] {
            let e = Cookie::parse(bad, "t").unwrap_err().to_string();
            assert!(e.contains("16-255 printable ASCII"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn refuses_short_or_uniform_cookies_with_the_command_that_makes_a_good_one() {
        for weak in [
            "secret",
            "abcdefghijklmno",
            "abababababababababababab",
            &"x".repeat(64),
        ] {
            let e = Cookie::parse(weak, "MUSTER_COOKIE").unwrap_err().to_string();
            assert!(
                e.contains("too weak") && e.contains("muster cookie generate"),
                "{e}"
            );
            assert!(!e.contains(weak), "the cookie must never appear in messages: {e}");
        }
        let fresh = Cookie::random().unwrap();
        assert!(
            Cookie::parse(fresh.expose(), "t").is_ok(),
            "a generated cookie is strong"
        );
    }

    #[test]
    fn refuses_group_or_world_readable_files_and_says_how_to_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cookie");
        std::fs::write(&path, GOOD).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Cookie::from_file(&path).unwrap_err().to_string();
        assert!(e.contains("mode 644"), "{e}");
        assert!(e.contains(&format!("chmod 600 {}", path.display())), "{e}");
        assert!(!e.contains(GOOD), "the cookie must never appear in messages");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Cookie::from_file(&path).is_ok());
    }

    #[test]
    fn debug_never_shows_the_value() {
        let c = Cookie::parse(GOOD, "t").unwrap();
        assert_eq!(format!("{c:?}"), "Cookie(<redacted>)");
    }

    #[test]
    fn generated_cookies_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let c = Cookie::generate(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(Cookie::from_file(&path).unwrap(), c);
    }
}
