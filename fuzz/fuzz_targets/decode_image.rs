//! Fuzz `decode_image` with production limits: any bytes → Ok or a typed error, never a crash,
//! never an allocation beyond the decoder budget (run with -rss_limit_mb=2048).
#![no_main]

use editd::image_io::{decode_image, probe_image, DecodeLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits::default();
    let probed = probe_image(data, &limits);
    match decode_image(data, &limits) {
        Ok(img) => {
            let info = probed.expect("probe must accept what decode accepts");
            assert_eq!((img.width(), img.height()), (info.width, info.height));
            assert!(img.width() <= limits.max_side && img.height() <= limits.max_side);
        }
        Err(e) => {
            let _ = e.code();
            let _ = e.to_string();
        }
    }
});
