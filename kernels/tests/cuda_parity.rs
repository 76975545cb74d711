//! GPU tests (`--features cuda`, `#[ignore]`: build with `cargo test --release --features cuda
//! -p editd -p editd-kernels --test cuda_parity --no-run` (naming `editd` too keeps the feature
//! set of the binary build) and run with `--ignored` on a machine with a GPU): each CUDA op
//! against its CPU reference on random inputs with odd shapes in f32/f16/bf16. Bounds: f32 1e-5,
//! f16 5e-3, bf16 2e-2 of the largest reference magnitude (attention: f32 1e-4, f16 1e-2, bf16
//! 3e-2, because cuBLAS and the CPU sum in different orders and the GPU keeps the input dtype for
//! the matmuls).
#![cfg(feature = "cuda")]

mod common;

use candle_core::{DType, Device, Result, Tensor};
use common::{assert_close, bound, randn, DTYPES};
use editd_kernels as k;

fn gpu() -> Device {
    Device::new_cuda(0).expect("a CUDA device (these tests are #[ignore] without one)")
}

/// Runs `op` on the CPU and on the GPU with the same inputs and compares.
fn parity(what: &str, dt: DType, inputs: &[Tensor], op: impl Fn(&[Tensor]) -> Result<Tensor>) {
    let dev = gpu();
    let want = op(inputs).expect("cpu op");
    let on_gpu: Vec<Tensor> = inputs.iter().map(|t| t.to_device(&dev).unwrap()).collect();
    let got = op(&on_gpu).expect("cuda op");
    assert!(got.device().is_cuda(), "{what}: result left the GPU");
    assert_eq!(got.dtype(), want.dtype(), "{what}: dtype");
    assert_close(&format!("{what} {dt:?}"), &got, &want, bound(dt)).unwrap();
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_modulate_matches_cpu() -> Result<()> {
    for dt in DTYPES {
        for (i, &(b, l, d)) in [(1, 1, 5), (2, 7, 33), (3, 17, 1000), (1, 3, 3072)]
            .iter()
            .enumerate()
        {
            let s = i as u64;
            let x = (randn(s, &[b, l, d], 2.0, dt, &Device::Cpu)? + 0.7)?;
            let shift = randn(10 + s, &[b, 1, d], 0.5, dt, &Device::Cpu)?;
            let scale = randn(20 + s, &[b, d], 0.5, dt, &Device::Cpu)?;
            parity(
                &format!("modulate {b}x{l}x{d}"),
                dt,
                &[x, shift, scale],
                |t| k::modulate(&t[0], &t[1], &t[2], 1e-6),
            );
        }
    }
    Ok(())
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_gated_residual_matches_cpu() -> Result<()> {
    for dt in DTYPES {
        for (i, &(b, l, d)) in [(1, 1, 3), (2, 9, 31), (2, 257, 3072)].iter().enumerate() {
            let s = i as u64;
            let x = randn(30 + s, &[b, l, d], 1.0, dt, &Device::Cpu)?;
            let g = randn(40 + s, &[b, 1, d], 1.0, dt, &Device::Cpu)?;
            let y = randn(50 + s, &[b, l, d], 1.0, dt, &Device::Cpu)?;
            parity(
                &format!("gated_residual {b}x{l}x{d}"),
                dt,
                &[x, g, y],
                |t| k::gated_residual(&t[0], &t[1], &t[2]),
            );
        }
    }
    Ok(())
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_rms_norm_heads_matches_cpu_and_candle_nn() -> Result<()> {
    for dt in DTYPES {
        for (i, dims) in [[1, 1, 1, 8], [2, 3, 7, 33], [1, 24, 301, 128]]
            .iter()
            .enumerate()
        {
            let s = i as u64;
            let x = randn(60 + s, dims, 3.0, dt, &Device::Cpu)?;
            let w = (randn(70 + s, &dims[3..], 0.3, dt, &Device::Cpu)? + 1.0)?;
            let what = format!("rms_norm_heads {dims:?}");
            parity(&what, dt, &[x.clone(), w.clone()], |t| {
                k::rms_norm_heads(&t[0], &t[1], 1e-6)
            });
            parity(&format!("{what} vs nn"), dt, &[x, w], |t| {
                if t[0].device().is_cuda() {
                    candle_nn::ops::rms_norm(&t[0], &t[1], 1e-6)
                } else {
                    k::rms_norm_heads(&t[0], &t[1], 1e-6)
                }
            });
        }
    }
    Ok(())
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_rope_interleaved_matches_cpu() -> Result<()> {
    for dt in DTYPES {
        for (i, &(b, h, l, dh)) in [(1, 1, 1, 2), (2, 3, 7, 34), (1, 24, 300, 128)]
            .iter()
            .enumerate()
        {
            let s = i as u64;
            let x = randn(80 + s, &[b, h, l, dh], 1.0, dt, &Device::Cpu)?;
            for lead in [vec![l], vec![b, l]] {
                let mut td = lead.clone();
                td.push(dh / 2);
                let theta = randn(90 + s, &td, 3.0, DType::F32, &Device::Cpu)?;
                let (cos, sin) = (theta.cos()?, theta.sin()?);
                let what = format!("rope {b}x{h}x{l}x{dh} tables {td:?}");
                parity(&what, dt, &[x.clone(), cos, sin], |t| {
                    k::rope_interleaved(&t[0], &t[1], &t[2])
                });
            }
        }
    }
    Ok(())
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_swiglu_matches_cpu() -> Result<()> {
    for dt in DTYPES {
        for (i, dims) in [vec![2], vec![3, 7, 66], vec![1, 301, 2 * 9216]]
            .iter()
            .enumerate()
        {
            let h = randn(100 + i as u64, dims, 2.0, dt, &Device::Cpu)?;
            parity(&format!("swiglu {dims:?}"), dt, &[h], |t| k::swiglu(&t[0]));
        }
    }
    Ok(())
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_group_norm_silu_matches_cpu() -> Result<()> {
    for dt in DTYPES {
        let x = randn(110, &[1, 64, 17, 9], 2.0, dt, &Device::Cpu)?;
        let w = (randn(120, &[64], 0.3, dt, &Device::Cpu)? + 1.0)?;
        let b = randn(130, &[64], 0.3, dt, &Device::Cpu)?;
        parity("group_norm_silu 1x64x17x9/32", dt, &[x, w, b], |t| {
            k::group_norm_silu(&t[0], 32, &t[1], &t[2], 1e-6)
        });
    }
    Ok(())
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_attention_matches_cpu() -> Result<()> {
    let dev = gpu();
    for (dt, tol) in [(DType::F32, 1e-4), (DType::F16, 1e-2), (DType::BF16, 3e-2)] {
        for (i, &(b, h, lq, lk, dh)) in [(1, 1, 1, 1, 8), (2, 3, 13, 17, 24), (1, 4, 333, 129, 128)]
            .iter()
            .enumerate()
        {
            let s = i as u64;
            let q = randn(140 + s, &[b, h, lq, dh], 1.0, dt, &Device::Cpu)?;
            let kk = randn(150 + s, &[b, h, lk, dh], 1.0, dt, &Device::Cpu)?;
            let v = randn(160 + s, &[b, h, lk, dh], 1.0, dt, &Device::Cpu)?;
            let scale = 1.0 / (dh as f64).sqrt();
            let want = k::attention(&q, &kk, &v, scale)?;
            let (qg, kg, vg) = (q.to_device(&dev)?, kk.to_device(&dev)?, v.to_device(&dev)?);
            for chunk in [7, lq] {
                let got = k::attention_chunked(&qg, &kg, &vg, scale, chunk)?;
                let what = format!("attention {dt:?} {b}x{h}x{lq}x{lk}x{dh} chunk {chunk}");
                assert_close(&what, &got, &want, tol)?;
            }
        }
    }
    Ok(())
}
