//! Whole-checkpoint loading for FLUX.2 [klein]: where the files are (local diffusers folder,
//! Hugging Face Hub repo, BFL single-file transformer) and a `VarBuilder` per component.
//!
//! Follows diffusers 0.42.1 `pipelines/pipeline_utils.py` (`DiffusionPipeline.from_pretrained`:
//! `model_index.json` + one folder per component) and `pipelines/flux2/pipeline_flux2_klein.py`
//! (`Flux2KleinPipeline.__init__(…, is_distilled=False)`: a `model_index.json` without
//! `is_distilled` means a base, CFG model), transformers' sharded-checkpoint convention
//! (`model.safetensors.index.json`), and diffusers `loaders/single_file_utils.py` for BFL files.

mod bundle;
mod hub;
mod weights;

use std::path::{Path, PathBuf};

use candle_nn::VarBuilder;
use serde::Deserialize;

pub use bundle::{load_transformer, load_vae, Flux2Klein};
pub use hub::{cached_snapshot, resolve_snapshot, HubOptions};
pub use weights::{detect_transformer_format, refine_load_error, TransformerFormat, WeightFiles};

use crate::flux2::text_encoder::{Flux2TextEncoder, Qwen3Config, DEFAULT_TAPS};
use crate::flux2::tokenizer::Flux2Tokenizer;
use crate::traits::LoadOptions;
use crate::{ModelError, Result};

/// Where a FLUX.2 checkpoint comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A local diffusers-layout folder (model_index.json, transformer/, vae/, …).
    Dir(PathBuf),
    /// A single `.safetensors` transformer (BFL or diffusers names). The rest of the pipeline
    /// comes from the diffusers folder it sits in (as in the klein repos, which ship the BFL
    /// file at the root) — or from a base given to [`Flux2Checkpoint::resolve_with`].
    TransformerFile(PathBuf),
    /// A Hugging Face Hub repo id `owner/name`, optionally `@revision`.
    Hub {
        repo_id: String,
        revision: Option<String>,
    },
}

impl ModelSource {
    /// An existing folder → `Dir`; an existing `*.safetensors` file → `TransformerFile`;
    /// `owner/name[@revision]` that is not an existing path → `Hub`.
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.is_empty() {
            return Err(ModelError::Input("empty model source".into()));
        }
        let path = Path::new(s);
        if path.is_dir() {
            return Ok(Self::Dir(path.to_path_buf()));
        }
        if path.is_file() {
            if path.extension().is_some_and(|e| e == "safetensors") {
                return Ok(Self::TransformerFile(path.to_path_buf()));
            }
            return Err(ModelError::Unsupported(format!(
                "{s}: a model source file must be a .safetensors transformer"
            )));
        }
        let (repo, revision) = match s.split_once('@') {
            Some((r, rev)) if !rev.is_empty() => (r, Some(rev.to_string())),
            Some(_) => return Err(ModelError::Input(format!("{s}: empty revision after `@`"))),
            None => (s, None),
        };
        let valid_part = |p: &str| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        let looks_like_path = s.starts_with('/') || s.starts_with('.') || s.starts_with('~');
        match repo.split_once('/') {
            Some((owner, name)) if !looks_like_path && valid_part(owner) && valid_part(name) => {
                Ok(Self::Hub {
                    repo_id: repo.to_string(),
                    revision,
                })
            }
            _ => Err(ModelError::MissingFile {
                path: path.to_path_buf(),
                reason:
                    "not an existing folder or .safetensors file, nor a hub id owner/name[@rev]"
                        .into(),
            }),
        }
    }
}

impl std::str::FromStr for ModelSource {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

/// `model_index.json`: the pipeline class and `is_distilled`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ModelIndex {
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    /// Absent → false (the pipeline constructor's default): guidance-distilled models say so.
    #[serde(default)]
    pub is_distilled: bool,
}

fn default_num_train_timesteps() -> usize {
    1000
}
fn default_one() -> f64 {
    1.0
}
fn default_base_shift() -> f64 {
    0.5
}
fn default_max_shift() -> f64 {
    1.15
}
fn default_base_seq() -> usize {
    256
}
fn default_max_seq() -> usize {
    4096
}
fn default_time_shift_type() -> String {
    "exponential".into()
}

/// `scheduler/scheduler_config.json` of diffusers `FlowMatchEulerDiscreteScheduler`, with its
/// constructor defaults for absent keys.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Flux2SchedulerConfig {
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    #[serde(default = "default_num_train_timesteps")]
    pub num_train_timesteps: usize,
    #[serde(default = "default_one")]
    pub shift: f64,
    #[serde(default)]
    pub use_dynamic_shifting: bool,
    #[serde(default = "default_base_shift")]
    pub base_shift: f64,
    #[serde(default = "default_max_shift")]
    pub max_shift: f64,
    #[serde(default = "default_base_seq")]
    pub base_image_seq_len: usize,
    #[serde(default = "default_max_seq")]
    pub max_image_seq_len: usize,
    #[serde(default)]
    pub invert_sigmas: bool,
    #[serde(default)]
    pub shift_terminal: Option<f64>,
    #[serde(default)]
    pub use_karras_sigmas: bool,
    #[serde(default)]
    pub use_exponential_sigmas: bool,
    #[serde(default)]
    pub use_beta_sigmas: bool,
    #[serde(default = "default_time_shift_type")]
    pub time_shift_type: String,
    #[serde(default)]
    pub stochastic_sampling: bool,
}

/// One model component: its folder, `config.json` and weight files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentFiles {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub weights: WeightFiles,
}

impl ComponentFiles {
    fn resolve(dir: PathBuf, stem: &str) -> Result<Self> {
        let config = dir.join("config.json");
        if !config.is_file() {
            return Err(ModelError::MissingFile {
                path: config,
                reason: "component config not found".into(),
            });
        }
        let weights = WeightFiles::resolve(&dir, stem)?;
        Ok(Self {
            dir,
            config,
            weights,
        })
    }

    /// Parses this component's `config.json`.
    pub fn read_config<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        read_json(&self.config)
    }
}

/// The transformer's weights and their layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransformerFiles {
    /// `transformer/config.json` of the checkpoint (a BFL file has no config of its own).
    pub config: PathBuf,
    pub weights: WeightFiles,
    pub format: TransformerFormat,
}

/// A resolved FLUX.2 [klein] checkpoint: every file a pipeline needs, plus the small configs.
#[derive(Debug, Clone)]
pub struct Flux2Checkpoint {
    /// The local diffusers folder (for hub ids: the snapshot folder in the hub cache).
    pub root: PathBuf,
    pub model_index: ModelIndex,
    /// `model_index.json` `is_distilled` (false when absent, as the pipeline's default).
    pub is_distilled: bool,
    pub scheduler: Flux2SchedulerConfig,
    pub text_encoder: ComponentFiles,
    /// The `tokenizer/` folder (tokenizer.json, tokenizer_config.json, chat template).
    pub tokenizer_dir: PathBuf,
    pub transformer: TransformerFiles,
    pub vae: ComponentFiles,
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::MissingFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

impl Flux2Checkpoint {
    /// Resolves `source` (hub ids through `hub`; see [`HubOptions`]).
    pub fn resolve(source: &ModelSource, hub: &HubOptions) -> Result<Self> {
        match source {
            ModelSource::TransformerFile(file) => {
                let base = file
                    .parent()
                    .filter(|d| d.join("model_index.json").is_file())
                    .ok_or_else(|| ModelError::MissingFile {
                        path: file.parent().unwrap_or(Path::new(".")).join("model_index.json"),
                        reason: format!(
                            "a single-file transformer ({}) needs a diffusers checkpoint beside it or a \
                             base given to Flux2Checkpoint::resolve_with",
                            file.display()
                        ),
                    })?;
                Self::from_dir(base)?.with_transformer_file(file)
            }
            other => Self::resolve_with(other, None, hub),
        }
    }

    /// Parses `source` with [`ModelSource::parse`] and resolves it with default hub options.
    pub fn open(source: &str) -> Result<Self> {
        Self::resolve(&ModelSource::parse(source)?, &HubOptions::default())
    }

    /// Resolves `base` and, if given, replaces its transformer weights by `transformer_file`.
    pub fn resolve_with(
        base: &ModelSource,
        transformer_file: Option<&Path>,
        hub: &HubOptions,
    ) -> Result<Self> {
        let ckpt = match base {
            ModelSource::Dir(dir) => Self::from_dir(dir)?,
            ModelSource::Hub { repo_id, revision } => {
                Self::from_dir(&resolve_snapshot(repo_id, revision.as_deref(), hub)?)?
            }
            ModelSource::TransformerFile(_) => Self::resolve(base, hub)?,
        };
        match transformer_file {
            Some(f) => ckpt.with_transformer_file(f),
            None => Ok(ckpt),
        }
    }

    /// Resolves a local diffusers folder.
    pub fn from_dir(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            return Err(ModelError::MissingFile {
                path: root.to_path_buf(),
                reason: "checkpoint folder not found".into(),
            });
        }
        let model_index: ModelIndex = read_json(&root.join("model_index.json"))?;
        if let Some(c) = &model_index.class_name {
            if !c.starts_with("Flux2Klein") {
                return Err(ModelError::Unsupported(format!(
                    "{}: pipeline `{c}` (expected Flux2KleinPipeline)",
                    root.join("model_index.json").display()
                )));
            }
        }
        let scheduler: Flux2SchedulerConfig =
            read_json(&root.join("scheduler").join("scheduler_config.json"))?;
        let text_encoder = ComponentFiles::resolve(root.join("text_encoder"), "model")?;
        let tokenizer_dir = root.join("tokenizer");
        for f in ["tokenizer.json", "tokenizer_config.json"] {
            if !tokenizer_dir.join(f).is_file() {
                return Err(ModelError::MissingFile {
                    path: tokenizer_dir.join(f),
                    reason: "tokenizer file not found".into(),
                });
            }
        }
        let tdir = root.join("transformer");
        let tcomp = ComponentFiles::resolve(tdir, "diffusion_pytorch_model")?;
        let format = detect_transformer_format(&tcomp.weights)?;
        let transformer = TransformerFiles {
            config: tcomp.config,
            weights: tcomp.weights,
            format,
        };
        let vae = ComponentFiles::resolve(root.join("vae"), "diffusion_pytorch_model")?;
        Ok(Self {
            root: root.to_path_buf(),
            is_distilled: model_index.is_distilled,
            model_index,
            scheduler,
            text_encoder,
            tokenizer_dir,
            transformer,
            vae,
        })
    }

    /// Uses `file` (BFL or diffusers names, detected) as the transformer weights; the
    /// transformer config stays the checkpoint's `transformer/config.json`.
    pub fn with_transformer_file(mut self, file: &Path) -> Result<Self> {
        if !file.is_file() {
            return Err(ModelError::MissingFile {
                path: file.to_path_buf(),
                reason: "transformer weights file not found".into(),
            });
        }
        let weights = WeightFiles {
            index: None,
            files: vec![file.to_path_buf()],
        };
        self.transformer.format = detect_transformer_format(&weights)?;
        self.transformer.weights = weights;
        Ok(self)
    }

    /// Parses `text_encoder/config.json`.
    pub fn text_encoder_config(&self) -> Result<Qwen3Config> {
        self.text_encoder.read_config()
    }
}

/// Memory-mapped `VarBuilder` over the text encoder weights (keys `model.*`).
pub fn text_encoder_var_builder(
    ckpt: &Flux2Checkpoint,
    opts: &LoadOptions,
) -> Result<VarBuilder<'static>> {
    ckpt.text_encoder
        .weights
        .var_builder(opts.dtype, &opts.device)
}

/// Tokenizer + Qwen3 encoder with the klein taps (9, 18, 27).
pub fn load_text_encoder(ckpt: &Flux2Checkpoint, opts: &LoadOptions) -> Result<Flux2TextEncoder> {
    load_text_encoder_with_taps(ckpt, opts, &DEFAULT_TAPS)
}

/// [`load_text_encoder`] with other hidden-state taps.
pub fn load_text_encoder_with_taps(
    ckpt: &Flux2Checkpoint,
    opts: &LoadOptions,
    taps: &[usize],
) -> Result<Flux2TextEncoder> {
    let tokenizer = Flux2Tokenizer::from_dir(&ckpt.tokenizer_dir)?;
    let cfg = ckpt.text_encoder_config()?;
    let vb = text_encoder_var_builder(ckpt, opts)?;
    Flux2TextEncoder::new(tokenizer, &cfg, taps, vb)
        .map_err(|e| refine_load_error(e, "text_encoder"))
}

/// `VarBuilder` for `Flux2Transformer` under diffusers names: memory-mapped for diffusers
/// files; for a BFL file, every tensor is loaded and renamed by [`crate::flux2::bfl`].
pub fn transformer_var_builder(
    ckpt: &Flux2Checkpoint,
    opts: &LoadOptions,
) -> Result<VarBuilder<'static>> {
    let t = &ckpt.transformer;
    match &t.format {
        TransformerFormat::Diffusers => t.weights.var_builder(opts.dtype, &opts.device),
        TransformerFormat::Bfl => {
            let st = t.weights.mmap()?;
            let tensors = crate::flux2::bfl::load_bfl_transformer(&st, opts.dtype, &opts.device)?;
            Ok(VarBuilder::from_tensors(tensors, opts.dtype, &opts.device))
        }
    }
}

/// Memory-mapped `VarBuilder` over the VAE weights.
pub fn vae_var_builder(ckpt: &Flux2Checkpoint, opts: &LoadOptions) -> Result<VarBuilder<'static>> {
    ckpt.vae.weights.var_builder(opts.dtype, &opts.device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        assert_eq!(
            ModelSource::parse("black-forest-labs/FLUX.2-klein-4B@main").unwrap(),
            ModelSource::Hub {
                repo_id: "black-forest-labs/FLUX.2-klein-4B".into(),
                revision: Some("main".into())
            }
        );
        assert_eq!(
            ModelSource::parse("a/b").unwrap(),
            ModelSource::Hub {
                repo_id: "a/b".into(),
                revision: None
            }
        );
        assert!(matches!(
            ModelSource::parse("/nope/x"),
            Err(ModelError::MissingFile { .. })
        ));
        assert!(matches!(
            ModelSource::parse("a/b/c"),
            Err(ModelError::MissingFile { .. })
        ));
        assert!(matches!(
            ModelSource::parse("a/b@"),
            Err(ModelError::Input(_))
        ));
        let tmp = std::env::temp_dir();
        assert_eq!(
            ModelSource::parse(tmp.to_str().unwrap()).unwrap(),
            ModelSource::Dir(tmp)
        );
    }

    #[test]
    fn model_index_defaults_to_not_distilled() {
        let mi: ModelIndex =
            serde_json::from_str(r#"{"_class_name":"Flux2KleinPipeline"}"#).unwrap();
        assert!(!mi.is_distilled);
        let s: Flux2SchedulerConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(
            (s.num_train_timesteps, s.shift, s.use_dynamic_shifting),
            (1000, 1.0, false)
        );
    }
}
