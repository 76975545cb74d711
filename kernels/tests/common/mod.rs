//! Shared helpers for the kernel tests: deterministic random tensors, relative error and the
//! per-dtype error bounds.
#![allow(dead_code)]

use candle_core::{DType, Device, Result, Tensor};

/// Deterministic N(0, std²)-ish values (sum of uniforms from a 64-bit LCG), as a tensor of `dtype`.
pub fn randn(seed: u64, dims: &[usize], std: f32, dtype: DType, dev: &Device) -> Result<Tensor> {
    let n: usize = dims.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32) / (1u64 << 24) as f32
    };
    let v: Vec<f32> = (0..n)
        .map(|_| (next() + next() + next() + next() - 2.0) * 1.732 * std)
        .collect();
    Tensor::from_vec(v, dims, dev)?.to_dtype(dtype)
}

/// `max |a - b| / max(max |b|, 1e-6)`, computed in f32 on the CPU.
pub fn rel_err(a: &Tensor, b: &Tensor) -> Result<f32> {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let b = b
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(diff.is_finite(), "non-finite difference");
    Ok(diff / scale)
}

/// The relative-error bound for elementwise/normalisation ops in `dtype`: f32 1e-5, f16 5e-3,
/// bf16 2e-2 (a few units of the last place: bf16 has 8 significant bits, f16 11).
pub fn bound(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => 1e-5,
        DType::F16 => 5e-3,
        DType::BF16 => 2e-2,
        _ => panic!("no bound for {dtype:?}"),
    }
}

/// Asserts `rel_err(got, want) <= bound`, naming the case.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, bound: f32) -> Result<()> {
    let e = rel_err(got, want)?;
    assert!(e <= bound, "{what}: relative error {e:e} > {bound:e}");
    Ok(())
}

pub const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];
