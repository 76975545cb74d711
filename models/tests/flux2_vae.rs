//! Tests of the FLUX.2 VAE (`editd_models::flux2::vae`) against diffusers 0.42.1
//! `AutoencoderKLFlux2` fixtures (written by `tests/fixtures/make_fixtures.py`), plus the latent
//! layout helpers and the real klein-4B checkpoint names/shapes.

mod common;
use common::*;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use editd_models::flux2::vae::{
    patchify, unpatchify, AutoencoderKlFlux2, Flux2VaeConfig, LatentBatchNorm,
};
use editd_models::traits::LatentCodec;
use editd_models::ModelError;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/flux2");
const TOL: f32 = 1e-3;

fn fixture(rel: &str) -> PathBuf {
    Path::new(FIXTURES).join(rel)
}

fn load_tensors(path: &Path) -> HashMap<String, Tensor> {
    assert!(path.exists(), "missing fixture {}", path.display());
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("loading {}: {e}", path.display()))
}

fn load_tiny(name: &str) -> AutoencoderKlFlux2 {
    let cfg = Flux2VaeConfig::from_file(&fixture(&format!("{name}/vae/config.json"))).unwrap();
    let weights = load_tensors(&fixture(&format!(
        "{name}/vae/diffusion_pytorch_model.safetensors"
    )));
    let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
    AutoencoderKlFlux2::new(&cfg, vb).unwrap()
}

// ---------------------------------------------------------------- layout helpers

#[test]
fn patchify_channel_order_is_c4_py2_px() {
    // value(c, y, x) = 1000c + 10y + x on a (1, 3, 4, 6) grid.
    let (c, h, w) = (3usize, 4usize, 6usize);
    let data: Vec<f32> = (0..c * h * w)
        .map(|i| {
            let (ci, y, x) = (i / (h * w), (i / w) % h, i % w);
            (1000 * ci + 10 * y + x) as f32
        })
        .collect();
    let z = Tensor::from_vec(data, (1, c, h, w), &Device::Cpu).unwrap();
    let p = patchify(&z, (2, 2)).unwrap();
    assert_eq!(p.dims(), &[1, 4 * c, h / 2, w / 2]);
    let pv = p.squeeze(0).unwrap().to_vec3::<f32>().unwrap();
    for ci in 0..c {
        for py in 0..2 {
            for px in 0..2 {
                for (i, row) in pv[ci * 4 + py * 2 + px].iter().enumerate() {
                    for (j, &got) in row.iter().enumerate() {
                        let expect = (1000 * ci + 10 * (2 * i + py) + (2 * j + px)) as f32;
                        assert_eq!(got, expect, "c{ci} py{py} px{px} ({i},{j})");
                    }
                }
            }
        }
    }
    // And back exactly.
    assert_eq!(max_abs_diff(&unpatchify(&p, (2, 2)).unwrap(), &z), 0.0);
}

#[test]
fn unpatchify_inverts_patchify_on_random_batch() {
    let z = Tensor::randn(0f32, 1., (2, 5, 6, 10), &Device::Cpu).unwrap();
    let p = patchify(&z, (2, 2)).unwrap();
    assert_eq!(p.dims(), &[2, 20, 3, 5]);
    assert_eq!(max_abs_diff(&unpatchify(&p, (2, 2)).unwrap(), &z), 0.0);
    let back = patchify(&unpatchify(&p, (2, 2)).unwrap(), (2, 2)).unwrap();
    assert_eq!(max_abs_diff(&back, &p), 0.0);
}

#[test]
fn patchify_rejects_odd_sizes_and_unpatchify_bad_channels() {
    let z = Tensor::zeros((1, 4, 5, 6), DType::F32, &Device::Cpu).unwrap();
    let err = patchify(&z, (2, 2)).unwrap_err();
    assert!(matches!(err, ModelError::Input(_)), "{err}");
    assert!(err.to_string().contains("[1, 4, 5, 6]"), "{err}");
    let z = Tensor::zeros((1, 6, 2, 2), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(unpatchify(&z, (2, 2)), Err(ModelError::Input(_))));
}

#[test]
fn bn_normalize_matches_formula_and_round_trips() {
    let dev = Device::Cpu;
    let mean = Tensor::new(&[0.5f32, -1.0, 2.0], &dev).unwrap();
    let var = Tensor::new(&[4.0f32, 0.25, 1.0], &dev).unwrap();
    let eps = 1e-4;
    let bn = LatentBatchNorm::new(&mean, &var, eps).unwrap();
    assert_eq!(bn.channels(), 3);
    let z = Tensor::randn(0f32, 2., (2, 3, 4, 5), &dev).unwrap();
    let n = bn.normalize(&z).unwrap();
    let zf = z.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let nf = n.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (m, v) = ([0.5f32, -1.0, 2.0], [4.0f32, 0.25, 1.0]);
    for (i, (&a, &b)) in zf.iter().zip(&nf).enumerate() {
        let c = (i / 20) % 3; // (2, 3, 4, 5): 20 elements per channel plane
        let expect = (a - m[c]) / (v[c] + eps as f32).sqrt();
        assert!((b - expect).abs() < 1e-6, "elem {i}: {b} vs {expect}");
    }
    let back = bn.denormalize(&n).unwrap();
    assert!(max_abs_diff(&back, &z) < 1e-5);
    // Wrong channel count is a clear input error.
    let bad = Tensor::zeros((1, 4, 2, 2), DType::F32, &dev).unwrap();
    let err = bn.normalize(&bad).unwrap_err();
    assert!(err.to_string().contains("(B, 3, h, w)"), "{err}");
}

#[test]
fn config_defaults_equal_real_klein_4b_config() {
    let real = Flux2VaeConfig::from_file(&fixture("real_klein_4b/vae/config.json")).unwrap();
    assert_eq!(real, Flux2VaeConfig::default());
    let empty: Flux2VaeConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(empty, Flux2VaeConfig::default());
    assert_eq!(real.vae_scale_factor(), 8);
    assert_eq!(real.patched_channels(), 128);
}

#[test]
fn config_rejects_unsupported_block_types() {
    let json = r#"{"down_block_types": ["DownEncoderBlock2D", "AttnDownEncoderBlock2D",
                                         "DownEncoderBlock2D", "DownEncoderBlock2D"]}"#;
    let cfg: Flux2VaeConfig = serde_json::from_str(json).unwrap();
    let err = cfg.validate().unwrap_err();
    assert!(err.to_string().contains("AttnDownEncoderBlock2D"), "{err}");
}

// ---------------------------------------------------------------- parity with diffusers

fn check_against_diffusers(name: &str) {
    let vae = load_tiny(name);
    let r = load_tensors(&fixture(&format!("{name}/reference/vae.safetensors")));
    let (image, mean_ref, latents_ref) = (&r["image"], &r["posterior_mean"], &r["latents"]);
    let (decode_input, decoded_ref) = (&r["decode_input"], &r["decoded"]);

    let mean = vae.encode_mean(image).unwrap();
    let e_mean = max_abs_diff(&mean, mean_ref);
    let latents = vae.encode(image).unwrap();
    let e_lat = max_abs_diff(&latents, latents_ref);
    let decoded = vae.decode(decode_input).unwrap();
    let e_dec = max_abs_diff(&decoded, decoded_ref);
    // decode_raw on the de-normalised, unpatchified input is the same computation.
    let z = vae
        .unpatchify(&vae.bn_denormalize(decode_input).unwrap())
        .unwrap();
    let e_raw = max_abs_diff(&vae.decode_raw(&z).unwrap(), decoded_ref);
    let peak = max_abs_diff(decoded_ref, &decoded_ref.zeros_like().unwrap());
    println!(
        "{name}: image {:?} | max abs err posterior_mean {e_mean:.3e} latents {e_lat:.3e} \
         decoded {e_dec:.3e} (decode_raw {e_raw:.3e}); max |decoded| {peak:.3}",
        image.dims()
    );
    assert!(e_mean <= TOL, "{name} posterior_mean max abs err {e_mean}");
    assert!(e_lat <= TOL, "{name} latents max abs err {e_lat}");
    assert!(e_dec <= TOL, "{name} decoded max abs err {e_dec}");
    assert!(e_raw <= TOL, "{name} decode_raw max abs err {e_raw}");
    assert_eq!(vae.downscale(), 16);
    assert_eq!(vae.latent_channels(), 4 * vae.config().latent_channels);
    assert_eq!(latents.dims()[1], vae.latent_channels());
}

#[test]
fn tiny_a_matches_diffusers() {
    check_against_diffusers("tiny_a");
}

#[test]
fn tiny_b_matches_diffusers() {
    check_against_diffusers("tiny_b");
}

#[test]
fn codec_rejects_sizes_not_multiple_of_16_and_wrong_channels() {
    let vae = load_tiny("tiny_b");
    let img = Tensor::zeros((1, 3, 40, 32), DType::F32, &Device::Cpu).unwrap();
    let err = vae.encode(&img).unwrap_err();
    assert!(matches!(err, ModelError::Input(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("multiples of 16") && msg.contains("[1, 3, 40, 32]"),
        "{msg}"
    );
    let img = Tensor::zeros((1, 4, 32, 32), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(vae.encode(&img), Err(ModelError::Input(_))));
    let lat = Tensor::zeros((1, 16, 2, 2), DType::F32, &Device::Cpu).unwrap();
    let err = vae.decode(&lat).unwrap_err();
    assert!(err.to_string().contains("(B, 64, H, W)"), "{err}");
}

// ---------------------------------------------------------------- real checkpoint names

/// A VarBuilder backend that checks every request against the real checkpoint's name → shape
/// list, records it, and hands back a broadcast zero (no real allocation).
type Requests = Arc<Mutex<Vec<(String, Vec<usize>)>>>;

struct RecordingBackend {
    expected: BTreeMap<String, Vec<usize>>,
    requested: Requests,
}

impl SimpleBackend for RecordingBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.requested
            .lock()
            .unwrap()
            .push((name.to_string(), s.dims().to_vec()));
        match self.expected.get(name) {
            None => candle_core::bail!("`{name}` is not in the real checkpoint"),
            Some(e) if e.as_slice() != s.dims() => {
                candle_core::bail!("`{name}`: requested {:?}, checkpoint has {e:?}", s.dims())
            }
            Some(_) => Tensor::zeros((), dtype, dev)?.broadcast_as(s),
        }
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        candle_core::bail!("unexpected unchecked request for `{name}`")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.expected.contains_key(name)
    }
}

#[test]
fn real_klein_4b_requests_exactly_the_checkpoint_tensors() {
    let cfg = Flux2VaeConfig::from_file(&fixture("real_klein_4b/vae/config.json")).unwrap();
    let text = std::fs::read_to_string(fixture("real_klein_4b/keys.json")).unwrap();
    let keys: HashMap<String, BTreeMap<String, Vec<usize>>> = serde_json::from_str(&text).unwrap();
    let expected: BTreeMap<String, Vec<usize>> = keys["vae"]
        .iter()
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let requested = Arc::new(Mutex::new(Vec::new()));
    let backend = RecordingBackend {
        expected: expected.clone(),
        requested: requested.clone(),
    };
    let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, Device::Cpu);
    let vae = AutoencoderKlFlux2::new(&cfg, vb).unwrap();
    assert_eq!(vae.latent_channels(), 128);
    assert_eq!(vae.downscale(), 16);

    let requested = requested.lock().unwrap().clone();
    let mut seen = BTreeMap::new();
    for (name, shape) in &requested {
        assert!(
            seen.insert(name.clone(), shape.clone()).is_none(),
            "`{name}` requested twice"
        );
    }
    let missing: Vec<_> = expected.keys().filter(|k| !seen.contains_key(*k)).collect();
    assert!(missing.is_empty(), "never requested: {missing:?}");
    assert_eq!(seen, expected);
    let params: usize = expected.values().map(|s| s.iter().product::<usize>()).sum();
    println!(
        "real klein-4B VAE: {} tensors, {:.1} M params, all requested with their shapes",
        seen.len(),
        params as f64 / 1e6
    );
}
