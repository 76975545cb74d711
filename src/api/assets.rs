//! Asset uploads as Runflow's clients do them (create → signed PUT → confirm), the signed asset
//! download, and the signed output-file route.

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use uuid::Uuid;

use super::error::{ApiError, ErrorBody};
use super::extract::{idem_key, idem_replay, idem_store, read_body, JsonBody};
use super::wire::{
    render_asset, AssetObject, AssetUploadRequest, AssetUploadResponse, UploadedBody,
};
use super::AppState;
use crate::runs::service::MAX_ASSET_BYTES;
use crate::runs::{FieldError, RunsError};

/// `?expires=…&signature=…` of a signed URL.
#[derive(Debug, Deserialize)]
pub struct Signed {
    expires: Option<u64>,
    signature: Option<String>,
}

fn check_sig(st: &AppState, method: &str, path: &str, q: &Signed) -> Result<(), ApiError> {
    let (Some(exp), Some(sig)) = (q.expires, q.signature.as_deref()) else {
        return Err(ApiError::BadSignature);
    };
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    if st.urls.signer.verify(method, path, exp, sig, now) {
        Ok(())
    } else {
        Err(ApiError::BadSignature)
    }
}

fn asset_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| RunsError::AssetNotFound(id.to_string()).into())
}

/// Start an upload: returns the asset id and a signed URL to `PUT` the bytes to.
#[utoipa::path(
    post,
    path = "/v1/asset-uploads",
    tag = "assets",
    request_body = AssetUploadRequest,
    responses(
        (status = 201, body = AssetUploadResponse),
        (status = 401, body = ErrorBody),
        (status = 413, description = "size_bytes over 50 MB", body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_upload(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let key = idem_key(&headers, "POST /v1/asset-uploads", &body.raw)?;
    if let Some(replay) = idem_replay(&st, &key).await? {
        return Ok(replay);
    }
    let req: AssetUploadRequest = serde_json::from_value(body.value).map_err(|e| {
        RunsError::Validation(vec![FieldError::new(
            &[serde_json::json!("body")],
            "value_error",
            e.to_string(),
        )])
    })?;
    let asset = st
        .svc
        .create_asset(req.filename, req.mime_type, req.size_bytes)
        .await?;
    let upload_url = st
        .urls
        .signed("PUT", &format!("/v1/asset-uploads/{}/content", asset.id));
    idem_store(
        &st,
        key,
        StatusCode::CREATED,
        AssetUploadResponse {
            asset_id: asset.id.to_string(),
            upload_url,
        },
    )
    .await
}

/// Upload the bytes (signed URL; no `Authorization`). Re-uploading before confirmation replaces them.
#[utoipa::path(
    put,
    path = "/v1/asset-uploads/{id}/content",
    tag = "assets",
    params(
        ("id" = String, Path),
        ("expires" = u64, Query),
        ("signature" = String, Query),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 200, body = UploadedBody),
        (status = 403, description = "Bad or expired signature", body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "Already confirmed", body = ErrorBody),
        (status = 413, body = ErrorBody),
    )
)]
pub async fn put_upload(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(sig): Query<Signed>,
    req: Request,
) -> Result<Json<UploadedBody>, ApiError> {
    check_sig(&st, "PUT", &format!("/v1/asset-uploads/{id}/content"), &sig)?;
    let id = asset_id(&id)?;
    let bytes = read_body(req, MAX_ASSET_BYTES as usize).await?;
    let size = bytes.len() as u64;
    st.svc.put_asset_bytes(id, bytes).await?;
    Ok(Json(UploadedBody {
        asset_id: id.to_string(),
        size_bytes: size,
    }))
}

/// Confirm an upload (body `{}` or `{folder_id}`); the asset can then be used as an image URL.
#[utoipa::path(
    post,
    path = "/v1/asset-uploads/{id}/confirmations",
    tag = "assets",
    params(("id" = String, Path)),
    responses(
        (status = 201, body = AssetObject),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "No bytes uploaded yet", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn confirm_upload(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let key = idem_key(
        &headers,
        &format!("POST /v1/asset-uploads/{id}/confirmations"),
        &body.raw,
    )?;
    if let Some(replay) = idem_replay(&st, &key).await? {
        return Ok(replay);
    }
    let asset = st.svc.confirm_asset(asset_id(&id)?).await?;
    idem_store(
        &st,
        key,
        StatusCode::CREATED,
        render_asset(&asset, &st.urls),
    )
    .await
}

fn bytes_reply(bytes: Vec<u8>, content_type: &str) -> Response {
    let mut r = bytes.into_response();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=3600"),
    );
    r
}

/// Download an asset (signed URL).
#[utoipa::path(
    get,
    path = "/v1/assets/{id}/content",
    tag = "assets",
    params(("id" = String, Path), ("expires" = u64, Query), ("signature" = String, Query)),
    responses(
        (status = 200, description = "The asset bytes", content_type = "application/octet-stream"),
        (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
pub async fn get_asset(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(sig): Query<Signed>,
) -> Result<Response, ApiError> {
    check_sig(&st, "GET", &format!("/v1/assets/{id}/content"), &sig)?;
    let (asset, bytes) = st.svc.read_asset(asset_id(&id)?).await?;
    Ok(bytes_reply(bytes, &asset.mime_type))
}

/// Download an output image (signed, expiring URL from the run's `output`; no `Authorization`).
#[utoipa::path(
    get,
    path = "/v1/files/{run_id}/{name}",
    tag = "runs",
    params(("run_id" = String, Path), ("name" = String, Path), ("expires" = u64, Query), ("signature" = String, Query)),
    responses(
        (status = 200, description = "The image", content_type = "image/png"),
        (status = 403, description = "Bad or expired signature", body = ErrorBody),
        (status = 404, body = ErrorBody),
    )
)]
pub async fn get_output(
    State(st): State<AppState>,
    Path((run_id, name)): Path<(String, String)>,
    Query(sig): Query<Signed>,
) -> Result<Response, ApiError> {
    check_sig(&st, "GET", &format!("/v1/files/{run_id}/{name}"), &sig)?;
    let id = Uuid::parse_str(&run_id).map_err(|_| RunsError::RunNotFound(run_id.clone()))?;
    let (bytes, ct) = st.svc.read_output(id, &name).await?;
    Ok(bytes_reply(bytes, &ct))
}
