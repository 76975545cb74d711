//! Test support: a test-double pipeline (solid colours after N steps, honours cancel) and an
//! in-process server on port 0 with a real reqwest client. Test doubles live only under tests/.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use editd::config::ServeConfig;
use editd::engine::PipelineLoader;
use editd::pipeline::{
    EditInputs, EditOutput, EditPipeline, PipelineDefaults, PipelineError, StageTimings, StepCtx,
};
use image::{Rgb, RgbImage};
use serde_json::{json, Value};

pub const KEY: &str = "editd_test_key_0123";
pub const MODEL: &str = "test/solid-edit";

/// Returns `num_images` solid images of the requested (or first input's) size after
/// `steps` steps of `delay` each; prompt `"fail"` fails; checks cancel before every step.
#[derive(Clone)]
pub struct SolidPipeline {
    pub delay: Duration,
    pub color: [u8; 3],
}

impl SolidPipeline {
    pub fn fast() -> Self {
        SolidPipeline {
            delay: Duration::from_millis(5),
            color: [200, 30, 60],
        }
    }
    pub fn slow(step: Duration) -> Self {
        SolidPipeline {
            delay: step,
            color: [10, 120, 240],
        }
    }
    pub fn loader(self) -> PipelineLoader {
        Box::new(move || Ok(Box::new(self) as Box<dyn EditPipeline>))
    }
}

impl EditPipeline for SolidPipeline {
    fn defaults(&self) -> PipelineDefaults {
        PipelineDefaults {
            model_id: MODEL.into(),
            is_distilled: true,
            default_steps: 4,
            default_guidance: 1.0,
        }
    }

    fn run(
        &mut self,
        job: &EditInputs,
        ctx: &mut dyn StepCtx,
    ) -> Result<EditOutput, PipelineError> {
        if job.prompt == "fail" {
            return Err(PipelineError::InvalidInput(
                "the test double was told to fail".into(),
            ));
        }
        let (w, h) = job.size.unwrap_or_else(|| {
            job.images
                .first()
                .map(|i| i.dimensions())
                .unwrap_or((64, 64))
        });
        let total = job.steps * job.num_images;
        for step in 1..=total {
            if ctx.cancelled() {
                return Err(PipelineError::Cancelled);
            }
            std::thread::sleep(self.delay);
            ctx.on_step(step, total);
        }
        Ok(EditOutput {
            images: (0..job.num_images)
                .map(|_| RgbImage::from_pixel(w, h, Rgb(self.color)))
                .collect(),
            seeds: (0..job.num_images as u64).map(|i| job.seed + i).collect(),
            width: w,
            height: h,
            steps: job.steps,
            timings: StageTimings::default(),
            latents: None,
        })
    }
}

/// A loader that never finishes loading within a test (readiness stays 503, runs stay queued).
pub fn never_loads() -> PipelineLoader {
    Box::new(|| {
        std::thread::sleep(Duration::from_secs(3600));
        Err(PipelineError::Load("never".into()))
    })
}

pub struct TestServer {
    pub server: Option<editd::api::Server>,
    pub base: String,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
}

pub fn config(dir: &std::path::Path) -> ServeConfig {
    let mut cfg = ServeConfig::new(MODEL, dir);
    cfg.api_keys = vec![KEY.to_string()];
    cfg
}

pub async fn start_with(
    loader: PipelineLoader,
    tweak: impl FnOnce(&mut ServeConfig),
) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    start_in(dir, loader, tweak).await
}

pub async fn start_in(
    dir: tempfile::TempDir,
    loader: PipelineLoader,
    tweak: impl FnOnce(&mut ServeConfig),
) -> TestServer {
    let mut cfg = config(dir.path());
    tweak(&mut cfg);
    let server = editd::api::serve_with(cfg, loader)
        .await
        .expect("server starts");
    let base = format!("http://{}", server.local_addr());
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    TestServer {
        server: Some(server),
        base,
        http,
        dir,
    }
}

pub async fn start(p: SolidPipeline) -> TestServer {
    start_with(p.loader(), |_| {}).await
}

/// A small PNG as a data: URI.
pub fn png_data_uri(w: u32, h: u32) -> String {
    use base64::Engine as _;
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png_bytes(w, h))
    )
}

pub fn png_bytes(w: u32, h: u32) -> Vec<u8> {
    let img = RgbImage::from_fn(w, h, |x, y| Rgb([(x * 7) as u8, (y * 5) as u8, 90]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

pub fn edit_body(prompt: &str) -> Value {
    json!({"input": {"prompt": prompt, "image_urls": [png_data_uri(48, 32)], "num_inference_steps": 2}})
}

impl TestServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(KEY)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
    }

    /// Creates a run on the served model and returns the run object (asserting 201).
    pub async fn create(&self, body: &Value) -> Value {
        let r = self.post(&format!("/v1/models/{MODEL}/runs"), body).await;
        let status = r.status();
        let v: Value = r.json().await.unwrap();
        assert_eq!(status, 201, "{v}");
        v
    }

    pub async fn run(&self, id: &str) -> Value {
        let r = self.get(&format!("/v1/runs/{id}")).await;
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    /// Polls until `status_code` is one of `want` (panics after `timeout`).
    pub async fn wait_for(&self, id: &str, want: &[&str], timeout: Duration) -> Value {
        let start = Instant::now();
        loop {
            let v = self.run(id).await;
            if want.contains(&v["status_code"].as_str().unwrap()) {
                return v;
            }
            assert!(
                start.elapsed() < timeout,
                "run {id} still {} after {timeout:?}: {v}",
                v["status_code"]
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_ready(&self) {
        let start = Instant::now();
        while self
            .http
            .get(self.url("/v1/readiness"))
            .send()
            .await
            .unwrap()
            .status()
            != 200
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "server never became ready"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Graceful stop; returns the data dir for a restart.
    pub async fn stop(mut self) -> tempfile::TempDir {
        let s = self.server.take().unwrap();
        s.shutdown();
        s.wait().await;
        self.dir
    }
}

/// Asserts an error envelope with `code` and a JSON content type; returns the body.
pub async fn assert_envelope(r: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(r.status().as_u16(), status, "status");
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert!(ct.starts_with("application/json"), "content-type {ct:?}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], code, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(v.get("errors").is_some(), "{v}");
    v
}
