//! Asset uploads (create → signed PUT without auth → confirm) and runs that use them.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_confirm_and_use_in_a_run() {
    let s = start(SolidPipeline::fast()).await;
    let bytes = png_bytes(40, 24);
    let r = s
        .post(
            "/v1/asset-uploads",
            &json!({"filename": "in.png", "mime_type": "image/png", "size_bytes": bytes.len()}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let up: Value = r.json().await.unwrap();
    let id = up["asset_id"].as_str().unwrap().to_string();
    let upload_url = up["upload_url"].as_str().unwrap();
    assert!(upload_url.starts_with(&s.base));

    // confirming before the bytes arrive is a conflict
    assert_envelope(
        s.post(&format!("/v1/asset-uploads/{id}/confirmations"), &json!({}))
            .await,
        409,
        "CONFLICT",
    )
    .await;
    // a PUT with a broken signature is refused
    let bad = upload_url.replace("signature=", "signature=ff");
    assert_envelope(
        s.http.put(bad).body(bytes.clone()).send().await.unwrap(),
        403,
        "INVALID_SIGNATURE",
    )
    .await;
    let r = s
        .http
        .put(upload_url)
        .header("content-type", "image/png")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = s
        .http
        .post(s.url(&format!("/v1/asset-uploads/{id}/confirmations")))
        .bearer_auth(KEY)
        .json(&json!({"folder_id": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let asset: Value = r.json().await.unwrap();
    assert_eq!(asset["id"], id);
    assert_eq!(asset["size_bytes"], bytes.len());
    assert_eq!(asset["name"], "in.png");
    assert_eq!(asset["mime_type"], "image/png");
    let got = s
        .http
        .get(asset["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().as_ref(), bytes.as_slice());
    // an empty confirmation body works too
    let r = s
        .http
        .post(s.url(&format!("/v1/asset-uploads/{id}/confirmations")))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    for image_url in [
        format!("runflow://assets/{id}"),
        asset["url"].as_str().unwrap().to_string(),
    ] {
        let body = json!({"input": {"prompt": "edit", "image_urls": [image_url], "num_inference_steps": 1}});
        let run = s.create(&body).await;
        assert_eq!(
            run["input"]["image_urls"][0],
            format!("runflow://assets/{id}")
        );
        let done = s
            .wait_for(
                run["id"].as_str().unwrap(),
                &["succeeded"],
                Duration::from_secs(20),
            )
            .await;
        let o = &done["output"]["outputs"][0];
        assert_eq!(
            (o["width"].as_u64(), o["height"].as_u64()),
            (Some(40), Some(24))
        );
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mask_from_data_uri_runs() {
    let s = start(SolidPipeline::fast()).await;
    let mask = {
        use base64::Engine as _;
        let m =
            image::GrayImage::from_fn(48, 32, |x, _| image::Luma([if x < 24 { 255 } else { 0 }]));
        let mut out = std::io::Cursor::new(Vec::new());
        m.write_to(&mut out, image::ImageFormat::Png).unwrap();
        format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(out.into_inner())
        )
    };
    let mut body = edit_body("inpaint");
    body["input"]["mask_url"] = json!(mask);
    let run = s.create(&body).await;
    assert!(run["input"]["mask_url"]
        .as_str()
        .unwrap()
        .starts_with("runflow://assets/"));
    s.wait_for(
        run["id"].as_str().unwrap(),
        &["succeeded"],
        Duration::from_secs(20),
    )
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_image_url_is_fetched_when_allowed() {
    // A local image server; private addresses and http must be allowed explicitly.
    let png = png_bytes(30, 20);
    let app = axum::Router::new().route(
        "/img.png",
        axum::routing::get(move || {
            let png = png.clone();
            async move { ([("content-type", "image/png")], png) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let s = start_with(SolidPipeline::fast().loader(), |c| {
        c.allow_private_networks = true;
        c.allow_http_image_urls = true;
    })
    .await;
    let body = json!({"input": {"prompt": "p", "image_urls": [format!("http://{addr}/img.png")], "num_inference_steps": 1}});
    let run = s.create(&body).await;
    let done = s
        .wait_for(
            run["id"].as_str().unwrap(),
            &["succeeded", "failed"],
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(done["status_code"], "succeeded", "{done}");
    assert_eq!(done["output"]["outputs"][0]["width"], 30);

    // A 404 from the image server fails the run at the input stage.
    let body =
        json!({"input": {"prompt": "p", "image_urls": [format!("http://{addr}/missing.png")]}});
    let run = s.create(&body).await;
    let failed = s
        .wait_for(
            run["id"].as_str().unwrap(),
            &["succeeded", "failed"],
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(
        (
            failed["status_code"].as_str(),
            failed["failure_stage_code"].as_str()
        ),
        (Some("failed"), Some("input"))
    );
    assert_eq!(failed["failure_code"], "FETCH_FAILED");
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("image_urls[0]"),
        "{failed}"
    );
    s.stop().await;
}
