//! Run lifecycle: the [`Run`] record and its status state machine, validation into an
//! [`EditJob`](job::EditJob) (`validate`), the [`RunStore`](store::RunStore) trait and its SQLite impl, the
//! [`RunService`](service::RunService) facade the API calls, and the supervisor that feeds the
//! engine. This layer knows neither axum nor candle.

pub mod callback_sign;
pub mod callback_worker;
pub mod callbacks;
pub mod inputs;
pub mod job;
pub mod service;
pub mod sqlite;
pub mod store;
pub mod supervisor;
pub mod validate;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use job::EditJob;

/// `status_code` of a run. US spelling on the wire (`canceled`); `cancelled` is accepted in filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Queued,
    Dispatching,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl RunStatus {
    pub const ALL: [RunStatus; 6] = [
        RunStatus::Queued,
        RunStatus::Dispatching,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Dispatching => "dispatching",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Canceled => "canceled",
        }
    }

    /// Parses a status, accepting the UK spelling `cancelled` too.
    pub fn parse(s: &str) -> Option<RunStatus> {
        match s {
            "cancelled" => Some(RunStatus::Canceled),
            _ => RunStatus::ALL.into_iter().find(|st| st.as_str() == s),
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Canceled
        )
    }
}

/// Step progress of a running run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub step: u32,
    pub total: u32,
}

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// Stable upper-case code, e.g. `INVALID_IMAGE`, `ATTEMPTS_EXHAUSTED`.
    pub code: String,
    pub message: String,
    /// Where it failed: `input`, `inference`, `output`, `dispatch`.
    pub stage: String,
}

impl Failure {
    pub fn new(code: &str, stage: &str, message: impl Into<String>) -> Self {
        Failure {
            code: code.into(),
            message: message.into(),
            stage: stage.into(),
        }
    }
}

/// One output image as stored: a file under the run's output directory, or (sync mode) inline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputImage {
    /// File name under `outputs/{run_id}/`; `None` in sync mode.
    pub file: Option<String>,
    /// `data:` URI; only in sync mode.
    pub data_uri: Option<String>,
    pub content_type: String,
    pub width: u32,
    pub height: u32,
    pub seed: u64,
}

/// What a succeeded run produced (URLs are signed when the run is read, not stored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOutput {
    pub images: Vec<OutputImage>,
    pub seed: u64,
    /// Milliseconds per stage (`queue_ms`, `inputs_ms`, `inference_ms`, `encode_ms`, pipeline stages).
    pub timing: serde_json::Map<String, serde_json::Value>,
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub id: Uuid,
    pub model_id: String,
    pub status: RunStatus,
    /// The validated job, echoed as the run's `input`.
    pub job: EditJob,
    pub callback_url: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub client_ref: Option<String>,
    pub request_id: String,
    pub output: Option<RunOutput>,
    pub failure: Option<Failure>,
    pub progress: Option<Progress>,
    pub attempts: u32,
    pub cancel_requested: bool,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// An uploaded asset (input image) as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Asset {
    pub id: Uuid,
    pub filename: String,
    pub mime_type: String,
    /// Size the client announced.
    pub declared_size: u64,
    /// Size of the bytes received; `None` until the upload arrived.
    pub size_bytes: Option<u64>,
    pub confirmed: bool,
    pub created_at: DateTime<Utc>,
}

/// One validation problem, FastAPI style: `loc` is a path like `["body","input","prompt"]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldError {
    pub loc: Vec<serde_json::Value>,
    pub msg: String,
    #[serde(rename = "type")]
    pub kind: String,
}

impl FieldError {
    pub fn new(loc: &[serde_json::Value], kind: &str, msg: impl Into<String>) -> Self {
        FieldError {
            loc: loc.to_vec(),
            msg: msg.into(),
            kind: kind.into(),
        }
    }
}

/// Errors of the runs layer (mapped to HTTP in `api::error`, and nowhere else).
#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    #[error("run {0} not found")]
    RunNotFound(String),
    #[error("asset {0} not found")]
    AssetNotFound(String),
    #[error("callback secret {0} not found")]
    CallbackSecretNotFound(String),
    #[error("model {0:?} is not served here")]
    ModelNotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the queue is full ({0} runs waiting); retry later")]
    QueueFull(u64),
    #[error("the server is shutting down")]
    Draining,
    #[error("upload too large: {0} bytes (cap {1})")]
    TooLarge(u64, u64),
    #[error("store error: {0}")]
    Store(#[from] store::StoreError),
    #[error("file error: {0}")]
    Io(#[from] std::io::Error),
}

/// Current time, truncated to microseconds (what the store keeps).
pub fn now() -> DateTime<Utc> {
    let t = Utc::now();
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}
