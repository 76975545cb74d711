//! `Flux2Klein`: every network of a FLUX.2 [klein] checkpoint loaded together.
//!
//! Follows diffusers 0.42.1 `pipelines/flux2/pipeline_flux2_klein.py` (`Flux2KleinPipeline`
//! components: text_encoder + tokenizer, transformer, vae, scheduler, `is_distilled`).

use crate::flux2::text_encoder::Flux2TextEncoder;
use crate::flux2::transformer::{Flux2Transformer, Flux2TransformerConfig};
use crate::flux2::vae::{AutoencoderKlFlux2, Flux2VaeConfig};
use crate::traits::LoadOptions;
use crate::Result;

use super::{
    load_text_encoder, refine_load_error, transformer_var_builder, vae_var_builder,
    Flux2Checkpoint, Flux2SchedulerConfig, HubOptions, ModelSource,
};

/// The loaded FLUX.2 [klein] pipeline components.
#[derive(Debug)]
pub struct Flux2Klein {
    pub text_encoder: Flux2TextEncoder,
    pub transformer: Flux2Transformer,
    pub vae: AutoencoderKlFlux2,
    /// Guidance-distilled (klein-4B: true, no CFG) or base (CFG).
    pub is_distilled: bool,
    pub scheduler: Flux2SchedulerConfig,
}

impl Flux2Klein {
    /// Parses `source` ([`ModelSource::parse`]: folder, `.safetensors` transformer beside a
    /// diffusers folder, or `owner/name[@rev]`) and loads it with default [`HubOptions`].
    pub fn open(source: &str, opts: &LoadOptions) -> Result<Self> {
        Self::load(&ModelSource::parse(source)?, opts)
    }

    /// Resolves `source` with default [`HubOptions`] and loads every component.
    pub fn load(source: &ModelSource, opts: &LoadOptions) -> Result<Self> {
        Self::load_with_hub(source, &HubOptions::default(), opts)
    }

    /// Resolves `source` with `hub` (cache folder, offline) and loads every component.
    pub fn load_with_hub(
        source: &ModelSource,
        hub: &HubOptions,
        opts: &LoadOptions,
    ) -> Result<Self> {
        Self::from_checkpoint(&Flux2Checkpoint::resolve(source, hub)?, opts)
    }

    /// Loads every component of an already resolved checkpoint.
    pub fn from_checkpoint(ckpt: &Flux2Checkpoint, opts: &LoadOptions) -> Result<Self> {
        let text_encoder = load_text_encoder(ckpt, opts)?;
        let transformer = load_transformer(ckpt, opts)?;
        let vae = load_vae(ckpt, opts)?;
        Ok(Self {
            text_encoder,
            transformer,
            vae,
            is_distilled: ckpt.is_distilled,
            scheduler: ckpt.scheduler.clone(),
        })
    }
}

/// `Flux2Transformer` from `transformer/config.json` and the (diffusers or BFL) weights.
pub fn load_transformer(ckpt: &Flux2Checkpoint, opts: &LoadOptions) -> Result<Flux2Transformer> {
    let cfg = Flux2TransformerConfig::from_file(&ckpt.transformer.config)?;
    let vb = transformer_var_builder(ckpt, opts)?;
    Flux2Transformer::new(&cfg, vb).map_err(|e| refine_load_error(e, "transformer"))
}

/// `AutoencoderKlFlux2` from `vae/config.json` and its weights.
pub fn load_vae(ckpt: &Flux2Checkpoint, opts: &LoadOptions) -> Result<AutoencoderKlFlux2> {
    let cfg = Flux2VaeConfig::from_file(&ckpt.vae.config)?;
    let vb = vae_var_builder(ckpt, opts)?;
    AutoencoderKlFlux2::new(&cfg, vb).map_err(|e| refine_load_error(e, "vae"))
}
