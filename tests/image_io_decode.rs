//! Decoding untrusted images and masks: format allow-list, size limits, malformed inputs,
//! EXIF orientation, colour conversion, mask polarity (§8 items 16–21).

mod image_io_util;

use editd::image_io::{
    decode_image, decode_mask, probe_image, sniff_format, DecodeLimits, ImageFormat,
};
use image::{DynamicImage, GrayImage, ImageBuffer, Luma, LumaA, Rgb, RgbImage, Rgba, RgbaImage};
use image_io_util::*;

fn lim() -> DecodeLimits {
    DecodeLimits::default()
}

#[test]
fn sniffs_only_png_jpeg_webp() {
    let img = DynamicImage::ImageRgb8(gradient(8, 8));
    assert_eq!(
        sniff_format(&encode(&img, ImageFormat::Png)),
        Some(ImageFormat::Png)
    );
    assert_eq!(
        sniff_format(&encode(&img, ImageFormat::Jpeg)),
        Some(ImageFormat::Jpeg)
    );
    assert_eq!(
        sniff_format(&encode(&img, ImageFormat::WebP)),
        Some(ImageFormat::WebP)
    );
    assert_eq!(sniff_format(b"GIF89a\x01\0\x01\0"), None);
    assert_eq!(sniff_format(b""), None);
}

/// §8 item 18: TIFF/BMP/SVG/EXR (and GIF, HEIC, …) by magic bytes → UNSUPPORTED_FORMAT.
#[test]
fn format_allow_list_by_magic_bytes() {
    let cases: &[(&[u8], &str)] = &[
        (b"II*\0\x08\0\0\0rest-of-tiff", "TIFF"),
        (b"MM\0*\0\0\0\x08rest-of-tiff", "TIFF"),
        (b"BM\x36\0\0\0\0\0\0\0\x36\0\0\0", "BMP"),
        (
            b"<?xml version=\"1.0\"?><svg xmlns=\"http://www.w3.org/2000/svg\"/>",
            "SVG",
        ),
        (b"  <svg width=\"10\" height=\"10\"></svg>", "SVG"),
        (&[0x76, 0x2f, 0x31, 0x01, 2, 0, 0, 0], "OpenEXR"),
        (b"GIF89a\x01\0\x01\0\x80\0\0", "GIF"),
        (b"\0\0\0\x1cftypheic\0\0\0\0", "HEIC"),
        (b"\0\0\0\x1cftypavif\0\0\0\0", "AVIF"),
        (b"%PDF-1.7", "PDF"),
        (b"hello world", "unrecognised"),
        (b"", "empty"),
    ];
    for (bytes, name) in cases {
        let e = decode_image(bytes, &lim()).unwrap_err();
        assert_eq!(e.code(), "UNSUPPORTED_FORMAT", "{name}: {e}");
        assert!(e.to_string().contains(name), "{name}: {e}");
        assert!(e.to_string().starts_with("image: "), "{e}");
        let e = decode_mask(bytes, &lim(), (1, 1)).unwrap_err();
        assert_eq!(e.code(), "UNSUPPORTED_FORMAT", "{name}: {e}");
    }
}

/// §8 item 16: over max side / megapixels / bytes → IMAGE_TOO_LARGE, message quotes the size.
#[test]
fn pixel_caps_refuse_with_declared_size() {
    let png = encode(
        &DynamicImage::ImageRgb8(gradient(100, 60)),
        ImageFormat::Png,
    );
    let side = DecodeLimits {
        max_side: 64,
        ..lim()
    };
    let e = decode_image(&png, &side).unwrap_err();
    assert_eq!(e.code(), "IMAGE_TOO_LARGE");
    assert_eq!(
        e.to_string(),
        "image: declared size 100x60 exceeds the 64 px limit"
    );
    assert_eq!(
        e.clone().with_input("image_urls[1]").to_string(),
        "image_urls[1]: declared size 100x60 exceeds the 64 px limit"
    );
    let px = DecodeLimits {
        max_pixels: 5_000,
        ..lim()
    };
    let e = decode_image(&png, &px).unwrap_err();
    assert_eq!(e.code(), "IMAGE_TOO_LARGE");
    assert!(e.to_string().contains("MP limit"), "{e}");
    let bytes = DecodeLimits {
        max_bytes: png.len() - 1,
        ..lim()
    };
    assert_eq!(
        decode_image(&png, &bytes).unwrap_err().code(),
        "IMAGE_TOO_LARGE"
    );
    // exactly at the limits is fine
    let exact = DecodeLimits {
        max_side: 100,
        max_pixels: 6_000,
        max_bytes: png.len(),
    };
    assert_eq!(decode_image(&png, &exact).unwrap().dimensions(), (100, 60));

    // A JPEG header declaring 60000x60000 (SOF0 written by hand) is refused from the header.
    let jpeg = encode(
        &DynamicImage::ImageRgb8(gradient(16, 16)),
        ImageFormat::Jpeg,
    );
    let mut big = jpeg.clone();
    let sof = big
        .windows(2)
        .position(|w| w == [0xff, 0xc0])
        .expect("baseline SOF0");
    big[sof + 5..sof + 7].copy_from_slice(&60000u16.to_be_bytes());
    big[sof + 7..sof + 9].copy_from_slice(&60000u16.to_be_bytes());
    let e = decode_image(&big, &lim()).unwrap_err();
    assert_eq!(e.code(), "IMAGE_TOO_LARGE", "{e}");
    assert!(e.to_string().contains("60000x60000"), "{e}");
    // A WebP (VP8L) header declaring 16384x16384 likewise.
    let webp = encode(
        &DynamicImage::ImageRgb8(gradient(16, 16)),
        ImageFormat::WebP,
    );
    let mut bigw = webp.clone();
    assert_eq!(&bigw[12..16], b"VP8L");
    // 14-bit fields store size-1. (16384 itself wraps to 0 in image-webp 0.2.4's height
    // arithmetic; our empty-size check refuses that too.)
    let (w, h) = (15999u32, 15999u32);
    let bits = w | (h << 14) | (u32::from(bigw[24]) >> 4 & 1) << 28;
    bigw[21..25].copy_from_slice(&bits.to_le_bytes());
    let e = decode_image(&bigw, &lim()).unwrap_err();
    assert_eq!(e.code(), "IMAGE_TOO_LARGE", "{e}");
    assert!(e.to_string().contains("16000x16000"), "{e}");
}

/// §8 item 17: truncated and garbage inputs give errors, never panics or hangs.
#[test]
fn truncated_and_garbage_inputs_are_errors_not_panics() {
    let img = DynamicImage::ImageRgba8(RgbaImage::from_fn(23, 17, |x, y| {
        Rgba([(x * 11) as u8, (y * 15) as u8, (x ^ y) as u8, (x * y) as u8])
    }));
    let mut checked = 0;
    for fmt in [ImageFormat::Png, ImageFormat::Jpeg, ImageFormat::WebP] {
        let src = if fmt == ImageFormat::Jpeg {
            DynamicImage::ImageRgb8(img.to_rgb8())
        } else {
            img.clone()
        };
        let full = encode(&src, fmt);
        assert!(decode_image(&full, &lim()).is_ok(), "{fmt:?} full decode");
        for cut in 0..full.len() {
            let r = decode_image(&full[..cut], &lim());
            if let Err(e) = &r {
                assert!(
                    ["INVALID_IMAGE", "UNSUPPORTED_FORMAT", "IMAGE_TOO_LARGE"].contains(&e.code()),
                    "{fmt:?} cut {cut}: {e}"
                );
            }
            checked += 1;
        }
        // bit flips across the body
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..300 {
            let mut b = full.clone();
            for _ in 0..4 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let i = (rng as usize) % b.len();
                b[i] ^= 1 << ((rng >> 40) % 8);
            }
            let _ = decode_image(&b, &lim());
            let _ = decode_mask(&b, &lim(), (23, 17));
            checked += 1;
        }
    }
    // Known crashers from image-rs history: JPEG SOI+EOI (image-rs #1410), empty PNG IHDR.
    for bytes in [
        &[0xff, 0xd8, 0xff, 0xd9][..],
        &[0xff, 0xd8, 0xff][..],
        b"\x89PNG\r\n\x1a\n",
        b"\x89PNG\r\n\x1a\n\0\0\0\0IHDR\0\0\0\0",
        b"RIFF\0\0\0\0WEBPVP8 ",
        b"RIFF\xff\xff\xff\xffWEBPVP8L\xff\xff\xff\xff\x2f",
    ] {
        let e = decode_image(bytes, &lim()).unwrap_err();
        assert!(
            ["INVALID_IMAGE", "IMAGE_TOO_LARGE"].contains(&e.code()),
            "{e}"
        );
    }
    eprintln!("malformed inputs checked: {checked}");
}

fn orient_inverse(upright: &RgbImage, o: u16) -> RgbImage {
    use image::imageops::*;
    match o {
        1 => upright.clone(),
        2 => flip_horizontal(upright),
        3 => rotate180(upright),
        4 => flip_vertical(upright),
        5 => flip_horizontal(&rotate90(upright)), // transpose
        6 => rotate270(upright),
        7 => flip_horizontal(&rotate270(upright)), // transverse
        8 => rotate90(upright),
        _ => unreachable!(),
    }
}

/// §8 item 19: EXIF orientations 1–8 give identical upright pixels (lossless PNG `eXIf`),
/// and the mask stays aligned with the image after rotation.
#[test]
fn exif_orientations_1_to_8_give_identical_upright_pixels() {
    let upright = gradient(24, 10);
    for o in 1..=8u16 {
        let stored = orient_inverse(&upright, o);
        let png = png_rgb_with_orientation(&stored, o);
        let got = decode_image(&png, &lim()).unwrap();
        assert_eq!(got.dimensions(), (24, 10), "orientation {o}");
        assert!(got == upright, "orientation {o}: pixels differ");
        let info = probe_image(&png, &lim()).unwrap();
        assert_eq!(
            (info.width, info.height),
            (24, 10),
            "probe, orientation {o}"
        );

        // Mask: repaint the top-left 5x3 corner of the upright picture.
        let mask_up = RgbImage::from_fn(24, 10, |x, y| {
            if x < 5 && y < 3 {
                Rgb([255; 3])
            } else {
                Rgb([0; 3])
            }
        });
        let mask_png = png_rgb_with_orientation(&orient_inverse(&mask_up, o), o);
        let m = decode_mask(&mask_png, &lim(), (24, 10)).unwrap();
        for (x, y, p) in m.enumerate_pixels() {
            assert_eq!(
                p.0[0] == 255,
                x < 5 && y < 3,
                "orientation {o} mask at {x},{y}"
            );
        }
        // Size is compared after orientation: the stored (unrotated) size of a 90° mask differs.
        if matches!(o, 5..=8) {
            let e = decode_mask(&mask_png, &lim(), (10, 24)).unwrap_err();
            assert_eq!(e.code(), "MASK_SIZE_MISMATCH");
        }
    }
}

/// EXIF orientation in a JPEG APP1 segment (written by hand) rotates the pixels.
#[test]
fn jpeg_app1_orientation_rotates_pixels() {
    // 32x16: left half red, right half blue (big flat blocks survive JPEG).
    let upright = RgbImage::from_fn(32, 16, |x, _| {
        if x < 16 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    });
    for o in [1u16, 3, 6, 8] {
        let stored = orient_inverse(&upright, o);
        let jpeg = jpeg_with_orientation(
            &encode(&DynamicImage::ImageRgb8(stored), ImageFormat::Jpeg),
            o,
        );
        let got = decode_image(&jpeg, &lim()).unwrap();
        assert_eq!(got.dimensions(), (32, 16), "orientation {o}");
        let left = got.get_pixel(4, 8).0;
        let right = got.get_pixel(28, 8).0;
        assert!(
            left[0] > 200 && left[2] < 60,
            "orientation {o}: left is {left:?}"
        );
        assert!(
            right[2] > 200 && right[0] < 60,
            "orientation {o}: right is {right:?}"
        );
    }
}

/// §8 item 20: 16-bit, grey, grey+alpha, palette (+tRNS), RGBA → RGB8 per the documented rule.
#[test]
fn colour_types_convert_to_rgb8() {
    // 16-bit RGB: 0x8080 → 0x80 (rounded), 0xffff → 255
    let img16: ImageBuffer<Rgb<u16>, Vec<u16>> =
        ImageBuffer::from_fn(3, 2, |x, _| Rgb([0xffff, 0x8080 * (x as u16 % 2), 0]));
    let got = decode_image(
        &encode(&DynamicImage::ImageRgb16(img16), ImageFormat::Png),
        &lim(),
    )
    .unwrap();
    assert_eq!(got.get_pixel(1, 0).0, [255, 128, 0]);
    assert_eq!(got.get_pixel(0, 1).0, [255, 0, 0]);

    // grey 8 → replicated
    let grey = GrayImage::from_fn(4, 4, |x, y| Luma([(x * 60 + y) as u8]));
    let got = decode_image(
        &encode(&DynamicImage::ImageLuma8(grey), ImageFormat::Png),
        &lim(),
    )
    .unwrap();
    assert_eq!(got.get_pixel(2, 1).0, [121, 121, 121]);

    // grey + alpha: alpha 0 → white; alpha 255 → grey itself; 50% → halfway to white
    let la: ImageBuffer<LumaA<u8>, Vec<u8>> =
        ImageBuffer::from_fn(3, 1, |x, _| LumaA([0, [0u8, 255, 128][x as usize]]));
    let got = decode_image(
        &encode(&DynamicImage::ImageLumaA8(la), ImageFormat::Png),
        &lim(),
    )
    .unwrap();
    assert_eq!(got.get_pixel(0, 0).0, [255, 255, 255]);
    assert_eq!(got.get_pixel(1, 0).0, [0, 0, 0]);
    assert_eq!(got.get_pixel(2, 0).0, [127, 127, 127]); // (0*128 + 255*127)/255 = 127

    // RGBA over white
    let rgba = RgbaImage::from_fn(2, 1, |x, _| {
        if x == 0 {
            Rgba([200, 100, 0, 255])
        } else {
            Rgba([200, 100, 0, 64])
        }
    });
    let got = decode_image(
        &encode(&DynamicImage::ImageRgba8(rgba), ImageFormat::Png),
        &lim(),
    )
    .unwrap();
    assert_eq!(got.get_pixel(0, 0).0, [200, 100, 0]);
    let exp = |c: u32| ((c * 64 + 255 * 191 + 127) / 255) as u8;
    assert_eq!(got.get_pixel(1, 0).0, [exp(200), exp(100), exp(0)]);

    // RGBA WebP (lossless) → same rule
    let rgba = RgbaImage::from_fn(2, 2, |_, _| Rgba([10, 20, 30, 0]));
    let got = decode_image(
        &encode(&DynamicImage::ImageRgba8(rgba), ImageFormat::WebP),
        &lim(),
    )
    .unwrap();
    assert_eq!(got.get_pixel(1, 1).0, [255, 255, 255]);

    // Palette PNG (colour type 3, 2-bit indices) with tRNS making index 2 transparent.
    let plte = vec![255, 0, 0, 0, 255, 0, 0, 0, 255];
    let trns = vec![255, 255, 0];
    // 4 pixels per byte at 2 bits: indices 0,1,2,0
    let png = build_png(
        4,
        1,
        2,
        3,
        &[(b"PLTE", plte), (b"tRNS", trns)],
        &[vec![0b00_01_10_00]],
    );
    let got = decode_image(&png, &lim()).unwrap();
    assert_eq!(
        got.as_raw(),
        &vec![255, 0, 0, 0, 255, 0, 255, 255, 255, 255, 0, 0]
    );

    // 16-bit grey
    let png = build_png(2, 1, 16, 0, &[], &[vec![0xff, 0xff, 0x00, 0x7f]]);
    let got = decode_image(&png, &lim()).unwrap();
    assert_eq!(got.get_pixel(0, 0).0, [255; 3]);
    assert_eq!(got.get_pixel(1, 0).0, [0; 3]);
}

/// §8 item 21: alpha=0 (RGBA, OpenAI) and white (grey, diffusers) select the same area;
/// size mismatch → MASK_SIZE_MISMATCH; empty mask → INVALID_MASK.
#[test]
fn mask_polarity_both_conventions_select_the_same_area() {
    let inside = |x: u32, y: u32| (3..9).contains(&x) && (2..5).contains(&y);
    // OpenAI: transparent where to edit, the rest opaque (any colour).
    let rgba = RgbaImage::from_fn(12, 8, |x, y| {
        if inside(x, y) {
            Rgba([0, 0, 0, 0])
        } else {
            Rgba([17, 200, 90, 255])
        }
    });
    let a = decode_mask(
        &encode(&DynamicImage::ImageRgba8(rgba), ImageFormat::Png),
        &lim(),
        (12, 8),
    )
    .unwrap();
    // diffusers: white where to edit, black elsewhere.
    let grey = GrayImage::from_fn(12, 8, |x, y| Luma([if inside(x, y) { 255 } else { 0 }]));
    let b = decode_mask(
        &encode(&DynamicImage::ImageLuma8(grey), ImageFormat::Png),
        &lim(),
        (12, 8),
    )
    .unwrap();
    assert!(a == b, "the two conventions disagree");
    for (x, y, p) in a.enumerate_pixels() {
        assert_eq!(p.0[0], if inside(x, y) { 255 } else { 0 });
    }

    // Alpha threshold: < 128 repaints, >= 128 keeps; output binary.
    let rgba = RgbaImage::from_fn(4, 1, |x, _| {
        Rgba([255, 255, 255, [0u8, 127, 128, 255][x as usize]])
    });
    let m = decode_mask(
        &encode(&DynamicImage::ImageRgba8(rgba), ImageFormat::Png),
        &lim(),
        (4, 1),
    )
    .unwrap();
    assert_eq!(m.as_raw(), &vec![255, 255, 0, 0]);

    // Opaque RGBA and RGB masks use luma (PIL "L"), grey levels kept for the sampler.
    let rgba = RgbaImage::from_fn(3, 1, |x, _| {
        Rgba([
            [255u8, 128, 10][x as usize],
            [255u8, 128, 10][x as usize],
            [255u8, 128, 10][x as usize],
            255,
        ])
    });
    let m = decode_mask(
        &encode(&DynamicImage::ImageRgba8(rgba), ImageFormat::Png),
        &lim(),
        (3, 1),
    )
    .unwrap();
    assert_eq!(m.as_raw(), &vec![255, 128, 10]);
    let rgb = RgbImage::from_fn(2, 1, |x, _| {
        if x == 0 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 255, 0])
        }
    });
    let m = decode_mask(
        &encode(&DynamicImage::ImageRgb8(rgb), ImageFormat::Png),
        &lim(),
        (2, 1),
    )
    .unwrap();
    assert_eq!(m.as_raw(), &vec![76, 150]); // PIL: R→76, G→150

    // Size mismatch
    let grey = GrayImage::from_pixel(12, 8, Luma([255]));
    let png = encode(&DynamicImage::ImageLuma8(grey), ImageFormat::Png);
    let e = decode_mask(&png, &lim(), (12, 9)).unwrap_err();
    assert_eq!(e.code(), "MASK_SIZE_MISMATCH");
    assert_eq!(
        e.to_string(),
        "mask: mask is 12x8 but the image is 12x9 (after EXIF orientation); they must match"
    );

    // Empty: all black grey; all opaque RGBA with dark pixels; grey all 127.
    for img in [
        DynamicImage::ImageLuma8(GrayImage::from_pixel(5, 5, Luma([0]))),
        DynamicImage::ImageLuma8(GrayImage::from_pixel(5, 5, Luma([127]))),
        DynamicImage::ImageRgba8(RgbaImage::from_pixel(5, 5, Rgba([0, 0, 0, 255]))),
        DynamicImage::ImageRgba8(RgbaImage::from_pixel(5, 5, Rgba([255, 255, 255, 200]))),
    ] {
        let e = decode_mask(&encode(&img, ImageFormat::Png), &lim(), (5, 5)).unwrap_err();
        assert_eq!(e.code(), "INVALID_MASK", "{e}");
        assert!(e.to_string().contains("nothing to repaint"), "{e}");
    }
}

/// §8 item 20: CMYK and YCCK JPEGs (Adobe APP14) decode to RGB8.
#[test]
fn cmyk_and_ycck_jpegs_decode_to_rgb8() {
    use jpeg_encoder::{ColorType, Encoder};
    // 16x16 blocks: patches of pure C, M, Y, K and no ink, given as ink amounts (255 = full);
    // jpeg-encoder stores them Adobe-inverted with an APP14 marker, as Photoshop does.
    let patches: [([u8; 4], [u8; 3]); 5] = [
        ([255, 0, 0, 0], [0, 255, 255]), // cyan
        ([0, 255, 0, 0], [255, 0, 255]), // magenta
        ([0, 0, 255, 0], [255, 255, 0]), // yellow
        ([0, 0, 0, 255], [0, 0, 0]),     // black
        ([0, 0, 0, 0], [255, 255, 255]), // paper
    ];
    let (w, h) = (16 * patches.len() as u16, 16u16);
    let mut data = Vec::new();
    for _y in 0..h {
        for x in 0..w {
            data.extend_from_slice(&patches[x as usize / 16].0);
        }
    }
    for ct in [ColorType::Cmyk, ColorType::CmykAsYcck] {
        let mut jpeg = Vec::new();
        Encoder::new(&mut jpeg, 95).encode(&data, w, h, ct).unwrap();
        assert!(jpeg.windows(5).any(|x| x == b"Adobe"));
        let got = decode_image(&jpeg, &lim()).unwrap();
        assert_eq!(got.dimensions(), (u32::from(w), 16));
        for (i, (_, rgb)) in patches.iter().enumerate() {
            let px = got.get_pixel(i as u32 * 16 + 8, 8).0;
            for c in 0..3 {
                assert!(
                    (i32::from(px[c]) - i32::from(rgb[c])).abs() <= 24,
                    "{ct:?} patch {i}: got {px:?}, want {rgb:?}"
                );
            }
        }
    }
}

/// Decodes run on blocking threads, bounded in concurrency and time (reliability.md §2.2).
#[tokio::test]
async fn decode_pool_runs_off_the_runtime_with_limits() {
    use editd::image_io::DecodePool;
    use std::sync::Arc;
    use std::time::Duration;
    let png: Arc<[u8]> =
        encode(&DynamicImage::ImageRgb8(gradient(64, 48)), ImageFormat::Png).into();
    let pool = DecodePool::new(2, Duration::from_secs(10));
    let jobs: Vec<_> = (0..8)
        .map(|_| {
            let (pool, png) = (pool.clone(), png.clone());
            tokio::spawn(async move { pool.decode_image(png, lim()).await })
        })
        .collect();
    for j in jobs {
        assert_eq!(j.await.unwrap().unwrap().dimensions(), (64, 48));
    }
    let e = pool
        .decode_image(Arc::from(&b"garbage"[..]), lim())
        .await
        .unwrap_err();
    assert_eq!(e.code(), "UNSUPPORTED_FORMAT");
    let grey: Arc<[u8]> = encode(
        &DynamicImage::ImageLuma8(GrayImage::from_pixel(64, 48, Luma([255]))),
        ImageFormat::Png,
    )
    .into();
    assert!(pool
        .decode_mask(grey.clone(), lim(), (64, 48))
        .await
        .is_ok());
    assert_eq!(
        pool.decode_mask(grey, lim(), (48, 64))
            .await
            .unwrap_err()
            .code(),
        "MASK_SIZE_MISMATCH"
    );
    // A timeout shorter than any decode reports INVALID_IMAGE with the reason.
    let big: Arc<[u8]> = encode(
        &DynamicImage::ImageRgb8(gradient(2048, 2048)),
        ImageFormat::Png,
    )
    .into();
    let slow = DecodePool::new(1, Duration::from_nanos(1));
    let e = slow.decode_image(big, lim()).await.unwrap_err();
    assert_eq!(e.code(), "INVALID_IMAGE");
    assert!(e.to_string().contains("longer than"), "{e}");
}
