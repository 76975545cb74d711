//! FLUX.2 [klein] prompt encoder: chat template + Qwen3 taps 9/18/27 → `(B, 512, 3·hidden)`.
//!
//! Follows diffusers 0.42.1 `pipelines/flux2/pipeline_flux2_klein.py`
//! (`_get_qwen3_prompt_embeds`) over transformers `models/qwen3/modeling_qwen3.py`. The Qwen3
//! network is a compact port in [`qwen3`] (see its header for why candle-transformers' qwen3 is
//! not used); the tokenizer and chat template live in [`crate::flux2::tokenizer`].

mod qwen3;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

pub use qwen3::{Qwen3Config, Qwen3Encoder, Qwen3RmsNorm, RopeParameters};

use crate::flux2::tokenizer::{Flux2Tokenizer, TokenizedPrompts};
use crate::traits::{PositionIds, PromptEmbeds, TextEncoder};
use crate::{ModelError, Result};

/// `hidden_states_layers` of the klein pipeline: `hidden_states[9]`, `[18]`, `[27]`.
pub const DEFAULT_TAPS: [usize; 3] = [9, 18, 27];

/// Tokenizer + Qwen3 encoder: implements [`TextEncoder`] for the FLUX.2 pipelines.
#[derive(Debug, Clone)]
pub struct Flux2TextEncoder {
    tokenizer: Flux2Tokenizer,
    model: Qwen3Encoder,
    device: Device,
    dtype: DType,
}

impl Flux2TextEncoder {
    /// Builds the Qwen3 part from `vb` (rooted at the text encoder checkpoint root, keys
    /// `model.*`) with the given hidden-state taps (use [`DEFAULT_TAPS`] for klein).
    pub fn new(
        tokenizer: Flux2Tokenizer,
        cfg: &Qwen3Config,
        taps: &[usize],
        vb: VarBuilder,
    ) -> Result<Self> {
        let device = vb.device().clone();
        let dtype = vb.dtype();
        let model = Qwen3Encoder::new(cfg, taps, vb)?;
        Ok(Self {
            tokenizer,
            model,
            device,
            dtype,
        })
    }

    pub fn tokenizer(&self) -> &Flux2Tokenizer {
        &self.tokenizer
    }
    pub fn model(&self) -> &Qwen3Encoder {
        &self.model
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Width of one prompt token: `taps · hidden_size` (7680 for klein-4B).
    pub fn embed_dim(&self) -> usize {
        self.model.output_dim()
    }

    /// Runs the network on already tokenised prompts; returns `(B, L, taps·hidden)` in the
    /// model dtype.
    pub fn encode_tokens(&self, tokens: &TokenizedPrompts) -> Result<Tensor> {
        let (ids, mask) = tokens.to_tensors(&self.device)?;
        self.encode_ids(&ids, &mask)
    }

    /// Runs the network on `input_ids` / `attention_mask` `(B, L)` (any integer dtype).
    pub fn encode_ids(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let (b, l) = input_ids.dims2()?;
        let ids = input_ids.to_dtype(DType::U32)?.to_device(&self.device)?;
        let out = self.model.forward(&ids, attention_mask)?;
        let want = [b, l, self.embed_dim()];
        if out.dims() != want {
            return Err(ModelError::Input(format!(
                "Qwen3 encoder output {:?}, expected {want:?}",
                out.dims()
            )));
        }
        Ok(out)
    }
}

impl TextEncoder for Flux2TextEncoder {
    /// `prompt_embeds` `(B, 512, 3·hidden)` and text ids `(0, 0, 0, l)` for `l` in `0..512`.
    fn encode(&self, prompts: &[String]) -> Result<PromptEmbeds> {
        if prompts.is_empty() {
            return Err(ModelError::Input("no prompts to encode".into()));
        }
        let tokens = self.tokenizer.tokenize(prompts)?;
        let embeds = self.encode_tokens(&tokens)?;
        Ok(PromptEmbeds {
            embeds,
            ids: PositionIds::text(self.tokenizer.max_length()),
        })
    }
}
