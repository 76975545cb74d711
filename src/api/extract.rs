//! Extractors and middleware: the JSON body extractor (content type, size, syntax → envelope),
//! bearer auth over everything but an explicit public list, `Idempotency-Key` helpers, and a
//! last-resort layer that turns any non-JSON error reply into the envelope.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::auth::hex;
use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::runs::store::{IdemKey, IdemRecord};

/// A JSON body with its raw bytes (for idempotency hashing). Rejections are envelopes:
/// 415 for another content type, 413 over the route's limit, 400 for malformed JSON.
#[derive(Debug)]
pub struct JsonBody {
    pub value: Value,
    pub raw: Bytes,
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            let mime = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false)
}

/// Reads the body; maps a length-limit failure to 413.
pub async fn read_body(req: Request, limit_hint: usize) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, &()).await.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(limit_hint)
        } else {
            ApiError::BadRequest(rej.body_text())
        }
    })
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let empty_ok = req.extensions().get::<AllowEmptyBody>().is_some();
        let json = is_json(req.headers());
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map(|l| l.0)
            .unwrap_or(super::DEFAULT_BODY_LIMIT);
        let raw = read_body(req, limit).await?;
        if raw.is_empty() && empty_ok {
            return Ok(JsonBody {
                value: Value::Object(Default::default()),
                raw,
            });
        }
        if !json {
            return Err(ApiError::UnsupportedMediaType(ct));
        }
        let value =
            serde_json::from_slice(&raw).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
        Ok(JsonBody { value, raw })
    }
}

/// Request extension: this route accepts an empty body as `{}`.
#[derive(Debug, Clone, Copy)]
pub struct AllowEmptyBody;

/// Request extension: the body limit of this route (for the 413 message).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Routes reachable without a key: probes, and the signed-URL routes (which check signatures).
fn is_public(method: &Method, path: &str) -> bool {
    match path {
        "/v1/health" | "/v1/readiness" => return true,
        _ => {}
    }
    let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    matches!(
        (method, seg.as_slice()),
        (&Method::GET | &Method::HEAD, ["v1", "files", _, _])
            | (&Method::GET | &Method::HEAD, ["v1", "assets", _, "content"])
            | (&Method::PUT, ["v1", "asset-uploads", _, "content"])
    )
}

/// Bearer auth on every route that is not explicitly public (default-deny, unknown routes too).
pub async fn require_auth(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if is_public(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if st.keys.verify_header(value) {
        next.run(req).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

/// Any 4xx/5xx reply that is not JSON (framework rejections, panics) becomes an envelope.
pub async fn envelope_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json_reply = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json_reply {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "PAYLOAD_TOO_LARGE",
        StatusCode::NOT_FOUND => "NOT_FOUND",
        StatusCode::METHOD_NOT_ALLOWED => "METHOD_NOT_ALLOWED",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "UNSUPPORTED_MEDIA_TYPE",
        StatusCode::UNPROCESSABLE_ENTITY => "VALIDATION_ERROR",
        s if s.is_server_error() => "INTERNAL_ERROR",
        _ => "BAD_REQUEST",
    };
    let message = match String::from_utf8_lossy(&text).trim() {
        "" => status.canonical_reason().unwrap_or("error").to_string(),
        t => t.to_string(),
    };
    let body = ErrorBody {
        code: code.into(),
        message,
        errors: None,
    };
    let mut out = (status, axum::Json(body)).into_response();
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

/// The `Idempotency-Key` of a request, if any, with the scope and body hash.
pub fn idem_key(
    headers: &HeaderMap,
    scope: &str,
    body: &[u8],
) -> Result<Option<IdemKey>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into()))?
        .trim();
    if key.is_empty() || key.len() > 255 {
        return Err(ApiError::BadRequest(
            "Idempotency-Key must be 1–255 characters".into(),
        ));
    }
    Ok(Some(IdemKey {
        scope: scope.to_string(),
        key: key.to_string(),
        body_sha256: hex(&Sha256::digest(body)),
    }))
}

/// For POSTs other than run creation: replays a stored reply, or 409 for another body.
pub async fn idem_replay(
    st: &AppState,
    key: &Option<IdemKey>,
) -> Result<Option<Response>, ApiError> {
    let Some(k) = key else { return Ok(None) };
    match st.svc.idem_get(k.scope.clone(), k.key.clone()).await? {
        None => Ok(None),
        Some(rec) if rec.body_sha256 != k.body_sha256 => {
            Err(ApiError::Runs(crate::runs::RunsError::Conflict(
                "Idempotency-Key was already used with a different request body".into(),
            )))
        }
        Some(rec) => {
            let status = StatusCode::from_u16(rec.status).unwrap_or(StatusCode::OK);
            let mut r = Response::new(Body::from(rec.response));
            *r.status_mut() = status;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            Ok(Some(r))
        }
    }
}

/// Stores a JSON reply under the key (first write wins) and returns it.
pub async fn idem_store<T: serde::Serialize>(
    st: &AppState,
    key: Option<IdemKey>,
    status: StatusCode,
    body: T,
) -> Result<Response, ApiError> {
    let text = serde_json::to_string(&body).map_err(|e| ApiError::Internal(e.to_string()))?;
    if let Some(k) = key {
        let rec = IdemRecord {
            body_sha256: k.body_sha256,
            status: status.as_u16(),
            response: text.clone(),
        };
        st.svc.idem_put(k.scope, k.key, rec).await?;
    }
    let mut r = Response::new(Body::from(text));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_routes_are_an_explicit_short_list() {
        assert!(is_public(&Method::GET, "/v1/health"));
        assert!(is_public(&Method::GET, "/v1/readiness"));
        assert!(is_public(&Method::GET, "/v1/files/r/0.png"));
        assert!(is_public(&Method::PUT, "/v1/asset-uploads/a/content"));
        assert!(is_public(&Method::GET, "/v1/assets/a/content"));
        assert!(!is_public(&Method::POST, "/v1/asset-uploads/a/content"));
        assert!(!is_public(&Method::GET, "/v1/runs"));
        assert!(!is_public(&Method::GET, "/v1/files/r/0.png/x"));
        assert!(!is_public(&Method::DELETE, "/v1/files/r/0.png"));
    }

    #[tokio::test]
    async fn panics_and_framework_rejections_are_enveloped() {
        let app = axum::Router::new()
            .route(
                "/panic",
                axum::routing::get(|| async {
                    if true {
                        panic!("boom");
                    }
                    "unreachable"
                }),
            )
            .route(
                "/text",
                axum::routing::get(|| async { (StatusCode::IM_A_TEAPOT, "short and stout") }),
            )
            .layer(tower_http::catch_panic::CatchPanicLayer::new())
            .layer(axum::middleware::from_fn(envelope_errors));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let c = reqwest::Client::builder().no_proxy().build().unwrap();
        let r = c.get(format!("http://{addr}/panic")).send().await.unwrap();
        assert_eq!(r.status(), 500);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["code"], "INTERNAL_ERROR");
        let r = c.get(format!("http://{addr}/text")).send().await.unwrap();
        assert_eq!(r.status(), 418);
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            (v["code"].as_str(), v["message"].as_str()),
            (Some("BAD_REQUEST"), Some("short and stout"))
        );
    }
}
