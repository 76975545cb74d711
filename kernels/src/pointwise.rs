//! Pointwise ops: `gated_residual` (x + gate·y), `swiglu` (silu(a)·b over the two halves of the
//! last dim) and `rope_interleaved` (RoPE on adjacent pairs). CPU references are hand-fused
//! loops computing in f32 (f64 for nothing here: one multiply-add per element); CUDA kernels
//! live in `cuda/fused.cu`.

use crate::cpu::{dispatch_float, per_batch, slice};
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType,
};
use rayon::prelude::*;

/// Rows per rayon task for the pointwise loops.
const CHUNK: usize = 1 << 14;

/// `x + gate · y` for `x`, `y` (B, L, D) and `gate` (B, D) or (B, 1, D) broadcast over tokens.
pub fn gated_residual(x: &Tensor, gate: &Tensor, y: &Tensor) -> Result<Tensor> {
    let (b, _l, d) = x.dims3()?;
    if y.dims() != x.dims() {
        bail!("gated_residual: x {:?} vs y {:?}", x.shape(), y.shape());
    }
    let gate = per_batch(gate, b, d, "gated_residual: gate")?;
    if x.device().is_metal() {
        return crate::unfused::gated_residual(x, &gate, y);
    }
    x.contiguous()?
        .apply_op3_no_bwd(&gate, &y.contiguous()?, &GatedResidual)
}

struct GatedResidual;

fn gated_residual_cpu<T: WithDType>(x: &[T], g: &[T], y: &[T], per_batch: usize) -> Vec<T> {
    let d = g.len() / (x.len() / per_batch).max(1);
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(per_batch)
        .zip(x.par_chunks(per_batch).zip(y.par_chunks(per_batch)))
        .enumerate()
        .for_each(|(bi, (o, (x, y)))| {
            let g = &g[bi * d..(bi + 1) * d];
            for ((o, x), y) in o.chunks_mut(d).zip(x.chunks(d)).zip(y.chunks(d)) {
                for i in 0..d {
                    let v = x[i].to_f64() as f32 + g[i].to_f64() as f32 * y[i].to_f64() as f32;
                    o[i] = T::from_f64(v as f64);
                }
            }
        });
    out
}

impl CustomOp3 for GatedResidual {
    fn name(&self) -> &'static str {
        "editd-gated-residual"
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
        let (_, l, d) = l1.shape().dims3()?;
        fn run<T: WithDType>(
            x: &[T],
            g: &[T],
            y: &[T],
            ls: [&Layout; 3],
            per_batch: usize,
        ) -> Result<Vec<T>> {
            let x = slice(x, ls[0], "gated_residual: x")?;
            let g = slice(g, ls[1], "gated_residual: gate")?;
            let y = slice(y, ls[2], "gated_residual: y")?;
            Ok(gated_residual_cpu(x, g, y, per_batch))
        }
        let out = dispatch_float!("gated_residual", run, (s1, s2, s3), [l1, l2, l3], l * d);
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
        let out = crate::cuda::gated_residual(s1, l1, s2, l2, s3, l3)?;
        Ok((out, l1.shape().clone()))
    }
}

/// `silu(h[..., :F]) · h[..., F:]` for `h` (..., 2F); output (..., F).
pub fn swiglu(h: &Tensor) -> Result<Tensor> {
    let two_f = h.dim(candle_core::D::Minus1)?;
    if two_f % 2 != 0 {
        bail!("swiglu: last dim must be even, got {:?}", h.shape());
    }
    if h.device().is_metal() {
        return crate::unfused::swiglu(h);
    }
    h.contiguous()?.apply_op1_no_bwd(&Swiglu)
}

struct Swiglu;

fn swiglu_out_shape(s: &Shape) -> Shape {
    let mut dims = s.dims().to_vec();
    if let Some(last) = dims.last_mut() {
        *last /= 2;
    }
    Shape::from(dims)
}

fn swiglu_cpu<T: WithDType>(h: &[T], f: usize) -> Vec<T> {
    let mut out = vec![T::zero(); h.len() / 2];
    let rows = (CHUNK / f.max(1)).max(1);
    out.par_chunks_mut(rows * f)
        .zip(h.par_chunks(rows * 2 * f))
        .for_each(|(o, h)| {
            for (o, h) in o.chunks_mut(f).zip(h.chunks(2 * f)) {
                let (a, g) = h.split_at(f);
                for i in 0..f {
                    let a = a[i].to_f64() as f32;
                    o[i] = T::from_f64((a / (1.0 + (-a).exp()) * g[i].to_f64() as f32) as f64);
                }
            }
        });
    out
}

impl CustomOp1 for Swiglu {
    fn name(&self) -> &'static str {
        "editd-swiglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let f = l.shape().dims().last().copied().unwrap_or(0) / 2;
        fn run<T: WithDType>(h: &[T], l: &Layout, f: usize) -> Result<Vec<T>> {
            Ok(swiglu_cpu(slice(h, l, "swiglu: h")?, f))
        }
        let out = dispatch_float!("swiglu", run, (s), l, f);
        Ok((out, swiglu_out_shape(l.shape())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let out = crate::cuda::swiglu(s, l)?;
        Ok((out, swiglu_out_shape(l.shape())))
    }
}

/// Interleaved RoPE on `x` (B, H, L, Dh): for each pair (2j, 2j+1),
/// `out_2j = x_2j·cos − x_2j+1·sin`, `out_2j+1 = x_2j+1·cos + x_2j·sin`, with `cos`/`sin`
/// (L, Dh/2) shared by the batch or (B, L, Dh/2) per batch. The tables are used in f32 whatever
/// the dtype of `x`. Same maths as `candle_nn::rotary_emb::rope_i` (which takes the tables in
/// x's dtype).
pub fn rope_interleaved(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, _h, l, dh) = x.dims4()?;
    if dh % 2 != 0 || cos.dims() != sin.dims() {
        bail!(
            "rope_interleaved: x {:?}, cos {:?}, sin {:?}",
            x.shape(),
            cos.shape(),
            sin.shape()
        );
    }
    let per_batch = match cos.dims() {
        [cl, cd] if *cl == l && *cd == dh / 2 => false,
        [cb, cl, cd] if *cb == b && *cl == l && *cd == dh / 2 => true,
        _ => bail!(
            "rope_interleaved: cos/sin must be ({l}, {}) or ({b}, {l}, {}), got {:?}",
            dh / 2,
            dh / 2,
            cos.shape()
        ),
    };
    if x.device().is_metal() {
        return crate::unfused::rope_interleaved(x, cos, sin);
    }
    let cos = cos.to_dtype(DType::F32)?.contiguous()?;
    let sin = sin.to_dtype(DType::F32)?.contiguous()?;
    x.contiguous()?
        .apply_op3_no_bwd(&cos, &sin, &RopeInterleaved { per_batch })
}

struct RopeInterleaved {
    per_batch: bool,
}

impl RopeInterleaved {
    /// Stride between batches in the tables: 0 when shared, L·Dh/2 when per batch.
    fn table_batch_stride(&self, l: &Layout) -> Result<usize> {
        let (_, _, t, dh) = l.shape().dims4()?;
        Ok(if self.per_batch { t * dh / 2 } else { 0 })
    }
}

fn rope_cpu<T: WithDType>(
    x: &[T],
    cos: &[f32],
    sin: &[f32],
    dims: (usize, usize, usize, usize),
    cs_stride: usize,
) -> Vec<T> {
    let (_b, h, l, dh) = dims;
    let half = dh / 2;
    let mut out = vec![T::zero(); x.len()];
    out.par_chunks_mut(l * dh)
        .zip(x.par_chunks(l * dh))
        .enumerate()
        .for_each(|(bh, (o, x))| {
            let base = (bh / h) * cs_stride;
            for t in 0..l {
                let (cs, sn) = (&cos[base + t * half..], &sin[base + t * half..]);
                let (o, x) = (&mut o[t * dh..(t + 1) * dh], &x[t * dh..(t + 1) * dh]);
                for j in 0..half {
                    let (x0, x1) = (x[2 * j].to_f64() as f32, x[2 * j + 1].to_f64() as f32);
                    o[2 * j] = T::from_f64((x0 * cs[j] - x1 * sn[j]) as f64);
                    o[2 * j + 1] = T::from_f64((x1 * cs[j] + x0 * sn[j]) as f64);
                }
            }
        });
    out
}

impl CustomOp3 for RopeInterleaved {
    fn name(&self) -> &'static str {
        "editd-rope-interleaved"
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
        let dims = l1.shape().dims4()?;
        let stride = self.table_batch_stride(l1)?;
        let (cos, sin) = match (s2, s3) {
            (CpuStorage::F32(c), CpuStorage::F32(s)) => (
                slice(c, l2, "rope_interleaved: cos")?,
                slice(s, l3, "rope_interleaved: sin")?,
            ),
            _ => bail!("rope_interleaved: cos/sin must be f32"),
        };
        let out = match s1 {
            CpuStorage::F32(x) => {
                CpuStorage::F32(rope_cpu(slice(x, l1, "x")?, cos, sin, dims, stride))
            }
            CpuStorage::F16(x) => {
                CpuStorage::F16(rope_cpu(slice(x, l1, "x")?, cos, sin, dims, stride))
            }
            CpuStorage::BF16(x) => {
                CpuStorage::BF16(rope_cpu(slice(x, l1, "x")?, cos, sin, dims, stride))
            }
            _ => bail!("rope_interleaved: x must be f32/f16/bf16"),
        };
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
        let stride = self.table_batch_stride(l1)?;
        let out = crate::cuda::rope_interleaved(s1, l1, s2, l2, s3, l3, stride)?;
        Ok((out, l1.shape().clone()))
    }
}
