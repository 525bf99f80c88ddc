//! What handling one delivery record produces, decided without I/O: the attempt as the
//! record keeps it, and, once the retry plan has spoken, the records to write (next tier,
//! DLQ, `send-test` report) and the record's fate to count and journal.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::message::OwnedMessage;
use rdkafka::Message;

use crate::delivery::{Outcome, Silence};
use crate::kafka::producer::OutRecord;
use crate::kafka::topics::Topics;
use crate::model::{Attempt, AttemptReport, DeadLetter, DeliveryRecord, Fate};
use crate::retry::Step;

/// What a handled record leaves behind.
#[derive(Debug)]
pub struct Outputs {
    /// Written, and acknowledged, before the record's offset is stored.
    pub records: Vec<OutRecord>,
    pub fate: Fate,
}

/// The records `record` leads to once `step` is decided. `record` carries the attempt (or
/// the skip) just made; a retry's `not_before` is set on it. `attempted`: a request was
/// made, so a `send-test` delivery reports it.
pub fn outputs(
    record: &mut DeliveryRecord,
    step: &Step,
    attempted: bool,
    topics: &Topics,
    now: DateTime<Utc>,
) -> Outputs {
    let mut records = Vec::with_capacity(2);
    match step {
        Step::Done => {}
        Step::Retry { tier, not_before } => {
            record.not_before = Some(*not_before);
            let payload = serde_json::to_vec(&record).expect("delivery records serialize");
            records.push(OutRecord::new(
                topics.tier_topic(*tier),
                record.key(),
                payload,
            ));
        }
        Step::DeadLetter(reason) => {
            let letter = DeadLetter {
                reason: reason.to_string(),
                dead_lettered_at: now,
                may_have_arrived: record.attempts.iter().any(|a| a.no_answer),
                delivery: record.clone(),
            };
            let payload = serde_json::to_vec(&letter).expect("dead letters serialize");
            records.push(OutRecord::new(&topics.dlq, record.key(), payload));
        }
    }
    if let (true, Some(attempt)) = (record.report && attempted, record.attempts.last()) {
        records.push(report(record, attempt, step, topics));
    }
    Outputs {
        records,
        fate: step.fate(),
    }
}

/// The `P.reports` record of the attempt just made (for `send-test`).
fn report(record: &DeliveryRecord, attempt: &Attempt, step: &Step, topics: &Topics) -> OutRecord {
    let (next, retry_tier, not_before, reason) = match step {
        Step::Done => ("delivered", None, None, None),
        Step::Retry { tier, not_before } => ("retry", Some(*tier), Some(*not_before), None),
        Step::DeadLetter(reason) => ("dead_lettered", None, None, Some(reason.to_string())),
    };
    let report = AttemptReport {
        delivery_id: record.delivery_id.clone(),
        attempt: attempt.clone(),
        next: next.to_owned(),
        retry_tier,
        not_before,
        reason,
    };
    let payload = serde_json::to_vec(&report).expect("reports serialize");
    OutRecord::new(&topics.reports, record.delivery_id.clone(), payload)
}

/// The attempt as the delivery record keeps it.
pub fn attempt_of(
    outcome: &Outcome,
    number: u32,
    at: DateTime<Utc>,
    elapsed: Duration,
    reached: Vec<String>,
) -> Attempt {
    let no_answer = matches!(
        outcome,
        Outcome::Unanswered {
            silence: Silence::NoAnswer,
            ..
        }
    );
    Attempt {
        attempt: number,
        at,
        duration_ms: elapsed.as_millis() as u64,
        outcome: outcome.kind(),
        status: outcome.status(),
        error: outcome.error().map(str::to_owned),
        reached,
        no_answer,
    }
}

/// A record of a delivery topic that cannot be read: it goes to the DLQ as it is.
#[derive(Debug, thiserror::Error)]
pub enum Unreadable {
    #[error("delivery record has no value")]
    Empty,
    #[error("delivery record is not readable: {0}")]
    Json(#[from] serde_json::Error),
}

pub fn decode(message: &OwnedMessage) -> Result<DeliveryRecord, Unreadable> {
    let payload = message.payload().ok_or(Unreadable::Empty)?;
    Ok(serde_json::from_slice(payload)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retry::{after_skip, next_step};
    use serde_json::json;

    const DELAYS: [Duration; 2] = [Duration::from_secs(15), Duration::from_secs(60)];

    fn record() -> DeliveryRecord {
        let event = json!({"event": "monitor.down", "event_id": "e1", "account_id": "acc",
            "occurred_at": "2025-01-15T10:30:00Z", "monitor": {"id": "mon_1", "name": "API"},
            "alert": {}});
        serde_json::from_value(json!({
            "delivery_id": "msg_0123456789abcdef0123456789abcdef", "account_id": "acc",
            "channel_id": "hook", "channel_type": "webhook", "event_type": "monitor.down",
            "event_id": "e1", "severity": "critical", "created_at": "2025-01-15T10:30:00Z",
            "attempts": [], "event": event}))
        .unwrap()
    }

    fn attempted(record: &mut DeliveryRecord, outcome: &Outcome) -> Step {
        let now = Utc::now();
        let number = record.next_attempt();
        let attempt = attempt_of(outcome, number, now, Duration::ZERO, Vec::new());
        record.attempts.push(attempt);
        let answer = crate::retry::Answer::of(outcome).expect("not a rate-limit answer");
        next_step(answer, number, &DELAYS, 0.0, now)
    }

    const HOUR: Duration = Duration::from_secs(3600);

    fn written(outputs: &Outputs) -> Vec<(String, DeliveryRecord)> {
        outputs
            .records
            .iter()
            .map(|r| {
                let value: serde_json::Value =
                    serde_json::from_slice(r.payload.as_deref().unwrap()).unwrap();
                let delivery = value.get("delivery").cloned().unwrap_or(value);
                (r.topic.clone(), serde_json::from_value(delivery).unwrap())
            })
            .collect()
    }

    #[test]
    fn each_step_writes_where_it_says() {
        let topics = Topics::new("p", DELAYS.len());
        let now = Utc::now();
        let mut r = record();
        let step = attempted(&mut r, &Outcome::retry("HTTP 503"));
        let out = outputs(&mut r, &step, true, &topics, now);
        assert_eq!(out.fate, Fate::Retried);
        let [(topic, next)] = &written(&out)[..] else {
            panic!("{out:?}")
        };
        assert_eq!(topic, "p.retry.1");
        assert_eq!(next.attempts.len(), 1);
        assert!(next.not_before.is_some_and(|t| t > now));

        let step = attempted(&mut r, &Outcome::Delivered { status: Some(200) });
        let out = outputs(&mut r, &step, true, &topics, now);
        assert_eq!((out.fate, out.records.len()), (Fate::Delivered, 0));

        let mut r = record();
        let step = attempted(&mut r, &Outcome::permanent("HTTP 400"));
        let out = outputs(&mut r, &step, true, &topics, now);
        assert_eq!(out.fate, Fate::DeadLettered);
        assert_eq!(written(&out)[0].0, "p.dlq");
    }

    #[test]
    fn a_skip_is_no_attempt_and_uses_up_no_retry() {
        let topics = Topics::new("p", DELAYS.len());
        let mut r = record();
        let fail = timed_out();
        attempted(&mut r, &fail);
        // Not let through many times (a busy destination): each time back to a tier.
        let busy = crate::delivery::Skipped::Busy {
            destination: "hooks.example.com:443".into(),
            cap: 256,
        };
        for _ in 0..5 {
            r.skips += 1;
            let step = after_skip(&busy, 1, Duration::from_secs(60), HOUR, &DELAYS, Utc::now());
            let out = outputs(&mut r, &step, false, &topics, Utc::now());
            assert_eq!(out.fate, Fate::Retried);
            let [(_, next)] = &written(&out)[..] else {
                panic!("{out:?}")
            };
            assert_eq!(
                next.attempts.len(),
                1,
                "the skip is not recorded as an attempt"
            );
        }
        assert_eq!(r.skips, 5);
        // The retries left are all still there: 2 tiers, so 2 more failures before the DLQ.
        let step = attempted(&mut r, &fail);
        assert!(matches!(step, Step::Retry { tier: 2, .. }), "{step:?}");
        let Step::DeadLetter(reason) = attempted(&mut r, &fail) else {
            panic!("after the last tier")
        };
        assert!(
            reason.to_string().starts_with("failed 3 attempts"),
            "{reason}"
        );
    }

    #[test]
    fn skips_never_look_like_unanswered_requests() {
        let mut r = record();
        r.skips = 3;
        assert!(
            !r.had_unanswered_attempt(),
            "no request was made: nothing to resolve again in PagerDuty"
        );
        attempted(&mut r, &timed_out());
        assert!(r.had_unanswered_attempt());
    }

    fn timed_out() -> Outcome {
        Outcome::Unanswered {
            error: "timed out after 10s".into(),
            silence: Silence::NoAnswer,
        }
    }

    #[test]
    fn a_dead_letter_with_an_attempt_that_timed_out_may_have_arrived() {
        let topics = Topics::new("p", DELAYS.len());
        let refused = Outcome::Unanswered {
            error: "connection failed: refused".into(),
            silence: Silence::Unreachable,
        };
        let letter = |attempts: [&Outcome; 3]| {
            let mut r = record();
            for outcome in &attempts[..2] {
                attempted(&mut r, outcome);
            }
            let step = attempted(&mut r, attempts[2]);
            let out = outputs(&mut r, &step, true, &topics, Utc::now());
            let letter: DeadLetter =
                serde_json::from_slice(out.records[0].payload.as_deref().unwrap()).unwrap();
            assert!(
                letter.reason.starts_with("failed 3 attempts"),
                "{}",
                letter.reason
            );
            letter.may_have_arrived
        };
        let (failed, timed_out) = (Outcome::retry("HTTP 500"), timed_out());
        assert!(
            letter([&failed, &failed, &timed_out]),
            "timed out: the receiver may have it"
        );
        assert!(
            letter([&timed_out, &failed, &failed]),
            "an earlier attempt timed out: the receiver may have it"
        );
        assert!(
            !letter([&failed, &refused, &failed]),
            "refused: nothing was sent; 500: answered"
        );
    }

    #[test]
    fn a_send_test_delivery_reports_attempts_not_skips() {
        let topics = Topics::new("p", DELAYS.len());
        let mut r = record();
        r.report = true;
        let busy = crate::delivery::Skipped::Busy {
            destination: "hooks.example.com:443".into(),
            cap: 256,
        };
        let step = after_skip(&busy, 0, Duration::ZERO, HOUR, &DELAYS, Utc::now());
        let out = outputs(&mut r, &step, false, &topics, Utc::now());
        assert!(out.records.iter().all(|o| o.topic != "p.reports"));
        let step = attempted(&mut r, &Outcome::Delivered { status: Some(200) });
        let out = outputs(&mut r, &step, true, &topics, Utc::now());
        let report: AttemptReport =
            serde_json::from_slice(out.records[0].payload.as_deref().unwrap()).unwrap();
        assert_eq!(
            (out.records[0].topic.as_str(), report.next.as_str()),
            ("p.reports", "delivered")
        );
    }
}
