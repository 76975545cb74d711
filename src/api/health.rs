//! Probes and key check: `GET /v1/health` (process alive), `GET /v1/readiness` (model loaded,
//! store writable, not draining), `GET /v1/auth/me`.

use axum::extract::State;
use axum::Json;
use serde_json::json;

use super::error::{ApiError, ErrorBody};
use super::wire::{HealthBody, MeBody, ReadinessBody};
use super::AppState;
use crate::engine::EngineState;
use crate::runs::FieldError;

/// Liveness: 200 while the process answers.
#[utoipa::path(get, path = "/v1/health", tag = "health", responses((status = 200, body = HealthBody)))]
pub async fn health() -> Json<HealthBody> {
    Json(HealthBody { ok: true })
}

/// Readiness: 200 when the model is loaded, the store takes writes and the server is not
/// draining; otherwise 503 `NOT_READY` with one `errors` item per failing component.
#[utoipa::path(
    get,
    path = "/v1/readiness",
    tag = "health",
    responses((status = 200, body = ReadinessBody), (status = 503, body = ErrorBody))
)]
pub async fn readiness(State(st): State<AppState>) -> Result<Json<ReadinessBody>, ApiError> {
    let r = st.svc.readiness().await;
    let model = match &r.model {
        EngineState::Loading => "loading".to_string(),
        EngineState::Ready(_) => "ready".to_string(),
        EngineState::Failed(m) => format!("failed: {m}"),
    };
    let store = match &r.store {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("error: {e}"),
    };
    if r.ready() {
        return Ok(Json(ReadinessBody {
            ok: true,
            model,
            store,
            draining: false,
        }));
    }
    let mut errors = Vec::new();
    if !matches!(r.model, EngineState::Ready(_)) {
        errors.push(FieldError::new(
            &[json!("model")],
            "not_ready",
            format!("model {model}"),
        ));
    }
    if r.store.is_err() {
        errors.push(FieldError::new(&[json!("store")], "not_ready", store));
    }
    if r.draining {
        errors.push(FieldError::new(
            &[json!("server")],
            "draining",
            "shutting down",
        ));
    }
    Err(ApiError::NotReady(errors))
}

/// Key check: 200 with the served model when the bearer key is valid.
#[utoipa::path(
    get,
    path = "/v1/auth/me",
    tag = "health",
    responses((status = 200, body = MeBody), (status = 401, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn me(State(st): State<AppState>) -> Json<MeBody> {
    Json(MeBody {
        ok: true,
        auth: "api_key",
        model_id: st.model_id.clone(),
        model_aliases: st.aliases.clone(),
    })
}
