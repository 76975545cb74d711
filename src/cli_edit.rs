//! `editd edit`: one-shot editing from the command line through the same pipeline as the server.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;

use crate::config::{EditArgs, OnOff};
use crate::image_io::{self, DecodeLimits, OutputFormat};
use crate::pipeline::load::{load_pipeline, PipelineConfig};
use crate::pipeline::{EditInputs, EditOutput, PipelineError, StepCtx};

/// Errors of the `edit` command.
#[derive(Debug, thiserror::Error)]
pub enum EditCliError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Image {
        path: PathBuf,
        source: image_io::ImageIoError,
    },
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("{path}: {reason}")]
    Tensor { path: PathBuf, reason: String },
    #[error("{0}")]
    Usage(String),
}

/// A progress line on stderr (`step i/n`), redrawn in place.
struct Progress {
    started: Instant,
}

impl StepCtx for Progress {
    fn on_step(&mut self, step: usize, total: usize) {
        let width = 30;
        let filled = step * width / total.max(1);
        eprint!(
            "\r[{}{}] step {step}/{total}  {:.1}s",
            "#".repeat(filled),
            "-".repeat(width - filled),
            self.started.elapsed().as_secs_f32()
        );
        if step == total {
            eprintln!();
        }
    }
    fn cancelled(&self) -> bool {
        false
    }
}

fn read(path: &Path) -> Result<Vec<u8>, EditCliError> {
    std::fs::read(path).map_err(|source| EditCliError::Read {
        path: path.into(),
        source,
    })
}

/// Runs `editd edit` and prints a summary line with per-stage timings on stderr.
pub fn run(args: &EditArgs) -> Result<(), EditCliError> {
    let t = Instant::now();
    let out = execute(args)?;
    let tm = &out.timings;
    eprintln!(
        "wrote {} ({}x{}, seed {}, {} steps) | text {} ms, references {} ms, denoise {} ms, \
         decode {} ms, run {} ms, wall {} ms (incl. loading)",
        args.out.display(),
        out.width,
        out.height,
        out.seeds[0],
        out.steps,
        tm.text_encode_ms,
        tm.reference_encode_ms,
        tm.denoise_ms,
        tm.decode_ms,
        tm.total_ms,
        t.elapsed().as_millis()
    );
    Ok(())
}

/// Does the work of `editd edit`: load, run, write `--out` (and `--latents-out`).
pub fn execute(args: &EditArgs) -> Result<EditOutput, EditCliError> {
    let format = output_format(&args.out)?;
    let limits = DecodeLimits::default();
    let mut images = Vec::new();
    for path in &args.images {
        let img = image_io::decode_image(&read(path)?, &limits).map_err(|source| {
            EditCliError::Image {
                path: path.clone(),
                source,
            }
        })?;
        images.push(img);
    }
    let mask = match &args.mask {
        None => None,
        Some(path) => {
            let first = images.first().ok_or_else(|| {
                EditCliError::Usage("--mask needs at least one --image (the image edited)".into())
            })?;
            let m = image_io::decode_mask(&read(path)?, &limits, first.dimensions()).map_err(
                |source| EditCliError::Image {
                    path: path.clone(),
                    source,
                },
            )?;
            Some(m)
        }
    };
    let noise = match &args.noise {
        None => None,
        Some(path) => Some(load_tensor(path, "noise")?),
    };
    let size = match (args.width, args.height) {
        (Some(w), Some(h)) => Some((w, h)),
        (None, None) => None,
        _ => {
            return Err(EditCliError::Usage(
                "give both --width and --height, or neither".into(),
            ))
        }
    };

    let mut pipeline = load_pipeline(&PipelineConfig {
        model: args.model.clone(),
        device: args.device.clone(),
        dtype: args.dtype.clone(),
        offline: args.offline,
    })?;
    let defaults = pipeline.defaults();
    let seed = args.seed.unwrap_or_else(rand::random);
    let job = EditInputs {
        prompt: args.prompt.clone(),
        images,
        mask,
        size,
        max_area: None,
        steps: args.steps.unwrap_or(defaults.default_steps),
        guidance: args.guidance.unwrap_or(defaults.default_guidance),
        strength: args.strength,
        seed,
        num_images: 1,
        paste_back: args.paste_back == OnOff::On,
        noise,
    };
    let mut progress = Progress {
        started: Instant::now(),
    };
    let out = pipeline.run(&job, &mut progress)?;
    let img = &out.images[0];
    let bytes =
        image_io::encode_image(img, format, None).map_err(|source| EditCliError::Image {
            path: args.out.clone(),
            source,
        })?;
    image_io::write_atomic(&args.out, &bytes).map_err(|source| EditCliError::Read {
        path: args.out.clone(),
        source,
    })?;
    if let (Some(path), Some(latents)) = (&args.latents_out, &out.latents) {
        let latents = latents
            .to_device(&Device::Cpu)
            .map_err(PipelineError::from)?;
        candle_core::safetensors::save(&[("latents", latents)].into_iter().collect(), path)
            .map_err(|e| EditCliError::Tensor {
                path: path.clone(),
                reason: e.to_string(),
            })?;
    }
    Ok(out)
}

fn output_format(path: &Path) -> Result<OutputFormat, EditCliError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "png" => Ok(OutputFormat::Png),
        "jpg" | "jpeg" => Ok(OutputFormat::Jpeg),
        "webp" => Ok(OutputFormat::Webp),
        _ => Err(EditCliError::Usage(format!(
            "--out {}: extension must be png, jpg, jpeg or webp",
            path.display()
        ))),
    }
}

fn load_tensor(path: &Path, name: &str) -> Result<candle_core::Tensor, EditCliError> {
    let mut tensors =
        candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| EditCliError::Tensor {
            path: path.into(),
            reason: e.to_string(),
        })?;
    tensors.remove(name).ok_or_else(|| EditCliError::Tensor {
        path: path.into(),
        reason: format!("no tensor named `{name}`"),
    })
}
