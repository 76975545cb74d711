//! Run routes: create (`POST /v1/models/{model_id}/runs`), get, list (`q`, `sort_by`, cursor
//! pages) and cancel.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde_json::json;
use uuid::Uuid;

use super::error::{ApiError, ErrorBody};
use super::extract::{idem_key, idem_replay, idem_store, JsonBody};
use super::wire::{render_run, CreateRunRequest, RunList, RunObject};
use super::AppState;
use crate::runs::service::Created;
use crate::runs::store::{CancelOutcome, Cursor, ListQuery, SortDir};
use crate::runs::{FieldError, RunStatus, RunsError};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn parse_run_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| RunsError::RunNotFound(id.to_string()).into())
}

/// Create an edit run. `model_id` may contain slashes (`openai/gpt-image-2/edit`).
#[utoipa::path(
    post,
    path = "/v1/models/{model_id}/runs",
    tag = "runs",
    params(
        ("model_id" = String, Path, description = "Served model id or alias; may contain slashes"),
        ("Idempotency-Key" = Option<String>, Header, description = "Same key and body → the same run; other body → 409"),
    ),
    request_body = CreateRunRequest,
    responses(
        (status = 201, description = "Run queued (committed to the store)", body = RunObject),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 404, description = "Unknown model", body = ErrorBody),
        (status = 409, description = "Idempotency-Key reused with another body", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
        (status = 422, description = "Invalid input", body = ErrorBody),
        (status = 429, description = "Queue full", body = ErrorBody),
        (status = 503, description = "Shutting down", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_run(
    State(st): State<AppState>,
    Path(rest): Path<String>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let Some(model) = rest.strip_suffix("/runs") else {
        return Err(ApiError::RouteNotFound(format!("POST /v1/models/{rest}")));
    };
    let scope = format!("POST /v1/models/{model}/runs");
    let key = idem_key(&headers, &scope, &body.raw)?;
    let created = st.svc.create_run(model, &body.value, key).await?;
    let run = match created {
        Created::New(r) => {
            tracing::info!(run_id = %r.id, "run queued");
            r
        }
        Created::Replayed(r) => r,
    };
    Ok((StatusCode::CREATED, Json(render_run(&run, &st.urls))).into_response())
}

/// Get a run (extra query parameters such as `add_signature=true` are ignored).
#[utoipa::path(
    get,
    path = "/v1/runs/{id}",
    tag = "runs",
    params(("id" = String, Path, description = "Run id (UUID)")),
    responses(
        (status = 200, body = RunObject),
        (status = 401, body = ErrorBody),
        (status = 404, description = "RUN_NOT_FOUND", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get_run(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RunObject>, ApiError> {
    let run = st.svc.get_run(parse_run_id(&id)?).await?;
    Ok(Json(render_run(&run, &st.urls)))
}

fn qerr(param: &str, kind: &str, msg: impl Into<String>) -> FieldError {
    FieldError::new(&[json!("query"), json!(param)], kind, msg)
}

/// Filter terms of `q`: `field:value`, `field=value`, `field.EQ:'value'`, joined by `AND`.
fn parse_q(q: &str, query: &mut ListQuery, errors: &mut Vec<FieldError>) -> bool {
    let mut satisfiable = true;
    let mut status: Option<RunStatus> = None;
    let terms: Vec<String> = {
        let mut v = Vec::new();
        let mut cur = Vec::new();
        for w in q.split_whitespace() {
            if w.eq_ignore_ascii_case("and") {
                v.push(cur.join(" "));
                cur.clear();
            } else {
                cur.push(w);
            }
        }
        v.push(cur.join(" "));
        v.into_iter().filter(|t| !t.is_empty()).collect()
    };
    for term in terms {
        let Some(pos) = term.find([':', '=']) else {
            errors.push(qerr(
                "q",
                "value_error",
                format!("cannot parse filter term {term:?}; expected field:value"),
            ));
            continue;
        };
        let (lhs, value) = (term[..pos].trim(), term[pos + 1..].trim());
        let value = value.trim_matches(|c| c == '\'' || c == '"');
        let (field, op) = match lhs.split_once('.') {
            Some((f, op)) => (f, op),
            None => (lhs, "EQ"),
        };
        if !op.eq_ignore_ascii_case("eq") {
            errors.push(qerr(
                "q",
                "value_error",
                format!("operator {op:?} is not supported; use EQ"),
            ));
            continue;
        }
        match field {
            "status_code" | "status" => match RunStatus::parse(value) {
                Some(s) => {
                    if status.is_some_and(|p| p != s) {
                        satisfiable = false;
                    }
                    status = Some(s);
                }
                None => errors.push(qerr("q", "enum", format!("unknown status_code {value:?}"))),
            },
            "client_ref" => {
                if query.client_ref.as_deref().is_some_and(|c| c != value) {
                    satisfiable = false;
                }
                query.client_ref = Some(value.to_string());
            }
            "model_id" => query.model_id = Some(value.to_string()),
            other => errors.push(qerr(
                "q",
                "value_error",
                format!("cannot filter on {other:?}; supported: status_code, client_ref, model_id"),
            )),
        }
    }
    query.statuses = status.into_iter().collect();
    satisfiable
}

fn encode_cursor(c: Cursor) -> String {
    let s = match c {
        Cursor::First => "f".to_string(),
        Cursor::After(id) => format!("a:{id}"),
        Cursor::Before(id) => format!("b:{id}"),
    };
    B64.encode(s)
}

fn decode_cursor(s: &str) -> Option<Cursor> {
    let raw = String::from_utf8(B64.decode(s.trim()).ok()?).ok()?;
    match raw.split_once(':') {
        None if raw == "f" => Some(Cursor::First),
        Some(("a", id)) => Uuid::parse_str(id).ok().map(Cursor::After),
        Some(("b", id)) => Uuid::parse_str(id).ok().map(Cursor::Before),
        _ => None,
    }
}

/// List runs, newest first by default.
#[utoipa::path(
    get,
    path = "/v1/runs",
    tag = "runs",
    params(
        ("limit" = Option<u32>, Query, description = "1–500, default 20"),
        ("sort_by" = Option<String>, Query, description = "`created_at:desc` (default) or `created_at:asc`"),
        ("q" = Option<String>, Query, description = "Filters joined by AND: `status_code:X`, `client_ref:X`, `client_ref.EQ:'X'`, `model_id:X`"),
        ("pq" = Option<String>, Query, description = "Cursor from `first`, `next` or `previous`"),
    ),
    responses(
        (status = 200, body = RunList),
        (status = 401, body = ErrorBody),
        (status = 422, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_runs(
    State(st): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<RunList>, ApiError> {
    let mut errors = Vec::new();
    let limit = match params.get("limit").map(|s| s.parse::<u32>()) {
        None => 20,
        Some(Ok(n)) if (1..=500).contains(&n) => n,
        Some(_) => {
            errors.push(qerr(
                "limit",
                "value_error",
                "limit must be an integer from 1 to 500",
            ));
            20
        }
    };
    let sort = match params.get("sort_by").map(|s| s.trim()) {
        None | Some("") => SortDir::Desc,
        Some(s) => match s.split_once(':').unwrap_or((s, "asc")) {
            ("created_at" | "id", d) if d.eq_ignore_ascii_case("desc") => SortDir::Desc,
            ("created_at" | "id", d) if d.eq_ignore_ascii_case("asc") => SortDir::Asc,
            _ => {
                errors.push(qerr(
                    "sort_by",
                    "value_error",
                    "sort_by must be created_at:asc or created_at:desc",
                ));
                SortDir::Desc
            }
        },
    };
    let cursor = match params.get("pq").or_else(|| params.get("cursor")) {
        None => Cursor::First,
        Some(c) => decode_cursor(c).unwrap_or_else(|| {
            errors.push(qerr("pq", "value_error", "invalid cursor"));
            Cursor::First
        }),
    };
    let mut query = ListQuery {
        statuses: vec![],
        client_ref: None,
        model_id: None,
        sort,
        limit,
        cursor,
    };
    let satisfiable = match params.get("q") {
        Some(q) => parse_q(q, &mut query, &mut errors),
        None => true,
    };
    if !errors.is_empty() {
        return Err(ApiError::InvalidQuery(errors));
    }
    let first = Some(encode_cursor(Cursor::First));
    if !satisfiable {
        return Ok(Json(RunList {
            items: vec![],
            first,
            next: None,
            previous: None,
        }));
    }
    let page = st.svc.list_runs(query).await?;
    let next = page
        .has_next
        .then(|| {
            page.items
                .last()
                .map(|r| encode_cursor(Cursor::After(r.id)))
        })
        .flatten();
    let previous = page
        .has_previous
        .then(|| {
            page.items
                .first()
                .map(|r| encode_cursor(Cursor::Before(r.id)))
        })
        .flatten();
    let items = page.items.iter().map(|r| render_run(r, &st.urls)).collect();
    Ok(Json(RunList {
        items,
        first,
        next,
        previous,
    }))
}

/// Cancel a run: a queued run at once (201), a running one between denoising steps (202, the
/// run ends `canceled`); a finished run is returned unchanged (200). editd extension.
#[utoipa::path(
    post,
    path = "/v1/runs/{id}/cancellation",
    tag = "runs",
    params(("id" = String, Path, description = "Run id (UUID)")),
    responses(
        (status = 201, description = "Canceled", body = RunObject),
        (status = 202, description = "Cancel requested; the run stops after the current step", body = RunObject),
        (status = 200, description = "Already terminal; unchanged", body = RunObject),
        (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn cancel_run(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let run_id = parse_run_id(&id)?;
    let key = idem_key(
        &headers,
        &format!("POST /v1/runs/{id}/cancellation"),
        &body.raw,
    )?;
    if let Some(replay) = idem_replay(&st, &key).await? {
        return Ok(replay);
    }
    let (status, run) = match st.svc.cancel_run(run_id).await? {
        CancelOutcome::Canceled(r) => (StatusCode::CREATED, r),
        CancelOutcome::Requested(r) => (StatusCode::ACCEPTED, r),
        CancelOutcome::AlreadyTerminal(r) => (StatusCode::OK, r),
        CancelOutcome::NotFound => return Err(RunsError::RunNotFound(id).into()),
    };
    idem_store(&st, key, status, render_run(&run, &st.urls)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> (ListQuery, Vec<FieldError>, bool) {
        let mut query = ListQuery {
            statuses: vec![],
            client_ref: None,
            model_id: None,
            sort: SortDir::Desc,
            limit: 1,
            cursor: Cursor::First,
        };
        let mut errors = vec![];
        let ok = parse_q(s, &mut query, &mut errors);
        (query, errors, ok)
    }

    #[test]
    fn filter_forms() {
        let (query, errors, ok) = q("status_code:succeeded AND client_ref.EQ:'job 1'");
        assert!(errors.is_empty() && ok, "{errors:?}");
        assert_eq!(query.statuses, vec![RunStatus::Succeeded]);
        assert_eq!(query.client_ref.as_deref(), Some("job 1"));
        let (query, _, _) = q("client_ref.EQ:'tok-123' and status_code=cancelled");
        assert_eq!(query.client_ref.as_deref(), Some("tok-123"));
        assert_eq!(query.statuses, vec![RunStatus::Canceled]);
        let (_, errors, _) = q("created_at>2026");
        assert_eq!(errors.len(), 1);
        let (_, _, ok) = q("status_code:queued AND status_code:running");
        assert!(!ok);
    }

    #[test]
    fn cursors_round_trip() {
        let id = Uuid::now_v7();
        for c in [Cursor::First, Cursor::After(id), Cursor::Before(id)] {
            assert_eq!(decode_cursor(&encode_cursor(c)), Some(c));
        }
        assert_eq!(decode_cursor("!!"), None);
    }
}
