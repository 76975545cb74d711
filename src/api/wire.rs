//! Wire types (serde + OpenAPI schemas) and the rendering of a stored run into Runflow's run
//! object: timestamps in Python `isoformat()` style (`+00:00`), output URLs signed at read time.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::signing::UrlSigner;
use crate::runs::{Asset, Run, RunStatus};

/// Python-`isoformat()`-style UTC timestamp (`2026-05-06T10:00:00.123456+00:00`).
pub fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, false)
}

/// What rendering needs to build absolute signed URLs.
#[derive(Debug, Clone)]
pub struct UrlCtx {
    pub base_url: String,
    pub signer: UrlSigner,
    pub ttl_secs: u64,
}

impl UrlCtx {
    fn expires(&self) -> u64 {
        // Rounded up to the minute so repeated polls see the same URL for a while.
        let t = Utc::now().timestamp().max(0) as u64 + self.ttl_secs;
        t.div_ceil(60) * 60
    }

    /// Absolute signed URL for `method path`.
    pub fn signed(&self, method: &str, path: &str) -> String {
        format!(
            "{}{}",
            self.base_url,
            self.signer.sign(method, path, self.expires())
        )
    }
}

/// Body of `POST /v1/models/{model_id}/runs`.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct CreateRunRequest {
    pub input: EditInput,
    /// POSTed (signed, retried) when the run is terminal; `https` only unless the server allows
    /// `http`/private networks. See `GET /v1/runs/{id}/callback`.
    pub callback_url: Option<String>,
    /// Free-form object, echoed back.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Caller's reference (≤ 255 chars), filterable with `q=client_ref:X`.
    pub client_ref: Option<String>,
}

/// `input` of an edit run: the gpt-image-2/edit schema plus editd extensions.
/// Unknown fields are rejected with 422.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct EditInput {
    /// What to do (1–32,000 characters).
    pub prompt: String,
    /// 1–16 reference images: `https://…`, `data:image/…;base64,…` or `runflow://assets/{id}`.
    /// With `mask_url`, the first is the image edited.
    pub image_urls: Vec<String>,
    /// Inpainting mask at the first image's size: transparent (alpha < 128) or white = repaint.
    pub mask_url: Option<String>,
    /// 1–4, default 1.
    pub num_images: Option<u32>,
    /// `low` | `medium` | `high` (default): the output area cap (and steps on non-distilled models).
    pub quality: Option<String>,
    /// `png` (default) | `jpeg` | `webp`.
    pub output_format: Option<String>,
    /// `auto` (default: follow the first image), a preset (`square_hd`, `square`, `portrait_4_3`,
    /// `portrait_16_9`, `landscape_4_3`, `landscape_16_9`), `WxH`, or `{width, height}`
    /// (rounded to multiples of 16, 64–4096 px per side).
    #[schema(value_type = Object)]
    pub image_size: Option<Value>,
    /// Outputs as `data:` URIs in `outputs[].url` instead of signed URLs.
    pub sync_mode: Option<bool>,
    /// editd extension: seed of the first image (image i uses seed + i); drawn when absent.
    pub seed: Option<u64>,
    /// editd extension: denoising steps (1–100); default from the model and `quality`.
    pub num_inference_steps: Option<u32>,
    /// editd extension: guidance scale (0–30); ignored by guidance-distilled models.
    pub guidance_scale: Option<f32>,
    /// editd extension: inpainting strength in (0, 1], default 1.
    pub strength: Option<f32>,
    /// editd extension: paste the source back outside the mask (default true).
    pub paste_back: Option<bool>,
}

/// One output file.
#[derive(Debug, Serialize, ToSchema)]
pub struct OutputEntry {
    /// Always `image`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Absolute signed URL (no auth needed) or, with `sync_mode`, a `data:` URI.
    pub url: String,
    pub content_type: String,
    pub file_name: Option<String>,
    pub width: u32,
    pub height: u32,
    pub seed: u64,
}

/// `output` of a succeeded run.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunOutputWire {
    pub outputs: Vec<OutputEntry>,
    /// The same URLs as `outputs[].url` (older Runflow clients read this list).
    pub image_urls: Vec<String>,
    pub seed: u64,
    /// Milliseconds per stage.
    #[schema(value_type = Object)]
    pub timing: Value,
    /// Always null (no safety checker).
    pub nsfw_detected: Option<bool>,
}

/// `error` of a failed run (what Runflow's SDK reads).
#[derive(Debug, Serialize, ToSchema)]
pub struct RunErrorWire {
    pub code: String,
    pub message: String,
}

/// Step progress (editd extension).
#[derive(Debug, Serialize, ToSchema)]
pub struct ProgressWire {
    pub step: u32,
    pub total: u32,
}

/// The run object.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunObject {
    /// UUIDv7.
    pub id: String,
    /// The served model's id (Runflow uses an internal UUID here).
    pub model_id: String,
    pub target_type: &'static str,
    /// `queued` → `dispatching` → `running` → `succeeded` | `failed` | `canceled`.
    pub status_code: String,
    pub source_code: &'static str,
    /// The validated input with every default resolved.
    #[schema(value_type = Object)]
    pub input: Value,
    pub output: Option<RunOutputWire>,
    pub duration_ms: Option<i64>,
    pub client_ref: Option<String>,
    pub request_id: String,
    pub callback_url: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    pub failure_stage_code: Option<String>,
    pub error: Option<RunErrorWire>,
    /// editd extension: denoising progress while running.
    pub progress: Option<ProgressWire>,
    /// editd extension: how many times the run was started.
    pub attempts: u32,
    pub cost: Option<String>,
    pub flow_id: Option<String>,
    pub org_id: Option<String>,
    pub batch_id: Option<String>,
}

/// A page of runs; `first`, `next`, `previous` are cursors for the `pq` parameter.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunList {
    pub items: Vec<RunObject>,
    pub first: Option<String>,
    pub next: Option<String>,
    pub previous: Option<String>,
}

/// Body of `POST /v1/asset-uploads`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AssetUploadRequest {
    pub filename: String,
    pub mime_type: String,
    /// At most 50 MB.
    pub size_bytes: u64,
}

/// Reply of `POST /v1/asset-uploads`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AssetUploadResponse {
    pub asset_id: String,
    /// Signed URL to `PUT` the bytes to (no `Authorization` needed).
    pub upload_url: String,
}

/// A confirmed asset.
#[derive(Debug, Serialize, ToSchema)]
pub struct AssetObject {
    pub id: String,
    pub name: String,
    /// Signed download URL; accepted as an image URL, as is `runflow://assets/{id}`.
    pub url: String,
    pub mime_type: String,
    pub size_bytes: u64,
    pub created_at: String,
}

/// `GET /v1/health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthBody {
    pub ok: bool,
}

/// `GET /v1/readiness` when ready.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadinessBody {
    pub ok: bool,
    /// `ready`, `loading` or `failed: …`.
    pub model: String,
    pub store: String,
    pub draining: bool,
}

/// `GET /v1/auth/me`.
#[derive(Debug, Serialize, ToSchema)]
pub struct MeBody {
    pub ok: bool,
    pub auth: &'static str,
    pub model_id: String,
    pub model_aliases: Vec<String>,
}

/// Reply of `PUT` to an upload URL.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadedBody {
    pub asset_id: String,
    pub size_bytes: u64,
}

fn status_str(s: RunStatus) -> String {
    s.as_str().to_string()
}

/// Renders a stored run; output files get fresh signed URLs.
pub fn render_run(run: &Run, urls: &UrlCtx) -> RunObject {
    let output = run.output.as_ref().map(|o| {
        let outputs: Vec<OutputEntry> = o
            .images
            .iter()
            .map(|img| {
                let url = match (&img.data_uri, &img.file) {
                    (Some(d), _) => d.clone(),
                    (None, Some(f)) => urls.signed("GET", &format!("/v1/files/{}/{f}", run.id)),
                    (None, None) => String::new(),
                };
                OutputEntry {
                    kind: "image",
                    url,
                    content_type: img.content_type.clone(),
                    file_name: img.file.clone(),
                    width: img.width,
                    height: img.height,
                    seed: img.seed,
                }
            })
            .collect();
        RunOutputWire {
            image_urls: outputs.iter().map(|e| e.url.clone()).collect(),
            outputs,
            seed: o.seed,
            timing: Value::Object(o.timing.clone()),
            nsfw_detected: None,
        }
    });
    let duration_ms = run
        .completed_at
        .map(|c| (c - run.started_at.unwrap_or(run.created_at)).num_milliseconds());
    RunObject {
        id: run.id.to_string(),
        model_id: run.model_id.clone(),
        target_type: "model",
        status_code: status_str(run.status),
        source_code: "api",
        input: run.job.to_echo(),
        output,
        duration_ms,
        client_ref: run.client_ref.clone(),
        request_id: run.request_id.clone(),
        callback_url: run.callback_url.clone(),
        metadata: run.metadata.clone(),
        created_at: iso(run.created_at),
        started_at: run.started_at.map(iso),
        completed_at: run.completed_at.map(iso),
        failure_code: run.failure.as_ref().map(|f| f.code.clone()),
        failure_message: run.failure.as_ref().map(|f| f.message.clone()),
        failure_stage_code: run.failure.as_ref().map(|f| f.stage.clone()),
        error: run.failure.as_ref().map(|f| RunErrorWire {
            code: f.code.clone(),
            message: f.message.clone(),
        }),
        progress: if run.status == RunStatus::Running {
            run.progress.map(|p| ProgressWire {
                step: p.step,
                total: p.total,
            })
        } else {
            None
        },
        attempts: run.attempts,
        cost: None,
        flow_id: None,
        org_id: None,
        batch_id: None,
    }
}

/// Renders a confirmed asset with a signed download URL.
pub fn render_asset(a: &Asset, urls: &UrlCtx) -> AssetObject {
    AssetObject {
        id: a.id.to_string(),
        name: a.filename.clone(),
        url: urls.signed("GET", &format!("/v1/assets/{}/content", a.id)),
        mime_type: a.mime_type.clone(),
        size_bytes: a.size_bytes.unwrap_or(a.declared_size),
        created_at: iso(a.created_at),
    }
}
