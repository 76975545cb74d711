//! SQLite side of callbacks (split from `sqlite.rs`): the outbox tables, the row written in
//! the terminal transaction, and [`CallbackStore`] for [`SqliteStore`].

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, Row, Transaction};
use uuid::Uuid;

use super::super::callbacks::{
    Attempt, AttemptOutcome, CallbackSecret, CallbackStore, Delivery, DeliveryStatus,
};
use super::super::store::StoreError;
use super::rows::{db, from_micros, micros};
use super::SqliteStore;

pub(super) const CALLBACK_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS callback_deliveries (
    id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    callback_url TEXT NOT NULL,
    payload BLOB NOT NULL,
    signing_secret_id TEXT,
    is_automatic INTEGER NOT NULL,
    status TEXT NOT NULL,
    failure_reason_code TEXT,
    failure_detail TEXT,
    attempt_count INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    next_attempt_at INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    completed_at INTEGER
);
CREATE INDEX IF NOT EXISTS callback_deliveries_due ON callback_deliveries(status, next_attempt_at);
CREATE INDEX IF NOT EXISTS callback_deliveries_run ON callback_deliveries(run_id, id);
CREATE TABLE IF NOT EXISTS callback_attempts (
    id TEXT PRIMARY KEY,
    delivery_id TEXT NOT NULL,
    attempt_number INTEGER NOT NULL,
    status_code INTEGER,
    response_body TEXT,
    response_time_ms INTEGER NOT NULL,
    error_message TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS callback_attempts_delivery ON callback_attempts(delivery_id, attempt_number);
CREATE TABLE IF NOT EXISTS callback_secrets (
    id TEXT PRIMARY KEY,
    secret TEXT NOT NULL,
    key_prefix TEXT NOT NULL,
    label TEXT,
    disabled_at INTEGER,
    last_used_at INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
";

const DELIVERY_COLS: &str =
    "id, run_id, callback_url, payload, signing_secret_id, is_automatic, status, \
    failure_reason_code, failure_detail, attempt_count, max_attempts, next_attempt_at, created_at, \
    updated_at, completed_at";

fn uuid_col(s: String) -> Result<Uuid, StoreError> {
    Uuid::parse_str(&s).map_err(|e| StoreError::Corrupt(format!("id {s:?}: {e}")))
}

fn delivery_from_row(r: &Row<'_>) -> Result<Delivery, StoreError> {
    let g = |e: rusqlite::Error| db(e);
    let status: String = r.get(6).map_err(g)?;
    Ok(Delivery {
        id: uuid_col(r.get(0).map_err(g)?)?,
        run_id: uuid_col(r.get(1).map_err(g)?)?,
        callback_url: r.get(2).map_err(g)?,
        payload: r.get(3).map_err(g)?,
        signing_secret_id: r
            .get::<_, Option<String>>(4)
            .map_err(g)?
            .map(uuid_col)
            .transpose()?,
        is_automatic: r.get::<_, i64>(5).map_err(g)? != 0,
        status: DeliveryStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("delivery status {status:?}")))?,
        failure_reason_code: r.get(7).map_err(g)?,
        failure_detail: r.get(8).map_err(g)?,
        attempt_count: r.get(9).map_err(g)?,
        max_attempts: r.get(10).map_err(g)?,
        next_attempt_at: r.get::<_, Option<i64>>(11).map_err(g)?.map(from_micros),
        created_at: from_micros(r.get(12).map_err(g)?),
        updated_at: from_micros(r.get(13).map_err(g)?),
        completed_at: r.get::<_, Option<i64>>(14).map_err(g)?.map(from_micros),
        attempts: Vec::new(),
    })
}

fn get_delivery(c: &Connection, id: &str) -> Result<Option<Delivery>, StoreError> {
    let mut st = c
        .prepare_cached(&format!(
            "SELECT {DELIVERY_COLS} FROM callback_deliveries WHERE id = ?1"
        ))
        .map_err(db)?;
    let mut rows = st.query(params![id]).map_err(db)?;
    match rows.next().map_err(db)? {
        Some(r) => Ok(Some(delivery_from_row(r)?)),
        None => Ok(None),
    }
}

/// Inserts a pending delivery (due `now`) inside `tx`.
pub(crate) fn insert_delivery_tx(
    tx: &Transaction<'_>,
    run_id: Uuid,
    callback_url: &str,
    payload: &[u8],
    is_automatic: bool,
    max_attempts: u32,
    now: DateTime<Utc>,
) -> Result<Delivery, StoreError> {
    insert_delivery_conn(
        tx,
        run_id,
        callback_url,
        payload,
        is_automatic,
        max_attempts,
        now,
    )
}

fn insert_delivery_conn(
    c: &Connection,
    run_id: Uuid,
    callback_url: &str,
    payload: &[u8],
    is_automatic: bool,
    max_attempts: u32,
    now: DateTime<Utc>,
) -> Result<Delivery, StoreError> {
    let id = Uuid::now_v7().to_string();
    c.execute(
        "INSERT INTO callback_deliveries (id, run_id, callback_url, payload, is_automatic, status, \
         attempt_count, max_attempts, next_attempt_at, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, 'pending', 0, ?6, ?7, ?7, ?7)",
        params![
            id,
            run_id.to_string(),
            callback_url,
            payload,
            is_automatic as i64,
            max_attempts,
            micros(now)
        ],
    )
    .map_err(db)?;
    get_delivery(c, &id)?.ok_or_else(|| StoreError::Corrupt("inserted delivery vanished".into()))
}

fn attempt_from_row(r: &Row<'_>) -> Result<Attempt, StoreError> {
    let g = |e: rusqlite::Error| db(e);
    Ok(Attempt {
        id: uuid_col(r.get(0).map_err(g)?)?,
        delivery_id: uuid_col(r.get(1).map_err(g)?)?,
        attempt_number: r.get(2).map_err(g)?,
        status_code: r.get(3).map_err(g)?,
        response_body: r.get(4).map_err(g)?,
        response_time_ms: r.get(5).map_err(g)?,
        error_message: r.get(6).map_err(g)?,
        created_at: from_micros(r.get(7).map_err(g)?),
    })
}

fn secret_from_row(r: &Row<'_>) -> Result<CallbackSecret, StoreError> {
    let g = |e: rusqlite::Error| db(e);
    Ok(CallbackSecret {
        id: uuid_col(r.get(0).map_err(g)?)?,
        secret: r.get(1).map_err(g)?,
        key_prefix: r.get(2).map_err(g)?,
        label: r.get(3).map_err(g)?,
        disabled_at: r.get::<_, Option<i64>>(4).map_err(g)?.map(from_micros),
        last_used_at: r.get::<_, Option<i64>>(5).map_err(g)?.map(from_micros),
        created_at: from_micros(r.get(6).map_err(g)?),
        updated_at: from_micros(r.get(7).map_err(g)?),
    })
}

impl CallbackStore for SqliteStore {
    fn insert_delivery(
        &self,
        run_id: Uuid,
        callback_url: &str,
        payload: &[u8],
        is_automatic: bool,
        max_attempts: u32,
        now: DateTime<Utc>,
    ) -> Result<Delivery, StoreError> {
        insert_delivery_conn(
            &self.conn(),
            run_id,
            callback_url,
            payload,
            is_automatic,
            max_attempts,
            now,
        )
    }

    fn due_deliveries(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<Delivery>, StoreError> {
        let c = self.conn();
        let mut st = c
            .prepare_cached(&format!(
                "SELECT {DELIVERY_COLS} FROM callback_deliveries WHERE status = 'pending' \
                 AND next_attempt_at <= ?1 ORDER BY next_attempt_at, id LIMIT ?2"
            ))
            .map_err(db)?;
        let mut rows = st.query(params![micros(now), limit]).map_err(db)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(db)? {
            out.push(delivery_from_row(r)?);
        }
        Ok(out)
    }

    fn record_attempt(
        &self,
        a: &Attempt,
        outcome: &AttemptOutcome,
        secret_id: Option<Uuid>,
    ) -> Result<(), StoreError> {
        let mut c = self.conn();
        let tx = c
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let now = micros(a.created_at);
        let did = a.delivery_id.to_string();
        tx.execute(
            "INSERT INTO callback_attempts (id, delivery_id, attempt_number, status_code, response_body, \
             response_time_ms, error_message, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                a.id.to_string(),
                did,
                a.attempt_number,
                a.status_code,
                a.response_body,
                a.response_time_ms,
                a.error_message,
                now
            ],
        )
        .map_err(db)?;
        let (status, next, reason, detail, done) = match outcome {
            AttemptOutcome::Delivered => ("succeeded", None, None, None, Some(now)),
            AttemptOutcome::RetryAt(t) => ("pending", Some(micros(*t)), None, None, None),
            AttemptOutcome::Failed { code, detail } => (
                "failed",
                None,
                Some(*code),
                Some(detail.as_str()),
                Some(now),
            ),
        };
        tx.execute(
            "UPDATE callback_deliveries SET status = ?2, next_attempt_at = ?3, failure_reason_code = ?4, \
             failure_detail = ?5, completed_at = ?6, attempt_count = ?7, updated_at = ?8, \
             signing_secret_id = ?9 WHERE id = ?1",
            params![
                did,
                status,
                next,
                reason,
                detail,
                done,
                a.attempt_number,
                now,
                secret_id.map(|s| s.to_string())
            ],
        )
        .map_err(db)?;
        if let Some(s) = secret_id {
            tx.execute(
                "UPDATE callback_secrets SET last_used_at = ?2 WHERE id = ?1",
                params![s.to_string(), now],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)
    }

    fn deliveries_for_run(&self, run_id: Uuid) -> Result<Vec<Delivery>, StoreError> {
        let c = self.conn();
        let mut out = Vec::new();
        {
            let mut st = c
                .prepare_cached(&format!(
                    "SELECT {DELIVERY_COLS} FROM callback_deliveries WHERE run_id = ?1 ORDER BY id"
                ))
                .map_err(db)?;
            let mut rows = st.query(params![run_id.to_string()]).map_err(db)?;
            while let Some(r) = rows.next().map_err(db)? {
                out.push(delivery_from_row(r)?);
            }
        }
        let mut st = c
            .prepare_cached(
                "SELECT id, delivery_id, attempt_number, status_code, response_body, response_time_ms, \
                 error_message, created_at FROM callback_attempts WHERE delivery_id = ?1 ORDER BY attempt_number",
            )
            .map_err(db)?;
        for d in &mut out {
            let mut rows = st.query(params![d.id.to_string()]).map_err(db)?;
            while let Some(r) = rows.next().map_err(db)? {
                d.attempts.push(attempt_from_row(r)?);
            }
        }
        Ok(out)
    }

    fn insert_secret(&self, s: &CallbackSecret) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "INSERT INTO callback_secrets (id, secret, key_prefix, label, disabled_at, last_used_at, \
                 created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    s.id.to_string(),
                    s.secret,
                    s.key_prefix,
                    s.label,
                    s.disabled_at.map(micros),
                    s.last_used_at.map(micros),
                    micros(s.created_at),
                    micros(s.updated_at)
                ],
            )
            .map_err(db)?;
        Ok(())
    }

    fn list_secrets(&self) -> Result<Vec<CallbackSecret>, StoreError> {
        let c = self.conn();
        let mut st = c
            .prepare_cached(
                "SELECT id, secret, key_prefix, label, disabled_at, last_used_at, created_at, updated_at \
                 FROM callback_secrets ORDER BY created_at DESC, id DESC",
            )
            .map_err(db)?;
        let mut rows = st.query([]).map_err(db)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(db)? {
            out.push(secret_from_row(r)?);
        }
        Ok(out)
    }

    fn delete_secret(&self, id: Uuid) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute(
                "DELETE FROM callback_secrets WHERE id = ?1",
                params![id.to_string()],
            )
            .map_err(db)?;
        Ok(n == 1)
    }
}
