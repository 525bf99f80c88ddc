//! Unit tests of the tier plan: tiers, jitter, skips, parking, reasons.

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
    let Step::DeadLetter(reason) = after_skip(&circuit_open(), 1, HOUR, HOUR, &DELAYS, now) else {
        panic!()
    };
    assert_eq!(
        reason.to_string(),
        "waited 1h for the circuit of this channel's endpoint on hooks.example.com:443 \
         to close (delivery.max_pending)"
    );
    let Step::DeadLetter(reason) = after_skip(&busy(), 0, Duration::ZERO, HOUR, &[], now) else {
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
