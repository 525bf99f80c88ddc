//! Retry tiers as data: after an attempt in tier `k` (0 = `P.deliveries`), where does the
//! delivery go next? `consumer` is the loop that attempts deliveries and applies the plan.

pub mod consumer;

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::delivery::Outcome;

/// Where a delivery goes after an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Done,
    /// To tier `tier` (`P.retry.tier`), not to be attempted before `not_before`.
    Retry {
        tier: usize,
        not_before: DateTime<Utc>,
    },
    DeadLetter {
        reason: String,
    },
}

/// The plan: a failure that may pass goes one tier up and waits that tier's delay (or the
/// provider's `Retry-After` when longer); past the last tier, or when it will not pass, the DLQ.
/// A delivery `deferred` because its destination was busy (at its in-flight cap, answering,
/// just slowly) was not attempted: past the last tier it waits in the last tier again rather
/// than being dead-lettered, so a slow but healthy provider in a storm loses nothing to the DLQ.
pub fn next_step(
    outcome: &Outcome,
    tier: usize,
    delays: &[Duration],
    now: DateTime<Utc>,
    deferred: bool,
) -> Step {
    match outcome {
        Outcome::Delivered { .. } => Step::Done,
        Outcome::Permanent { error, .. } => Step::DeadLetter {
            reason: format!("permanent failure: {error}"),
        },
        Outcome::Retry {
            error, retry_after, ..
        } => match delays.get(tier).or(delays.last().filter(|_| deferred)) {
            Some(delay) => {
                let wait = retry_after.map_or(*delay, |r| r.max(*delay));
                let wait = chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
                Step::Retry {
                    tier: (tier + 1).min(delays.len()),
                    not_before: now + wait,
                }
            }
            None => Step::DeadLetter {
                reason: format!("gave up after {} attempts; last error: {error}", tier + 1),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_then_dead_letter() {
        let delays = [
            Duration::from_secs(15),
            Duration::from_secs(60),
            Duration::from_secs(240),
        ];
        let now = Utc::now();
        let fail = Outcome::retry("HTTP 500");
        assert_eq!(
            next_step(&fail, 0, &delays, now, false),
            Step::Retry {
                tier: 1,
                not_before: now + chrono::Duration::seconds(15)
            }
        );
        assert_eq!(
            next_step(&fail, 1, &delays, now, false),
            Step::Retry {
                tier: 2,
                not_before: now + chrono::Duration::seconds(60)
            }
        );
        assert_eq!(
            next_step(&fail, 2, &delays, now, false),
            Step::Retry {
                tier: 3,
                not_before: now + chrono::Duration::seconds(240)
            }
        );
        let Step::DeadLetter { reason } = next_step(&fail, 3, &delays, now, false) else {
            panic!()
        };
        assert!(
            reason.contains("4 attempts") && reason.contains("HTTP 500"),
            "{reason}"
        );
        assert_eq!(
            next_step(
                &Outcome::Delivered { status: Some(200) },
                2,
                &delays,
                now,
                false
            ),
            Step::Done
        );
        assert!(matches!(
            next_step(&Outcome::permanent("HTTP 400"), 0, &delays, now, false),
            Step::DeadLetter { .. }
        ));
        assert!(
            matches!(
                next_step(&fail, 0, &[], now, false),
                Step::DeadLetter { .. }
            ),
            "no tiers: straight to the DLQ"
        );
    }

    #[test]
    fn a_busy_destination_never_sends_a_delivery_to_the_dlq() {
        let delays = [Duration::from_secs(15), Duration::from_secs(60)];
        let now = Utc::now();
        let busy = Outcome::retry("destination busy");
        assert_eq!(
            next_step(&busy, 2, &delays, now, true),
            Step::Retry {
                tier: 2,
                not_before: now + chrono::Duration::seconds(60)
            },
            "waits in the last tier again"
        );
        assert!(matches!(
            next_step(&busy, 2, &delays, now, false),
            Step::DeadLetter { .. }
        ));
        assert!(
            matches!(next_step(&busy, 0, &[], now, true), Step::DeadLetter { .. }),
            "no tiers at all: nowhere to wait"
        );
    }

    #[test]
    fn retry_after_only_lengthens_the_wait() {
        let delays = [Duration::from_secs(15)];
        let now = Utc::now();
        let slow = Outcome::Retry {
            status: Some(429),
            error: "HTTP 429".into(),
            retry_after: Some(Duration::from_secs(90)),
        };
        assert_eq!(
            next_step(&slow, 0, &delays, now, false),
            Step::Retry {
                tier: 1,
                not_before: now + chrono::Duration::seconds(90)
            }
        );
        let fast = Outcome::Retry {
            status: Some(429),
            error: "HTTP 429".into(),
            retry_after: Some(Duration::from_secs(1)),
        };
        assert_eq!(
            next_step(&fast, 0, &delays, now, false),
            Step::Retry {
                tier: 1,
                not_before: now + chrono::Duration::seconds(15)
            }
        );
    }
}
