//! Unit tests of the SQLite store: transitions, crash recovery, pagination, idempotency.

use super::*;
use crate::runs::job::EditJob;
use crate::runs::validate::validate_request;

fn job() -> EditJob {
    let body =
        serde_json::json!({"input": {"prompt": "p", "image_urls": ["https://example.com/a.png"]}});
    validate_request(&body, None, || 1).unwrap().job
}

fn new_run(client_ref: Option<&str>) -> NewRun {
    NewRun {
        id: Uuid::now_v7(),
        model_id: "m".into(),
        job: job(),
        callback_url: None,
        metadata: None,
        client_ref: client_ref.map(str::to_string),
        request_id: "r".into(),
        created_at: crate::runs::now(),
        assets: vec![],
        idempotency: None,
    }
}

fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("runs.db")).unwrap();
    (dir, s)
}

fn created(o: InsertOutcome) -> Run {
    match o {
        InsertOutcome::Created(r) => r,
        other => panic!("expected Created, got {other:?}"),
    }
}

#[test]
fn recovery_requeues_then_exhausts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.db");
    let id = {
        let s = SqliteStore::open(&path).unwrap();
        let r = created(s.insert_run(new_run(None), 10).unwrap());
        s.claim_next(crate::runs::now()).unwrap().unwrap();
        assert!(s.mark_running(r.id, crate::runs::now()).unwrap());
        r.id
    }; // "crash": the store is dropped with the run running
    for attempt in 1..=2 {
        let s = SqliteStore::open(&path).unwrap();
        let rep = s.recover(3, crate::runs::now()).unwrap();
        assert_eq!(
            rep,
            RecoverReport {
                requeued: 1,
                exhausted: 0
            },
            "attempt {attempt}"
        );
        let r = s.get_run(id).unwrap().unwrap();
        assert_eq!((r.status, r.attempts), (RunStatus::Queued, attempt));
        let claimed = s.claim_next(crate::runs::now()).unwrap().unwrap();
        assert_eq!(claimed.attempts, attempt + 1);
        s.mark_running(id, crate::runs::now()).unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    let rep = s.recover(3, crate::runs::now()).unwrap();
    assert_eq!(
        rep,
        RecoverReport {
            requeued: 0,
            exhausted: 1
        }
    );
    let r = s.get_run(id).unwrap().unwrap();
    assert_eq!(r.status, RunStatus::Failed);
    assert_eq!(r.failure.unwrap().code, "ATTEMPTS_EXHAUSTED");
}

#[test]
fn terminal_states_are_final() {
    let (_d, s) = store();
    let r = created(s.insert_run(new_run(None), 10).unwrap());
    assert!(matches!(
        s.request_cancel(r.id, crate::runs::now()).unwrap(),
        CancelOutcome::Canceled(_)
    ));
    assert!(s
        .finish(
            r.id,
            Terminal::Failed(Failure::new("X", "y", "z")),
            crate::runs::now()
        )
        .unwrap()
        .is_none());
    assert_eq!(
        s.get_run(r.id).unwrap().unwrap().status,
        RunStatus::Canceled
    );
    assert!(s.claim_next(crate::runs::now()).unwrap().is_none());
}

#[test]
fn queue_bound_and_idempotency() {
    let (_d, s) = store();
    let key = IdemKey {
        scope: "POST /runs".into(),
        key: "k".into(),
        body_sha256: "aa".into(),
    };
    let mut a = new_run(None);
    a.idempotency = Some(key.clone());
    let first = created(s.insert_run(a, 10).unwrap());
    let mut again = new_run(None);
    again.idempotency = Some(key.clone());
    match s.insert_run(again, 10).unwrap() {
        InsertOutcome::Replayed(r) => assert_eq!(r.id, first.id),
        o => panic!("{o:?}"),
    }
    let mut other = new_run(None);
    other.idempotency = Some(IdemKey {
        body_sha256: "bb".into(),
        ..key
    });
    assert!(matches!(
        s.insert_run(other, 10).unwrap(),
        InsertOutcome::KeyConflict
    ));
    created(s.insert_run(new_run(None), 2).unwrap());
    assert!(matches!(
        s.insert_run(new_run(None), 2).unwrap(),
        InsertOutcome::QueueFull(2)
    ));
}

#[test]
fn pages_walk_both_ways() {
    let (_d, s) = store();
    let ids: Vec<Uuid> = (0..7)
        .map(|i| {
            created(
                s.insert_run(new_run(Some(if i % 2 == 0 { "even" } else { "odd" })), 100)
                    .unwrap(),
            )
            .id
        })
        .collect();
    let q = |cursor| ListQuery {
        statuses: vec![],
        client_ref: None,
        model_id: None,
        sort: SortDir::Desc,
        limit: 3,
        cursor,
    };
    let p1 = s.list_runs(&q(Cursor::First)).unwrap();
    assert_eq!(
        p1.items.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ids[6], ids[5], ids[4]]
    );
    assert!(p1.has_next && !p1.has_previous);
    let p2 = s.list_runs(&q(Cursor::After(ids[4]))).unwrap();
    assert_eq!(
        p2.items.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ids[3], ids[2], ids[1]]
    );
    assert!(p2.has_next && p2.has_previous);
    let p3 = s.list_runs(&q(Cursor::After(ids[1]))).unwrap();
    assert_eq!(
        p3.items.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ids[0]]
    );
    assert!(!p3.has_next && p3.has_previous);
    let back = s.list_runs(&q(Cursor::Before(ids[3]))).unwrap();
    assert_eq!(
        back.items.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ids[6], ids[5], ids[4]]
    );
    assert!(back.has_next && !back.has_previous);
    let mut even = q(Cursor::First);
    even.client_ref = Some("even".into());
    even.limit = 10;
    assert_eq!(s.list_runs(&even).unwrap().items.len(), 4);
}

#[test]
fn terminal_transition_writes_the_callback_outbox_row_once() {
    use crate::runs::callbacks::{AttemptOutcome, CallbackStore, DeliveryStatus};
    let (_d, s) = store();
    let now = crate::runs::now();
    let mut with = new_run(None);
    with.callback_url = Some("https://example.com/hook".into());
    let with = created(s.insert_run(with, 10).unwrap());
    let without = created(s.insert_run(new_run(None), 10).unwrap());
    s.finish(without.id, Terminal::Canceled, now).unwrap();
    assert!(s.deliveries_for_run(without.id).unwrap().is_empty());
    let f = Failure::new("BOOM", "inference", "broke");
    s.finish(with.id, Terminal::Failed(f.clone()), now).unwrap();
    // a second terminal transition is refused, so no second row
    assert!(s
        .finish(with.id, Terminal::Canceled, now)
        .unwrap()
        .is_none());
    let due = s.due_deliveries(now, 10).unwrap();
    assert_eq!(due.len(), 1);
    let d = &due[0];
    assert_eq!(d.run_id, with.id);
    assert!(d.is_automatic);
    assert_eq!(d.status, DeliveryStatus::Pending);
    let env: serde_json::Value = serde_json::from_slice(&d.payload).unwrap();
    assert_eq!(env["event"], "run.failed");
    assert_eq!(env["output"]["code"], "BOOM");
    assert!(env["completed_at"].as_str().unwrap().ends_with("+00:00"));
    // a retry keeps the bytes and moves the due time
    let later = now + chrono::Duration::seconds(60);
    let a = crate::runs::callbacks::Attempt {
        id: Uuid::now_v7(),
        delivery_id: d.id,
        attempt_number: 1,
        status_code: Some(500),
        response_body: Some("no".into()),
        response_time_ms: 3,
        error_message: Some("HTTP 500".into()),
        created_at: now,
    };
    s.record_attempt(&a, &AttemptOutcome::RetryAt(later), None)
        .unwrap();
    assert!(s.due_deliveries(now, 10).unwrap().is_empty());
    let again = s.due_deliveries(later, 10).unwrap();
    assert_eq!(again[0].payload, d.payload);
    assert_eq!(again[0].attempt_count, 1);
    let hist = s.deliveries_for_run(with.id).unwrap();
    assert_eq!(hist[0].attempts, vec![a]);
}
