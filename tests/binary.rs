//! Tests of the real `editd` binary: OpenAPI drift, the listening line, first-start key
//! generation, durability across a real SIGKILL, and SIGTERM exit.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_editd");
const KEY: &str = "editd_binary_test_key";

#[test]
fn openapi_matches_the_committed_copy() {
    let out = std::process::Command::new(BIN)
        .arg("print-openapi")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json"))
        .unwrap_or_default();
    assert!(
        printed == committed,
        "openapi.json is out of date; regenerate it with `cargo run -- print-openapi > openapi.json`"
    );
    let doc: Value = serde_json::from_str(&printed).unwrap();
    assert!(doc["paths"]["/v1/models/{model_id}/runs"]["post"].is_object());
}

struct Proc {
    child: Child,
    base: String,
    stderr_lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// Stdout after the listening line (must stay empty).
    stdout_rest: tokio::sync::mpsc::UnboundedReceiver<String>,
}

/// Starts `editd serve` on port 0 and reads the port from its one stdout line.
async fn spawn(data: &Path, model: &str, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--model",
        model,
        "--port",
        "0",
        "--device",
        "cpu",
        "--data-dir",
    ])
    .arg(data)
    .args(extra)
    .env("EDITD_LOG", "warn")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), out.next_line())
        .await
        .expect("listening line in time")
        .unwrap()
        .unwrap();
    let base = line
        .strip_prefix("editd listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    let (out_tx, stdout_rest) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(l)) = out.next_line().await {
            let _ = out_tx.send(l);
        }
    });
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(l)) = err.next_line().await {
            let _ = tx.send(l);
        }
    });
    Proc {
        child,
        base,
        stderr_lines: rx,
        stdout_rest,
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn png_data_uri() -> String {
    use base64::Engine as _;
    let img = image::RgbImage::from_pixel(64, 64, image::Rgb([200, 20, 20]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(out.into_inner())
    )
}

async fn create(c: &reqwest::Client, base: &str, key: &str, steps: u32) -> Value {
    let body = json!({"input": {"prompt": "a red square", "image_urls": [png_data_uri()], "num_inference_steps": steps, "seed": 1}});
    let r = c
        .post(format!("{base}/v1/models/openai/gpt-image-2/edit/runs"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json().await.unwrap()
}

async fn get_run(c: &reqwest::Client, base: &str, id: &str) -> Value {
    let r = c
        .get(format!("{base}/v1/runs/{id}"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_runs_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    // A model that does not exist: the real loader fails, readiness stays 503, runs stay queued.
    let model = dir.path().join("no-such-model");
    let model = model.to_str().unwrap();
    let c = http();
    let mut p = spawn(dir.path(), model, &["--api-key", KEY]).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            create(&c, &p.base, KEY, 2).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    p.child.kill().await.unwrap(); // SIGKILL right after the last 201
    let p = spawn(dir.path(), model, &["--api-key", KEY]).await;
    for id in &ids {
        let v = get_run(&c, &p.base, id).await;
        assert_eq!(v["status_code"], "queued", "{v}");
        assert_eq!(v["input"]["prompt"], "a red square");
    }
    let r = c
        .get(format!("{}/v1/readiness", p.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "NOT_READY");
    assert!(v["message"].as_str().unwrap().contains("model"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_generates_a_key_and_sigterm_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("no-such-model");
    let model = model.to_str().unwrap();
    let c = http();
    let mut p = spawn(dir.path(), model, &[]).await;
    let key = loop {
        let l = tokio::time::timeout(Duration::from_secs(10), p.stderr_lines.recv())
            .await
            .unwrap()
            .unwrap();
        if let Some(k) = l.split("only its hash is stored): ").nth(1) {
            break k.trim().to_string();
        }
    };
    assert!(key.starts_with("editd_"));
    let stored = std::fs::read_to_string(dir.path().join("api-keys.sha256")).unwrap();
    assert!(!stored.contains(&key), "only the hash is stored");
    let me = c
        .get(format!("{}/v1/auth/me", p.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);

    let pid = p.child.id().unwrap();
    let t0 = Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(Duration::from_secs(20), p.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(p.stdout_rest.try_recv().is_err(), "exactly one stdout line");
    assert!(t0.elapsed() < Duration::from_secs(10));

    // The second start prints no key and accepts the stored one.
    let mut p = spawn(dir.path(), model, &[]).await;
    let me = c
        .get(format!("{}/v1/auth/me", p.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    p.child.kill().await.unwrap();
    while let Ok(l) = p.stderr_lines.try_recv() {
        assert!(!l.contains("Generated API key"), "{l}");
    }
}

/// Runs the real pipeline on the tiny FLUX.2 checkpoint: a run killed mid-flight (SIGKILL) is
/// re-queued with a second attempt after restart and succeeds. Depends on the real
/// `pipeline::load::load_pipeline` and the committed fixture tests/fixtures/flux2/tiny_a.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_run_is_requeued_after_sigkill_tiny_a() {
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/flux2/tiny_a");
    let dir = tempfile::tempdir().unwrap();
    let c = http();
    let mut p = spawn(dir.path(), model, &["--api-key", KEY]).await;
    let ready = Instant::now();
    while c
        .get(format!("{}/v1/readiness", p.base))
        .send()
        .await
        .unwrap()
        .status()
        != 200
    {
        assert!(
            ready.elapsed() < Duration::from_secs(120),
            "tiny_a never loaded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = create(&c, &p.base, KEY, 100).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let t = Instant::now();
    loop {
        let v = get_run(&c, &p.base, &id).await;
        if v["status_code"] == "running" {
            break;
        }
        assert_ne!(
            v["status_code"], "succeeded",
            "run finished before it could be killed; raise the steps"
        );
        assert!(t.elapsed() < Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    p.child.kill().await.unwrap();
    let p = spawn(dir.path(), model, &["--api-key", KEY]).await;
    let t = Instant::now();
    let v = loop {
        let v = get_run(&c, &p.base, &id).await;
        if ["succeeded", "failed", "canceled"].contains(&v["status_code"].as_str().unwrap()) {
            break v;
        }
        assert!(t.elapsed() < Duration::from_secs(300));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(v["status_code"], "succeeded", "{v}");
    assert_eq!(v["attempts"], 2);
    let url = v["output"]["outputs"][0]["url"].as_str().unwrap();
    let img = c.get(url).send().await.unwrap().bytes().await.unwrap();
    assert!(image::load_from_memory(&img).is_ok());
}
