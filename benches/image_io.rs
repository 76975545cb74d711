//! Criterion benches for `image_io` on a generated 1 MP image (1024×1024): decode JPEG,
//! decode PNG, resize Lanczos3 1 MP → 0.5 MP (724×724), encode PNG. CPU only.
//! Run: `cargo bench --bench image_io`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use editd::image_io::{decode_image, encode_image, DecodeLimits, OutputFormat};
use image::imageops::{resize, FilterType};
use image::{Rgb, RgbImage};

/// A deterministic, photo-like 1 MP picture (smooth gradients plus texture), so codecs do
/// realistic work (a flat image would be unrealistically cheap).
fn picture() -> RgbImage {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    RgbImage::from_fn(1024, 1024, |x, y| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let n = (seed % 24) as u32;
        Rgb([
            ((x / 4 + n) % 256) as u8,
            ((y / 4 + n) % 256) as u8,
            (((x + y) / 8 + n) % 256) as u8,
        ])
    })
}

fn benches(c: &mut Criterion) {
    let img = picture();
    let limits = DecodeLimits::default();
    let jpeg = encode_image(&img, OutputFormat::Jpeg, Some(90)).unwrap();
    let png = encode_image(&img, OutputFormat::Png, None).unwrap();

    let mut g = c.benchmark_group("image_io_1mp");
    g.throughput(Throughput::Elements(1024 * 1024));
    g.sample_size(20);
    g.bench_function("decode_jpeg", |b| {
        b.iter(|| decode_image(black_box(&jpeg), &limits).unwrap())
    });
    g.bench_function("decode_png", |b| {
        b.iter(|| decode_image(black_box(&png), &limits).unwrap())
    });
    g.bench_function("resize_lanczos3_to_0.5mp", |b| {
        b.iter(|| resize(black_box(&img), 724, 724, FilterType::Lanczos3))
    });
    g.bench_function("encode_png", |b| {
        b.iter(|| encode_image(black_box(&img), OutputFormat::Png, None).unwrap())
    });
    g.finish();
}

criterion_group!(image_io, benches);
criterion_main!(image_io);
