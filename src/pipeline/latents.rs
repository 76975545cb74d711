//! Latent token layout of FLUX.2: packing `(B, C, h, w)` ⇄ `(B, h·w, C)` and the position ids of
//! target and reference grids (`shared/reference/flux2-klein.md` §2; diffusers 0.42.1
//! `Flux2KleinPipeline._pack_latents` / `_unpack_latents_with_ids` / `_prepare_latent_ids`).

use candle_core::{Result, Tensor};
use editd_models::traits::PositionIds;

/// `(B, C, h, w)` → `(B, h·w, C)`, token `n = y·w + x`.
pub fn pack(latents: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = latents.dims4()?;
    latents
        .reshape((b, c, h * w))?
        .transpose(1, 2)?
        .contiguous()
}

/// `(B, h·w, C)` → `(B, C, h, w)` (the inverse of [`pack`]; tokens are in row-major grid order).
pub fn unpack(tokens: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (b, n, c) = tokens.dims3()?;
    if n != h * w {
        candle_core::bail!("unpack: {n} tokens do not fill a {h}x{w} grid");
    }
    tokens.transpose(1, 2)?.contiguous()?.reshape((b, c, h, w))
}

/// Time offset of the `k`-th (0-based) conditioning image: 10, 20, 30, …
pub fn reference_time_offset(k: usize) -> u32 {
    10 * (k as u32 + 1)
}

/// Ids of the target grid `(0, y, x, 0)`.
pub fn target_ids(h: usize, w: usize) -> PositionIds {
    PositionIds::image_grid(0, h, w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn pack_is_row_major_and_unpack_inverts_it() {
        let x = Tensor::arange(0f32, 24., &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 3, 4))
            .unwrap();
        let p = pack(&x).unwrap();
        assert_eq!(p.dims(), &[1, 12, 2]);
        let v = p.to_vec3::<f32>().unwrap();
        // token (y=1, x=2) = n 6 holds channel values x[0,:,1,2] = [6, 18].
        assert_eq!(v[0][6], vec![6.0, 18.0]);
        let back = unpack(&p, 3, 4).unwrap();
        let diff = (back - &x).unwrap().abs().unwrap().sum_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn reference_offsets_count_by_ten() {
        assert_eq!(reference_time_offset(0), 10);
        assert_eq!(reference_time_offset(2), 30);
        let ids = target_ids(2, 3);
        assert_eq!(ids.0[4], [0, 1, 1, 0]);
    }
}
