//! Loading a checkpoint into a ready [`EditPipeline`]: model source, device, dtype, defaults.
//!
//! FLUX.2 klein is the one family today; its defaults follow the model cards (distilled: 4
//! steps, guidance 1.0 (ignored); base: 50 steps, guidance 4.0). Note the diffusers pipeline's
//! *signature* defaults are 50 steps / guidance 4.0 for both; the distilled card's 4 steps win.

use editd_models::flux2::loader::{Flux2Klein, HubOptions, ModelSource};
use editd_models::traits::LoadOptions;

use super::device::{parse_device, parse_dtype};
use super::engine_pipeline::ModelPipeline;
use super::sampler::SamplerSettings;
use super::{EditPipeline, PipelineDefaults, PipelineError};

/// Which checkpoint to load, where, and in which precision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineConfig {
    /// A local diffusers-layout dir, a `.safetensors` transformer file, or a hub repo id.
    pub model: String,
    /// `auto | cpu | cuda[:N] | metal`.
    pub device: String,
    /// `f32 | bf16 | f16`; `None` = f32 on CPU, bf16 on GPU.
    pub dtype: Option<String>,
    /// Never touch the network: hub ids resolve from the local cache only (`HF_HUB_OFFLINE`).
    pub offline: bool,
}

/// Loads the checkpoint and returns the concrete pipeline (benches and tests reach its models).
pub fn load_model_pipeline(cfg: &PipelineConfig) -> Result<ModelPipeline, PipelineError> {
    let device = parse_device(&cfg.device)?;
    let dtype = parse_dtype(cfg.dtype.as_deref(), &device)?;
    let source = ModelSource::parse(&cfg.model).map_err(|e| PipelineError::Load(e.to_string()))?;
    let opts = LoadOptions {
        device: device.clone(),
        dtype,
    };
    let hub = HubOptions {
        offline: cfg.offline,
        ..HubOptions::default()
    };
    let klein = Flux2Klein::load_with_hub(&source, &hub, &opts)
        .map_err(|e| PipelineError::Load(format!("{}: {e}", cfg.model)))?;
    let is_distilled = klein.is_distilled;
    let defaults = PipelineDefaults {
        model_id: model_id(&source, &cfg.model),
        is_distilled,
        default_steps: if is_distilled { 4 } else { 50 },
        default_guidance: if is_distilled { 1.0 } else { 4.0 },
    };
    tracing::info!(model = %cfg.model, ?device, ?dtype, is_distilled, "model loaded");
    Ok(ModelPipeline {
        text: Box::new(klein.text_encoder),
        dit: Box::new(klein.transformer),
        vae: Box::new(klein.vae),
        settings: SamplerSettings {
            device,
            dtype,
            is_distilled,
        },
        defaults,
    })
}

/// Loads the checkpoint behind the engine's trait object.
pub fn load_pipeline(cfg: &PipelineConfig) -> Result<Box<dyn EditPipeline>, PipelineError> {
    Ok(Box::new(load_model_pipeline(cfg)?))
}

/// The id the served model answers under: the hub repo id, or the folder's name.
fn model_id(source: &ModelSource, raw: &str) -> String {
    match source {
        ModelSource::Hub { repo_id, .. } => repo_id.clone(),
        ModelSource::Dir(p) | ModelSource::TransformerFile(p) => p
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| raw.to_string()),
    }
}
