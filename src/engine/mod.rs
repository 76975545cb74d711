//! Device threads: one OS thread per device owns the loaded pipeline and runs one job at a time.
//!
//! The runs ⇄ engine seam: [`EngineHandle::submit`] sends a job with its [`CancelToken`] over a
//! channel and returns a stream of [`EngineEvent`]s (Started, Step, Done, Failed). The pipeline
//! is built by a loader closure *on* the device thread (CUDA contexts are per thread), and the
//! thread publishes its [`EngineState`] (loading → ready | failed) on a watch channel, which
//! readiness and the supervisor read. The engine never sees HTTP or the store.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::pipeline::{
    EditInputs, EditOutput, EditPipeline, PipelineDefaults, PipelineError, StepCtx,
};

/// Builds the pipeline; runs on the device thread.
pub type PipelineLoader = Box<dyn FnOnce() -> Result<Box<dyn EditPipeline>, PipelineError> + Send>;

/// Cooperative cancellation flag, checked by the pipeline between denoising steps.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Lifecycle of a device thread's model.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineState {
    Loading,
    Ready(PipelineDefaults),
    Failed(String),
}

/// What the device thread reports about one job.
#[derive(Debug)]
pub enum EngineEvent {
    Started,
    /// `step` (1-based) of `total` finished.
    Step {
        step: usize,
        total: usize,
    },
    Done(EditOutput),
    Failed(JobFailure),
}

/// Why a job ended without output.
#[derive(Debug, thiserror::Error)]
pub enum JobFailure {
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("the pipeline panicked: {0}")]
    Panicked(String),
}

struct Job {
    inputs: EditInputs,
    cancel: CancelToken,
    events: mpsc::UnboundedSender<EngineEvent>,
}

/// Errors of the engine layer.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the engine thread for {0} has stopped")]
    Stopped(String),
    #[error("could not start the engine thread: {0}")]
    Spawn(#[from] std::io::Error),
}

/// Cheap handle to one device thread.
#[derive(Clone)]
pub struct EngineHandle {
    device: String,
    jobs: mpsc::UnboundedSender<Job>,
    state: watch::Receiver<EngineState>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("device", &self.device)
            .finish()
    }
}

impl EngineHandle {
    /// Starts the device thread; the loader runs on it right away.
    pub fn spawn(device: impl Into<String>, loader: PipelineLoader) -> Result<Self, EngineError> {
        let device = device.into();
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel::<Job>();
        let (state_tx, state_rx) = watch::channel(EngineState::Loading);
        std::thread::Builder::new()
            .name(format!("editd-engine-{device}"))
            .spawn(move || device_thread(loader, jobs_rx, state_tx))?;
        Ok(EngineHandle {
            device,
            jobs: jobs_tx,
            state: state_rx,
        })
    }

    pub fn device(&self) -> &str {
        &self.device
    }

    pub fn state(&self) -> EngineState {
        self.state.borrow().clone()
    }

    /// A receiver that changes when the state does.
    pub fn watch_state(&self) -> watch::Receiver<EngineState> {
        self.state.clone()
    }

    /// Queues one job on the device thread; events arrive on the returned receiver, which ends
    /// after `Done` or `Failed`.
    pub fn submit(
        &self,
        inputs: EditInputs,
        cancel: CancelToken,
    ) -> Result<mpsc::UnboundedReceiver<EngineEvent>, EngineError> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.jobs
            .send(Job {
                inputs,
                cancel,
                events: tx,
            })
            .map_err(|_| EngineError::Stopped(self.device.clone()))?;
        Ok(rx)
    }
}

struct Ctx<'a> {
    cancel: &'a CancelToken,
    events: &'a mpsc::UnboundedSender<EngineEvent>,
}

impl StepCtx for Ctx<'_> {
    fn on_step(&mut self, step: usize, total: usize) {
        let _ = self.events.send(EngineEvent::Step { step, total });
    }
    fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

fn device_thread(
    loader: PipelineLoader,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    state: watch::Sender<EngineState>,
) {
    let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(loader));
    let mut pipeline = match loaded {
        Ok(Ok(p)) => {
            let defaults = p.defaults();
            tracing::info!(model = %defaults.model_id, steps = defaults.default_steps, "model loaded");
            state.send_replace(EngineState::Ready(defaults));
            p
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "model load failed; runs stay queued");
            state.send_replace(EngineState::Failed(e.to_string()));
            return drain_failed(jobs, e.to_string());
        }
        Err(_) => {
            tracing::error!("model loader panicked; runs stay queued");
            state.send_replace(EngineState::Failed("model loader panicked".into()));
            return drain_failed(jobs, "model loader panicked".into());
        }
    };
    while let Some(job) = jobs.blocking_recv() {
        if job.events.is_closed() {
            continue; // the supervisor gave up on it
        }
        let _ = job.events.send(EngineEvent::Started);
        let mut ctx = Ctx {
            cancel: &job.cancel,
            events: &job.events,
        };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pipeline.run(&job.inputs, &mut ctx)
        }));
        let event = match result {
            Ok(Ok(out)) => EngineEvent::Done(out),
            Ok(Err(e)) => EngineEvent::Failed(JobFailure::Pipeline(e)),
            Err(p) => EngineEvent::Failed(JobFailure::Panicked(panic_message(&p))),
        };
        let _ = job.events.send(event);
    }
}

fn drain_failed(mut jobs: mpsc::UnboundedReceiver<Job>, msg: String) {
    while let Some(job) = jobs.blocking_recv() {
        let _ = job
            .events
            .send(EngineEvent::Failed(PipelineError::Load(msg.clone()).into()));
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
