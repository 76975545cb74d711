//! §8 items 17–18: image-rs's fuzz/regression files (tests/image_io_corpus/) decode or give a
//! typed error — never a crash — and formats outside PNG/JPEG/WebP are refused by magic bytes.

use std::path::Path;

use editd::image_io::{decode_image, decode_mask, sniff_format, DecodeLimits};

#[test]
fn regression_corpus_decodes_or_fails_cleanly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/image_io_corpus");
    let limits = DecodeLimits::default();
    let (mut ok, mut refused, mut total) = (0, 0, 0);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.ends_with(".md") {
            continue;
        }
        total += 1;
        let bytes = std::fs::read(&path).unwrap();
        let ours =
            name.starts_with("png_") || name.starts_with("jpg_") || name.starts_with("webp_");
        match decode_image(&bytes, &limits) {
            Ok(img) => {
                assert!(ours, "{name} decoded but is not PNG/JPEG/WebP");
                assert!(img.width() <= limits.max_side && img.height() <= limits.max_side);
                ok += 1;
            }
            Err(e) => {
                if ours {
                    assert!(
                        ["INVALID_IMAGE", "IMAGE_TOO_LARGE", "UNSUPPORTED_FORMAT"]
                            .contains(&e.code()),
                        "{name}: {e}"
                    );
                } else {
                    assert_eq!(e.code(), "UNSUPPORTED_FORMAT", "{name}: {e}");
                    assert!(sniff_format(&bytes).is_none(), "{name}");
                }
                eprintln!("{name}: {} — {e}", e.code());
                refused += 1;
            }
        }
        let _ = decode_mask(&bytes, &limits, (1, 1));
    }
    eprintln!("corpus: {total} files, {ok} decoded, {refused} refused with a typed error");
    assert!(total >= 25, "corpus missing? {total} files");
}
