//! Untrusted images: fetching (SSRF-guarded), `data:` URIs, decoding (limits, EXIF orientation,
//! colour → RGB8), mask polarity, encoding outputs, and atomic artifact writes.
//!
//! Everything here takes bytes or URLs from clients and treats them as hostile: sizes are
//! checked before allocation, decoder panics are caught, formats are sniffed from magic bytes,
//! and every error names its input and carries a stable code ([`ImageIoError::code`]).
//! This module never sees tensors: it hands `RgbImage`/`GrayImage` to the pipeline.

mod atomic;
mod data_uri;
mod decode;
mod encode;
mod error;
mod fetch;
mod pool;
mod ssrf;

pub use atomic::{is_temp_artifact, write_atomic};
pub use data_uri::parse_data_uri;
pub use decode::{
    decode_image, decode_mask, describe_unsupported, flatten_to_rgb8, pil_luma, probe_image,
    sniff_format, DecodeLimits, ImageInfo,
};
pub use encode::{encode_image, OutputFormat, DEFAULT_JPEG_QUALITY};
pub use error::ImageIoError;
pub use fetch::{
    describe_reqwest, pinned_client_builder, CheckedTarget, Fetcher, HostResolver, SystemResolver,
};
pub use pool::DecodePool;
pub use ssrf::{
    check_addr, check_url, classify_ip, classify_ipv4, classify_ipv6, display_url, embedded_ipv4,
    CheckedUrl, FetchPolicy, IpClass,
};

pub use image::{GrayImage, ImageFormat, RgbImage};
