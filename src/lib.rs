//! editd: a local GPU inference server for open image-edit models.
//!
//! Layers (see `shared/ARCHITECTURE.md`): `api` (HTTP) → `runs` (lifecycle, store, queue) →
//! `engine` (device threads) → `pipeline` (the edit sampler) → `editd_models` / `editd_kernels`.
//! `image_io` owns fetching, decoding and encoding images.

pub mod api;
pub mod cli_edit;
pub mod config;
pub mod engine;
pub mod image_io;
pub mod pipeline;
pub(crate) mod runs;
