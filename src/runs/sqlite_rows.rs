//! Schema and row mapping of the SQLite store (split from `sqlite.rs`): the DDL, column lists,
//! `Row` → `Run`/`Asset`, and the small helpers every statement uses.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, Row};
use uuid::Uuid;

use super::super::job::EditJob;
use super::super::store::StoreError;
use super::super::{Asset, Failure, Progress, Run, RunOutput, RunStatus};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    model_id TEXT NOT NULL,
    status TEXT NOT NULL,
    job TEXT NOT NULL,
    callback_url TEXT,
    metadata TEXT,
    client_ref TEXT,
    request_id TEXT NOT NULL,
    output TEXT,
    failure_code TEXT,
    failure_message TEXT,
    failure_stage TEXT,
    progress_step INTEGER,
    progress_total INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    completed_at INTEGER,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_status_id ON runs(status, id);
CREATE INDEX IF NOT EXISTS runs_client_ref_id ON runs(client_ref, id);
CREATE TABLE IF NOT EXISTS assets (
    id TEXT PRIMARY KEY,
    filename TEXT NOT NULL,
    mime_type TEXT NOT NULL,
    declared_size INTEGER NOT NULL,
    size_bytes INTEGER,
    confirmed INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    body_sha256 TEXT NOT NULL,
    run_id TEXT,
    status INTEGER,
    response TEXT,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
);
";

pub(super) fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Db(e.to_string())
}

pub(super) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(super) fn from_micros(m: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(m).unwrap_or_default()
}

pub(super) fn json_col<T: serde::de::DeserializeOwned>(
    s: Option<String>,
    what: &str,
) -> Result<Option<T>, StoreError> {
    s.map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(format!("{what}: {e}"))))
        .transpose()
}

pub(super) fn to_json<T: serde::Serialize>(t: &T) -> String {
    serde_json::to_string(t).expect("serialising a plain struct cannot fail")
}

pub(super) const RUN_COLS: &str =
    "id, model_id, status, job, callback_url, metadata, client_ref, request_id, output, \
     failure_code, failure_message, failure_stage, progress_step, progress_total, attempts, \
     cancel_requested, created_at, started_at, completed_at";

pub(super) fn run_from_row(r: &Row<'_>) -> Result<Run, StoreError> {
    let g = |e: rusqlite::Error| StoreError::Corrupt(e.to_string());
    let id: String = r.get(0).map_err(g)?;
    let status: String = r.get(2).map_err(g)?;
    let job: String = r.get(3).map_err(g)?;
    let failure_code: Option<String> = r.get(9).map_err(g)?;
    let step: Option<u32> = r.get(12).map_err(g)?;
    let total: Option<u32> = r.get(13).map_err(g)?;
    Ok(Run {
        id: Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        model_id: r.get(1).map_err(g)?,
        status: RunStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("status {status}")))?,
        job: serde_json::from_str::<EditJob>(&job)
            .map_err(|e| StoreError::Corrupt(format!("job: {e}")))?,
        callback_url: r.get(4).map_err(g)?,
        metadata: json_col(r.get(5).map_err(g)?, "metadata")?,
        client_ref: r.get(6).map_err(g)?,
        request_id: r.get(7).map_err(g)?,
        output: json_col::<RunOutput>(r.get(8).map_err(g)?, "output")?,
        failure: match failure_code {
            Some(code) => Some(Failure {
                code,
                message: r
                    .get::<_, Option<String>>(10)
                    .map_err(g)?
                    .unwrap_or_default(),
                stage: r
                    .get::<_, Option<String>>(11)
                    .map_err(g)?
                    .unwrap_or_default(),
            }),
            None => None,
        },
        progress: step
            .zip(total)
            .map(|(step, total)| Progress { step, total }),
        attempts: r.get(14).map_err(g)?,
        cancel_requested: r.get::<_, i64>(15).map_err(g)? != 0,
        created_at: from_micros(r.get(16).map_err(g)?),
        started_at: r.get::<_, Option<i64>>(17).map_err(g)?.map(from_micros),
        completed_at: r.get::<_, Option<i64>>(18).map_err(g)?.map(from_micros),
    })
}

pub(super) fn get_run_tx(c: &Connection, id: &str) -> Result<Option<Run>, StoreError> {
    let mut st = c
        .prepare_cached(&format!("SELECT {RUN_COLS} FROM runs WHERE id = ?1"))
        .map_err(db)?;
    let mut rows = st.query(params![id]).map_err(db)?;
    match rows.next().map_err(db)? {
        Some(r) => Ok(Some(run_from_row(r)?)),
        None => Ok(None),
    }
}

pub(super) fn asset_from_row(r: &Row<'_>) -> rusqlite::Result<(String, Asset)> {
    let id: String = r.get(0)?;
    Ok((
        id,
        Asset {
            id: Uuid::nil(),
            filename: r.get(1)?,
            mime_type: r.get(2)?,
            declared_size: r.get::<_, i64>(3)? as u64,
            size_bytes: r.get::<_, Option<i64>>(4)?.map(|s| s as u64),
            confirmed: r.get::<_, i64>(5)? != 0,
            created_at: from_micros(r.get(6)?),
        },
    ))
}

pub(super) fn insert_asset_tx(c: &Connection, a: &Asset) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO assets (id, filename, mime_type, declared_size, size_bytes, confirmed, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            a.id.to_string(),
            a.filename,
            a.mime_type,
            a.declared_size as i64,
            a.size_bytes.map(|s| s as i64),
            a.confirmed as i64,
            micros(a.created_at)
        ],
    )
    .map_err(db)?;
    Ok(())
}
