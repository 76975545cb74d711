//! The edit algorithm, written once over the model-family traits of `editd_models::traits`.
//!
//! This module is the engine ⇄ pipeline seam: the engine thread owns a `Box<dyn EditPipeline>`
//! and calls [`EditPipeline::run`] with decoded images (no URLs, no files, no HTTP here).

use std::time::Duration;

use image::{GrayImage, RgbImage};

/// Everything one edit needs, already fetched, decoded and validated.
#[derive(Debug, Clone)]
pub struct EditInputs {
    pub prompt: String,
    /// Reference images in order. With `mask`, the first is the image edited (the source) and
    /// the rest are extra references. Empty means text-to-image.
    pub images: Vec<RgbImage>,
    /// Inpainting mask at the source's size, 255 = repaint, 0 = keep (already polarity-normalised).
    pub mask: Option<GrayImage>,
    /// Explicit output size (multiples of 16). `None` = follow the first image (after `max_area`).
    pub size: Option<(u32, u32)>,
    /// Area cap in pixels for the output (quality profile). `None` = the model's own cap.
    pub max_area: Option<u64>,
    pub steps: usize,
    pub guidance: f32,
    /// Inpainting strength in (0, 1]; 1.0 = start from pure noise.
    pub strength: f32,
    /// Seed of image 0; image `i` uses `seed + i`.
    pub seed: u64,
    pub num_images: usize,
    /// Paste the source back outside the mask after decoding (feathered inside the mask edge).
    pub paste_back: bool,
    /// Explicit initial noise `(1, C, H/16, W/16)` (patchified, unpacked) replacing the seeded RNG
    /// for image 0 — used to reproduce a reference run exactly. `None` in the server.
    pub noise: Option<candle_core::Tensor>,
}

/// Wall time spent per stage of one run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StageTimings {
    pub text_encode_ms: u64,
    pub reference_encode_ms: u64,
    pub denoise_ms: u64,
    pub decode_ms: u64,
    pub total_ms: u64,
}

/// The result of one run: `num_images` images of the same size, with the seed each used.
#[derive(Debug, Clone)]
pub struct EditOutput {
    pub images: Vec<RgbImage>,
    pub seeds: Vec<u64>,
    pub width: u32,
    pub height: u32,
    pub steps: usize,
    pub timings: StageTimings,
    /// Final latents of image 0 after the last step, `(1, C, h, w)`, unpacked and still in the
    /// normalised model space (for `editd edit --latents-out`).
    pub latents: Option<candle_core::Tensor>,
}

/// Progress and cancellation, reported by the pipeline between denoising steps.
pub trait StepCtx {
    /// Called after step `step` (1-based) of `total` (all images of the run counted).
    fn on_step(&mut self, step: usize, total: usize);
    /// Polled between steps; `true` makes the pipeline stop with [`PipelineError::Cancelled`].
    fn cancelled(&self) -> bool;
}

/// Defaults a loaded checkpoint prescribes (used to resolve quality profiles).
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineDefaults {
    pub model_id: String,
    /// Guidance-distilled checkpoints ignore `guidance` and run 4 steps.
    pub is_distilled: bool,
    pub default_steps: usize,
    pub default_guidance: f32,
}

/// Errors of the pipeline layer.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("canceled")]
    Cancelled,
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("model error: {0}")]
    Model(#[from] editd_models::ModelError),
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("model load failed: {0}")]
    Load(String),
}

/// One loaded edit model, ready to run jobs. Owned by exactly one engine thread.
pub trait EditPipeline: Send {
    fn defaults(&self) -> PipelineDefaults;
    fn run(&mut self, job: &EditInputs, ctx: &mut dyn StepCtx)
        -> Result<EditOutput, PipelineError>;
}

/// Wall-clock helper for stage timings.
pub(crate) fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

pub mod device;
pub mod engine_pipeline;
pub mod latents;
pub mod load;
pub mod mask;
pub mod noise;
pub mod preprocess;
pub mod profiles;
pub mod sampler;
pub mod schedule;
