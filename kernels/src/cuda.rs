//! CUDA launchers for the kernels in `cuda/fused.cu` (PTX built by `build.rs`, loaded once per
//! device through candle's `get_or_load_custom_func`). Inputs arrive contiguous from the public
//! op functions; every launcher supports f32, f16 and bf16.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{kernel_name, CudaStorageSlice as S, WrapErr};
use candle_core::{bail, CudaDevice, CudaStorage, Layout, Result, WithDType};

/// PTX for `compute_$CUDA_COMPUTE_CAP`, produced by build.rs with nvcc 13.0.
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused.ptx"));
/// Module name in candle's per-device custom-module cache.
const MODULE: &str = "editd_kernels_fused";
/// Threads per block for the grid-stride elementwise kernels.
const BLOCK: u32 = 256;

fn view<'a, T>(s: &'a CudaSlice<T>, l: &Layout, what: &str) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(s.slice(a..b)),
        None => bail!("{what} must be contiguous (layout {l:?})"),
    }
}

fn grid_for(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 1 << 20) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn wrap(slice: S, dev: &CudaDevice) -> CudaStorage {
    CudaStorage {
        slice,
        device: dev.clone(),
    }
}

/// Applies a generic launcher to three same-dtype float storages.
macro_rules! float3 {
    ($op:expr, $f:ident, ($a:expr, $b:expr, $c:expr), $($extra:expr),*) => {
        match (&$a.slice, &$b.slice, &$c.slice) {
            (S::F32(a), S::F32(b), S::F32(c)) => S::F32($f(a, b, c, $($extra),*)?),
            (S::F16(a), S::F16(b), S::F16(c)) => S::F16($f(a, b, c, $($extra),*)?),
            (S::BF16(a), S::BF16(b), S::BF16(c)) => S::BF16($f(a, b, c, $($extra),*)?),
            _ => bail!("{}: cuda kernel needs f32/f16/bf16 inputs of one dtype", $op),
        }
    };
}

#[allow(clippy::too_many_arguments)]
fn modulate_t<T: DeviceRepr + WithDType>(
    x: &CudaSlice<T>,
    shift: &CudaSlice<T>,
    scale: &CudaSlice<T>,
    ls: [&Layout; 3],
    dev: &CudaDevice,
    eps: f32,
) -> Result<CudaSlice<T>> {
    let (b, l, d) = ls[0].shape().dims3()?;
    let rows = b * l;
    let (x, sh, sc) = (
        view(x, ls[0], "modulate: x")?,
        view(shift, ls[1], "modulate: shift")?,
        view(scale, ls[2], "modulate: scale")?,
    );
    // SAFETY: every element is written by the kernel below.
    let out = unsafe { dev.alloc::<T>(rows * d)? };
    if rows == 0 || d == 0 {
        return Ok(out);
    }
    let func = dev.get_or_load_custom_func(&kernel_name::<T>("modulate"), MODULE, PTX)?;
    let threads = (d.div_ceil(32) * 32).min(1024) as u32;
    let cfg = LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut builder = func.builder();
    builder.arg(&x).arg(&sh).arg(&sc).arg(&out);
    candle_core::builder_arg!(builder, rows as i32, l as i32, d as i32, eps);
    // SAFETY: argument list matches `modulate_*` in fused.cu; sizes checked by the caller.
    unsafe { builder.launch(cfg) }.w()?;
    Ok(out)
}

pub(crate) fn modulate(
    x: &CudaStorage,
    lx: &Layout,
    shift: &CudaStorage,
    ls: &Layout,
    scale: &CudaStorage,
    lc: &Layout,
    eps: f32,
) -> Result<CudaStorage> {
    let dev = x.device();
    let slice = float3!(
        "modulate",
        modulate_t,
        (x, shift, scale),
        [lx, ls, lc],
        dev,
        eps
    );
    Ok(wrap(slice, dev))
}

fn gated_residual_t<T: DeviceRepr + WithDType>(
    x: &CudaSlice<T>,
    gate: &CudaSlice<T>,
    y: &CudaSlice<T>,
    ls: [&Layout; 3],
    dev: &CudaDevice,
) -> Result<CudaSlice<T>> {
    let (_, l, d) = ls[0].shape().dims3()?;
    let n = ls[0].shape().elem_count();
    let (x, g, y) = (
        view(x, ls[0], "gated_residual: x")?,
        view(gate, ls[1], "gated_residual: gate")?,
        view(y, ls[2], "gated_residual: y")?,
    );
    // SAFETY: every element is written by the kernel below.
    let out = unsafe { dev.alloc::<T>(n)? };
    if n == 0 {
        return Ok(out);
    }
    let func = dev.get_or_load_custom_func(&kernel_name::<T>("gated_residual"), MODULE, PTX)?;
    let mut builder = func.builder();
    builder.arg(&x).arg(&g).arg(&y).arg(&out);
    candle_core::builder_arg!(builder, n, l * d, d as i32);
    // SAFETY: argument list matches `gated_residual_*` in fused.cu.
    unsafe { builder.launch(grid_for(n)) }.w()?;
    Ok(out)
}

pub(crate) fn gated_residual(
    x: &CudaStorage,
    lx: &Layout,
    gate: &CudaStorage,
    lg: &Layout,
    y: &CudaStorage,
    ly: &Layout,
) -> Result<CudaStorage> {
    let dev = x.device();
    let slice = float3!(
        "gated_residual",
        gated_residual_t,
        (x, gate, y),
        [lx, lg, ly],
        dev
    );
    Ok(wrap(slice, dev))
}

fn rms_norm_rows_t<T: DeviceRepr + WithDType>(
    x: &CudaSlice<T>,
    w: &CudaSlice<T>,
    ls: [&Layout; 2],
    dev: &CudaDevice,
    eps: f32,
) -> Result<CudaSlice<T>> {
    let n = ls[0].shape().elem_count();
    let d = ls[1].shape().elem_count();
    let rows = n.checked_div(d).unwrap_or(0);
    let (x, w) = (
        view(x, ls[0], "rms_norm_heads: x")?,
        view(w, ls[1], "rms_norm_heads: w")?,
    );
    // SAFETY: every element is written by the kernel below.
    let out = unsafe { dev.alloc::<T>(n)? };
    if rows == 0 {
        return Ok(out);
    }
    let func = dev.get_or_load_custom_func(&kernel_name::<T>("rms_norm_rows"), MODULE, PTX)?;
    const WARPS: usize = 8;
    let cfg = LaunchConfig {
        grid_dim: (rows.div_ceil(WARPS) as u32, 1, 1),
        block_dim: (32 * WARPS as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut builder = func.builder();
    builder.arg(&x).arg(&w).arg(&out);
    candle_core::builder_arg!(builder, rows as i32, d as i32, eps);
    // SAFETY: argument list matches `rms_norm_rows_*` in fused.cu.
    unsafe { builder.launch(cfg) }.w()?;
    Ok(out)
}

pub(crate) fn rms_norm_rows(
    x: &CudaStorage,
    lx: &Layout,
    w: &CudaStorage,
    lw: &Layout,
    eps: f32,
) -> Result<CudaStorage> {
    let dev = x.device();
    let slice = match (&x.slice, &w.slice) {
        (S::F32(a), S::F32(b)) => S::F32(rms_norm_rows_t(a, b, [lx, lw], dev, eps)?),
        (S::F16(a), S::F16(b)) => S::F16(rms_norm_rows_t(a, b, [lx, lw], dev, eps)?),
        (S::BF16(a), S::BF16(b)) => S::BF16(rms_norm_rows_t(a, b, [lx, lw], dev, eps)?),
        _ => bail!("rms_norm_heads: cuda kernel needs f32/f16/bf16 inputs of one dtype"),
    };
    Ok(wrap(slice, dev))
}

fn rope_t<T: DeviceRepr + WithDType>(
    x: &CudaSlice<T>,
    cos: &CudaView<'_, f32>,
    sin: &CudaView<'_, f32>,
    lx: &Layout,
    dev: &CudaDevice,
    cs_stride: usize,
) -> Result<CudaSlice<T>> {
    let (_, h, l, dh) = lx.shape().dims4()?;
    let n = lx.shape().elem_count();
    let x = view(x, lx, "rope_interleaved: x")?;
    // SAFETY: every element is written by the kernel below.
    let out = unsafe { dev.alloc::<T>(n)? };
    if n == 0 {
        return Ok(out);
    }
    let func = dev.get_or_load_custom_func(&kernel_name::<T>("rope_interleaved"), MODULE, PTX)?;
    let pairs = n / 2;
    let mut builder = func.builder();
    builder.arg(&x).arg(cos).arg(sin).arg(&out);
    candle_core::builder_arg!(
        builder,
        pairs,
        h as i32,
        l as i32,
        (dh / 2) as i32,
        cs_stride
    );
    // SAFETY: argument list matches `rope_interleaved_*` in fused.cu.
    unsafe { builder.launch(grid_for(pairs)) }.w()?;
    Ok(out)
}

pub(crate) fn rope_interleaved(
    x: &CudaStorage,
    lx: &Layout,
    cos: &CudaStorage,
    lc: &Layout,
    sin: &CudaStorage,
    ls: &Layout,
    cs_stride: usize,
) -> Result<CudaStorage> {
    let dev = x.device();
    let (cos, sin) = match (&cos.slice, &sin.slice) {
        (S::F32(c), S::F32(s)) => (
            view(c, lc, "rope_interleaved: cos")?,
            view(s, ls, "rope_interleaved: sin")?,
        ),
        _ => bail!("rope_interleaved: cos/sin must be f32"),
    };
    let slice = match &x.slice {
        S::F32(x) => S::F32(rope_t(x, &cos, &sin, lx, dev, cs_stride)?),
        S::F16(x) => S::F16(rope_t(x, &cos, &sin, lx, dev, cs_stride)?),
        S::BF16(x) => S::BF16(rope_t(x, &cos, &sin, lx, dev, cs_stride)?),
        _ => bail!("rope_interleaved: x must be f32/f16/bf16"),
    };
    Ok(wrap(slice, dev))
}

fn swiglu_t<T: DeviceRepr + WithDType>(
    h: &CudaSlice<T>,
    l: &Layout,
    dev: &CudaDevice,
) -> Result<CudaSlice<T>> {
    let f = l.shape().dims().last().copied().unwrap_or(0) / 2;
    let n = l.shape().elem_count() / 2;
    let h = view(h, l, "swiglu: h")?;
    // SAFETY: every element is written by the kernel below.
    let out = unsafe { dev.alloc::<T>(n)? };
    if n == 0 {
        return Ok(out);
    }
    let func = dev.get_or_load_custom_func(&kernel_name::<T>("swiglu"), MODULE, PTX)?;
    let mut builder = func.builder();
    builder.arg(&h).arg(&out);
    candle_core::builder_arg!(builder, n, f as i32);
    // SAFETY: argument list matches `swiglu_*` in fused.cu.
    unsafe { builder.launch(grid_for(n)) }.w()?;
    Ok(out)
}

pub(crate) fn swiglu(h: &CudaStorage, l: &Layout) -> Result<CudaStorage> {
    let dev = h.device();
    let slice = match &h.slice {
        S::F32(h) => S::F32(swiglu_t(h, l, dev)?),
        S::F16(h) => S::F16(swiglu_t(h, l, dev)?),
        S::BF16(h) => S::BF16(swiglu_t(h, l, dev)?),
        _ => bail!("swiglu: h must be f32/f16/bf16"),
    };
    Ok(wrap(slice, dev))
}
