//! §8 item 15: a PNG declaring 100000×100000 is refused from its header, with small memory
//! growth. Alone in its binary so the process RSS/peak figures are not disturbed by other tests.

mod image_io_util;

use editd::image_io::{decode_image, decode_mask, probe_image, DecodeLimits};
use image_io_util::{build_png, rss_kib};

#[test]
fn png_declaring_100000x100000_is_refused_from_header_with_small_rss_growth() {
    // 100000x100000 RGB8 would be 30 GB of pixels; the file is a few hundred bytes.
    let rows: Vec<Vec<u8>> = (0..4).map(|_| vec![0u8; 300]).collect();
    let bomb = build_png(100_000, 100_000, 8, 2, &[], &rows);
    assert!(bomb.len() < 2048, "bomb file is {} bytes", bomb.len());
    let limits = DecodeLimits::default();

    let before = rss_kib();
    for _ in 0..20 {
        let e = decode_image(&bomb, &limits).unwrap_err();
        assert_eq!(e.code(), "IMAGE_TOO_LARGE", "{e}");
        assert!(e.to_string().contains("100000x100000"), "{e}");
        assert!(e.to_string().contains("8192 px"), "{e}");
        let e = decode_mask(&bomb, &limits, (100_000, 100_000)).unwrap_err();
        assert_eq!(e.code(), "IMAGE_TOO_LARGE", "{e}");
        let e = probe_image(&bomb, &limits).unwrap_err();
        assert_eq!(e.code(), "IMAGE_TOO_LARGE", "{e}");
    }
    let after = rss_kib();

    // Even with limits wide open on side length, the pixel cap and decoder budget refuse it.
    let wide = DecodeLimits {
        max_side: u32::MAX,
        ..DecodeLimits::default()
    };
    let e = decode_image(&bomb, &wide).unwrap_err();
    assert_eq!(e.code(), "IMAGE_TOO_LARGE", "{e}");
    let after_wide = rss_kib();

    if let (Some((rss0, hwm0)), Some((rss1, hwm1)), Some((rss2, hwm2))) =
        (before, after, after_wide)
    {
        let growth = rss1.saturating_sub(rss0);
        let peak_growth = hwm2.saturating_sub(hwm0);
        eprintln!(
            "bomb: RSS {rss0} KiB -> {rss1} KiB (growth {growth} KiB), peak {hwm0} -> {hwm2} KiB \
             (peak growth {peak_growth} KiB); after wide-limits attempt RSS {rss2} KiB"
        );
        assert!(growth < 50 * 1024, "RSS grew by {growth} KiB");
        assert!(
            peak_growth < 50 * 1024,
            "peak RSS grew by {peak_growth} KiB"
        );
        let _ = hwm1;
    }
}
