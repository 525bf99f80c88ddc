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
mod tests;
