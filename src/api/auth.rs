//! API keys: SHA-256 hashes compared in constant time; first-start key generation.
//!
//! Keys from `--api-key` are hashed in memory. With none given, the key file
//! `<data-dir>/api-keys.sha256` (one hex SHA-256 per line, mode 0600) is used; if it does not
//! exist yet, a key `editd_<64 hex>` is generated, only its hash is written, and the key is
//! returned once for the caller to print.

use std::path::Path;

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// File name of the stored key hashes under the data dir.
pub const KEY_FILE: &str = "api-keys.sha256";

/// The accepted keys, as hashes.
#[derive(Clone)]
pub struct KeySet {
    hashes: Vec<[u8; 32]>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeySet({} keys)", self.hashes.len())
    }
}

fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Writes a secret file readable only by its owner (atomically).
pub(crate) fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    crate::image_io::write_atomic(path, contents.as_bytes())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

impl KeySet {
    /// Keys given on the command line, or the stored hashes, or a fresh generated key
    /// (returned as the second value, to be printed once).
    pub fn load(keys: &[String], data_dir: &Path) -> std::io::Result<(KeySet, Option<String>)> {
        if !keys.is_empty() {
            return Ok((
                KeySet {
                    hashes: keys.iter().map(|k| hash(k)).collect(),
                },
                None,
            ));
        }
        let path = data_dir.join(KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(s) => {
                let hashes: Vec<[u8; 32]> = s.lines().filter_map(|l| unhex32(l.trim())).collect();
                if hashes.is_empty() {
                    return Err(std::io::Error::other(format!(
                        "{} holds no key hashes; delete it to generate a new key",
                        path.display()
                    )));
                }
                Ok((KeySet { hashes }, None))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut raw = [0u8; 32];
                rand::rng().fill_bytes(&mut raw);
                let key = format!("editd_{}", hex(&raw));
                write_private(&path, &format!("{}\n", hex(&hash(&key))))?;
                Ok((
                    KeySet {
                        hashes: vec![hash(&key)],
                    },
                    Some(key),
                ))
            }
            Err(e) => Err(e),
        }
    }

    /// True if the `Authorization` header value carries an accepted key. Every stored hash is
    /// compared (constant time each), so timing says nothing about which key nearly matched.
    pub fn verify_header(&self, value: Option<&str>) -> bool {
        let Some(v) = value else { return false };
        let Some((scheme, key)) = v.trim().split_once(' ') else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return false;
        }
        let h = hash(key.trim());
        let mut ok = subtle::Choice::from(0u8);
        for stored in &self.hashes {
            ok |= stored.ct_eq(&h);
        }
        ok.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_is_stored_as_hash_only() {
        let dir = tempfile::tempdir().unwrap();
        let (ks, key) = KeySet::load(&[], dir.path()).unwrap();
        let key = key.unwrap();
        assert!(key.starts_with("editd_") && crate::config::valid_api_key(&key));
        let stored = std::fs::read_to_string(dir.path().join(KEY_FILE)).unwrap();
        assert!(!stored.contains(&key));
        assert!(ks.verify_header(Some(&format!("Bearer {key}"))));
        let (again, none) = KeySet::load(&[], dir.path()).unwrap();
        assert!(none.is_none());
        assert!(again.verify_header(Some(&format!("bearer {key}"))));
        assert!(!again.verify_header(Some("Bearer editd_wrong")));
        assert!(!again.verify_header(Some(&key)));
    }
}
