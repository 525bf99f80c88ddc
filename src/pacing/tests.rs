//! Unit tests of pacing: turns, holds, the first-come line, booked turns, bucket keys.

use super::*;
use crate::model::Rate;
use serde_json::json;
use std::num::NonZeroU32;

fn pace(rate: &str, burst: u32) -> Option<Pace> {
    Some(Pace {
        rate: rate.parse::<Rate>().unwrap(),
        burst: NonZeroU32::new(burst).unwrap(),
    })
}

fn need(id: &str, pace: Option<Pace>) -> Need {
    Need {
        key: BucketKey {
            provider: Provider::Slack,
            id: id.to_owned(),
        },
        pace,
    }
}

#[test]
fn a_bucket_gives_its_burst_then_keeps_its_pace() {
    let pacer = Pacer::default();
    let slack = [need("ops", pace("1/1s", 2))];
    let now = Instant::now();
    assert_eq!(pacer.try_take(&slack, now), Ok(()));
    assert_eq!(pacer.try_take(&slack, now), Ok(()));
    let wait = pacer.try_take(&slack, now).unwrap_err();
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_millis(1010),
        "{wait:?}"
    );
    assert_eq!(
        pacer.try_take(&[need("other", pace("1/1s", 2))], now),
        Ok(()),
        "another bucket has its own turns"
    );
    let unpaced = [need("hook", None)];
    for _ in 0..100 {
        assert_eq!(pacer.try_take(&unpaced, now), Ok(()), "no pace: no limit");
    }
}

#[test]
fn a_hold_stops_its_bucket_or_its_provider_only() {
    let pacer = Pacer::default();
    let (a, b) = (
        [need("a", pace("10/1s", 10))],
        [need("b", pace("10/1s", 10))],
    );
    let now = Instant::now();
    assert_eq!(pacer.try_take(&a, now), Ok(()));
    pacer.hold(&a[0].key, now + Duration::from_secs(30));
    assert_eq!(pacer.try_take(&a, now), Err(Duration::from_secs(30)));
    assert_eq!(pacer.try_take(&b, now), Ok(()));
    pacer.hold_provider(Provider::Slack, now + Duration::from_secs(5));
    assert_eq!(pacer.try_take(&b, now), Err(Duration::from_secs(5)));
    let later = now + Duration::from_secs(6);
    assert_eq!(pacer.try_take(&b, later), Ok(()), "the hold ends");
}

#[tokio::test]
async fn the_line_is_first_come_first_served_and_a_long_hold_is_told() {
    let pacer = std::sync::Arc::new(Pacer::default());
    let bucket = [need("ops", pace("20/1s", 1))];
    assert_eq!(pacer.try_take(&bucket, Instant::now()), Ok(()));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for n in 0..5 {
        let (pacer, bucket, tx) = (pacer.clone(), bucket.clone(), tx.clone());
        tokio::spawn(async move {
            pacer.turn(&bucket, Duration::from_secs(5)).await.unwrap();
            tx.send(n).unwrap();
        });
        tokio::task::yield_now().await;
    }
    let mut order = Vec::new();
    for _ in 0..5 {
        order.push(rx.recv().await.unwrap());
    }
    assert_eq!(order, [0, 1, 2, 3, 4]);
    pacer.hold(&bucket[0].key, Instant::now() + Duration::from_secs(60));
    let impatient = pacer.turn(&bucket, Duration::from_secs(15)).await;
    assert!(
        impatient.is_err_and(|wait| wait > Duration::from_secs(59)),
        "a hold longer than the patience is told, not waited: {impatient:?}"
    );
}

#[test]
fn parked_deliveries_book_turns_one_after_another() {
    let pacer = Pacer::default();
    let bucket = [need("ops", pace("1/1s", 1))];
    let now = Instant::now();
    let hour = Duration::from_secs(3600);
    let turns: Vec<Duration> = (0..3)
        .map(|_| pacer.book(&bucket, now, hour).unwrap())
        .collect();
    assert_eq!(
        turns,
        [1, 2, 3].map(Duration::from_secs),
        "each parked delivery comes back a turn after the one before"
    );
    assert_eq!(
        pacer.book(&bucket, now, Duration::from_secs(2)),
        Err(Duration::from_secs(4)),
        "a turn past the allowance is not booked"
    );
    assert_eq!(pacer.book(&bucket, now, hour), Ok(Duration::from_secs(4)));
}

#[test]
fn buckets_follow_the_contract_and_hide_credentials() {
    let paces = Paces {
        slack: pace("1/1s", 5).unwrap(),
        discord: pace("5/2s", 5).unwrap(),
        pagerduty: pace("100/1m", 20).unwrap(),
        email: pace("1/1m", 5).unwrap(),
    };
    let record: DeliveryRecord = serde_json::from_value(json!({
        "delivery_id": "msg_0123456789abcdef0123456789abcdef", "account_id": "acc",
        "channel_id": "c", "channel_type": "slack", "event_type": "monitor.down",
        "event_id": "e1", "severity": "critical", "created_at": "2025-01-15T10:30:00Z",
        "attempts": [], "reached": ["done@x.test"],
        "event": {"event": "monitor.down", "event_id": "e1", "account_id": "acc",
            "occurred_at": "2025-01-15T10:30:00Z", "monitor": {"id": "m", "name": "M"},
            "alert": {}}}))
    .unwrap();
    let channel = |kind: serde_json::Value| -> Channel { serde_json::from_value(kind).unwrap() };
    let slack = |token: &str, to: &str| {
        needs(
            &record,
            &channel(json!({"id": "c", "type": "slack", "bot_token": token, "channel": to})),
            &paces,
        )
    };
    assert_eq!(slack("xoxb-1", "C1"), slack("xoxb-1", "C1"));
    assert_ne!(slack("xoxb-1", "C1")[0].key, slack("xoxb-1", "C2")[0].key);
    assert_ne!(slack("xoxb-1", "C1")[0].key, slack("xoxb-2", "C1")[0].key);
    assert!(!format!("{:?}", slack("xoxb-secret", "C1")).contains("xoxb-secret"));
    let mail = needs(
        &record,
        &channel(json!({"id": "c", "type": "email", "recipients": [
            {"address": "a@x.test", "verified": true}, {"address": "done@x.test", "verified": true},
            {"address": "new@x.test", "verified": false}]})),
        &paces,
    );
    assert_eq!(
        mail.len(),
        1,
        "one bucket per verified recipient not reached yet"
    );
    let hook = |rate: serde_json::Value| {
        needs(
            &record,
            &channel(
                json!({"id": "c", "type": "webhook", "url": "https://h.example", "rate": rate}),
            ),
            &paces,
        )
    };
    assert_eq!(hook(json!(null))[0].pace, None);
    assert_eq!(hook(json!("10/1s"))[0].pace, pace("10/1s", 10));
}
