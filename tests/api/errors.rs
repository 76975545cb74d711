//! Every error path answers the envelope `{code, message, errors}` as application/json.

use serde_json::{json, Value};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_default_deny() {
    let s = start_with(never_loads(), |_| {}).await;
    let run_id = uuid::Uuid::now_v7();
    for (method, path) in [
        ("GET", "/v1/runs".to_string()),
        ("GET", format!("/v1/runs/{run_id}")),
        ("POST", format!("/v1/models/{MODEL}/runs")),
        ("POST", format!("/v1/runs/{run_id}/cancellation")),
        ("POST", "/v1/asset-uploads".to_string()),
        ("GET", "/v1/auth/me".to_string()),
        ("GET", "/v1/no-such-route".to_string()),
    ] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = s
            .http
            .request(m.clone(), s.url(&path))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap()),
            Some("Bearer")
        );
        assert_envelope(r, 401, "UNAUTHORIZED").await;
        let r = s
            .http
            .request(m, s.url(&path))
            .bearer_auth("editd_wrong")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_envelope(r, 401, "UNAUTHORIZED").await;
    }
    // public probes
    assert_eq!(
        s.http
            .get(s.url("/v1/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_for_every_client_error() {
    let s = start_with(never_loads(), |c| c.max_queue = 2).await;
    let runs = format!("/v1/models/{MODEL}/runs");

    // 404s
    assert_envelope(
        s.get(&format!("/v1/runs/{}", uuid::Uuid::now_v7())).await,
        404,
        "RUN_NOT_FOUND",
    )
    .await;
    assert_envelope(s.get("/v1/runs/not-a-uuid").await, 404, "RUN_NOT_FOUND").await;
    assert_envelope(
        s.post("/v1/models/acme/unknown/runs", &edit_body("x"))
            .await,
        404,
        "MODEL_NOT_FOUND",
    )
    .await;
    assert_envelope(s.get("/v1/nope").await, 404, "NOT_FOUND").await;
    assert_envelope(
        s.post(&format!("/v1/models/{MODEL}/batches"), &json!({}))
            .await,
        404,
        "NOT_FOUND",
    )
    .await;
    // 405
    let r = s
        .http
        .delete(s.url("/v1/runs"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_envelope(r, 405, "METHOD_NOT_ALLOWED").await;
    // 400 malformed JSON, 415 wrong content type
    let r = s
        .http
        .post(s.url(&runs))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body("{\"input\": ")
        .send()
        .await
        .unwrap();
    assert_envelope(r, 400, "INVALID_JSON").await;
    let r = s
        .http
        .post(s.url(&runs))
        .bearer_auth(KEY)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_envelope(r, 415, "UNSUPPORTED_MEDIA_TYPE").await;
    let r = s
        .http
        .post(s.url(&runs))
        .bearer_auth(KEY)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_envelope(r, 415, "UNSUPPORTED_MEDIA_TYPE").await;
    // 422 with FastAPI-style items
    let bad = json!({"input": {"prompt": "", "image_urls": [], "num_images": 7, "colour": "blue"}});
    let v = assert_envelope(s.post(&runs, &bad).await, 422, "VALIDATION_ERROR").await;
    let errs = v["errors"].as_array().unwrap();
    let locs: Vec<Value> = errs.iter().map(|e| e["loc"].clone()).collect();
    for want in [
        json!(["body", "input", "colour"]),
        json!(["body", "input", "prompt"]),
        json!(["body", "input", "image_urls"]),
        json!(["body", "input", "num_images"]),
    ] {
        assert!(locs.contains(&want), "{want} missing from {locs:?}");
    }
    assert!(errs
        .iter()
        .all(|e| e["msg"].is_string() && e["type"].is_string()));
    let v = assert_envelope(
        s.post(&runs, &json!({"nothing": 1})).await,
        422,
        "VALIDATION_ERROR",
    )
    .await;
    assert_eq!(v["errors"][0]["loc"], json!(["body", "input"]));
    let v = assert_envelope(s.post(&runs, &json!({"input": {"prompt": "p", "image_urls": ["runflow://assets/00000000-0000-7000-8000-000000000000"]}})).await, 422, "VALIDATION_ERROR").await;
    assert_eq!(
        v["errors"][0]["loc"],
        json!(["body", "input", "image_urls", 0])
    );
    let v = assert_envelope(
        s.post(
            &runs,
            &json!({"input": {"prompt": "p", "image_urls": ["data:text/plain;base64,aGVsbG8="]}}),
        )
        .await,
        422,
        "VALIDATION_ERROR",
    )
    .await;
    assert!(v["message"].as_str().unwrap().contains("image_urls"), "{v}");
    // image URLs the SSRF guard refuses without any I/O: plain http, loopback literals
    for url in [
        "http://example.com/a.png",
        "https://127.0.0.1/a.png",
        "https://[::ffff:127.0.0.1]/a.png",
        "https://169.254.169.254/x",
    ] {
        let body = json!({"input": {"prompt": "p", "image_urls": [url]}});
        let v = assert_envelope(s.post(&runs, &body).await, 422, "VALIDATION_ERROR").await;
        assert_eq!(
            v["errors"][0]["loc"],
            json!(["body", "input", "image_urls", 0]),
            "{url}: {v}"
        );
    }
    // list query validation
    assert_envelope(s.get("/v1/runs?limit=0").await, 422, "VALIDATION_ERROR").await;
    assert_envelope(s.get("/v1/runs?limit=501").await, 422, "VALIDATION_ERROR").await;
    assert_envelope(
        s.get("/v1/runs?q=colour:blue").await,
        422,
        "VALIDATION_ERROR",
    )
    .await;
    assert_envelope(
        s.get("/v1/runs?sort_by=prompt:asc").await,
        422,
        "VALIDATION_ERROR",
    )
    .await;

    // 413: over the 2 MB limit of ordinary routes, and over the 64 MB limit of run creation
    let big =
        json!({"filename": "x".repeat(3 * 1024 * 1024), "mime_type": "image/png", "size_bytes": 1});
    assert_envelope(
        s.post("/v1/asset-uploads", &big).await,
        413,
        "PAYLOAD_TOO_LARGE",
    )
    .await;
    let huge = vec![b' '; 64 * 1024 * 1024 + 1];
    let r = s
        .http
        .post(s.url(&runs))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_envelope(r, 413, "PAYLOAD_TOO_LARGE").await;
    assert_envelope(
        s.post(
            "/v1/asset-uploads",
            &json!({"filename": "a", "mime_type": "image/png", "size_bytes": 60_000_000}),
        )
        .await,
        413,
        "PAYLOAD_TOO_LARGE",
    )
    .await;

    // 429 when the queue is full (the model never loads, so runs stay queued)
    s.create(&edit_body("1")).await;
    s.create(&edit_body("2")).await;
    let r = s.post(&runs, &edit_body("3")).await;
    assert_eq!(
        r.headers().get("retry-after").map(|v| v.to_str().unwrap()),
        Some("5")
    );
    assert_envelope(r, 429, "QUEUE_FULL").await;

    // 503 while draining: see lifecycle::drain_finishes_current_run_and_keeps_queued
    s.stop().await;
}
