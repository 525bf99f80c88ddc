//! The retry tiers as data: after an attempt, or a skip, where does a delivery go next?
//! Tier `k` (`P.retry.k`) holds a delivery that has failed `k` attempts (or, after a skip, is
//! waiting with fewer) and waits `retry.delays[k - 1]`; tier 0 is `P.deliveries`.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::delivery::{Outcome, Skipped};
use crate::model::Fate;

/// Where a delivery goes next.
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

impl Step {
    /// What becomes of the record read.
    pub fn fate(&self) -> Fate {
        match self {
            Step::Done => Fate::Delivered,
            Step::Retry { .. } => Fate::Retried,
            Step::DeadLetter { .. } => Fate::DeadLettered,
        }
    }
}

/// The plan after attempt number `attempts` (1 for the first): a failure that may pass goes
/// to tier `attempts` and waits its delay (or the provider's `Retry-After` when longer); past
/// the last tier, or when it will not pass, the DLQ.
pub fn next_step(
    outcome: &Outcome,
    attempts: u32,
    delays: &[Duration],
    now: DateTime<Utc>,
) -> Step {
    match outcome {
        Outcome::Delivered { .. } => Step::Done,
        // Not a failed attempt: the delivery waits for its bucket like any other.
        Outcome::RateLimited { wait, .. } => {
            park(*wait, delays, now).unwrap_or_else(|| Step::DeadLetter {
                reason: "rate limited, with no retry tier to wait in (retry.delays is empty)"
                    .to_owned(),
            })
        }
        Outcome::Permanent { error, .. } => Step::DeadLetter {
            reason: format!("permanent failure: {error}"),
        },
        Outcome::Retry {
            error, retry_after, ..
        } => {
            let tier = attempts as usize;
            match tier.checked_sub(1).and_then(|i| delays.get(i)) {
                Some(delay) => {
                    let wait = retry_after.map_or(*delay, |r| r.max(*delay));
                    Step::Retry {
                        tier,
                        not_before: now + chrono_duration(wait),
                    }
                }
                None => Step::DeadLetter {
                    reason: format!("gave up after {attempts} attempts; last error: {error}"),
                },
            }
        }
    }
}

/// The plan for a delivery that was due but not let through to its destination, after
/// `attempts` real attempts and `waited` since the delivery began. A skip uses up no retry:
/// the delivery waits in the tier of its attempts (at least the first, at most the last).
/// - Busy (a slow but healthy provider in a storm): it never dead-letters.
/// - Open circuit (the destination does not answer): once it has waited as long as the retry
///   tiers together, it is dead-lettered, as its attempts would have been by then.
///
/// With no tiers there is nowhere to wait.
pub fn after_skip(
    skipped: &Skipped,
    attempts: u32,
    waited: Duration,
    delays: &[Duration],
    now: DateTime<Utc>,
) -> Step {
    let window: Duration = delays.iter().sum();
    let unreachable = matches!(skipped, Skipped::CircuitOpen { .. });
    if delays.is_empty() || (unreachable && waited >= window) {
        return Step::DeadLetter {
            reason: format!(
                "{skipped}; gave up after {attempts} attempts and {}s of waiting",
                waited.as_secs()
            ),
        };
    }
    let tier = (attempts as usize).clamp(1, delays.len());
    Step::Retry {
        tier,
        not_before: now + chrono_duration(delays[tier - 1]),
    }
}

/// Where a delivery that must wait `wait` for its bucket waits (a wait uses up no retry):
/// in the tier with the longest delay not above the wait (at least the first), due after
/// `wait`. A tier's reader holds such a record until the tier's own delay has passed, then
/// writes it to the tier again if it is still not due, so it never holds the tier's other
/// records back. `None` with no tiers.
pub fn park(wait: Duration, delays: &[Duration], now: DateTime<Utc>) -> Option<Step> {
    let fits = delays.iter().rposition(|d| *d <= wait).unwrap_or(0);
    (!delays.is_empty()).then(|| Step::Retry {
        tier: fits + 1,
        not_before: now + chrono_duration(wait),
    })
}

fn chrono_duration(wait: Duration) -> chrono::Duration {
    chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAYS: [Duration; 3] = [
        Duration::from_secs(15),
        Duration::from_secs(60),
        Duration::from_secs(240),
    ];

    fn retry(tier: usize, now: DateTime<Utc>, secs: i64) -> Step {
        Step::Retry {
            tier,
            not_before: now + chrono::Duration::seconds(secs),
        }
    }

    #[test]
    fn tiers_then_dead_letter() {
        let now = Utc::now();
        let fail = Outcome::retry("HTTP 500");
        assert_eq!(next_step(&fail, 1, &DELAYS, now), retry(1, now, 15));
        assert_eq!(next_step(&fail, 2, &DELAYS, now), retry(2, now, 60));
        assert_eq!(next_step(&fail, 3, &DELAYS, now), retry(3, now, 240));
        let Step::DeadLetter { reason } = next_step(&fail, 4, &DELAYS, now) else {
            panic!()
        };
        assert!(
            reason.contains("4 attempts") && reason.contains("HTTP 500"),
            "{reason}"
        );
        let delivered = Outcome::Delivered { status: Some(200) };
        assert_eq!(next_step(&delivered, 3, &DELAYS, now), Step::Done);
        assert!(matches!(
            next_step(&Outcome::permanent("HTTP 400"), 1, &DELAYS, now),
            Step::DeadLetter { .. }
        ));
        assert!(
            matches!(next_step(&fail, 1, &[], now), Step::DeadLetter { .. }),
            "no tiers: straight to the DLQ"
        );
    }

    fn busy() -> Skipped {
        Skipped::Busy {
            destination: "hooks.example.com:443".into(),
            cap: 256,
        }
    }

    fn circuit_open() -> Skipped {
        Skipped::CircuitOpen {
            destination: "hooks.example.com:443".into(),
            threshold: 5,
            cooldown: Duration::from_secs(30),
        }
    }

    #[test]
    fn a_skip_waits_in_the_tier_of_its_attempts() {
        let now = Utc::now();
        let table = [
            (0, retry(1, now, 15)),
            (1, retry(1, now, 15)),
            (2, retry(2, now, 60)),
            (3, retry(3, now, 240)),
            (40, retry(3, now, 240)),
        ];
        for skipped in [busy(), circuit_open()] {
            for (attempts, expected) in &table {
                let step = after_skip(&skipped, *attempts, Duration::ZERO, &DELAYS, now);
                assert_eq!(&step, expected, "{skipped}, {attempts} attempts");
            }
        }
    }

    #[test]
    fn only_an_open_circuit_dead_letters_and_only_after_the_retry_window() {
        let now = Utc::now();
        let window: Duration = DELAYS.iter().sum();
        let day = Duration::from_secs(86_400);
        assert_eq!(
            after_skip(&busy(), 3, day, &DELAYS, now),
            retry(3, now, 240),
            "a busy destination answers: its deliveries wait however long"
        );
        let almost = window - Duration::from_secs(1);
        assert_eq!(
            after_skip(&circuit_open(), 1, almost, &DELAYS, now),
            retry(1, now, 15)
        );
        let Step::DeadLetter { reason } = after_skip(&circuit_open(), 1, window, &DELAYS, now)
        else {
            panic!("waited as long as the tiers together")
        };
        assert!(
            reason.contains("circuit to hooks.example.com:443") && reason.contains("1 attempts"),
            "{reason}"
        );
        assert!(
            matches!(
                after_skip(&busy(), 0, Duration::ZERO, &[], now),
                Step::DeadLetter { .. }
            ),
            "no tiers at all: nowhere to wait"
        );
    }

    #[test]
    fn a_wait_parks_in_the_tier_that_fits_it() {
        let now = Utc::now();
        let table = [
            (5, 1),
            (15, 1),
            (59, 1),
            (60, 2),
            (239, 2),
            (240, 3),
            (3600, 3),
        ];
        for (secs, tier) in table {
            assert_eq!(
                park(Duration::from_secs(secs), &DELAYS, now),
                Some(retry(tier, now, secs as i64)),
                "{secs} s"
            );
        }
        assert_eq!(park(Duration::from_secs(5), &[], now), None);
    }

    #[test]
    fn retry_after_only_lengthens_the_wait() {
        let delays = [Duration::from_secs(15)];
        let now = Utc::now();
        let answer = |secs| Outcome::Retry {
            status: Some(429),
            error: "HTTP 429".into(),
            retry_after: Some(Duration::from_secs(secs)),
        };
        assert_eq!(next_step(&answer(90), 1, &delays, now), retry(1, now, 90));
        assert_eq!(next_step(&answer(1), 1, &delays, now), retry(1, now, 15));
    }
}
