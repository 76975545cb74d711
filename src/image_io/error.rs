//! The one error type of `image_io`: every refusal names its input (or URL) and the reason, and
//! carries a stable machine code for the API's error envelope.

/// An error from fetching, decoding, mask handling, `data:` parsing or encoding.
///
/// `Display` reads `"<input>: <why>"`, e.g.
/// `image_urls[1]: declared size 100000x100000 exceeds the 8192 px limit`. Functions that only see
/// bytes label the input generically (`image`, `mask`, `data URI`); callers that know the request
/// field rename it with [`ImageIoError::with_input`]. [`ImageIoError::code`] is the stable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageIoError {
    /// Bytes that claim a supported format but do not decode (truncated, corrupt, decoder panic).
    #[error("{input}: invalid image: {reason}")]
    InvalidImage { input: String, reason: String },
    /// Over a size limit: declared dimensions, pixel count, encoded bytes or decoder memory.
    #[error("{input}: {reason}")]
    TooLarge { input: String, reason: String },
    /// Magic bytes of a format we do not decode (TIFF, BMP, SVG, GIF, …) or of no image at all.
    #[error(
        "{input}: unsupported format {found} (accepted: PNG, JPEG, WebP, sniffed from the bytes)"
    )]
    UnsupportedFormat { input: String, found: String },
    /// A mask that decodes but cannot be used (selects nothing to repaint).
    #[error("{input}: invalid mask: {reason}")]
    InvalidMask { input: String, reason: String },
    /// The mask's size (after EXIF orientation) differs from the first image's.
    #[error("{input}: mask is {}x{} but the image is {}x{} (after EXIF orientation); they must match", got.0, got.1, expected.0, expected.1)]
    MaskSizeMismatch {
        input: String,
        got: (u32, u32),
        expected: (u32, u32),
    },
    /// A malformed or disallowed `data:` URI (not `image/*`, not base64, bad base64).
    #[error("{input}: invalid data URI: {reason}")]
    InvalidDataUri { input: String, reason: String },
    /// The URL is not allowed by the fetch policy (scheme, port, non-public address, redirects).
    /// Nothing was connected to for the refused hop.
    #[error("{input}: URL not allowed: {reason}")]
    FetchForbidden { input: String, reason: String },
    /// The fetch was allowed but failed (DNS, connect, timeout, HTTP status, transport).
    #[error("{input}: fetch failed: {reason}")]
    FetchFailed { input: String, reason: String },
    /// Encoding an output failed (a server-side fault, not the client's).
    #[error("{input}: encoding failed: {reason}")]
    Encode { input: String, reason: String },
}

impl ImageIoError {
    /// Stable machine code (upper snake case, as in the Runflow error envelope).
    ///
    /// | code | meaning | suggested HTTP |
    /// |---|---|---|
    /// | `INVALID_IMAGE` | corrupt/truncated image, decoder panic | 422 |
    /// | `IMAGE_TOO_LARGE` | over max side / megapixels / bytes / decoder memory | 422 (413 for bodies is the API's) |
    /// | `UNSUPPORTED_FORMAT` | not PNG/JPEG/WebP by magic bytes | 422 |
    /// | `INVALID_MASK` | empty mask | 422 |
    /// | `MASK_SIZE_MISMATCH` | mask size differs from the first image | 422 |
    /// | `INVALID_DATA_URI` | malformed / non-image / non-base64 `data:` URI | 422 |
    /// | `FETCH_FORBIDDEN` | URL refused by the SSRF guard / policy | 422 |
    /// | `FETCH_FAILED` | network error, timeout, non-2xx | 422 |
    /// | `ENCODE_FAILED` | output encoding failed | 500 |
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidImage { .. } => "INVALID_IMAGE",
            Self::TooLarge { .. } => "IMAGE_TOO_LARGE",
            Self::UnsupportedFormat { .. } => "UNSUPPORTED_FORMAT",
            Self::InvalidMask { .. } => "INVALID_MASK",
            Self::MaskSizeMismatch { .. } => "MASK_SIZE_MISMATCH",
            Self::InvalidDataUri { .. } => "INVALID_DATA_URI",
            Self::FetchForbidden { .. } => "FETCH_FORBIDDEN",
            Self::FetchFailed { .. } => "FETCH_FAILED",
            Self::Encode { .. } => "ENCODE_FAILED",
        }
    }

    /// True when the client's input caused the error (everything but encoding).
    pub fn is_client_error(&self) -> bool {
        !matches!(self, Self::Encode { .. })
    }

    /// The input label (`image`, `mask`, a URL, or what [`with_input`](Self::with_input) set).
    pub fn input(&self) -> &str {
        match self {
            Self::InvalidImage { input, .. }
            | Self::TooLarge { input, .. }
            | Self::UnsupportedFormat { input, .. }
            | Self::InvalidMask { input, .. }
            | Self::MaskSizeMismatch { input, .. }
            | Self::InvalidDataUri { input, .. }
            | Self::FetchForbidden { input, .. }
            | Self::FetchFailed { input, .. }
            | Self::Encode { input, .. } => input,
        }
    }

    /// Replace the input label, e.g. `err.with_input("image_urls[1]")`.
    #[must_use]
    pub fn with_input(mut self, label: impl Into<String>) -> Self {
        let label = label.into();
        match &mut self {
            Self::InvalidImage { input, .. }
            | Self::TooLarge { input, .. }
            | Self::UnsupportedFormat { input, .. }
            | Self::InvalidMask { input, .. }
            | Self::MaskSizeMismatch { input, .. }
            | Self::InvalidDataUri { input, .. }
            | Self::FetchForbidden { input, .. }
            | Self::FetchFailed { input, .. }
            | Self::Encode { input, .. } => *input = label,
        }
        self
    }
}
