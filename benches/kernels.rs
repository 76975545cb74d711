//! Criterion benches of editd-kernels on the CPU: each fused op against its unfused candle
//! composition (`editd_kernels::unfused`) at a small FLUX.2-klein-like shape (f32, 256 tokens,
//! D = 3072, 24 heads × 128), plus candle-nn's own fused `rms_norm` / `rope_i` where they match.
//!
//! Run: `cargo bench --bench kernels` (CPU). Results: `benches/results/kernels-cpu-*.md`.

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use editd_kernels as k;
use std::time::Duration;

const TOKENS: usize = 256;
const D: usize = 3072;
const HEADS: usize = 24;
const DH: usize = 128;
const MLP: usize = 9216;

fn rand(dims: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1., dims, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

/// Benches `fused` and `unfused` (and any extra variants) under one group name.
fn pair(c: &mut Criterion, group: &str, variants: &[(&str, &dyn Fn() -> Tensor)]) {
    let mut g = c.benchmark_group(group);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (name, f) in variants {
        g.bench_function(BenchmarkId::from_parameter(name), |b| b.iter(f));
    }
    g.finish();
}

fn bench_kernels(c: &mut Criterion) {
    let x = rand(&[1, TOKENS, D]);
    let y = rand(&[1, TOKENS, D]);
    let shift = rand(&[1, 1, D]);
    let scale = rand(&[1, 1, D]);
    pair(
        c,
        &format!("modulate 1x{TOKENS}x{D}"),
        &[
            ("fused", &|| k::modulate(&x, &shift, &scale, 1e-6).unwrap()),
            ("unfused", &|| {
                k::unfused::modulate(&x, &shift, &scale, 1e-6).unwrap()
            }),
        ],
    );
    pair(
        c,
        &format!("gated_residual 1x{TOKENS}x{D}"),
        &[
            ("fused", &|| k::gated_residual(&x, &shift, &y).unwrap()),
            ("unfused", &|| {
                k::unfused::gated_residual(&x, &shift, &y).unwrap()
            }),
        ],
    );

    let q = rand(&[1, HEADS, TOKENS, DH]);
    let w = rand(&[DH]);
    pair(
        c,
        &format!("rms_norm_heads 1x{HEADS}x{TOKENS}x{DH}"),
        &[
            ("fused", &|| k::rms_norm_heads(&q, &w, 1e-6).unwrap()),
            ("unfused", &|| {
                k::unfused::rms_norm_heads(&q, &w, 1e-6).unwrap()
            }),
            ("candle_nn_rms_norm", &|| {
                candle_nn::ops::rms_norm(&q, &w, 1e-6).unwrap()
            }),
        ],
    );
    let theta = rand(&[TOKENS, DH / 2]);
    let (cos, sin) = (theta.cos().unwrap(), theta.sin().unwrap());
    pair(
        c,
        &format!("rope_interleaved 1x{HEADS}x{TOKENS}x{DH}"),
        &[
            ("fused", &|| k::rope_interleaved(&q, &cos, &sin).unwrap()),
            ("unfused", &|| {
                k::unfused::rope_interleaved(&q, &cos, &sin).unwrap()
            }),
            ("candle_nn_rope_i", &|| {
                candle_nn::rotary_emb::rope_i(&q, &cos, &sin).unwrap()
            }),
        ],
    );
    let h = rand(&[1, TOKENS, 2 * MLP]);
    pair(
        c,
        &format!("swiglu 1x{TOKENS}x{}", 2 * MLP),
        &[
            ("fused", &|| k::swiglu(&h).unwrap()),
            ("unfused", &|| k::unfused::swiglu(&h).unwrap()),
        ],
    );
    let img = rand(&[1, 128, 64, 64]);
    let (gw, gb) = (rand(&[128]), rand(&[128]));
    pair(
        c,
        "group_norm_silu 1x128x64x64 /32",
        &[
            ("fused", &|| {
                k::group_norm_silu(&img, 32, &gw, &gb, 1e-6).unwrap()
            }),
            ("unfused", &|| {
                k::unfused::group_norm_silu(&img, 32, &gw, &gb, 1e-6).unwrap()
            }),
        ],
    );
    let (kk, v) = (rand(&[1, HEADS, TOKENS, DH]), rand(&[1, HEADS, TOKENS, DH]));
    let s = 1.0 / (DH as f64).sqrt();
    pair(
        c,
        &format!("attention 1x{HEADS}x{TOKENS}x{DH}"),
        &[
            ("chunked", &|| k::attention(&q, &kk, &v, s).unwrap()),
            ("unfused", &|| {
                k::unfused::attention(&q, &kk, &v, s).unwrap()
            }),
        ],
    );
}

criterion_group!(benches, bench_kernels);
criterion_main!(benches);
