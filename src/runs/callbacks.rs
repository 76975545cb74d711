//! Callbacks (`callback_url`): the outbox row written when a run becomes terminal, the event
//! envelope (serialised once; the stored bytes are what every attempt sends), the delivery and
//! secret records, the [`CallbackStore`] seam and the retry schedule.
//!
//! [`on_terminal`] runs inside the same SQLite transaction that makes a run terminal, so the
//! delivery row (payload bytes frozen, `attempt_count = 0`, due now) commits atomically with the
//! status change: at-least-once delivery across crashes. The worker that sends them is in
//! `callback_worker`; signing in `callback_sign`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::Transaction;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::store::StoreError;
use super::{Run, RunStatus};

/// Renders a succeeded run's `output` as `GET /v1/runs/{id}` does (absolute signed URLs); the
/// API layer injects it so this layer needs neither the URL signer nor axum.
pub type OutputRenderer = Arc<dyn Fn(&Run) -> Value + Send + Sync>;

/// What the outbox needs when a run becomes terminal.
#[derive(Clone)]
pub struct OutboxSettings {
    pub render: OutputRenderer,
    pub max_attempts: u32,
}

impl std::fmt::Debug for OutboxSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxSettings")
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl Default for OutboxSettings {
    /// Without the API layer (store unit tests): the stored output as-is, 6 attempts.
    fn default() -> Self {
        OutboxSettings {
            render: Arc::new(|run: &Run| {
                run.output
                    .as_ref()
                    .and_then(|o| serde_json::to_value(o).ok())
                    .unwrap_or(Value::Null)
            }),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

/// Attempts per delivery unless configured otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 6;

/// Python-`isoformat()`-style UTC timestamp with `+00:00` (never `Z`).
pub fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, false)
}

/// The callback event envelope (runflow-api.md §6), in this field order.
#[derive(Debug, Serialize)]
struct Envelope<'a> {
    event: &'static str,
    run_id: String,
    status: &'static str,
    output: Value,
    duration_ms: Option<i64>,
    created_at: String,
    completed_at: Option<String>,
    metadata: &'a Option<Value>,
}

/// `run.completed` / `run.failed` / `run.cancelled` for a terminal status.
pub fn event_for(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Failed => "run.failed",
        RunStatus::Canceled => "run.cancelled",
        _ => "run.completed",
    }
}

/// The envelope of `run` as bytes: built once per delivery and stored; retries resend them.
pub fn payload_bytes(run: &Run, render: &OutputRenderer) -> Vec<u8> {
    let output = match run.status {
        RunStatus::Succeeded => render(run),
        RunStatus::Failed => run
            .failure
            .as_ref()
            .map(|f| serde_json::json!({"code": f.code, "message": f.message}))
            .unwrap_or(Value::Null),
        _ => Value::Null,
    };
    let env = Envelope {
        event: event_for(run.status),
        run_id: run.id.to_string(),
        status: run.status.as_str(),
        output,
        duration_ms: run
            .completed_at
            .map(|c| (c - run.started_at.unwrap_or(run.created_at)).num_milliseconds()),
        created_at: iso(run.created_at),
        completed_at: run.completed_at.map(iso),
        metadata: &run.metadata,
    };
    serde_json::to_vec(&env).expect("serialising the envelope cannot fail")
}

/// State of a delivery (`status_code` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    Pending,
    Succeeded,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Succeeded, Self::Failed]
            .into_iter()
            .find(|d| d.as_str() == s)
    }
}

/// One POST of a delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub id: Uuid,
    pub delivery_id: Uuid,
    pub attempt_number: u32,
    /// HTTP status, `None` when no response arrived (timeout, connection error, refused URL).
    pub status_code: Option<u16>,
    /// First [`MAX_RESPONSE_BODY`] bytes of the response (lossy UTF-8).
    pub response_body: Option<String>,
    pub response_time_ms: i64,
    pub error_message: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Bytes of a receiver's response kept per attempt.
pub const MAX_RESPONSE_BODY: usize = 1024;

/// A callback delivery (one per terminal transition, plus manual redeliveries).
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: Uuid,
    pub run_id: Uuid,
    pub callback_url: String,
    pub payload: Vec<u8>,
    /// The secret that signed the latest attempt (`Runflow-Signature`).
    pub signing_secret_id: Option<Uuid>,
    pub is_automatic: bool,
    pub status: DeliveryStatus,
    pub failure_reason_code: Option<String>,
    pub failure_detail: Option<String>,
    pub attempt_count: u32,
    pub max_attempts: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    /// Filled by [`CallbackStore::deliveries_for_run`] only.
    pub attempts: Vec<Attempt>,
}

/// A signing secret. Kept in plaintext in the database: it is an HMAC *signing* key, which the
/// server must have to sign, so a hash would be useless; it is returned only once by the API.
#[derive(Debug, Clone, PartialEq)]
pub struct CallbackSecret {
    pub id: Uuid,
    pub secret: String,
    pub key_prefix: String,
    pub label: Option<String>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What an attempt decided.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptOutcome {
    Delivered,
    RetryAt(DateTime<Utc>),
    /// Final failure: `GONE`, `ATTEMPTS_EXHAUSTED`, `URL_NOT_ALLOWED`.
    Failed {
        code: &'static str,
        detail: String,
    },
}

/// Durable deliveries, attempts and signing secrets.
pub trait CallbackStore: Send + Sync {
    /// A new pending delivery, due now.
    fn insert_delivery(
        &self,
        run_id: Uuid,
        callback_url: &str,
        payload: &[u8],
        is_automatic: bool,
        max_attempts: u32,
        now: DateTime<Utc>,
    ) -> Result<Delivery, StoreError>;
    /// Pending deliveries with `next_attempt_at <= now`, oldest due first (no attempts loaded).
    fn due_deliveries(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<Delivery>, StoreError>;
    /// Records an attempt and applies its outcome (one transaction); marks the secret used.
    fn record_attempt(
        &self,
        attempt: &Attempt,
        outcome: &AttemptOutcome,
        secret_id: Option<Uuid>,
    ) -> Result<(), StoreError>;
    /// Every delivery of a run with its attempts, oldest first.
    fn deliveries_for_run(&self, run_id: Uuid) -> Result<Vec<Delivery>, StoreError>;
    fn insert_secret(&self, secret: &CallbackSecret) -> Result<(), StoreError>;
    /// Every secret, newest first.
    fn list_secrets(&self) -> Result<Vec<CallbackSecret>, StoreError>;
    /// False if there was no such secret.
    fn delete_secret(&self, id: Uuid) -> Result<bool, StoreError>;
}

/// Backoff between attempts: `min(cap, base · 2^(n-1))` after attempt `n`, with equal jitter
/// (a uniform draw in its upper half), or the receiver's `Retry-After` when that is longer
/// (itself capped at an hour).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySchedule {
    pub base: Duration,
    pub cap: Duration,
}

impl RetrySchedule {
    /// Upper bound of the delay after attempt `n` (1-based), before jitter.
    pub fn ceiling(&self, n: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX));
        exp.min(self.cap)
    }

    /// The delay after attempt `n`, given a jitter draw `u` in [0, 1) and any `Retry-After`.
    pub fn delay(&self, n: u32, u: f64, retry_after: Option<Duration>) -> Duration {
        let c = self.ceiling(n);
        let jittered = c.mul_f64(0.5 + 0.5 * u.clamp(0.0, 1.0));
        match retry_after {
            Some(r) => jittered.max(r.min(Duration::from_secs(3600))),
            None => jittered,
        }
    }
}

/// Called once per run, in the transaction that moves it to a terminal status: writes the
/// outbox row when the run has a `callback_url`.
pub(crate) fn on_terminal(
    tx: &Transaction<'_>,
    run: &Run,
    outbox: &OutboxSettings,
) -> Result<(), StoreError> {
    let Some(url) = &run.callback_url else {
        return Ok(());
    };
    let payload = payload_bytes(run, &outbox.render);
    super::sqlite::insert_delivery_tx(
        tx,
        run.id,
        url,
        &payload,
        true,
        outbox.max_attempts,
        run.completed_at.unwrap_or_else(super::now),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_doubles_caps_and_honours_retry_after() {
        let s = RetrySchedule {
            base: Duration::from_secs(2),
            cap: Duration::from_secs(60),
        };
        let c: Vec<u64> = (1..=7).map(|n| s.ceiling(n).as_secs()).collect();
        assert_eq!(c, [2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(s.delay(1, 0.0, None), Duration::from_secs(1));
        assert_eq!(s.delay(1, 0.999_999, None).as_secs(), 1);
        assert_eq!(
            s.delay(1, 0.5, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
        assert_eq!(
            s.delay(3, 1.0, Some(Duration::from_secs(1))),
            Duration::from_secs(8)
        );
        assert_eq!(s.ceiling(200), Duration::from_secs(60));
    }

    #[test]
    fn timestamps_use_plus_zero() {
        let t = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        assert_eq!(iso(t), "2023-11-14T22:13:20.000000+00:00");
    }
}
