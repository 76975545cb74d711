//! The `RunStore` trait: durable runs, their queue, uploaded assets and idempotency records.
//!
//! Synchronous on purpose: implementations are called from the blocking pool (see
//! `service::RunService::blocking`), so a SQLite impl needs no async driver and a PostgreSQL one
//! (for a fleet: `SELECT … FOR UPDATE SKIP LOCKED` in `claim_next`) can use the sync `postgres`
//! crate or bridge to an async pool. Every state transition is a single guarded update, so two
//! writers never move a run backwards (terminal states are final).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::job::EditJob;
use super::{Asset, Failure, Progress, Run, RunOutput, RunStatus};

/// Errors of a store implementation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(String),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// `Idempotency-Key` bookkeeping attached to a write.
#[derive(Debug, Clone, PartialEq)]
pub struct IdemKey {
    /// What the key applies to (method + route), so one key may be reused across routes.
    pub scope: String,
    pub key: String,
    /// SHA-256 (hex) of the request body.
    pub body_sha256: String,
}

/// A stored idempotent response (for POSTs other than run creation).
#[derive(Debug, Clone, PartialEq)]
pub struct IdemRecord {
    pub body_sha256: String,
    pub status: u16,
    pub response: String,
}

/// A run about to be inserted (status `queued`).
#[derive(Debug, Clone)]
pub struct NewRun {
    pub id: Uuid,
    pub model_id: String,
    pub job: EditJob,
    pub callback_url: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub client_ref: Option<String>,
    pub request_id: String,
    pub created_at: DateTime<Utc>,
    /// Assets made from `data:` URIs of this request (their files are already written);
    /// inserted, confirmed, in the run's transaction.
    pub assets: Vec<Asset>,
    pub idempotency: Option<IdemKey>,
}

/// Result of [`RunStore::insert_run`].
#[derive(Debug)]
pub enum InsertOutcome {
    Created(Run),
    /// Same idempotency key and body: the run created the first time.
    Replayed(Run),
    /// Same idempotency key, different body.
    KeyConflict,
    /// `queued` already holds `max_queue` runs.
    QueueFull(u64),
}

/// How a run ended.
#[derive(Debug, Clone)]
pub enum Terminal {
    Succeeded(RunOutput),
    Failed(Failure),
    Canceled,
}

/// Result of [`RunStore::request_cancel`].
#[derive(Debug)]
pub enum CancelOutcome {
    NotFound,
    /// Already terminal; unchanged.
    AlreadyTerminal(Run),
    /// Was queued; now `canceled`.
    Canceled(Run),
    /// Dispatching or running; flagged, the supervisor stops it between steps.
    Requested(Run),
}

/// Sort order of [`RunStore::list_runs`] (ids are UUIDv7, so id order is creation order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortDir {
    Asc,
    Desc,
}

/// Where a page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    First,
    /// Items after this id in sort order.
    After(Uuid),
    /// Items before this id in sort order.
    Before(Uuid),
}

/// A list query; filters are ANDed.
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub statuses: Vec<RunStatus>,
    pub client_ref: Option<String>,
    pub model_id: Option<String>,
    pub sort: SortDir,
    pub limit: u32,
    pub cursor: Cursor,
}

/// One page of runs plus whether more exist on either side.
#[derive(Debug, Clone)]
pub struct RunPage {
    pub items: Vec<Run>,
    pub has_next: bool,
    pub has_previous: bool,
}

/// What crash recovery did at startup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoverReport {
    pub requeued: u64,
    pub exhausted: u64,
}

/// Durable runs, queue, assets and idempotency keys.
pub trait RunStore: Send + Sync {
    /// Inserts a queued run (and its assets and idempotency key) in one transaction, after
    /// checking the key and the queue bound. Returns only after the commit.
    fn insert_run(&self, run: NewRun, max_queue: u64) -> Result<InsertOutcome, StoreError>;
    fn get_run(&self, id: Uuid) -> Result<Option<Run>, StoreError>;
    fn list_runs(&self, q: &ListQuery) -> Result<RunPage, StoreError>;

    /// Moves the oldest `queued` run to `dispatching` and counts an attempt.
    fn claim_next(&self, now: DateTime<Utc>) -> Result<Option<Run>, StoreError>;
    /// Stores the job with model defaults filled in (at dispatch).
    fn update_job(&self, id: Uuid, job: &EditJob) -> Result<(), StoreError>;
    /// `dispatching` → `running`; false if the run is no longer dispatching (e.g. canceled).
    fn mark_running(&self, id: Uuid, now: DateTime<Utc>) -> Result<bool, StoreError>;
    fn set_progress(&self, id: Uuid, progress: Progress) -> Result<(), StoreError>;
    /// Non-terminal → terminal (also writes the callback outbox row, see `callbacks`);
    /// `None` if the run was already terminal.
    fn finish(
        &self,
        id: Uuid,
        end: Terminal,
        now: DateTime<Utc>,
    ) -> Result<Option<Run>, StoreError>;
    fn request_cancel(&self, id: Uuid, now: DateTime<Utc>) -> Result<CancelOutcome, StoreError>;
    /// At startup: `dispatching`/`running` runs go back to `queued`, or fail with
    /// `ATTEMPTS_EXHAUSTED` once they used `max_attempts`.
    fn recover(&self, max_attempts: u32, now: DateTime<Utc>) -> Result<RecoverReport, StoreError>;
    /// Fails when the store cannot take writes (readiness).
    fn check_writable(&self) -> Result<(), StoreError>;

    fn insert_asset(&self, asset: &Asset) -> Result<(), StoreError>;
    fn get_asset(&self, id: Uuid) -> Result<Option<Asset>, StoreError>;
    /// Records that the bytes arrived (size); false if unknown or already confirmed.
    fn mark_asset_uploaded(&self, id: Uuid, size: u64) -> Result<bool, StoreError>;
    fn confirm_asset(&self, id: Uuid) -> Result<Option<Asset>, StoreError>;

    fn idem_get(&self, scope: &str, key: &str) -> Result<Option<IdemRecord>, StoreError>;
    /// Stores a response unless the key exists already (first write wins).
    fn idem_put(&self, scope: &str, key: &str, rec: &IdemRecord) -> Result<(), StoreError>;
}
