//! Unit tests of pacing: reserved turns, holds, the line in memory, parked turns, bucket keys.

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

const HOUR: Duration = Duration::from_secs(3600);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn a_bucket_gives_its_burst_then_keeps_its_pace() {
    let pacer = Pacer::default();
    let slack = [need("ops", pace("1/1s", 2))];
    let now = Instant::now();
    let turns: Vec<Duration> = (0..4)
        .map(|_| pacer.turn(&slack, now, HOUR).unwrap())
        .collect();
    assert_eq!(
        turns,
        [ms(0), ms(0), ms(1010), ms(2020)],
        "2 at once, then 1/s (1% under it)"
    );
    assert_eq!(
        pacer.turn(&[need("other", pace("1/1s", 2))], now, HOUR),
        Ok(ms(0)),
        "another bucket has its own turns"
    );
    let later = now + ms(10_000);
    assert_eq!(
        pacer.turn(&slack, later, HOUR),
        Ok(ms(0)),
        "an idle bucket has refilled"
    );
    let unpaced = [need("hook", None)];
    for _ in 0..100 {
        assert_eq!(
            pacer.turn(&unpaced, now, HOUR),
            Ok(ms(0)),
            "no pace: no limit"
        );
    }
}

#[test]
fn turns_are_first_come_first_served_and_a_far_one_is_not_reserved() {
    let pacer = Pacer::default();
    let bucket = [need("ops", pace("10/1s", 1))];
    let now = Instant::now();
    let turns: Vec<Duration> = (0..3)
        .map(|_| pacer.turn(&bucket, now, HOUR).unwrap())
        .collect();
    assert_eq!(turns, [ms(0), ms(101), ms(202)]);
    assert_eq!(
        pacer.turn(&bucket, now, ms(250)),
        Err(ms(303)),
        "past the allowance (delivery.max_pending): told, not reserved"
    );
    assert_eq!(
        pacer.turn(&bucket, now + ms(50), HOUR),
        Ok(ms(253)),
        "a later arrival comes after every turn reserved before it"
    );
}

#[test]
fn a_hold_stops_its_bucket_or_its_provider_only() {
    let pacer = Pacer::default();
    let a = [need("a", pace("10/1s", 5))];
    let b = [need("b", pace("10/1s", 5))];
    let now = Instant::now();
    assert_eq!(pacer.turn(&a, now, HOUR), Ok(ms(0)));
    pacer.hold(&a[0].key, now + Duration::from_secs(30));
    assert!(pacer.turn(&a, now, HOUR).unwrap() >= Duration::from_secs(30));
    assert_eq!(
        pacer.turn(&b, now, HOUR),
        Ok(ms(0)),
        "another bucket is not held"
    );
    pacer.hold_provider(Provider::Slack, now + Duration::from_secs(5));
    assert_eq!(pacer.turn(&b, now, HOUR), Ok(Duration::from_secs(5)));
    let later = now + Duration::from_secs(6);
    assert_eq!(pacer.turn(&b, later, HOUR), Ok(ms(0)), "the hold ends");
}

#[test]
fn a_hold_moves_the_reserved_turns_back_in_order() {
    let pacer = Pacer::default();
    let bucket = [need("ops", pace("1/1s", 1))];
    let now = Instant::now();
    let turns: Vec<Duration> = (0..3)
        .map(|_| pacer.turn(&bucket, now, HOUR).unwrap())
        .collect();
    assert_eq!(turns, [ms(0), ms(1010), ms(2020)]);
    assert_eq!(pacer.shifted(&bucket), Duration::ZERO);
    pacer.hold(&bucket[0].key, Instant::now() + Duration::from_secs(30));
    let shifted = pacer.shifted(&bucket);
    assert!(
        (ms(29_900)..=ms(30_000)).contains(&shifted),
        "the waiting turns move back by the hold: {shifted:?}"
    );
    let next = pacer.turn(&bucket, now, HOUR).unwrap();
    assert!(
        next >= ms(32_900),
        "a newcomer comes after the moved turns: {next:?}"
    );
    pacer.hold(&bucket[0].key, Instant::now() + Duration::from_secs(10));
    assert_eq!(
        pacer.shifted(&bucket),
        shifted,
        "a shorter hold adds nothing"
    );
}

#[test]
fn the_line_in_memory_is_bounded_and_a_long_hold_is_not_waited_there() {
    let pacer = Pacer::default();
    let bucket = [need("ops", pace("1/1s", 1))];
    let patience = Duration::from_secs(15);
    let places: Vec<_> = (0..LINE)
        .map(|_| pacer.line(&bucket, patience).expect("room in line"))
        .collect();
    assert!(pacer.line(&bucket, patience).is_none(), "the line is full");
    drop(places);
    assert!(
        pacer.line(&bucket, patience).is_some(),
        "places are given back"
    );
    pacer.hold(&bucket[0].key, Instant::now() + Duration::from_secs(60));
    assert!(
        pacer.line(&bucket, patience).is_none(),
        "held longer than the patience: waited in a retry tier"
    );
}

#[test]
fn a_parked_delivery_claims_the_turn_it_reserved() {
    let pacer = Pacer::default();
    let bucket = [need("ops", pace("1/1s", 1))];
    let now = Instant::now();
    let on_time = Duration::ZERO;
    assert_eq!(pacer.turn(&bucket, now, HOUR), Ok(ms(0)));
    assert_eq!(pacer.turn(&bucket, now, HOUR), Ok(ms(1010)));
    assert!(
        !pacer.claim(&bucket, now, on_time),
        "nothing parked: nothing owed"
    );
    pacer.park(&bucket);
    assert_eq!(
        pacer.turn(&bucket, now + ms(500), HOUR),
        Ok(ms(1520)),
        "a newcomer goes after the parked delivery's turn"
    );
    let back = now + ms(1010);
    assert!(
        pacer.claim(&bucket, back, on_time),
        "back at its turn, it takes it"
    );
    assert!(!pacer.claim(&bucket, back, on_time), "once");
    pacer.park(&bucket);
    assert!(
        !pacer.claim(&bucket, back, ms(5000)),
        "back long after its turn: the turn is gone, it reserves anew (no burst)"
    );
    pacer.park(&bucket);
    pacer.hold(&bucket[0].key, back + Duration::from_secs(30));
    let after_hold = back + Duration::from_secs(31);
    assert!(
        !pacer.claim(&bucket, after_hold, on_time),
        "a hold voids the parked turns: they would meet the moved line"
    );
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

#[test]
fn a_bucket_taken_over_busy_resumes_at_its_pace_and_a_quiet_one_keeps_its_burst() {
    let pacer = Pacer::default();
    let now = Instant::now();
    let busy = [need("busy", pace("2/1s", 2))];
    let quiet = [need("quiet", pace("2/1s", 2))];
    // Assigned now; `busy` was sent to 100 ms ago by the previous owner, `quiet` 5 s ago.
    pacer.take_over(&busy, now, Some(now - ms(100)));
    pacer.take_over(&quiet, now, Some(now - ms(5000)));
    let turns = |needs: &[Need]| -> Vec<Duration> {
        (0..3)
            .map(|_| pacer.turn(needs, now, HOUR).unwrap())
            .collect()
    };
    assert_eq!(
        turns(&busy),
        [ms(505), ms(1010), ms(1515)],
        "drained at the handover"
    );
    assert_eq!(turns(&quiet), [ms(0), ms(0), ms(505)], "a full burst");
    // Asked again under the same assignment, the bucket keeps the turns it gave since.
    pacer.take_over(&busy, now, Some(now));
    assert_eq!(pacer.turn(&busy, now, HOUR), Ok(ms(2020)));
    // A later assignment takes it over again, never giving back reserved turns.
    pacer.take_over(&busy, now + ms(100), Some(now + ms(100)));
    assert_eq!(pacer.turn(&busy, now, HOUR), Ok(ms(2525)));
    let unpaced = [need("hook", None)];
    pacer.take_over(&unpaced, now, Some(now));
    let fresh = [need("fresh", pace("2/1s", 2))];
    pacer.take_over(&fresh, now, None);
    assert_eq!(pacer.turn(&fresh, now, HOUR), Ok(ms(0)));
    pacer.take_over(&fresh, now, Some(now));
    assert_eq!(
        pacer.turn(&fresh, now, HOUR),
        Ok(ms(0)),
        "first asked quiet under this assignment: its own sends since are its own to pace"
    );
    assert_eq!(
        pacer.turn(&unpaced, now, HOUR),
        Ok(ms(0)),
        "no pace: no limit"
    );
}

/// A provider's token bucket at exactly `per_second`: how many of `requests` (sorted, from
/// the start) it refuses.
fn refused_by_provider(requests: &[Duration], per_second: f64, burst: f64) -> usize {
    let (mut tokens, mut at, mut refused) = (burst, 0.0, 0);
    for request in requests {
        let t = request.as_secs_f64();
        tokens = (tokens + (t - at) * per_second).min(burst);
        at = t;
        if tokens >= 1.0 - 1e-9 {
            tokens -= 1.0;
        } else {
            refused += 1;
        }
    }
    refused
}

/// Deliveries offered at twice a bucket's pace of 20/s for 10 s, through the pacer: one that
/// would wait more than 0.5 s is parked and comes back on time, a little late, or seconds
/// late (as after a broker restart). Its requests, sorted, from the start.
struct Storm {
    pacer: Pacer,
    bucket: [Need; 1],
    start: Instant,
    rng: u64,
    /// (back at, its reserved turn) of each parked delivery.
    parked: Vec<(Duration, Duration)>,
    requests: Vec<Duration>,
}

impl Storm {
    fn run(burst: u32, seed: u64) -> Vec<Duration> {
        let mut storm = Storm {
            pacer: Pacer::default(),
            bucket: [need("hook", pace("20/1s", burst))],
            start: Instant::now(),
            rng: seed | 1,
            parked: Vec::new(),
            requests: Vec::new(),
        };
        let mut now = Duration::ZERO;
        while now < Duration::from_secs(10) || !storm.parked.is_empty() {
            storm.back_by(now);
            if now < Duration::from_secs(10) {
                storm.take_turn(now);
            }
            now += ms(25);
        }
        storm.requests.sort();
        storm.requests
    }

    fn random(&mut self, n: u64) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % n
    }

    fn take_turn(&mut self, at: Duration) {
        let wait = self
            .pacer
            .turn(&self.bucket, self.start + at, HOUR)
            .unwrap();
        if wait <= ms(500) {
            return self.requests.push(at + wait);
        }
        self.pacer.park(&self.bucket);
        let late = match self.random(4) {
            0 | 1 => Duration::ZERO,
            2 => ms(self.random(200)),
            _ => ms(1000 + self.random(4000)),
        };
        self.parked.push((at + wait + late, at + wait));
    }

    fn back_by(&mut self, now: Duration) {
        // In the order they come back: time runs forward for the pacer.
        loop {
            self.parked
                .sort_by_key(|(back, _)| std::cmp::Reverse(*back));
            if self.parked.last().is_none_or(|(back, _)| *back > now) {
                break;
            }
            let (back, turn) = self.parked.pop().expect("one back");
            if self
                .pacer
                .claim(&self.bucket, self.start + back, back - turn)
            {
                self.requests.push(back);
            } else {
                self.take_turn(back);
            }
        }
    }
}

#[test]
fn parked_deliveries_back_on_time_or_late_never_go_over_the_pace() {
    for seed in 1..=20 {
        let requests = Storm::run(20, seed);
        assert_eq!(requests.len(), 400, "seed {seed}: every delivery made");
        assert_eq!(
            refused_by_provider(&requests, 20.0, 20.0),
            0,
            "seed {seed}: never over the provider's bucket"
        );
    }
}
