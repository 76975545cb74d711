//! Qwen3 decoder stack as a prompt encoder: returns the hidden states of chosen layers.
//!
//! Follows transformers `models/qwen3/modeling_qwen3.py` (`Qwen3Model`, `Qwen3DecoderLayer`,
//! `Qwen3Attention`, `Qwen3RMSNorm`, `Qwen3RotaryEmbedding`), used by diffusers 0.42.1
//! `pipelines/flux2/pipeline_flux2_klein.py` (`_get_qwen3_prompt_embeds`).
//!
//! Why not `candle_transformers::models::qwen3` (0.11.1): its `Model::forward` takes no attention
//! mask (the CPU path runs a causal-only flash kernel, so pad keys could not be masked), it has no
//! way to return intermediate hidden states, and it loads all 36 layers plus the final norm and
//! an LM head. FLUX.2 needs `hidden_states[k]` for k in the taps, computed at *every* one of the
//! 512 positions (pad queries included, see `shared/reference/flux2-klein.md` §1.1) under a causal
//! AND key-padding mask. This compact port builds only the layers up to the deepest tap.

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Embedding, Linear, VarBuilder};
use serde::Deserialize;

use crate::{ModelError, Result};

fn default_rope_theta() -> f64 {
    1_000_000.0
}
fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_hidden_act() -> String {
    "silu".to_string()
}
fn default_max_position_embeddings() -> usize {
    40960
}

/// RoPE parameters as newer transformers write them (`rope_parameters`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RopeParameters {
    #[serde(default)]
    pub rope_type: Option<String>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
}

/// `Qwen3Config` (transformers `models/qwen3/configuration_qwen3.py`), read from the checkpoint's
/// `text_encoder/config.json`. Fields this encoder does not use are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Qwen3Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub use_sliding_window: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

impl Qwen3Config {
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    /// θ of the default RoPE (`rope_parameters.rope_theta` wins over the legacy `rope_theta`).
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.rope_theta)
            .unwrap_or(self.rope_theta)
    }

    /// Rejects configurations this port does not implement exactly.
    pub fn validate(&self) -> Result<()> {
        let unsupported =
            |m: String| Err(ModelError::Unsupported(format!("Qwen3 text encoder: {m}")));
        if self.hidden_act != "silu" {
            return unsupported(format!("hidden_act `{}` (only silu)", self.hidden_act));
        }
        if self.use_sliding_window {
            return unsupported("use_sliding_window = true".into());
        }
        let rope_type = self
            .rope_parameters
            .as_ref()
            .and_then(|p| p.rope_type.clone());
        if let Some(t) = rope_type.filter(|t| t != "default") {
            return unsupported(format!("rope_type `{t}` (only default)"));
        }
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return unsupported("rope_scaling is set (only plain RoPE)".into());
        }
        if self.num_kv_heads() == 0 || !self.num_attention_heads.is_multiple_of(self.num_kv_heads())
        {
            return unsupported(format!(
                "num_attention_heads {} not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.num_kv_heads()
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return unsupported(format!("odd head_dim {}", self.head_dim()));
        }
        Ok(())
    }
}

/// `Qwen3RMSNorm`: `w · (x·rsqrt(mean(x²)+eps))`, the normalisation in f32, cast back to the
/// input dtype before the weight is applied (as upstream).
#[derive(Debug, Clone)]
pub struct Qwen3RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl Qwen3RmsNorm {
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            eps,
        })
    }
}

impl Module for Qwen3RmsNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dtype = x.dtype();
        let x32 = x.to_dtype(DType::F32)?;
        let var = x32.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = x32.broadcast_mul(&(var + self.eps)?.sqrt()?.recip()?)?;
        normed.to_dtype(dtype)?.broadcast_mul(&self.weight)
    }
}

/// `Qwen3MLP`: `down(silu(gate(x)) · up(x))`.
#[derive(Debug, Clone)]
struct Qwen3Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Qwen3Mlp {
    fn new(cfg: &Qwen3Config, vb: VarBuilder) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: candle_nn::linear_no_bias(h, i, vb.pp("gate_proj"))?,
            up_proj: candle_nn::linear_no_bias(h, i, vb.pp("up_proj"))?,
            down_proj: candle_nn::linear_no_bias(i, h, vb.pp("down_proj"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = candle_nn::ops::silu(&self.gate_proj.forward(x)?)?;
        let up = self.up_proj.forward(x)?;
        Ok(self.down_proj.forward(&(gate * up)?)?)
    }
}

fn linear(inp: usize, out: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    Ok(if bias {
        candle_nn::linear(inp, out, vb)?
    } else {
        candle_nn::linear_no_bias(inp, out, vb)?
    })
}

/// `Qwen3Attention`: GQA with per-head RMSNorm on q and k before neox RoPE.
#[derive(Debug, Clone)]
struct Qwen3Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: Qwen3RmsNorm,
    k_norm: Qwen3RmsNorm,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Qwen3Attention {
    fn new(cfg: &Qwen3Config, vb: VarBuilder) -> Result<Self> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim());
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_kv_heads());
        let b = cfg.attention_bias;
        Ok(Self {
            q_proj: linear(h, nh * hd, b, vb.pp("q_proj"))?,
            k_proj: linear(h, nkv * hd, b, vb.pp("k_proj"))?,
            v_proj: linear(h, nkv * hd, b, vb.pp("v_proj"))?,
            o_proj: linear(nh * hd, h, b, vb.pp("o_proj"))?,
            q_norm: Qwen3RmsNorm::new(hd, cfg.rms_norm_eps, vb.pp("q_norm"))?,
            k_norm: Qwen3RmsNorm::new(hd, cfg.rms_norm_eps, vb.pp("k_norm"))?,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: hd,
        })
    }

    /// `x` (B, L, H); `rope` = (cos, sin) each (L, head_dim/2); `mask` additive (B, 1, L, L) f32.
    fn forward(&self, x: &Tensor, rope: &(Tensor, Tensor), mask: &Tensor) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let dtype = x.dtype();
        let heads = |t: Tensor, n: usize| t.reshape((b, l, n, self.head_dim));
        let q = self
            .q_norm
            .forward(&heads(self.q_proj.forward(x)?, self.num_heads)?)?;
        let k = self
            .k_norm
            .forward(&heads(self.k_proj.forward(x)?, self.num_kv_heads)?)?;
        let v = heads(self.v_proj.forward(x)?, self.num_kv_heads)?;
        let q = q.transpose(1, 2)?.contiguous()?;
        let k = k.transpose(1, 2)?.contiguous()?;
        let v = v.transpose(1, 2)?.contiguous()?;
        let (cos, sin) = rope;
        let q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
        let groups = self.num_heads / self.num_kv_heads;
        let k = repeat_kv(&k, groups)?;
        let v = repeat_kv(&v, groups)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?.to_dtype(DType::F32)?;
        let scores = scores.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
        let out = probs.matmul(&v)?; // (B, nh, L, hd)
        let out = out
            .transpose(1, 2)?
            .reshape((b, l, self.num_heads * self.head_dim))?;
        Ok(self.o_proj.forward(&out)?)
    }
}

fn repeat_kv(x: &Tensor, n_rep: usize) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.clone());
    }
    let (b, nkv, l, d) = x.dims4()?;
    Ok(x.unsqueeze(2)?
        .broadcast_as((b, nkv, n_rep, l, d))?
        .reshape((b, nkv * n_rep, l, d))?)
}

/// `Qwen3DecoderLayer`: pre-norm attention and MLP, each with a residual.
#[derive(Debug, Clone)]
struct Qwen3DecoderLayer {
    self_attn: Qwen3Attention,
    mlp: Qwen3Mlp,
    input_layernorm: Qwen3RmsNorm,
    post_attention_layernorm: Qwen3RmsNorm,
}

impl Qwen3DecoderLayer {
    fn new(cfg: &Qwen3Config, vb: VarBuilder) -> Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        Ok(Self {
            self_attn: Qwen3Attention::new(cfg, vb.pp("self_attn"))?,
            mlp: Qwen3Mlp::new(cfg, vb.pp("mlp"))?,
            input_layernorm: Qwen3RmsNorm::new(h, eps, vb.pp("input_layernorm"))?,
            post_attention_layernorm: Qwen3RmsNorm::new(h, eps, vb.pp("post_attention_layernorm"))?,
        })
    }

    fn forward(&self, x: &Tensor, rope: &(Tensor, Tensor), mask: &Tensor) -> Result<Tensor> {
        let h = self
            .self_attn
            .forward(&self.input_layernorm.forward(x)?, rope, mask)?;
        let x = (x + h)?;
        let h = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(&x)?)?;
        Ok((x + h)?)
    }
}

/// The Qwen3 stack up to the deepest requested tap. `hidden_states[k]` follows transformers:
/// index 0 is the embedding output, index k the output of 0-based layer k−1, and index
/// `num_hidden_layers` is the *final-normed* output (only then is `model.norm` loaded).
#[derive(Debug, Clone)]
pub struct Qwen3Encoder {
    embed_tokens: Embedding,
    layers: Vec<Qwen3DecoderLayer>,
    norm: Option<Qwen3RmsNorm>,
    taps: Vec<usize>,
    cfg: Qwen3Config,
    inv_freq: Vec<f32>,
}

impl Qwen3Encoder {
    /// Builds the encoder from `vb` rooted at the checkpoint root (keys `model.embed_tokens`,
    /// `model.layers.N.*`, `model.norm`). Only layers `0..max(taps)` are requested from `vb`.
    pub fn new(cfg: &Qwen3Config, taps: &[usize], vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let deepest = *taps
            .iter()
            .max()
            .ok_or_else(|| ModelError::Input("Qwen3 encoder: no hidden-state taps".into()))?;
        if deepest > cfg.num_hidden_layers {
            return Err(ModelError::Unsupported(format!(
                "Qwen3 tap hidden_states[{deepest}] but the model has {} layers",
                cfg.num_hidden_layers
            )));
        }
        let vb_m = vb.pp("model");
        let embed_tokens =
            candle_nn::embedding(cfg.vocab_size, cfg.hidden_size, vb_m.pp("embed_tokens"))?;
        let layers = (0..deepest)
            .map(|i| Qwen3DecoderLayer::new(cfg, vb_m.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let norm = if deepest == cfg.num_hidden_layers {
            Some(Qwen3RmsNorm::new(
                cfg.hidden_size,
                cfg.rms_norm_eps,
                vb_m.pp("norm"),
            )?)
        } else {
            None
        };
        let hd = cfg.head_dim();
        let theta = cfg.rope_theta() as f32;
        // As upstream: inv_freq = 1 / θ^(arange(0, d, 2) / d), all in f32.
        let inv_freq = (0..hd)
            .step_by(2)
            .map(|i| 1f32 / theta.powf(i as f32 / hd as f32))
            .collect();
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            taps: taps.to_vec(),
            cfg: cfg.clone(),
            inv_freq,
        })
    }

    pub fn config(&self) -> &Qwen3Config {
        &self.cfg
    }
    pub fn taps(&self) -> &[usize] {
        &self.taps
    }
    /// Width of one token of [`Qwen3Encoder::forward`]'s output: `taps · hidden_size`.
    pub fn output_dim(&self) -> usize {
        self.taps.len() * self.cfg.hidden_size
    }

    /// cos/sin tables `(L, head_dim/2)` for positions `0..L`, computed in f32 as upstream.
    fn rope_tables(&self, l: usize, dtype: DType, dev: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut freqs = Vec::with_capacity(l * half);
        for p in 0..l {
            freqs.extend(self.inv_freq.iter().map(|f| p as f32 * f));
        }
        let freqs = Tensor::from_vec(freqs, (l, half), dev)?;
        Ok((freqs.cos()?.to_dtype(dtype)?, freqs.sin()?.to_dtype(dtype)?))
    }

    /// Additive mask `(B, 1, L, L)`: 0 where key j ≤ query i and `attention_mask[b, j] = 1`,
    /// `f32::MIN` elsewhere (transformers' causal + key-padding mask).
    pub fn attention_bias(attention_mask: &Tensor) -> Result<Tensor> {
        let (b, l) = attention_mask.dims2()?;
        let keep = attention_mask.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let mut bias = vec![0f32; b * l * l];
        for (bi, row) in keep.iter().enumerate() {
            for i in 0..l {
                for (j, &k) in row.iter().enumerate() {
                    if j > i || k == 0 {
                        bias[(bi * l + i) * l + j] = f32::MIN;
                    }
                }
            }
        }
        Ok(Tensor::from_vec(
            bias,
            (b, 1, l, l),
            attention_mask.device(),
        )?)
    }

    /// `input_ids` (B, L) integer, `attention_mask` (B, L) with 1 = real token. Positions are
    /// `0..L`. Returns `(B, L, taps·hidden)`: per token the concatenation of the tapped hidden
    /// states in tap order (`[h9 | h18 | h27]` for FLUX.2 klein).
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let (b, l) = input_ids.dims2()?;
        if attention_mask.dims() != [b, l] {
            return Err(ModelError::Input(format!(
                "Qwen3 encoder: attention_mask shape {:?} != input_ids shape {:?}",
                attention_mask.dims(),
                input_ids.dims()
            )));
        }
        let mut h = self.embed_tokens.forward(input_ids)?;
        let dev = h.device().clone();
        let rope = self.rope_tables(l, h.dtype(), &dev)?;
        let mask = Self::attention_bias(&attention_mask.to_device(&dev)?)?;
        let mut taps: Vec<Option<Tensor>> = vec![None; self.taps.len()];
        let mut record = |idx: usize, h: &Tensor| {
            for (slot, &t) in taps.iter_mut().zip(&self.taps) {
                if t == idx {
                    *slot = Some(h.clone());
                }
            }
        };
        record(0, &h);
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h, &rope, &mask)?;
            if i + 1 == self.cfg.num_hidden_layers {
                if let Some(norm) = &self.norm {
                    h = norm.forward(&h)?;
                }
            }
            record(i + 1, &h);
        }
        let taps = taps.into_iter().flatten().collect::<Vec<_>>();
        Ok(Tensor::cat(&taps, D::Minus1)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_is_causal_and_key_padding() {
        let m = Tensor::new(&[[1u32, 1, 0, 0]], &Device::Cpu).unwrap();
        let bias = Qwen3Encoder::attention_bias(&m).unwrap();
        let v = bias
            .squeeze(0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let allowed: Vec<Vec<bool>> = v
            .iter()
            .map(|r| r.iter().map(|&x| x == 0.0).collect())
            .collect();
        // Pad queries 2 and 3 attend to the two real tokens only.
        assert_eq!(allowed[0], [true, false, false, false]);
        assert_eq!(allowed[1], [true, true, false, false]);
        assert_eq!(allowed[2], [true, true, false, false]);
        assert_eq!(allowed[3], [true, true, false, false]);
    }

    #[test]
    fn config_parses_legacy_and_new_rope() {
        let legacy: Qwen3Config = serde_json::from_str(
            r#"{"vocab_size":10,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":2,
                "num_attention_heads":2,"num_key_value_heads":1,"head_dim":4,"rope_theta":1000.0}"#,
        )
        .unwrap();
        assert_eq!(legacy.rope_theta(), 1000.0);
        let new: Qwen3Config = serde_json::from_str(
            r#"{"vocab_size":10,"hidden_size":8,"intermediate_size":16,"num_hidden_layers":2,
                "num_attention_heads":2,"rope_parameters":{"rope_type":"default","rope_theta":5.0}}"#,
        )
        .unwrap();
        assert_eq!(new.rope_theta(), 5.0);
        assert_eq!(new.head_dim(), 4);
        assert_eq!(new.num_kv_heads(), 2);
        new.validate().unwrap();
    }
}
