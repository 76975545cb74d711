//! CPU plumbing shared by the fused ops: contiguous slice access and f32/f16/bf16 dispatch over
//! `CpuStorage`. The per-op loops live next to their op.

use candle_core::{bail, Layout, Result};

/// The contiguous part of `s` described by `l`, or an error naming `what`.
pub(crate) fn slice<'a, T>(s: &'a [T], l: &Layout, what: &str) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s[a..b]),
        None => bail!("{what} must be contiguous (layout {l:?})"),
    }
}

/// Runs a generic `fn f<T: WithDType>(a: &[T], b: &[T], .., extra..) -> Result<Vec<T>>` on
/// storages that are all f32, all f16 or all bf16, and wraps the result back into `CpuStorage`.
macro_rules! dispatch_float {
    ($op:expr, $f:ident, ($($s:ident),+) $(, $extra:expr)* $(,)?) => {{
        use candle_core::CpuStorage as C;
        match ($($s,)+) {
            ($(C::F32($s),)+) => C::F32($f($($s,)+ $($extra),*)?),
            ($(C::F16($s),)+) => C::F16($f($($s,)+ $($extra),*)?),
            ($(C::BF16($s),)+) => C::BF16($f($($s,)+ $($extra),*)?),
            _ => candle_core::bail!("{}: inputs must share one dtype of f32/f16/bf16", $op),
        }
    }};
}
pub(crate) use dispatch_float;

/// Checks that a per-batch conditioning vector is (B, D) or (B, 1, D) and returns it as a
/// contiguous (B, D) tensor.
pub(crate) fn per_batch(
    t: &candle_core::Tensor,
    b: usize,
    d: usize,
    what: &str,
) -> Result<candle_core::Tensor> {
    let ok = match t.dims() {
        [tb, td] => *tb == b && *td == d,
        [tb, 1, td] => *tb == b && *td == d,
        _ => false,
    };
    if !ok {
        bail!(
            "{what} must be ({b}, {d}) or ({b}, 1, {d}), got {:?}",
            t.shape()
        );
    }
    t.reshape((b, d))?.contiguous()
}
