//! Whole-checkpoint loading of FLUX.2 [klein]: local diffusers folders, a hub id resolved
//! offline from a hub-cache layout, sharded safetensors, BFL single-file transformers, and the
//! errors for missing files, missing tensors and wrong shapes.

mod common;
use common::*;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use editd_models::flux2::loader::{
    load_text_encoder, transformer_var_builder, vae_var_builder, Flux2Checkpoint, Flux2Klein,
    HubOptions, ModelSource, TransformerFormat,
};
use editd_models::traits::{LoadOptions, TextEncoder};
use editd_models::ModelError;

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/flux2"
    ))
}

/// The tiny checkpoint `name`, or `None` (test skipped) while the fixture is not there yet.
fn tiny(name: &str) -> Option<PathBuf> {
    let d = fixtures().join(name);
    if d.join("model_index.json").is_file() {
        Some(d)
    } else {
        eprintln!("skipping: fixture {} not present", d.display());
        None
    }
}

fn cpu() -> LoadOptions {
    LoadOptions {
        device: Device::Cpu,
        dtype: DType::F32,
    }
}

/// A scratch folder removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("editd-loader-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies a diffusers checkpoint (only the pipeline components) into `dst`.
fn copy_checkpoint(src: &Path, dst: &Path) {
    for entry in [
        "model_index.json",
        "scheduler",
        "text_encoder",
        "tokenizer",
        "transformer",
        "vae",
    ] {
        copy_tree(&src.join(entry), &dst.join(entry));
    }
}

fn copy_tree(src: &Path, dst: &Path) {
    if src.is_dir() {
        std::fs::create_dir_all(dst).unwrap();
        for e in std::fs::read_dir(src).unwrap() {
            let e = e.unwrap();
            copy_tree(&e.path(), &dst.join(e.file_name()));
        }
    } else {
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(src, dst).unwrap();
    }
}

fn encode(ckpt: &Flux2Checkpoint) -> Tensor {
    let enc = load_text_encoder(ckpt, &cpu()).unwrap();
    enc.encode(&["a red bicycle".to_string()]).unwrap().embeds
}

#[test]
fn loads_both_tiny_checkpoints() {
    for name in ["tiny_a", "tiny_b", "tiny_a_base"] {
        let Some(dir) = tiny(name) else { continue };
        let src = ModelSource::parse(dir.to_str().unwrap()).unwrap();
        assert_eq!(src, ModelSource::Dir(dir.clone()));
        let ckpt = Flux2Checkpoint::resolve(&src, &HubOptions::default()).unwrap();
        assert_eq!(
            ckpt.is_distilled,
            name != "tiny_a_base",
            "{name}: is_distilled"
        );
        assert!(ckpt.scheduler.use_dynamic_shifting);
        assert_eq!(ckpt.scheduler.time_shift_type, "exponential");
        assert_eq!(ckpt.transformer.format, TransformerFormat::Diffusers);
        let model = Flux2Klein::from_checkpoint(&ckpt, &cpu()).unwrap();
        assert_eq!(model.is_distilled, ckpt.is_distilled);
        let cfg = ckpt.text_encoder_config().unwrap();
        assert_eq!(
            model.text_encoder.embed_dim(),
            3 * cfg.hidden_size,
            "{name}"
        );
    }
}

#[test]
fn hub_id_resolves_offline_from_a_hub_cache() {
    let Some(src) = tiny("tiny_a") else { return };
    let scratch = Scratch::new("hub");
    let cache = scratch.0.join("hub");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let repo_dir = cache.join("models--editd-test--tiny-klein");
    copy_checkpoint(&src, &repo_dir.join("snapshots").join(commit));
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs").join("main"), commit).unwrap();

    let hub = HubOptions::offline_from(&cache);
    let source = ModelSource::parse("editd-test/tiny-klein").unwrap();
    let ckpt = Flux2Checkpoint::resolve(&source, &hub).unwrap();
    assert_eq!(ckpt.root, repo_dir.join("snapshots").join(commit));
    let from_hub = encode(&ckpt);
    let local = encode(&Flux2Checkpoint::from_dir(&src).unwrap());
    assert_eq!(max_abs_diff(&from_hub, &local), 0.0);

    // An explicit commit revision resolves without refs; an unknown one fails clearly.
    let pinned = ModelSource::parse(&format!("editd-test/tiny-klein@{commit}")).unwrap();
    assert_eq!(
        Flux2Checkpoint::resolve(&pinned, &hub).unwrap().root,
        ckpt.root
    );
    let err = Flux2Checkpoint::resolve(&ModelSource::parse("editd-test/absent").unwrap(), &hub)
        .unwrap_err();
    assert!(matches!(err, ModelError::Hub(_)), "{err}");
    assert!(err.to_string().contains("offline"), "{err}");

    // Online but the hub is unreachable: falls back to the cached snapshot, like huggingface_hub.
    let unreachable = HubOptions {
        cache_dir: Some(cache.clone()),
        offline: false,
        progress: false,
        endpoint: Some("http://127.0.0.1:9".into()),
        token: None,
    };
    assert_eq!(
        Flux2Checkpoint::resolve(&source, &unreachable)
            .unwrap()
            .root,
        ckpt.root
    );
}

#[test]
fn sharded_text_encoder_loads_like_the_single_file() {
    let Some(src) = tiny("tiny_b") else { return };
    let scratch = Scratch::new("shards");
    let dst = scratch.0.join("ckpt");
    copy_checkpoint(&src, &dst);
    let te = dst.join("text_encoder");
    let single = te.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&single, &Device::Cpu).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (part, file) in [
        (a, "model-00001-of-00002.safetensors"),
        (b, "model-00002-of-00002.safetensors"),
    ] {
        let shard: HashMap<String, Tensor> = part
            .iter()
            .map(|n| ((*n).clone(), tensors[*n].clone()))
            .collect();
        candle_core::safetensors::save(&shard, te.join(file)).unwrap();
        for n in part {
            weight_map.insert((*n).clone(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    std::fs::write(te.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::remove_file(&single).unwrap();

    let ckpt = Flux2Checkpoint::from_dir(&dst).unwrap();
    assert_eq!(ckpt.text_encoder.weights.files.len(), 2);
    assert!(ckpt.text_encoder.weights.index.is_some());
    let sharded = encode(&ckpt);
    let reference = encode(&Flux2Checkpoint::from_dir(&src).unwrap());
    assert_eq!(max_abs_diff(&sharded, &reference), 0.0);

    // A shard named by the index but absent: the error names the file.
    std::fs::remove_file(te.join("model-00002-of-00002.safetensors")).unwrap();
    let err = Flux2Checkpoint::from_dir(&dst).unwrap_err();
    match &err {
        ModelError::MissingFile { path, .. } => {
            assert!(path.ends_with("model-00002-of-00002.safetensors"))
        }
        other => panic!("expected MissingFile, got {other}"),
    }
}

#[test]
fn missing_component_file_is_reported_with_its_path() {
    let Some(src) = tiny("tiny_a") else { return };
    let scratch = Scratch::new("missing");
    let dst = scratch.0.join("ckpt");
    copy_checkpoint(&src, &dst);
    let vae_weights = dst.join("vae").join("diffusion_pytorch_model.safetensors");
    std::fs::remove_file(&vae_weights).unwrap();
    let err = Flux2Checkpoint::from_dir(&dst).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelError::MissingFile { .. }), "{msg}");
    assert!(msg.contains(&vae_weights.display().to_string()), "{msg}");

    std::fs::remove_file(dst.join("tokenizer").join("tokenizer.json")).unwrap();
    copy_tree(&src.join("vae"), &dst.join("vae"));
    let msg = Flux2Checkpoint::from_dir(&dst).unwrap_err().to_string();
    assert!(msg.contains("tokenizer.json"), "{msg}");
}

#[test]
fn wrong_shape_and_missing_tensor_name_the_tensor() {
    let Some(src) = tiny("tiny_a") else { return };
    let scratch = Scratch::new("shape");
    let dst = scratch.0.join("ckpt");
    copy_checkpoint(&src, &dst);
    let file = dst.join("text_encoder").join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let bad = "model.layers.3.mlp.up_proj.weight";
    let (r, c) = tensors[bad].dims2().unwrap();
    tensors.insert(
        bad.into(),
        Tensor::zeros((r, c + 1), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let ckpt = Flux2Checkpoint::from_dir(&dst).unwrap();
    let err = load_text_encoder(&ckpt, &cpu()).unwrap_err();
    println!("wrong shape: {err}");
    match &err {
        ModelError::Shape {
            name,
            expected,
            found,
        } => {
            assert!(name.ends_with(bad), "{name}");
            assert_eq!(
                (expected.clone(), found.clone()),
                (vec![r, c], vec![r, c + 1])
            );
        }
        other => panic!("expected Shape, got {other}"),
    }

    let gone = "model.layers.5.self_attn.k_norm.weight";
    tensors.remove(gone);
    tensors.insert(
        bad.into(),
        Tensor::zeros((r, c), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let err = load_text_encoder(&ckpt, &cpu()).unwrap_err();
    println!("missing tensor: {err}");
    assert!(
        matches!(&err, ModelError::MissingTensor { name } if name.ends_with(gone)),
        "{err}"
    );
}

#[test]
fn bfl_single_file_transformer_matches_the_diffusers_weights() {
    let Some(src) = tiny("tiny_a") else { return };
    let bfl = src.join("bfl").join("flux-2-klein-tiny.safetensors");
    if !bfl.is_file() {
        eprintln!("skipping: {} not present", bfl.display());
        return;
    }
    let source = ModelSource::parse(bfl.to_str().unwrap()).unwrap();
    assert_eq!(source, ModelSource::TransformerFile(bfl.clone()));
    // bfl/ holds no model_index.json: the file alone is not a pipeline.
    assert!(matches!(
        Flux2Checkpoint::resolve(&source, &HubOptions::default()),
        Err(ModelError::MissingFile { .. })
    ));
    let ckpt = Flux2Checkpoint::resolve_with(
        &ModelSource::Dir(src.clone()),
        Some(&bfl),
        &HubOptions::default(),
    )
    .unwrap();
    assert_eq!(ckpt.transformer.format, TransformerFormat::Bfl);
    let vb = transformer_var_builder(&ckpt, &cpu()).unwrap();
    let diffusers = candle_core::safetensors::load(
        src.join("transformer")
            .join("diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    for (name, want) in &diffusers {
        let got = vb.get(want.dims(), name).unwrap();
        assert_eq!(max_abs_diff(&got, want), 0.0, "{name}");
    }
    // A BFL file placed in transformer/ is detected there too.
    let scratch = Scratch::new("bfl");
    let dst = scratch.0.join("ckpt");
    copy_checkpoint(&src, &dst);
    std::fs::remove_file(
        dst.join("transformer")
            .join("diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    std::fs::copy(
        &bfl,
        dst.join("transformer")
            .join("flux-2-klein-tiny.safetensors"),
    )
    .unwrap();
    let ckpt = Flux2Checkpoint::from_dir(&dst).unwrap();
    assert_eq!(ckpt.transformer.format, TransformerFormat::Bfl);
    Flux2Klein::from_checkpoint(&ckpt, &cpu()).unwrap();
    vae_var_builder(&ckpt, &cpu()).unwrap();
}
