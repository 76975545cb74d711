//! Encoding outputs as PNG / JPEG / WebP. Outputs are built from raw pixels only, so no
//! metadata (EXIF, GPS, ICC, XMP, text chunks) from any input is ever carried over.

use std::str::FromStr;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::codecs::webp::WebPEncoder;
use image::{ExtendedColorType, ImageEncoder, RgbImage};

use super::error::ImageIoError;

/// An output format the API can ask for (`output_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OutputFormat {
    #[default]
    Png,
    Jpeg,
    Webp,
}

impl OutputFormat {
    /// MIME type for `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
        }
    }

    /// File extension without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpeg",
            Self::Webp => "webp",
        }
    }

    /// The wire name (`png`, `jpeg`, `webp`).
    pub fn as_str(self) -> &'static str {
        self.extension()
    }
}

impl std::fmt::Display for OutputFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OutputFormat {
    type Err = String;
    /// Accepts `png`, `jpeg`, `jpg`, `webp`, case-insensitively.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "png" => Ok(Self::Png),
            "jpeg" | "jpg" => Ok(Self::Jpeg),
            "webp" => Ok(Self::Webp),
            _ => Err(format!(
                "unknown output format {s:?}; expected png, jpeg or webp"
            )),
        }
    }
}

/// Default JPEG quality when no `compression` is given.
pub const DEFAULT_JPEG_QUALITY: u8 = 90;

/// Encode an RGB8 image.
///
/// `compression` is OpenAI's `output_compression` (0–100), which behaves as a quality knob
/// (100 = best, largest): for **JPEG** it is the quality, clamped to 1..=100, default
/// [`DEFAULT_JPEG_QUALITY`]. **PNG** is lossless and ignores it (default zlib level, adaptive
/// filter). **WebP** is encoded *lossless* by the `image` crate's pure-Rust encoder (there is
/// no pure-Rust lossy WebP encoder), so it ignores `compression` too.
pub fn encode_image(
    img: &RgbImage,
    fmt: OutputFormat,
    compression: Option<u8>,
) -> Result<Vec<u8>, ImageIoError> {
    let (w, h) = img.dimensions();
    let mut out = Vec::with_capacity((w as usize * h as usize).min(64 << 20) / 2 + 1024);
    let res = match fmt {
        OutputFormat::Png => {
            PngEncoder::new_with_quality(&mut out, CompressionType::Default, FilterType::Adaptive)
                .write_image(img.as_raw(), w, h, ExtendedColorType::Rgb8)
        }
        OutputFormat::Jpeg => {
            let q = compression.unwrap_or(DEFAULT_JPEG_QUALITY).clamp(1, 100);
            JpegEncoder::new_with_quality(&mut out, q).write_image(
                img.as_raw(),
                w,
                h,
                ExtendedColorType::Rgb8,
            )
        }
        OutputFormat::Webp => WebPEncoder::new_lossless(&mut out).write_image(
            img.as_raw(),
            w,
            h,
            ExtendedColorType::Rgb8,
        ),
    };
    res.map_err(|e| ImageIoError::Encode {
        input: format!("output ({fmt})"),
        reason: e.to_string(),
    })?;
    Ok(out)
}
