//! `GET /v1/runs`: limit, sort, `q` filters (incl. `client_ref.EQ:'X'`), cursor pagination.

use serde_json::{json, Value};

use crate::support::*;

fn ids(v: &Value) -> Vec<String> {
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_and_filters() {
    let s = start_with(never_loads(), |_| {}).await;
    let mut created = Vec::new();
    for i in 0..7 {
        let mut b = edit_body("p");
        b["client_ref"] = json!(if i % 2 == 0 { "even" } else { "odd" });
        created.push(s.create(&b).await["id"].as_str().unwrap().to_string());
    }
    // cancel one so a status filter has something to find
    s.post(&format!("/v1/runs/{}/cancellation", created[0]), &json!({}))
        .await;

    let p1: Value = s.get("/v1/runs?limit=3").await.json().await.unwrap();
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();
    assert_eq!(ids(&p1), newest_first[0..3]);
    assert!(p1["previous"].is_null() && p1["first"].is_string());
    let next = p1["next"].as_str().unwrap();
    let p2: Value = s
        .get(&format!("/v1/runs?limit=3&pq={next}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&p2), newest_first[3..6]);
    let p3: Value = s
        .get(&format!(
            "/v1/runs?limit=3&pq={}",
            p2["next"].as_str().unwrap()
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&p3), newest_first[6..7]);
    assert!(p3["next"].is_null());
    let back: Value = s
        .get(&format!(
            "/v1/runs?limit=3&pq={}",
            p2["previous"].as_str().unwrap()
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&back), newest_first[0..3]);
    let first: Value = s
        .get(&format!(
            "/v1/runs?limit=3&pq={}",
            p3["first"].as_str().unwrap()
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&first), ids(&p1));

    let asc: Value = s
        .get("/v1/runs?sort_by=created_at:asc&limit=2")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&asc), created[0..2]);

    let even: Value = s
        .get("/v1/runs?q=client_ref.EQ:'even'&limit=500")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&even).len(), 4);
    let odd: Value = s
        .get("/v1/runs?q=client_ref:odd")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&odd).len(), 3);
    let canceled: Value = s
        .get("/v1/runs?q=status_code:canceled")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&canceled), vec![created[0].clone()]);
    let uk: Value = s
        .get("/v1/runs?q=status_code:cancelled AND client_ref:even")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&uk), vec![created[0].clone()]);
    let none: Value = s
        .get("/v1/runs?q=status_code:canceled AND client_ref:odd")
        .await
        .json()
        .await
        .unwrap();
    assert!(ids(&none).is_empty());
    let queued: Value = s
        .get("/v1/runs?q=status_code:queued&limit=500")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&queued).len(), 6);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_all_commit_and_share_a_key_once() {
    let s = start_with(never_loads(), |_| {}).await;
    let path = s.url(&format!("/v1/models/{MODEL}/runs"));
    let body = edit_body("concurrent");
    let mut tasks = Vec::new();
    for i in 0..40 {
        let req = s.http.post(&path).bearer_auth(KEY).json(&body);
        // half of them race on one Idempotency-Key
        let req = if i % 2 == 0 {
            req.header("Idempotency-Key", "same")
        } else {
            req
        };
        tasks.push(tokio::spawn(async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 201);
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    let keyed: std::collections::HashSet<&String> = ids.iter().step_by(2).collect();
    assert_eq!(keyed.len(), 1, "one run for the shared key");
    let all: Value = s.get("/v1/runs?limit=500").await.json().await.unwrap();
    assert_eq!(all["items"].as_array().unwrap().len(), 21);
    s.stop().await;
}
