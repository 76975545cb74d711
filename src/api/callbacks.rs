//! Callback routes: signing secrets (`/v1/callback-secrets`), a run's delivery history
//! (`GET /v1/runs/{id}/callback`) and manual redelivery
//! (`POST /v1/runs/{id}/callback-redeliveries`), with their wire types.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::{ApiError, ErrorBody};
use super::extract::JsonBody;
use super::AppState;
use crate::runs::callbacks::{iso, Attempt, CallbackSecret, Delivery};
use crate::runs::{FieldError, RunsError};

/// Longest `label` of a secret.
const MAX_LABEL: usize = 255;

/// A signing secret; `plain_secret` only in the reply that created it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallbackSecretObject {
    /// `whsec_…`: shown once, at creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plain_secret: Option<String>,
    pub id: String,
    pub org_id: Option<String>,
    /// The first characters of the secret, to tell secrets apart.
    pub key_prefix: String,
    /// Every secret not deleted signs (one `v1,` entry each in `webhook-signature`).
    pub is_current: bool,
    pub label: Option<String>,
    pub disabled_at: Option<String>,
    pub last_used_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// `GET /v1/callback-secrets`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallbackSecretList {
    pub items: Vec<CallbackSecretObject>,
}

/// One POST of a delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallbackAttemptObject {
    pub id: String,
    pub delivery_id: String,
    pub attempt_number: u32,
    /// HTTP status of the receiver's answer; null when none arrived.
    pub status_code: Option<u16>,
    /// First 1024 bytes of the answer.
    pub response_body: Option<String>,
    pub response_time_ms: i64,
    pub error_message: Option<String>,
    pub created_at: String,
}

/// A callback delivery and its attempts.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallbackDeliveryObject {
    pub id: String,
    pub run_id: String,
    pub callback_url: String,
    /// The exact bytes POSTed (UTF-8 JSON), identical on every attempt.
    pub payload_bytes: String,
    #[schema(value_type = Object)]
    pub payload: Value,
    pub signing_secret_id: Option<String>,
    pub is_automatic: bool,
    /// `pending` | `succeeded` | `failed`.
    pub status_code: String,
    /// `GONE` (410), `ATTEMPTS_EXHAUSTED` or `URL_NOT_ALLOWED`.
    pub failure_reason_code: Option<String>,
    pub failure_detail: Option<String>,
    pub attempt_count: u32,
    pub max_attempts: u32,
    pub next_attempt_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub completed_at: Option<String>,
    pub attempts: Vec<CallbackAttemptObject>,
}

/// `GET /v1/runs/{id}/callback`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallbackHistory {
    pub deliveries: Vec<CallbackDeliveryObject>,
}

fn render_secret(s: &CallbackSecret, plain: bool) -> CallbackSecretObject {
    CallbackSecretObject {
        plain_secret: plain.then(|| s.secret.clone()),
        id: s.id.to_string(),
        org_id: None,
        key_prefix: s.key_prefix.clone(),
        is_current: s.disabled_at.is_none(),
        label: s.label.clone(),
        disabled_at: s.disabled_at.map(iso),
        last_used_at: s.last_used_at.map(iso),
        created_at: iso(s.created_at),
        updated_at: iso(s.updated_at),
    }
}

fn render_attempt(a: &Attempt) -> CallbackAttemptObject {
    CallbackAttemptObject {
        id: a.id.to_string(),
        delivery_id: a.delivery_id.to_string(),
        attempt_number: a.attempt_number,
        status_code: a.status_code,
        response_body: a.response_body.clone(),
        response_time_ms: a.response_time_ms,
        error_message: a.error_message.clone(),
        created_at: iso(a.created_at),
    }
}

fn render_delivery(d: &Delivery) -> CallbackDeliveryObject {
    CallbackDeliveryObject {
        id: d.id.to_string(),
        run_id: d.run_id.to_string(),
        callback_url: d.callback_url.clone(),
        payload_bytes: String::from_utf8_lossy(&d.payload).into_owned(),
        payload: serde_json::from_slice(&d.payload).unwrap_or(Value::Null),
        signing_secret_id: d.signing_secret_id.map(|s| s.to_string()),
        is_automatic: d.is_automatic,
        status_code: d.status.as_str().to_string(),
        failure_reason_code: d.failure_reason_code.clone(),
        failure_detail: d.failure_detail.clone(),
        attempt_count: d.attempt_count,
        max_attempts: d.max_attempts,
        next_attempt_at: d.next_attempt_at.map(iso),
        created_at: iso(d.created_at),
        updated_at: iso(d.updated_at),
        completed_at: d.completed_at.map(iso),
        attempts: d.attempts.iter().map(render_attempt).collect(),
    }
}

fn parse_uuid(id: &str, not_found: impl FnOnce(String) -> RunsError) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| not_found(id.to_string()).into())
}

/// Create a callback signing secret (the plaintext is in this reply only).
#[utoipa::path(
    post,
    path = "/v1/callback-secrets",
    tag = "callbacks",
    request_body(content = Object, description = "`{\"label\": \"≤255 chars\"}` (optional; empty body allowed)"),
    responses(
        (status = 201, body = CallbackSecretObject),
        (status = 401, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_secret(
    State(st): State<AppState>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let label = match body.value.get("label") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() <= MAX_LABEL => Some(s.clone()),
        Some(_) => {
            return Err(RunsError::Validation(vec![FieldError::new(
                &["body".into(), "label".into()],
                "string_type",
                format!("label must be a string of at most {MAX_LABEL} characters"),
            )])
            .into())
        }
    };
    let s = st.callbacks.create_secret(label).await?;
    Ok((StatusCode::CREATED, Json(render_secret(&s, true))).into_response())
}

/// List callback signing secrets (never the plaintext).
#[utoipa::path(
    get,
    path = "/v1/callback-secrets",
    tag = "callbacks",
    responses((status = 200, body = CallbackSecretList), (status = 401, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list_secrets(
    State(st): State<AppState>,
) -> Result<Json<CallbackSecretList>, ApiError> {
    let items = st.callbacks.list_secrets().await?;
    Ok(Json(CallbackSecretList {
        items: items.iter().map(|s| render_secret(s, false)).collect(),
    }))
}

/// Delete a callback signing secret (it stops signing at once).
#[utoipa::path(
    delete,
    path = "/v1/callback-secrets/{id}",
    tag = "callbacks",
    params(("id" = String, Path, description = "Secret id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, body = ErrorBody),
        (status = 404, description = "CALLBACK_SECRET_NOT_FOUND", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delete_secret(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_uuid(&id, RunsError::CallbackSecretNotFound)?;
    st.callbacks.delete_secret(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Callback delivery history of a run, with every attempt.
#[utoipa::path(
    get,
    path = "/v1/runs/{id}/callback",
    tag = "callbacks",
    params(("id" = String, Path, description = "Run id (UUID)")),
    responses(
        (status = 200, body = CallbackHistory),
        (status = 401, body = ErrorBody),
        (status = 404, description = "RUN_NOT_FOUND", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn history(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CallbackHistory>, ApiError> {
    let id = parse_uuid(&id, RunsError::RunNotFound)?;
    st.svc.get_run(id).await?;
    let ds = st.callbacks.deliveries(id).await?;
    Ok(Json(CallbackHistory {
        deliveries: ds.iter().map(render_delivery).collect(),
    }))
}

/// Send the callback again: a new delivery whose payload is built from the run's current state.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/callback-redeliveries",
    tag = "callbacks",
    params(("id" = String, Path, description = "Run id (UUID)")),
    responses(
        (status = 201, body = CallbackDeliveryObject),
        (status = 401, body = ErrorBody),
        (status = 404, description = "RUN_NOT_FOUND", body = ErrorBody),
        (status = 409, description = "No callback_url, or the run is not terminal", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn redeliver(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_uuid(&id, RunsError::RunNotFound)?;
    let run = st.svc.get_run(id).await?;
    let d = st.callbacks.redeliver(&run).await?;
    Ok((StatusCode::CREATED, Json(render_delivery(&d))).into_response())
}
