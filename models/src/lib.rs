//! editd-models: model families served by editd (FLUX.2 klein first), written on candle.
//!
//! Each family lives in its own folder with a `Config` read from the checkpoint's own
//! `config.json`, one struct per sub-block built from `VarBuilder::pp("<checkpoint key>")`,
//! and a loader. The pipeline in the `editd` crate only sees the traits in [`traits`].

pub mod error;
pub mod flux2;
pub mod traits;

pub use error::{ModelError, Result};
