//! End-to-end parity of the edit sampler with diffusers 0.42.1 (`Flux2KleinPipeline`,
//! `Flux2KleinInpaintPipeline`) on the tiny random-weight checkpoints, through `editd edit`'s
//! code path (`cli_edit::execute`) with the reference run's noise injected.
//!
//! Bounds (f32, CPU): final latents ≤ 1e-3 max abs; output PNG within 1/255 of the reference's
//! `round(image·255)` on all but a handful of pixels (rounding ties flip on ~1e-6 differences).
//! Fixtures: `tests/fixtures/make_pipeline_fixtures.py`.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use editd::cli_edit::execute;
use editd::config::{EditArgs, OnOff};

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/flux2");

fn case_dir(ckpt: &str, case: &str) -> PathBuf {
    Path::new(ROOT).join(ckpt).join("pipeline").join(case)
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Runs one fixture case and returns (max abs latent error, pixels off by more than 1/255).
fn run_case(ckpt: &str, case: &str) -> (f32, usize) {
    let dir = case_dir(ckpt, case);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let refs =
        candle_core::safetensors::load(dir.join("tensors.safetensors"), &Device::Cpu).unwrap();
    let tmp = tempfile_dir(&format!("{ckpt}-{case}"));
    let noise_path = tmp.join("noise.safetensors");
    candle_core::safetensors::save(
        &[("noise", refs["noise"].clone())].into_iter().collect(),
        &noise_path,
    )
    .unwrap();
    let mut images = Vec::new();
    let mut mask = None;
    for input in meta["inputs"].as_array().unwrap() {
        let file = dir.join(input["file"].as_str().unwrap());
        if input["role"] == "mask_image" {
            mask = Some(file);
        } else {
            images.push(file);
        }
    }
    let dims = |k: &str| meta[k].as_u64().map(|v| v as u32);
    let args = EditArgs {
        model: Path::new(ROOT).join(ckpt).display().to_string(),
        prompt: meta["prompt"].as_str().unwrap().to_string(),
        images,
        mask,
        width: dims("width"),
        height: dims("height"),
        steps: Some(meta["num_inference_steps"].as_u64().unwrap() as usize),
        guidance: Some(meta["guidance_scale"].as_f64().unwrap() as f32),
        strength: meta["strength"].as_f64().unwrap_or(1.0) as f32,
        seed: Some(0),
        noise: Some(noise_path),
        paste_back: OnOff::Off,
        device: "cpu".into(),
        dtype: Some("f32".into()),
        offline: true,
        out: tmp.join("out.png"),
        latents_out: Some(tmp.join("latents.safetensors")),
    };
    let out = execute(&args).unwrap_or_else(|e| panic!("{ckpt}/{case}: {e}"));
    assert_eq!(
        (out.width, out.height),
        (
            meta["resolved_width"].as_u64().unwrap() as u32,
            meta["resolved_height"].as_u64().unwrap() as u32
        )
    );
    let written =
        candle_core::safetensors::load(tmp.join("latents.safetensors"), &Device::Cpu).unwrap();
    let lat_err = max_abs(&written["latents"], &refs["latents"]);

    let png = image::open(tmp.join("out.png")).unwrap().to_rgb8();
    let reference = (refs["image"].clone() * 255.0).unwrap().round().unwrap();
    let reference = reference.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (w, h) = png.dimensions();
    let plane = (w * h) as usize;
    let mut off = 0;
    for (i, p) in png.pixels().enumerate() {
        for c in 0..3 {
            let diff = (p.0[c] as f32 - reference[c * plane + i]).abs();
            assert!(
                diff <= 1.0,
                "{ckpt}/{case}: pixel {i} channel {c} off by {diff}"
            );
            if diff > 0.0 {
                off += 1;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    eprintln!("{ckpt}/{case}: latents max abs {lat_err:.2e}, {off} channel values off by 1/255");
    (lat_err, off)
}

fn tempfile_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("editd-parity-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn check(ckpt: &str, case: &str) {
    let (lat, off) = run_case(ckpt, case);
    assert!(lat <= 1e-3, "{ckpt}/{case}: latents max abs {lat}");
    assert!(off <= 8, "{ckpt}/{case}: {off} values off by one");
}

macro_rules! parity {
    ($($name:ident: $ckpt:literal / $case:literal),* $(,)?) => {$(
        #[test]
        fn $name() {
            check($ckpt, $case);
        }
    )*};
}

parity! {
    tiny_a_edit_single: "tiny_a" / "edit_single",
    tiny_a_edit_multi: "tiny_a" / "edit_multi",
    tiny_a_t2i: "tiny_a" / "t2i",
    tiny_a_inpaint_s1: "tiny_a" / "inpaint_s1",
    tiny_a_inpaint_s06: "tiny_a" / "inpaint_s06",
    tiny_a_inpaint_ref: "tiny_a" / "inpaint_ref",
    tiny_b_edit_single: "tiny_b" / "edit_single",
    tiny_b_edit_multi: "tiny_b" / "edit_multi",
    tiny_b_t2i: "tiny_b" / "t2i",
    tiny_b_inpaint_s1: "tiny_b" / "inpaint_s1",
    tiny_b_inpaint_s06: "tiny_b" / "inpaint_s06",
    tiny_b_inpaint_ref: "tiny_b" / "inpaint_ref",
    tiny_a_base_cfg: "tiny_a_base" / "cfg",
}
