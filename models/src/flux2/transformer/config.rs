//! `Flux2TransformerConfig`: the DiT hyper-parameters, read from the checkpoint's own
//! `transformer/config.json`.
//!
//! Follows the `@register_to_config __init__` of `Flux2Transformer2DModel` in diffusers 0.42.1
//! `models/transformers/transformer_flux2.py`; every serde default below is the diffusers default
//! (which describes FLUX.2-dev, so a klein config must state its own values, as the real ones do).

use std::path::Path;

use serde::Deserialize;

use crate::{ModelError, Result};

/// Hyper-parameters of `Flux2Transformer2DModel`. Unknown keys (`_class_name`,
/// `_diffusers_version`, …) are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Flux2TransformerConfig {
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    #[serde(default = "default_in_channels")]
    pub in_channels: usize,
    /// `None` (JSON `null` or absent) means `in_channels`.
    #[serde(default)]
    pub out_channels: Option<usize>,
    /// Number of double-stream blocks.
    #[serde(default = "default_num_layers")]
    pub num_layers: usize,
    /// Number of single-stream blocks.
    #[serde(default = "default_num_single_layers")]
    pub num_single_layers: usize,
    #[serde(default = "default_attention_head_dim")]
    pub attention_head_dim: usize,
    #[serde(default = "default_num_attention_heads")]
    pub num_attention_heads: usize,
    /// Width of the text embeddings fed to `context_embedder`.
    #[serde(default = "default_joint_attention_dim")]
    pub joint_attention_dim: usize,
    /// Channels of the sinusoidal timestep (and guidance) embedding.
    #[serde(default = "default_timestep_guidance_channels")]
    pub timestep_guidance_channels: usize,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f64,
    /// RoPE dimensions per position axis (T, H, W, L); must sum to `attention_head_dim`.
    #[serde(default = "default_axes_dims_rope")]
    pub axes_dims_rope: Vec<usize>,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Epsilon of every LayerNorm and RMSNorm of the network.
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Whether the model has `time_guidance_embed.guidance_embedder` (FLUX.2-dev; not klein).
    #[serde(default = "default_guidance_embeds")]
    pub guidance_embeds: bool,
}

fn default_patch_size() -> usize {
    1
}
fn default_in_channels() -> usize {
    128
}
fn default_num_layers() -> usize {
    8
}
fn default_num_single_layers() -> usize {
    48
}
fn default_attention_head_dim() -> usize {
    128
}
fn default_num_attention_heads() -> usize {
    48
}
fn default_joint_attention_dim() -> usize {
    15360
}
fn default_timestep_guidance_channels() -> usize {
    256
}
fn default_mlp_ratio() -> f64 {
    3.0
}
fn default_axes_dims_rope() -> Vec<usize> {
    vec![32, 32, 32, 32]
}
fn default_rope_theta() -> f64 {
    2000.0
}
fn default_eps() -> f64 {
    1e-6
}
fn default_guidance_embeds() -> bool {
    true
}

impl Flux2TransformerConfig {
    /// Reads and validates a diffusers `transformer/config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: Self = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses and validates a config from JSON text.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(text).map_err(|e| ModelError::Config {
            path: "<json>".into(),
            reason: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// FLUX.2 [klein] 4B (`black-forest-labs/FLUX.2-klein-4B`, `transformer/config.json`).
    pub fn klein_4b() -> Self {
        Self {
            patch_size: 1,
            in_channels: 128,
            out_channels: None,
            num_layers: 5,
            num_single_layers: 20,
            attention_head_dim: 128,
            num_attention_heads: 24,
            joint_attention_dim: 7680,
            timestep_guidance_channels: 256,
            mlp_ratio: 3.0,
            axes_dims_rope: vec![32, 32, 32, 32],
            rope_theta: 2000.0,
            eps: 1e-6,
            guidance_embeds: false,
        }
    }

    /// Model width `D = num_attention_heads · attention_head_dim`.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Output channels per token before the patch factor (`out_channels or in_channels`).
    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// Width of `proj_out`: `patch_size² · out_channels`.
    pub fn proj_out_channels(&self) -> usize {
        self.patch_size * self.patch_size * self.out_channels()
    }

    /// Hidden width of the SwiGLU MLPs, `int(D · mlp_ratio)` as diffusers computes it.
    pub fn mlp_hidden_dim(&self) -> usize {
        (self.inner_dim() as f64 * self.mlp_ratio) as usize
    }

    /// Rejects configs this implementation cannot run faithfully.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Unsupported(format!("flux2 transformer: {m}")));
        let zero_fields = [
            ("patch_size", self.patch_size),
            ("in_channels", self.in_channels),
            ("attention_head_dim", self.attention_head_dim),
            ("num_attention_heads", self.num_attention_heads),
            ("joint_attention_dim", self.joint_attention_dim),
            (
                "timestep_guidance_channels",
                self.timestep_guidance_channels,
            ),
        ];
        for (name, v) in zero_fields {
            if v == 0 {
                return bad(format!("{name} must be > 0"));
            }
        }
        if self.out_channels == Some(0) {
            return bad("out_channels must be > 0".into());
        }
        if !self.timestep_guidance_channels.is_multiple_of(2) {
            return bad(format!(
                "timestep_guidance_channels = {} must be even",
                self.timestep_guidance_channels
            ));
        }
        if !self.attention_head_dim.is_multiple_of(2) {
            return bad(format!(
                "attention_head_dim = {} must be even",
                self.attention_head_dim
            ));
        }
        if self.axes_dims_rope.is_empty()
            || self
                .axes_dims_rope
                .iter()
                .any(|d| *d == 0 || !d.is_multiple_of(2))
        {
            return bad(format!(
                "axes_dims_rope = {:?} must be non-empty, positive and even",
                self.axes_dims_rope
            ));
        }
        let rope_sum: usize = self.axes_dims_rope.iter().sum();
        if rope_sum != self.attention_head_dim {
            return bad(format!(
                "sum(axes_dims_rope) = {rope_sum} ({:?}) != attention_head_dim = {}",
                self.axes_dims_rope, self.attention_head_dim
            ));
        }
        if !(self.mlp_ratio.is_finite() && self.mlp_ratio > 0.0) || self.mlp_hidden_dim() == 0 {
            return bad(format!("mlp_ratio = {} must be > 0", self.mlp_ratio));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(format!("rope_theta = {} must be > 0", self.rope_theta));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad(format!("eps = {} must be > 0", self.eps));
        }
        Ok(())
    }
}
