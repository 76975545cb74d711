//! The two FLUX.2 DiT block kinds: the double-stream block (separate image / text weights, joint
//! attention) and the single-stream block (fused qkv+MLP projection over `[txt ; img]`).
//!
//! Follows diffusers 0.42.1 `models/transformers/transformer_flux2.py`: `Flux2TransformerBlock`
//! with `Flux2Attention` + `Flux2AttnProcessor` + `Flux2FeedForward`, and
//! `Flux2SingleTransformerBlock` with `Flux2ParallelSelfAttention` +
//! `Flux2ParallelSelfAttnProcessor`. No biases anywhere; the modulations are shared and computed
//! once per forward by the parent model.

use candle_core::{Module, Tensor, D};
use candle_nn::{linear_no_bias, Linear, VarBuilder};

use super::layers::{attention, gated_residual, rms_norm, rope_apply, swiglu, ModParams};
use crate::{ModelError, Result};

/// RoPE tables for the joint `[txt ; img]` sequence, `(S, head_dim/2)` f32 each.
#[derive(Debug, Clone)]
pub(crate) struct Rope {
    pub cos: Tensor,
    pub sin: Tensor,
}

/// Head geometry shared by both block kinds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heads {
    pub heads: usize,
    pub head_dim: usize,
    pub eps: f64,
}

impl Heads {
    fn dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// `(B, S, D)` → per-head RMSNorm'd `(B, S, H, hd)`.
    fn split_norm(&self, x: &Tensor, norm: &Tensor) -> Result<Tensor> {
        let (b, s, _) = x.dims3()?;
        let x = x.reshape((b, s, self.heads, self.head_dim))?;
        rms_norm(&x, norm, self.eps)
    }

    /// `(B, H, S, hd)` → `(B, S, D)`.
    fn merge(&self, x: &Tensor) -> Result<Tensor> {
        let (b, _, s, _) = x.dims4()?;
        Ok(x.transpose(1, 2)?.reshape((b, s, self.dim()))?)
    }
}

/// `Flux2FeedForward`: `linear_out(silu(h[:F]) · h[F:])`, `h = linear_in(x)`.
#[derive(Debug, Clone)]
pub(crate) struct FeedForward {
    linear_in: Linear,
    linear_out: Linear,
}

impl FeedForward {
    pub fn new(dim: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            linear_in: linear_no_bias(dim, 2 * hidden, vb.pp("linear_in"))?,
            linear_out: linear_no_bias(hidden, dim, vb.pp("linear_out"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.linear_in.forward(x)?;
        Ok(self.linear_out.forward(&swiglu(&h)?)?)
    }
}

/// `Flux2TransformerBlock` (checkpoint prefix `transformer_blocks.N`).
#[derive(Debug, Clone)]
pub(crate) struct DoubleBlock {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    norm_q: Tensor,
    norm_k: Tensor,
    add_q_proj: Linear,
    add_k_proj: Linear,
    add_v_proj: Linear,
    norm_added_q: Tensor,
    norm_added_k: Tensor,
    to_out: Linear,
    to_add_out: Linear,
    ff: FeedForward,
    ff_context: FeedForward,
    heads: Heads,
}

impl DoubleBlock {
    pub fn new(heads: Heads, mlp_hidden: usize, vb: VarBuilder) -> Result<Self> {
        let dim = heads.dim();
        let hd = heads.head_dim;
        let attn = vb.pp("attn");
        let lin = |name: &str| linear_no_bias(dim, dim, attn.pp(name));
        let norm = |name: &str| attn.pp(name).get(hd, "weight");
        Ok(Self {
            to_q: lin("to_q")?,
            to_k: lin("to_k")?,
            to_v: lin("to_v")?,
            norm_q: norm("norm_q")?,
            norm_k: norm("norm_k")?,
            add_q_proj: lin("add_q_proj")?,
            add_k_proj: lin("add_k_proj")?,
            add_v_proj: lin("add_v_proj")?,
            norm_added_q: norm("norm_added_q")?,
            norm_added_k: norm("norm_added_k")?,
            to_out: linear_no_bias(dim, dim, attn.pp("to_out").pp("0"))?,
            to_add_out: lin("to_add_out")?,
            ff: FeedForward::new(dim, mlp_hidden, vb.pp("ff"))?,
            ff_context: FeedForward::new(dim, mlp_hidden, vb.pp("ff_context"))?,
            heads,
        })
    }

    /// One double-stream step on image tokens `x` `(B, N, D)` and text tokens `c` `(B, L, D)`;
    /// returns the updated `(c, x)`.
    pub fn forward(
        &self,
        x: &Tensor,
        c: &Tensor,
        m_img: &[ModParams],
        m_txt: &[ModParams],
        rope: &Rope,
    ) -> Result<(Tensor, Tensor)> {
        let (h, eps) = (&self.heads, self.heads.eps);
        let txt_len = c.dim(1)?;
        let img_len = x.dim(1)?;
        let nx = m_img[0].modulate(x, eps)?;
        let nc = m_txt[0].modulate(c, eps)?;

        // Joint [txt ; img] q, k, v in (B, H, S, hd).
        let joint = |txt: Tensor, img: Tensor| -> Result<Tensor> {
            Ok(Tensor::cat(&[txt, img], 1)?.transpose(1, 2)?.contiguous()?)
        };
        let q = joint(
            h.split_norm(&self.add_q_proj.forward(&nc)?, &self.norm_added_q)?,
            h.split_norm(&self.to_q.forward(&nx)?, &self.norm_q)?,
        )?;
        let k = joint(
            h.split_norm(&self.add_k_proj.forward(&nc)?, &self.norm_added_k)?,
            h.split_norm(&self.to_k.forward(&nx)?, &self.norm_k)?,
        )?;
        let split = |t: Tensor| -> Result<Tensor> {
            let (b, s, _) = t.dims3()?;
            Ok(t.reshape((b, s, h.heads, h.head_dim))?)
        };
        let v = joint(
            split(self.add_v_proj.forward(&nc)?)?,
            split(self.to_v.forward(&nx)?)?,
        )?;
        let q = rope_apply(&q, &rope.cos, &rope.sin)?;
        let k = rope_apply(&k, &rope.cos, &rope.sin)?;
        let a = h.merge(&attention(&q, &k, &v)?)?;
        let a_txt = a.narrow(1, 0, txt_len)?.contiguous()?;
        let a_img = a.narrow(1, txt_len, img_len)?.contiguous()?;

        let x = gated_residual(x, &m_img[0].gate, &self.to_out.forward(&a_img)?)?;
        let ff = self.ff.forward(&m_img[1].modulate(&x, eps)?)?;
        let x = gated_residual(&x, &m_img[1].gate, &ff)?;

        let c = gated_residual(c, &m_txt[0].gate, &self.to_add_out.forward(&a_txt)?)?;
        let ff = self.ff_context.forward(&m_txt[1].modulate(&c, eps)?)?;
        let c = gated_residual(&c, &m_txt[1].gate, &ff)?;
        Ok((c, x))
    }
}

/// `Flux2SingleTransformerBlock` (checkpoint prefix `single_transformer_blocks.N`).
#[derive(Debug, Clone)]
pub(crate) struct SingleBlock {
    to_qkv_mlp_proj: Linear,
    norm_q: Tensor,
    norm_k: Tensor,
    to_out: Linear,
    mlp_hidden: usize,
    heads: Heads,
}

impl SingleBlock {
    pub fn new(heads: Heads, mlp_hidden: usize, vb: VarBuilder) -> Result<Self> {
        let dim = heads.dim();
        let attn = vb.pp("attn");
        Ok(Self {
            to_qkv_mlp_proj: linear_no_bias(
                dim,
                3 * dim + 2 * mlp_hidden,
                attn.pp("to_qkv_mlp_proj"),
            )?,
            norm_q: attn.pp("norm_q").get(heads.head_dim, "weight")?,
            norm_k: attn.pp("norm_k").get(heads.head_dim, "weight")?,
            to_out: linear_no_bias(dim + mlp_hidden, dim, attn.pp("to_out"))?,
            mlp_hidden,
            heads,
        })
    }

    /// One single-stream step on the joint sequence `h` `(B, L+N, D)`.
    pub fn forward(&self, hs: &Tensor, m: &ModParams, rope: &Rope) -> Result<Tensor> {
        let h = &self.heads;
        let (b, s, dim) = hs.dims3()?;
        let n = m.modulate(hs, h.eps)?;
        let p = self.to_qkv_mlp_proj.forward(&n)?;
        // q|k|v → (3, B, H, S, hd) in one copy.
        let qkv = p
            .narrow(D::Minus1, 0, 3 * dim)?
            .reshape((b, s, 3, h.heads, h.head_dim))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let q = rms_norm(&qkv.get(0)?, &self.norm_q, h.eps)?;
        let k = rms_norm(&qkv.get(1)?, &self.norm_k, h.eps)?;
        let v = qkv.get(2)?;
        let q = rope_apply(&q, &rope.cos, &rope.sin)?;
        let k = rope_apply(&k, &rope.cos, &rope.sin)?;
        let a = h.merge(&attention(&q, &k, &v)?)?;
        let mlp = swiglu(&p.narrow(D::Minus1, 3 * dim, 2 * self.mlp_hidden)?)?;
        let out = self.to_out.forward(&Tensor::cat(&[a, mlp], D::Minus1)?)?;
        gated_residual(hs, &m.gate, &out)
    }
}

/// Checks a `(B, S, C)` input and says its shape in the error.
pub(crate) fn check_tokens(name: &str, t: &Tensor, channels: usize) -> Result<(usize, usize)> {
    match *t.dims() {
        [b, s, c] if c == channels && s > 0 && b > 0 => Ok((b, s)),
        _ => Err(ModelError::Input(format!(
            "flux2 transformer: `{name}` must be (B, S, {channels}) with B, S > 0, got {:?}",
            t.dims()
        ))),
    }
}
