//! The supervisor: one worker per engine that claims queued runs, loads their inputs, hands
//! them to the device thread, records progress, writes outputs and makes runs terminal.
//!
//! Order of effects for a successful run: outputs are encoded and written atomically under
//! `outputs/{run_id}/` (temp → fsync → rename → fsync dir) *before* the row says `succeeded`.
//! On drain the worker finishes the run it holds and then stops claiming; queued runs stay
//! queued for the next start.

use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::inputs::InputLoader;
use super::service::RunService;
use super::store::Terminal;
use super::{now, Failure, OutputImage, Progress, Run, RunOutput};
use crate::engine::{CancelToken, EngineEvent, EngineHandle, EngineState, JobFailure};
use crate::image_io::{self, OutputFormat};
use crate::pipeline::{EditOutput, PipelineDefaults, PipelineError};

/// Runs the claim → dispatch → finish loop until the service drains.
pub async fn run_worker(svc: Arc<RunService>, engine: EngineHandle) {
    let loader = svc.inputs.clone();
    let mut state = engine.watch_state();
    loop {
        if svc.is_draining() {
            break;
        }
        let current = state.borrow_and_update().clone();
        let defaults = match current {
            EngineState::Ready(d) => d,
            // Loading, or failed to load: runs stay queued (readiness says why).
            _ => {
                tokio::select! {
                    _ = state.changed() => {}
                    _ = svc.wake.notified() => {}
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
                continue;
            }
        };
        let notified = svc.wake.notified();
        let claimed = svc.blocking(|s| s.claim_next(now())).await;
        match claimed {
            Ok(Some(run)) => process(&svc, &engine, &loader, &defaults, run).await,
            Ok(None) => {
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "claiming a run failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
    tracing::info!(device = engine.device(), "supervisor stopped");
}

fn failure_of(e: &JobFailure) -> Failure {
    match e {
        JobFailure::Panicked(m) => Failure::new(
            "INFERENCE_FAILED",
            "inference",
            format!("the pipeline panicked: {m}"),
        ),
        JobFailure::Pipeline(p) => match p {
            PipelineError::InvalidInput(m) => Failure::new("INVALID_INPUT", "inference", m.clone()),
            PipelineError::Load(m) => Failure::new("MODEL_UNAVAILABLE", "dispatch", m.clone()),
            other => Failure::new("INFERENCE_FAILED", "inference", other.to_string()),
        },
    }
}

async fn finish(svc: &RunService, run: &Run, end: Terminal) {
    let id = run.id;
    let code = match &end {
        Terminal::Succeeded(_) => "succeeded".to_string(),
        Terminal::Failed(f) => format!("failed {}", f.code),
        Terminal::Canceled => "canceled".to_string(),
    };
    match svc.blocking(move |s| s.finish(id, end, now())).await {
        Ok(_) => tracing::info!(run_id = %id, outcome = %code, "run finished"),
        Err(e) => tracing::error!(run_id = %id, error = %e, "recording the end of a run failed"),
    }
}

async fn process(
    svc: &Arc<RunService>,
    engine: &EngineHandle,
    loader: &InputLoader,
    d: &PipelineDefaults,
    mut run: Run,
) {
    let id = run.id;
    let token = CancelToken::new();
    svc.active
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, token.clone());
    let end = dispatch(svc, engine, loader, d, &mut run, &token).await;
    finish(svc, &run, end).await;
    svc.active
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
}

async fn dispatch(
    svc: &Arc<RunService>,
    engine: &EngineHandle,
    loader: &InputLoader,
    d: &PipelineDefaults,
    run: &mut Run,
    token: &CancelToken,
) -> Terminal {
    let id = run.id;
    tracing::info!(run_id = %id, attempt = run.attempts, "dispatching run");
    if run.job.resolve_defaults(d) {
        let job = run.job.clone();
        if let Err(e) = svc.blocking(move |s| s.update_job(id, &job)).await {
            tracing::warn!(run_id = %id, error = %e, "could not store resolved defaults");
        }
    }
    let queue_ms = (now() - run.created_at).num_milliseconds().max(0);
    let t_inputs = Instant::now();
    let (images, mask) = match loader.load(&run.job).await {
        Ok(x) => x,
        Err(e) => return Terminal::Failed(Failure::new(e.code(), "input", e.to_string())),
    };
    let inputs_ms = t_inputs.elapsed().as_millis() as u64;
    if token.is_cancelled() {
        return Terminal::Canceled;
    }
    match svc.blocking(move |s| s.mark_running(id, now())).await {
        Ok(true) => {}
        Ok(false) => return Terminal::Canceled, // cancel requested while dispatching
        Err(e) => return Terminal::Failed(Failure::new("STORE_ERROR", "dispatch", e.to_string())),
    }
    let inputs = run.job.to_inputs(images, mask, d);
    let t_infer = Instant::now();
    let mut events = match engine.submit(inputs, token.clone()) {
        Ok(rx) => rx,
        Err(e) => {
            return Terminal::Failed(Failure::new("ENGINE_STOPPED", "dispatch", e.to_string()))
        }
    };
    let out = loop {
        match events.recv().await {
            Some(EngineEvent::Started) => {}
            Some(EngineEvent::Step { step, total }) => {
                let p = Progress {
                    step: step as u32,
                    total: total as u32,
                };
                if let Err(e) = svc.blocking(move |s| s.set_progress(id, p)).await {
                    tracing::warn!(run_id = %id, error = %e, "progress not recorded");
                }
            }
            Some(EngineEvent::Done(out)) => break out,
            Some(EngineEvent::Failed(JobFailure::Pipeline(PipelineError::Cancelled))) => {
                return Terminal::Canceled
            }
            Some(EngineEvent::Failed(f)) => return Terminal::Failed(failure_of(&f)),
            None => {
                return Terminal::Failed(Failure::new(
                    "ENGINE_STOPPED",
                    "inference",
                    "the engine thread stopped mid-run",
                ))
            }
        }
    };
    if token.is_cancelled() {
        return Terminal::Canceled;
    }
    let inference_ms = t_infer.elapsed().as_millis() as u64;
    let t_enc = Instant::now();
    match write_outputs(svc, run, out).await {
        Ok(mut output) => {
            let t = &mut output.timing;
            t.insert("queue_ms".into(), json!(queue_ms));
            t.insert("inputs_ms".into(), json!(inputs_ms));
            t.insert("inference_ms".into(), json!(inference_ms));
            t.insert(
                "encode_ms".into(),
                json!(t_enc.elapsed().as_millis() as u64),
            );
            Terminal::Succeeded(output)
        }
        Err(f) => Terminal::Failed(f),
    }
}

/// Encodes every image; writes files (or builds data: URIs in sync mode).
async fn write_outputs(
    svc: &Arc<RunService>,
    run: &Run,
    out: EditOutput,
) -> Result<RunOutput, Failure> {
    let fmt: OutputFormat = run.job.output_format.into();
    let sync = run.job.sync_mode;
    let compression = run.job.output_compression;
    let dir = svc.data.output_dir(run.id);
    let seed = out.seeds.first().copied().unwrap_or(run.job.seed);
    let pipeline_timing = serde_json::to_value(&out.timings).unwrap_or(Value::Null);
    let images = tokio::task::spawn_blocking(move || -> Result<Vec<OutputImage>, Failure> {
        if !sync {
            std::fs::create_dir_all(&dir)
                .map_err(|e| Failure::new("STORAGE_ERROR", "output", e.to_string()))?;
        }
        let mut v = Vec::with_capacity(out.images.len());
        for (i, img) in out.images.iter().enumerate() {
            let bytes = image_io::encode_image(img, fmt, compression)
                .map_err(|e| Failure::new(e.code(), "output", e.to_string()))?;
            let seed = out.seeds.get(i).copied().unwrap_or(seed + i as u64);
            let (file, data_uri) = if sync {
                let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
                (
                    None,
                    Some(format!("data:{};base64,{b64}", fmt.content_type())),
                )
            } else {
                let name = format!("{i}.{}", fmt.extension());
                image_io::write_atomic(&dir.join(&name), &bytes).map_err(|e| {
                    Failure::new("STORAGE_ERROR", "output", format!("writing {name}: {e}"))
                })?;
                (Some(name), None)
            };
            v.push(OutputImage {
                file,
                data_uri,
                content_type: fmt.content_type().to_string(),
                width: img.width(),
                height: img.height(),
                seed,
            });
        }
        Ok(v)
    })
    .await
    .map_err(|e| Failure::new("ENCODE_FAILED", "output", e.to_string()))??;
    let mut timing = Map::new();
    if let Value::Object(m) = pipeline_timing {
        timing.extend(m);
    }
    Ok(RunOutput {
        images,
        seed,
        timing,
    })
}
