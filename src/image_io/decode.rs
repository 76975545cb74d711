//! Decoding untrusted image and mask bytes: format by magic bytes, header-first size limits,
//! decoder memory limits, panics caught, EXIF orientation, conversion to RGB8 / mask luma.
//!
//! # Rules
//! - **Formats**: PNG (incl. APNG → first frame), JPEG (baseline, progressive; CMYK/YCCK are
//!   converted to RGB by `zune-jpeg`), WebP (lossy, lossless, animated → first frame). Decided
//!   by magic bytes only, never by `Content-Type` or extension. Anything else (GIF, TIFF, BMP,
//!   SVG, EXR, AVIF/HEIC, …) → `UNSUPPORTED_FORMAT`. All decoders are pure Rust (`image` with
//!   the `png`, `jpeg`, `webp` features).
//! - **Limits** ([`DecodeLimits`]): encoded bytes are checked first, then the dimensions the
//!   header *declares* (max side, max pixels) before any pixel buffer exists; the decoder also
//!   gets `image::Limits` (strict width/height, `max_alloc` = 4× the RGBA8 size of the largest
//!   allowed image). A decoder panic is caught and reported as `INVALID_IMAGE`.
//! - **Orientation**: the EXIF orientation (JPEG APP1, PNG `eXIf`, WebP `EXIF`) is applied, to
//!   images and masks alike, so outputs are upright and carry no orientation tag. A malformed
//!   EXIF block is ignored (treated as orientation 1), never an error.
//! - **Colour**: 16-bit → 8-bit (rounded), grey → replicated to RGB, palette → expanded.
//!   ICC profiles are ignored (pixels are taken as sRGB).
//! - **Alpha (images)**: composited over **white** in the encoded (sRGB) space:
//!   `out = round((c·a + 255·(255 − a)) / 255)` per channel, with 8-bit `c` and `a`; the same
//!   choice as PIL's `alpha_composite` onto a white canvas and vLLM's default background.
//! - **Masks** ([`decode_mask`]): 255 = repaint, 0 = keep. See the function's doc.
//!
//! Decoding is CPU-bound and synchronous: call it from `spawn_blocking` (under a semaphore and
//! a timeout) — see [`crate::image_io::DecodePool`].

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};

use image::metadata::Orientation;
use image::{
    DynamicImage, GrayImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage,
};

use super::error::ImageIoError;

/// Size limits applied to every decoded image and mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest width or height (after decoding, before orientation; the check is symmetric).
    /// Default 8192 px.
    pub max_side: u32,
    /// Largest `width × height`. Default 40,000,000 (40 MP; Pillow warns at ~89 MP).
    pub max_pixels: u64,
    /// Largest encoded input in bytes. Default 50 MiB.
    pub max_bytes: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_side: 8192,
            max_pixels: 40_000_000,
            max_bytes: 50 * 1024 * 1024,
        }
    }
}

impl DecodeLimits {
    /// Memory a decoder may allocate: 4× the RGBA8 size of the largest allowed image
    /// (room for 16-bit RGBA plus working buffers).
    pub fn max_alloc(&self) -> u64 {
        self.max_pixels.saturating_mul(16)
    }

    /// Check declared dimensions; the message quotes them and the limit they break.
    pub fn check_dimensions(&self, width: u32, height: u32) -> Result<(), String> {
        if width == 0 || height == 0 {
            return Err(format!("declared size {width}x{height} is empty"));
        }
        if width > self.max_side || height > self.max_side {
            return Err(format!(
                "declared size {width}x{height} exceeds the {} px limit",
                self.max_side
            ));
        }
        let px = u64::from(width) * u64::from(height);
        if px > self.max_pixels {
            return Err(format!(
                "declared size {width}x{height} ({:.1} MP) exceeds the {:.1} MP limit",
                px as f64 / 1e6,
                self.max_pixels as f64 / 1e6
            ));
        }
        Ok(())
    }
}

/// The format of `bytes` by magic bytes, if it is one we decode: PNG (and APNG), JPEG, WebP.
pub fn sniff_format(bytes: &[u8]) -> Option<ImageFormat> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageFormat::Png)
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Some(ImageFormat::Jpeg)
    } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some(ImageFormat::WebP)
    } else {
        None
    }
}

/// A human name for bytes we do not decode, for error messages.
pub fn describe_unsupported(bytes: &[u8]) -> String {
    let starts = |p: &[u8]| bytes.starts_with(p);
    let name = if starts(b"GIF87a") || starts(b"GIF89a") {
        "GIF"
    } else if starts(b"II*\0") || starts(b"MM\0*") || starts(b"II+\0") || starts(b"MM\0+") {
        "TIFF"
    } else if starts(b"BM") {
        "BMP"
    } else if starts(&[0x76, 0x2f, 0x31, 0x01]) {
        "OpenEXR"
    } else if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        match &bytes[8..12] {
            b"avif" | b"avis" => "AVIF",
            b"heic" | b"heix" | b"mif1" | b"msf1" | b"hevc" => "HEIC/HEIF",
            _ => "ISO-BMFF (video/HEIF)",
        }
    } else if starts(&[0xff, 0x0a]) || starts(b"\0\0\0\x0cJXL \r\n\x87\n") {
        "JPEG XL"
    } else if starts(&[0, 0, 1, 0]) || starts(&[0, 0, 2, 0]) {
        "ICO/CUR"
    } else if starts(b"%PDF") {
        "PDF"
    } else if starts(b"8BPS") {
        "PSD"
    } else if starts(b"qoif") {
        "QOI"
    } else if starts(b"#?RADIANCE") || starts(b"#?RGBE") {
        "Radiance HDR"
    } else if starts(b"DDS ") {
        "DDS"
    } else if bytes.len() >= 2 && bytes[0] == b'P' && (b'1'..=b'7').contains(&bytes[1]) {
        "PNM"
    } else if looks_like_markup(bytes) {
        "SVG/XML/HTML"
    } else if bytes.is_empty() {
        "(empty input)"
    } else {
        "(unrecognised bytes)"
    };
    name.to_string()
}

fn looks_like_markup(bytes: &[u8]) -> bool {
    let head = &bytes[..bytes.len().min(256)];
    let trimmed = match head
        .iter()
        .position(|b| !b.is_ascii_whitespace() && *b != 0xef && *b != 0xbb && *b != 0xbf)
    {
        Some(i) => &head[i..],
        None => return false,
    };
    trimmed.first() == Some(&b'<')
}

/// What the header of an image declares, read without decoding pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: ImageFormat,
    /// Width and height after EXIF orientation.
    pub width: u32,
    pub height: u32,
}

/// Read format and (oriented) dimensions from the header only, applying every check
/// [`decode_image`] applies before allocating pixels. Cheap: usable at request validation.
pub fn probe_image(bytes: &[u8], limits: &DecodeLimits) -> Result<ImageInfo, ImageIoError> {
    guarded("image", || {
        let (format, decoder, orientation) = open_decoder(bytes, limits, "image")?;
        let (w, h) = decoder.dimensions();
        let (width, height) = if swaps_axes(orientation) {
            (h, w)
        } else {
            (w, h)
        };
        Ok(ImageInfo {
            format,
            width,
            height,
        })
    })
}

/// Decode an untrusted image into upright RGB8 (see the module docs for every rule).
pub fn decode_image(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, ImageIoError> {
    let img = decode_oriented(bytes, limits, "image")?;
    Ok(flatten_to_rgb8(img))
}

/// Decode an untrusted mask into a `GrayImage` where **255 = repaint** and **0 = keep**.
///
/// - **RGBA (or grey+alpha) with any transparent pixel** (some 8-bit alpha < 255): OpenAI's
///   convention — repaint where the mask is transparent. Output is binary: `alpha < 128` → 255,
///   otherwise 0 (so fully transparent, alpha = 0, always repaints).
/// - **Otherwise** (grey, RGB, or RGBA that is fully opaque): the diffusers convention — white
///   repaints. The output keeps the grey level as luma, computed exactly like PIL's
///   `convert("L")` (ITU-R 601-2: `(19595·R + 38470·G + 7471·B + 32768) >> 16`), so the sampler
///   can binarise as diffusers does: `luma/255 ≥ 0.5` (i.e. `luma ≥ 128`) → repaint.
/// - EXIF orientation is applied first; the oriented size must equal `expected` (the first
///   image's oriented size), else `MASK_SIZE_MISMATCH`.
/// - A mask with no pixel to repaint (no `alpha < 128`, resp. no `luma ≥ 128`) → `INVALID_MASK`.
pub fn decode_mask(
    bytes: &[u8],
    limits: &DecodeLimits,
    expected: (u32, u32),
) -> Result<GrayImage, ImageIoError> {
    let img = decode_oriented(bytes, limits, "mask")?;
    let got = (img.width(), img.height());
    if got != expected {
        return Err(ImageIoError::MaskSizeMismatch {
            input: "mask".into(),
            got,
            expected,
        });
    }
    let (mask, rule) = mask_from_dynamic(&img);
    if !mask.pixels().any(|p| p.0[0] >= 128) {
        return Err(ImageIoError::InvalidMask {
            input: "mask".into(),
            reason: format!("it selects nothing to repaint ({rule})"),
        });
    }
    Ok(mask)
}

/// Turn a decoded (oriented) mask into repaint=255 form; also says which rule applied.
fn mask_from_dynamic(img: &DynamicImage) -> (GrayImage, &'static str) {
    if img.color().has_alpha() {
        let rgba = img.to_rgba8();
        if rgba.pixels().any(|p| p.0[3] < 255) {
            let out = GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| {
                image::Luma([if rgba.get_pixel(x, y).0[3] < 128 {
                    255
                } else {
                    0
                }])
            });
            return (
                out,
                "transparent mask: repaint where alpha < 128, but no pixel is",
            );
        }
    }
    let rgb = img.to_rgb8();
    let out = GrayImage::from_fn(rgb.width(), rgb.height(), |x, y| {
        let [r, g, b] = rgb.get_pixel(x, y).0;
        image::Luma([pil_luma(r, g, b)])
    });
    (
        out,
        "opaque mask: repaint where luma >= 128 (white), but no pixel is",
    )
}

/// PIL's `convert("L")`: ITU-R 601-2 luma in 16.16 fixed point.
#[inline]
pub fn pil_luma(r: u8, g: u8, b: u8) -> u8 {
    ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16) as u8
}

/// Any decoded image → RGB8: 16-bit rounded to 8-bit, grey replicated, alpha composited over
/// white (`round((c·a + 255·(255 − a)) / 255)` in 8-bit sRGB values).
pub fn flatten_to_rgb8(img: DynamicImage) -> RgbImage {
    if !img.color().has_alpha() {
        return img.into_rgb8();
    }
    let rgba = img.into_rgba8();
    let (w, h) = rgba.dimensions();
    let mut out = RgbImage::new(w, h);
    for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
        let a = u32::from(p.0[3]);
        for c in 0..3 {
            let v = u32::from(p.0[c]) * a + 255 * (255 - a);
            o.0[c] = ((v + 127) / 255) as u8;
        }
    }
    out
}

/// Decode with all limits, catch panics, apply EXIF orientation.
pub(crate) fn decode_oriented(
    bytes: &[u8],
    limits: &DecodeLimits,
    input: &str,
) -> Result<DynamicImage, ImageIoError> {
    guarded(input, || {
        let (_format, mut decoder, orientation) = open_decoder(bytes, limits, input)?;
        // Now the full, strict limits: width/height and the allocation budget.
        let mut strict = image::Limits::default();
        strict.max_image_width = Some(limits.max_side);
        strict.max_image_height = Some(limits.max_side);
        strict.max_alloc = Some(limits.max_alloc());
        decoder
            .set_limits(strict)
            .map_err(|e| map_image_error(e, input))?;
        let mut img = DynamicImage::from_decoder(decoder).map_err(|e| map_image_error(e, input))?;
        img.apply_orientation(orientation);
        Ok(img)
    })
}

type BoxedDecoder<'a> = Box<dyn ImageDecoder + 'a>;

/// Sniff, build the decoder (header only), check declared size and memory, read orientation.
fn open_decoder<'a>(
    bytes: &'a [u8],
    limits: &DecodeLimits,
    input: &str,
) -> Result<(ImageFormat, BoxedDecoder<'a>, Orientation), ImageIoError> {
    if bytes.len() > limits.max_bytes {
        return Err(ImageIoError::TooLarge {
            input: input.into(),
            reason: format!(
                "{} bytes exceeds the {} byte limit",
                bytes.len(),
                limits.max_bytes
            ),
        });
    }
    let Some(format) = sniff_format(bytes) else {
        return Err(ImageIoError::UnsupportedFormat {
            input: input.into(),
            found: describe_unsupported(bytes),
        });
    };
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    // Width/height left open here so we can quote the declared size ourselves; the allocation
    // budget is set (PNG takes it at construction).
    let mut header_limits = image::Limits::default();
    header_limits.max_alloc = Some(limits.max_alloc());
    reader.limits(header_limits);
    let mut decoder: BoxedDecoder<'a> = Box::new(
        reader
            .into_decoder()
            .map_err(|e| map_image_error(e, input))?,
    );
    let (w, h) = decoder.dimensions();
    limits
        .check_dimensions(w, h)
        .map_err(|reason| ImageIoError::TooLarge {
            input: input.into(),
            reason,
        })?;
    let total = decoder.total_bytes();
    if total > limits.max_alloc() {
        return Err(ImageIoError::TooLarge {
            input: input.into(),
            reason: format!(
                "decoding {w}x{h} needs {total} bytes, over the {} byte decoder budget",
                limits.max_alloc()
            ),
        });
    }
    // A broken EXIF block must not fail the decode: treat it as "no transform".
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    Ok((format, decoder, orientation))
}

fn swaps_axes(o: Orientation) -> bool {
    matches!(
        o,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// Run `f`, turning a panic inside a decoder into `INVALID_IMAGE`.
fn guarded<T>(input: &str, f: impl FnOnce() -> Result<T, ImageIoError>) -> Result<T, ImageIoError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::warn!(input, panic = %msg, "image decoder panicked; input refused");
            Err(ImageIoError::InvalidImage {
                input: input.into(),
                reason: format!("the decoder failed on malformed data ({msg})"),
            })
        }
    }
}

fn map_image_error(e: ImageError, input: &str) -> ImageIoError {
    match e {
        ImageError::Limits(l) => ImageIoError::TooLarge {
            input: input.into(),
            reason: format!("decoder limit exceeded: {l}"),
        },
        ImageError::Unsupported(u) => ImageIoError::UnsupportedFormat {
            input: input.into(),
            found: format!("variant ({u})"),
        },
        other => ImageIoError::InvalidImage {
            input: input.into(),
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic inside a decoder becomes INVALID_IMAGE naming the input, not a crash.
    #[test]
    fn decoder_panic_becomes_invalid_image() {
        let r: Result<(), _> = guarded("image_urls[0]", || panic!("index out of bounds: boom"));
        let e = r.unwrap_err();
        assert_eq!(e.code(), "INVALID_IMAGE");
        assert!(
            e.to_string().starts_with("image_urls[0]: invalid image:"),
            "{e}"
        );
        assert!(e.to_string().contains("boom"), "{e}");
        let r: Result<(), _> = guarded("mask", || std::panic::panic_any(42u32));
        assert!(r.unwrap_err().to_string().contains("unknown panic"));
    }
}
