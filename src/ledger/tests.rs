//! Unit tests of the ledger: repeats, replays, superseded problems, skips, the window and capacity.

use super::*;
use serde_json::json;
use std::sync::Arc;

fn record(kind: &str, event_id: &str, occurred_at: &str, channel: &str) -> DeliveryRecord {
    let event = json!({"event": kind, "event_id": event_id, "account_id": "acc",
        "occurred_at": occurred_at, "monitor": {"id": "mon_1", "name": "API"}, "alert": {}});
    serde_json::from_value(json!({
        "delivery_id": crate::model::delivery::delivery_id("acc", event_id, channel),
        "account_id": "acc", "channel_id": channel, "channel_type": "webhook",
        "event_type": kind, "event_id": event_id, "severity": "critical",
        "created_at": occurred_at, "attempts": [], "event": event}))
    .expect("a delivery record")
}

fn retried(mut record: DeliveryRecord) -> DeliveryRecord {
    let attempt = json!({"attempt": 1, "at": "2025-01-15T10:30:01Z", "duration_ms": 3,
        "outcome": "retryable", "status": 500});
    record
        .attempts
        .push(serde_json::from_value(attempt).unwrap());
    record
}

/// What became of `record`, read as it is now.
fn handled(record: &DeliveryRecord, fate: Fate) -> Handled {
    Handled::of(record, Read::of(record), fate)
}

fn ledger() -> Ledger {
    Ledger::new(Duration::from_secs(3600), 1000)
}

#[test]
fn a_handled_record_is_a_repeat_and_its_next_tier_is_not() {
    let ledger = ledger();
    let first = record("monitor.down", "e1", "2025-01-15T10:30:00Z", "hook");
    assert_eq!(ledger.verdict(&first), Verdict::Attempt);
    ledger.apply(&handled(&first, Fate::Retried), Utc::now());
    assert_eq!(ledger.verdict(&first), Verdict::Repeat, "read again");
    let second = retried(first.clone());
    assert_eq!(
        ledger.verdict(&second),
        Verdict::Attempt,
        "the retry itself"
    );
    ledger.apply(&handled(&second, Fate::Delivered), Utc::now());
    assert_eq!(ledger.verdict(&second), Verdict::Repeat);
    assert_eq!(
        ledger.verdict(&first),
        Verdict::Repeat,
        "any copy of a delivered delivery"
    );
    let other_channel = record("monitor.down", "e1", "2025-01-15T10:30:00Z", "slack");
    assert_eq!(ledger.verdict(&other_channel), Verdict::Attempt);
}

#[test]
fn a_replay_is_a_new_run() {
    let ledger = ledger();
    let first = record("monitor.down", "e1", "2025-01-15T10:30:00Z", "hook");
    ledger.apply(&handled(&first, Fate::DeadLettered), Utc::now());
    let replay = first.replayed();
    assert_eq!(ledger.verdict(&replay), Verdict::Attempt);
    ledger.apply(&handled(&replay, Fate::Retried), Utc::now());
    assert_eq!(ledger.verdict(&replay), Verdict::Repeat);
}

#[test]
fn a_problem_after_its_delivered_recovery_is_superseded() {
    let ledger = ledger();
    let down = retried(record("monitor.down", "e1", "2025-01-15T10:30:00Z", "hook"));
    let degraded = record("monitor.degraded", "e0", "2025-01-15T10:20:00Z", "hook");
    let ssl = record("monitor.ssl_expiring", "e2", "2025-01-15T10:29:00Z", "hook");
    let up = record("monitor.recovered", "e3", "2025-01-15T10:35:00Z", "hook");
    let elsewhere = record("monitor.down", "e1", "2025-01-15T10:30:00Z", "pd");
    ledger.apply(&handled(&up, Fate::Retried), Utc::now());
    assert_eq!(
        ledger.verdict(&down),
        Verdict::Attempt,
        "a recovery still retrying supersedes nothing"
    );
    ledger.apply(&handled(&retried(up.clone()), Fate::Delivered), Utc::now());
    assert_eq!(ledger.verdict(&down), Verdict::Superseded);
    assert_eq!(ledger.verdict(&degraded), Verdict::Superseded);
    assert_eq!(ledger.verdict(&ssl), Verdict::Attempt, "another incident");
    assert_eq!(
        ledger.verdict(&elsewhere),
        Verdict::Attempt,
        "another channel"
    );
    let again = record("monitor.down", "e4", "2025-01-15T10:40:00Z", "hook");
    assert_eq!(ledger.verdict(&again), Verdict::Attempt, "down again later");
    assert!(ledger.overtaken(&down));
    assert!(!ledger.overtaken(&again));
    assert!(!ledger.overtaken(&up), "a recovery is never overtaken");
}

#[test]
fn forgets_past_the_window_and_beyond_capacity() {
    let ledger = Ledger::new(Duration::from_secs(60), 3);
    let now = Utc::now();
    let records: Vec<DeliveryRecord> = (0..5)
        .map(|i| {
            record(
                "monitor.down",
                &format!("e{i}"),
                "2025-01-15T10:30:00Z",
                "hook",
            )
        })
        .collect();
    let mut old = handled(&records[0], Fate::Retried);
    old.at = now - chrono::Duration::seconds(61);
    ledger.apply(&old, now);
    assert_eq!(
        ledger.verdict(&records[0]),
        Verdict::Attempt,
        "older than the window"
    );
    for r in &records[1..] {
        ledger.apply(&handled(r, Fate::Retried), now);
    }
    assert_eq!(ledger.len(), 3);
    assert_eq!(
        ledger.verdict(&records[1]),
        Verdict::Attempt,
        "evicted first"
    );
    assert_eq!(ledger.verdict(&records[4]), Verdict::Repeat);
    let later = now + chrono::Duration::seconds(120);
    let mut fresh = handled(&records[0], Fate::Retried);
    fresh.at = later;
    ledger.apply(&fresh, later);
    assert_eq!(
        ledger.verdict(&records[4]),
        Verdict::Attempt,
        "window passed"
    );
    assert_eq!(ledger.verdict(&records[0]), Verdict::Repeat);
    assert_eq!(ledger.len(), 1);
}

#[test]
fn records_round_trip_and_garbage_is_skipped() {
    let ledger = ledger();
    let r = record("monitor.down", "e1", "2025-01-15T10:30:00Z", "hook");
    let batch = HandledBatch {
        handled: vec![Handled::of(&r, Read::of(&r), Fate::Delivered)],
    };
    let bytes = serde_json::to_vec(&batch).unwrap();
    ledger.apply_bytes(Some(b"not json"));
    ledger.apply_bytes(None);
    assert!(ledger.is_empty());
    ledger.apply_bytes(Some(&bytes));
    assert_eq!(ledger.verdict(&r), Verdict::Repeat);
}

#[tokio::test]
async fn a_second_copy_waits_for_the_first_then_is_a_repeat() {
    let ledger = Arc::new(ledger());
    let in_flight = Arc::new(InFlight::default());
    let record = record("monitor.down", "e1", "2025-01-15T10:30:00Z", "hook");
    let first = in_flight.claim(&record).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let copy = {
        let (ledger, in_flight, record) = (ledger.clone(), in_flight.clone(), record.clone());
        tokio::spawn(async move {
            let _claim = in_flight.claim(&record).await;
            tx.send(ledger.verdict(&record)).unwrap();
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        rx.try_recv().is_err(),
        "the copy waits while the first is in flight"
    );
    ledger.apply(&handled(&record, Fate::Delivered), Utc::now());
    drop(first);
    copy.await.unwrap();
    assert_eq!(rx.recv().await, Some(Verdict::Repeat));
    let other = record_of_attempts(&record, 1);
    let _ = in_flight.claim(&other).await; // another identity is not held
}

fn record_of_attempts(record: &DeliveryRecord, n: usize) -> DeliveryRecord {
    let mut r = record.clone();
    for _ in 0..n {
        r = retried(r);
    }
    r
}

#[test]
fn a_batch_is_read_whole() {
    let ledger = ledger();
    let (a, b) = (
        record("monitor.down", "e1", "2025-01-15T10:30:00Z", "hook"),
        record("monitor.down", "e2", "2025-01-15T10:30:00Z", "hook"),
    );
    let batch = HandledBatch {
        handled: vec![
            Handled::of(&a, Read::of(&a), Fate::Delivered),
            Handled::of(&b, Read::of(&b), Fate::Retried),
        ],
    };
    ledger.apply_bytes(Some(&serde_json::to_vec(&batch).unwrap()));
    ledger.apply_bytes(Some(b"not json"));
    ledger.apply_bytes(None);
    for record in [&a, &b] {
        assert_eq!(
            ledger.verdict(record),
            Verdict::Repeat,
            "{}",
            record.event_id
        );
    }
}

#[test]
fn a_full_ledger_does_not_grow_its_tables() {
    let capacity = 1000;
    let ledger = Ledger::new(Duration::from_secs(3600), capacity);
    let room = |l: &Ledger| {
        let entries = l.entries.lock().unwrap();
        (entries.order.capacity(), entries.seen.capacity())
    };
    let before = room(&ledger);
    assert!(
        before.0 >= capacity + 3 && before.1 >= capacity + 3,
        "{before:?}"
    );
    let now = Utc::now();
    for i in 0..3 * capacity {
        let r = record(
            "monitor.down",
            &format!("e{i}"),
            "2025-01-15T10:30:00Z",
            "hook",
        );
        // Delivered: two entries each (the read and the delivery).
        ledger.apply(&handled(&r, Fate::Delivered), now);
    }
    assert_eq!(ledger.len(), capacity);
    let after = room(&ledger);
    assert_eq!(after.0, before.0, "the order is allocated once, at start");
    // The set clears its deleted slots at the same size: it never takes more room.
    assert!(after.1 <= before.1, "{after:?} after {before:?}");
}

#[test]
fn a_skipped_record_is_read_again_and_is_no_repeat() {
    let ledger = ledger();
    let first = record("monitor.down", "e1", "2025-01-15T10:30:00Z", "hook");
    ledger.apply(
        &Handled::of(&first, Read::of(&first), Fate::Retried),
        Utc::now(),
    );
    let mut skipped = first.clone();
    skipped.skips = 1;
    assert_eq!(
        ledger.verdict(&skipped),
        Verdict::Attempt,
        "the copy written after a skip carries as many attempts as the one read before it"
    );
    ledger.apply(
        &Handled::of(&skipped, Read::of(&skipped), Fate::Retried),
        Utc::now(),
    );
    assert_eq!(ledger.verdict(&skipped), Verdict::Repeat);
}

#[test]
fn a_channel_is_active_when_a_record_of_it_may_have_made_a_request() {
    let ledger = ledger();
    let now = Utc::now();
    assert_eq!(ledger.last_active("acc", "hook"), None);
    for (channel, fate, active) in [
        ("dropped", Fate::Dropped, false),
        ("superseded", Fate::Superseded, false),
        ("delivered", Fate::Delivered, true),
        ("retried", Fate::Retried, true),
        ("dead", Fate::DeadLettered, true),
    ] {
        let r = record(
            "monitor.down",
            &format!("e_{channel}"),
            "2025-01-15T10:30:00Z",
            channel,
        );
        let mut h = handled(&r, fate);
        h.at = now - chrono::Duration::seconds(5);
        ledger.apply(&h, now);
        assert_eq!(
            ledger.last_active("acc", channel).is_some(),
            active,
            "{fate:?}"
        );
    }
    // The latest handling counts, whatever order entries arrive in.
    let r = record(
        "monitor.down",
        "e_late",
        "2025-01-15T10:30:00Z",
        "delivered",
    );
    let mut older = handled(&r, Fate::Delivered);
    older.at = now - chrono::Duration::seconds(60);
    ledger.apply(&older, now);
    let at = ledger.last_active("acc", "delivered").unwrap();
    assert_eq!(
        at.timestamp_micros(),
        (now - chrono::Duration::seconds(5)).timestamp_micros()
    );
    assert_eq!(
        ledger.last_active("other", "delivered"),
        None,
        "per account"
    );
}
