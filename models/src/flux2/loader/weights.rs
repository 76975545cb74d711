//! Finding a component's safetensors (sharded index or single file), memory-mapping them into a
//! `VarBuilder`, telling BFL single-file transformers apart, and turning candle's load errors
//! into [`ModelError`]s that name the tensor.
//!
//! Follows the diffusers / transformers loading conventions (`modeling_utils.py`:
//! `<stem>.safetensors.index.json` with a `weight_map`, else `<stem>.safetensors`).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::{ModelError, Result};

/// The safetensors files holding one component's weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightFiles {
    /// `*.safetensors.index.json` when the weights are sharded.
    pub index: Option<PathBuf>,
    /// The files to memory-map (the shards named by the index, or the single file).
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

fn missing(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::MissingFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl WeightFiles {
    /// Resolves `dir/<stem>.safetensors.index.json` (sharded) or `dir/<stem>.safetensors`.
    /// When neither exists and the folder holds exactly one other `*.safetensors` (e.g. a BFL
    /// single file placed in `transformer/`), that file is used.
    pub fn resolve(dir: &Path, stem: &str) -> Result<Self> {
        if !dir.is_dir() {
            return Err(missing(dir, "component folder not found"));
        }
        let index = dir.join(format!("{stem}.safetensors.index.json"));
        if index.is_file() {
            return Self::from_index(&index);
        }
        let single = dir.join(format!("{stem}.safetensors"));
        if single.is_file() {
            return Ok(Self {
                index: None,
                files: vec![single],
            });
        }
        let others = std::fs::read_dir(dir)
            .map_err(|e| ModelError::Io {
                path: dir.to_path_buf(),
                source: e,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "safetensors"))
            .collect::<BTreeSet<_>>();
        match others.len() {
            1 => Ok(Self {
                index: None,
                files: others.into_iter().collect(),
            }),
            0 => Err(missing(
                &single,
                format!(
                    "no {stem}.safetensors or {stem}.safetensors.index.json in {}",
                    dir.display()
                ),
            )),
            _ => {
                Err(missing(
                    &single,
                    format!(
                    "no {stem}.safetensors(.index.json) and several other safetensors files: {:?}",
                    others.iter().filter_map(|p| p.file_name()).collect::<Vec<_>>()
                ),
                ))
            }
        }
    }

    /// The distinct shard file names of a `*.safetensors.index.json` (`weight_map` values).
    pub fn index_shard_names(index: &Path) -> Result<Vec<String>> {
        let text = std::fs::read_to_string(index).map_err(|e| missing(index, e.to_string()))?;
        let parsed: ShardIndex = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: index.to_path_buf(),
            reason: format!("not a safetensors index (weight_map): {e}"),
        })?;
        let names: BTreeSet<String> = parsed.weight_map.into_values().collect();
        if names.is_empty() {
            return Err(ModelError::Config {
                path: index.to_path_buf(),
                reason: "empty weight_map".into(),
            });
        }
        Ok(names.into_iter().collect())
    }

    /// Reads a sharded checkpoint's index; every shard named by its `weight_map` must exist.
    pub fn from_index(index: &Path) -> Result<Self> {
        let names = Self::index_shard_names(index)?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut files = Vec::with_capacity(names.len());
        for name in names {
            let shard = dir.join(name);
            if !shard.is_file() {
                return Err(missing(
                    &shard,
                    format!("shard listed in {}", index.display()),
                ));
            }
            files.push(shard);
        }
        Ok(Self {
            index: Some(index.to_path_buf()),
            files,
        })
    }

    /// Memory-maps the files (headers only are read now).
    pub fn mmap(&self) -> Result<MmapedSafetensors> {
        for f in &self.files {
            if !f.is_file() {
                return Err(missing(f, "weights file not found"));
            }
        }
        // SAFETY: the files are opened read-only; as everywhere with mmap, they must not be
        // modified while the model is loaded (the same contract as candle's own loaders).
        Ok(unsafe { MmapedSafetensors::multi(&self.files) }?)
    }

    /// A `VarBuilder` over the memory-mapped files; tensors are read when requested, converted
    /// to `dtype` and placed on `device`.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
        let st = self.mmap()?;
        Ok(VarBuilder::from_backend(
            Box::new(st),
            dtype,
            device.clone(),
        ))
    }
}

/// Layout of a transformer checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransformerFormat {
    /// diffusers `Flux2Transformer2DModel` names.
    Diffusers,
    /// BFL `flux2` names (optionally prefixed `model.diffusion_model.`), renamed on load by
    /// [`crate::flux2::bfl`].
    Bfl,
}

/// Looks at the tensor names (headers only) to tell diffusers from BFL layout
/// ([`crate::flux2::bfl::is_bfl_checkpoint`]: key `single_stream_modulation.lin.weight`).
pub fn detect_transformer_format(files: &WeightFiles) -> Result<TransformerFormat> {
    let st = files.mmap()?;
    let names = st.tensors().into_iter().map(|(n, _)| n);
    Ok(if crate::flux2::bfl::is_bfl_checkpoint(names) {
        TransformerFormat::Bfl
    } else {
        TransformerFormat::Diffusers
    })
}

fn innermost(e: &candle_core::Error) -> &candle_core::Error {
    use candle_core::Error as E;
    match e {
        E::WithBacktrace { inner, .. } | E::Context { inner, .. } | E::WithPath { inner, .. } => {
            innermost(inner)
        }
        other => other,
    }
}

/// Turns candle's VarBuilder errors into the models-layer variants that name the tensor:
/// `shape mismatch for <name>` → [`ModelError::Shape`], `cannot find tensor <name>` →
/// [`ModelError::MissingTensor`]. `prefix` (e.g. `"text_encoder"`) is added to the name so
/// the user knows which component failed. Other errors pass through.
pub fn refine_load_error(e: ModelError, component: &str) -> ModelError {
    let ModelError::Candle(ce) = &e else { return e };
    let name = |n: &str| {
        if component.is_empty() {
            n.to_string()
        } else {
            format!("{component}/{n}")
        }
    };
    match innermost(ce) {
        candle_core::Error::UnexpectedShape { msg, expected, got } => {
            match msg.strip_prefix("shape mismatch for ") {
                Some(n) => ModelError::Shape {
                    name: name(n),
                    expected: expected.dims().to_vec(),
                    found: got.dims().to_vec(),
                },
                None => e,
            }
        }
        candle_core::Error::CannotFindTensor { path } => {
            ModelError::MissingTensor { name: name(path) }
        }
        _ => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refines_shape_and_missing_errors() {
        let shape = candle_core::Error::UnexpectedShape {
            msg: "shape mismatch for model.norm.weight".into(),
            expected: (4,).into(),
            got: (5,).into(),
        }
        .bt();
        match refine_load_error(ModelError::Candle(shape), "text_encoder") {
            ModelError::Shape {
                name,
                expected,
                found,
            } => {
                assert_eq!(name, "text_encoder/model.norm.weight");
                assert_eq!((expected, found), (vec![4], vec![5]));
            }
            other => panic!("{other}"),
        }
        let miss = candle_core::Error::CannotFindTensor { path: "a.b".into() };
        assert!(matches!(
            refine_load_error(ModelError::Candle(miss), ""),
            ModelError::MissingTensor { name } if name == "a.b"
        ));
    }
}
