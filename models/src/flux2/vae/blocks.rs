//! VAE building blocks: `ResnetBlock2D`, `Downsample2D`, `Upsample2D`, the mid-block attention and
//! `UNetMidBlock2D`, as diffusers 0.42.1 builds them for `AutoencoderKLFlux2`.
//!
//! Upstream: `diffusers/models/resnet.py` (`ResnetBlock2D`, no time embedding),
//! `diffusers/models/downsampling.py` / `upsampling.py` (`Downsample2D` with `padding=0`,
//! `Upsample2D` with `use_conv=True`), `diffusers/models/attention_processor.py` (`Attention` with
//! `_from_deprecated_attn_block=True`, `AttnProcessor2_0`) and
//! `diffusers/models/unets/unet_2d_blocks.py` (`UNetMidBlock2D`). Every GroupNorm here uses
//! eps 1e-6 (`resnet_eps`), every activation is SiLU and `output_scale_factor` is 1.

use candle_core::{DType, Tensor, D};
use candle_nn::{Conv2d, Conv2dConfig, GroupNorm, Linear, Module, VarBuilder};

use crate::{ModelError, Result};

/// GroupNorm eps used by every norm of the Flux2 VAE encoder/decoder (`resnet_eps=1e-6`).
pub(crate) const GN_EPS: f64 = 1e-6;

/// Most f32 attention-score elements materialised at once (256 MiB); queries are chunked to fit.
const ATTN_SCORE_BUDGET: usize = 1 << 26;

/// Checks that `x` is `(B, channels, H, W)` and returns its dims.
pub(crate) fn expect_nchw(
    x: &Tensor,
    channels: usize,
    what: &str,
) -> Result<(usize, usize, usize, usize)> {
    match *x.dims() {
        [b, c, h, w] if c == channels => Ok((b, c, h, w)),
        _ => Err(ModelError::Input(format!(
            "{what}: expected a (B, {channels}, H, W) tensor, got shape {:?}",
            x.dims()
        ))),
    }
}

pub(crate) fn conv(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    padding: usize,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    Ok(candle_nn::conv2d(cin, cout, k, cfg, vb)?)
}

pub(crate) fn group_norm(groups: usize, channels: usize, vb: VarBuilder) -> Result<GroupNorm> {
    if groups == 0 || !channels.is_multiple_of(groups) {
        return Err(ModelError::Unsupported(format!(
            "GroupNorm `{}`: {channels} channels are not divisible into {groups} groups",
            vb.prefix()
        )));
    }
    Ok(candle_nn::group_norm(groups, channels, GN_EPS, vb)?)
}

/// `ResnetBlock2D` without time embedding: `shortcut(x) + conv2(silu(gn2(conv1(silu(gn1(x))))))`.
#[derive(Debug, Clone)]
pub(crate) struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    /// 1×1 `conv_shortcut`, present when the channel count changes.
    conv_shortcut: Option<Conv2d>,
    in_channels: usize,
}

impl ResnetBlock2D {
    pub(crate) fn new(cin: usize, cout: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        let conv_shortcut = if cin != cout {
            Some(conv(cin, cout, 1, 1, 0, vb.pp("conv_shortcut"))?)
        } else {
            None
        };
        Ok(Self {
            norm1: group_norm(groups, cin, vb.pp("norm1"))?,
            conv1: conv(cin, cout, 3, 1, 1, vb.pp("conv1"))?,
            norm2: group_norm(groups, cout, vb.pp("norm2"))?,
            conv2: conv(cout, cout, 3, 1, 1, vb.pp("conv2"))?,
            conv_shortcut,
            in_channels: cin,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        expect_nchw(x, self.in_channels, "ResnetBlock2D")?;
        let h = self.conv1.forward(&self.norm1.forward(x)?.silu()?)?;
        let h = self.conv2.forward(&self.norm2.forward(&h)?.silu()?)?;
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        Ok((skip + h)?)
    }
}

/// Encoder `Downsample2D` (`padding=0`): zero-pad right and bottom by one, then 3×3 stride-2 conv.
#[derive(Debug, Clone)]
pub(crate) struct Downsample2D {
    conv: Conv2d,
    channels: usize,
}

impl Downsample2D {
    pub(crate) fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: conv(channels, channels, 3, 2, 0, vb.pp("conv"))?,
            channels,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        expect_nchw(x, self.channels, "Downsample2D")?;
        let x = x
            .pad_with_zeros(D::Minus1, 0, 1)?
            .pad_with_zeros(D::Minus2, 0, 1)?;
        Ok(self.conv.forward(&x)?)
    }
}

/// Decoder `Upsample2D`: nearest-neighbour 2× then 3×3 conv (padding 1).
#[derive(Debug, Clone)]
pub(crate) struct Upsample2D {
    conv: Conv2d,
    channels: usize,
}

impl Upsample2D {
    pub(crate) fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: conv(channels, channels, 3, 1, 1, vb.pp("conv"))?,
            channels,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = expect_nchw(x, self.channels, "Upsample2D")?;
        let x = x.upsample_nearest2d(2 * h, 2 * w)?;
        Ok(self.conv.forward(&x)?)
    }
}

/// Mid-block `Attention` (`_from_deprecated_attn_block`): GroupNorm, then single-head attention over
/// the `H·W` pixels with q/k/v/out linears (with bias) and scale `1/√C`, plus the residual.
#[derive(Debug, Clone)]
pub(crate) struct MidAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    channels: usize,
}

impl MidAttention {
    pub(crate) fn new(channels: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        let lin = |name: &str| -> Result<Linear> {
            Ok(candle_nn::linear(channels, channels, vb.pp(name))?)
        };
        Ok(Self {
            group_norm: group_norm(groups, channels, vb.pp("group_norm"))?,
            to_q: lin("to_q")?,
            to_k: lin("to_k")?,
            to_v: lin("to_v")?,
            to_out: lin("to_out.0")?,
            channels,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = expect_nchw(x, self.channels, "mid-block attention")?;
        // (B, C, H, W) → (B, H·W, C): token n = y·W + x.
        let t = self
            .group_norm
            .forward(x)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?;
        let q = self.to_q.forward(&t)?;
        let k = self.to_k.forward(&t)?;
        let v = self.to_v.forward(&t)?;
        drop(t);
        let a = single_head_attention(&q, &k, &v)?;
        drop((q, k, v));
        let out = self
            .to_out
            .forward(&a)?
            .transpose(1, 2)?
            .reshape((b, c, h, w))?;
        Ok((out + x)?)
    }
}

/// Plain single-head softmax attention `softmax(q·kᵀ/√C)·v` for `(B, N, C)` inputs, computed in f32
/// (diffusers uses `upcast_softmax`) and returned in the dtype of `q`.
///
/// Queries are processed in chunks so that at most [`ATTN_SCORE_BUDGET`] scores exist at a time
/// (`N = 16384` tokens at 1024² gives 4096-query chunks). This is the place a fused
/// (flash) attention kernel slots in; it is row-wise exact, so chunking changes nothing.
fn single_head_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (b, n, c) = q.dims3()?;
    if k.dims() != [b, n, c] || v.dims() != [b, n, c] {
        return Err(ModelError::Input(format!(
            "attention: q {:?}, k {:?}, v {:?} must share one (B, N, C) shape",
            q.dims(),
            k.dims(),
            v.dims()
        )));
    }
    let dtype = q.dtype();
    let scale = 1.0 / (c as f64).sqrt();
    let q = (q.to_dtype(DType::F32)? * scale)?;
    let kt = k.to_dtype(DType::F32)?.t()?.contiguous()?;
    let v = v.to_dtype(DType::F32)?.contiguous()?;
    let chunk = (ATTN_SCORE_BUDGET / (b * n).max(1)).clamp(1, n.max(1));
    let mut outs = Vec::with_capacity(n.div_ceil(chunk));
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let qc = q.narrow(1, start, len)?.contiguous()?;
        let p = candle_nn::ops::softmax_last_dim(&qc.matmul(&kt)?)?;
        outs.push(p.matmul(&v)?);
        start += len;
    }
    let out = if outs.len() == 1 {
        outs.remove(0)
    } else {
        Tensor::cat(&outs, 1)?
    };
    Ok(out.to_dtype(dtype)?)
}

/// `UNetMidBlock2D` (one layer): resnet, optional attention, resnet.
#[derive(Debug, Clone)]
pub(crate) struct MidBlock2D {
    resnet0: ResnetBlock2D,
    attention: Option<MidAttention>,
    resnet1: ResnetBlock2D,
}

impl MidBlock2D {
    pub(crate) fn new(
        channels: usize,
        groups: usize,
        add_attention: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let vr = vb.pp("resnets");
        let attention = if add_attention {
            Some(MidAttention::new(
                channels,
                groups,
                vb.pp("attentions").pp("0"),
            )?)
        } else {
            None
        };
        Ok(Self {
            resnet0: ResnetBlock2D::new(channels, channels, groups, vr.pp("0"))?,
            attention,
            resnet1: ResnetBlock2D::new(channels, channels, groups, vr.pp("1"))?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = self.resnet0.forward(x)?;
        if let Some(a) = &self.attention {
            x = a.forward(&x)?;
        }
        self.resnet1.forward(&x)
    }
}
