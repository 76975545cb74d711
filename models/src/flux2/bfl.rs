//! BFL single-file FLUX.2 transformer checkpoints (`flux-2-klein-4b.safetensors`): detection and
//! the renaming of BFL tensor names to the diffusers names [`super::transformer`] loads.
//!
//! Follows diffusers 0.42.1 `loaders/single_file_utils.py`
//! (`convert_flux2_transformer_checkpoint_to_diffusers`, `CHECKPOINT_KEY_NAMES["flux2"]`): plain
//! renames, the fused double-block `qkv` chunked in three along dim 0, norm `.scale` → `.weight`,
//! and `final_layer.adaLN_modulation.1` with its two halves swapped (BFL `[shift; scale]`,
//! diffusers `[scale; shift]`). An optional `model.diffusion_model.` prefix is stripped.

use std::collections::HashMap;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::{ModelError, Result};

/// Prefix some BFL/ComfyUI exports put in front of every transformer tensor.
pub const BFL_PREFIX: &str = "model.diffusion_model.";

/// Tensor whose presence marks a BFL FLUX.2 transformer checkpoint.
pub const BFL_DETECTION_KEY: &str = "single_stream_modulation.lin.weight";

/// True when `names` (tensor names of one checkpoint) are a BFL FLUX.2 transformer.
pub fn is_bfl_checkpoint<I, S>(names: I) -> bool
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    names.into_iter().any(|n| {
        let n = n.as_ref();
        n == BFL_DETECTION_KEY || n.strip_prefix(BFL_PREFIX) == Some(BFL_DETECTION_KEY)
    })
}

/// How a BFL tensor becomes one diffusers tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BflTransform {
    /// Same values under a new name.
    Rename,
    /// Chunk `index` of `of` equal chunks along dim 0 (fused qkv → q, k, v).
    Chunk { index: usize, of: usize },
    /// Halves along dim 0 swapped (`[shift; scale]` → `[scale; shift]`).
    SwapHalves,
}

/// One diffusers tensor produced from a BFL tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BflTarget {
    pub name: String,
    pub transform: BflTransform,
}

fn unknown(name: &str) -> ModelError {
    ModelError::Unsupported(format!(
        "BFL FLUX.2 transformer tensor `{name}` has no diffusers equivalent"
    ))
}

fn rename(name: String) -> Vec<BflTarget> {
    vec![BflTarget {
        name,
        transform: BflTransform::Rename,
    }]
}

fn chunked(prefix: &str, names: [&str; 3], param: &str) -> Vec<BflTarget> {
    names
        .iter()
        .enumerate()
        .map(|(index, n)| BflTarget {
            name: format!("{prefix}{n}.{param}"),
            transform: BflTransform::Chunk { index, of: 3 },
        })
        .collect()
}

/// The diffusers tensors a BFL tensor `name` (optionally prefixed) maps to.
pub fn map_bfl_name(name: &str) -> Result<Vec<BflTarget>> {
    let key = name.strip_prefix(BFL_PREFIX).unwrap_or(name);
    let (module, param) = key.rsplit_once('.').ok_or_else(|| unknown(name))?;
    let param = if param == "scale" { "weight" } else { param };
    if !matches!(param, "weight" | "bias") {
        return Err(unknown(name));
    }

    if let Some(rest) = key.strip_prefix("double_blocks.") {
        let (idx, within) = rest.split_once('.').ok_or_else(|| unknown(name))?;
        let within = within.rsplit_once('.').map(|(m, _)| m).unwrap_or(within);
        idx.parse::<usize>().map_err(|_| unknown(name))?;
        let prefix = format!("transformer_blocks.{idx}.");
        let new = match within {
            "img_attn.qkv" => {
                return Ok(chunked(
                    &prefix,
                    ["attn.to_q", "attn.to_k", "attn.to_v"],
                    param,
                ))
            }
            "txt_attn.qkv" => {
                let names = ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"];
                return Ok(chunked(&prefix, names, param));
            }
            "img_attn.norm.query_norm" => "attn.norm_q",
            "img_attn.norm.key_norm" => "attn.norm_k",
            "img_attn.proj" => "attn.to_out.0",
            "img_mlp.0" => "ff.linear_in",
            "img_mlp.2" => "ff.linear_out",
            "txt_attn.norm.query_norm" => "attn.norm_added_q",
            "txt_attn.norm.key_norm" => "attn.norm_added_k",
            "txt_attn.proj" => "attn.to_add_out",
            "txt_mlp.0" => "ff_context.linear_in",
            "txt_mlp.2" => "ff_context.linear_out",
            _ => return Err(unknown(name)),
        };
        return Ok(rename(format!("{prefix}{new}.{param}")));
    }

    if let Some(rest) = key.strip_prefix("single_blocks.") {
        let (idx, within) = rest.split_once('.').ok_or_else(|| unknown(name))?;
        let within = within.rsplit_once('.').map(|(m, _)| m).unwrap_or(within);
        idx.parse::<usize>().map_err(|_| unknown(name))?;
        let new = match within {
            "linear1" => "attn.to_qkv_mlp_proj",
            "linear2" => "attn.to_out",
            "norm.query_norm" => "attn.norm_q",
            "norm.key_norm" => "attn.norm_k",
            _ => return Err(unknown(name)),
        };
        return Ok(rename(format!(
            "single_transformer_blocks.{idx}.{new}.{param}"
        )));
    }

    if module == "final_layer.adaLN_modulation.1" {
        return Ok(vec![BflTarget {
            name: format!("norm_out.linear.{param}"),
            transform: BflTransform::SwapHalves,
        }]);
    }
    let new = match module {
        "img_in" => "x_embedder",
        "txt_in" => "context_embedder",
        "time_in.in_layer" => "time_guidance_embed.timestep_embedder.linear_1",
        "time_in.out_layer" => "time_guidance_embed.timestep_embedder.linear_2",
        "guidance_in.in_layer" => "time_guidance_embed.guidance_embedder.linear_1",
        "guidance_in.out_layer" => "time_guidance_embed.guidance_embedder.linear_2",
        "double_stream_modulation_img.lin" => "double_stream_modulation_img.linear",
        "double_stream_modulation_txt.lin" => "double_stream_modulation_txt.linear",
        "single_stream_modulation.lin" => "single_stream_modulation.linear",
        "final_layer.linear" => "proj_out",
        _ => return Err(unknown(name)),
    };
    Ok(rename(format!("{new}.{param}")))
}

/// Shape of a target given the BFL shape; errors if dim 0 does not split evenly.
fn target_shape(bfl_name: &str, shape: &[usize], t: BflTransform) -> Result<Vec<usize>> {
    let uneven = |parts: usize| {
        ModelError::Unsupported(format!(
            "BFL tensor `{bfl_name}` {shape:?}: dim 0 does not split in {parts}"
        ))
    };
    match t {
        BflTransform::Rename => Ok(shape.to_vec()),
        BflTransform::Chunk { of, .. } => match shape.split_first() {
            Some((d0, rest)) if d0.is_multiple_of(of) => {
                let mut s = vec![d0 / of];
                s.extend_from_slice(rest);
                Ok(s)
            }
            _ => Err(uneven(of)),
        },
        BflTransform::SwapHalves => match shape.first() {
            Some(d0) if d0.is_multiple_of(2) => Ok(shape.to_vec()),
            _ => Err(uneven(2)),
        },
    }
}

fn insert_unique<V>(
    out: &mut HashMap<String, V>,
    bfl_name: &str,
    name: String,
    v: V,
) -> Result<()> {
    if out.contains_key(&name) {
        return Err(ModelError::Unsupported(format!(
            "BFL checkpoint: `{bfl_name}` maps to `{name}`, which another tensor already produced"
        )));
    }
    out.insert(name, v);
    Ok(())
}

/// Maps BFL `(name, shape)` pairs to the diffusers names and shapes they produce, without
/// touching any data (used to check a checkpoint against a model cheaply).
pub fn map_bfl_shapes<I>(shapes: I) -> Result<HashMap<String, Vec<usize>>>
where
    I: IntoIterator<Item = (String, Vec<usize>)>,
{
    let mut out = HashMap::new();
    for (bfl_name, shape) in shapes {
        for target in map_bfl_name(&bfl_name)? {
            let s = target_shape(&bfl_name, &shape, target.transform)?;
            insert_unique(&mut out, &bfl_name, target.name, s)?;
        }
    }
    Ok(out)
}

fn apply(bfl_name: &str, t: &Tensor, transform: BflTransform) -> Result<Tensor> {
    target_shape(bfl_name, t.dims(), transform)?;
    Ok(match transform {
        BflTransform::Rename => t.clone(),
        BflTransform::Chunk { index, of } => {
            let n = t.dim(0)? / of;
            t.narrow(0, index * n, n)?
        }
        BflTransform::SwapHalves => {
            let n = t.dim(0)? / 2;
            Tensor::cat(&[t.narrow(0, n, n)?, t.narrow(0, 0, n)?], 0)?
        }
    })
}

/// Renames BFL tensors to diffusers names (chunking qkv, swapping the final modulation).
/// Unknown tensor names are an error.
pub fn convert_bfl_tensors<I>(tensors: I) -> Result<HashMap<String, Tensor>>
where
    I: IntoIterator<Item = (String, Tensor)>,
{
    let mut out = HashMap::new();
    for (bfl_name, t) in tensors {
        for target in map_bfl_name(&bfl_name)? {
            let converted = apply(&bfl_name, &t, target.transform)?;
            insert_unique(&mut out, &bfl_name, target.name, converted)?;
        }
    }
    Ok(out)
}

/// Loads every tensor of a (mmap'd) BFL transformer file onto `device` in `dtype` and returns
/// them under diffusers names, ready for `VarBuilder::from_tensors`.
pub fn load_bfl_transformer(
    st: &MmapedSafetensors,
    dtype: DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    for (bfl_name, _) in st.tensors() {
        let t = st.load(&bfl_name, device)?.to_dtype(dtype)?;
        for target in map_bfl_name(&bfl_name)? {
            let converted = apply(&bfl_name, &t, target.transform)?;
            insert_unique(&mut out, &bfl_name, target.name, converted)?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32], shape: (usize, usize)) -> Tensor {
        Tensor::from_slice(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn detects_plain_and_prefixed_checkpoints() {
        assert!(is_bfl_checkpoint([
            "img_in.weight",
            "single_stream_modulation.lin.weight"
        ]));
        assert!(is_bfl_checkpoint([
            "model.diffusion_model.single_stream_modulation.lin.weight"
        ]));
        assert!(!is_bfl_checkpoint([
            "single_stream_modulation.linear.weight"
        ]));
        assert!(!is_bfl_checkpoint(Vec::<String>::new()));
    }

    #[test]
    fn qkv_is_chunked_into_q_k_v() -> Result<()> {
        let qkv = t(&[1., 2., 3., 4., 5., 6.], (6, 1));
        let out = convert_bfl_tensors([
            (
                "double_blocks.3.img_attn.qkv.weight".to_string(),
                qkv.clone(),
            ),
            (
                "model.diffusion_model.double_blocks.0.txt_attn.qkv.weight".into(),
                qkv,
            ),
        ])?;
        let get = |n: &str| out[n].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(get("transformer_blocks.3.attn.to_q.weight"), [1., 2.]);
        assert_eq!(get("transformer_blocks.3.attn.to_k.weight"), [3., 4.]);
        assert_eq!(get("transformer_blocks.3.attn.to_v.weight"), [5., 6.]);
        assert_eq!(get("transformer_blocks.0.attn.add_q_proj.weight"), [1., 2.]);
        assert_eq!(get("transformer_blocks.0.attn.add_k_proj.weight"), [3., 4.]);
        assert_eq!(get("transformer_blocks.0.attn.add_v_proj.weight"), [5., 6.]);
        assert_eq!(out.len(), 6);
        Ok(())
    }

    #[test]
    fn final_modulation_halves_are_swapped() -> Result<()> {
        // BFL [shift; scale] rows → diffusers [scale; shift].
        let w = t(&[1., 1., 2., 2., 3., 3., 4., 4.], (4, 2));
        let out = convert_bfl_tensors([("final_layer.adaLN_modulation.1.weight".to_string(), w)])?;
        let got = out["norm_out.linear.weight"].to_vec2::<f32>()?;
        assert_eq!(got, [[3., 3.], [4., 4.], [1., 1.], [2., 2.]]);
        Ok(())
    }

    #[test]
    fn names_follow_the_diffusers_converter() -> Result<()> {
        let cases = [
            ("img_in.weight", "x_embedder.weight"),
            ("txt_in.weight", "context_embedder.weight"),
            (
                "time_in.in_layer.weight",
                "time_guidance_embed.timestep_embedder.linear_1.weight",
            ),
            (
                "time_in.out_layer.weight",
                "time_guidance_embed.timestep_embedder.linear_2.weight",
            ),
            (
                "guidance_in.in_layer.weight",
                "time_guidance_embed.guidance_embedder.linear_1.weight",
            ),
            (
                "double_stream_modulation_img.lin.weight",
                "double_stream_modulation_img.linear.weight",
            ),
            (
                "double_stream_modulation_txt.lin.weight",
                "double_stream_modulation_txt.linear.weight",
            ),
            (
                "single_stream_modulation.lin.weight",
                "single_stream_modulation.linear.weight",
            ),
            ("final_layer.linear.weight", "proj_out.weight"),
            (
                "double_blocks.1.img_attn.norm.query_norm.scale",
                "transformer_blocks.1.attn.norm_q.weight",
            ),
            (
                "double_blocks.1.img_attn.norm.key_norm.scale",
                "transformer_blocks.1.attn.norm_k.weight",
            ),
            (
                "double_blocks.1.txt_attn.norm.query_norm.scale",
                "transformer_blocks.1.attn.norm_added_q.weight",
            ),
            (
                "double_blocks.1.txt_attn.norm.key_norm.scale",
                "transformer_blocks.1.attn.norm_added_k.weight",
            ),
            (
                "double_blocks.1.img_attn.proj.weight",
                "transformer_blocks.1.attn.to_out.0.weight",
            ),
            (
                "double_blocks.1.txt_attn.proj.weight",
                "transformer_blocks.1.attn.to_add_out.weight",
            ),
            (
                "double_blocks.1.img_mlp.0.weight",
                "transformer_blocks.1.ff.linear_in.weight",
            ),
            (
                "double_blocks.1.img_mlp.2.weight",
                "transformer_blocks.1.ff.linear_out.weight",
            ),
            (
                "double_blocks.1.txt_mlp.0.weight",
                "transformer_blocks.1.ff_context.linear_in.weight",
            ),
            (
                "double_blocks.1.txt_mlp.2.weight",
                "transformer_blocks.1.ff_context.linear_out.weight",
            ),
            (
                "single_blocks.7.linear1.weight",
                "single_transformer_blocks.7.attn.to_qkv_mlp_proj.weight",
            ),
            (
                "single_blocks.7.linear2.weight",
                "single_transformer_blocks.7.attn.to_out.weight",
            ),
            (
                "single_blocks.7.norm.query_norm.scale",
                "single_transformer_blocks.7.attn.norm_q.weight",
            ),
            (
                "model.diffusion_model.single_blocks.7.norm.key_norm.scale",
                "single_transformer_blocks.7.attn.norm_k.weight",
            ),
        ];
        for (bfl, diffusers) in cases {
            let got = map_bfl_name(bfl)?;
            assert_eq!(got.len(), 1, "{bfl}");
            assert_eq!(got[0].name, diffusers, "{bfl}");
            assert_eq!(got[0].transform, BflTransform::Rename, "{bfl}");
        }
        Ok(())
    }

    #[test]
    fn unknown_names_and_uneven_shapes_are_rejected() {
        assert!(map_bfl_name("double_blocks.0.img_mod.lin.weight").is_err());
        assert!(map_bfl_name("vae.decoder.conv_in.weight").is_err());
        assert!(map_bfl_shapes([(
            "double_blocks.0.img_attn.qkv.weight".to_string(),
            vec![4, 2]
        )])
        .is_err());
        let shapes = map_bfl_shapes([(
            "double_blocks.0.img_attn.qkv.weight".to_string(),
            vec![9, 2],
        )])
        .unwrap();
        assert_eq!(shapes["transformer_blocks.0.attn.to_v.weight"], [3, 2]);
    }
}
