//! The one error type of the models layer.

use std::path::PathBuf;

/// Errors raised while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("missing file {path}: {reason}")]
    MissingFile { path: PathBuf, reason: String },
    #[error("tensor `{name}`: expected shape {expected:?}, found {found:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor `{name}` missing from the checkpoint")]
    MissingTensor { name: String },
    #[error("unsupported config: {0}")]
    Unsupported(String),
    #[error("invalid config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("hub: {0}")]
    Hub(String),
    #[error("io error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad input: {0}")]
    Input(String),
}

pub type Result<T> = std::result::Result<T, ModelError>;
