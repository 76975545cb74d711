//! Create → poll → succeeded, output download, sync mode, failures, cancel, idempotency, drain.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_poll_succeed_and_download_without_auth() {
    let s = start(SolidPipeline::fast()).await;
    let mut body = edit_body("make it red");
    body["client_ref"] = json!("job-1");
    body["metadata"] = json!({"source": "test"});
    body["input"]["image_size"] = json!("square");
    let created = s.create(&body).await;
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);
    assert!(
        ["queued", "dispatching", "running"].contains(&created["status_code"].as_str().unwrap()),
        "{created}"
    );
    // every default resolved and echoed
    let input = &created["input"];
    assert_eq!(input["num_images"], 1);
    assert_eq!(input["quality"], "high");
    assert_eq!(input["output_format"], "png");
    assert_eq!(input["image_size"], json!({"width": 512, "height": 512}));
    assert!(input["seed"].is_u64(), "{input}");
    assert!(
        input["image_urls"][0]
            .as_str()
            .unwrap()
            .starts_with("runflow://assets/"),
        "{input}"
    );
    assert!(created["created_at"].as_str().unwrap().ends_with("+00:00"));

    let done = s.wait_for(&id, &["succeeded"], T).await;
    assert_eq!(done["client_ref"], "job-1");
    assert_eq!(done["metadata"], json!({"source": "test"}));
    assert_eq!(done["input"]["num_inference_steps"], 2);
    let out = &done["output"];
    assert_eq!(out["nsfw_detected"], Value::Null);
    assert_eq!(out["seed"], done["input"]["seed"]);
    let entry = &out["outputs"][0];
    assert_eq!(
        (entry["type"].as_str(), entry["content_type"].as_str()),
        (Some("image"), Some("image/png"))
    );
    assert_eq!(
        (entry["width"].as_u64(), entry["height"].as_u64()),
        (Some(512), Some(512))
    );
    let url = entry["url"].as_str().unwrap();
    assert_eq!(out["image_urls"][0], url);
    assert!(url.starts_with(&s.base), "absolute URL: {url}");

    let r = s.http.get(url).send().await.unwrap(); // no Authorization header
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    let img = image::load_from_memory(&r.bytes().await.unwrap())
        .unwrap()
        .to_rgb8();
    assert_eq!(img.dimensions(), (512, 512));
    assert_eq!(img.get_pixel(3, 3).0, SolidPipeline::fast().color);

    // a tampered signature is refused
    let bad = url.replace("signature=", "signature=00");
    assert_envelope(
        s.http.get(bad).send().await.unwrap(),
        403,
        "INVALID_SIGNATURE",
    )
    .await;
    // extra query parameters are fine on GET /v1/runs/{id}
    assert_eq!(
        s.get(&format!("/v1/runs/{id}?add_signature=true"))
            .await
            .status(),
        200
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alias_sync_mode_and_jpeg() {
    let s = start(SolidPipeline::fast()).await;
    let mut body = edit_body("x");
    body["input"]["sync_mode"] = json!(true);
    body["input"]["output_format"] = json!("jpeg");
    body["input"]["num_images"] = json!(2);
    let r = s
        .post("/v1/models/openai/gpt-image-2/edit/runs", &body)
        .await;
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let done = s.wait_for(&id, &["succeeded"], T).await;
    let outs = done["output"]["outputs"].as_array().unwrap();
    assert_eq!(outs.len(), 2);
    for o in outs {
        assert!(o["url"]
            .as_str()
            .unwrap()
            .starts_with("data:image/jpeg;base64,"));
        assert_eq!(
            (o["width"].as_u64(), o["height"].as_u64()),
            (Some(48), Some(32))
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_run_reports_failure_and_error() {
    let s = start(SolidPipeline::fast()).await;
    let id = s.create(&edit_body("fail")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let v = s.wait_for(&id, &["failed"], T).await;
    assert_eq!(v["failure_code"], "INVALID_INPUT");
    assert_eq!(v["failure_stage_code"], "inference");
    assert_eq!(v["error"]["code"], "INVALID_INPUT");
    assert_eq!(v["error"]["message"], v["failure_message"]);
    assert_eq!(v["output"], Value::Null);

    // an undecodable image fails at the input stage
    let mut bad = edit_body("x");
    bad["input"]["image_urls"] = json!([format!("{}AAAA", &png_data_uri(8, 8)[..60])]);
    let r = s.post(&format!("/v1/models/{MODEL}/runs"), &bad).await;
    if r.status() == 201 {
        let id = r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let v = s.wait_for(&id, &["failed"], T).await;
        assert_eq!(v["failure_stage_code"], "input", "{v}");
    } else {
        assert_envelope(r, 422, "VALIDATION_ERROR").await;
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_queued_and_running() {
    let s = start(SolidPipeline::slow(Duration::from_millis(100))).await;
    s.wait_ready().await;
    let mut long = edit_body("long");
    long["input"]["num_inference_steps"] = json!(100);
    let running = s.create(&long).await["id"].as_str().unwrap().to_string();
    let queued = s.create(&edit_body("behind")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let v = s.wait_for(&running, &["running"], T).await;
    let _ = v;
    // wait for a step so progress shows
    let start_wait = Instant::now();
    loop {
        let v = s.run(&running).await;
        if v["progress"]["step"].as_u64().unwrap_or(0) >= 1 {
            assert_eq!(v["progress"]["total"], 100);
            break;
        }
        assert!(start_wait.elapsed() < T);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // queued → canceled at once
    let r = s
        .post(&format!("/v1/runs/{queued}/cancellation"), &json!({}))
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap()["status_code"], "canceled");

    // running → canceled between steps
    let t0 = Instant::now();
    let r = s
        .http
        .post(s.url(&format!("/v1/runs/{running}/cancellation")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let v = s
        .wait_for(&running, &["canceled", "succeeded", "failed"], T)
        .await;
    assert_eq!(v["status_code"], "canceled");
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "stopped within a step or two: {:?}",
        t0.elapsed()
    );
    assert!(v["progress"]["step"].is_null() || v["progress"].is_null());

    // already terminal → 200, unchanged
    let r = s
        .post(&format!("/v1/runs/{queued}/cancellation"), &json!({}))
        .await;
    assert_eq!(r.status(), 200);
    // the engine is free again
    let id = s.create(&edit_body("after")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    s.wait_for(&id, &["succeeded"], T).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_replay_and_conflict() {
    let s = start_with(never_loads(), |_| {}).await;
    let body = edit_body("idem");
    let path = format!("/v1/models/{MODEL}/runs");
    let send = |b: Value| {
        let req = s
            .http
            .post(s.url(&path))
            .bearer_auth(KEY)
            .header("Idempotency-Key", "k-1")
            .json(&b);
        async move { req.send().await.unwrap() }
    };
    let a = send(body.clone()).await;
    assert_eq!(a.status(), 201);
    let a: Value = a.json().await.unwrap();
    let b = send(body.clone()).await;
    assert_eq!(b.status(), 201);
    let b: Value = b.json().await.unwrap();
    assert_eq!(a["id"], b["id"]);
    let mut other = body.clone();
    other["input"]["prompt"] = json!("something else");
    assert_envelope(send(other).await, 409, "CONFLICT").await;
    // only one run exists
    let list: Value = s.get("/v1/runs").await.json().await.unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    // on other POSTs too
    let up = |k: &'static str, size: u64| {
        let req = s
            .http
            .post(s.url("/v1/asset-uploads"))
            .bearer_auth(KEY)
            .header("Idempotency-Key", k)
            .json(&json!({"filename": "a.png", "mime_type": "image/png", "size_bytes": size}));
        async move { req.send().await.unwrap() }
    };
    let x: Value = up("u-1", 10).await.json().await.unwrap();
    let y = up("u-1", 10).await;
    assert_eq!(y.status(), 201);
    assert_eq!(y.json::<Value>().await.unwrap()["asset_id"], x["asset_id"]);
    assert_envelope(up("u-1", 11).await, 409, "CONFLICT").await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_current_run_and_keeps_queued() {
    let s = start(SolidPipeline::slow(Duration::from_millis(60))).await;
    s.wait_ready().await;
    let mut b = edit_body("current");
    b["input"]["num_inference_steps"] = json!(20);
    let current = s.create(&b).await["id"].as_str().unwrap().to_string();
    s.wait_for(&current, &["running"], T).await;
    let queued = s.create(&edit_body("next")).await["id"]
        .as_str()
        .unwrap()
        .to_string();

    // While the current run finishes (~1.2 s): readiness 503, new runs 503.
    s.server.as_ref().unwrap().shutdown();
    assert_envelope(
        s.http.get(s.url("/v1/readiness")).send().await.unwrap(),
        503,
        "NOT_READY",
    )
    .await;
    let r = s
        .post(&format!("/v1/models/{MODEL}/runs"), &edit_body("late"))
        .await;
    assert_eq!(
        r.headers().get("retry-after").map(|v| v.to_str().unwrap()),
        Some("5")
    );
    assert_envelope(r, 503, "SERVICE_UNAVAILABLE").await;
    let dir = s.stop().await; // returns once the current run is done and HTTP has stopped

    // Restarted without a model: the drained run succeeded, the queued one is still queued.
    let s = start_in(dir, never_loads(), |_| {}).await;
    assert_eq!(s.run(&current).await["status_code"], "succeeded");
    let q = s.run(&queued).await;
    assert_eq!(
        (q["status_code"].as_str(), q["attempts"].as_u64()),
        (Some("queued"), Some(0))
    );
    let dir = s.stop().await;

    // The next start with a model runs it.
    let s = start_in(dir, SolidPipeline::fast().loader(), |_| {}).await;
    s.wait_for(&queued, &["succeeded"], T).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_the_model() {
    let s = start_with(never_loads(), |_| {}).await;
    let v = assert_envelope(
        s.http.get(s.url("/v1/readiness")).send().await.unwrap(),
        503,
        "NOT_READY",
    )
    .await;
    assert_eq!(v["errors"][0]["loc"], json!(["model"]));
    let h = s.http.get(s.url("/v1/health")).send().await.unwrap();
    assert_eq!(h.status(), 200);
    assert_eq!(h.json::<Value>().await.unwrap(), json!({"ok": true}));
    // runs are accepted and wait
    let id = s.create(&edit_body("waits")).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(s.run(&id).await["status_code"], "queued");
    assert_eq!(s.run(&id).await["input"]["num_inference_steps"], 2);
    s.stop().await;

    let s = start(SolidPipeline::fast()).await;
    s.wait_ready().await;
    let v: Value = s
        .http
        .get(s.url("/v1/readiness"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["ok"], true);
    let me = s.get("/v1/auth/me").await;
    assert_eq!(me.status(), 200);
    assert_eq!(me.json::<Value>().await.unwrap()["model_id"], MODEL);
    s.stop().await;
}
