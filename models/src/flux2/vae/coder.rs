//! The VAE `Encoder` and `Decoder` with their `DownEncoderBlock2D` / `UpDecoderBlock2D` stages.
//!
//! Upstream: `diffusers/models/autoencoders/vae.py` (`Encoder`, `Decoder` with `norm_type="group"`,
//! `double_z=True`) and `diffusers/models/unets/unet_2d_blocks.py` (`DownEncoderBlock2D`,
//! `UpDecoderBlock2D`), diffusers 0.42.1.

use candle_core::Tensor;
use candle_nn::{Conv2d, GroupNorm, Module, VarBuilder};

use super::blocks::{
    conv, expect_nchw, group_norm, Downsample2D, MidBlock2D, ResnetBlock2D, Upsample2D,
};
use crate::Result;

/// `DownEncoderBlock2D`: `num_layers` resnets, then an optional downsampler.
#[derive(Debug, Clone)]
struct DownEncoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    downsampler: Option<Downsample2D>,
}

impl DownEncoderBlock2D {
    fn new(
        cin: usize,
        cout: usize,
        layers: usize,
        groups: usize,
        downsample: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let vr = vb.pp("resnets");
        let resnets = (0..layers)
            .map(|j| ResnetBlock2D::new(if j == 0 { cin } else { cout }, cout, groups, vr.pp(j)))
            .collect::<Result<Vec<_>>>()?;
        let downsampler = if downsample {
            Some(Downsample2D::new(cout, vb.pp("downsamplers").pp("0"))?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            downsampler,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for r in &self.resnets {
            x = r.forward(&x)?;
        }
        match &self.downsampler {
            Some(d) => d.forward(&x),
            None => Ok(x),
        }
    }
}

/// `UpDecoderBlock2D`: `num_layers` resnets, then an optional upsampler.
#[derive(Debug, Clone)]
struct UpDecoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Upsample2D>,
}

impl UpDecoderBlock2D {
    fn new(
        cin: usize,
        cout: usize,
        layers: usize,
        groups: usize,
        upsample: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let vr = vb.pp("resnets");
        let resnets = (0..layers)
            .map(|j| ResnetBlock2D::new(if j == 0 { cin } else { cout }, cout, groups, vr.pp(j)))
            .collect::<Result<Vec<_>>>()?;
        let upsampler = if upsample {
            Some(Upsample2D::new(cout, vb.pp("upsamplers").pp("0"))?)
        } else {
            None
        };
        Ok(Self { resnets, upsampler })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for r in &self.resnets {
            x = r.forward(&x)?;
        }
        match &self.upsampler {
            Some(u) => u.forward(&x),
            None => Ok(x),
        }
    }
}

/// Sizes shared by the encoder and decoder constructors.
#[derive(Debug, Clone)]
pub(crate) struct CoderDims {
    /// Image channels (encoder input / decoder output).
    pub image_channels: usize,
    /// VAE latent channels (encoder outputs twice as many: mean and log-variance).
    pub latent_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub norm_num_groups: usize,
    pub mid_block_add_attention: bool,
}

/// `Encoder`: conv_in, down blocks, mid block, GroupNorm, SiLU, conv_out to `2·latent` channels.
#[derive(Debug, Clone)]
pub(crate) struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownEncoderBlock2D>,
    mid_block: MidBlock2D,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    in_channels: usize,
}

impl Encoder {
    pub(crate) fn new(d: &CoderDims, vb: VarBuilder) -> Result<Self> {
        let boc = &d.block_out_channels;
        let (first, last) = (boc[0], boc[boc.len() - 1]);
        let g = d.norm_num_groups;
        let vd = vb.pp("down_blocks");
        let mut down_blocks = Vec::with_capacity(boc.len());
        let mut cin = first;
        for (i, &cout) in boc.iter().enumerate() {
            let down = i + 1 != boc.len();
            down_blocks.push(DownEncoderBlock2D::new(
                cin,
                cout,
                d.layers_per_block,
                g,
                down,
                vd.pp(i),
            )?);
            cin = cout;
        }
        Ok(Self {
            conv_in: conv(d.image_channels, first, 3, 1, 1, vb.pp("conv_in"))?,
            down_blocks,
            mid_block: MidBlock2D::new(last, g, d.mid_block_add_attention, vb.pp("mid_block"))?,
            conv_norm_out: group_norm(g, last, vb.pp("conv_norm_out"))?,
            conv_out: conv(last, 2 * d.latent_channels, 3, 1, 1, vb.pp("conv_out"))?,
            in_channels: d.image_channels,
        })
    }

    /// `(B, C_img, H, W)` → `(B, 2·latent, H/2^(n−1), W/2^(n−1))` (before `quant_conv`).
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        expect_nchw(x, self.in_channels, "VAE encoder input")?;
        let mut x = self.conv_in.forward(x)?;
        for b in &self.down_blocks {
            x = b.forward(&x)?;
        }
        let x = self.mid_block.forward(&x)?;
        let x = self.conv_norm_out.forward(&x)?.silu()?;
        Ok(self.conv_out.forward(&x)?)
    }
}

/// `Decoder`: conv_in, mid block, up blocks (`layers_per_block + 1` resnets each), GroupNorm, SiLU,
/// conv_out.
#[derive(Debug, Clone)]
pub(crate) struct Decoder {
    conv_in: Conv2d,
    mid_block: MidBlock2D,
    up_blocks: Vec<UpDecoderBlock2D>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    latent_channels: usize,
}

impl Decoder {
    pub(crate) fn new(d: &CoderDims, vb: VarBuilder) -> Result<Self> {
        let boc = &d.block_out_channels;
        let (first, last) = (boc[0], boc[boc.len() - 1]);
        let g = d.norm_num_groups;
        let vu = vb.pp("up_blocks");
        let mut up_blocks = Vec::with_capacity(boc.len());
        let mut cin = last;
        for (i, &cout) in boc.iter().rev().enumerate() {
            let up = i + 1 != boc.len();
            up_blocks.push(UpDecoderBlock2D::new(
                cin,
                cout,
                d.layers_per_block + 1,
                g,
                up,
                vu.pp(i),
            )?);
            cin = cout;
        }
        Ok(Self {
            conv_in: conv(d.latent_channels, last, 3, 1, 1, vb.pp("conv_in"))?,
            mid_block: MidBlock2D::new(last, g, d.mid_block_add_attention, vb.pp("mid_block"))?,
            up_blocks,
            conv_norm_out: group_norm(g, first, vb.pp("conv_norm_out"))?,
            conv_out: conv(first, d.image_channels, 3, 1, 1, vb.pp("conv_out"))?,
            latent_channels: d.latent_channels,
        })
    }

    /// `(B, latent, h, w)` → `(B, C_img, h·2^(n−1), w·2^(n−1))`.
    pub(crate) fn forward(&self, z: &Tensor) -> Result<Tensor> {
        expect_nchw(z, self.latent_channels, "VAE decoder input")?;
        let x = self.conv_in.forward(z)?;
        let mut x = self.mid_block.forward(&x)?;
        for b in &self.up_blocks {
            x = b.forward(&x)?;
        }
        let x = self.conv_norm_out.forward(&x)?.silu()?;
        Ok(self.conv_out.forward(&x)?)
    }
}
