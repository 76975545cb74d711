//! Model-family traits: the seam between the edit sampler (`editd::pipeline`) and the networks.
//!
//! The sampling loop is written once over these traits; a new model family implements them.
//! Layout conventions (FLUX.2, see `shared/reference/flux2-klein.md` §2):
//! * image tokens are packed `(B, N, C)` with token `n = y·w + x`;
//! * position ids are host-side `[t, h, w, l]` quadruples, one per token, so any number of
//!   reference images can be appended with their own time offset;
//! * latents handed to / returned by the codec are *patchified and normalised* `(B, C, h, w)`.

use candle_core::{DType, Device, Tensor};

use crate::Result;

/// Position ids of a token sequence: one `[t, h, w, l]` per token (FLUX.2 uses 4 RoPE axes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PositionIds(pub Vec<[u32; 4]>);

impl PositionIds {
    /// Ids of an image token grid `h × w` with time offset `t`: `(t, y, x, 0)`, row-major.
    pub fn image_grid(t: u32, h: usize, w: usize) -> Self {
        let mut v = Vec::with_capacity(h * w);
        for y in 0..h {
            for x in 0..w {
                v.push([t, y as u32, x as u32, 0]);
            }
        }
        Self(v)
    }
    /// Ids of `len` text tokens: `(0, 0, 0, l)`.
    pub fn text(len: usize) -> Self {
        Self((0..len).map(|l| [0, 0, 0, l as u32]).collect())
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Appends `other` after `self`.
    pub fn concat(&self, other: &PositionIds) -> Self {
        let mut v = self.0.clone();
        v.extend_from_slice(&other.0);
        Self(v)
    }
}

/// Encoded prompt: per-token embeddings `(B, L, D_ctx)` and their position ids.
#[derive(Debug, Clone)]
pub struct PromptEmbeds {
    pub embeds: Tensor,
    pub ids: PositionIds,
}

/// Turns prompts into conditioning for the denoiser.
pub trait TextEncoder: Send {
    /// Encodes a batch of prompts (already plain text; any chat template is applied inside).
    fn encode(&self, prompts: &[String]) -> Result<PromptEmbeds>;
}

/// One call of the denoiser: everything the network sees at one step.
#[derive(Debug, Clone, Copy)]
pub struct DenoiseInput<'a> {
    /// Image tokens `(B, N_img, C)`: the noisy target tokens followed by any clean reference tokens.
    pub img: &'a Tensor,
    /// Ids of `img`, one per token.
    pub img_ids: &'a PositionIds,
    /// Text conditioning (from [`TextEncoder::encode`]).
    pub txt: &'a Tensor,
    /// Ids of `txt`.
    pub txt_ids: &'a PositionIds,
    /// The timestep as the reference pipeline passes it to the transformer (`σ·1000/1000`, f32);
    /// the network multiplies it by 1000 itself, as diffusers does.
    pub timestep: f32,
    /// Guidance value for guidance-distilled models; ignored by models without a guidance embedder.
    pub guidance: Option<f32>,
}

/// Predicts the flow-matching velocity for every image token.
pub trait Denoiser: Send {
    /// Returns `(B, N_img, C)`: a velocity for every token of `input.img` (callers keep the target part).
    fn velocity(&self, input: &DenoiseInput<'_>) -> Result<Tensor>;
    /// Channels of one packed latent token (128 for FLUX.2).
    fn in_channels(&self) -> usize;
}

/// Maps images to normalised, patchified latents and back.
pub trait LatentCodec: Send {
    /// `(B, 3, H, W)` in `[-1, 1]` (H, W multiples of [`LatentCodec::downscale`]) →
    /// `(B, C, H/s, W/s)` normalised latents (posterior mean, patchified, BN-normalised).
    fn encode(&self, image: &Tensor) -> Result<Tensor>;
    /// `(B, C, h, w)` normalised latents → `(B, 3, h·s, w·s)` in `[-1, 1]` (not clamped).
    fn decode(&self, latents: &Tensor) -> Result<Tensor>;
    /// Pixels per latent token side (16 for FLUX.2: VAE ×8, patch ×2).
    fn downscale(&self) -> usize;
    /// Channels of the normalised latent (128 for FLUX.2).
    fn latent_channels(&self) -> usize;
}

/// Where and in which precision a model is loaded.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    pub dtype: DType,
}

impl LoadOptions {
    /// f32 on CPU, bf16 on a GPU (the default the server uses).
    pub fn default_for(device: Device) -> Self {
        let dtype = if device.is_cpu() {
            DType::F32
        } else {
            DType::BF16
        };
        Self { device, dtype }
    }
}
