//! Fuzz `parse_data_uri`: never panics; accepted results are image/* and within the cap.
#![no_main]

use editd::image_io::parse_data_uri;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let cap = 4096;
    for uri in [s.to_string(), format!("data:image/png;base64,{s}")] {
        if let Ok((mime, bytes)) = parse_data_uri(&uri, cap) {
            assert!(mime.starts_with("image/"));
            assert!(bytes.len() <= cap);
        }
    }
});
