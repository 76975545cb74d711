//! SQLite `RunStore` (WAL, `synchronous=FULL`) under the data dir: the one-box default.
//!
//! Why rusqlite rather than sqlx: the store is a handful of short, single-statement
//! transactions that the service already runs on the blocking pool, so an async driver buys
//! nothing (sqlx's SQLite driver runs its own worker thread per connection anyway); rusqlite
//! with `bundled` compiles SQLite in (no system library, `RETURNING` available), needs no
//! compile-time database for query macros, and keeps `RunStore` a plain sync trait that a
//! PostgreSQL impl can follow. One connection behind a mutex serialises writers, which SQLite
//! does anyway; WAL lets the file be read by tools while the server runs.

use std::path::Path;
use std::sync::{Mutex, OnceLock};

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use uuid::Uuid;

use super::callbacks::{self, OutboxSettings};
use super::job::EditJob;
use super::store::*;
use rows::*;

#[path = "sqlite_callbacks.rs"]
mod callback_rows;
#[path = "sqlite_rows.rs"]
mod rows;
use super::{Asset, Failure, Progress, Run, RunStatus};
pub(crate) use callback_rows::insert_delivery_tx;

const NON_TERMINAL: &str = "('queued','dispatching','running')";

/// SQLite-backed [`RunStore`].
pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// How terminal runs become callback outbox rows (set once by the server at start).
    outbox: OnceLock<OutboxSettings>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

/// Makes a run terminal inside `tx` if it is not already; returns the updated run.
fn finish_tx(
    tx: &Transaction<'_>,
    id: &str,
    end: &Terminal,
    now: DateTime<Utc>,
    outbox: &OutboxSettings,
) -> Result<Option<Run>, StoreError> {
    let (status, output, failure) = match end {
        Terminal::Succeeded(o) => (RunStatus::Succeeded, Some(to_json(o)), None),
        Terminal::Failed(f) => (RunStatus::Failed, None, Some(f)),
        Terminal::Canceled => (RunStatus::Canceled, None, None),
    };
    let n = tx
        .execute(
            &format!(
                "UPDATE runs SET status = ?2, output = ?3, failure_code = ?4, failure_message = ?5, \
                 failure_stage = ?6, completed_at = ?7, updated_at = ?7 WHERE id = ?1 AND status IN {NON_TERMINAL}"
            ),
            params![
                id,
                status.as_str(),
                output,
                failure.map(|f| f.code.as_str()),
                failure.map(|f| f.message.as_str()),
                failure.map(|f| f.stage.as_str()),
                micros(now)
            ],
        )
        .map_err(db)?;
    if n == 0 {
        return Ok(None);
    }
    let run =
        get_run_tx(tx, id)?.ok_or_else(|| StoreError::Corrupt("finished run vanished".into()))?;
    callbacks::on_terminal(tx, &run, outbox)?;
    Ok(Some(run))
}

impl SqliteStore {
    /// Opens (creating if needed) `path` with WAL and full sync.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        conn.execute_batch(callback_rows::CALLBACK_SCHEMA)
            .map_err(db)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            outbox: OnceLock::new(),
        })
    }

    /// Sets how callback payloads are rendered (call before the first terminal transition);
    /// false if it was already set.
    pub fn set_outbox(&self, settings: OutboxSettings) -> bool {
        self.outbox.set(settings).is_ok()
    }

    fn outbox(&self) -> &OutboxSettings {
        self.outbox.get_or_init(OutboxSettings::default)
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back on drop).
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn filters_sql(q: &ListQuery, args: &mut Vec<String>) -> String {
    let mut w = Vec::new();
    if !q.statuses.is_empty() {
        let ph: Vec<String> = q
            .statuses
            .iter()
            .map(|s| {
                args.push(s.as_str().to_string());
                format!("?{}", args.len())
            })
            .collect();
        w.push(format!("status IN ({})", ph.join(",")));
    }
    if let Some(c) = &q.client_ref {
        args.push(c.clone());
        w.push(format!("client_ref = ?{}", args.len()));
    }
    if let Some(m) = &q.model_id {
        args.push(m.clone());
        w.push(format!("model_id = ?{}", args.len()));
    }
    w.join(" AND ")
}

impl SqliteStore {
    /// Runs matching the filters strictly beyond `id` (after it in `dir` order), up to `limit`.
    fn page(
        &self,
        c: &Connection,
        q: &ListQuery,
        beyond: Option<(Uuid, SortDir)>,
        limit: u32,
    ) -> Result<Vec<Run>, StoreError> {
        let mut args = Vec::new();
        let mut where_ = filters_sql(q, &mut args);
        let dir = beyond.map(|b| b.1).unwrap_or(q.sort);
        if let Some((id, d)) = beyond {
            args.push(id.to_string());
            let op = if d == SortDir::Asc { ">" } else { "<" };
            if !where_.is_empty() {
                where_.push_str(" AND ");
            }
            where_.push_str(&format!("id {op} ?{}", args.len()));
        }
        let where_ = if where_.is_empty() {
            String::new()
        } else {
            format!("WHERE {where_}")
        };
        let order = if dir == SortDir::Asc { "ASC" } else { "DESC" };
        let sql = format!("SELECT {RUN_COLS} FROM runs {where_} ORDER BY id {order} LIMIT {limit}");
        let mut st = c.prepare_cached(&sql).map_err(db)?;
        let mut rows = st
            .query(rusqlite::params_from_iter(args.iter()))
            .map_err(db)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(db)? {
            out.push(run_from_row(r)?);
        }
        Ok(out)
    }
}

fn flip(d: SortDir) -> SortDir {
    match d {
        SortDir::Asc => SortDir::Desc,
        SortDir::Desc => SortDir::Asc,
    }
}

impl RunStore for SqliteStore {
    fn insert_run(&self, run: NewRun, max_queue: u64) -> Result<InsertOutcome, StoreError> {
        let mut c = self.conn();
        let tx = c
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        if let Some(k) = &run.idempotency {
            let prev: Option<(String, Option<String>)> = tx
                .query_row(
                    "SELECT body_sha256, run_id FROM idempotency WHERE scope = ?1 AND key = ?2",
                    params![k.scope, k.key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(db)?;
            if let Some((hash, run_id)) = prev {
                if hash != k.body_sha256 {
                    return Ok(InsertOutcome::KeyConflict);
                }
                if let Some(prev_run) = run_id
                    .as_deref()
                    .map(|id| get_run_tx(&tx, id))
                    .transpose()?
                    .flatten()
                {
                    return Ok(InsertOutcome::Replayed(prev_run));
                }
            }
        }
        let queued: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM runs WHERE status = 'queued'",
                [],
                |r| r.get(0),
            )
            .map_err(db)?;
        if queued as u64 >= max_queue {
            return Ok(InsertOutcome::QueueFull(queued as u64));
        }
        for a in &run.assets {
            insert_asset_tx(&tx, a)?;
        }
        let id = run.id.to_string();
        let now = micros(run.created_at);
        tx.execute(
            "INSERT INTO runs (id, model_id, status, job, callback_url, metadata, client_ref, request_id, \
             created_at, updated_at) VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
            params![
                id,
                run.model_id,
                to_json(&run.job),
                run.callback_url,
                run.metadata.as_ref().map(to_json),
                run.client_ref,
                run.request_id,
                now
            ],
        )
        .map_err(db)?;
        if let Some(k) = &run.idempotency {
            tx.execute(
                "INSERT OR REPLACE INTO idempotency (scope, key, body_sha256, run_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![k.scope, k.key, k.body_sha256, id, now],
            )
            .map_err(db)?;
        }
        let created = get_run_tx(&tx, &id)?
            .ok_or_else(|| StoreError::Corrupt("inserted run vanished".into()))?;
        tx.commit().map_err(db)?;
        Ok(InsertOutcome::Created(created))
    }

    fn get_run(&self, id: Uuid) -> Result<Option<Run>, StoreError> {
        get_run_tx(&self.conn(), &id.to_string())
    }

    fn list_runs(&self, q: &ListQuery) -> Result<RunPage, StoreError> {
        let c = self.conn();
        let limit = q.limit.max(1);
        let (mut items, more_ahead, reversed) = match q.cursor {
            Cursor::First => {
                let mut v = self.page(&c, q, None, limit + 1)?;
                let more = v.len() > limit as usize;
                v.truncate(limit as usize);
                (v, more, false)
            }
            Cursor::After(id) => {
                let mut v = self.page(&c, q, Some((id, q.sort)), limit + 1)?;
                let more = v.len() > limit as usize;
                v.truncate(limit as usize);
                (v, more, false)
            }
            Cursor::Before(id) => {
                let mut v = self.page(&c, q, Some((id, flip(q.sort))), limit + 1)?;
                let more = v.len() > limit as usize;
                v.truncate(limit as usize);
                v.reverse();
                (v, more, true)
            }
        };
        // The side we did not page towards: does anything exist beyond the edge item?
        let probe =
            |edge: Option<&Run>, fallback: Option<Uuid>, d: SortDir| -> Result<bool, StoreError> {
                match edge.map(|r| r.id).or(fallback) {
                    Some(id) => Ok(!self.page(&c, q, Some((id, d)), 1)?.is_empty()),
                    None => Ok(false),
                }
            };
        let (has_next, has_previous) = if reversed {
            let fallback = match q.cursor {
                Cursor::Before(id) => Some(id),
                _ => None,
            };
            (probe(items.last(), fallback, q.sort)?, more_ahead)
        } else {
            let fallback = match q.cursor {
                Cursor::After(id) => Some(id),
                _ => None,
            };
            let prev = match q.cursor {
                Cursor::First => false,
                _ => probe(items.first(), fallback, flip(q.sort))?,
            };
            (more_ahead, prev)
        };
        items.shrink_to_fit();
        Ok(RunPage {
            items,
            has_next,
            has_previous,
        })
    }

    fn claim_next(&self, now: DateTime<Utc>) -> Result<Option<Run>, StoreError> {
        let c = self.conn();
        let id: Option<String> = c
            .query_row(
                "UPDATE runs SET status = 'dispatching', attempts = attempts + 1, updated_at = ?1 \
                 WHERE id = (SELECT id FROM runs WHERE status = 'queued' ORDER BY id LIMIT 1) RETURNING id",
                params![micros(now)],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        match id {
            Some(id) => get_run_tx(&c, &id),
            None => Ok(None),
        }
    }

    fn update_job(&self, id: Uuid, job: &EditJob) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE runs SET job = ?2 WHERE id = ?1",
                params![id.to_string(), to_json(job)],
            )
            .map_err(db)?;
        Ok(())
    }

    fn mark_running(&self, id: Uuid, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute(
                "UPDATE runs SET status = 'running', started_at = ?2, updated_at = ?2 \
                 WHERE id = ?1 AND status = 'dispatching' AND cancel_requested = 0",
                params![id.to_string(), micros(now)],
            )
            .map_err(db)?;
        Ok(n == 1)
    }

    fn set_progress(&self, id: Uuid, p: Progress) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "UPDATE runs SET progress_step = ?2, progress_total = ?3 WHERE id = ?1 AND status = 'running'",
                params![id.to_string(), p.step, p.total],
            )
            .map_err(db)?;
        Ok(())
    }

    fn finish(
        &self,
        id: Uuid,
        end: Terminal,
        now: DateTime<Utc>,
    ) -> Result<Option<Run>, StoreError> {
        let mut c = self.conn();
        let tx = c
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let run = finish_tx(&tx, &id.to_string(), &end, now, self.outbox())?;
        tx.commit().map_err(db)?;
        Ok(run)
    }

    fn request_cancel(&self, id: Uuid, now: DateTime<Utc>) -> Result<CancelOutcome, StoreError> {
        let mut c = self.conn();
        let tx = c
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let sid = id.to_string();
        let Some(run) = get_run_tx(&tx, &sid)? else {
            return Ok(CancelOutcome::NotFound);
        };
        let out = match run.status {
            s if s.is_terminal() => CancelOutcome::AlreadyTerminal(run),
            RunStatus::Queued => {
                let run =
                    finish_tx(&tx, &sid, &Terminal::Canceled, now, self.outbox())?.unwrap_or(run);
                CancelOutcome::Canceled(run)
            }
            _ => {
                tx.execute(
                    "UPDATE runs SET cancel_requested = 1, updated_at = ?2 WHERE id = ?1",
                    params![sid, micros(now)],
                )
                .map_err(db)?;
                CancelOutcome::Requested(get_run_tx(&tx, &sid)?.unwrap_or(run))
            }
        };
        tx.commit().map_err(db)?;
        Ok(out)
    }

    fn recover(&self, max_attempts: u32, now: DateTime<Utc>) -> Result<RecoverReport, StoreError> {
        let mut c = self.conn();
        let tx = c
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let stale: Vec<(String, u32, bool)> = {
            let mut st = tx
                .prepare("SELECT id, attempts, cancel_requested FROM runs WHERE status IN ('dispatching','running')")
                .map_err(db)?;
            let rows = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? != 0)))
                .map_err(db)?;
            rows.collect::<Result<_, _>>().map_err(db)?
        };
        let mut report = RecoverReport::default();
        for (id, attempts, cancel) in stale {
            if cancel {
                finish_tx(&tx, &id, &Terminal::Canceled, now, self.outbox())?;
            } else if attempts >= max_attempts {
                let f = Failure::new(
                    "ATTEMPTS_EXHAUSTED",
                    "dispatch",
                    format!("the server stopped while running this run {attempts} times (limit {max_attempts})"),
                );
                finish_tx(&tx, &id, &Terminal::Failed(f), now, self.outbox())?;
                report.exhausted += 1;
            } else {
                tx.execute(
                    "UPDATE runs SET status = 'queued', progress_step = NULL, progress_total = NULL, \
                     started_at = NULL, updated_at = ?2 WHERE id = ?1",
                    params![id, micros(now)],
                )
                .map_err(db)?;
                report.requeued += 1;
            }
        }
        tx.commit().map_err(db)?;
        Ok(report)
    }

    fn check_writable(&self) -> Result<(), StoreError> {
        let c = self.conn();
        c.execute_batch("BEGIN IMMEDIATE; COMMIT;").map_err(db)
    }

    fn insert_asset(&self, asset: &Asset) -> Result<(), StoreError> {
        insert_asset_tx(&self.conn(), asset)
    }

    fn get_asset(&self, id: Uuid) -> Result<Option<Asset>, StoreError> {
        let c = self.conn();
        let row = c
            .query_row(
                "SELECT id, filename, mime_type, declared_size, size_bytes, confirmed, created_at FROM assets WHERE id = ?1",
                params![id.to_string()],
                asset_from_row,
            )
            .optional()
            .map_err(db)?;
        Ok(row.map(|(_, a)| Asset { id, ..a }))
    }

    fn mark_asset_uploaded(&self, id: Uuid, size: u64) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute(
                "UPDATE assets SET size_bytes = ?2 WHERE id = ?1 AND confirmed = 0",
                params![id.to_string(), size as i64],
            )
            .map_err(db)?;
        Ok(n == 1)
    }

    fn confirm_asset(&self, id: Uuid) -> Result<Option<Asset>, StoreError> {
        self.conn()
            .execute(
                "UPDATE assets SET confirmed = 1 WHERE id = ?1 AND size_bytes IS NOT NULL",
                params![id.to_string()],
            )
            .map_err(db)?;
        let a = self.get_asset(id)?;
        Ok(a.filter(|a| a.confirmed))
    }

    fn idem_get(&self, scope: &str, key: &str) -> Result<Option<IdemRecord>, StoreError> {
        self.conn()
            .query_row(
                "SELECT body_sha256, status, response FROM idempotency WHERE scope = ?1 AND key = ?2 AND response IS NOT NULL",
                params![scope, key],
                |r| Ok(IdemRecord { body_sha256: r.get(0)?, status: r.get(1)?, response: r.get(2)? }),
            )
            .optional()
            .map_err(db)
    }

    fn idem_put(&self, scope: &str, key: &str, rec: &IdemRecord) -> Result<(), StoreError> {
        self.conn()
            .execute(
                "INSERT OR IGNORE INTO idempotency (scope, key, body_sha256, status, response, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![scope, key, rec.body_sha256, rec.status, rec.response, micros(super::now())],
            )
            .map_err(db)?;
        Ok(())
    }
}

#[cfg(test)]
#[path = "sqlite_tests.rs"]
mod tests;
