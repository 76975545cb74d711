//! Small functional pieces of the FLUX.2 DiT: timestep sinusoid, RoPE tables and application,
//! non-affine LayerNorm, adaLN modulation, SwiGLU and softmax attention.
//!
//! Follows diffusers 0.42.1 `models/transformers/transformer_flux2.py` (`Flux2PosEmbed`,
//! `Flux2SwiGLU`, `Flux2Modulation`, `Flux2AttnProcessor`) and `models/embeddings.py`
//! (`get_timestep_embedding`, `get_1d_rotary_pos_embed`, `apply_rotary_emb`). Each op is a plain
//! function on `Tensor` so a fused kernel (`editd-kernels`) can replace it without touching the
//! blocks.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, D};

use crate::traits::PositionIds;
use crate::Result;

/// Rounds `value` to `dtype` and multiplies it by 1000 in that dtype, as
/// `timestep.to(hidden_states.dtype) * 1000` does; returns the result as f32.
pub(crate) fn scale_timestep(value: f32, dtype: DType) -> Result<f32> {
    let t = Tensor::new(&[value], &Device::Cpu)?
        .to_dtype(dtype)?
        .affine(1000.0, 0.0)?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?;
    Ok(t[0])
}

/// `get_timestep_embedding(t, channels, flip_sin_to_cos=True, downscale_freq_shift=0)` for one
/// timestep, in f32 exactly as diffusers orders the operations: `[cos(t·f) | sin(t·f)]` with
/// `f_j = exp(−ln(10⁴)·j / (channels/2))`.
pub(crate) fn timestep_sinusoid(t: f32, channels: usize) -> Vec<f32> {
    let half = channels / 2;
    let neg_log = -(10000f64.ln()) as f32;
    let mut out = vec![0f32; channels];
    for j in 0..half {
        let exponent = neg_log * j as f32 / half as f32;
        let arg = t * exponent.exp();
        out[j] = arg.cos();
        out[half + j] = arg.sin();
    }
    out
}

/// RoPE angle tables for a token sequence: `cos`, `sin` of shape `(S, head_dim/2)` in f32, one
/// column per rotated pair `(2j, 2j+1)`, axes concatenated in order.
///
/// `Flux2PosEmbed`: for axis `i` with `d_i` dims, the angle of pair `j` at position `p` is
/// `p · θ^(−2j/d_i)`, computed in f64 and cast to f32 (diffusers repeat-interleaves the same
/// values ×2; the pair form is what `rope_i` consumes).
pub(crate) fn rope_tables(
    ids: &PositionIds,
    axes_dims: &[usize],
    theta: f64,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let pairs: usize = axes_dims.iter().map(|d| d / 2).sum();
    let seq = ids.len();
    let mut cos = vec![0f32; seq * pairs];
    let mut sin = vec![0f32; seq * pairs];
    let mut col = 0;
    for (axis, &dim) in axes_dims.iter().enumerate() {
        let half = dim / 2;
        let freqs: Vec<f64> = (0..half)
            .map(|j| 1.0 / theta.powf((2 * j) as f64 / dim as f64))
            .collect();
        // Positions repeat a lot (text ids, grid rows); compute each distinct one once.
        let mut memo: HashMap<u32, Vec<(f32, f32)>> = HashMap::new();
        for (s, id) in ids.0.iter().enumerate() {
            let p = id.get(axis).copied().unwrap_or(0);
            let row = memo.entry(p).or_insert_with(|| {
                // diffusers: `ids.float()` (exact for ids < 2²⁴), then an f64 outer product.
                let pos = p as f32 as f64;
                freqs
                    .iter()
                    .map(|f| {
                        let (sn, cs) = (pos * f).sin_cos();
                        (cs as f32, sn as f32)
                    })
                    .collect()
            });
            let base = s * pairs + col;
            for (j, (c, sn)) in row.iter().enumerate() {
                cos[base + j] = *c;
                sin[base + j] = *sn;
            }
        }
        col += half;
    }
    let cos = Tensor::from_vec(cos, (seq, pairs), device)?;
    let sin = Tensor::from_vec(sin, (seq, pairs), device)?;
    Ok((cos, sin))
}

/// Rotates interleaved pairs of `x` `(B, H, S, head_dim)`:
/// `out[2j] = x[2j]·cos − x[2j+1]·sin`, `out[2j+1] = x[2j+1]·cos + x[2j]·sin`.
/// Computed in f32 (as `apply_rotary_emb` does) and returned in `x`'s dtype.
pub(crate) fn rope_apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?.contiguous()?;
    let out = candle_nn::rotary_emb::rope_i(&xf, cos, sin)?;
    Ok(out.to_dtype(dtype)?)
}

/// `nn.LayerNorm(dim, elementwise_affine=False, eps)` over the last dim, two-pass in f32
/// (mean, then the mean of squared deviations), returned in `x`'s dtype.
pub(crate) fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let mean = xf.mean_keepdim(D::Minus1)?;
    let centred = xf.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let out = centred.broadcast_mul(&(var + eps)?.sqrt()?.recip()?)?;
    Ok(out.to_dtype(dtype)?)
}

/// One `(shift, scale, gate)` set of a shared modulation, each `(B|1, 1, D)`; `scale1p` holds
/// `1 + scale` so the blocks do not recompute it.
#[derive(Debug, Clone)]
pub(crate) struct ModParams {
    pub shift: Tensor,
    pub scale1p: Tensor,
    pub gate: Tensor,
}

impl ModParams {
    /// Splits a modulation output `(B, 3·sets·D)` into `sets` parameter sets
    /// (`Flux2Modulation.split`: chunks in the order shift, scale, gate).
    pub fn split(m: &Tensor, sets: usize, dim: usize) -> Result<Vec<ModParams>> {
        let m = m.unsqueeze(1)?;
        (0..sets)
            .map(|i| {
                let chunk = |k: usize| m.narrow(D::Minus1, (3 * i + k) * dim, dim);
                Ok(ModParams {
                    shift: chunk(0)?,
                    scale1p: (chunk(1)? + 1.0)?,
                    gate: chunk(2)?,
                })
            })
            .collect()
    }
}

/// `LN(x)·(1 + scale) + shift`, with `scale1p = 1 + scale`.
pub(crate) fn modulate(x: &Tensor, shift: &Tensor, scale1p: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(layer_norm(x, eps)?
        .broadcast_mul(scale1p)?
        .broadcast_add(shift)?)
}

impl ModParams {
    /// [`modulate`] with this set's shift and scale.
    pub fn modulate(&self, x: &Tensor, eps: f64) -> Result<Tensor> {
        modulate(x, &self.shift, &self.scale1p, eps)
    }
}

/// `x + gate·y`.
pub(crate) fn gated_residual(x: &Tensor, gate: &Tensor, y: &Tensor) -> Result<Tensor> {
    Ok((x + y.broadcast_mul(gate)?)?)
}

/// `Flux2SwiGLU`: `silu(x[..., :F]) · x[..., F:]` with `F` half the last dim.
pub(crate) fn swiglu(x: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let gate = x.narrow(D::Minus1, 0, half)?;
    let up = x.narrow(D::Minus1, half, half)?;
    Ok((candle_nn::ops::silu(&gate)? * up)?)
}

/// Largest attention-score block materialised at once (elements); bounds memory on long
/// sequences by processing (batch·head) slices in groups.
const MAX_SCORE_ELEMS: usize = 1 << 28;

/// Unmasked softmax attention with scale `1/√head_dim` on `(B, H, S, head_dim)` tensors.
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    attention_chunked(q, k, v, MAX_SCORE_ELEMS)
}

fn attention_chunked(q: &Tensor, k: &Tensor, v: &Tensor, max_elems: usize) -> Result<Tensor> {
    let (b, h, s, hd) = q.dims4()?;
    let (_, _, s_kv, _) = k.dims4()?;
    let scale = 1.0 / (hd as f64).sqrt();
    let q = q.reshape((b * h, s, hd))?;
    let k = k.reshape((b * h, s_kv, hd))?;
    let v = v.reshape((b * h, s_kv, hd))?;
    let group = (max_elems / (s * s_kv).max(1)).clamp(1, b * h);
    let mut outs = Vec::with_capacity((b * h).div_ceil(group));
    let mut start = 0;
    while start < b * h {
        let len = group.min(b * h - start);
        let (qs, ks, vs) = (
            q.narrow(0, start, len)?,
            k.narrow(0, start, len)?,
            v.narrow(0, start, len)?,
        );
        let scores = (qs.matmul(&ks.t()?)? * scale)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        outs.push(probs.matmul(&vs)?);
        start += len;
    }
    let out = if outs.len() == 1 {
        outs.pop().expect("one chunk")
    } else {
        Tensor::cat(&outs, 0)?
    };
    Ok(out.reshape((b, h, s, hd))?)
}

/// Per-head RMSNorm (`torch.nn.RMSNorm(head_dim)`) over the last dim of `x`.
pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(candle_nn::ops::rms_norm(
        &x.contiguous()?,
        weight,
        eps as f32,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestep_sinusoid_is_cos_then_sin() {
        let e = timestep_sinusoid(500.0, 8);
        // f_j = exp(-ln(1e4)·j/4): 1, 0.1, 0.01, 0.001
        let f = [1.0f64, 0.1, 0.01, 0.001];
        for j in 0..4 {
            assert!((e[j] as f64 - (500.0 * f[j]).cos()).abs() < 1e-4, "cos {j}");
            assert!(
                (e[4 + j] as f64 - (500.0 * f[j]).sin()).abs() < 1e-4,
                "sin {j}"
            );
        }
    }

    #[test]
    fn scale_timestep_rounds_in_model_dtype() -> Result<()> {
        assert_eq!(scale_timestep(0.5, DType::F32)?, 500.0);
        // bf16(0.9674) = 0.96875, ·1000 = 968.75 → bf16 968.0
        assert_eq!(scale_timestep(0.9674, DType::BF16)?, 968.0);
        Ok(())
    }

    #[test]
    fn rope_tables_match_hand_computed_angles() -> Result<()> {
        let ids = PositionIds(vec![[0, 0, 0, 3], [10, 2, 5, 0]]);
        let (cos, sin) = rope_tables(&ids, &[4, 2, 2], 2000.0, &Device::Cpu)?;
        assert_eq!(cos.dims(), &[2, 4]);
        let cos = cos.to_vec2::<f32>()?;
        let sin = sin.to_vec2::<f32>()?;
        // axis 0 (d=4): freqs 1, 2000^-0.5; axis 1 (d=2): 1; axis 2 (d=2): 1; axis 3 absent.
        let f1 = 1.0 / 2000f64.sqrt();
        let want = [[0.0, 0.0, 0.0, 0.0], [10.0, 10.0 * f1, 2.0, 5.0]];
        for s in 0..2 {
            for j in 0..4 {
                let a: f64 = want[s][j];
                assert!((cos[s][j] as f64 - a.cos()).abs() < 1e-6, "cos[{s}][{j}]");
                assert!((sin[s][j] as f64 - a.sin()).abs() < 1e-6, "sin[{s}][{j}]");
            }
        }
        Ok(())
    }

    #[test]
    fn rope_apply_rotates_interleaved_pairs() -> Result<()> {
        let x = Tensor::new(&[1f32, 2., 3., 4.], &Device::Cpu)?.reshape((1, 1, 1, 4))?;
        let a = [0.3f32, -1.1];
        let cos = Tensor::new(&[[a[0].cos(), a[1].cos()]], &Device::Cpu)?;
        let sin = Tensor::new(&[[a[0].sin(), a[1].sin()]], &Device::Cpu)?;
        let y = rope_apply(&x, &cos, &sin)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let (c0, s0, c1, s1) = (a[0].cos(), a[0].sin(), a[1].cos(), a[1].sin());
        let want = [
            1. * c0 - 2. * s0,
            2. * c0 + 1. * s0,
            3. * c1 - 4. * s1,
            4. * c1 + 3. * s1,
        ];
        for (g, w) in y.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{y:?} vs {want:?}");
        }
        Ok(())
    }

    #[test]
    fn layer_norm_is_two_pass_and_stable_with_a_large_mean() -> Result<()> {
        let x = Tensor::new(
            &[[1e4f32 + 1.0, 1e4 - 1.0, 1e4 + 1.0, 1e4 - 1.0]],
            &Device::Cpu,
        )?;
        let y = layer_norm(&x, 1e-6)?.to_vec2::<f32>()?;
        for (g, w) in y[0].iter().zip([1f32, -1., 1., -1.]) {
            assert!((g - w).abs() < 1e-5, "{y:?}");
        }
        Ok(())
    }

    #[test]
    fn attention_chunks_agree_with_one_block() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (2, 3, 5, 4), &dev)?;
        let k = Tensor::randn(0f32, 1., (2, 3, 5, 4), &dev)?;
        let v = Tensor::randn(0f32, 1., (2, 3, 5, 4), &dev)?;
        let out = attention_chunked(&q, &k, &v, 25)?;
        // reference: plain formula
        let scores = (q.matmul(&k.t()?)? * 0.5)?;
        let want = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?;
        let err = (out - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 1e-6, "{err}");
        Ok(())
    }

    #[test]
    fn mod_params_split_order_is_shift_scale_gate() -> Result<()> {
        let m = Tensor::arange(0f32, 12., &Device::Cpu)?.reshape((1, 12))?;
        let p = ModParams::split(&m, 2, 2)?;
        assert_eq!(p[1].shift.flatten_all()?.to_vec1::<f32>()?, [6., 7.]);
        assert_eq!(p[1].scale1p.flatten_all()?.to_vec1::<f32>()?, [9., 10.]);
        assert_eq!(p[1].gate.flatten_all()?.to_vec1::<f32>()?, [10., 11.]);
        Ok(())
    }
}
