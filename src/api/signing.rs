//! Signed, expiring URLs (outputs, asset uploads and downloads) that need no `Authorization`.
//!
//! `signature = hex(HMAC-SHA256(secret, "{METHOD}\n{path}\n{expires}"))`, with `expires` in unix
//! seconds; the query is `?expires=…&signature=…`. The 32-byte secret lives in
//! `<data-dir>/url-signing.key` (mode 0600), created on first start, so URLs survive restarts.

use std::path::Path;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use super::auth::{hex, write_private};

const SECRET_FILE: &str = "url-signing.key";

/// Signs and verifies URLs.
#[derive(Clone)]
pub struct UrlSigner {
    secret: Vec<u8>,
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UrlSigner")
    }
}

impl UrlSigner {
    /// Loads the secret from the data dir, creating it on first use.
    pub fn load(data_dir: &Path) -> std::io::Result<Self> {
        let path = data_dir.join(SECRET_FILE);
        match std::fs::read_to_string(&path) {
            Ok(s) if s.trim().len() >= 64 => Ok(UrlSigner {
                secret: s.trim().as_bytes().to_vec(),
            }),
            Ok(_) => Err(std::io::Error::other(format!(
                "{} is too short; delete it to regenerate",
                path.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut raw = [0u8; 32];
                rand::rng().fill_bytes(&mut raw);
                let s = hex(&raw);
                write_private(&path, &format!("{s}\n"))?;
                Ok(UrlSigner {
                    secret: s.into_bytes(),
                })
            }
            Err(e) => Err(e),
        }
    }

    fn mac(&self, method: &str, path: &str, expires: u64) -> Hmac<Sha256> {
        let mut m =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        m.update(format!("{method}\n{path}\n{expires}").as_bytes());
        m
    }

    /// `path?expires=…&signature=…`.
    pub fn sign(&self, method: &str, path: &str, expires: u64) -> String {
        let sig = hex(&self.mac(method, path, expires).finalize().into_bytes());
        format!("{path}?expires={expires}&signature={sig}")
    }

    /// Checks the signature (constant time) and that `expires` is not in the past.
    pub fn verify(
        &self,
        method: &str,
        path: &str,
        expires: u64,
        signature: &str,
        now: u64,
    ) -> bool {
        if expires < now {
            return false;
        }
        let Some(sig) = unhex(signature) else {
            return false;
        };
        self.mac(method, path, expires).verify_slice(&sig).is_ok()
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_tamper() {
        let dir = tempfile::tempdir().unwrap();
        let s = UrlSigner::load(dir.path()).unwrap();
        let url = s.sign("GET", "/v1/files/a/0.png", 100);
        let sig = url.rsplit_once("signature=").unwrap().1;
        assert!(s.verify("GET", "/v1/files/a/0.png", 100, sig, 50));
        assert!(
            !s.verify("GET", "/v1/files/a/0.png", 100, sig, 101),
            "expired"
        );
        assert!(
            !s.verify("GET", "/v1/files/a/1.png", 100, sig, 50),
            "other path"
        );
        assert!(
            !s.verify("PUT", "/v1/files/a/0.png", 100, sig, 50),
            "other method"
        );
        assert!(
            !s.verify("GET", "/v1/files/a/0.png", 101, sig, 50),
            "other expiry"
        );
        let again = UrlSigner::load(dir.path()).unwrap();
        assert!(
            again.verify("GET", "/v1/files/a/0.png", 100, sig, 50),
            "secret persists"
        );
    }
}
