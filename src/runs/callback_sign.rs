//! Callback signing: `whsec_` secret generation, the Runflow `Runflow-Signature` (hex HMAC of the
//! raw body) and the Standard Webhooks `webhook-signature` (`v1,<base64>` over
//! `"{id}.{timestamp}.{body}"`), plus constant-time verifiers (used by tests and receivers).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// Prefix of every signing secret (Standard Webhooks convention).
pub const SECRET_PREFIX: &str = "whsec_";

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC takes any key length")
}

/// A new secret: `whsec_` + base64 of 32 random bytes.
pub fn generate_secret() -> String {
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    format!("{SECRET_PREFIX}{}", B64.encode(raw))
}

/// The Standard Webhooks key: the base64-decoded part after `whsec_` (the whole string's bytes
/// if it does not decode, so a malformed secret still signs deterministically).
pub fn standard_key(secret: &str) -> Vec<u8> {
    let tail = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    B64.decode(tail)
        .unwrap_or_else(|_| secret.as_bytes().to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// `Runflow-Signature`: lowercase hex HMAC-SHA256(key = the whole secret string, raw body).
pub fn runflow_signature(secret: &str, body: &[u8]) -> String {
    let mut m = mac(secret.as_bytes());
    m.update(body);
    hex(&m.finalize().into_bytes())
}

/// Constant-time check of a `Runflow-Signature` value.
#[cfg(test)]
pub fn verify_runflow(secret: &str, body: &[u8], header: &str) -> bool {
    let Some(sig) = unhex(header.trim()) else {
        return false;
    };
    let mut m = mac(secret.as_bytes());
    m.update(body);
    m.verify_slice(&sig).is_ok()
}

fn standard_mac(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut m = mac(&standard_key(secret));
    m.update(format!("{msg_id}.{timestamp}.").as_bytes());
    m.update(body);
    m
}

/// One Standard Webhooks signature: `v1,<base64 HMAC-SHA256(key, "{id}.{ts}.{body}")>`.
pub fn standard_signature(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let sig = standard_mac(secret, msg_id, timestamp, body)
        .finalize()
        .into_bytes();
    format!("v1,{}", B64.encode(sig))
}

/// The `webhook-signature` header: one `v1,…` per secret, space-separated.
pub fn standard_header(secrets: &[String], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| standard_signature(s, msg_id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// True if any `v1,` entry of a `webhook-signature` header verifies (constant time per entry).
#[cfg(test)]
pub fn verify_standard(
    secret: &str,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
    header: &str,
) -> bool {
    header.split(' ').any(|entry| {
        let Some(b64) = entry.strip_prefix("v1,") else {
            return false;
        };
        let Ok(sig) = B64.decode(b64) else {
            return false;
        };
        standard_mac(secret, msg_id, timestamp, body)
            .verify_slice(&sig)
            .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn secrets_have_the_standard_shape() {
        let s = generate_secret();
        assert!(s.starts_with("whsec_"));
        assert_eq!(standard_key(&s).len(), 32);
    }

    #[test]
    fn known_vector() {
        // Standard Webhooks reference vector (svix libraries' tests).
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            standard_signature(secret, id, 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    proptest! {
        #[test]
        fn sign_verify_round_trips_and_any_flip_fails(
            body in proptest::collection::vec(any::<u8>(), 0..512),
            raw in proptest::collection::vec(any::<u8>(), 24..64),
            ts in 0i64..4_000_000_000,
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let secret = format!("{SECRET_PREFIX}{}", B64.encode(&raw));
            let id = "msg_1";
            let rf = runflow_signature(&secret, &body);
            let sw = standard_header(std::slice::from_ref(&secret), id, ts, &body);
            prop_assert!(verify_runflow(&secret, &body, &rf));
            prop_assert!(verify_standard(&secret, id, ts, &body, &sw));
            if !body.is_empty() {
                let mut bad = body.clone();
                let i = flip.index(bad.len());
                bad[i] ^= 1 << bit;
                prop_assert!(!verify_runflow(&secret, &bad, &rf));
                prop_assert!(!verify_standard(&secret, id, ts, &bad, &sw));
            }
            let mut sig = rf.into_bytes();
            let i = flip.index(sig.len());
            sig[i] = if sig[i] == b'0' { b'1' } else { b'0' };
            prop_assert!(!verify_runflow(&secret, &body, std::str::from_utf8(&sig).unwrap()));
            prop_assert!(!verify_standard(&secret, id, ts + 1, &body, &sw));
        }
    }
}
