//! The callback sender: [`CallbackService`] owns the delivery worker (a tokio task polling the
//! outbox for due rows), the signing secrets, the history and manual redeliveries.
//!
//! Each attempt resolves the URL through the SSRF guard again (`image_io::Fetcher`), POSTs the
//! stored bytes with a pinned client (no proxy, redirects off: a 3xx is a failure), and records
//! the attempt. 2xx = delivered; 410 = stop (`GONE`); a URL the guard refuses = stop
//! (`URL_NOT_ALLOWED`); anything else retries on the [`RetrySchedule`] until `max_attempts`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use reqwest::header::{HeaderMap, CONTENT_TYPE, RETRY_AFTER};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::callback_sign::{generate_secret, runflow_signature, standard_header};
use super::callbacks::{
    payload_bytes, Attempt, AttemptOutcome, CallbackSecret, CallbackStore, Delivery,
    OutputRenderer, RetrySchedule, MAX_RESPONSE_BODY,
};
use super::store::StoreError;
use super::{now, FieldError, Run, RunsError};
use crate::image_io::{pinned_client_builder, FetchPolicy, Fetcher, ImageIoError};

/// Settings of the sender.
#[derive(Debug, Clone)]
pub struct CallbackSettings {
    pub schedule: RetrySchedule,
    pub max_attempts: u32,
    /// SSRF policy of callback URLs (its `total_timeout` bounds one attempt).
    pub policy: FetchPolicy,
    /// How often the worker looks for due rows.
    pub poll: Duration,
}

/// Callbacks facade: what the API and the worker call.
pub struct CallbackService {
    store: Arc<dyn CallbackStore>,
    fetcher: Fetcher,
    settings: CallbackSettings,
    render: OutputRenderer,
    inflight: Arc<Mutex<HashSet<Uuid>>>,
    wake: Notify,
}

impl std::fmt::Debug for CallbackService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackService")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// What one POST came back with.
struct Sent {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl CallbackService {
    pub fn new(
        store: Arc<dyn CallbackStore>,
        settings: CallbackSettings,
        render: OutputRenderer,
    ) -> Self {
        CallbackService {
            store,
            fetcher: Fetcher::new(settings.policy.clone()),
            settings,
            render,
            inflight: Arc::new(Mutex::new(HashSet::new())),
            wake: Notify::new(),
        }
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, RunsError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn CallbackStore) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| RunsError::Store(StoreError::Db(format!("store task failed: {e}"))))?
            .map_err(RunsError::from)
    }

    /// Creates a signing secret; the returned record holds the plaintext (shown once).
    pub async fn create_secret(&self, label: Option<String>) -> Result<CallbackSecret, RunsError> {
        let t = now();
        let secret = generate_secret();
        let s = CallbackSecret {
            id: Uuid::now_v7(),
            key_prefix: secret.chars().take(10).collect(),
            secret,
            label,
            disabled_at: None,
            last_used_at: None,
            created_at: t,
            updated_at: t,
        };
        let copy = s.clone();
        self.blocking(move |st| st.insert_secret(&copy)).await?;
        Ok(s)
    }

    pub async fn list_secrets(&self) -> Result<Vec<CallbackSecret>, RunsError> {
        self.blocking(|st| st.list_secrets()).await
    }

    pub async fn delete_secret(&self, id: Uuid) -> Result<(), RunsError> {
        if self.blocking(move |st| st.delete_secret(id)).await? {
            Ok(())
        } else {
            Err(RunsError::CallbackSecretNotFound(id.to_string()))
        }
    }

    /// Delivery history of a run (with attempts).
    pub async fn deliveries(&self, run_id: Uuid) -> Result<Vec<Delivery>, RunsError> {
        self.blocking(move |st| st.deliveries_for_run(run_id)).await
    }

    /// A manual delivery built from the run's current state, due now.
    pub async fn redeliver(&self, run: &Run) -> Result<Delivery, RunsError> {
        let Some(url) = run.callback_url.clone() else {
            return Err(RunsError::Conflict(format!(
                "run {} has no callback_url",
                run.id
            )));
        };
        if !run.status.is_terminal() {
            return Err(RunsError::Conflict(format!(
                "run {} is {}; callbacks are sent for terminal runs only",
                run.id,
                run.status.as_str()
            )));
        }
        let payload = payload_bytes(run, &self.render);
        let (run_id, max) = (run.id, self.settings.max_attempts);
        let d = self
            .blocking(move |st| st.insert_delivery(run_id, &url, &payload, false, max, now()))
            .await?;
        self.wake.notify_one();
        Ok(d)
    }

    /// The worker: sends due deliveries until `stop` is cancelled (in-flight attempts finish
    /// or are cut by their own timeout; an unrecorded attempt is simply sent again later).
    pub async fn run_worker(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let due = self.blocking(|st| st.due_deliveries(now(), 64)).await;
            match due {
                Ok(list) => {
                    for d in list {
                        if !self.inflight_insert(d.id) {
                            continue;
                        }
                        let me = self.clone();
                        tokio::spawn(async move {
                            let id = d.id;
                            me.attempt(d).await;
                            me.inflight_remove(id);
                        });
                    }
                }
                Err(e) => tracing::error!(error = %e, "callback outbox poll failed"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.settings.poll) => {}
            }
        }
    }

    fn inflight_insert(&self, id: Uuid) -> bool {
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id)
    }

    fn inflight_remove(&self, id: Uuid) {
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// One attempt: sign with the current secrets, POST, record, schedule.
    async fn attempt(&self, d: Delivery) {
        let secrets: Vec<CallbackSecret> = match self.list_secrets().await {
            Ok(s) => s.into_iter().filter(|s| s.disabled_at.is_none()).collect(),
            Err(e) => {
                tracing::error!(error = %e, "reading callback secrets failed");
                return;
            }
        };
        let n = d.attempt_count + 1;
        let started_at = Utc::now();
        let clock = Instant::now();
        let result = tokio::time::timeout(
            self.settings.policy.total_timeout,
            self.send(&d, &secrets, started_at.timestamp()),
        )
        .await
        .unwrap_or_else(|_| {
            Err((
                format!("timed out after {:?}", self.settings.policy.total_timeout),
                false,
            ))
        });
        let elapsed = clock.elapsed();
        let mut attempt = Attempt {
            id: Uuid::now_v7(),
            delivery_id: d.id,
            attempt_number: n,
            status_code: None,
            response_body: None,
            response_time_ms: elapsed.as_millis() as i64,
            error_message: None,
            created_at: now(),
        };
        let retry = |retry_after: Option<Duration>, why: String| {
            if n >= d.max_attempts {
                AttemptOutcome::Failed {
                    code: "ATTEMPTS_EXHAUSTED",
                    detail: format!("{n} attempts; last: {why}"),
                }
            } else {
                let delay = self
                    .settings
                    .schedule
                    .delay(n, rand::random::<f64>(), retry_after);
                let at = now() + chrono::Duration::from_std(delay).unwrap_or_default();
                AttemptOutcome::RetryAt(at)
            }
        };
        let outcome = match result {
            Ok(sent) => {
                attempt.status_code = Some(sent.status);
                attempt.response_body = Some(sent.body);
                match sent.status {
                    200..=299 => AttemptOutcome::Delivered,
                    410 => AttemptOutcome::Failed {
                        code: "GONE",
                        detail: "the receiver answered 410 Gone; not retried".into(),
                    },
                    s => {
                        let why = if (300..400).contains(&s) {
                            format!("HTTP {s} (redirects are not followed)")
                        } else {
                            format!("HTTP {s}")
                        };
                        attempt.error_message = Some(why.clone());
                        retry(retry_after(&sent.headers), why)
                    }
                }
            }
            Err((why, fatal)) => {
                attempt.error_message = Some(why.clone());
                if fatal {
                    AttemptOutcome::Failed {
                        code: "URL_NOT_ALLOWED",
                        detail: why,
                    }
                } else {
                    retry(None, why)
                }
            }
        };
        tracing::info!(delivery = %d.id, run_id = %d.run_id, attempt = n, status = ?attempt.status_code,
            ms = attempt.response_time_ms, outcome = ?outcome, "callback attempt");
        let secret_id = secrets.first().map(|s| s.id);
        if let Err(e) = self
            .blocking(move |st| st.record_attempt(&attempt, &outcome, secret_id))
            .await
        {
            tracing::error!(error = %e, delivery = %d.id, "recording a callback attempt failed");
        }
    }

    /// POSTs the stored bytes. `Err((why, fatal))`: fatal when the SSRF guard refuses the URL.
    async fn send(
        &self,
        d: &Delivery,
        secrets: &[CallbackSecret],
        ts: i64,
    ) -> Result<Sent, (String, bool)> {
        let target = self
            .fetcher
            .resolve_checked(&d.callback_url)
            .await
            .map_err(|e| {
                let fatal = matches!(e, ImageIoError::FetchForbidden { .. });
                (e.to_string(), fatal)
            })?;
        let client = pinned_client_builder(&target, &self.settings.policy)
            .timeout(self.settings.policy.total_timeout)
            .build()
            .map_err(|e| (format!("building the HTTP client failed: {e}"), false))?;
        let msg_id = format!("msg_{}", d.id.simple());
        let mut req = client
            .post(target.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("Runflow-Request-Id", Uuid::now_v7().simple().to_string())
            .header("webhook-id", &msg_id)
            .header("webhook-timestamp", ts.to_string());
        if let Some(newest) = secrets.first() {
            let all: Vec<String> = secrets.iter().map(|s| s.secret.clone()).collect();
            req = req
                .header(
                    "Runflow-Signature",
                    runflow_signature(&newest.secret, &d.payload),
                )
                .header(
                    "webhook-signature",
                    standard_header(&all, &msg_id, ts, &d.payload),
                );
        }
        let mut resp = req
            .body(d.payload.clone())
            .send()
            .await
            .map_err(|e| (crate::image_io::describe_reqwest(&e), false))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let mut body = Vec::new();
        // Keep the first bytes only; stop reading past the cap.
        while body.len() < MAX_RESPONSE_BODY {
            match resp.chunk().await {
                Ok(Some(c)) => body.extend_from_slice(&c),
                _ => break,
            }
        }
        body.truncate(MAX_RESPONSE_BODY);
        Ok(Sent {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// Validates a `callback_url` at run creation: scheme and literal address, then (for host
/// names) every resolved address. A name that does not resolve now is accepted (it is checked
/// again at each send). The error names `callback_url` (a 422).
pub async fn check_callback_url(fetcher: &Fetcher, url: &str) -> Result<(), FieldError> {
    let refuse = |e: ImageIoError| {
        FieldError::new(
            &["body".into(), "callback_url".into()],
            "url_not_allowed",
            format!("callback_url: {e}"),
        )
    };
    fetcher.check_url(url).map_err(refuse)?;
    match fetcher.resolve_checked(url).await {
        Err(e @ ImageIoError::FetchForbidden { .. }) => Err(refuse(e)),
        _ => Ok(()),
    }
}

/// `Retry-After` in seconds (an HTTP date is ignored).
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    h.get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}
