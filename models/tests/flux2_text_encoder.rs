//! FLUX.2 [klein] prompt encoding against diffusers 0.42.1 / transformers references
//! (`tests/fixtures/flux2/<tiny>/reference/text_encoder.*`, made by `make_fixtures.py`): chat
//! template text, token ids + mask, and `prompt_embeds` in f32 on CPU; plus the real Qwen3-4B
//! config and the exact tensors the encoder requests from a klein-4B checkpoint.

mod common;
use common::max_abs_diff;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use editd_models::flux2::loader::{load_text_encoder, Flux2Checkpoint};
use editd_models::flux2::text_encoder::{Qwen3Config, Qwen3Encoder, DEFAULT_TAPS};
use editd_models::flux2::tokenizer::Flux2Tokenizer;
use editd_models::traits::{LoadOptions, PositionIds, TextEncoder};

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/flux2"
    ))
}

#[derive(serde::Deserialize)]
struct Reference {
    prompts: Vec<String>,
    rendered: Vec<String>,
    #[serde(default)]
    hidden_states_layers: Option<Vec<usize>>,
}

struct Case {
    prompts: Vec<String>,
    rendered: Vec<String>,
    taps: Vec<usize>,
    input_ids: Vec<Vec<i64>>,
    attention_mask: Vec<Vec<i64>>,
    prompt_embeds: Tensor,
}

/// `None` while the fixture is not there yet (the fixture helper writes it).
fn reference(name: &str) -> Option<Case> {
    let dir = fixtures().join(name).join("reference");
    let json = dir.join("text_encoder.json");
    let st = dir.join("text_encoder.safetensors");
    if !json.is_file() || !st.is_file() {
        eprintln!("skipping: {} not present", json.display());
        return None;
    }
    let r: Reference = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    let t = candle_core::safetensors::load(st, &Device::Cpu).unwrap();
    Some(Case {
        prompts: r.prompts,
        rendered: r.rendered,
        taps: r.hidden_states_layers.unwrap_or(DEFAULT_TAPS.to_vec()),
        input_ids: t["input_ids"]
            .to_dtype(DType::I64)
            .unwrap()
            .to_vec2()
            .unwrap(),
        attention_mask: t["attention_mask"]
            .to_dtype(DType::I64)
            .unwrap()
            .to_vec2()
            .unwrap(),
        prompt_embeds: t["prompt_embeds"].to_dtype(DType::F32).unwrap(),
    })
}

fn check_tokenizer(name: &str) {
    let Some(case) = reference(name) else { return };
    let tok = Flux2Tokenizer::from_dir(&fixtures().join(name).join("tokenizer")).unwrap();
    for (p, want) in case.prompts.iter().zip(&case.rendered) {
        let got = tok.render(p).unwrap();
        assert_eq!(&got, want, "{name}: rendered chat template of {p:?}");
        let spec = format!(
            "<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        );
        assert_eq!(got, spec, "{name}: byte-exact template of {p:?}");
    }
    let tokens = tok.tokenize(&case.prompts).unwrap();
    let ids: Vec<Vec<i64>> = tokens
        .input_ids
        .iter()
        .map(|r| r.iter().map(|&x| x as i64).collect())
        .collect();
    let mask: Vec<Vec<i64>> = tokens
        .attention_mask
        .iter()
        .map(|r| r.iter().map(|&x| x as i64).collect())
        .collect();
    assert_eq!(ids, case.input_ids, "{name}: input_ids");
    assert_eq!(mask, case.attention_mask, "{name}: attention_mask");
    assert!(ids.iter().all(|r| r.len() == 512));
}

fn check_embeds(name: &str) {
    let Some(case) = reference(name) else { return };
    let ckpt = Flux2Checkpoint::from_dir(&fixtures().join(name)).unwrap();
    let opts = LoadOptions {
        device: Device::Cpu,
        dtype: DType::F32,
    };
    assert_eq!(case.taps, DEFAULT_TAPS, "{name}: reference taps");
    let enc = load_text_encoder(&ckpt, &opts).unwrap();
    let out = enc.encode(&case.prompts).unwrap();
    assert_eq!(out.ids, PositionIds::text(512));
    assert_eq!(
        out.embeds.dims(),
        case.prompt_embeds.dims(),
        "{name}: prompt_embeds shape"
    );
    let err = max_abs_diff(&out.embeds, &case.prompt_embeds);
    let scale = case
        .prompt_embeds
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    println!(
        "{name}: prompt_embeds max abs error {err:.3e} (max |ref| {:.3})",
        scale.to_scalar::<f32>().unwrap()
    );
    assert!(
        err <= 1e-4,
        "{name}: prompt_embeds max abs error {err:e} > 1e-4"
    );
}

#[test]
fn tiny_a_chat_template_and_tokens_match_transformers() {
    check_tokenizer("tiny_a");
}

#[test]
fn tiny_b_chat_template_and_tokens_match_transformers() {
    check_tokenizer("tiny_b");
}

#[test]
fn tiny_a_prompt_embeds_match_diffusers() {
    check_embeds("tiny_a");
}

#[test]
fn tiny_b_prompt_embeds_match_diffusers() {
    check_embeds("tiny_b");
}

#[test]
fn long_prompt_is_truncated_to_512_without_padding() {
    let dir = fixtures().join("tiny_a").join("tokenizer");
    if !dir.is_dir() {
        return;
    }
    let tok = Flux2Tokenizer::from_dir(&dir).unwrap();
    let long = "cat ".repeat(2000);
    let t = tok.tokenize(&[long]).unwrap();
    assert_eq!(t.input_ids[0].len(), 512);
    assert!(t.attention_mask[0].iter().all(|&m| m == 1));
    let short = tok.tokenize(&["a".to_string()]).unwrap();
    let n = short.attention_mask[0].iter().filter(|&&m| m == 1).count();
    assert!(short.input_ids[0][n..].iter().all(|&id| id == tok.pad_id()));
}

/// A `VarBuilder` backend that records every requested tensor and hands out zero-stride
/// zeros (nothing of the requested size is allocated).
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<BTreeMap<String, Vec<usize>>>>);

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0
            .lock()
            .unwrap()
            .insert(name.to_string(), s.dims().to_vec());
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("unchecked get of {name} not expected")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

#[test]
fn real_klein_4b_encoder_requests_exactly_the_needed_keys() {
    let dir = fixtures().join("real_klein_4b");
    let keys = dir.join("keys.json");
    if !keys.is_file() {
        eprintln!("skipping: {} not present", keys.display());
        return;
    }
    let cfg: Qwen3Config = serde_json::from_str(
        &std::fs::read_to_string(dir.join("text_encoder/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (
            cfg.hidden_size,
            cfg.num_hidden_layers,
            cfg.head_dim(),
            cfg.num_kv_heads()
        ),
        (2560, 36, 128, 8)
    );
    assert_eq!(cfg.rope_theta(), 1e6);
    cfg.validate().unwrap();

    let all: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(keys).unwrap()).unwrap();
    let te: BTreeMap<String, Vec<usize>> =
        serde_json::from_value(all["text_encoder"].clone()).unwrap();
    let rec = Recorder::default();
    let vb = VarBuilder::from_backend(Box::new(rec.clone()), DType::BF16, Device::Cpu);
    let enc = Qwen3Encoder::new(&cfg, &DEFAULT_TAPS, vb).unwrap();
    assert_eq!(enc.output_dim(), 7680);
    let requested = rec.0.lock().unwrap().clone();

    let layer_of = |k: &str| -> Option<usize> {
        k.strip_prefix("model.layers.")?
            .split('.')
            .next()?
            .parse()
            .ok()
    };
    let needed: BTreeMap<String, Vec<usize>> = te
        .iter()
        .filter(|(k, _)| match layer_of(k) {
            Some(l) => l < 27,
            None => k.as_str() == "model.embed_tokens.weight",
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(
        requested, needed,
        "requested keys/shapes differ from keys.json"
    );
    let unused: Vec<&String> = te.keys().filter(|k| !requested.contains_key(*k)).collect();
    println!(
        "requested {} of {} text-encoder tensors; unused e.g. {:?}",
        requested.len(),
        te.len(),
        &unused[..3]
    );
    assert!(unused
        .iter()
        .all(|k| layer_of(k).is_some_and(|l| l >= 27) || k.as_str() == "model.norm.weight"));
}
