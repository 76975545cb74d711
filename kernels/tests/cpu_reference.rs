//! Always-run tests: every fused CPU op against its unfused candle composition (random inputs,
//! odd shapes, f32/f16/bf16) and against a hand-computed tiny case; candle-nn equivalents where
//! they exist (`rms_norm`, `rope_i`).

mod common;

use candle_core::{DType, Device, Result, Tensor};
use common::{assert_close, bound, randn, DTYPES};
use editd_kernels as k;

const CPU: Device = Device::Cpu;

fn vals(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn assert_vals(got: &Tensor, want: &[f32], tol: f32) {
    let got = vals(got);
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "element {i}: {g} vs {w}");
    }
}

#[test]
fn modulate_matches_unfused_on_odd_shapes() -> Result<()> {
    for dt in DTYPES {
        for (i, &(b, l, d)) in [(1, 1, 5), (2, 7, 33), (3, 17, 96)].iter().enumerate() {
            let x = (randn(i as u64, &[b, l, d], 2.0, dt, &CPU)? + 0.7)?;
            let shift = randn(10 + i as u64, &[b, 1, d], 0.5, dt, &CPU)?;
            let scale = randn(20 + i as u64, &[b, d], 0.5, dt, &CPU)?;
            let got = k::modulate(&x, &shift, &scale, 1e-6)?;
            let want = k::unfused::modulate(&x, &shift, &scale, 1e-6)?;
            assert_eq!(got.dtype(), dt);
            assert_close(
                &format!("modulate {dt:?} {b}x{l}x{d}"),
                &got,
                &want,
                bound(dt),
            )?;
        }
    }
    Ok(())
}

#[test]
fn modulate_tiny_hand_case() -> Result<()> {
    // x = [1, 2, 3]: mean 2, var 2/3, normalised [-1.2247, 0, 1.2247].
    let x = Tensor::new(&[[[1f32, 2., 3.]]], &CPU)?;
    let scale = Tensor::new(&[[1f32, 0., 0.]], &CPU)?;
    let shift = Tensor::new(&[[0f32, 1., 0.]], &CPU)?;
    let got = k::modulate(&x, &shift, &scale, 0.0)?;
    assert_vals(&got, &[-2.449_49, 1.0, 1.224_745], 1e-5);
    Ok(())
}

#[test]
fn modulate_rejects_mismatched_conditioning() -> Result<()> {
    let x = Tensor::zeros((2, 3, 4), DType::F32, &CPU)?;
    let bad = Tensor::zeros((1, 4), DType::F32, &CPU)?;
    let ok = Tensor::zeros((2, 4), DType::F32, &CPU)?;
    assert!(k::modulate(&x, &bad, &ok, 1e-6).is_err());
    assert!(k::gated_residual(&x, &bad, &x).is_err());
    Ok(())
}

#[test]
fn gated_residual_matches_unfused_on_odd_shapes() -> Result<()> {
    for dt in DTYPES {
        for (i, &(b, l, d)) in [(1, 1, 3), (2, 9, 31), (3, 5, 128)].iter().enumerate() {
            let x = randn(30 + i as u64, &[b, l, d], 1.0, dt, &CPU)?;
            let y = randn(40 + i as u64, &[b, l, d], 1.0, dt, &CPU)?;
            let gate = randn(50 + i as u64, &[b, 1, d], 1.0, dt, &CPU)?;
            let got = k::gated_residual(&x, &gate, &y)?;
            let want = k::unfused::gated_residual(&x, &gate, &y)?;
            assert_close(
                &format!("gated_residual {dt:?} {b}x{l}x{d}"),
                &got,
                &want,
                bound(dt),
            )?;
        }
    }
    Ok(())
}

#[test]
fn gated_residual_tiny_hand_case() -> Result<()> {
    let x = Tensor::new(&[[[1f32, 2.], [3., 4.]], [[0., 0.], [1., 1.]]], &CPU)?;
    let y = Tensor::new(&[[[1f32, 1.], [2., 2.]], [[5., 6.], [7., 8.]]], &CPU)?;
    let gate = Tensor::new(&[[0.5f32, -1.], [2., 0.]], &CPU)?;
    let got = k::gated_residual(&x, &gate, &y)?;
    assert_vals(&got, &[1.5, 1., 4., 2., 10., 0., 15., 1.], 0.0);
    Ok(())
}

#[test]
fn rms_norm_heads_matches_unfused_and_candle_nn() -> Result<()> {
    for dt in DTYPES {
        for (i, dims) in [[1, 1, 1, 8], [2, 3, 7, 33], [1, 5, 11, 128]]
            .iter()
            .enumerate()
        {
            let x = randn(60 + i as u64, dims, 3.0, dt, &CPU)?;
            let w = (randn(70 + i as u64, &dims[3..], 0.3, dt, &CPU)? + 1.0)?;
            let got = k::rms_norm_heads(&x, &w, 1e-6)?;
            let want = k::unfused::rms_norm_heads(&x, &w, 1e-6)?;
            let nn = candle_nn::ops::rms_norm(&x, &w, 1e-6)?;
            assert_close(
                &format!("rms_norm_heads {dt:?} {dims:?}"),
                &got,
                &want,
                bound(dt),
            )?;
            assert_close(
                &format!("rms_norm vs nn {dt:?} {dims:?}"),
                &got,
                &nn,
                bound(dt),
            )?;
        }
    }
    Ok(())
}

#[test]
fn rms_norm_heads_tiny_hand_case() -> Result<()> {
    // rms([3, 4]) = sqrt(12.5) = 3.5355
    let x = Tensor::new(&[[[[3f32, 4.]]]], &CPU)?;
    let w = Tensor::new(&[1f32, 2.], &CPU)?;
    assert_vals(
        &k::rms_norm_heads(&x, &w, 0.0)?,
        &[0.848_528, 2.262_742],
        1e-5,
    );
    Ok(())
}

fn rope_tables(seed: u64, lead: &[usize], half: usize) -> Result<(Tensor, Tensor)> {
    let mut dims = lead.to_vec();
    dims.push(half);
    let theta = randn(seed, &dims, 3.0, DType::F32, &CPU)?;
    Ok((theta.cos()?, theta.sin()?))
}

#[test]
fn rope_interleaved_matches_unfused_and_candle_nn() -> Result<()> {
    for dt in DTYPES {
        for (i, &(b, h, l, dh)) in [(1, 1, 1, 2), (2, 3, 7, 34), (1, 4, 13, 128)]
            .iter()
            .enumerate()
        {
            let x = randn(80 + i as u64, &[b, h, l, dh], 1.0, dt, &CPU)?;
            let (cos, sin) = rope_tables(90 + i as u64, &[l], dh / 2)?;
            let got = k::rope_interleaved(&x, &cos, &sin)?;
            let want = k::unfused::rope_interleaved(&x, &cos, &sin)?;
            let what = format!("rope {dt:?} {b}x{h}x{l}x{dh}");
            assert_close(&what, &got, &want, bound(dt))?;
            if dt == DType::F32 {
                let nn = candle_nn::rotary_emb::rope_i(&x, &cos, &sin)?;
                assert_close(&format!("{what} vs rope_i"), &got, &nn, bound(dt))?;
            }
            // per-batch tables (B, L, Dh/2)
            let (cb, sb) = rope_tables(95 + i as u64, &[b, l], dh / 2)?;
            let got = k::rope_interleaved(&x, &cb, &sb)?;
            let want = k::unfused::rope_interleaved(&x, &cb, &sb)?;
            assert_close(&format!("{what} per-batch"), &got, &want, bound(dt))?;
        }
    }
    Ok(())
}

#[test]
fn rope_interleaved_tiny_hand_case() -> Result<()> {
    // pair 0 = (1, 0) rotated by 90° -> (0, 1); pair 1 = (0, 1) rotated by 0° -> (0, 1)
    let x = Tensor::new(&[[[[1f32, 0., 0., 1.]]]], &CPU)?;
    let cos = Tensor::new(&[[0f32, 1.]], &CPU)?;
    let sin = Tensor::new(&[[1f32, 0.]], &CPU)?;
    assert_vals(
        &k::rope_interleaved(&x, &cos, &sin)?,
        &[0., 1., 0., 1.],
        0.0,
    );
    let odd = Tensor::zeros((1, 1, 1, 3), DType::F32, &CPU)?;
    assert!(k::rope_interleaved(&odd, &cos, &sin).is_err());
    Ok(())
}

#[test]
fn swiglu_matches_unfused_on_odd_shapes() -> Result<()> {
    for dt in DTYPES {
        for (i, dims) in [vec![2], vec![3, 7, 66], vec![2, 5, 256]]
            .iter()
            .enumerate()
        {
            let h = randn(100 + i as u64, dims, 2.0, dt, &CPU)?;
            let got = k::swiglu(&h)?;
            let want = k::unfused::swiglu(&h)?;
            assert_eq!(got.dims(), want.dims());
            assert_close(&format!("swiglu {dt:?} {dims:?}"), &got, &want, bound(dt))?;
        }
    }
    Ok(())
}

#[test]
fn swiglu_tiny_hand_case() -> Result<()> {
    // silu(0)·5 = 0; silu(2)·3 = 2/(1+e^-2)·3 = 5.28478
    let h = Tensor::new(&[[0f32, 2., 5., 3.]], &CPU)?;
    assert_vals(&k::swiglu(&h)?, &[0.0, 5.284_782], 1e-5);
    assert!(k::swiglu(&Tensor::zeros(3, DType::F32, &CPU)?).is_err());
    Ok(())
}

#[test]
fn group_norm_silu_matches_unfused_and_candle_nn() -> Result<()> {
    for dt in DTYPES {
        for (i, &(b, c, g, hh, ww)) in [(1, 4, 2, 1, 1), (2, 12, 3, 5, 7), (1, 32, 8, 9, 4)]
            .iter()
            .enumerate()
        {
            let x = (randn(110 + i as u64, &[b, c, hh, ww], 2.0, dt, &CPU)? + 0.3)?;
            let w = (randn(120 + i as u64, &[c], 0.3, dt, &CPU)? + 1.0)?;
            let bias = randn(130 + i as u64, &[c], 0.3, dt, &CPU)?;
            let got = k::group_norm_silu(&x, g, &w, &bias, 1e-6)?;
            let want = k::unfused::group_norm_silu(&x, g, &w, &bias, 1e-6)?;
            let what = format!("group_norm_silu {dt:?} {b}x{c}x{hh}x{ww}/{g}");
            assert_close(&what, &got, &want, bound(dt))?;
            if dt == DType::F32 {
                let gn = candle_nn::GroupNorm::new(w.clone(), bias.clone(), c, g, 1e-6)?;
                let nn = candle_core::Module::forward(&gn, &x)?.silu()?;
                assert_close(&format!("{what} vs nn"), &got, &nn, 1e-5)?;
            }
        }
    }
    Ok(())
}

#[test]
fn group_norm_silu_tiny_hand_case() -> Result<()> {
    // one group of [1, 3]: normalised [-1, 1]; w = [1, 2], b = [0, 0] -> silu(-1), silu(2)
    let x = Tensor::new(&[[[1f32], [3.]]], &CPU)?;
    let w = Tensor::new(&[1f32, 2.], &CPU)?;
    let b = Tensor::new(&[0f32, 0.], &CPU)?;
    let got = k::group_norm_silu(&x, 1, &w, &b, 0.0)?;
    assert_vals(&got, &[-0.268_941, 1.761_594], 1e-5);
    assert!(k::group_norm_silu(&x, 3, &w, &b, 0.0).is_err());
    Ok(())
}

#[test]
fn attention_matches_unfused_when_chunked() -> Result<()> {
    for dt in DTYPES {
        for (i, &(b, h, lq, lk, dh)) in [(1, 1, 1, 1, 8), (2, 3, 13, 17, 24), (1, 2, 33, 9, 64)]
            .iter()
            .enumerate()
        {
            let q = randn(140 + i as u64, &[b, h, lq, dh], 1.0, dt, &CPU)?;
            let kk = randn(150 + i as u64, &[b, h, lk, dh], 1.0, dt, &CPU)?;
            let v = randn(160 + i as u64, &[b, h, lk, dh], 1.0, dt, &CPU)?;
            let scale = 1.0 / (dh as f64).sqrt();
            let want = k::unfused::attention(&q, &kk, &v, scale)?;
            for chunk in [1, 4, lq] {
                let got = k::attention_chunked(&q, &kk, &v, scale, chunk)?;
                let what = format!("attention {dt:?} {b}x{h}x{lq}x{lk}x{dh} chunk {chunk}");
                assert_close(&what, &got, &want, bound(dt))?;
            }
            let got = k::attention(&q, &kk, &v, scale)?;
            assert_close("attention default chunk", &got, &want, bound(dt))?;
        }
    }
    Ok(())
}

#[test]
fn attention_tiny_hand_case() -> Result<()> {
    // one key: softmax is 1, the output is v; two equal keys: the mean of the two values
    let q = Tensor::new(&[[[[1f32, 0.], [0., 1.]]]], &CPU)?;
    let kk = Tensor::new(&[[[[1f32, 1.]]]], &CPU)?;
    let v = Tensor::new(&[[[[3f32, -2.]]]], &CPU)?;
    assert_vals(&k::attention(&q, &kk, &v, 1.0)?, &[3., -2., 3., -2.], 1e-6);
    let kk2 = Tensor::new(&[[[[0f32, 0.], [0., 0.]]]], &CPU)?;
    let v2 = Tensor::new(&[[[[2f32, 0.], [4., 2.]]]], &CPU)?;
    assert_vals(&k::attention(&q, &kk2, &v2, 1.0)?, &[3., 1., 3., 1.], 1e-6);
    assert_eq!(k::query_chunk(24, 8704, 2, 1 << 30), 2570);
    Ok(())
}
