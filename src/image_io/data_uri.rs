//! Parsing `data:` URIs carrying images: `data:image/<subtype>[;params];base64,<payload>`.
//!
//! Rules (WHATWG "data: URL processor" + "forgiving-base64 decode", slightly more lenient):
//! - scheme `data:` case-insensitive; leading/trailing ASCII whitespace ignored;
//! - the media type must be `image/*` (lower-cased on return; parameters such as `charset` or
//!   `name` are dropped); the `;base64` marker is required (percent-encoded raw bytes are refused);
//! - the payload is percent-decoded, ASCII whitespace removed; both the standard (`+/`) and the
//!   URL-safe (`-_`) alphabets are accepted, padding is optional, non-zero trailing bits are
//!   tolerated (as browsers do);
//! - the **encoded** length is checked before anything is decoded: the raw payload may be at
//!   most 3× the base64 size of `max_bytes` (room for whitespace and percent-escapes), and the
//!   significant base64 characters at most `4·⌈max_bytes/3⌉`; the decoded length is checked
//!   against `max_bytes` after.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;

use super::error::ImageIoError;

const FORGIVING: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

fn err(reason: impl Into<String>) -> ImageIoError {
    ImageIoError::InvalidDataUri {
        input: "data URI".into(),
        reason: reason.into(),
    }
}

/// Base64 characters needed for `max_bytes` bytes (padded).
fn max_b64_len(max_bytes: usize) -> usize {
    max_bytes.div_ceil(3).saturating_mul(4)
}

fn too_large(chars: usize, limit: usize, max_bytes: usize) -> ImageIoError {
    ImageIoError::TooLarge {
        input: "data URI".into(),
        reason: format!(
            "encoded payload of {chars}+ chars exceeds the {limit} char limit for {max_bytes} bytes"
        ),
    }
}

/// Parse a `data:` URI into `(mime, bytes)`; see the module docs for the exact rules.
pub fn parse_data_uri(uri: &str, max_bytes: usize) -> Result<(String, Vec<u8>), ImageIoError> {
    let uri = uri.trim_matches(|c: char| c.is_ascii_whitespace());
    let Some(prefix) = uri.get(..5) else {
        return Err(err("not a data: URI"));
    };
    if !prefix.eq_ignore_ascii_case("data:") {
        return Err(err("not a data: URI"));
    }
    let rest = &uri[5..];
    let Some(comma) = rest.find(',') else {
        return Err(err("missing ',' before the payload"));
    };
    let (header, payload) = (&rest[..comma], &rest[comma + 1..]);
    if header.len() > 256 {
        return Err(err("media type is too long"));
    }

    let mut parts = header
        .split(';')
        .map(|p| p.trim_matches(|c: char| c.is_ascii_whitespace()));
    let mime = parts.next().unwrap_or("").to_ascii_lowercase();
    let mut base64 = false;
    for p in parts {
        if p.eq_ignore_ascii_case("base64") {
            base64 = true;
        } else if base64 {
            // WHATWG: `;base64` must be the last parameter.
            return Err(err("';base64' must be the last parameter"));
        }
    }
    let Some((ty, sub)) = mime.split_once('/') else {
        return Err(err(format!("media type {mime:?} is not image/*")));
    };
    let token_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    if ty != "image" || !token_ok(sub) {
        return Err(err(format!("media type {mime:?} is not image/*")));
    }
    if !base64 {
        return Err(err(
            "only base64 payloads are accepted (';base64,' is missing)",
        ));
    }

    let b64_limit = max_b64_len(max_bytes);
    let raw_limit = b64_limit.saturating_mul(3).saturating_add(1024);
    if payload.len() > raw_limit {
        return Err(too_large(payload.len(), raw_limit, max_bytes));
    }

    // Percent-decode, drop ASCII whitespace, map URL-safe to standard, strip padding.
    let raw = payload.as_bytes();
    let mut clean = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if clean.len() > b64_limit {
            return Err(too_large(clean.len(), b64_limit, max_bytes));
        }
        let mut b = raw[i];
        if b == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            match (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    b = (h * 16 + l) as u8;
                    i += 2;
                }
                _ => return Err(err("bad percent-escape in the payload")),
            }
        }
        i += 1;
        match b {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => {}
            b'-' => clean.push(b'+'),
            b'_' => clean.push(b'/'),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'+' | b'/' | b'=' => clean.push(b),
            other => {
                return Err(err(format!("invalid base64 character {:?}", other as char)));
            }
        }
    }
    if clean.len() > b64_limit {
        return Err(too_large(clean.len(), b64_limit, max_bytes));
    }
    // Padding only at the end, at most two.
    let body_len = clean.iter().rposition(|&c| c != b'=').map_or(0, |p| p + 1);
    if clean.len() - body_len > 2 || clean[..body_len].contains(&b'=') {
        return Err(err("misplaced '=' padding"));
    }
    clean.truncate(body_len);
    if clean.is_empty() {
        return Err(err("empty payload"));
    }
    if clean.len() % 4 == 1 {
        return Err(err("truncated base64 payload"));
    }
    let bytes = FORGIVING
        .decode(&clean)
        .map_err(|e| err(format!("invalid base64: {e}")))?;
    if bytes.len() > max_bytes {
        return Err(ImageIoError::TooLarge {
            input: "data URI".into(),
            reason: format!(
                "{} decoded bytes exceed the {max_bytes} byte limit",
                bytes.len()
            ),
        });
    }
    Ok((mime, bytes))
}
