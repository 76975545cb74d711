//! Fuzz the URL classifier: never panics, and an accepted IP literal is always allowed by the
//! address check (the syntactic and address verdicts agree), never non-public by default.
#![no_main]

use std::net::SocketAddr;

use editd::image_io::{check_addr, check_url, classify_ip, FetchPolicy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let strict = FetchPolicy {
        allow_http: true,
        ..FetchPolicy::default()
    };
    for url in [
        s.to_string(),
        format!("http://{s}/"),
        format!("https://[{s}]/"),
    ] {
        if let Ok(c) = check_url(&url, &strict) {
            assert!(c.url.scheme() == "https" || c.url.scheme() == "http");
            if let Some(ip) = c.literal {
                assert!(
                    classify_ip(ip).is_public(),
                    "{url} accepted non-public {ip}"
                );
                assert!(check_addr(SocketAddr::new(ip, c.port), &strict).is_ok());
            }
        }
    }
});
