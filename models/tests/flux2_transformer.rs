//! FLUX.2 transformer parity and checkpoint-layout tests.
//!
//! Proves `editd_models::flux2::transformer` against diffusers 0.42.1
//! `models/transformers/transformer_flux2.py` (`Flux2Transformer2DModel.forward`, f32 on CPU) on
//! the tiny random checkpoints `tests/fixtures/make_fixtures.py` writes, checks the BFL
//! single-file map (`loaders/single_file_utils.py`), and checks that the model requests exactly
//! the tensors of the real FLUX.2 [klein] 4B checkpoint without allocating them.

mod common;
use common::*;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use editd_models::flux2::bfl::{is_bfl_checkpoint, load_bfl_transformer, map_bfl_shapes};
use editd_models::flux2::transformer::{Flux2Transformer, Flux2TransformerConfig};
use editd_models::traits::{DenoiseInput, Denoiser, PositionIds};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/flux2");
const TOLERANCE: f32 = 1e-3;

fn fixture(rel: &str) -> PathBuf {
    Path::new(FIXTURES).join(rel)
}

/// The fixtures are committed (tests/fixtures/make_fixtures.py): a missing one is a failure.
fn have(rel: &str) -> bool {
    assert!(
        fixture(rel).exists(),
        "fixture {} missing: rerun tests/fixtures/make_fixtures.py",
        fixture(rel).display()
    );
    true
}

/// `(S, 4)` int64 ids → host ids.
fn ids_from(t: &Tensor) -> PositionIds {
    let rows = t.to_dtype(DType::I64).unwrap().to_vec2::<i64>().unwrap();
    PositionIds(
        rows.iter()
            .map(|r| [r[0] as u32, r[1] as u32, r[2] as u32, r[3] as u32])
            .collect(),
    )
}

/// Runs the reference forward of `<name>/reference/transformer.safetensors` with `model`.
fn check_reference(name: &str, label: &str, model: &Flux2Transformer) {
    let r = candle_core::safetensors::load(
        fixture(&format!("{name}/reference/transformer.safetensors")),
        &Device::Cpu,
    )
    .unwrap();
    let timestep = r["timestep"].to_vec1::<f32>().unwrap()[0];
    let img_ids = ids_from(&r["img_ids"]);
    let txt_ids = ids_from(&r["txt_ids"]);
    let out = model
        .forward(
            &r["hidden_states"],
            &img_ids,
            &r["encoder_hidden_states"],
            &txt_ids,
            timestep,
            None,
        )
        .unwrap();
    let want = &r["output"];
    let err = max_abs_diff(&out, want);
    println!(
        "{label}: max abs error {err:.3e} (max |output| {:.3e}, output {:?})",
        max_abs(want),
        want.dims()
    );
    assert!(
        err <= TOLERANCE,
        "{label}: max abs error {err} > {TOLERANCE}"
    );

    // The Denoiser seam returns the same thing.
    let input = DenoiseInput {
        img: &r["hidden_states"],
        img_ids: &img_ids,
        txt: &r["encoder_hidden_states"],
        txt_ids: &txt_ids,
        timestep,
        guidance: None,
    };
    let v = model.velocity(&input).unwrap();
    assert_eq!(max_abs_diff(&v, &out), 0.0);
    assert_eq!(model.in_channels(), r["hidden_states"].dim(2).unwrap());
}

fn load_diffusers(name: &str) -> Flux2Transformer {
    load_diffusers_on(name, DType::F32, &Device::Cpu)
}

fn load_diffusers_on(name: &str, dtype: DType, device: &Device) -> Flux2Transformer {
    let cfg =
        Flux2TransformerConfig::from_file(fixture(&format!("{name}/transformer/config.json")))
            .unwrap();
    let weights = fixture(&format!(
        "{name}/transformer/diffusion_pytorch_model.safetensors"
    ));
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], dtype, device) }.unwrap();
    Flux2Transformer::new(&cfg, vb).unwrap()
}

/// Runs the reference inputs of `name` through `model`; returns `(max abs error, max |ref|)`.
fn reference_error(name: &str, model: &Flux2Transformer) -> (f32, f32) {
    let r = candle_core::safetensors::load(
        fixture(&format!("{name}/reference/transformer.safetensors")),
        model.device(),
    )
    .unwrap();
    let out = model
        .forward(
            &r["hidden_states"],
            &ids_from(&r["img_ids"]),
            &r["encoder_hidden_states"],
            &ids_from(&r["txt_ids"]),
            r["timestep"].to_vec1::<f32>().unwrap()[0],
            None,
        )
        .unwrap();
    assert_eq!(out.dtype(), model.dtype());
    let out = out.to_dtype(DType::F32).unwrap();
    (max_abs_diff(&out, &r["output"]), max_abs(&r["output"]))
}

#[test]
fn tiny_a_matches_diffusers() {
    if !have("tiny_a/reference/transformer.safetensors") {
        return;
    }
    check_reference("tiny_a", "tiny_a", &load_diffusers("tiny_a"));
}

#[test]
fn tiny_b_matches_diffusers() {
    if !have("tiny_b/reference/transformer.safetensors") {
        return;
    }
    check_reference("tiny_b", "tiny_b", &load_diffusers("tiny_b"));
}

/// The bf16 path (timestep rounding, f32 LayerNorm / RoPE islands) runs and stays close; bf16
/// has ~3 significant digits, so this is a smoke bound, not parity.
#[test]
fn tiny_a_runs_in_bf16() {
    if !have("tiny_a/reference/transformer.safetensors") {
        return;
    }
    let model = load_diffusers_on("tiny_a", DType::BF16, &Device::Cpu);
    let (err, scale) = reference_error("tiny_a", &model);
    println!("tiny_a bf16 on CPU: max abs error {err:.3e} (max |output| {scale:.3e})");
    assert!(
        err <= 0.1 * scale,
        "bf16 error {err} vs output scale {scale}"
    );
}

/// Parity on the GPU in f32 (run on the GPU machine: `cargo test -p editd-models --features
/// cuda --test flux2_transformer -- --ignored`).
#[cfg(feature = "cuda")]
#[test]
#[ignore]
fn tiny_a_and_b_match_diffusers_on_cuda() {
    let device = Device::new_cuda(0).unwrap();
    for name in ["tiny_a", "tiny_b"] {
        let model = load_diffusers_on(name, DType::F32, &device);
        let (err, _) = reference_error(name, &model);
        println!("{name} f32 on CUDA: max abs error {err:.3e}");
        assert!(err <= TOLERANCE, "{name}: {err}");
        let model = load_diffusers_on(name, DType::BF16, &device);
        let (err, scale) = reference_error(name, &model);
        println!("{name} bf16 on CUDA: max abs error {err:.3e} (max |output| {scale:.3e})");
        assert!(err <= 0.1 * scale, "{name} bf16: {err}");
    }
}

#[test]
fn tiny_a_bfl_single_file_matches_diffusers() {
    if !have("tiny_a/bfl/flux-2-klein-tiny.safetensors") {
        return;
    }
    let cfg = Flux2TransformerConfig::from_file(fixture("tiny_a/transformer/config.json")).unwrap();
    let st = unsafe { MmapedSafetensors::new(fixture("tiny_a/bfl/flux-2-klein-tiny.safetensors")) }
        .unwrap();
    let names: Vec<String> = st.tensors().into_iter().map(|(n, _)| n).collect();
    assert!(is_bfl_checkpoint(&names));
    let tensors = load_bfl_transformer(&st, DType::F32, &Device::Cpu).unwrap();

    // Exactly the diffusers tensors, bit for bit.
    let diffusers = candle_core::safetensors::load(
        fixture("tiny_a/transformer/diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let mut got: Vec<_> = tensors.keys().cloned().collect();
    let mut want: Vec<_> = diffusers.keys().cloned().collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    assert!(!is_bfl_checkpoint(&want));
    for (name, t) in &diffusers {
        assert_eq!(max_abs_diff(&tensors[name], t), 0.0, "{name}");
    }

    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let model = Flux2Transformer::new(&cfg, vb).unwrap();
    check_reference("tiny_a", "tiny_a (BFL single file)", &model);
}

/// A `VarBuilder` backend that records every requested name and shape and hands back a
/// zero-strided broadcast of one scalar, so a multi-billion-parameter model costs nothing.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Request>>>);

/// One recorded `(name, shape)` request.
type Request = (String, Vec<usize>);

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0
            .lock()
            .unwrap()
            .push((name.to_string(), s.dims().to_vec()));
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("recorder: unchecked get of `{name}`")
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        false
    }
}

/// Builds the model over a [`Recorder`] and returns the requested `name → shape`.
fn requested(cfg: &Flux2TransformerConfig) -> BTreeMap<String, Vec<usize>> {
    let rec = Recorder::default();
    let vb = VarBuilder::from_backend(Box::new(rec.clone()), DType::F32, Device::Cpu);
    Flux2Transformer::new(cfg, vb).unwrap();
    let list = rec.0.lock().unwrap().clone();
    let map: BTreeMap<_, _> = list.iter().cloned().collect();
    assert_eq!(map.len(), list.len(), "a tensor was requested twice");
    map
}

type Shapes = BTreeMap<String, Vec<usize>>;

fn real_keys() -> HashMap<String, Shapes> {
    let text = std::fs::read_to_string(fixture("real_klein_4b/keys.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn real_klein_4b_config_requests_exactly_the_checkpoint_tensors() {
    if !have("real_klein_4b/transformer/config.json") || !have("real_klein_4b/keys.json") {
        return;
    }
    let cfg = Flux2TransformerConfig::from_file(fixture("real_klein_4b/transformer/config.json"))
        .unwrap();
    assert_eq!(cfg, Flux2TransformerConfig::klein_4b());
    let got = requested(&cfg);
    let keys = real_keys();
    let want = &keys["transformer"];
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(missing.is_empty(), "never requested: {missing:?}");
    assert!(extra.is_empty(), "not in the checkpoint: {extra:?}");
    for (name, shape) in want {
        assert_eq!(&got[name], shape, "{name}");
    }
    let params: usize = got.values().map(|s| s.iter().product::<usize>()).sum();
    println!("klein 4B: {} tensors, {params} params", got.len());
    assert_eq!(params, 3_875_544_576);
}

#[test]
fn real_klein_4b_bfl_keys_map_onto_the_diffusers_keys() {
    if !have("real_klein_4b/keys.json") {
        return;
    }
    let keys = real_keys();
    let bfl = &keys["transformer_bfl"];
    assert!(is_bfl_checkpoint(bfl.keys()));
    let mapped: Shapes = map_bfl_shapes(bfl.iter().map(|(k, v)| (k.clone(), v.clone())))
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(&mapped, &keys["transformer"]);
    // The ComfyUI-style prefix maps the same way.
    let prefixed = map_bfl_shapes(
        bfl.iter()
            .map(|(k, v)| (format!("model.diffusion_model.{k}"), v.clone())),
    )
    .unwrap();
    assert_eq!(prefixed.into_iter().collect::<Shapes>(), mapped);
}

#[test]
fn config_defaults_follow_diffusers_and_bad_configs_are_rejected() {
    let cfg =
        Flux2TransformerConfig::from_json_str(r#"{"_class_name": "Flux2Transformer2DModel"}"#)
            .unwrap();
    assert_eq!(
        (
            cfg.num_layers,
            cfg.num_single_layers,
            cfg.num_attention_heads,
            cfg.joint_attention_dim
        ),
        (8, 48, 48, 15360)
    );
    assert!(cfg.guidance_embeds);
    assert_eq!(cfg.out_channels(), 128);
    let bad = Flux2TransformerConfig::from_json_str(r#"{"axes_dims_rope": [32, 32, 32]}"#)
        .unwrap_err()
        .to_string();
    assert!(bad.contains("sum(axes_dims_rope) = 96"), "{bad}");
    assert!(
        Flux2TransformerConfig::from_json_str(r#"{"axes_dims_rope": [31, 33, 32, 32]}"#).is_err()
    );
    assert!(Flux2TransformerConfig::from_json_str(r#"{"num_layers": "five"}"#).is_err());
}

/// A small random model (and its config) for property tests that need no fixture.
fn random_model(guidance_embeds: bool) -> (Flux2TransformerConfig, Flux2Transformer) {
    let cfg = Flux2TransformerConfig {
        in_channels: 8,
        out_channels: Some(6),
        num_layers: 1,
        num_single_layers: 1,
        attention_head_dim: 8,
        num_attention_heads: 2,
        joint_attention_dim: 12,
        timestep_guidance_channels: 16,
        axes_dims_rope: vec![2, 2, 2, 2],
        guidance_embeds,
        ..Flux2TransformerConfig::klein_4b()
    };
    let tensors: HashMap<String, Tensor> = requested(&cfg)
        .into_iter()
        .map(|(name, shape)| {
            let t = Tensor::randn(0f32, 0.3, shape, &Device::Cpu).unwrap();
            (name, t)
        })
        .collect();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let model = Flux2Transformer::new(&cfg, vb).unwrap();
    (cfg, model)
}

#[test]
fn batch_items_are_independent_and_token_order_follows_ids() {
    let (cfg, model) = random_model(false);
    let dev = Device::Cpu;
    let img_ids = PositionIds::image_grid(0, 2, 3).concat(&PositionIds::image_grid(10, 1, 2));
    let txt_ids = PositionIds::text(4);
    let img = Tensor::randn(0f32, 1., (2, 8, cfg.in_channels), &dev).unwrap();
    let txt = Tensor::randn(0f32, 1., (2, 4, cfg.joint_attention_dim), &dev).unwrap();
    let both = model
        .forward(&img, &img_ids, &txt, &txt_ids, 0.7, None)
        .unwrap();
    assert_eq!(both.dims(), &[2, 8, 6]);
    for i in 0..2 {
        let one = model
            .forward(
                &img.narrow(0, i, 1).unwrap(),
                &img_ids,
                &txt.narrow(0, i, 1).unwrap(),
                &txt_ids,
                0.7,
                None,
            )
            .unwrap();
        let err = max_abs_diff(&one, &both.narrow(0, i, 1).unwrap());
        assert!(err < 1e-5, "batch item {i}: {err}");
    }

    // Attention is unmasked and positions come only from the ids, so permuting the image
    // tokens together with their ids permutes the output the same way.
    let perm: Vec<u32> = vec![5, 0, 7, 2, 1, 6, 3, 4];
    let idx = Tensor::new(perm.as_slice(), &dev).unwrap();
    let img_p = img.index_select(&idx, 1).unwrap();
    let ids_p = PositionIds(perm.iter().map(|&p| img_ids.0[p as usize]).collect());
    let out_p = model
        .forward(&img_p, &ids_p, &txt, &txt_ids, 0.7, None)
        .unwrap();
    let err = max_abs_diff(&out_p, &both.index_select(&idx, 1).unwrap());
    assert!(err < 1e-5, "permutation: {err}");

    // Changing a reference token's time offset changes the result (ids reach RoPE).
    let mut moved = img_ids.clone();
    moved.0[7][0] = 20;
    let out_m = model
        .forward(&img, &moved, &txt, &txt_ids, 0.7, None)
        .unwrap();
    assert!(max_abs_diff(&out_m, &both) > 1e-4);
}

#[test]
fn guidance_embedder_is_used_only_when_present_and_given() {
    let dev = Device::Cpu;
    let ids = PositionIds::image_grid(0, 2, 2);
    let txt_ids = PositionIds::text(3);
    let (cfg, model) = random_model(true);
    let img = Tensor::randn(0f32, 1., (1, 4, cfg.in_channels), &dev).unwrap();
    let txt = Tensor::randn(0f32, 1., (1, 3, cfg.joint_attention_dim), &dev).unwrap();
    let run = |m: &Flux2Transformer, g| m.forward(&img, &ids, &txt, &txt_ids, 0.5, g).unwrap();
    assert!(max_abs_diff(&run(&model, Some(4.0)), &run(&model, None)) > 1e-4);
    assert!(max_abs_diff(&run(&model, Some(4.0)), &run(&model, Some(3.0))) > 1e-4);
    let (_, plain) = random_model(false);
    assert_eq!(
        max_abs_diff(&run(&plain, Some(4.0)), &run(&plain, None)),
        0.0
    );
}

#[test]
fn bad_inputs_name_their_shapes() {
    let (cfg, model) = random_model(false);
    let dev = Device::Cpu;
    let ids = PositionIds::image_grid(0, 2, 2);
    let txt_ids = PositionIds::text(3);
    let img = Tensor::zeros((1, 4, cfg.in_channels + 1), DType::F32, &dev).unwrap();
    let txt = Tensor::zeros((1, 3, cfg.joint_attention_dim), DType::F32, &dev).unwrap();
    let e = model
        .forward(&img, &ids, &txt, &txt_ids, 0.5, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[1, 4, 9]"), "{e}");
    let img = Tensor::zeros((1, 4, cfg.in_channels), DType::F32, &dev).unwrap();
    let e = model
        .forward(
            &img,
            &PositionIds::image_grid(0, 1, 2),
            &txt,
            &txt_ids,
            0.5,
            None,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 img ids"), "{e}");
}
