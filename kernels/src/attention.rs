//! Softmax attention over (B, H, L, Dh) without materialising the whole (Lq × Lk) score matrix:
//! queries are processed in chunks sized so that one chunk's scores stay under a byte budget.
//! CPU computes in f32 whatever the input dtype; GPU keeps the input dtype for the matmuls
//! (cuBLAS) with candle's f32-accumulating softmax. A flash-attention kernel is the GPU follow-up.

use candle_core::{bail, DType, Device, Result, Tensor};

/// Score-matrix budget per query chunk on CPU (f32 elements × 4 bytes).
const CPU_SCORE_BYTES: usize = 64 << 20;
/// Score-matrix budget per query chunk on GPU.
const GPU_SCORE_BYTES: usize = 1 << 30;

/// `softmax(q·kᵀ·scale)·v` for q (B, H, Lq, Dh), k and v (B, H, Lk, Dh); output (B, H, Lq, Dh)
/// in q's dtype.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, h, _, _) = q.dims4()?;
    let lk = k.dim(2)?;
    let budget = if matches!(q.device(), Device::Cpu) {
        CPU_SCORE_BYTES
    } else {
        GPU_SCORE_BYTES
    };
    let elem = if matches!(q.device(), Device::Cpu) {
        4
    } else {
        q.dtype().size_in_bytes()
    };
    attention_chunked(q, k, v, scale, query_chunk(b * h, lk, elem, budget))
}

/// [`attention`] with an explicit number of queries per chunk (tests force small chunks).
pub fn attention_chunked(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    chunk: usize,
) -> Result<Tensor> {
    let (b, h, lq, dh) = q.dims4()?;
    let (kb, kh, _, kd) = k.dims4()?;
    if (kb, kh, kd) != (b, h, dh) || v.dims() != k.dims() {
        bail!(
            "attention: q {:?}, k {:?}, v {:?}",
            q.shape(),
            k.shape(),
            v.shape()
        );
    }
    let dtype = q.dtype();
    if lq == 0 {
        return Tensor::zeros((b, h, 0, dh), dtype, q.device());
    }
    let work = if matches!(q.device(), Device::Cpu) {
        DType::F32
    } else {
        dtype
    };
    let chunk = chunk.clamp(1, lq);
    let q = q.to_dtype(work)?;
    let kt = k.to_dtype(work)?.t()?.contiguous()?;
    let v = v.to_dtype(work)?.contiguous()?;
    let mut outs = Vec::with_capacity(lq.div_ceil(chunk));
    let mut start = 0;
    while start < lq {
        let n = chunk.min(lq - start);
        let qc = q.narrow(2, start, n)?.contiguous()?;
        let scores = (qc.matmul(&kt)? * scale)?;
        let p = candle_nn::ops::softmax_last_dim(&scores)?;
        outs.push(p.matmul(&v)?);
        start += n;
    }
    let out = if outs.len() == 1 {
        outs.pop().expect("one chunk")
    } else {
        Tensor::cat(&outs, 2)?
    };
    out.to_dtype(dtype)
}

/// Queries per chunk so that `bh · chunk · lk · elem_bytes <= budget` (at least 1).
pub fn query_chunk(bh: usize, lk: usize, elem_bytes: usize, budget: usize) -> usize {
    (budget / (bh * lk * elem_bytes).max(1)).max(1)
}
