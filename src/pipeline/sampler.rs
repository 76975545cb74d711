//! The edit sampler: text-to-image, multi-reference edit and masked inpainting with one
//! flow-matching Euler loop, written over the model-family traits.
//!
//! Follows diffusers 0.42.1 `pipelines/flux2/pipeline_flux2_klein.py` (`Flux2KleinPipeline.__call__`)
//! and `pipeline_flux2_klein_inpaint.py` (`Flux2KleinInpaintPipeline.__call__`), as described in
//! `shared/reference/flux2-klein.md` §3: references encoded once (posterior mean, patchified,
//! BN-normalised) with time offsets 10, 20, …; the Euler update and mask blend in f32; true CFG
//! with an empty negative prompt only for non-distilled checkpoints. The latents stay in f32
//! between steps whatever the model dtype (the reference's scheduler also steps in f32).

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use editd_models::traits::{
    DenoiseInput, Denoiser, LatentCodec, PositionIds, PromptEmbeds, TextEncoder,
};
use image::RgbImage;

use super::latents::{pack, reference_time_offset, target_ids, unpack};
use super::mask::{binarize, paste_back, token_mask};
use super::noise::noise_tensor;
use super::preprocess::{
    capped_size, check_reference, floor16, image_to_tensor, prepare_reference, resize_exact,
    resize_mask_exact, tensor_to_image, REFERENCE_MAX_AREA,
};
use super::schedule::{inpaint_start_step, Schedule};
use super::{ms, EditInputs, EditOutput, PipelineError, StageTimings, StepCtx};

/// The three networks of a model family, borrowed for one run.
pub struct Models<'a> {
    pub text: &'a dyn TextEncoder,
    pub dit: &'a dyn Denoiser,
    pub vae: &'a dyn LatentCodec,
}

/// Where the models run and how the checkpoint wants to be sampled.
#[derive(Debug, Clone)]
pub struct SamplerSettings {
    pub device: Device,
    /// The models' dtype (inputs are cast to it; results come back as f32).
    pub dtype: DType,
    /// Guidance-distilled checkpoints ignore `guidance` (no CFG pass).
    pub is_distilled: bool,
}

/// Clean conditioning tokens (references, and the source for inpainting) with their ids.
/// The tokens are already in the model's dtype: they are the same at every step.
struct Conditioning {
    tokens: Option<Tensor>,
    ids: PositionIds,
}

/// Inpainting state shared by every image of a run.
struct Inpaint {
    /// Clean source latents, unpacked `(1, C, h, w)`, f32.
    source: Tensor,
    source_packed: Tensor,
    /// `(1, N, 1)` token mask, 1 = repaint.
    mask: Tensor,
    /// `1 − mask`.
    keep: Tensor,
    start: usize,
    source_image: RgbImage,
    pixel_mask: Vec<bool>,
}

/// Runs `job` with `models`. Progress after every step, cancel checked before every step.
pub fn sample(
    models: &Models<'_>,
    settings: &SamplerSettings,
    job: &EditInputs,
    ctx: &mut dyn StepCtx,
) -> Result<EditOutput, PipelineError> {
    let started = Instant::now();
    validate(job)?;
    let mut timings = StageTimings::default();
    let scale = models.vae.downscale() as u32;
    let channels = models.vae.latent_channels();

    let t = Instant::now();
    let prompt = models.text.encode(std::slice::from_ref(&job.prompt))?;
    let cfg = !settings.is_distilled && job.guidance > 1.0;
    let negative = if cfg {
        Some(models.text.encode(&[String::new()])?)
    } else {
        None
    };
    timings.text_encode_ms = ms(t.elapsed());

    let t = Instant::now();
    let (width, height, cond, inpaint) = match &job.mask {
        None => {
            let cond = encode_references(models, settings, &job.images, 0)?;
            let (w, h) = edit_size(job, &cond.1, scale);
            (w, h, cond.0, None)
        }
        Some(mask) => {
            let (w, h, cond, inp) = prepare_inpaint(models, settings, job, mask, scale)?;
            (w, h, cond, Some(inp))
        }
    };
    timings.reference_encode_ms = ms(t.elapsed());
    let (lh, lw) = ((height / scale) as usize, (width / scale) as usize);
    let schedule = Schedule::new(lh * lw, job.steps);
    let start = inpaint.as_ref().map_or(0, |i| i.start);
    let steps_run = job.steps - start;
    let total = steps_run * job.num_images;

    let t = Instant::now();
    let mut finals = Vec::with_capacity(job.num_images);
    let mut seeds = Vec::with_capacity(job.num_images);
    for i in 0..job.num_images {
        let seed = job.seed.wrapping_add(i as u64);
        let noise = match (&job.noise, i) {
            (Some(n), 0) => {
                let want = [1, channels, lh, lw];
                if n.dims() != want {
                    return Err(PipelineError::InvalidInput(format!(
                        "noise has shape {:?}, expected {want:?}",
                        n.dims()
                    )));
                }
                n.to_dtype(DType::F32)?.to_device(&settings.device)?
            }
            _ => noise_tensor(seed, &[1, channels, lh, lw], &settings.device)?,
        };
        let step = |done: usize| i * steps_run + done;
        let latents = denoise(
            models,
            settings,
            &schedule,
            &noise,
            (lh, lw),
            (&prompt, negative.as_ref(), job.guidance),
            &cond,
            inpaint.as_ref(),
            &mut |done, ctx: &mut dyn StepCtx| ctx.on_step(step(done), total),
            ctx,
        )?;
        finals.push(latents);
        seeds.push(seed);
    }
    timings.denoise_ms = ms(t.elapsed());

    let t = Instant::now();
    let mut images = Vec::with_capacity(finals.len());
    for latents in &finals {
        let decoded = models.vae.decode(&latents.to_dtype(settings.dtype)?)?;
        let mut img = tensor_to_image(&decoded)?;
        if let (Some(inp), true) = (&inpaint, job.paste_back) {
            img = paste_back(&img, &inp.source_image, &inp.pixel_mask);
        }
        images.push(img);
    }
    timings.decode_ms = ms(t.elapsed());
    timings.total_ms = ms(started.elapsed());
    Ok(EditOutput {
        images,
        seeds,
        width,
        height,
        steps: steps_run,
        timings,
        latents: finals.into_iter().next(),
    })
}

fn validate(job: &EditInputs) -> Result<(), PipelineError> {
    let bad = |m: &str| Err(PipelineError::InvalidInput(m.to_string()));
    if job.steps == 0 {
        return bad("num_inference_steps must be at least 1");
    }
    if job.num_images == 0 {
        return bad("num_images must be at least 1");
    }
    if !(job.strength > 0.0 && job.strength <= 1.0) {
        return bad("strength must be in (0, 1]");
    }
    if job.mask.is_some() && job.images.is_empty() {
        return bad("a mask needs an image to edit");
    }
    Ok(())
}

/// Output size of an edit / text-to-image run: the explicit size, else the first reference's
/// prepared size, else 1024², then the quality area cap; multiples of `scale`.
fn edit_size(job: &EditInputs, first: &Option<(u32, u32)>, scale: u32) -> (u32, u32) {
    let (w, h) = job.size.or(*first).unwrap_or((1024, 1024));
    let (w, h) = match (job.size, job.max_area) {
        (None, Some(cap)) => capped_size(w, h, cap),
        _ => (w, h),
    };
    let (w, h) = floor16(w, h);
    (w.max(scale), h.max(scale))
}

/// Encodes conditioning images `k = first_index..` (time offsets 10·(k+1)); returns the tokens
/// and the first image's prepared size.
fn encode_references(
    models: &Models<'_>,
    settings: &SamplerSettings,
    images: &[RgbImage],
    first_index: usize,
) -> Result<(Conditioning, Option<(u32, u32)>), PipelineError> {
    let mut tokens = Vec::new();
    let mut ids = PositionIds::default();
    let mut first = None;
    for (k, img) in images.iter().enumerate() {
        check_reference(img, k + first_index)?;
        let prepared = prepare_reference(img, REFERENCE_MAX_AREA);
        first.get_or_insert(prepared.dimensions());
        let latents = encode_image(models, settings, &prepared)?;
        let (_, _, h, w) = latents.dims4()?;
        tokens.push(pack(&latents)?);
        ids = ids.concat(&PositionIds::image_grid(
            reference_time_offset(k + first_index),
            h,
            w,
        ));
    }
    let tokens = if tokens.is_empty() {
        None
    } else {
        Some(Tensor::cat(&tokens, 1)?)
    };
    Ok((Conditioning { tokens, ids }, first))
}

fn encode_image(
    models: &Models<'_>,
    s: &SamplerSettings,
    img: &RgbImage,
) -> Result<Tensor, PipelineError> {
    let x = image_to_tensor(img, &s.device)?.to_dtype(s.dtype)?;
    Ok(models.vae.encode(&x)?.to_dtype(DType::F32)?)
}

fn prepare_inpaint(
    models: &Models<'_>,
    settings: &SamplerSettings,
    job: &EditInputs,
    mask: &image::GrayImage,
    scale: u32,
) -> Result<(u32, u32, Conditioning, Inpaint), PipelineError> {
    let src = &job.images[0];
    let (sw, sh) = src.dimensions();
    let (w, h) = match job.size {
        Some(size) => floor16(size.0, size.1),
        None => {
            let cap = job
                .max_area
                .map_or(REFERENCE_MAX_AREA, |c| c.min(REFERENCE_MAX_AREA));
            let (cw, ch) = capped_size(sw, sh, cap);
            floor16(cw, ch)
        }
    };
    if w < scale || h < scale {
        return Err(PipelineError::InvalidInput(format!(
            "image 0 is {sw}x{sh}; too small to edit (at least {scale} px per side)"
        )));
    }
    let source_image = resize_exact(src, w, h);
    let pixel_mask = binarize(&resize_mask_exact(mask, w, h));
    let (lh, lw) = ((h / scale) as usize, (w / scale) as usize);
    let tm = token_mask(&pixel_mask, w as usize, h as usize, lw, lh);
    let mask_t =
        Tensor::from_vec(tm, (1, lh * lw, 1), &Device::Cpu)?.to_device(&settings.device)?;
    let source = encode_image(models, settings, &source_image)?;
    let source_packed = pack(&source)?;
    let (extra, _) = encode_references(models, settings, &job.images[1..], 1)?;
    let mut tokens = vec![source_packed.clone()];
    tokens.extend(extra.tokens);
    let ids = PositionIds::image_grid(reference_time_offset(0), lh, lw).concat(&extra.ids);
    let start = inpaint_start_step(job.steps, job.strength);
    if start >= job.steps {
        return Err(PipelineError::InvalidInput(format!(
            "strength {} leaves no denoising step out of {}",
            job.strength, job.steps
        )));
    }
    let cond = Conditioning {
        tokens: Some(Tensor::cat(&tokens, 1)?.to_dtype(settings.dtype)?),
        ids,
    };
    let keep = (1.0 - &mask_t)?;
    let inp = Inpaint {
        source,
        source_packed,
        keep,
        mask: mask_t,
        start,
        source_image,
        pixel_mask,
    };
    Ok((w, h, cond, inp))
}

type Prompts<'a> = (&'a PromptEmbeds, Option<&'a PromptEmbeds>, f32);

/// The Euler loop for one image; returns the final latents, unpacked `(1, C, h, w)` f32.
#[allow(clippy::too_many_arguments)]
fn denoise(
    models: &Models<'_>,
    settings: &SamplerSettings,
    schedule: &Schedule,
    noise: &Tensor,
    (lh, lw): (usize, usize),
    (prompt, negative, guidance): Prompts<'_>,
    cond: &Conditioning,
    inpaint: Option<&Inpaint>,
    progress: &mut dyn FnMut(usize, &mut dyn StepCtx),
    ctx: &mut dyn StepCtx,
) -> Result<Tensor, PipelineError> {
    let n_tokens = lh * lw;
    let noise_packed = pack(noise)?;
    let start = inpaint.map_or(0, |i| i.start);
    let mut latents = match inpaint {
        None => noise_packed.clone(),
        Some(inp) => {
            let s0 = schedule.sigmas[start];
            let mixed = ((noise * s0 as f64)? + (&inp.source * (1.0_f32 - s0) as f64)?)?;
            pack(&mixed)?
        }
    };
    let ids = target_ids(lh, lw).concat(&cond.ids);
    let n = schedule.num_steps();
    for j in start..n {
        if ctx.cancelled() {
            return Err(PipelineError::Cancelled);
        }
        let x = latents.to_dtype(settings.dtype)?;
        let img = match &cond.tokens {
            Some(c) => Tensor::cat(&[&x, c], 1)?,
            None => x,
        };
        let velocity = |p: &PromptEmbeds| -> Result<Tensor, PipelineError> {
            let input = DenoiseInput {
                img: &img,
                img_ids: &ids,
                txt: &p.embeds,
                txt_ids: &p.ids,
                timestep: schedule.model_timestep(j),
                guidance: Some(guidance),
            };
            Ok(models
                .dit
                .velocity(&input)?
                .narrow(1, 0, n_tokens)?
                .to_dtype(DType::F32)?)
        };
        let mut v = velocity(prompt)?;
        if let Some(neg) = negative {
            let vn = velocity(neg)?;
            v = (&vn + ((v - &vn)? * guidance as f64)?)?;
        }
        let dt = schedule.sigmas[j + 1] - schedule.sigmas[j];
        latents = (latents + (v * dt as f64)?)?;
        if let Some(inp) = inpaint {
            let proper = if j + 1 == n {
                inp.source_packed.clone()
            } else {
                let s = schedule.sigmas[j + 1];
                ((&noise_packed * s as f64)? + (&inp.source_packed * (1.0_f32 - s) as f64)?)?
            };
            latents = (proper.broadcast_mul(&inp.keep)? + latents.broadcast_mul(&inp.mask)?)?;
        }
        progress(j - start + 1, ctx);
    }
    Ok(unpack(&latents, lh, lw)?)
}
