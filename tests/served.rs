//! The real edit sampler served over HTTP, on the tiny FLUX.2 klein checkpoint (CPU, f32):
//! a run with `data:` URIs gives the same PNG as `editd edit` for the same seed; a masked run keeps
//! every pixel outside the mask equal to the source; cancel mid-run stops within a step; and the
//! OpenAI `POST /v1/images/edits` endpoint answers the official client's multipart shape.

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use base64::Engine as _;
use editd::config::{EditArgs, OnOff};
use editd::pipeline::load::{load_pipeline, PipelineConfig};
use image::{GrayImage, Luma, Rgb, RgbImage};
use serde_json::{json, Value};
use support::{start_with, TestServer, KEY};

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/flux2/tiny_a");
const ALIAS: &str = "openai/gpt-image-2/edit";

async fn start_tiny() -> TestServer {
    let loader = Box::new(|| {
        load_pipeline(&PipelineConfig {
            model: TINY.into(),
            device: "cpu".into(),
            dtype: Some("f32".into()),
            offline: true,
        })
    });
    let s = start_with(loader, |_| {}).await;
    s.wait_ready().await;
    s
}

fn source() -> RgbImage {
    RgbImage::from_fn(64, 80, |x, y| {
        Rgb([(x * 4) as u8, (y * 3) as u8, ((x + y) * 2) as u8])
    })
}

fn png(img: &image::DynamicImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn data_uri(bytes: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// Downloads the first output image of a succeeded run (no Authorization header, as clients do).
async fn output_image(run: &Value) -> RgbImage {
    let url = run["output"]["outputs"][0]["url"]
        .as_str()
        .expect("output url");
    let bytes = reqwest::get(url).await.unwrap().bytes().await.unwrap();
    image::load_from_memory(&bytes).unwrap().to_rgb8()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_edit_equals_editd_edit_for_the_same_seed() {
    let s = start_tiny().await;
    let src = png(&image::DynamicImage::ImageRgb8(source()));
    let body = json!({"input": {
        "prompt": "make it look like dusk", "image_urls": [data_uri(&src)], "seed": 1234
    }});
    let created = s.post(&format!("/v1/models/{ALIAS}/runs"), &body).await;
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let run = s
        .wait_for(&id, &["succeeded", "failed"], Duration::from_secs(60))
        .await;
    assert_eq!(run["status_code"], "succeeded", "{run}");
    assert_eq!(run["output"]["seed"], 1234);
    let served = output_image(&run).await;

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("src.png"), &src).unwrap();
    let args = EditArgs {
        model: TINY.into(),
        prompt: "make it look like dusk".into(),
        images: vec![dir.path().join("src.png")],
        mask: None,
        width: None,
        height: None,
        steps: None,
        guidance: None,
        strength: 1.0,
        seed: Some(1234),
        noise: None,
        paste_back: OnOff::On,
        device: "cpu".into(),
        dtype: Some("f32".into()),
        offline: true,
        out: dir.path().join("cli.png"),
        latents_out: None,
    };
    tokio::task::spawn_blocking(move || editd::cli_edit::execute(&args).map(|_| ()))
        .await
        .unwrap()
        .unwrap();
    let cli = image::open(dir.path().join("cli.png")).unwrap().to_rgb8();
    assert_eq!(served.dimensions(), (64, 80));
    assert!(
        served == cli,
        "served PNG differs from editd edit's for the same seed"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masked_run_keeps_pixels_outside_the_mask() {
    let s = start_tiny().await;
    let src = source();
    let mask = GrayImage::from_fn(64, 80, |x, y| {
        Luma([if (16..48).contains(&x) && (24..56).contains(&y) {
            255
        } else {
            0
        }])
    });
    let body = json!({"input": {
        "prompt": "a red ball",
        "image_urls": [data_uri(&png(&image::DynamicImage::ImageRgb8(src.clone())))],
        "mask_url": data_uri(&png(&image::DynamicImage::ImageLuma8(mask.clone()))),
        "seed": 5
    }});
    let run = s.create(&body).await;
    let run = s
        .wait_for(
            run["id"].as_str().unwrap(),
            &["succeeded", "failed"],
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(run["status_code"], "succeeded", "{run}");
    let out = output_image(&run).await;
    assert_eq!(out.dimensions(), src.dimensions());
    let mut changed_inside = 0;
    for (x, y, p) in out.enumerate_pixels() {
        if mask.get_pixel(x, y).0[0] == 0 {
            assert_eq!(
                p,
                src.get_pixel(x, y),
                "pixel ({x},{y}) outside the mask changed"
            );
        } else if p != src.get_pixel(x, y) {
            changed_inside += 1;
        }
    }
    assert!(
        changed_inside > 100,
        "the masked area was not repainted ({changed_inside} px)"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_run_stops_within_a_step() {
    let s = start_tiny().await;
    let body = json!({"input": {
        "prompt": "slow", "image_urls": [data_uri(&png(&image::DynamicImage::ImageRgb8(source())))],
        "num_inference_steps": 100
    }});
    let run = s.create(&body).await;
    let id = run["id"].as_str().unwrap().to_string();
    let start = Instant::now();
    let at_cancel = loop {
        let v = s.run(&id).await;
        if v["progress"]["step"].as_u64().unwrap_or(0) >= 2 {
            break v["progress"]["step"].as_u64().unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "never progressed: {v}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let r = s
        .post(&format!("/v1/runs/{id}/cancellation"), &json!({}))
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    let v = s
        .wait_for(&id, &["canceled"], Duration::from_secs(30))
        .await;
    let last = v["progress"]["step"].as_u64().unwrap_or(at_cancel);
    assert!(last < 100, "ran to the end: {v}");
    // Progress is reported after each step; the cancel is seen before the next one. Allow the
    // step in flight plus the polling slack of this test.
    assert!(last <= at_cancel + 5, "kept going: {at_cancel} -> {last}");
    s.stop().await;
}

async fn openai_edit(s: &TestServer, form: reqwest::multipart::Form) -> (u16, Value) {
    let r = s
        .http
        .post(s.url("/v1/images/edits"))
        .bearer_auth(KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/json"), "{ct}");
    (status, r.json().await.unwrap())
}

fn image_part(bytes: Vec<u8>, name: &str) -> reqwest::multipart::Part {
    reqwest::multipart::Part::bytes(bytes)
        .file_name(name.to_string())
        .mime_str("image/png")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_images_edits_answers_the_official_client_shape() {
    let s = start_tiny().await;
    let a = png(&image::DynamicImage::ImageRgb8(source()));
    let b = png(&image::DynamicImage::ImageRgb8(RgbImage::from_pixel(
        72,
        64,
        Rgb([200, 30, 30]),
    )));
    // The official SDKs send repeated `image[]` parts for a list of images.
    let form = reqwest::multipart::Form::new()
        .part("image[]", image_part(a.clone(), "a.png"))
        .part("image[]", image_part(b, "b.png"))
        .text("prompt", "put the red square on the left")
        .text("model", "gpt-image-2")
        .text("n", "2")
        .text("size", "80x64")
        .text("quality", "low")
        .text("output_format", "png");
    let (status, v) = openai_edit(&s, form).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["size"], "80x64");
    assert_eq!(v["quality"], "low");
    assert_eq!(v["output_format"], "png");
    assert!(v["created"].as_i64().unwrap() > 0);
    for d in v["data"].as_array().unwrap() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(d["b64_json"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            image::load_from_memory(&bytes)
                .unwrap()
                .to_rgb8()
                .dimensions(),
            (80, 64)
        );
    }
    // The run went through the same queue and store.
    let list: Value = s.get("/v1/runs?limit=10").await.json().await.unwrap();
    assert!(list["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["status_code"] == "succeeded"));

    let refused = reqwest::multipart::Form::new()
        .part("image", image_part(a.clone(), "a.png"))
        .text("prompt", "x")
        .text("background", "transparent");
    let (status, v) = openai_edit(&s, refused).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["param"], "background");

    let no_prompt = reqwest::multipart::Form::new().part("image", image_part(a, "a.png"));
    let (status, v) = openai_edit(&s, no_prompt).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["param"], "prompt");
    s.stop().await;
}
