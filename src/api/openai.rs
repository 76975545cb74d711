//! OpenAI-compatible `POST /v1/images/edits` (multipart/form-data, as the official SDKs send it:
//! repeated `image[]` parts, or `image`), answered through the same queue and store as the
//! Runflow API — the run shows up under `/v1/runs` — and replied in OpenAI's shape
//! `{created, data:[{b64_json}], background, output_format, quality, size, usage}`, with errors as
//! `{error:{message, type, param, code}}`.
//!
//! Mapping: `image[]` → `image_urls` (as `data:` URIs, stored as assets), `mask` → `mask_url`
//! (OpenAI's alpha convention is honoured by the mask decoder), `n` → `num_images` (1–4 here),
//! `size` `auto|WxH` → `image_size`, `quality` `auto` → `high`, `output_format`,
//! `output_compression` (jpeg/webp). `background: transparent` is refused (the model has no alpha).
//! `usage` counts 16×16-pixel latent patches (image tokens), not text tokens, which are 0.

use std::time::Duration;

use axum::extract::{Multipart, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{json, Map, Value};

use super::AppState;
use crate::image_io::sniff_format;
use crate::runs::{RunStatus, RunsError};

/// How often the handler looks at the run while waiting for it to finish.
const POLL: Duration = Duration::from_millis(50);
/// Most images one request may send (OpenAI's limit).
const MAX_IMAGES: usize = 16;

/// An OpenAI-style error reply.
#[derive(Debug)]
pub(crate) struct OpenAiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<String>,
    code: Option<String>,
}

impl OpenAiError {
    fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.to_string()),
            code: Some("invalid_value".into()),
        }
    }
    fn server(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: Some(code.into()),
        }
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message, "type": self.kind, "param": self.param, "code": self.code,
        }});
        (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    }
}

impl From<RunsError> for OpenAiError {
    fn from(e: RunsError) -> Self {
        match e {
            RunsError::Validation(errors) => {
                let first = errors.first();
                let param = first
                    .and_then(|f| f.loc.last())
                    .map(|v| {
                        v.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string())
                    })
                    .unwrap_or_default();
                let message = errors
                    .iter()
                    .map(|f| f.msg.clone())
                    .collect::<Vec<_>>()
                    .join("; ");
                Self::invalid(&openai_param(&param), message)
            }
            RunsError::QueueFull(_) => Self::server(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_exceeded",
                e.to_string(),
            ),
            RunsError::Draining => Self::server(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                e.to_string(),
            ),
            other => Self::server(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                other.to_string(),
            ),
        }
    }
}

/// The OpenAI name of a run-input field, for `param`.
fn openai_param(field: &str) -> String {
    match field {
        "image_urls" => "image".into(),
        "mask_url" => "mask".into(),
        "num_images" => "n".into(),
        "image_size" => "size".into(),
        f => f.into(),
    }
}

/// The form, read and checked.
#[derive(Default)]
struct EditForm {
    images: Vec<Vec<u8>>,
    mask: Option<Vec<u8>>,
    text: Map<String, Value>,
}

async fn read_form(mut mp: Multipart) -> Result<EditForm, OpenAiError> {
    let mut form = EditForm::default();
    while let Some(field) = mp
        .next_field()
        .await
        .map_err(|e| OpenAiError::invalid("body", format!("malformed multipart body: {e}")))?
    {
        let name = field.name().unwrap_or_default().to_string();
        let read_err = |e: axum::extract::multipart::MultipartError| {
            OpenAiError::invalid(&name, format!("could not read field `{name}`: {e}"))
        };
        match name.as_str() {
            "image" | "image[]" => {
                if form.images.len() == MAX_IMAGES {
                    return Err(OpenAiError::invalid(
                        "image",
                        format!("at most {MAX_IMAGES} images"),
                    ));
                }
                form.images
                    .push(field.bytes().await.map_err(read_err)?.to_vec());
            }
            "mask" => form.mask = Some(field.bytes().await.map_err(read_err)?.to_vec()),
            "prompt" | "model" | "n" | "size" | "quality" | "output_format"
            | "output_compression" | "background" | "input_fidelity" | "moderation" | "stream"
            | "partial_images" | "response_format" | "user" => {
                let text = field.text().await.map_err(read_err)?;
                form.text.insert(name, Value::String(text));
            }
            other => {
                return Err(OpenAiError::invalid(
                    other,
                    format!("Unrecognized request argument supplied: {other}"),
                ));
            }
        }
    }
    Ok(form)
}

fn data_uri(bytes: &[u8], param: &str, index: usize) -> Result<String, OpenAiError> {
    let mime = match sniff_format(bytes) {
        Some(image::ImageFormat::Png) => "image/png",
        Some(image::ImageFormat::Jpeg) => "image/jpeg",
        Some(image::ImageFormat::WebP) => "image/webp",
        _ => {
            return Err(OpenAiError::invalid(
                param,
                format!("{param}[{index}] is not a PNG, JPEG or WebP image"),
            ))
        }
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
    Ok(format!("data:{mime};base64,{b64}"))
}

/// Builds the run `input` from the form (OpenAI names → gpt-image-2/edit names).
fn to_input(form: &EditForm) -> Result<(Value, String), OpenAiError> {
    let text = |k: &str| form.text.get(k).and_then(Value::as_str).map(str::trim);
    let mut input = Map::new();
    let prompt =
        text("prompt").ok_or_else(|| OpenAiError::invalid("prompt", "prompt is required"))?;
    input.insert("prompt".into(), json!(prompt));
    if form.images.is_empty() {
        return Err(OpenAiError::invalid(
            "image",
            "at least one image is required (image or image[])",
        ));
    }
    let urls = form
        .images
        .iter()
        .enumerate()
        .map(|(i, b)| data_uri(b, "image", i))
        .collect::<Result<Vec<_>, _>>()?;
    input.insert("image_urls".into(), json!(urls));
    if let Some(mask) = &form.mask {
        input.insert("mask_url".into(), json!(data_uri(mask, "mask", 0)?));
    }
    if let Some(n) = text("n") {
        let n: u32 = n
            .parse()
            .map_err(|_| OpenAiError::invalid("n", format!("n must be an integer, got {n:?}")))?;
        if !(1..=4).contains(&n) {
            return Err(OpenAiError::invalid(
                "n",
                format!("n must be between 1 and 4 on this server, got {n}"),
            ));
        }
        input.insert("num_images".into(), json!(n));
    }
    match text("size") {
        None | Some("auto") => {}
        Some(s) => {
            let (w, h) = s
                .split_once('x')
                .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
                .ok_or_else(|| {
                    OpenAiError::invalid(
                        "size",
                        format!("size must be `auto` or WIDTHxHEIGHT, got {s:?}"),
                    )
                })?;
            input.insert("image_size".into(), json!({"width": w, "height": h}));
        }
    }
    let quality = match text("quality") {
        None | Some("auto") => "high",
        Some(q @ ("low" | "medium" | "high")) => q,
        Some(q) => {
            return Err(OpenAiError::invalid(
                "quality",
                format!("quality must be auto, low, medium or high, got {q:?}"),
            ))
        }
    };
    input.insert("quality".into(), json!(quality));
    let format = match text("output_format") {
        None => "png",
        Some(f @ ("png" | "jpeg" | "webp")) => f,
        Some(f) => {
            return Err(OpenAiError::invalid(
                "output_format",
                format!("output_format must be png, jpeg or webp, got {f:?}"),
            ))
        }
    };
    input.insert("output_format".into(), json!(format));
    if let Some(c) = text("output_compression") {
        let c: u8 = c.parse().ok().filter(|c| *c <= 100).ok_or_else(|| {
            OpenAiError::invalid(
                "output_compression",
                format!("output_compression must be 0-100, got {c:?}"),
            )
        })?;
        input.insert("output_compression".into(), json!(c));
    }
    match text("background") {
        None | Some("auto") | Some("opaque") => {}
        Some("transparent") => {
            return Err(OpenAiError::invalid(
                "background",
                "background `transparent` is not supported: the served model paints opaque images",
            ))
        }
        Some(b) => {
            return Err(OpenAiError::invalid(
                "background",
                format!("background must be auto, opaque or transparent, got {b:?}"),
            ))
        }
    }
    if matches!(text("stream"), Some("true" | "True" | "1")) {
        return Err(OpenAiError::invalid(
            "stream",
            "streaming partial images is not supported; omit `stream`",
        ));
    }
    Ok((json!({ "input": input }), quality.to_string()))
}

/// OpenAI-compatible image edit: multipart `image`/`image[]` (1–16), `mask`, `prompt`, `model`,
/// `n` (1–4), `size` (`auto` or `WxH`), `quality`, `output_format`, `output_compression`.
/// Waits for the run and answers `{created, data:[{b64_json}], …}`; errors are
/// `{error:{message,type,param,code}}`.
#[utoipa::path(
    post,
    path = "/v1/images/edits",
    tag = "openai",
    request_body(content_type = "multipart/form-data", description = "OpenAI images.edit form"),
    responses(
        (status = 200, description = "`{created, data:[{b64_json}], background, output_format, quality, size, usage}`"),
        (status = 400, description = "`{error:{message,type,param,code}}`"),
        (status = 401, description = "Missing or invalid API key"),
        (status = 429, description = "Queue full"),
        (status = 503, description = "Shutting down"),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn images_edits(State(st): State<AppState>, mp: Multipart) -> Response {
    match edit(st, mp).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn edit(st: AppState, mp: Multipart) -> Result<Response, OpenAiError> {
    let form = read_form(mp).await?;
    let (body, quality) = to_input(&form)?;
    let patches_in: u64 = form
        .images
        .iter()
        .filter_map(|b| {
            image::ImageReader::new(std::io::Cursor::new(b))
                .with_guessed_format()
                .ok()?
                .into_dimensions()
                .ok()
        })
        .map(|(w, h)| (w as u64 * h as u64).min(1024 * 1024) / 256)
        .sum();
    let created = st.svc.create_run(&st.model_id, &body, None).await?;
    let id = match created {
        crate::runs::service::Created::New(r) | crate::runs::service::Created::Replayed(r) => r.id,
    };
    tracing::info!(run_id = %id, "images/edits run queued");
    let run = loop {
        let run = st.svc.get_run(id).await?;
        if run.status.is_terminal() {
            break run;
        }
        tokio::time::sleep(POLL).await;
    };
    match run.status {
        RunStatus::Succeeded => {}
        RunStatus::Canceled => {
            return Err(OpenAiError::server(
                StatusCode::CONFLICT,
                "canceled",
                format!("run {id} was canceled"),
            ))
        }
        _ => {
            let f = run.failure.as_ref();
            let message = f
                .map(|f| f.message.clone())
                .unwrap_or_else(|| "the edit failed".into());
            let code = f.map(|f| f.code.clone()).unwrap_or_default();
            let client_side = f.is_some_and(|f| f.stage == "input" || f.code == "INVALID_INPUT");
            return Err(if client_side {
                OpenAiError::invalid("image", format!("run {id}: {message}"))
            } else {
                OpenAiError::server(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &code.to_lowercase(),
                    format!("run {id}: {message}"),
                )
            });
        }
    }
    let output = run.output.ok_or_else(|| {
        OpenAiError::server(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "run has no output",
        )
    })?;
    let mut data = Vec::new();
    let (mut w, mut h) = (0, 0);
    for img in &output.images {
        let bytes = match (&img.file, &img.data_uri) {
            (Some(file), _) => st.svc.read_output(id, file).await?.0,
            (None, Some(uri)) => {
                crate::image_io::parse_data_uri(uri, usize::MAX)
                    .map_err(|e| {
                        OpenAiError::server(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "server_error",
                            e.to_string(),
                        )
                    })?
                    .1
            }
            (None, None) => continue,
        };
        (w, h) = (img.width, img.height);
        data.push(json!({"b64_json": base64::engine::general_purpose::STANDARD.encode(bytes)}));
    }
    let patches_out = data.len() as u64 * (w as u64 / 16) * (h as u64 / 16);
    let reply = json!({
        "created": run.created_at.timestamp(),
        "data": data,
        "background": "opaque",
        "output_format": run.job.output_format,
        "quality": quality,
        "size": format!("{w}x{h}"),
        "usage": {
            "input_tokens": patches_in,
            "input_tokens_details": {"image_tokens": patches_in, "text_tokens": 0},
            "output_tokens": patches_out,
            "total_tokens": patches_in + patches_out,
        },
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        reply.to_string(),
    )
        .into_response())
}
