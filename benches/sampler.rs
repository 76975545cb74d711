//! Criterion benches of the edit sampler on the tiny FLUX.2 klein fixture (CPU, f32):
//! one transformer call (one denoise step) and a whole 4-step edit with one reference.
//!
//! Run: `cargo bench --bench sampler`. The fixture lives in `tests/fixtures/flux2/tiny_a`.

use criterion::{criterion_group, criterion_main, Criterion};
use editd::pipeline::load::{load_model_pipeline, load_pipeline, PipelineConfig};
use editd::pipeline::{EditInputs, StepCtx};
use editd_models::traits::{DenoiseInput, PositionIds};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/flux2/tiny_a");

struct Quiet;
impl StepCtx for Quiet {
    fn on_step(&mut self, _: usize, _: usize) {}
    fn cancelled(&self) -> bool {
        false
    }
}

fn config() -> PipelineConfig {
    PipelineConfig {
        model: FIXTURE.into(),
        device: "cpu".into(),
        dtype: Some("f32".into()),
        offline: true,
    }
}

fn bench_step(c: &mut Criterion) {
    let p = load_model_pipeline(&config()).expect("load tiny_a");
    let device = candle_core::Device::Cpu;
    let prompt = p.text.encode(&["a red bicycle".to_string()]).unwrap();
    // 64×64 target + one 64×64 reference: 16 + 16 image tokens.
    let img = candle_core::Tensor::randn(0f32, 1., (1, 32, p.dit.in_channels()), &device).unwrap();
    let ids = PositionIds::image_grid(0, 4, 4).concat(&PositionIds::image_grid(10, 4, 4));
    c.bench_function("tiny_a denoise step (32 image + 512 text tokens)", |b| {
        b.iter(|| {
            let input = DenoiseInput {
                img: &img,
                img_ids: &ids,
                txt: &prompt.embeds,
                txt_ids: &prompt.ids,
                timestep: 0.9,
                guidance: None,
            };
            p.dit.velocity(&input).unwrap()
        })
    });
}

fn bench_edit(c: &mut Criterion) {
    let mut p = load_pipeline(&config()).expect("load tiny_a");
    let reference =
        image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([x as u8 * 4, y as u8 * 4, 128]));
    let job = EditInputs {
        prompt: "make it blue".into(),
        images: vec![reference],
        mask: None,
        size: None,
        max_area: None,
        steps: 4,
        guidance: 1.0,
        strength: 1.0,
        seed: 1,
        num_images: 1,
        paste_back: true,
        noise: None,
    };
    c.bench_function("tiny_a whole edit 64x64, 1 reference, 4 steps", |b| {
        b.iter(|| p.run(&job, &mut Quiet).unwrap())
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench_step, bench_edit
}
criterion_main!(benches);
