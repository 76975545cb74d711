//! The one place errors become HTTP: every failure is the Runflow envelope
//! `{code, message, errors}` with `Content-Type: application/json`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::runs::{FieldError, RunsError};

/// Seconds clients are told to wait after 429/503.
const RETRY_AFTER_SECS: &str = "5";

/// The error envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable upper-case code, e.g. `RUN_NOT_FOUND`, `VALIDATION_ERROR`.
    pub code: String,
    pub message: String,
    /// Per-field problems (`{loc, msg, type}`), or null.
    #[schema(value_type = Option<Vec<ErrorItem>>)]
    pub errors: Option<Vec<FieldError>>,
}

/// One validation problem.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ErrorItem {
    /// Path to the offending value, e.g. `["body","input","prompt"]`.
    #[schema(value_type = Vec<Object>)]
    pub loc: Vec<serde_json::Value>,
    pub msg: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// Errors of the API layer (runs-layer errors wrapped).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Runs(#[from] RunsError),
    #[error("missing or invalid API key; send Authorization: Bearer <key>")]
    Unauthorized,
    #[error("no route for {0}")]
    RouteNotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("expected Content-Type: application/json, got {0:?}")]
    UnsupportedMediaType(String),
    #[error("malformed JSON body: {0}")]
    InvalidJson(String),
    #[error("request body is larger than the {0}-byte limit of this route")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    BadRequest(String),
    #[error("invalid query parameters")]
    InvalidQuery(Vec<FieldError>),
    #[error("the URL signature is invalid or has expired")]
    BadSignature,
    #[error("not ready")]
    NotReady(Vec<FieldError>),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        use RunsError as R;
        match self {
            ApiError::Runs(r) => match r {
                R::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR"),
                R::RunNotFound(_) => (StatusCode::NOT_FOUND, "RUN_NOT_FOUND"),
                R::AssetNotFound(_) => (StatusCode::NOT_FOUND, "ASSET_NOT_FOUND"),
                R::CallbackSecretNotFound(_) => {
                    (StatusCode::NOT_FOUND, "CALLBACK_SECRET_NOT_FOUND")
                }
                R::ModelNotFound(_) => (StatusCode::NOT_FOUND, "MODEL_NOT_FOUND"),
                R::Conflict(_) => (StatusCode::CONFLICT, "CONFLICT"),
                R::QueueFull(_) => (StatusCode::TOO_MANY_REQUESTS, "QUEUE_FULL"),
                R::Draining => (StatusCode::SERVICE_UNAVAILABLE, "SERVICE_UNAVAILABLE"),
                R::TooLarge(..) => (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
                R::Store(_) | R::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR"),
            },
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            ApiError::RouteNotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE")
            }
            ApiError::InvalidJson(_) => (StatusCode::BAD_REQUEST, "INVALID_JSON"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BAD_REQUEST"),
            ApiError::InvalidQuery(_) => (StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_ERROR"),
            ApiError::BadSignature => (StatusCode::FORBIDDEN, "INVALID_SIGNATURE"),
            ApiError::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "NOT_READY"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR"),
        }
    }

    /// The envelope for this error.
    pub fn body(&self) -> ErrorBody {
        let (_, code) = self.parts();
        let (message, errors) = match self {
            ApiError::Runs(RunsError::Validation(e)) => (summarise(e), Some(e.clone())),
            ApiError::InvalidQuery(e) => (summarise(e), Some(e.clone())),
            ApiError::NotReady(e) => (format!("not ready: {}", summarise(e)), Some(e.clone())),
            ApiError::Runs(e @ (RunsError::Store(_) | RunsError::Io(_))) => {
                tracing::error!(error = %e, "internal error");
                ("internal error; see the server log".to_string(), None)
            }
            other => (other.to_string(), None),
        };
        ErrorBody {
            code: code.to_string(),
            message,
            errors,
        }
    }
}

fn summarise(errors: &[FieldError]) -> String {
    let parts: Vec<String> = errors
        .iter()
        .take(5)
        .map(|e| {
            let loc: Vec<String> = e
                .loc
                .iter()
                .map(|p| {
                    p.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| p.to_string())
                })
                .collect();
            format!("{}: {}", loc.join("."), e.msg)
        })
        .collect();
    let more = errors.len().saturating_sub(5);
    if more > 0 {
        format!("{} (and {more} more)", parts.join("; "))
    } else {
        parts.join("; ")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _) = self.parts();
        let retry = matches!(
            self,
            ApiError::Runs(RunsError::QueueFull(_) | RunsError::Draining) | ApiError::NotReady(_)
        );
        let unauthorized = matches!(self, ApiError::Unauthorized);
        let mut resp = (status, axum::Json(self.body())).into_response();
        if retry {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        if unauthorized {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
