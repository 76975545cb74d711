//! Encoding outputs (no metadata carried over), `data:` URIs, atomic writes (§8 items 20, 22).

mod image_io_util;

use std::str::FromStr;

use base64::Engine;
use editd::image_io::{
    decode_image, encode_image, parse_data_uri, write_atomic, DecodeLimits, OutputFormat,
};
use image::{DynamicImage, ImageFormat};
use image_io_util::*;
use proptest::prelude::*;

#[test]
fn output_format_names() {
    for (s, f, ct, ext) in [
        ("png", OutputFormat::Png, "image/png", "png"),
        ("JPEG", OutputFormat::Jpeg, "image/jpeg", "jpeg"),
        ("jpg", OutputFormat::Jpeg, "image/jpeg", "jpeg"),
        ("webp", OutputFormat::Webp, "image/webp", "webp"),
    ] {
        let got = OutputFormat::from_str(s).unwrap();
        assert_eq!(got, f);
        assert_eq!(got.content_type(), ct);
        assert_eq!(got.extension(), ext);
    }
    assert!(OutputFormat::from_str("gif").is_err());
    assert!(OutputFormat::from_str("").is_err());
}

/// §8 item 20 (outputs): png/jpeg/webp round-trip and carry no EXIF/GPS from an input that had it.
#[test]
fn encode_round_trips_without_metadata() {
    let upright = gradient(40, 24);
    // An input carrying EXIF (orientation 6) in a JPEG: the output must not carry it.
    let stored = image::imageops::rotate270(&upright);
    let tagged = jpeg_with_orientation(
        &encode(&DynamicImage::ImageRgb8(stored), ImageFormat::Jpeg),
        6,
    );
    let decoded = decode_image(&tagged, &DecodeLimits::default()).unwrap();
    assert_eq!(decoded.dimensions(), (40, 24));
    let png_in = png_rgb_with_orientation(&upright, 1);
    let exact = decode_image(&png_in, &DecodeLimits::default()).unwrap();

    for fmt in [OutputFormat::Png, OutputFormat::Jpeg, OutputFormat::Webp] {
        for src in [&decoded, &exact] {
            let bytes = encode_image(src, fmt, None).unwrap();
            assert!(
                !contains(&bytes, b"Exif"),
                "{fmt}: output has an Exif block"
            );
            assert!(
                !contains(&bytes, b"eXIf"),
                "{fmt}: output has an eXIf chunk"
            );
            assert!(!contains(&bytes, b"GPS"), "{fmt}");
            let back = decode_image(&bytes, &DecodeLimits::default()).unwrap();
            assert_eq!(back.dimensions(), src.dimensions(), "{fmt}");
            match fmt {
                OutputFormat::Jpeg => {
                    let err: f64 = back
                        .as_raw()
                        .iter()
                        .zip(src.as_raw())
                        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
                        .sum::<f64>()
                        / src.as_raw().len() as f64;
                    assert!(err < 8.0, "jpeg mean abs error {err}");
                }
                _ => assert!(&back == src, "{fmt} is lossless"),
            }
        }
    }
    // JPEG quality from `compression`: lower quality → smaller file.
    let big = gradient(256, 256);
    let q95 = encode_image(&big, OutputFormat::Jpeg, Some(95)).unwrap();
    let q30 = encode_image(&big, OutputFormat::Jpeg, Some(30)).unwrap();
    assert!(
        q30.len() < q95.len(),
        "q30 {} >= q95 {}",
        q30.len(),
        q95.len()
    );
    assert!(encode_image(&big, OutputFormat::Jpeg, Some(0)).is_ok()); // clamped to 1
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// §8 item 22: `data:` edge cases.
#[test]
fn data_uri_edge_cases() {
    let png = encode(&DynamicImage::ImageRgb8(gradient(5, 5)), ImageFormat::Png);
    let max = 1 << 20;
    let ok = format!("data:image/png;base64,{}", b64(&png));
    let (mime, bytes) = parse_data_uri(&ok, max).unwrap();
    assert_eq!(
        (mime.as_str(), bytes.as_slice()),
        ("image/png", png.as_slice())
    );
    assert!(decode_image(&bytes, &DecodeLimits::default()).is_ok());

    // case-insensitive scheme/type/marker, params before ;base64, surrounding whitespace
    let variants = [
        format!("DATA:Image/PNG;BASE64,{}", b64(&png)),
        format!("  data:image/png;name=x.png;base64,{}\n", b64(&png)),
        format!("data:image/png ; base64,{}", b64(&png)),
        // MIME line breaks / spaces inside the payload
        format!(
            "data:image/png;base64,{}",
            b64(&png)
                .as_bytes()
                .chunks(10)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect::<Vec<_>>()
                .join("\r\n ")
        ),
        // unpadded
        format!("data:image/png;base64,{}", b64(&png).trim_end_matches('=')),
        // URL-safe alphabet
        format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&png)
        ),
        // percent-encoded characters
        format!(
            "data:image/png;base64,{}",
            b64(&png)
                .replace('+', "%2B")
                .replace('/', "%2f")
                .replace('=', "%3D")
        ),
    ];
    for v in &variants {
        let (mime, bytes) = parse_data_uri(v, max).unwrap_or_else(|e| panic!("{v:.60}: {e}"));
        assert_eq!(mime, "image/png");
        assert_eq!(bytes, png, "{v:.60}");
    }
    // Any image/* subtype parses (the bytes are sniffed later); the sniffer rules the format.
    let (mime, _) =
        parse_data_uri(&format!("data:image/tiff;base64,{}", b64(b"II*\0")), max).unwrap();
    assert_eq!(mime, "image/tiff");
    assert_eq!(
        decode_image(b"II*\0", &DecodeLimits::default())
            .unwrap_err()
            .code(),
        "UNSUPPORTED_FORMAT"
    );

    let bad: &[(&str, &str)] = &[
        ("data:text/plain;base64,aGVsbG8=", "INVALID_DATA_URI"),
        (
            "data:application/octet-stream;base64,aGVsbG8=",
            "INVALID_DATA_URI",
        ),
        ("data:;base64,aGVsbG8=", "INVALID_DATA_URI"),
        ("data:image/;base64,aGVsbG8=", "INVALID_DATA_URI"),
        ("data:image/png,rawbytes", "INVALID_DATA_URI"),
        (
            "data:image/png;base64;charset=x,aGVsbG8=",
            "INVALID_DATA_URI",
        ),
        ("data:image/png;base64,", "INVALID_DATA_URI"),
        ("data:image/png;base64,a", "INVALID_DATA_URI"),
        ("data:image/png;base64,aGV*sbG8=", "INVALID_DATA_URI"),
        ("data:image/png;base64,aG=VsbG8", "INVALID_DATA_URI"),
        ("data:image/png;base64,aGVsbG8===", "INVALID_DATA_URI"),
        ("data:image/png;base64,%zz", "INVALID_DATA_URI"),
        ("data:image/png;base64", "INVALID_DATA_URI"),
        ("https://example.com/x.png", "INVALID_DATA_URI"),
        ("data", "INVALID_DATA_URI"),
        ("", "INVALID_DATA_URI"),
        ("dátá:image/png;base64,AAAA", "INVALID_DATA_URI"),
    ];
    for (uri, code) in bad {
        let e = parse_data_uri(uri, max).unwrap_err();
        assert_eq!(e.code(), *code, "{uri}: {e}");
        assert!(e.to_string().starts_with("data URI: "), "{e}");
    }

    // Over the cap: refused from the encoded length, before decoding anything.
    let huge = format!("data:image/png;base64,{}", "A".repeat(4 * 1024 * 1024));
    let e = parse_data_uri(&huge, 1024 * 1024).unwrap_err();
    assert_eq!(e.code(), "IMAGE_TOO_LARGE");
    assert!(e.to_string().contains("encoded payload"), "{e}");
    // Just over the cap after decoding (within the encoded slack) is refused too.
    let payload = vec![7u8; 1001];
    let e = parse_data_uri(&format!("data:image/png;base64,{}", b64(&payload)), 1000).unwrap_err();
    assert_eq!(e.code(), "IMAGE_TOO_LARGE", "{e}");
    assert!(parse_data_uri(&format!("data:image/png;base64,{}", b64(&payload)), 1001).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any bytes encoded with any alphabet/padding/line-wrapping round-trip.
    #[test]
    fn data_uri_round_trips(bytes in proptest::collection::vec(any::<u8>(), 1..600),
                            url_safe in any::<bool>(), pad in any::<bool>(), wrap in 0usize..80) {
        use base64::engine::general_purpose::*;
        let mut enc = match (url_safe, pad) {
            (false, true) => STANDARD.encode(&bytes),
            (false, false) => STANDARD_NO_PAD.encode(&bytes),
            (true, true) => URL_SAFE.encode(&bytes),
            (true, false) => URL_SAFE_NO_PAD.encode(&bytes),
        };
        if wrap > 0 {
            enc = enc.as_bytes().chunks(wrap).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join("\n");
        }
        let (mime, got) = parse_data_uri(&format!("data:image/webp;base64,{enc}"), 600).unwrap();
        prop_assert_eq!(mime, "image/webp");
        prop_assert_eq!(got, bytes);
    }

    /// Arbitrary strings never panic and never return more than the cap.
    #[test]
    fn data_uri_never_panics(s in "\\PC{0,200}", cap in 0usize..100) {
        if let Ok((mime, bytes)) = parse_data_uri(&s, cap) {
            prop_assert!(mime.starts_with("image/"));
            prop_assert!(bytes.len() <= cap);
        }
        let _ = parse_data_uri(&format!("data:image/png;base64,{s}"), cap);
    }
}

#[test]
fn write_atomic_replaces_whole_files_and_leaves_no_temp() {
    let dir = std::env::temp_dir().join(format!("editd-image-io-atomic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("out.png");
    write_atomic(&path, b"first").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"first");
    write_atomic(&path, b"second, longer").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    // Missing directory → error, nothing created.
    assert!(write_atomic(&dir.join("missing/out.png"), b"x").is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
