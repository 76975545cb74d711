//! The unfused candle compositions of every op: what model code would write without this crate.
//! They are the oracle in the always-run tests, the baseline in `benches/kernels.rs`, and the
//! fallback on backends without an own kernel (Metal; GroupNorm+SiLU on CUDA). Statistics are
//! taken in f32 for f16/bf16 inputs, like candle-nn's `*_slow` norms.

use candle_core::{bail, DType, Result, Tensor, D};

fn upcast(x: &Tensor) -> Result<Tensor> {
    match x.dtype() {
        DType::F16 | DType::BF16 => x.to_dtype(DType::F32),
        _ => Ok(x.clone()),
    }
}

/// LayerNorm without affine over the last dim, in f32, returned in f32.
fn layer_norm_f32(x: &Tensor, eps: f64) -> Result<Tensor> {
    let x = upcast(x)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    xc.broadcast_div(&(var + eps)?.sqrt()?)
}

/// Per-batch (B, D) or (B, 1, D) vector as (B, 1, D) in `dtype`.
fn per_batch(t: &Tensor, dtype: DType) -> Result<Tensor> {
    let t = match t.rank() {
        2 => t.unsqueeze(1)?,
        3 => t.clone(),
        _ => bail!("expected (B, D) or (B, 1, D), got {:?}", t.shape()),
    };
    t.to_dtype(dtype)
}

/// `LayerNorm(x) · (1 + scale) + shift`: layer norm, `+1`, mul, add (4+ kernels, 3 temporaries).
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f64) -> Result<Tensor> {
    let n = layer_norm_f32(x, eps)?;
    let scale = per_batch(scale, DType::F32)?;
    let shift = per_batch(shift, DType::F32)?;
    n.broadcast_mul(&(scale + 1.0)?)?
        .broadcast_add(&shift)?
        .to_dtype(x.dtype())
}

/// `x + gate · y` as a broadcast mul and an add.
pub fn gated_residual(x: &Tensor, gate: &Tensor, y: &Tensor) -> Result<Tensor> {
    let gate = per_batch(gate, x.dtype())?;
    x + y.broadcast_mul(&gate)?
}

/// candle-nn's unfused RMSNorm (`rms_norm_slow`: f32 statistics, rounds before `· w`).
pub fn rms_norm_heads(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let w = w.to_dtype(x.dtype())?;
    candle_nn::ops::rms_norm_slow(x, &w, eps as f32)
}

/// Interleaved RoPE with reshapes: split pairs, rotate, stack back (f32 inside).
pub fn rope_interleaved(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, h, l, dh) = x.dims4()?;
    let xf = upcast(x)?.reshape((b, h, l, dh / 2, 2))?;
    let x0 = xf.narrow(4, 0, 1)?.squeeze(4)?;
    let x1 = xf.narrow(4, 1, 1)?.squeeze(4)?;
    let table = |t: &Tensor| -> Result<Tensor> {
        let t = t.to_dtype(DType::F32)?;
        match t.rank() {
            2 => t.reshape((1, 1, l, dh / 2)),
            _ => t.reshape((b, 1, l, dh / 2)),
        }
    };
    let (cos, sin) = (table(cos)?, table(sin)?);
    let o0 = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
    let o1 = (x1.broadcast_mul(&cos)? + x0.broadcast_mul(&sin)?)?;
    Tensor::stack(&[o0, o1], 4)?
        .reshape((b, h, l, dh))?
        .to_dtype(x.dtype())
}

/// candle-nn's `swiglu`: chunk, silu, mul.
pub fn swiglu(h: &Tensor) -> Result<Tensor> {
    candle_nn::ops::swiglu(h)
}

/// GroupNorm (f32 statistics per (batch, group)) with per-channel affine, then SiLU.
pub fn group_norm_silu(
    x: &Tensor,
    groups: usize,
    w: &Tensor,
    b: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let (bs, c) = (dims[0], dims[1]);
    let mut bshape = vec![1usize; dims.len()];
    bshape[1] = c;
    let xf = upcast(x)?.reshape((bs, groups, ()))?;
    let mean = xf.mean_keepdim(D::Minus1)?;
    let xc = xf.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let n = xc.broadcast_div(&(var + eps)?.sqrt()?)?.reshape(dims)?;
    let w = w.to_dtype(DType::F32)?.reshape(bshape.clone())?;
    let b = b.to_dtype(DType::F32)?.reshape(bshape)?;
    n.broadcast_mul(&w)?
        .broadcast_add(&b)?
        .silu()?
        .to_dtype(x.dtype())
}

/// Full softmax attention in f32, materialising the whole (Lq × Lk) score matrix.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let (qf, kf, vf) = (upcast(q)?, upcast(k)?, upcast(v)?);
    let scores = (qf.matmul(&kf.t()?.contiguous()?)? * scale)?;
    candle_nn::ops::softmax_last_dim(&scores)?
        .matmul(&vf.contiguous()?)?
        .to_dtype(q.dtype())
}
