//! Inpainting mask maths: binarisation, the token-grid mask, and paste-back with a feathered edge.
//!
//! Binarisation and the token mask follow diffusers 0.42.1 `pipeline_flux2_klein_inpaint.py`
//! (`mask_processor.preprocess(..., binarize=True)`: `v/255 < 0.5 → 0`, else 1; then
//! `F.interpolate(mode="bilinear", align_corners=False, antialias=False)` to the token grid).
//! Paste-back is editd's own (off in the reference): pixels outside the mask are the source's,
//! bit for bit; inside, the generated pixels fade in over a few pixels from the mask's edge.

use image::{GrayImage, RgbImage};

/// Binary mask: `true` = repaint. Matches `v/255 ≥ 0.5` in f32.
pub fn binarize(mask: &GrayImage) -> Vec<bool> {
    mask.pixels()
        .map(|p| (p.0[0] as f32 / 255.0_f32) >= 0.5_f32)
        .collect()
}

/// Bilinear (align_corners = false, no antialias) resample of a `H × W` 0/1 mask to `h × w`,
/// as `torch.nn.functional.interpolate` computes it in f32. Row-major, length `h·w`.
pub fn token_mask(bin: &[bool], src_w: usize, src_h: usize, w: usize, h: usize) -> Vec<f32> {
    assert_eq!(bin.len(), src_w * src_h);
    let axis = |dst: usize, src: usize| -> Vec<(usize, usize, f32, f32)> {
        let scale = src as f32 / dst as f32;
        (0..dst)
            .map(|i| {
                let s = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
                let i0 = (s.floor() as usize).min(src - 1);
                let i1 = (i0 + 1).min(src - 1);
                let l1 = s - i0 as f32;
                (i0, i1, 1.0 - l1, l1)
            })
            .collect()
    };
    let ys = axis(h, src_h);
    let xs = axis(w, src_w);
    let px = |y: usize, x: usize| if bin[y * src_w + x] { 1.0f32 } else { 0.0 };
    let mut out = Vec::with_capacity(h * w);
    for &(y0, y1, wy0, wy1) in &ys {
        for &(x0, x1, wx0, wx1) in &xs {
            let top = wx0 * px(y0, x0) + wx1 * px(y0, x1);
            let bottom = wx0 * px(y1, x0) + wx1 * px(y1, x1);
            out.push(wy0 * top + wy1 * bottom);
        }
    }
    out
}

/// Width of the fade inside the mask's edge, in pixels: `clamp(min(W, H)/64, 2, 16)`.
pub fn feather_px(w: u32, h: u32) -> f32 {
    (w.min(h) as f32 / 64.0).clamp(2.0, 16.0)
}

/// Chamfer (3-4) distance, in pixels, from every repaint pixel to the nearest keep pixel
/// (0 on keep pixels). Two raster passes, O(W·H).
fn distance_to_keep(bin: &[bool], w: usize, h: usize) -> Vec<f32> {
    const INF: u32 = u32::MAX / 4;
    let mut d: Vec<u32> = bin.iter().map(|&m| if m { INF } else { 0 }).collect();
    let at = |x: isize, y: isize| -> Option<usize> {
        (x >= 0 && y >= 0 && (x as usize) < w && (y as usize) < h)
            .then(|| y as usize * w + x as usize)
    };
    for y in 0..h as isize {
        for x in 0..w as isize {
            let i = y as usize * w + x as usize;
            for (dx, dy, c) in [(-1, 0, 3), (-1, -1, 4), (0, -1, 3), (1, -1, 4)] {
                if let Some(j) = at(x + dx, y + dy) {
                    d[i] = d[i].min(d[j] + c);
                }
            }
        }
    }
    for y in (0..h as isize).rev() {
        for x in (0..w as isize).rev() {
            let i = y as usize * w + x as usize;
            for (dx, dy, c) in [(1, 0, 3), (1, 1, 4), (0, 1, 3), (-1, 1, 4)] {
                if let Some(j) = at(x + dx, y + dy) {
                    d[i] = d[i].min(d[j] + c);
                }
            }
        }
    }
    d.into_iter().map(|v| v as f32 / 3.0).collect()
}

/// Pastes `source` back over `generated` outside the mask (exactly), fading the generated
/// pixels in over [`feather_px`] pixels inside the mask's edge. Images must have the mask's size.
pub fn paste_back(generated: &RgbImage, source: &RgbImage, bin: &[bool]) -> RgbImage {
    let (w, h) = generated.dimensions();
    assert_eq!(source.dimensions(), (w, h));
    assert_eq!(bin.len(), (w * h) as usize);
    let dist = distance_to_keep(bin, w as usize, h as usize);
    let feather = feather_px(w, h);
    let mut out = generated.clone();
    for (i, p) in out.pixels_mut().enumerate() {
        let s = source.as_raw()[i * 3..i * 3 + 3].to_owned();
        if !bin[i] {
            p.0.copy_from_slice(&s);
            continue;
        }
        // A repaint pixel next to a keep pixel has distance 1: alpha grows from 1/feather.
        let a = (dist[i] / feather).min(1.0);
        for (g, &k) in p.0.iter_mut().zip(&s) {
            let v = a * *g as f32 + (1.0 - a) * k as f32;
            *g = v.round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_mask_at_factor_16_averages_the_four_centre_pixels() {
        let (w, h) = (32usize, 16usize);
        let mut bin = vec![false; w * h];
        // Only pixel (x=7, y=8) of the first token is set: weight 1/4.
        bin[8 * w + 7] = true;
        // Pixel (x=3, y=3) is never sampled.
        bin[3 * w + 3] = true;
        // Second token fully set.
        for y in 0..16 {
            for x in 16..32 {
                bin[y * w + x] = true;
            }
        }
        let t = token_mask(&bin, w, h, 2, 1);
        assert_eq!(t, vec![0.25, 1.0]);
    }

    #[test]
    fn binarize_splits_at_half() {
        let m = GrayImage::from_raw(3, 1, vec![127, 128, 255]).unwrap();
        assert_eq!(binarize(&m), vec![false, true, true]);
    }

    #[test]
    fn paste_back_keeps_outside_exact_and_fades_inside() {
        let (w, h) = (64u32, 64u32);
        let src = RgbImage::from_pixel(w, h, image::Rgb([10, 20, 30]));
        let gen = RgbImage::from_pixel(w, h, image::Rgb([200, 200, 200]));
        let mut bin = vec![false; (w * h) as usize];
        for y in 16..48 {
            for x in 16..48 {
                bin[(y * w + x) as usize] = true;
            }
        }
        let out = paste_back(&gen, &src, &bin);
        for (i, p) in out.pixels().enumerate() {
            if !bin[i] {
                assert_eq!(p.0, [10, 20, 30]);
            }
        }
        // The centre is fully generated, the edge pixel is mostly source.
        assert_eq!(out.get_pixel(32, 32).0, [200, 200, 200]);
        let edge = out.get_pixel(16, 32).0[0];
        assert!(edge > 10 && edge < 200, "edge {edge}");
    }
}
