//! `ModelPipeline`: an [`EditPipeline`] over any model family that provides the three traits.
//!
//! The engine thread owns one of these; [`super::load::load_pipeline`] builds it for FLUX.2 klein.

use editd_models::traits::{Denoiser, LatentCodec, TextEncoder};

use super::sampler::{sample, Models, SamplerSettings};
use super::{EditInputs, EditOutput, EditPipeline, PipelineDefaults, PipelineError, StepCtx};

/// A loaded model family with its sampling settings.
pub struct ModelPipeline {
    pub text: Box<dyn TextEncoder>,
    pub dit: Box<dyn Denoiser>,
    pub vae: Box<dyn LatentCodec>,
    pub settings: SamplerSettings,
    pub defaults: PipelineDefaults,
}

impl EditPipeline for ModelPipeline {
    fn defaults(&self) -> PipelineDefaults {
        self.defaults.clone()
    }

    fn run(
        &mut self,
        job: &EditInputs,
        ctx: &mut dyn StepCtx,
    ) -> Result<EditOutput, PipelineError> {
        let models = Models {
            text: self.text.as_ref(),
            dit: self.dit.as_ref(),
            vae: self.vae.as_ref(),
        };
        sample(&models, &self.settings, job, ctx)
    }
}
