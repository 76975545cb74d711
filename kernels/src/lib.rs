//! editd-kernels: fused tensor ops. Each op is a plain function on `Tensor` with a CPU reference
//! (used on CPU and in tests); CUDA/Metal implementations are picked by cargo feature.
//!
//! | op | CPU | CUDA (`cuda` feature) | Metal |
//! |---|---|---|---|
//! | [`modulate`] | fused loop | own kernel `modulate_*` | unfused |
//! | [`gated_residual`] | fused loop | own kernel `gated_residual_*` | unfused |
//! | [`rms_norm_heads`] | fused loop | own kernel `rms_norm_rows_*` | candle-nn `rms_norm` |
//! | [`rope_interleaved`] | fused loop | own kernel `rope_interleaved_*` (f32 tables) | unfused |
//! | [`swiglu`] | fused loop | own kernel `swiglu_*` | unfused |
//! | [`group_norm_silu`] | fused loop | unfused candle composition | unfused |
//! | [`attention`] | query-chunked matmul/softmax (f32) | same, in the input dtype | same |
//!
//! Own CUDA kernels exist for f32, f16 and bf16 (`cuda/fused.cu`, compiled to PTX by
//! `build.rs`). [`unfused`] holds the plain candle compositions the tests and benches compare to.
//! Errors are candle's (`candle_core::Error`), like any other tensor op.

mod attention;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod norm;
mod pointwise;
pub mod unfused;

pub use attention::{attention, attention_chunked, query_chunk};
pub use norm::{group_norm_silu, modulate, rms_norm_heads};
pub use pointwise::{gated_residual, rope_interleaved, swiglu};
