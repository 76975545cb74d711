//! FLUX.2 [klein] transformer (DiT): embeddings, shared modulations, double- and single-stream
//! blocks, output head, and its [`Denoiser`] implementation.
//!
//! Follows diffusers 0.42.1 `models/transformers/transformer_flux2.py`
//! (`Flux2Transformer2DModel.forward`, `Flux2TimestepGuidanceEmbeddings`, `Flux2Modulation`,
//! `AdaLayerNormContinuous` from `models/normalization.py`), as described in
//! `shared/reference/flux2-klein.md` §3.5. Weights use the diffusers checkpoint names; a BFL
//! single-file checkpoint is renamed first by [`super::bfl`].

mod blocks;
mod config;
mod layers;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{linear_no_bias, Linear, VarBuilder};

pub use config::Flux2TransformerConfig;

use crate::traits::{DenoiseInput, Denoiser, PositionIds};
use crate::{ModelError, Result};
use blocks::{check_tokens, DoubleBlock, Heads, Rope, SingleBlock};
use layers::{modulate, rope_tables, scale_timestep, timestep_sinusoid, ModParams};

/// `TimestepEmbedding`: `linear_2(silu(linear_1(sinusoid)))`, no biases.
#[derive(Debug, Clone)]
struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    fn new(channels: usize, dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            linear_1: linear_no_bias(channels, dim, vb.pp("linear_1"))?,
            linear_2: linear_no_bias(dim, dim, vb.pp("linear_2"))?,
        })
    }

    /// Embeds one value already multiplied by 1000 (`(1, D)`).
    fn forward(&self, t: f32, channels: usize, dtype: DType, device: &Device) -> Result<Tensor> {
        let proj = Tensor::from_vec(timestep_sinusoid(t, channels), (1, channels), device)?
            .to_dtype(dtype)?;
        let h = candle_nn::ops::silu(&self.linear_1.forward(&proj)?)?;
        Ok(self.linear_2.forward(&h)?)
    }
}

/// The FLUX.2 DiT (`Flux2Transformer2DModel`).
#[derive(Debug, Clone)]
pub struct Flux2Transformer {
    cfg: Flux2TransformerConfig,
    timestep_embedder: TimestepEmbedding,
    guidance_embedder: Option<TimestepEmbedding>,
    double_stream_modulation_img: Linear,
    double_stream_modulation_txt: Linear,
    single_stream_modulation: Linear,
    x_embedder: Linear,
    context_embedder: Linear,
    transformer_blocks: Vec<DoubleBlock>,
    single_transformer_blocks: Vec<SingleBlock>,
    norm_out_linear: Linear,
    proj_out: Linear,
    dtype: DType,
    device: Device,
}

impl Flux2Transformer {
    /// Builds the model from diffusers-named weights (`vb` rooted at the transformer's keys).
    /// The model runs in `vb`'s dtype and device.
    pub fn new(cfg: &Flux2TransformerConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let dim = cfg.inner_dim();
        let ch = cfg.timestep_guidance_channels;
        let heads = Heads {
            heads: cfg.num_attention_heads,
            head_dim: cfg.attention_head_dim,
            eps: cfg.eps,
        };
        let mlp = cfg.mlp_hidden_dim();
        let tge = vb.pp("time_guidance_embed");
        let guidance_embedder = if cfg.guidance_embeds {
            Some(TimestepEmbedding::new(
                ch,
                dim,
                tge.pp("guidance_embedder"),
            )?)
        } else {
            None
        };
        let modulation =
            |name: &str, sets: usize| linear_no_bias(dim, 3 * sets * dim, vb.pp(name).pp("linear"));
        let tb = vb.pp("transformer_blocks");
        let transformer_blocks = (0..cfg.num_layers)
            .map(|i| DoubleBlock::new(heads, mlp, tb.pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let sb = vb.pp("single_transformer_blocks");
        let single_transformer_blocks = (0..cfg.num_single_layers)
            .map(|i| SingleBlock::new(heads, mlp, sb.pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            timestep_embedder: TimestepEmbedding::new(ch, dim, tge.pp("timestep_embedder"))?,
            guidance_embedder,
            double_stream_modulation_img: modulation("double_stream_modulation_img", 2)?,
            double_stream_modulation_txt: modulation("double_stream_modulation_txt", 2)?,
            single_stream_modulation: modulation("single_stream_modulation", 1)?,
            x_embedder: linear_no_bias(cfg.in_channels, dim, vb.pp("x_embedder"))?,
            context_embedder: linear_no_bias(
                cfg.joint_attention_dim,
                dim,
                vb.pp("context_embedder"),
            )?,
            transformer_blocks,
            single_transformer_blocks,
            norm_out_linear: linear_no_bias(dim, 2 * dim, vb.pp("norm_out").pp("linear"))?,
            proj_out: linear_no_bias(dim, cfg.proj_out_channels(), vb.pp("proj_out"))?,
            dtype: vb.dtype(),
            device: vb.device().clone(),
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &Flux2TransformerConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `temb = timestep_embedder(t·1000) (+ guidance_embedder(g·1000))`, `(1, D)`.
    fn time_embedding(&self, timestep: f32, guidance: Option<f32>) -> Result<Tensor> {
        let ch = self.cfg.timestep_guidance_channels;
        let t = scale_timestep(timestep, self.dtype)?;
        let temb = self
            .timestep_embedder
            .forward(t, ch, self.dtype, &self.device)?;
        match (&self.guidance_embedder, guidance) {
            (Some(embedder), Some(g)) => {
                let g = scale_timestep(g, self.dtype)?;
                Ok((temb + embedder.forward(g, ch, self.dtype, &self.device)?)?)
            }
            _ => Ok(temb),
        }
    }

    /// Runs the DiT.
    ///
    /// * `img` `(B, N, in_channels)` packed image tokens, `img_ids` their `N` position ids;
    /// * `txt` `(B, L, joint_attention_dim)` text embeddings, `txt_ids` their `L` ids;
    /// * `timestep` as the pipeline passes it (`σ`, i.e. already divided by 1000);
    /// * `guidance` only used by models with a guidance embedder.
    ///
    /// Inputs are cast to the model's dtype; returns `(B, N, patch_size²·out_channels)` in the
    /// model's dtype.
    pub fn forward(
        &self,
        img: &Tensor,
        img_ids: &PositionIds,
        txt: &Tensor,
        txt_ids: &PositionIds,
        timestep: f32,
        guidance: Option<f32>,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let dim = cfg.inner_dim();
        let (b, n) = check_tokens("img", img, cfg.in_channels)?;
        let (bt, l) = check_tokens("txt", txt, cfg.joint_attention_dim)?;
        if bt != b {
            return Err(ModelError::Input(format!(
                "flux2 transformer: batch of img {:?} and txt {:?} differ",
                img.dims(),
                txt.dims()
            )));
        }
        if img_ids.len() != n || txt_ids.len() != l {
            return Err(ModelError::Input(format!(
                "flux2 transformer: {} img ids for img {:?}, {} txt ids for txt {:?}",
                img_ids.len(),
                img.dims(),
                txt_ids.len(),
                txt.dims()
            )));
        }
        if !timestep.is_finite() {
            return Err(ModelError::Input(format!(
                "flux2 transformer: timestep {timestep} is not finite"
            )));
        }

        // 1. Timestep embedding and the three shared modulations (silu(temb) → linear).
        let temb = self.time_embedding(timestep, guidance)?;
        let s = candle_nn::ops::silu(&temb)?;
        let m_img = ModParams::split(&self.double_stream_modulation_img.forward(&s)?, 2, dim)?;
        let m_txt = ModParams::split(&self.double_stream_modulation_txt.forward(&s)?, 2, dim)?;
        let m_single = ModParams::split(&self.single_stream_modulation.forward(&s)?, 1, dim)?;

        // 2. Input projections.
        let mut x = self
            .x_embedder
            .forward(&img.to_dtype(self.dtype)?.contiguous()?)?;
        let mut c = self
            .context_embedder
            .forward(&txt.to_dtype(self.dtype)?.contiguous()?)?;

        // 3. RoPE tables for [txt ; img].
        let (cos, sin) = rope_tables(
            &txt_ids.concat(img_ids),
            &cfg.axes_dims_rope,
            cfg.rope_theta,
            &self.device,
        )?;
        let rope = Rope { cos, sin };

        // 4. Double-stream blocks, then single-stream blocks on [txt ; img].
        for block in &self.transformer_blocks {
            (c, x) = block.forward(&x, &c, &m_img, &m_txt, &rope)?;
        }
        let mut h = Tensor::cat(&[&c, &x], 1)?;
        for block in &self.single_transformer_blocks {
            h = block.forward(&h, &m_single[0], &rope)?;
        }
        let x = h.narrow(1, l, n)?.contiguous()?;

        // 5. AdaLayerNormContinuous: emb = linear(silu(temb)) split as [scale, shift].
        let emb = self.norm_out_linear.forward(&s)?;
        let scale1p = (emb.narrow(1, 0, dim)?.unsqueeze(1)? + 1.0)?;
        let shift = emb.narrow(1, dim, dim)?.unsqueeze(1)?;
        let x = modulate(&x, &shift, &scale1p, cfg.eps)?;
        Ok(self.proj_out.forward(&x)?)
    }
}

impl Denoiser for Flux2Transformer {
    fn velocity(&self, input: &DenoiseInput<'_>) -> Result<Tensor> {
        self.forward(
            input.img,
            input.img_ids,
            input.txt,
            input.txt_ids,
            input.timestep,
            input.guidance,
        )
    }

    fn in_channels(&self) -> usize {
        self.cfg.in_channels
    }
}
