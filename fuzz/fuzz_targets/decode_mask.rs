//! Fuzz `decode_mask`: the first two bytes pick the expected size, the rest is the mask file.
#![no_main]

use editd::image_io::{decode_mask, DecodeLimits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let expected = (u32::from(data[0]) + 1, u32::from(data[1]) + 1);
    if let Ok(m) = decode_mask(&data[2..], &DecodeLimits::default(), expected) {
        assert_eq!(m.dimensions(), expected);
        assert!(m.pixels().any(|p| p.0[0] >= 128));
    }
});
