//! The retry tiers as data: after an attempt, or a skip, where does a delivery go next, and
//! why is it dead-lettered? Tier `k` (`P.retry.k`) holds a delivery that has failed `k`
//! attempts (or, after a skip, is waiting with fewer) and waits `retry.delays[k - 1]`; tier 0
//! is `P.deliveries`. Waiting is not failing (CONTRACT §6): a delivery the service held back
//! (its bucket's pace, a rate-limit answer, an open circuit, a busy or unreachable host) uses
//! up no retry, and is dead-lettered for that only after `delivery.max_pending` of such waiting.

use std::fmt;
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
    DeadLetter(Reason),
}

impl Step {
    /// What becomes of the record read.
    pub fn fate(&self) -> Fate {
        match self {
            Step::Done => Fate::Delivered,
            Step::Retry { .. } => Fate::Retried,
            Step::DeadLetter(_) => Fate::DeadLettered,
        }
    }
}

/// Why a delivery is dead-lettered: the `reason` of its DLQ record, and of its log line.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// Every attempt the tiers allow was made and failed.
    Failed { attempts: u32, last_error: String },
    /// A failure that will not pass.
    Permanent { error: String },
    /// Held back by the service itself for `delivery.max_pending` (or, for a bucket's turn,
    /// its turn lies past it).
    Waited { waited: Duration, held: Held },
    /// Its bucket's turn lies further than `delivery.max_pending` leaves it, after `waited`.
    TurnTooFar { waited: Duration, turn_in: Duration },
    /// Held back, with no retry tier to wait in (`retry.delays` is empty).
    NowhereToWait { held: Held },
}

impl Reason {
    /// A word for the kind of reason, for counts in a log summary.
    pub fn label(&self) -> &'static str {
        match self {
            Reason::Failed { .. } => "failed",
            Reason::Permanent { .. } => "permanent",
            Reason::Waited { .. } | Reason::TurnTooFar { .. } => "waited",
            Reason::NowhereToWait { .. } => "nowhere_to_wait",
        }
    }
}

/// What a delivery waited for without an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Held {
    /// Its bucket's turn: the pace, or a rate-limit answer.
    RateLimit,
    /// Its destination did not let it through.
    Skipped(Skipped),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Failed {
                attempts,
                last_error,
            } => write!(f, "failed {attempts} attempts: {last_error}"),
            Reason::Permanent { error } => write!(f, "permanent failure: {error}"),
            Reason::Waited { waited, held } => {
                let waited = Duration::from_secs(waited.as_secs());
                write!(
                    f,
                    "waited {} for {held}",
                    humantime::format_duration(waited)
                )?;
                f.write_str(" (delivery.max_pending)")
            }
            Reason::TurnTooFar { waited, turn_in } => write!(
                f,
                "waited {} for its provider's rate limit, and its turn is {} further away, \
                 past delivery.max_pending",
                humantime::format_duration(Duration::from_secs(waited.as_secs())),
                humantime::format_duration(Duration::from_secs(turn_in.as_secs()))
            ),
            Reason::NowhereToWait { held } => write!(
                f,
                "held back by {held}, with no retry tier to wait in (retry.delays is empty)"
            ),
        }
    }
}

impl fmt::Display for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Held::RateLimit => f.write_str("its provider's rate limit"),
            Held::Skipped(Skipped::Busy { destination, .. }) => write!(
                f,
                "a free slot at {destination} (delivery.max_in_flight_per_destination)"
            ),
            Held::Skipped(Skipped::CircuitOpen { destination, .. }) => write!(
                f,
                "the circuit of this channel's endpoint on {destination} to close"
            ),
            Held::Skipped(Skipped::HostUnreachable { destination, .. }) => {
                write!(f, "{destination} to be reachable")
            }
        }
    }
}

/// An attempt's outcome as the tier plan takes it: every [`Outcome`] but a rate-limit answer,
/// which is no attempt (the delivery waits for its bucket's next turn, `crate::deliverer`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Answer<'a> {
    Delivered,
    /// A failure that may pass: the next tier, no earlier than `retry_after` when given.
    MayPass {
        error: &'a str,
        retry_after: Option<Duration>,
    },
    /// A failure that will not pass.
    WillNotPass {
        error: &'a str,
    },
}

/// A rate-limit answer: how long its bucket (or, `provider_wide`, its provider) waits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit<'a> {
    pub wait: Duration,
    pub provider_wide: bool,
    pub error: &'a str,
}

impl<'a> Answer<'a> {
    /// The answer `outcome` is to the tier plan, or the rate limit it asks for.
    pub fn of(outcome: &'a Outcome) -> Result<Self, RateLimit<'a>> {
        match outcome {
            Outcome::Delivered { .. } => Ok(Answer::Delivered),
            Outcome::Retry {
                error, retry_after, ..
            } => Ok(Answer::MayPass {
                error,
                retry_after: *retry_after,
            }),
            Outcome::Unanswered { error, .. } => Ok(Answer::MayPass {
                error,
                retry_after: None,
            }),
            Outcome::Permanent { error, .. } => Ok(Answer::WillNotPass { error }),
            Outcome::RateLimited {
                wait,
                provider_wide,
                error,
                ..
            } => Err(RateLimit {
                wait: *wait,
                provider_wide: *provider_wide,
                error,
            }),
        }
    }
}

/// Retries of one tier written together come back spread over up to this share of its delay
/// (at most the first tier's delay, which is waited in memory): never sooner than the delay.
pub const JITTER: f64 = 0.1;

/// The plan after attempt number `attempts` (1 for the first): a failure that may pass goes
/// to tier `attempts` and waits its delay, plus `spread` (0 to 1) of its jitter (or the
/// provider's `Retry-After` when longer); past the last tier, or when it will not pass, the
/// DLQ.
pub fn next_step(
    answer: Answer<'_>,
    attempts: u32,
    delays: &[Duration],
    spread: f64,
    now: DateTime<Utc>,
) -> Step {
    let (error, retry_after) = match answer {
        Answer::Delivered => return Step::Done,
        Answer::WillNotPass { error } => {
            let error = error.to_owned();
            return Step::DeadLetter(Reason::Permanent { error });
        }
        Answer::MayPass { error, retry_after } => (error, retry_after),
    };
    let tier = attempts as usize;
    match tier.checked_sub(1).and_then(|i| delays.get(i)) {
        Some(delay) => {
            let jitter = delay
                .mul_f64(JITTER)
                .min(delays[0])
                .mul_f64(spread.clamp(0.0, 1.0));
            let wait = retry_after.map_or(*delay + jitter, |r| r.max(*delay + jitter));
            Step::Retry {
                tier,
                not_before: now + chrono_duration(wait),
            }
        }
        None => Step::DeadLetter(Reason::Failed {
            attempts,
            last_error: error.to_owned(),
        }),
    }
}

/// A number in [0, 1) from `parts`, the same each time: where in its jitter one delivery's
/// retry falls ([`next_step`]'s `spread`).
pub fn spread(parts: &[&str]) -> f64 {
    let hash = crate::pacing::hashed(parts);
    let head = u64::from_str_radix(&hash[..13], 16).unwrap_or(0);
    head as f64 / (1u64 << 52) as f64
}

/// The plan for a delivery that was due but not let through to its destination, after
/// `attempts` real attempts, having waited `waited` without an attempt so far: it waits in
/// the tier of its attempts (at least the first, at most the last), using up no retry, until
/// `max_pending` of such waiting. With no tiers there is nowhere to wait.
pub fn after_skip(
    skipped: &Skipped,
    attempts: u32,
    waited: Duration,
    max_pending: Duration,
    delays: &[Duration],
    now: DateTime<Utc>,
) -> Step {
    let held = Held::Skipped(skipped.clone());
    if delays.is_empty() {
        return Step::DeadLetter(Reason::NowhereToWait { held });
    }
    if waited >= max_pending {
        return Step::DeadLetter(Reason::Waited { waited, held });
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
/// records back. With no tiers, the DLQ.
pub fn park(wait: Duration, delays: &[Duration], now: DateTime<Utc>) -> Step {
    if delays.is_empty() {
        return Step::DeadLetter(Reason::NowhereToWait {
            held: Held::RateLimit,
        });
    }
    let fits = delays.iter().rposition(|d| *d <= wait).unwrap_or(0);
    Step::Retry {
        tier: fits + 1,
        not_before: now + chrono_duration(wait),
    }
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
    const HOUR: Duration = Duration::from_secs(3600);

    fn answer(outcome: &Outcome) -> Answer<'_> {
        Answer::of(outcome).expect("not a rate-limit answer")
    }

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
        assert_eq!(
            next_step(answer(&fail), 1, &DELAYS, 0.0, now),
            retry(1, now, 15)
        );
        assert_eq!(
            next_step(answer(&fail), 2, &DELAYS, 0.0, now),
            retry(2, now, 60)
        );
        assert_eq!(
            next_step(answer(&fail), 3, &DELAYS, 0.0, now),
            retry(3, now, 240)
        );
        let Step::DeadLetter(reason) = next_step(answer(&fail), 4, &DELAYS, 0.0, now) else {
            panic!()
        };
        assert_eq!(reason.to_string(), "failed 4 attempts: HTTP 500");
        let delivered = Outcome::Delivered { status: Some(200) };
        assert_eq!(
            next_step(answer(&delivered), 3, &DELAYS, 0.0, now),
            Step::Done
        );
        let Step::DeadLetter(reason) = next_step(
            answer(&Outcome::permanent("HTTP 400")),
            1,
            &DELAYS,
            0.0,
            now,
        ) else {
            panic!()
        };
        assert_eq!(reason.to_string(), "permanent failure: HTTP 400");
        assert!(
            matches!(
                next_step(answer(&fail), 1, &[], 0.0, now),
                Step::DeadLetter(Reason::Failed { attempts: 1, .. })
            ),
            "no tiers: straight to the DLQ"
        );
    }

    #[test]
    fn retries_are_spread_over_a_tenth_of_the_delay_never_sooner() {
        let now = Utc::now();
        let fail = Outcome::retry("HTTP 503");
        let table = [
            (1, 0.0, 15_000),
            (1, 0.5, 15_750),
            (2, 0.5, 63_000),
            (2, 1.0, 66_000),
            // A tenth of 4 minutes is more than the first tier's 15 s: 15 s at most.
            (3, 1.0, 255_000),
            (3, 2.0, 255_000),
        ];
        for (attempts, spread, ms) in table {
            assert_eq!(
                next_step(answer(&fail), attempts, &DELAYS, spread, now),
                Step::Retry {
                    tier: attempts as usize,
                    not_before: now + chrono::Duration::milliseconds(ms)
                },
                "attempt {attempts}, spread {spread}"
            );
        }
        let spreads: Vec<f64> = (0..1000)
            .map(|n| super::spread(&["msg", &n.to_string()]))
            .collect();
        assert!(spreads.iter().all(|s| (0.0..1.0).contains(s)));
        let low = spreads.iter().filter(|s| **s < 0.5).count();
        assert!((400..600).contains(&low), "{low} of 1000 in the first half");
        assert_eq!(super::spread(&["a", "1"]), super::spread(&["a", "1"]));
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

    fn unreachable() -> Skipped {
        Skipped::HostUnreachable {
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
        for skipped in [busy(), circuit_open(), unreachable()] {
            for (attempts, expected) in &table {
                let step = after_skip(&skipped, *attempts, Duration::ZERO, HOUR, &DELAYS, now);
                assert_eq!(&step, expected, "{skipped}, {attempts} attempts");
            }
        }
    }

    #[test]
    fn waiting_is_not_failing_until_max_pending() {
        let now = Utc::now();
        let almost = HOUR - Duration::from_secs(1);
        for skipped in [busy(), circuit_open(), unreachable()] {
            assert_eq!(
                after_skip(&skipped, 2, almost, HOUR, &DELAYS, now),
                retry(2, now, 60),
                "{skipped}: waited less than max_pending, however many skips"
            );
            let Step::DeadLetter(reason) = after_skip(&skipped, 2, HOUR, HOUR, &DELAYS, now) else {
                panic!("{skipped}: waited max_pending")
            };
            assert!(matches!(reason, Reason::Waited { .. }), "{reason:?}");
        }
        let Step::DeadLetter(reason) = after_skip(&circuit_open(), 1, HOUR, HOUR, &DELAYS, now)
        else {
            panic!()
        };
        assert_eq!(
            reason.to_string(),
            "waited 1h for the circuit of this channel's endpoint on hooks.example.com:443 \
             to close (delivery.max_pending)"
        );
        let Step::DeadLetter(reason) = after_skip(&busy(), 0, Duration::ZERO, HOUR, &[], now)
        else {
            panic!("no tiers at all: nowhere to wait")
        };
        assert!(
            reason.to_string().contains("retry.delays is empty"),
            "{reason}"
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
                retry(tier, now, secs as i64),
                "{secs} s"
            );
        }
        let Step::DeadLetter(reason) = park(Duration::from_secs(5), &[], now) else {
            panic!()
        };
        assert_eq!(
            reason.to_string(),
            "held back by its provider's rate limit, with no retry tier to wait in \
             (retry.delays is empty)"
        );
        let waited = Reason::Waited {
            waited: Duration::from_millis(3_723_400),
            held: Held::RateLimit,
        };
        assert_eq!(
            waited.to_string(),
            "waited 1h 2m 3s for its provider's rate limit (delivery.max_pending)"
        );
        let too_far = Reason::TurnTooFar {
            waited: Duration::from_secs(600),
            turn_in: Duration::from_secs(3300),
        };
        assert_eq!(
            too_far.to_string(),
            "waited 10m for its provider's rate limit, and its turn is 55m further away, past \
             delivery.max_pending"
        );
        assert_eq!(too_far.label(), "waited");
    }

    #[test]
    fn a_rate_limit_answer_is_no_attempt_for_the_plan() {
        let limited = Outcome::rate_limited(Some(429), "HTTP 429".into(), None);
        assert_eq!(
            Answer::of(&limited),
            Err(RateLimit {
                wait: crate::delivery::outcome::RATE_LIMIT_WAIT,
                provider_wide: false,
                error: "HTTP 429",
            }),
            "it waits for its bucket: the plan never sees it"
        );
        let refused = Outcome::permanent("HTTP 410");
        assert_eq!(
            Answer::of(&refused),
            Ok(Answer::WillNotPass { error: "HTTP 410" })
        );
    }

    #[test]
    fn retry_after_only_lengthens_the_wait() {
        let delays = [Duration::from_secs(15)];
        let now = Utc::now();
        let answer_after = |secs| Outcome::Retry {
            status: Some(503),
            error: "HTTP 503".into(),
            retry_after: Some(Duration::from_secs(secs)),
        };
        assert_eq!(
            next_step(answer(&answer_after(90)), 1, &delays, 0.0, now),
            retry(1, now, 90)
        );
        assert_eq!(
            next_step(answer(&answer_after(1)), 1, &delays, 0.0, now),
            retry(1, now, 15)
        );
    }
}
