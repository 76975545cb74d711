//! The typed [`EditJob`] a run carries once validated (see `validate`), and its mapping onto
//! the pipeline's `EditInputs`.
//!
//! Fields follow the gpt-image-2/edit `input` schema (`prompt`, `image_urls`, `mask_url`,
//! `num_images`, `quality`, `output_format`, `image_size`, `sync_mode`) plus editd extensions
//! (`seed`, `num_inference_steps`, `guidance_scale`, `strength`, `paste_back`); serialised, it is
//! the run's echoed `input`. `quality` resolves through `pipeline::profiles` (area cap; steps on
//! non-distilled models).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::pipeline::profiles::{profile, Quality};
use crate::pipeline::{EditInputs, PipelineDefaults};
use image::{GrayImage, RgbImage};

pub const MAX_PROMPT_CHARS: usize = 32_000;
pub const MAX_IMAGES: usize = 16;
pub const MAX_NUM_IMAGES: u64 = 4;
pub const MIN_SIDE: u32 = 64;
pub const MAX_SIDE: u32 = 4096;
/// Largest explicit output area (4 MP, FLUX.2's comfortable maximum).
pub const MAX_AREA: u64 = 4 * 1024 * 1024;
pub const MAX_STEPS: u64 = 100;
pub const MAX_GUIDANCE: f64 = 30.0;
pub const MAX_CLIENT_REF: usize = 255;
pub const MAX_CALLBACK_URL: usize = 2048;

/// `output_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormatName {
    Png,
    Jpeg,
    Webp,
}

impl From<OutputFormatName> for crate::image_io::OutputFormat {
    fn from(f: OutputFormatName) -> Self {
        match f {
            OutputFormatName::Png => Self::Png,
            OutputFormatName::Jpeg => Self::Jpeg,
            OutputFormatName::Webp => Self::Webp,
        }
    }
}

/// `image_size`, resolved: `auto` (follow the first image) or explicit pixels (multiples of 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSize {
    Auto,
    Explicit { width: u32, height: u32 },
}

impl Serialize for ImageSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ImageSize::Auto => s.serialize_str("auto"),
            ImageSize::Explicit { width, height } => {
                json!({"width": width, "height": height}).serialize(s)
            }
        }
    }
}

impl<'de> Deserialize<'de> for ImageSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        parse_size(&v).map_err(|(_, m)| serde::de::Error::custom(m))
    }
}

/// A validated edit request: what the supervisor turns into `pipeline::EditInputs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EditJob {
    pub prompt: String,
    /// `http(s)://…` or `runflow://assets/{id}` (data: URIs are stored as assets at admission).
    pub image_urls: Vec<String>,
    pub mask_url: Option<String>,
    pub num_images: u32,
    pub quality: Quality,
    pub output_format: OutputFormatName,
    pub image_size: ImageSize,
    pub sync_mode: bool,
    pub seed: u64,
    /// `None` only while the model's defaults are unknown (model still loading); filled at dispatch.
    pub num_inference_steps: Option<u32>,
    pub guidance_scale: Option<f32>,
    pub strength: f32,
    pub paste_back: bool,
    /// JPEG/WebP quality 0–100 (extension, as OpenAI's `output_compression`); `None` = default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_compression: Option<u8>,
}

impl EditJob {
    /// Fills the model-dependent defaults; true if anything changed.
    pub fn resolve_defaults(&mut self, d: &PipelineDefaults) -> bool {
        let mut changed = false;
        if self.num_inference_steps.is_none() {
            self.num_inference_steps = Some(profile(d, self.quality).steps as u32);
            changed = true;
        }
        if self.guidance_scale.is_none() {
            self.guidance_scale = Some(d.default_guidance);
            changed = true;
        }
        changed
    }

    /// The pipeline's view of this job, with the decoded images (the seam runs → engine).
    pub fn to_inputs(
        &self,
        images: Vec<RgbImage>,
        mask: Option<GrayImage>,
        d: &PipelineDefaults,
    ) -> EditInputs {
        let p = profile(d, self.quality);
        EditInputs {
            prompt: self.prompt.clone(),
            images,
            mask,
            size: match self.image_size {
                ImageSize::Auto => None,
                ImageSize::Explicit { width, height } => Some((width, height)),
            },
            max_area: Some(p.max_area),
            steps: self
                .num_inference_steps
                .map(|s| s as usize)
                .unwrap_or(p.steps),
            guidance: self.guidance_scale.unwrap_or(d.default_guidance),
            strength: self.strength,
            seed: self.seed,
            num_images: self.num_images as usize,
            paste_back: self.paste_back,
            noise: None,
        }
    }

    /// The run's `input` as echoed on the wire.
    pub fn to_echo(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

pub(crate) fn parse_size(v: &Value) -> Result<ImageSize, (&'static str, String)> {
    let explicit = |w: u64, h: u64| -> Result<ImageSize, (&'static str, String)> {
        let r = |x: u64| (((x + 8) / 16) * 16) as u32;
        let (w, h) = (r(w), r(h));
        if w < MIN_SIDE || h < MIN_SIDE || w > MAX_SIDE || h > MAX_SIDE {
            return Err((
                "value_error",
                format!("width and height must be within {MIN_SIDE}..={MAX_SIDE} pixels"),
            ));
        }
        if (w as u64) * (h as u64) > MAX_AREA {
            return Err((
                "value_error",
                format!("width × height must be at most {MAX_AREA} pixels"),
            ));
        }
        Ok(ImageSize::Explicit {
            width: w,
            height: h,
        })
    };
    match v {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(ImageSize::Auto),
            "square_hd" => explicit(1024, 1024),
            "square" => explicit(512, 512),
            "portrait_4_3" => explicit(768, 1024),
            "portrait_16_9" => explicit(576, 1024),
            "landscape_4_3" => explicit(1024, 768),
            "landscape_16_9" => explicit(1024, 576),
            other => match other.split_once('x').map(|(a, b)| (a.parse::<u64>(), b.parse::<u64>())) {
                Some((Ok(w), Ok(h))) => explicit(w, h),
                _ => Err(("enum", "Input should be 'auto', 'square_hd', 'square', 'portrait_4_3', 'portrait_16_9', 'landscape_4_3', 'landscape_16_9', 'WxH' or {width, height}".into())),
            },
        },
        Value::Object(o) => {
            if o.keys().any(|k| k != "width" && k != "height") {
                return Err(("extra_forbidden", "image_size takes only width and height".into()));
            }
            match (o.get("width").and_then(Value::as_u64), o.get("height").and_then(Value::as_u64)) {
                (Some(w), Some(h)) => explicit(w, h),
                _ => Err(("missing", "image_size needs integer width and height".into())),
            }
        }
        _ => Err(("type_error", "image_size should be a preset name or {width, height}".into())),
    }
}
