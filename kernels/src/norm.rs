//! Normalisation ops: `modulate` (LayerNorm without affine, then `x·(1+scale)+shift`),
//! `rms_norm_heads` (per-head RMSNorm over the last dim) and `group_norm_silu` (the VAE's
//! GroupNorm + SiLU). CPU references are hand-fused loops accumulating in f64; CUDA kernels for
//! the first two live in `cuda/fused.cu`.

use crate::cpu::{dispatch_float, per_batch, slice};
use candle_core::{
    bail, CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType,
};
use rayon::prelude::*;

/// `LayerNorm(x; eps, no affine) · (1 + scale) + shift` for `x` (B, L, D) with `shift`/`scale`
/// (B, D) or (B, 1, D) broadcast over the L tokens. Output dtype = input dtype; statistics in f32
/// (CUDA) / f64 (CPU).
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f64) -> Result<Tensor> {
    let (b, _l, d) = x.dims3()?;
    let shift = per_batch(shift, b, d, "modulate: shift")?;
    let scale = per_batch(scale, b, d, "modulate: scale")?;
    if x.device().is_metal() {
        return crate::unfused::modulate(x, &shift, &scale, eps);
    }
    x.contiguous()?
        .apply_op3_no_bwd(&shift, &scale, &Modulate { eps: eps as f32 })
}

struct Modulate {
    eps: f32,
}

fn modulate_cpu<T: WithDType>(
    x: &[T],
    shift: &[T],
    scale: &[T],
    tokens: usize,
    d: usize,
    eps: f32,
) -> Result<Vec<T>> {
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .enumerate()
        .for_each(|(row, (o, xr))| {
            let b = (row / tokens) * d;
            let (sh, sc) = (&shift[b..b + d], &scale[b..b + d]);
            let mean = xr.iter().map(|v| v.to_f64()).sum::<f64>() / d as f64;
            let var = xr.iter().map(|v| (v.to_f64() - mean).powi(2)).sum::<f64>() / d as f64;
            let rstd = 1.0 / (var + eps as f64).sqrt();
            for i in 0..d {
                let n = (xr[i].to_f64() - mean) * rstd;
                o[i] = T::from_f64(n * (1.0 + sc[i].to_f64()) + sh[i].to_f64());
            }
        });
    Ok(out)
}

impl CustomOp3 for Modulate {
    fn name(&self) -> &'static str {
        "editd-modulate"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, tokens, d) = l1.shape().dims3()?;
        fn run<T: WithDType>(
            x: &[T],
            sh: &[T],
            sc: &[T],
            ls: [&Layout; 3],
            tokens: usize,
            d: usize,
            eps: f32,
        ) -> Result<Vec<T>> {
            let x = slice(x, ls[0], "modulate: x")?;
            let sh = slice(sh, ls[1], "modulate: shift")?;
            let sc = slice(sc, ls[2], "modulate: scale")?;
            modulate_cpu(x, sh, sc, tokens, d, eps)
        }
        let out = dispatch_float!(
            "modulate",
            run,
            (s1, s2, s3),
            [l1, l2, l3],
            tokens,
            d,
            self.eps
        );
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let out = crate::cuda::modulate(s1, l1, s2, l2, s3, l3, self.eps)?;
        Ok((out, l1.shape().clone()))
    }
}

/// RMSNorm over the last dim (Dh) with weight `w` (Dh): `x · rsqrt(mean(x²) + eps) · w`, for the
/// per-head q/k norm on (B, H, L, Dh) (any rank works). Same maths as
/// `candle_nn::ops::rms_norm`, but rounded once (candle-nn's slow path rounds before `· w`).
pub fn rms_norm_heads(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let dh = x.dim(candle_core::D::Minus1)?;
    if w.dims1()? != dh {
        bail!("rms_norm_heads: w is {:?}, x is {:?}", w.shape(), x.shape());
    }
    if x.device().is_metal() {
        return candle_nn::ops::rms_norm(x, w, eps as f32);
    }
    let w = w.to_dtype(x.dtype())?.contiguous()?;
    x.contiguous()?
        .apply_op2_no_bwd(&w, &RmsNormRows { eps: eps as f32 })
}

struct RmsNormRows {
    eps: f32,
}

fn rms_norm_cpu<T: WithDType>(x: &[T], w: &[T], eps: f32) -> Result<Vec<T>> {
    let d = w.len();
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(d.max(1) * 64)
        .zip(x.par_chunks(d.max(1) * 64))
        .for_each(|(o, xs)| {
            for (o, xr) in o.chunks_mut(d).zip(xs.chunks(d)) {
                let ms = xr.iter().map(|v| v.to_f64().powi(2)).sum::<f64>() / d as f64;
                let r = 1.0 / (ms + eps as f64).sqrt();
                for i in 0..d {
                    o[i] = T::from_f64(xr[i].to_f64() * r * w[i].to_f64());
                }
            }
        });
    Ok(out)
}

impl CustomOp2 for RmsNormRows {
    fn name(&self) -> &'static str {
        "editd-rms-norm-heads"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        fn run<T: WithDType>(x: &[T], w: &[T], ls: [&Layout; 2], eps: f32) -> Result<Vec<T>> {
            let x = slice(x, ls[0], "rms_norm_heads: x")?;
            let w = slice(w, ls[1], "rms_norm_heads: w")?;
            rms_norm_cpu(x, w, eps)
        }
        let out = dispatch_float!("rms_norm_heads", run, (s1, s2), [l1, l2], self.eps);
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let out = crate::cuda::rms_norm_rows(s1, l1, s2, l2, self.eps)?;
        Ok((out, l1.shape().clone()))
    }
}

/// `silu(GroupNorm(x; groups, w, b, eps))` for `x` (B, C, *spatial) with per-channel `w`, `b` (C).
/// CPU: one fused pass per (batch, group). GPU: the candle composition (no own kernel yet).
pub fn group_norm_silu(
    x: &Tensor,
    groups: usize,
    w: &Tensor,
    b: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let c = x.dim(1)?;
    if groups == 0 || c % groups != 0 || w.dims1()? != c || b.dims1()? != c {
        bail!(
            "group_norm_silu: x {:?}, groups {groups}, w {:?}, b {:?}",
            x.shape(),
            w.shape(),
            b.shape()
        );
    }
    if !x.device().is_cpu() {
        return crate::unfused::group_norm_silu(x, groups, w, b, eps);
    }
    let w = w.to_dtype(x.dtype())?.contiguous()?;
    let b = b.to_dtype(x.dtype())?.contiguous()?;
    x.contiguous()?.apply_op3_no_bwd(
        &w,
        &b,
        &GroupNormSilu {
            groups,
            eps: eps as f32,
        },
    )
}

struct GroupNormSilu {
    groups: usize,
    eps: f32,
}

/// x is (B, C, HW) contiguous: each (batch, group) is one contiguous run of `C/groups · hw`.
fn group_norm_silu_hw<T: WithDType>(
    x: &[T],
    w: &[T],
    b: &[T],
    groups: usize,
    hw: usize,
    eps: f32,
) -> Result<Vec<T>> {
    let c = w.len();
    let cg = c / groups;
    let run = cg * hw;
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(run)
        .zip(x.par_chunks(run))
        .enumerate()
        .for_each(|(i, (o, xr))| {
            let c0 = (i % groups) * cg;
            let n = run as f64;
            let mean = xr.iter().map(|v| v.to_f64()).sum::<f64>() / n;
            let var = xr.iter().map(|v| (v.to_f64() - mean).powi(2)).sum::<f64>() / n;
            let rstd = 1.0 / (var + eps as f64).sqrt();
            for (k, (o, xc)) in o.chunks_mut(hw).zip(xr.chunks(hw)).enumerate() {
                let (wc, bc) = (w[c0 + k].to_f64(), b[c0 + k].to_f64());
                for (o, v) in o.iter_mut().zip(xc) {
                    let y = (v.to_f64() - mean) * rstd * wc + bc;
                    *o = T::from_f64(y / (1.0 + (-y).exp()));
                }
            }
        });
    Ok(out)
}

impl CustomOp3 for GroupNormSilu {
    fn name(&self) -> &'static str {
        "editd-group-norm-silu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = l1.shape().dims();
        let hw: usize = dims[2..].iter().product();
        fn run<T: WithDType>(
            x: &[T],
            w: &[T],
            b: &[T],
            ls: [&Layout; 3],
            groups: usize,
            hw: usize,
            eps: f32,
        ) -> Result<Vec<T>> {
            let x = slice(x, ls[0], "group_norm_silu: x")?;
            let w = slice(w, ls[1], "group_norm_silu: w")?;
            let b = slice(b, ls[2], "group_norm_silu: b")?;
            group_norm_silu_hw(x, w, b, groups, hw, eps)
        }
        let out = dispatch_float!(
            "group_norm_silu",
            run,
            (s1, s2, s3),
            [l1, l2, l3],
            self.groups,
            hw,
            self.eps
        );
        Ok((out, l1.shape().clone()))
    }
}
