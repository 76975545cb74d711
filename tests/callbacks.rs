//! Callbacks through the real HTTP stack: an in-process editd (test-double pipeline) POSTs to a
//! receiver on 127.0.0.1 (allowed by `allow_private_networks`): retries with identical signed
//! bytes, 410, 3xx, `Retry-After`, history, redelivery, secret rotation, the SSRF refusal at
//! submit, and the outbox surviving a restart.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use support::*;

/// One POST the receiver saw.
#[derive(Debug, Clone)]
struct Hit {
    path: String,
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

/// What the receiver answers on a path: the n-th hit gets `script[n]`, later hits the last.
type Script = Vec<(String, Vec<(u16, Vec<(&'static str, String)>)>)>;

#[derive(Clone, Default)]
struct Rx {
    hits: Arc<Mutex<Vec<Hit>>>,
    script: Arc<Mutex<Script>>,
}

impl Rx {
    fn hits(&self, path: &str) -> Vec<Hit> {
        self.hits
            .lock()
            .unwrap()
            .iter()
            .filter(|h| h.path == path)
            .cloned()
            .collect()
    }
}

async fn receive(State(rx): State<Rx>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_string();
    let n = {
        let mut hits = rx.hits.lock().unwrap();
        let n = hits.iter().filter(|h| h.path == path).count();
        hits.push(Hit {
            path: path.clone(),
            headers,
            body,
            at: Instant::now(),
        });
        n
    };
    let script = rx.script.lock().unwrap();
    let answers = script
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, a)| a.clone())
        .unwrap_or_default();
    let (status, hdrs) = answers
        .get(n)
        .or(answers.last())
        .cloned()
        .unwrap_or((200, vec![]));
    let mut r = (StatusCode::from_u16(status).unwrap(), format!("answer {n}")).into_response();
    for (k, v) in hdrs {
        r.headers_mut().insert(k, v.parse().unwrap());
    }
    r
}

async fn receiver_on(listener: tokio::net::TcpListener, script: Script) -> Rx {
    let rx = Rx {
        script: Arc::new(Mutex::new(script)),
        ..Default::default()
    };
    let app = axum::Router::new()
        .fallback(axum::routing::any(receive))
        .with_state(rx.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    rx
}

async fn receiver(script: Script) -> (Rx, SocketAddr) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (receiver_on(l, script).await, addr)
}

fn fast_callbacks(cfg: &mut editd::config::ServeConfig) {
    cfg.allow_private_networks = true;
    cfg.allow_http_callbacks = true;
    cfg.callback_retry_base = Duration::from_millis(100);
    cfg.callback_retry_cap = Duration::from_millis(400);
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).unwrap();
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().to_vec()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn header<'a>(h: &'a Hit, name: &str) -> &'a str {
    h.headers
        .get(name)
        .unwrap_or_else(|| panic!("missing {name}"))
        .to_str()
        .unwrap()
}

/// Standard Webhooks: `v1,` + base64 HMAC(base64-decoded secret after `whsec_`, "{id}.{ts}.{body}").
fn standard_sig(secret: &str, h: &Hit) -> String {
    let key = B64.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let id = header(h, "webhook-id");
    let ts = header(h, "webhook-timestamp");
    let mac = hmac_sha256(&key, &[id.as_bytes(), b".", ts.as_bytes(), b".", &h.body]);
    format!("v1,{}", B64.encode(mac))
}

async fn create_secret(ts: &TestServer, label: &str) -> Value {
    let r = ts
        .post("/v1/callback-secrets", &json!({ "label": label }))
        .await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["plain_secret"].as_str().unwrap().starts_with("whsec_"),
        "{v}"
    );
    v
}

async fn wait_hits(rx: &Rx, path: &str, n: usize, timeout: Duration) -> Vec<Hit> {
    let start = Instant::now();
    loop {
        let h = rx.hits(path);
        if h.len() >= n {
            return h;
        }
        assert!(
            start.elapsed() < timeout,
            "{path}: {} hits after {timeout:?}, wanted {n}",
            h.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn history(ts: &TestServer, run_id: &str) -> Value {
    let r = ts.get(&format!("/v1/runs/{run_id}/callback")).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// Polls the history until delivery `i` is no longer pending.
async fn wait_delivery_done(ts: &TestServer, run_id: &str, i: usize) -> Value {
    let start = Instant::now();
    loop {
        let h = history(ts, run_id).await;
        if let Some(d) = h["deliveries"].get(i) {
            if d["status_code"] != "pending" {
                return d.clone();
            }
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{h}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

fn with_callback(prompt: &str, url: String) -> Value {
    let mut b = edit_body(prompt);
    b["callback_url"] = json!(url);
    b["metadata"] = json!({"order": 7});
    b
}

#[tokio::test]
async fn retries_500_500_200_with_identical_signed_bytes_then_history_and_redelivery() {
    let (rx, addr) = receiver(vec![(
        "/hook".into(),
        vec![(500, vec![]), (500, vec![]), (200, vec![])],
    )])
    .await;
    let ts = start_with(SolidPipeline::fast().loader(), fast_callbacks).await;
    ts.wait_ready().await;
    let secret = create_secret(&ts, "main").await;
    let secret = secret["plain_secret"].as_str().unwrap().to_string();
    let run = ts
        .create(&with_callback("paint", format!("http://{addr}/hook")))
        .await;
    let id = run["id"].as_str().unwrap();
    let hits = wait_hits(&rx, "/hook", 3, Duration::from_secs(20)).await;
    let d = wait_delivery_done(&ts, id, 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hits_after = rx.hits("/hook");
    assert_eq!(hits_after.len(), 3, "exactly three attempts");

    // identical bytes, constant webhook-id, valid signatures on every attempt
    for h in &hits {
        assert_eq!(h.body, hits[0].body, "byte-identical bodies");
        assert_eq!(header(h, "webhook-id"), header(&hits[0], "webhook-id"));
        let rf = hex(&hmac_sha256(secret.as_bytes(), &[&h.body]));
        assert_eq!(header(h, "Runflow-Signature"), rf);
        assert_eq!(header(h, "webhook-signature"), standard_sig(&secret, h));
        assert!(!header(h, "Runflow-Request-Id").is_empty());
        let t: i64 = header(h, "webhook-timestamp").parse().unwrap();
        assert!((chrono::Utc::now().timestamp() - t).abs() < 60);
        assert_eq!(header(h, "content-type"), "application/json");
    }
    let gaps: Vec<u128> = hits
        .windows(2)
        .map(|w| (w[1].at - w[0].at).as_millis())
        .collect();
    eprintln!("attempt gaps (ms), base 100 ms cap 400 ms: {gaps:?}");
    // ceilings 100 ms then 200 ms, jitter keeps at least half; poll period 200 ms on top
    assert!(gaps[0] >= 50 && gaps[0] < 2000, "{gaps:?}");
    assert!(gaps[1] >= 100 && gaps[1] < 2000, "{gaps:?}");

    // the envelope
    let body: Value = serde_json::from_slice(&hits[0].body).unwrap();
    assert_eq!(body["event"], "run.completed");
    assert_eq!(body["run_id"], id);
    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["metadata"], json!({"order": 7}));
    let raw = String::from_utf8(hits[0].body.to_vec()).unwrap();
    assert!(!raw.contains("Z\""), "no Z timestamps: {raw}");
    for k in ["created_at", "completed_at"] {
        assert!(body[k].as_str().unwrap().ends_with("+00:00"), "{body}");
    }
    assert!(body["duration_ms"].as_i64().is_some());
    let url = body["output"]["image_urls"][0].as_str().unwrap();
    assert!(
        url.starts_with(&ts.base) && url.contains("signature="),
        "{url}"
    );
    let got = ts.http.get(url).send().await.unwrap();
    assert_eq!(
        got.status(),
        200,
        "the signed output URL works unauthenticated"
    );

    // history
    assert_eq!(d["status_code"], "succeeded", "{d}");
    assert_eq!(d["attempt_count"], 3);
    assert_eq!(d["is_automatic"], true);
    assert_eq!(
        d["payload_bytes"].as_str().unwrap().as_bytes(),
        &hits[0].body[..]
    );
    let codes: Vec<i64> = d["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, [500, 500, 200]);
    assert_eq!(d["attempts"][0]["response_body"], "answer 0");
    assert!(d["created_at"].as_str().unwrap().ends_with("+00:00"));

    // redelivery: a new delivery built from the current state
    let r = ts
        .post(&format!("/v1/runs/{id}/callback-redeliveries"), &json!({}))
        .await;
    assert_eq!(r.status(), 201);
    let nd: Value = r.json().await.unwrap();
    assert_eq!(nd["is_automatic"], false);
    assert_ne!(nd["id"], d["id"]);
    let hits = wait_hits(&rx, "/hook", 4, Duration::from_secs(10)).await;
    assert_ne!(
        header(&hits[3], "webhook-id"),
        header(&hits[0], "webhook-id"),
        "a new delivery has a new webhook-id"
    );
    let d2 = wait_delivery_done(&ts, id, 1).await;
    assert_eq!(d2["status_code"], "succeeded");
    assert_eq!(
        history(&ts, id).await["deliveries"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    ts.stop().await;
}

#[tokio::test]
async fn gone_stops_redirects_are_not_followed_and_retry_after_is_honoured() {
    let (rx, addr) = receiver(vec![
        ("/gone".into(), vec![(410, vec![])]),
        (
            "/redirect".into(),
            vec![(302, vec![("location", "/target".to_string())])],
        ),
        (
            "/busy".into(),
            vec![(503, vec![("retry-after", "2".to_string())]), (200, vec![])],
        ),
    ])
    .await;
    let ts = start_with(SolidPipeline::fast().loader(), |c| {
        fast_callbacks(c);
        c.callback_max_attempts = 2;
    })
    .await;
    ts.wait_ready().await;
    let gone = ts
        .create(&with_callback("fail", format!("http://{addr}/gone")))
        .await;
    let redirect = ts
        .create(&with_callback("a", format!("http://{addr}/redirect")))
        .await;
    let busy = ts
        .create(&with_callback("b", format!("http://{addr}/busy")))
        .await;

    let d = wait_delivery_done(&ts, gone["id"].as_str().unwrap(), 0).await;
    assert_eq!(d["status_code"], "failed");
    assert_eq!(d["failure_reason_code"], "GONE");
    assert_eq!(d["attempt_count"], 1);
    let g = rx.hits("/gone");
    assert_eq!(g.len(), 1, "410 stops after one attempt");
    let env: Value = serde_json::from_slice(&g[0].body).unwrap();
    assert_eq!(env["event"], "run.failed");
    assert_eq!(env["status"], "failed");
    assert!(env["output"]["code"].is_string() && env["output"]["message"].is_string());
    assert!(
        g[0].headers.get("Runflow-Signature").is_none(),
        "no secret, no signature"
    );

    let d = wait_delivery_done(&ts, redirect["id"].as_str().unwrap(), 0).await;
    assert_eq!(d["status_code"], "failed");
    assert_eq!(d["failure_reason_code"], "ATTEMPTS_EXHAUSTED");
    assert_eq!(d["attempts"][0]["status_code"], 302);
    assert_eq!(rx.hits("/redirect").len(), 2);
    assert!(rx.hits("/target").is_empty(), "a 302 is not followed");

    let d = wait_delivery_done(&ts, busy["id"].as_str().unwrap(), 0).await;
    assert_eq!(d["status_code"], "succeeded");
    let b = rx.hits("/busy");
    let gap = b[1].at - b[0].at;
    eprintln!("Retry-After: 2 → next attempt after {gap:?} (schedule alone: ≤ 100 ms)");
    assert!(gap >= Duration::from_millis(1900), "{gap:?}");
    ts.stop().await;
}

#[tokio::test]
async fn rotation_signs_with_every_current_secret() {
    let (rx, addr) = receiver(vec![]).await;
    let ts = start_with(SolidPipeline::fast().loader(), fast_callbacks).await;
    ts.wait_ready().await;
    let old = create_secret(&ts, "old").await;
    let new = create_secret(&ts, "new").await;
    let (old_s, new_s) = (
        old["plain_secret"].as_str().unwrap().to_string(),
        new["plain_secret"].as_str().unwrap().to_string(),
    );
    let list: Value = ts.get("/v1/callback-secrets").await.json().await.unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    assert!(
        !list.to_string().contains(&old_s) && !list.to_string().contains(&new_s),
        "no plaintext in the list: {list}"
    );
    assert!(list["items"][0].get("plain_secret").is_none());
    assert_eq!(list["items"][0]["is_current"], true);

    let run = ts
        .create(&with_callback("r", format!("http://{addr}/rot")))
        .await;
    let id = run["id"].as_str().unwrap();
    let h = wait_hits(&rx, "/rot", 1, Duration::from_secs(20)).await;
    let sigs: Vec<&str> = header(&h[0], "webhook-signature").split(' ').collect();
    assert_eq!(sigs.len(), 2, "{sigs:?}");
    assert!(sigs.contains(&standard_sig(&old_s, &h[0]).as_str()));
    assert!(sigs.contains(&standard_sig(&new_s, &h[0]).as_str()));
    assert_eq!(
        header(&h[0], "Runflow-Signature"),
        hex(&hmac_sha256(new_s.as_bytes(), &[&h[0].body])),
        "Runflow-Signature uses the newest secret"
    );

    let r = ts
        .http
        .delete(ts.url(&format!(
            "/v1/callback-secrets/{}",
            old["id"].as_str().unwrap()
        )))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    wait_delivery_done(&ts, id, 0).await;
    let r = ts
        .post(&format!("/v1/runs/{id}/callback-redeliveries"), &json!({}))
        .await;
    assert_eq!(r.status(), 201);
    let h = wait_hits(&rx, "/rot", 2, Duration::from_secs(10)).await;
    assert_eq!(
        header(&h[1], "webhook-signature"),
        standard_sig(&new_s, &h[1])
    );
    let hist = history(&ts, id).await;
    assert_eq!(hist["deliveries"][0]["signing_secret_id"], new["id"]);
    let r = ts
        .http
        .delete(ts.url(&format!(
            "/v1/callback-secrets/{}",
            old["id"].as_str().unwrap()
        )))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_envelope(r, 404, "CALLBACK_SECRET_NOT_FOUND").await;
    ts.stop().await;
}

#[tokio::test]
async fn private_or_http_callback_urls_are_refused_at_submit() {
    let ts = start_with(SolidPipeline::fast().loader(), |_| {}).await;
    for url in [
        "https://127.0.0.1:9/x",
        "https://10.0.0.1/x",
        "https://169.254.169.254/latest",
        "https://[::ffff:127.0.0.1]/x",
        "http://example.com/x",
        "ftp://example.com/x",
    ] {
        let r = ts
            .post(
                &format!("/v1/models/{MODEL}/runs"),
                &with_callback("p", url.into()),
            )
            .await;
        let v = assert_envelope(r, 422, "VALIDATION_ERROR").await;
        assert!(v.to_string().contains("callback_url"), "{url}: {v}");
    }
    ts.stop().await;
}

#[tokio::test]
async fn the_outbox_survives_a_restart() {
    // a port with nothing listening: every attempt before the restart is a connection error
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let tweak = |c: &mut editd::config::ServeConfig| {
        fast_callbacks(c);
        c.callback_max_attempts = 50;
    };
    let ts = start_with(SolidPipeline::fast().loader(), tweak).await;
    ts.wait_ready().await;
    let run = ts
        .create(&with_callback("x", format!("http://{addr}/late")))
        .await;
    let id = run["id"].as_str().unwrap().to_string();
    ts.wait_for(&id, &["succeeded"], Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = history(&ts, &id).await;
    assert_eq!(
        before["deliveries"][0]["status_code"], "pending",
        "{before}"
    );
    let dir = ts.stop().await;

    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let rx = receiver_on(listener, vec![]).await;
    let started = Instant::now();
    let ts = start_in(dir, SolidPipeline::fast().loader(), tweak).await;
    let h = wait_hits(&rx, "/late", 1, Duration::from_secs(20)).await;
    eprintln!("delivered {:?} after the restart", h[0].at - started);
    let d = wait_delivery_done(&ts, &id, 0).await;
    assert_eq!(d["status_code"], "succeeded");
    let attempts = d["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 2, "{d}");
    assert!(attempts[0]["status_code"].is_null());
    assert!(
        attempts[0]["error_message"]
            .as_str()
            .unwrap()
            .contains("connect"),
        "{d}"
    );
    assert_eq!(attempts.last().unwrap()["status_code"], 200);
    let env: Value = serde_json::from_slice(&h[0].body).unwrap();
    assert_eq!(env["run_id"], id.as_str());
    ts.stop().await;
}

#[tokio::test]
async fn a_url_the_guard_refuses_at_send_time_fails_without_connecting() {
    // accepted at submit (private networks allowed), refused at send after a restart without
    // the flag: the guard runs again at every attempt, and nothing is connected to
    // 500 so that an attempt racing the stop leaves the delivery pending, not delivered
    let (rx, addr) = receiver(vec![("/late".into(), vec![(500, vec![])])]).await;
    let ts = start_with(never_loads(), fast_callbacks).await;
    let run = ts
        .create(&with_callback("x", format!("http://{addr}/late")))
        .await;
    let id = run["id"].as_str().unwrap().to_string();
    let r = ts
        .post(&format!("/v1/runs/{id}/cancellation"), &json!({}))
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    // the canceled run's delivery row is written in the cancel's transaction
    let dir = ts.stop().await;
    rx.hits.lock().unwrap().clear();
    let ts = start_in(dir, never_loads(), |c| {
        fast_callbacks(c);
        c.allow_private_networks = false;
    })
    .await;
    let d = wait_delivery_done(&ts, &id, 0).await;
    assert_eq!(d["status_code"], "failed", "{d}");
    assert_eq!(d["failure_reason_code"], "URL_NOT_ALLOWED", "{d}");
    let last = d["attempts"].as_array().unwrap().last().unwrap().clone();
    assert!(last["status_code"].is_null(), "{d}");
    assert!(
        last["error_message"]
            .as_str()
            .unwrap()
            .contains("not allowed"),
        "{d}"
    );
    let env: Value = serde_json::from_str(d["payload_bytes"].as_str().unwrap()).unwrap();
    assert_eq!(env["event"], "run.cancelled");
    assert!(env["output"].is_null());
    assert!(rx.hits("/late").is_empty(), "nothing was connected to");
    ts.stop().await;
}
