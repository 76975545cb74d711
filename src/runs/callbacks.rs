//! Callback hook of the terminal transition (issue 6 fills it in).
//!
//! [`on_terminal`] runs inside the same SQLite transaction that makes a run terminal, so the
//! callback outbox row it will write (payload bytes frozen, `attempt_count = 0`) commits
//! atomically with the status change: at-least-once delivery across crashes. Today it records
//! nothing; runs with a `callback_url` are stored and echoed, not called back.

use rusqlite::Transaction;

use super::store::StoreError;
use super::Run;

/// Called once per run, in the transaction that moves it to a terminal status.
pub(crate) fn on_terminal(_tx: &Transaction<'_>, run: &Run) -> Result<(), StoreError> {
    if run.callback_url.is_some() {
        tracing::debug!(run_id = %run.id, "callback delivery is not implemented yet (issue 6)");
    }
    Ok(())
}
