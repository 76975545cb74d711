//! FLUX.2 [klein]: Qwen3 text encoder, double/single-stream DiT, AutoencoderKLFlux2, loading.
//!
//! Follows diffusers 0.42.1 (`pipelines/flux2/pipeline_flux2_klein.py`,
//! `models/transformers/transformer_flux2.py`, `models/autoencoders/autoencoder_kl_flux2.py`)
//! as described in `shared/reference/flux2-klein.md`.

pub mod bfl;
pub mod loader;
pub mod text_encoder;
pub mod tokenizer;
pub mod transformer;
pub mod vae;
