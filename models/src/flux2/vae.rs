//! FLUX.2 VAE (`AutoencoderKLFlux2`): config, encoder/decoder, and the FLUX.2 latent space
//! (2×2 patchify + BatchNorm statistics) behind [`LatentCodec`].
//!
//! Upstream: diffusers 0.42.1 `models/autoencoders/autoencoder_kl_flux2.py` (the model),
//! `models/autoencoders/vae.py` (`Encoder`/`Decoder`) and
//! `pipelines/flux2/pipeline_flux2_klein.py` (`_patchify_latents`, `_unpatchify_latents`,
//! `_encode_vae_image` and the BN de-normalisation before `vae.decode`).
//!
//! The blocks are written here (`vae/blocks.rs`, `vae/coder.rs`) rather than reusing
//! `candle_transformers::models::stable_diffusion::vae`: that one has no BN latent statistics or
//! posterior-mean entry point, probes the attention weights with a second, differently-shaped
//! lookup, and hard-wires its mid-block attention, which must stay a private function here so a
//! fused kernel can replace it (the decoder attends over `H/8·W/8` = 16384 tokens at 1024²).

mod blocks;
mod coder;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Conv2d, Module, VarBuilder};
use serde::Deserialize;

use self::coder::{CoderDims, Decoder, Encoder};
use crate::traits::LatentCodec;
use crate::{ModelError, Result};

/// `vae/config.json` of a FLUX.2 checkpoint (`AutoencoderKLFlux2.__init__`); defaults are
/// diffusers' and equal the FLUX.2 [dev]/[klein] VAE. Unknown keys (`_class_name`,
/// `sample_size`, `force_upcast`, …) are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct Flux2VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    /// Decoder channels when they differ from the encoder's (`None`: same as `block_out_channels`).
    pub decoder_block_out_channels: Option<Vec<usize>>,
    pub layers_per_block: usize,
    pub act_fn: String,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
    pub batch_norm_eps: f64,
    /// Only used for training; kept so the config round-trips.
    pub batch_norm_momentum: f64,
    pub patch_size: (usize, usize),
}

impl Default for Flux2VaeConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec!["DownEncoderBlock2D".into(); 4],
            up_block_types: vec!["UpDecoderBlock2D".into(); 4],
            block_out_channels: vec![128, 256, 512, 512],
            decoder_block_out_channels: None,
            layers_per_block: 2,
            act_fn: "silu".into(),
            latent_channels: 32,
            norm_num_groups: 32,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
            batch_norm_eps: 1e-4,
            batch_norm_momentum: 0.1,
            patch_size: (2, 2),
        }
    }
}

impl Flux2VaeConfig {
    /// Reads and validates a `vae/config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: Self = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        cfg.validate().map_err(|e| ModelError::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(cfg)
    }

    /// Checks that the config describes a network this implementation builds.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Unsupported(format!("FLUX.2 VAE: {m}")));
        let n = self.block_out_channels.len();
        let dec = self.decoder_channels();
        if n == 0 || dec.len() != n {
            return bad(format!(
                "block_out_channels {:?} / decoder_block_out_channels {:?} must be non-empty and \
                 equally long",
                self.block_out_channels, self.decoder_block_out_channels
            ));
        }
        if self.down_block_types.len() != n
            || self
                .down_block_types
                .iter()
                .any(|t| t != "DownEncoderBlock2D")
        {
            return bad(format!(
                "down_block_types must be {n}× DownEncoderBlock2D, got {:?}",
                self.down_block_types
            ));
        }
        if self.up_block_types.len() != n
            || self.up_block_types.iter().any(|t| t != "UpDecoderBlock2D")
        {
            return bad(format!(
                "up_block_types must be {n}× UpDecoderBlock2D, got {:?}",
                self.up_block_types
            ));
        }
        if self.act_fn != "silu" && self.act_fn != "swish" {
            return bad(format!("act_fn `{}` (only silu)", self.act_fn));
        }
        let (ph, pw) = self.patch_size;
        if self.layers_per_block == 0 || self.latent_channels == 0 || ph == 0 || pw == 0 {
            return bad(format!(
                "layers_per_block {}, latent_channels {} and patch_size {:?} must be positive",
                self.layers_per_block, self.latent_channels, self.patch_size
            ));
        }
        if ph != pw {
            return bad(format!("patch_size {:?} must be square", self.patch_size));
        }
        if self.batch_norm_eps.is_nan() || self.batch_norm_eps < 0.0 {
            return bad(format!("batch_norm_eps {}", self.batch_norm_eps));
        }
        Ok(())
    }

    /// Decoder block channels (`decoder_block_out_channels or block_out_channels`).
    pub fn decoder_channels(&self) -> &[usize] {
        self.decoder_block_out_channels
            .as_deref()
            .unwrap_or(&self.block_out_channels)
    }

    /// Pixels per VAE latent side: `2^(len(block_out_channels) − 1)` (8 for FLUX.2).
    pub fn vae_scale_factor(&self) -> usize {
        1 << self.block_out_channels.len().saturating_sub(1)
    }

    /// Channels of the patchified latent, where the BN statistics live (`ph·pw·latent`, 128).
    pub fn patched_channels(&self) -> usize {
        self.patch_size.0 * self.patch_size.1 * self.latent_channels
    }
}

/// `(B, C, H, W)` → `(B, C·ph·pw, H/ph, W/pw)` with channel index `c·ph·pw + py·pw + px`
/// (`view(B,C,h,ph,w,pw).permute(0,1,3,5,2,4)`), as `Flux2KleinPipeline._patchify_latents`.
pub fn patchify(z: &Tensor, patch: (usize, usize)) -> Result<Tensor> {
    let (ph, pw) = patch;
    match *z.dims() {
        [b, c, h, w] if ph > 0 && pw > 0 && h % ph == 0 && w % pw == 0 => {
            let (h2, w2) = (h / ph, w / pw);
            Ok(z.reshape((b, c, h2, ph, w2, pw))?
                .permute((0, 1, 3, 5, 2, 4))?
                .reshape((b, c * ph * pw, h2, w2))?)
        }
        _ => Err(ModelError::Input(format!(
            "patchify: expected (B, C, H, W) with H, W multiples of {ph}×{pw}, got shape {:?}",
            z.dims()
        ))),
    }
}

/// Inverse of [`patchify`]: `(B, C·ph·pw, h, w)` → `(B, C, h·ph, w·pw)`.
pub fn unpatchify(z: &Tensor, patch: (usize, usize)) -> Result<Tensor> {
    let (ph, pw) = patch;
    match *z.dims() {
        [b, c, h, w] if ph > 0 && pw > 0 && c % (ph * pw) == 0 => {
            let c0 = c / (ph * pw);
            Ok(z.reshape((b, c0, ph, pw, h, w))?
                .permute((0, 1, 4, 2, 5, 3))?
                .reshape((b, c0, h * ph, w * pw))?)
        }
        _ => Err(ModelError::Input(format!(
            "unpatchify: expected (B, C, h, w) with C a multiple of {}, got shape {:?}",
            ph * pw,
            z.dims()
        ))),
    }
}

/// The frozen `bn` (`BatchNorm2d(affine=False)`) statistics used as a fixed latent normaliser:
/// `z_n = (z − running_mean) / √(running_var + eps)`. Maths in f32; results keep the input dtype.
#[derive(Debug, Clone)]
pub struct LatentBatchNorm {
    /// `(1, C, 1, 1)` f32.
    mean: Tensor,
    /// `√(running_var + eps)`, `(1, C, 1, 1)` f32.
    std: Tensor,
    channels: usize,
}

impl LatentBatchNorm {
    /// From `running_mean` / `running_var` of shape `(C,)`.
    pub fn new(running_mean: &Tensor, running_var: &Tensor, eps: f64) -> Result<Self> {
        let c = running_mean.elem_count();
        if running_mean.dims() != [c] || running_var.dims() != [c] {
            return Err(ModelError::Input(format!(
                "LatentBatchNorm: running_mean {:?} and running_var {:?} must both be (C,)",
                running_mean.dims(),
                running_var.dims()
            )));
        }
        let mean = running_mean.to_dtype(DType::F32)?.reshape((1, c, 1, 1))?;
        let std = (running_var.to_dtype(DType::F32)?.reshape((1, c, 1, 1))? + eps)?.sqrt()?;
        Ok(Self {
            mean,
            std,
            channels: c,
        })
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    fn check(&self, z: &Tensor, what: &str) -> Result<()> {
        match *z.dims() {
            [_, c, _, _] if c == self.channels => Ok(()),
            _ => Err(ModelError::Input(format!(
                "{what}: expected (B, {}, h, w) latents, got shape {:?}",
                self.channels,
                z.dims()
            ))),
        }
    }

    /// `(z − mean) / std`, per channel of `(B, C, h, w)`.
    pub fn normalize(&self, z: &Tensor) -> Result<Tensor> {
        self.check(z, "bn_normalize")?;
        let zf = z.to_dtype(DType::F32)?;
        Ok(zf
            .broadcast_sub(&self.mean)?
            .broadcast_div(&self.std)?
            .to_dtype(z.dtype())?)
    }

    /// `z·std + mean`, per channel of `(B, C, h, w)`.
    pub fn denormalize(&self, z: &Tensor) -> Result<Tensor> {
        self.check(z, "bn_denormalize")?;
        let zf = z.to_dtype(DType::F32)?;
        Ok(zf
            .broadcast_mul(&self.std)?
            .broadcast_add(&self.mean)?
            .to_dtype(z.dtype())?)
    }
}

/// `AutoencoderKLFlux2`: encoder + `quant_conv`, `post_quant_conv` + decoder, and the `bn`
/// latent statistics. Weights come from `vb` at the checkpoint root (`encoder.*`, `decoder.*`,
/// `quant_conv.*`, `post_quant_conv.*`, `bn.running_{mean,var}`).
#[derive(Debug, Clone)]
pub struct AutoencoderKlFlux2 {
    cfg: Flux2VaeConfig,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    bn: LatentBatchNorm,
    device: Device,
    dtype: DType,
}

impl AutoencoderKlFlux2 {
    pub fn new(cfg: &Flux2VaeConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let l = cfg.latent_channels;
        let dims = |boc: &[usize]| CoderDims {
            image_channels: 0,
            latent_channels: l,
            block_out_channels: boc.to_vec(),
            layers_per_block: cfg.layers_per_block,
            norm_num_groups: cfg.norm_num_groups,
            mid_block_add_attention: cfg.mid_block_add_attention,
        };
        let enc_dims = CoderDims {
            image_channels: cfg.in_channels,
            ..dims(&cfg.block_out_channels)
        };
        let dec_dims = CoderDims {
            image_channels: cfg.out_channels,
            ..dims(cfg.decoder_channels())
        };
        let encoder = Encoder::new(&enc_dims, vb.pp("encoder"))?;
        let decoder = Decoder::new(&dec_dims, vb.pp("decoder"))?;
        let quant_conv = if cfg.use_quant_conv {
            Some(blocks::conv(2 * l, 2 * l, 1, 1, 0, vb.pp("quant_conv"))?)
        } else {
            None
        };
        let post_quant_conv = if cfg.use_post_quant_conv {
            Some(blocks::conv(l, l, 1, 1, 0, vb.pp("post_quant_conv"))?)
        } else {
            None
        };
        let c = cfg.patched_channels();
        let vbn = vb.pp("bn");
        let mean =
            vbn.get_with_hints_dtype(c, "running_mean", candle_nn::Init::Const(0.), DType::F32)?;
        let var =
            vbn.get_with_hints_dtype(c, "running_var", candle_nn::Init::Const(1.), DType::F32)?;
        let bn = LatentBatchNorm::new(&mean, &var, cfg.batch_norm_eps)?;
        Ok(Self {
            cfg: cfg.clone(),
            encoder,
            decoder,
            quant_conv,
            post_quant_conv,
            bn,
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }

    pub fn config(&self) -> &Flux2VaeConfig {
        &self.cfg
    }

    /// The `bn` latent statistics.
    pub fn bn(&self) -> &LatentBatchNorm {
        &self.bn
    }

    /// Weight dtype; `encode_mean` / `decode_raw` run and return in it.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Posterior mean: `(B, in_channels, H, W)` image in `[-1, 1]` → `(B, latent, H/8, W/8)`
    /// (the first `latent` channels of `quant_conv(encoder(x))`; no sampling).
    pub fn encode_mean(&self, image: &Tensor) -> Result<Tensor> {
        let x = image.to_device(&self.device)?.to_dtype(self.dtype)?;
        let moments = self.encoder.forward(&x)?;
        let moments = match &self.quant_conv {
            Some(q) => q.forward(&moments)?,
            None => moments,
        };
        Ok(moments.narrow(1, 0, self.cfg.latent_channels)?)
    }

    /// `(B, latent, h, w)` VAE latents → `(B, out_channels, 8h, 8w)` image (≈`[-1, 1]`, not clamped):
    /// `post_quant_conv` then the decoder.
    pub fn decode_raw(&self, z: &Tensor) -> Result<Tensor> {
        let z = z.to_device(&self.device)?.to_dtype(self.dtype)?;
        blocks::expect_nchw(&z, self.cfg.latent_channels, "decode_raw")?;
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(&z)?,
            None => z,
        };
        self.decoder.forward(&z)
    }

    /// [`patchify`] with the config's patch size: `(B, 32, H, W)` → `(B, 128, H/2, W/2)`.
    pub fn patchify(&self, z: &Tensor) -> Result<Tensor> {
        patchify(z, self.cfg.patch_size)
    }

    /// [`unpatchify`] with the config's patch size: `(B, 128, h, w)` → `(B, 32, 2h, 2w)`.
    pub fn unpatchify(&self, z: &Tensor) -> Result<Tensor> {
        unpatchify(z, self.cfg.patch_size)
    }

    /// BN-normalises patchified latents `(B, 128, h, w)`.
    pub fn bn_normalize(&self, z: &Tensor) -> Result<Tensor> {
        self.bn.normalize(z)
    }

    /// BN-de-normalises patchified latents `(B, 128, h, w)`.
    pub fn bn_denormalize(&self, z: &Tensor) -> Result<Tensor> {
        self.bn.denormalize(z)
    }
}

/// The FLUX.2 latent space: posterior mean → patchify → BN-normalise, and back. Codec outputs are
/// f32 whatever the weight dtype (the sampler works in f32); inputs may be any float dtype.
impl LatentCodec for AutoencoderKlFlux2 {
    fn encode(&self, image: &Tensor) -> Result<Tensor> {
        let s = self.downscale();
        let ok = match *image.dims() {
            [_, c, h, w] => c == self.cfg.in_channels && h > 0 && w > 0 && h % s == 0 && w % s == 0,
            _ => false,
        };
        if !ok {
            return Err(ModelError::Input(format!(
                "FLUX.2 VAE encode: expected a (B, {}, H, W) image with H and W positive \
                 multiples of {s}, got shape {:?}",
                self.cfg.in_channels,
                image.dims()
            )));
        }
        let mean = self.encode_mean(image)?.to_dtype(DType::F32)?;
        self.bn.normalize(&self.patchify(&mean)?)
    }

    fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        blocks::expect_nchw(latents, self.latent_channels(), "FLUX.2 VAE decode")?;
        let z = self
            .bn
            .denormalize(&latents.to_device(&self.device)?.to_dtype(DType::F32)?)?;
        let z = self.unpatchify(&z)?;
        Ok(self.decode_raw(&z)?.to_dtype(DType::F32)?)
    }

    fn downscale(&self) -> usize {
        self.cfg.vae_scale_factor() * self.cfg.patch_size.0
    }

    fn latent_channels(&self) -> usize {
        self.cfg.patched_channels()
    }
}
