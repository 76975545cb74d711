//! Image ⇄ tensor conversion and the size rules of the FLUX.2 klein pipelines.
//!
//! Follows diffusers 0.42.1 `pipelines/flux2/pipeline_flux2_klein.py` (reference images: area cap
//! at 1024² with a Lanczos resize, floor to multiples of 16, **centre crop**, min side 64, aspect
//! ≤ 8) and `pipeline_flux2_klein_inpaint.py` (the source image is **resized** to the floor-16
//! size), plus `image_processor.py` (`/255` then `2x − 1` in f32; output `round(clamp(x/2+0.5)·255)`).
//! The Lanczos filter is the `image` crate's Lanczos3, which is close to but not bit-identical
//! with PIL's; it only runs when an image is larger than the cap or must change size.

use candle_core::{Device, Result as CResult, Tensor};
use image::{imageops, imageops::FilterType, GrayImage, RgbImage};

use super::PipelineError;

/// The reference pipelines' area cap for conditioning images (1024²).
pub const REFERENCE_MAX_AREA: u64 = 1024 * 1024;
/// Smallest side a reference image may have.
pub const MIN_SIDE: u32 = 64;
/// Largest aspect ratio a reference image may have.
pub const MAX_ASPECT: f64 = 8.0;

/// Checks the reference pipeline's input rules (min side 64, aspect ≤ 8).
pub fn check_reference(img: &RgbImage, index: usize) -> Result<(), PipelineError> {
    let (w, h) = img.dimensions();
    if w.min(h) < MIN_SIDE {
        return Err(PipelineError::InvalidInput(format!(
            "image {index} is {w}x{h}; each side must be at least {MIN_SIDE} px"
        )));
    }
    let aspect = w.max(h) as f64 / w.min(h) as f64;
    if aspect > MAX_ASPECT {
        return Err(PipelineError::InvalidInput(format!(
            "image {index} is {w}x{h}; aspect ratio {aspect:.1} exceeds {MAX_ASPECT}"
        )));
    }
    Ok(())
}

/// Size after the pipeline's area cap: `s = √(cap / (w·h))`, `(int(w·s), int(h·s))`.
pub fn capped_size(w: u32, h: u32, max_area: u64) -> (u32, u32) {
    let area = w as u64 * h as u64;
    if area <= max_area {
        return (w, h);
    }
    let s = (max_area as f64 / area as f64).sqrt();
    (((w as f64) * s) as u32, ((h as f64) * s) as u32)
}

/// Floors both sides to multiples of 16.
pub fn floor16(w: u32, h: u32) -> (u32, u32) {
    (w / 16 * 16, h / 16 * 16)
}

/// Area cap (Lanczos), then floor-16 **centre crop**: the edit pipeline's reference preprocessing.
pub fn prepare_reference(img: &RgbImage, max_area: u64) -> RgbImage {
    let (w, h) = img.dimensions();
    let (cw, ch) = capped_size(w, h, max_area);
    let resized;
    let img = if (cw, ch) != (w, h) {
        resized = imageops::resize(img, cw, ch, FilterType::Lanczos3);
        &resized
    } else {
        img
    };
    let (w, h) = img.dimensions();
    let (fw, fh) = floor16(w, h);
    if (fw, fh) == (w, h) {
        return img.clone();
    }
    let left = (w - fw) / 2;
    let top = (h - fh) / 2;
    imageops::crop_imm(img, left, top, fw, fh).to_image()
}

/// Resize to exactly `w × h` (Lanczos) unless already that size: the inpaint source rule.
pub fn resize_exact(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    if img.dimensions() == (w, h) {
        img.clone()
    } else {
        imageops::resize(img, w, h, FilterType::Lanczos3)
    }
}

/// Resize a mask to exactly `w × h` (Lanczos) unless already that size.
pub fn resize_mask_exact(mask: &GrayImage, w: u32, h: u32) -> GrayImage {
    if mask.dimensions() == (w, h) {
        mask.clone()
    } else {
        imageops::resize(mask, w, h, FilterType::Lanczos3)
    }
}

/// `(1, 3, H, W)` f32 in `[-1, 1]`: `2·(v/255) − 1`, computed in f32 as the reference does.
pub fn image_to_tensor(img: &RgbImage, device: &Device) -> CResult<Tensor> {
    let (w, h) = img.dimensions();
    let (w, h) = (w as usize, h as usize);
    let mut data = vec![0f32; 3 * w * h];
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            let x = p.0[c] as f32 / 255.0_f32;
            data[c * w * h + i] = 2.0_f32 * x - 1.0_f32;
        }
    }
    Tensor::from_vec(data, (1, 3, h, w), &Device::Cpu)?.to_device(device)
}

/// `(1, 3, H, W)` in `[-1, 1]` → RGB8: `round(clamp(x/2 + 0.5, 0, 1)·255)` (the reference's
/// `postprocess` + PIL conversion).
pub fn tensor_to_image(t: &Tensor) -> CResult<RgbImage> {
    let (_, c, h, w) = t.dims4()?;
    if c != 3 {
        candle_core::bail!("decoded image has {c} channels, expected 3");
    }
    let v = t
        .to_dtype(candle_core::DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut img = RgbImage::new(w as u32, h as u32);
    for (i, p) in img.pixels_mut().enumerate() {
        for ch in 0..3 {
            let x = (v[ch * w * h + i] / 2.0_f32 + 0.5_f32).clamp(0.0, 1.0);
            p.0[ch] = (x * 255.0_f32).round_ties_even() as u8;
        }
    }
    Ok(img)
}

/// Float values of the image in `[0, 1]`, `(1, 3, H, W)` layout (what the reference's `"pt"` /
/// `"np"` output holds), for parity tests.
pub fn tensor_to_unit(t: &Tensor) -> CResult<Tensor> {
    ((t.to_dtype(candle_core::DType::F32)? / 2.0)? + 0.5)?.clamp(0f32, 1f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_centre_cropped_not_resized() {
        let mut img = RgbImage::new(72, 70);
        img.put_pixel(4, 3, image::Rgb([9, 9, 9]));
        let out = prepare_reference(&img, REFERENCE_MAX_AREA);
        assert_eq!(out.dimensions(), (64, 64));
        // left = (72-64)/2 = 4, top = (70-64)/2 = 3.
        assert_eq!(out.get_pixel(0, 0).0, [9, 9, 9]);
    }

    #[test]
    fn area_cap_uses_int_truncation() {
        assert_eq!(capped_size(2048, 1024, 1024 * 1024), (1448, 724));
        assert_eq!(capped_size(100, 100, 1024 * 1024), (100, 100));
    }

    #[test]
    fn small_or_thin_references_are_refused() {
        assert!(check_reference(&RgbImage::new(63, 200), 0).is_err());
        assert!(check_reference(&RgbImage::new(64, 600), 1).is_err());
        assert!(check_reference(&RgbImage::new(64, 512), 1).is_ok());
    }

    #[test]
    fn pixel_round_trip_is_exact() {
        let mut img = RgbImage::new(16, 16);
        for (i, p) in img.pixels_mut().enumerate() {
            *p = image::Rgb([i as u8, 255 - i as u8, (i * 7) as u8]);
        }
        let t = image_to_tensor(&img, &Device::Cpu).unwrap();
        assert_eq!(tensor_to_image(&t).unwrap(), img);
    }
}
